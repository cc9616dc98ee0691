//! The file format: what a config file may say, as serde types, and the errors that point
//! at a field of it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::tunables::{ConntrackConfig, EbpfConfig};

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
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub ebpf: EbpfConfig,
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
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub name: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
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
            "[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\nmtu = 1500",
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
        let msg = toml_err("[[networks]]\nname = \"np0\"");
        assert!(msg.contains("subnet"), "{msg}");
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
    fn config_round_trips_through_toml() {
        let config = Config::embedded_default();
        let text = toml::to_string(&config).expect("serialize");
        assert_eq!(Config::parse(&text, "round trip").expect("parse"), config);
    }
}
