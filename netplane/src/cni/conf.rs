//! The network configuration a runtime passes on stdin: the bridge plugin's keys,
//! netplane's own, and what the runtime adds (`runtimeConfig`, `prevResult`,
//! `cni.dev/valid-attachments`). Unknown keys are ignored, as the spec asks.

use std::net::IpAddr;

use serde::Deserialize;

use super::{CniError, SUPPORTED_VERSIONS, code};
use crate::config::{ConntrackConfig, GatewayMode, MetricsConfig, Mode, RouteConfig, fnv1a_32};

/// The prefix of the netplane instance of a CNI network.
pub const INSTANCE_PREFIX: &str = "cni-";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The bridge device (the bridge plugin's default: `cni0`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Whether the bridge gets the gateway address (the bridge plugin's default: false).
    #[serde(default)]
    pub is_gateway: bool,
    /// As in the bridge plugin, it implies `isGateway`; netplane's containers always get
    /// the default route through their gateway when the network has one.
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Masquerade what leaves the network (the bridge plugin's default: false).
    #[serde(default)]
    pub ip_masq: bool,
    /// Accepted; netplane sets hairpin on every bridge port (its published-port hairpin
    /// needs it).
    #[serde(default)]
    pub hairpin_mode: bool,
    /// 0, as in the bridge plugin, is the default.
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    /// netplane's own: the data plane (`ebpf`, the default, or `iptables`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// netplane's own: the uplink; by default the default route's device.
    #[serde(default)]
    pub uplink: Option<String>,
    /// netplane's own: the TOML `[conntrack]` keys.
    #[serde(default)]
    pub conntrack: Option<ConntrackConfig>,
    /// netplane's own: the TOML `[metrics]` keys (`{"listen": "127.0.0.1:9975"}`): the
    /// agent that ADD starts serves Prometheus metrics there.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// netplane's own: the gateway mode, when the bridge plugin's `isGateway`/`ipMasq`
    /// pair does not say enough (see [`NetConf::gateway_mode`]).
    #[serde(default)]
    pub gateway_mode: Option<GatewayMode>,
    /// netplane's own: the TOML `[[routes]]` (`{"subnet", "via"}`), other hosts'
    /// container subnets (a cluster's other nodes' pod subnets), routed through `via` and
    /// never masqueraded.
    #[serde(default)]
    pub host_routes: Vec<RouteConfig>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<AttachmentRef>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMap>,
}

/// One entry of the `portMappings` capability, as the portmap plugin reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMap {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

/// An attachment as GC names the live ones.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AttachmentRef {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The version of a config, read before anything else of it (VERSION needs only this,
/// and an error reply carries it).
pub fn version_of(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: String,
    }
    serde_json::from_slice::<V>(stdin).ok().map(|v| v.v)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion = {:?}: not supported; netplane-cni speaks {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        Ok(conf)
    }

    /// The netplane instance of this network: `cni-<name>`.
    pub fn instance(&self) -> Result<String, CniError> {
        let name = format!("{INSTANCE_PREFIX}{}", self.name);
        let bad = self
            .name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        if self.name.is_empty() || name.len() > 32 || bad.is_some() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "name = {:?}: netplane-cni needs 1 to 28 ASCII letters, digits, '_' or \
                     '-' (the network is netplane instance {INSTANCE_PREFIX}<name>)",
                    self.name
                ),
            ));
        }
        Ok(name)
    }

    pub fn mtu(&self) -> Option<u32> {
        self.mtu.filter(|&m| m != 0)
    }

    pub fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or("cni0")
    }

    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Ebpf)
    }

    /// netplane's gateway mode for the bridge plugin's keys: no gateway on the bridge is
    /// an isolated network; a gateway with `ipMasq` is Docker's NAT; a gateway without
    /// it routes the containers' own addresses (`routed`). `gatewayMode` overrides.
    pub fn gateway_mode(&self) -> GatewayMode {
        let is_gateway = self.is_gateway || self.is_default_gateway;
        match (self.gateway_mode, is_gateway, self.ip_masq) {
            (Some(m), _, _) => m,
            (None, false, _) => GatewayMode::Isolated,
            (None, true, true) => GatewayMode::Nat,
            (None, true, false) => GatewayMode::Routed,
        }
    }

    /// The delegated IPAM plugin's type.
    pub fn ipam_type(&self) -> Result<&str, CniError> {
        self.ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "ipam.type: missing; netplane-cni delegates addresses to an IPAM plugin \
                     (host-local, static…) as the bridge plugin does",
                )
            })
    }

    /// The runtime's port mappings in netplane's `-p` syntax
    /// (`[hostIP:]hostPort:containerPort/proto`).
    pub fn publish_specs(&self) -> Result<Vec<String>, CniError> {
        self.runtime_config
            .port_mappings
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = |f: &str| format!("runtimeConfig.portMappings[{i}].{f}");
                let proto = m.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
                if proto != "tcp" && proto != "udp" {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!(
                            "{} = {proto:?}: netplane publishes tcp and udp",
                            field("protocol")
                        ),
                    ));
                }
                if m.host_port == 0 || m.container_port == 0 {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "{} = 0: ports are 1 to 65535",
                            field(if m.host_port == 0 {
                                "hostPort"
                            } else {
                                "containerPort"
                            })
                        ),
                    ));
                }
                // Docker's -p families: none is both; 0.0.0.0 and :: one each; an address
                // its own.
                let host = match m.host_ip.as_deref().unwrap_or("") {
                    "" => String::new(),
                    ip => match ip.parse::<IpAddr>() {
                        Ok(IpAddr::V4(a)) => format!("{a}:"),
                        Ok(IpAddr::V6(a)) => format!("[{a}]:"),
                        Err(_) => {
                            return Err(CniError::new(
                                code::INVALID_CONFIG,
                                format!("{} = {ip:?}: not an IP address", field("hostIP")),
                            ));
                        }
                    },
                };
                Ok(format!(
                    "{host}{}:{}/{proto}",
                    m.host_port, m.container_port
                ))
            })
            .collect()
    }
}

