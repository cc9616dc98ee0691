//! The file format: what a config file may say, as serde types, and the errors that point
//! at a field of it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::tunables::{ConntrackConfig, EbpfConfig, MetricsConfig};

/// The embedded default used by `netplane up` with no `-c`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The file as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    /// The host interface that carries traffic out; `None` = the default route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    #[serde(default)]
    pub containers: Vec<ContainerConfig>,
    /// Other hosts' container subnets, reached through their underlay addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub ebpf: EbpfConfig,
    #[serde(default, skip_serializing_if = "MetricsConfig::is_off")]
    pub metrics: MetricsConfig,
}

fn default_name() -> String {
    "netplane".to_owned()
}

/// Which data plane does the NAT.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Ebpf,
    Iptables,
    /// `"none"`: the topology only, without NAT: routed access to container addresses
    /// (the benchmark's baseline, and hosts where another tool owns NAT).
    #[serde(rename = "none")]
    NoNat,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
            Mode::NoNat => "none",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "ebpf" => Ok(Mode::Ebpf),
            "iptables" => Ok(Mode::Iptables),
            "none" => Ok(Mode::NoNat),
            other => Err(format!(
                "unknown mode {other:?}; expected \"ebpf\", \"iptables\" or \"none\""
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub name: String,
    /// The IPv4 subnet; without it the network is IPv6-only (it then needs `subnet6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The IPv6 subnet of a dual-stack or IPv6-only network (a /64 to a /120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    /// Default: the subnet6's `::1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub gateway_mode: GatewayMode,
    /// The MTU of the bridge and of every veth (both ends); by default the kernel's (1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// How a network's containers are attached.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A Linux bridge, with the gateway address on it (Docker's bridge driver).
    #[default]
    Bridge,
    /// Point-to-point veths: no bridge, each container a /32 that the host routes to
    /// (seed 004, CNI's ptp plugin, Calico).
    Ptp,
}

/// What the host does for traffic between a network and everything beyond it: Docker
/// 28's gateway modes (`com.docker.network.bridge.gateway_mode_ipv4`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Masquerade out, published ports in; container addresses are not reachable from
    /// other hosts directly.
    #[default]
    Nat,
    /// As `nat`, and every container port is reachable by direct routing too.
    NatUnprotected,
    /// No NAT: containers go out with their own addresses, and the container ports named
    /// in `publish` (and ICMP echo) are reachable by direct routing.
    Routed,
    /// No gateway and no route out: only the network's own containers talk.
    Isolated,
}

impl GatewayMode {
    /// Whether traffic out of the network is masqueraded and published ports DNATed.
    pub fn nat(self) -> bool {
        matches!(self, GatewayMode::Nat | GatewayMode::NatUnprotected)
    }
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GatewayMode::Nat => "nat",
            GatewayMode::NatUnprotected => "nat-unprotected",
            GatewayMode::Routed => "routed",
            GatewayMode::Isolated => "isolated",
        })
    }
}

/// `[[routes]]`: another host's container subnet, reached through `via`, never
/// masqueraded; both IPv4 or both IPv6.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub subnet: String,
    pub via: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub name: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// On a network with a subnet6; default: the next free address of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Every config error names the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {message}")]
    Toml {
        source_name: String,
        message: String,
    },
    #[error("{field} = {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

pub(super) fn invalid(
    field: impl Into<String>,
    value: &str,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses TOML. `source` names the file (or `<embedded default>`) in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml {
            source_name: source.to_owned(),
            message: e.to_string(),
        })
    }

    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG, "<embedded default>").expect("the embedded default parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{plan, toml_err};

    #[test]
    fn empty_file_gets_defaults() {
        let plan = plan("");
        assert_eq!(plan.name, "netplane");
        assert_eq!(plan.mode, Mode::Ebpf);
        assert!(plan.networks.is_empty() && plan.containers.is_empty());
    }

    #[test]
    fn mode_display() {
        assert_eq!(Mode::Ebpf.to_string(), "ebpf");
        assert_eq!(Mode::Iptables.to_string(), "iptables");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for toml in [
            "nmae = \"x\"",
            "[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\nmut = 1500",
            "[[containers]]\nname = \"a\"\nnetwork = \"np0\"\nimage = \"nginx\"",
        ] {
            let msg = toml_err(toml);
            assert!(
                msg.starts_with("test.toml: ") && msg.contains("unknown field"),
                "{msg}"
            );
        }
    }

    #[test]
    fn missing_required_fields_are_rejected() {
        for (toml, field) in [
            ("[[containers]]\nname = \"a\"", "network"),
            ("[[routes]]\nsubnet = \"10.0.2.0/24\"", "via"),
        ] {
            let msg = toml_err(toml);
            assert!(msg.contains(field), "{msg}");
        }
        // A network's subnet is not required by the format: an IPv6-only one has none
        // (planning checks that it has one of the two).
        Config::parse("[[networks]]\nname = \"np0\"", "test.toml").unwrap();
    }

    #[test]
    fn unknown_mode_is_rejected() {
        let msg = toml_err("name = \"x\"\nmode = \"foo\"\n");
        assert!(
            msg.contains("mode") && msg.contains("foo") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_driver_and_gateway_mode_are_rejected() {
        let net = "[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\n";
        for (line, bad) in [
            ("driver = \"macvlan\"", "macvlan"),
            ("gateway_mode = \"nat_unprotected\"", "nat_unprotected"),
        ] {
            let msg = toml_err(&format!("{net}{line}\n"));
            assert!(msg.contains(bad) && msg.contains("line 4"), "{msg}");
        }
    }

    #[test]
    fn config_round_trips_through_toml() {
        let config = Config::embedded_default();
        let text = toml::to_string(&config).expect("serialize");
        assert_eq!(Config::parse(&text, "round trip").expect("parse"), config);
    }
}