/// The container's name in the instance's plan, for attachment (`id`, `ifname`): the ID's
/// first 12 characters (what `podman ps` and `ctr` show) and a hash of the whole pair, so
/// that two interfaces of one container, or two IDs with one prefix, never collide.
pub fn container_name(id: &str, ifname: &str) -> String {
    let short: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(12)
        .collect();
    format!(
        "{short}-{:06x}",
        fnv1a_32(format!("{id}/{ifname}").as_bytes()) & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf, CniError> {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"podman","type":"netplane-cni"{extra}}}"#)
                .as_bytes(),
        )
    }

    #[test]
    fn bridge_plugin_keys_and_defaults() {
        let c = conf(r#","bridge":"cni-podman0","isGateway":true,"ipMasq":true,"hairpinMode":true,"someFutureKey":{"x":1}"#).unwrap();
        assert_eq!(c.bridge(), "cni-podman0");
        assert_eq!(c.gateway_mode(), GatewayMode::Nat);
        assert_eq!(c.mode(), Mode::Ebpf);
        assert_eq!(c.instance().unwrap(), "cni-podman");
        let c = conf("").unwrap();
        assert_eq!(
            (c.bridge(), c.gateway_mode()),
            ("cni0", GatewayMode::Isolated)
        );
        let c = conf(r#","isGateway":true"#).unwrap();
        assert_eq!(c.gateway_mode(), GatewayMode::Routed);
        let c =
            conf(r#","isGateway":true,"gatewayMode":"nat-unprotected","mode":"iptables""#).unwrap();
        assert_eq!(
            (c.gateway_mode(), c.mode()),
            (GatewayMode::NatUnprotected, Mode::Iptables)
        );
    }

    #[test]
    fn versions_outside_the_supported_set_are_code_1() {
        let e = NetConf::parse(br#"{"cniVersion":"2.0.0","name":"n","type":"netplane-cni"}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("2.0.0"), "{}", e.msg);
        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE);
    }

    #[test]
    fn port_mappings_become_publish_specs() {
        let c = conf(
            r#","runtimeConfig":{"portMappings":[
                {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":""},
                {"hostPort":8081,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"},
                {"hostPort":9000,"containerPort":90,"hostIP":"0.0.0.0"},
                {"hostPort":9001,"containerPort":91,"hostIP":"::"},
                {"hostPort":9002,"containerPort":92,"hostIP":"2001:db8::1"}]}"#,
        )
        .unwrap();
        // Docker's -p families: no hostIP is both, 0.0.0.0 IPv4 only, :: IPv6 only.
        assert_eq!(
            c.publish_specs().unwrap(),
            [
                "8080:80/tcp",
                "5353:53/udp",
                "127.0.0.1:8081:80/tcp",
                "0.0.0.0:9000:90/tcp",
                "[::]:9001:91/tcp",
                "[2001:db8::1]:9002:92/tcp"
            ]
        );
        let sctp = conf(r#","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"protocol":"sctp"}]}"#).unwrap();
        let e = sctp.publish_specs().unwrap_err();
        assert!(
            e.msg.contains("runtimeConfig.portMappings[0].protocol"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn names_must_fit_an_instance_name() {
        let e = conf("").map(|mut c| {
            c.name = "a.b".into();
            c.instance()
        });
        assert_eq!(e.unwrap().unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn container_names_are_short_stable_and_distinct() {
        let id = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff";
        let a = container_name(id, "eth0");
        assert_eq!(a, container_name(id, "eth0"));
        assert_ne!(a, container_name(id, "eth1"));
        assert!(a.starts_with("3f2a9c1b7d4e-") && a.len() == 19, "{a}");
        assert!(container_name("my.ctr", "eth0").starts_with("my_ctr-"));
    }
}
