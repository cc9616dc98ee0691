//! The topology file: networks (bridges), containers (network namespaces) and published
//! ports, in TOML.
//!
//! [`Config`] is the file as written; [`Config::plan`] checks everything that can be
//! checked without touching the host and resolves every default, so later stages work
//! from a complete [`Plan`] and never have to second-guess user input.

pub mod publish;

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netplane_common::nat::MAX_LIFETIME_S;
use serde::{Deserialize, Serialize};

pub use publish::{PortMapping, Proto};

/// Linux's IFNAMSIZ is 16 including the terminating NUL.
const IFNAME_MAX: usize = 15;
/// Instance and container names prefix netns names and bpffs pin paths, so keep them short.
const NAME_MAX: usize = 32;
/// A /31 or /32 has no room for a gateway plus a container.
const PREFIX_MAX: u8 = 30;

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

/// `[ebpf]`: the eBPF data plane's forwarding.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Translated packets of known flows go from the uplink straight to the bridge, and
    /// from the bridge straight out of the uplink (bpf_fib_lookup + bpf_redirect_neigh),
    /// past the kernel's forwarding path, as Cilium's BPF host routing does. They then
    /// also pass netfilter by: set false when host firewall rules in FORWARD or
    /// POSTROUTING must see container traffic.
    pub fast_forward: bool,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig { fast_forward: true }
    }
}

/// `[conntrack]`: the eBPF data plane's connection tracking. Lifetimes in seconds after a
/// flow's last packet; defaults as Cilium's (bpf/lib/conntrack.h), the NAT port range as
/// the kernel's ip_local_port_range.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    pub tcp_syn_timeout: u32,
    pub tcp_established_timeout: u32,
    pub tcp_closing_timeout: u32,
    pub udp_timeout: u32,
    pub icmp_timeout: u32,
    /// Source ports masquerade may use when a container's own is taken: `[first, last]`.
    pub nat_port_range: [u16; 2],
    /// Entries of the conntrack map (an LRU: the least recently used go when it is full).
    pub max_entries: u32,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            tcp_syn_timeout: 60,
            tcp_established_timeout: 21_600,
            tcp_closing_timeout: 10,
            udp_timeout: 60,
            icmp_timeout: 30,
            nat_port_range: [32_768, 60_999],
            max_entries: 131_072,
        }
    }
}

impl ConntrackConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("conntrack.tcp_syn_timeout", self.tcp_syn_timeout),
            (
                "conntrack.tcp_established_timeout",
                self.tcp_established_timeout,
            ),
            ("conntrack.tcp_closing_timeout", self.tcp_closing_timeout),
            ("conntrack.udp_timeout", self.udp_timeout),
            ("conntrack.icmp_timeout", self.icmp_timeout),
        ] {
            if v == 0 || v > MAX_LIFETIME_S {
                return Err(invalid(
                    field,
                    &v.to_string(),
                    format!("a lifetime must be between 1 and {MAX_LIFETIME_S} seconds (7 days)"),
                ));
            }
        }
        let [lo, hi] = self.nat_port_range;
        if lo < 1024 || lo > hi {
            return Err(invalid(
                "conntrack.nat_port_range",
                &format!("[{lo}, {hi}]"),
                "must be [first, last] with 1024 <= first <= last",
            ));
        }
        if !(1024..=16_777_216).contains(&self.max_entries) {
            return Err(invalid(
                "conntrack.max_entries",
                &self.max_entries.to_string(),
                "must be between 1024 and 16777216",
            ));
        }
        Ok(())
    }
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
    /// The topology only, without NAT: routed access to container addresses (the
    /// benchmark's baseline, and hosts where another tool owns NAT).
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
            Mode::None => "none",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "ebpf" => Ok(Mode::Ebpf),
            "iptables" => Ok(Mode::Iptables),
            "none" => Ok(Mode::None),
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

fn invalid(field: impl Into<String>, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A validated config with every default filled in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub name: String,
    pub mode: Mode,
    pub uplink: Option<String>,
    pub networks: Vec<Network>,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub ebpf: EbpfConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// Also the bridge device's name.
    pub name: String,
    pub subnet: Ipv4Net,
    /// The bridge's own address, the containers' default route.
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Container {
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// The network's prefix length.
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Docker style: 02:42 followed by the IPv4 address, so it is stable and readable.
    pub mac: [u8; 6],
    /// `<instance>-<container>`.
    pub netns: String,
    /// The host end of the container's veth pair; see [`host_veth_name`].
    pub host_veth: String,
    pub publish: Vec<PortMapping>,
}

impl Plan {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// `02:42:ac:12:00:02`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
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

    /// Validates everything that can be checked without looking at the host, and
    /// resolves defaults (gateways, container addresses, device names).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        check_name("name", &self.name)?;
        if let Some(uplink) = &self.uplink {
            check_ifname("uplink", uplink)?;
        }
        let networks = self.plan_networks()?;
        let containers = self.plan_containers(&networks)?;
        self.conntrack.validate()?;
        Ok(Plan {
            name: self.name.clone(),
            mode: self.mode,
            uplink: self.uplink.clone(),
            networks,
            containers,
            conntrack: self.conntrack,
            ebpf: self.ebpf,
        })
    }

    fn plan_networks(&self) -> Result<Vec<Network>, ConfigError> {
        let mut networks: Vec<Network> = Vec::with_capacity(self.networks.len());
        for (i, net) in self.networks.iter().enumerate() {
            let field = |f: &str| format!("networks[{i}].{f}");

            check_bridge_name(&field("name"), &net.name)?;
            if let Some(j) = networks.iter().position(|n| n.name == net.name) {
                return Err(invalid(
                    field("name"),
                    &net.name,
                    format!("duplicate network name; networks[{j}] already uses it"),
                ));
            }

            let subnet = parse_subnet(&field("subnet"), &net.subnet)?;
            // Indices in `networks` match the config's, since every earlier entry was kept.
            if let Some((j, other)) = networks
                .iter()
                .enumerate()
                .find(|(_, n)| n.subnet.contains(&subnet) || subnet.contains(&n.subnet))
            {
                return Err(invalid(
                    field("subnet"),
                    &net.subnet,
                    format!(
                        "overlaps networks[{j}].subnet ({}) of network {:?}",
                        other.subnet, other.name
                    ),
                ));
            }

            let gateway = match &net.gateway {
                None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
                Some(text) => parse_host_addr(&field("gateway"), text, subnet)?,
            };

            networks.push(Network {
                name: net.name.clone(),
                subnet,
                gateway,
            });
        }
        Ok(networks)
    }

    /// Two passes: validate every container and reserve the explicit addresses, then hand
    /// out the rest in config order, so an explicit address never depends on its position.
    fn plan_containers(&self, networks: &[Network]) -> Result<Vec<Container>, ConfigError> {
        struct Pending<'a> {
            network: &'a Network,
            ip: Option<Ipv4Addr>,
            publish: Vec<PortMapping>,
            host_veth: String,
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut veths: HashMap<String, usize> = HashMap::new();
        let mut taken: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut published: Vec<(usize, usize, PortMapping)> = Vec::new();
        let mut pending = Vec::with_capacity(self.containers.len());

        for (i, c) in self.containers.iter().enumerate() {
            let field = |f: &str| format!("containers[{i}].{f}");

            check_name(&field("name"), &c.name)?;
            if let Some(j) = names.insert(&c.name, i) {
                return Err(invalid(
                    field("name"),
                    &c.name,
                    format!("duplicate container name; containers[{j}] already uses it"),
                ));
            }
            let host_veth = host_veth_name(&self.name, &c.name);
            if let Some(j) = veths.insert(host_veth.clone(), i) {
                return Err(invalid(
                    field("name"),
                    &c.name,
                    format!(
                        "its host veth name {host_veth} collides with that of containers[{j}] \
                         ({:?}); rename one of them",
                        self.containers[j].name
                    ),
                ));
            }

            let network = networks
                .iter()
                .find(|n| n.name == c.network)
                .ok_or_else(|| {
                    let defined: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
                    let reason = if defined.is_empty() {
                        "unknown network; no networks are defined".to_owned()
                    } else {
                        format!("unknown network; defined: {}", defined.join(", "))
                    };
                    invalid(field("network"), &c.network, reason)
                })?;

            let ip = match &c.ip {
                None => None,
                Some(text) => {
                    let ip = parse_host_addr(&field("ip"), text, network.subnet)?;
                    if ip == network.gateway {
                        return Err(invalid(
                            field("ip"),
                            text,
                            format!("is the gateway of network {:?}", network.name),
                        ));
                    }
                    if let Some(j) = taken.insert(ip, i) {
                        return Err(invalid(
                            field("ip"),
                            text,
                            format!(
                                "already assigned to containers[{j}] ({:?})",
                                self.containers[j].name
                            ),
                        ));
                    }
                    Some(ip)
                }
            };

            let mut publish = Vec::with_capacity(c.publish.len());
            for (j, spec) in c.publish.iter().enumerate() {
                let field = format!("containers[{i}].publish[{j}]");
                let mapping = PortMapping::parse(spec).map_err(|r| invalid(&field, spec, r))?;
                if let Some((oi, oj, other)) =
                    published.iter().find(|(_, _, m)| m.overlaps(&mapping))
                {
                    let port = mapping.host_port.max(other.host_port);
                    return Err(invalid(
                        field,
                        spec,
                        format!(
                            "host port {port}/{} is already published by \
                             containers[{oi}].publish[{oj}] ({:?})",
                            mapping.proto, other.spec
                        ),
                    ));
                }
                published.push((i, j, mapping.clone()));
                publish.push(mapping);
            }

            pending.push(Pending {
                network,
                ip,
                publish,
                host_veth,
            });
        }

        // Next candidate address per network, so allocation is one sweep per subnet.
        let mut cursors: HashMap<&str, u32> = HashMap::new();
        let mut containers = Vec::with_capacity(pending.len());
        for (i, (c, p)) in self.containers.iter().zip(pending).enumerate() {
            let net = p.network;
            let ip = match p.ip {
                Some(ip) => ip,
                None => {
                    let cursor = cursors
                        .entry(net.name.as_str())
                        .or_insert_with(|| u32::from(net.subnet.network()) + 1);
                    let ip = next_free(cursor, net, &taken).ok_or_else(|| {
                        invalid(
                            format!("containers[{i}].network"),
                            &c.network,
                            format!("no free address left in subnet {}", net.subnet),
                        )
                    })?;
                    taken.insert(ip, i);
                    ip
                }
            };
            let [a, b, c3, d] = ip.octets();
            containers.push(Container {
                name: c.name.clone(),
                network: net.name.clone(),
                ip,
                prefix_len: net.subnet.prefix_len(),
                gateway: net.gateway,
                mac: [0x02, 0x42, a, b, c3, d],
                netns: format!("{}-{}", self.name, c.name),
                host_veth: p.host_veth,
                publish: p.publish,
            });
        }
        Ok(containers)
    }
}

/// Scans from `cursor` up to (not including) the broadcast address, skipping the gateway
/// and anything already taken. Starting at the first host address rather than after the
/// gateway keeps the low addresses usable when the gateway is set to, say, `.254`.
fn next_free(
    cursor: &mut u32,
    net: &Network,
    taken: &HashMap<Ipv4Addr, usize>,
) -> Option<Ipv4Addr> {
    let broadcast = u32::from(net.subnet.broadcast());
    while *cursor < broadcast {
        let ip = Ipv4Addr::from(*cursor);
        *cursor += 1;
        if ip != net.gateway && !taken.contains_key(&ip) {
            return Some(ip);
        }
    }
    None
}

/// `vnp` + FNV-1a of `<instance>/<container>` in hex: 11 bytes, within the kernel's
/// 15-byte interface-name limit however long the names are, deterministic so a later run
/// finds the device again, and the `vnp` prefix tells an `ip link` reader whose it is.
fn host_veth_name(instance: &str, container: &str) -> String {
    format!(
        "vnp{:08x}",
        fnv1a_32(format!("{instance}/{container}").as_bytes())
    )
}

/// 32-bit FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`), good spread.
pub(crate) fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Instance and container names.
fn check_name(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if let Some(bad) = value
        .chars()
        .find(|&ch| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
    {
        return Err(invalid(
            field,
            value,
            format!("contains {bad:?}; only ASCII letters, digits, '_' and '-' are allowed"),
        ));
    }
    if value.len() > NAME_MAX {
        return Err(invalid(
            field,
            value,
            format!(
                "is {} characters; the limit is {NAME_MAX} (it prefixes network namespace \
                 names and bpffs pin paths)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// The kernel's own rules for an interface name (`dev_valid_name`), for host devices that
/// netplane does not name itself.
fn check_ifname(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if value.len() > IFNAME_MAX {
        return Err(invalid(
            field,
            value,
            format!(
                "is {} bytes; Linux limits interface names to {IFNAME_MAX} characters",
                value.len()
            ),
        ));
    }
    if value == "." || value == ".." {
        return Err(invalid(field, value, "is not a valid interface name"));
    }
    if let Some(bad) = value
        .chars()
        .find(|&ch| ch == '/' || ch == ':' || ch.is_whitespace())
    {
        return Err(invalid(
            field,
            value,
            format!("contains {bad:?}, which interface names cannot"),
        ));
    }
    Ok(())
}

/// Bridges netplane creates: the kernel's rules plus a conservative character set, so
/// the name is also safe in shell commands, iptables rules and pin paths.
fn check_bridge_name(field: &str, value: &str) -> Result<(), ConfigError> {
    check_ifname(field, value)?;
    if let Some(bad) = value
        .chars()
        .find(|&ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')))
    {
        return Err(invalid(
            field,
            value,
            format!("contains {bad:?}; only ASCII letters, digits, '_', '.' and '-' are allowed"),
        ));
    }
    Ok(())
}

fn parse_subnet(field: &str, value: &str) -> Result<Ipv4Net, ConfigError> {
    let subnet: Ipv4Net = value.parse().map_err(|_| {
        let reason = if value.parse::<ipnet::Ipv6Net>().is_ok() {
            "IPv6 subnets are not supported yet"
        } else {
            "not an IPv4 subnet in CIDR form, e.g. \"172.18.0.0/16\""
        };
        invalid(field, value, reason)
    })?;
    if subnet.trunc() != subnet {
        return Err(invalid(
            field,
            value,
            format!("host bits are set; did you mean \"{}\"?", subnet.trunc()),
        ));
    }
    if subnet.prefix_len() > PREFIX_MAX {
        return Err(invalid(
            field,
            value,
            format!(
                "a /{} has no room for a gateway and a container; use /{PREFIX_MAX} or shorter",
                subnet.prefix_len()
            ),
        ));
    }
    Ok(subnet)
}

/// An address a host may use inside `subnet`: not the network or broadcast address.
fn parse_host_addr(field: &str, value: &str, subnet: Ipv4Net) -> Result<Ipv4Addr, ConfigError> {
    let ip: Ipv4Addr = value
        .parse()
        .map_err(|_| invalid(field, value, "not an IPv4 address"))?;
    let reason = if !subnet.contains(&ip) {
        format!("outside the network's subnet {subnet}")
    } else if ip == subnet.network() {
        format!("is the network address of {subnet}")
    } else if ip == subnet.broadcast() {
        format!("is the broadcast address of {subnet}")
    } else {
        return Ok(ip);
    };
    Err(invalid(field, value, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(toml: &str) -> Plan {
        let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        config.plan().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asserts that planning fails with an `Invalid` naming `field` and `value`; returns
    /// the message.
    fn plan_err(toml: &str, field: &str, value: &str) -> String {
        let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let err = match config.plan() {
            Ok(plan) => panic!("expected an error for {field}, got {plan:#?}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        match &err {
            ConfigError::Invalid {
                field: f, value: v, ..
            } => {
                assert_eq!((f.as_str(), v.as_str()), (field, value), "{msg}");
            }
            ConfigError::Toml { .. } => panic!("expected Invalid, got {msg}"),
        }
        assert!(
            msg.contains(field) && msg.contains(&format!("{value:?}")),
            "{msg}"
        );
        msg
    }

    fn toml_err(toml: &str) -> String {
        match Config::parse(toml, "test.toml") {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(e @ ConfigError::Toml { .. }) => e.to_string(),
            Err(e) => panic!("expected a toml error, got {e}"),
        }
    }

    const ONE_NET: &str = r#"
        [[networks]]
        name = "np0"
        subnet = "10.0.0.0/24"
    "#;

    /// `ONE_NET` plus the given containers.
    fn with_containers(containers: &str) -> String {
        format!("{ONE_NET}\n{containers}")
    }

    #[test]
    fn default_config_plans() {
        let plan = Config::embedded_default().plan().expect("default plans");
        assert_eq!(plan.name, "netplane");
        assert_eq!(plan.mode, Mode::Ebpf);
        assert_eq!(plan.uplink, None);

        let np0 = plan.network("np0").expect("np0");
        assert_eq!(np0.subnet, "172.18.0.0/16".parse::<Ipv4Net>().expect("net"));
        assert_eq!(np0.gateway, Ipv4Addr::new(172, 18, 0, 1));

        let web = plan.container("web").expect("web");
        assert_eq!(web.ip, Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(web.prefix_len, 16);
        assert_eq!(web.gateway, np0.gateway);
        assert_eq!(format_mac(web.mac), "02:42:ac:12:00:02");
        assert_eq!(web.netns, "netplane-web");
        assert_eq!(web.publish.len(), 1);
        assert_eq!(web.publish[0].to_string(), "8080:80/tcp");

        let client = plan.container("client").expect("client");
        assert_eq!(client.ip, Ipv4Addr::new(172, 18, 0, 3));
        assert_eq!(client.netns, "netplane-client");
        assert!(client.publish.is_empty());

        assert!(plan.container("nope").is_none());
        assert!(plan.network("nope").is_none());
    }

    #[test]
    fn empty_file_gets_defaults() {
        let plan = plan("");
        assert_eq!(plan.name, "netplane");
        assert_eq!(plan.mode, Mode::Ebpf);
        assert!(plan.networks.is_empty() && plan.containers.is_empty());
    }

    #[test]
    fn explicit_addresses_are_reserved_before_auto_ones() {
        let plan = plan(&with_containers(
            r#"
            [[containers]]
            name = "a"
            network = "np0"
            [[containers]]
            name = "b"
            network = "np0"
            ip = "10.0.0.2"
            [[containers]]
            name = "c"
            network = "np0"
            [[containers]]
            name = "d"
            network = "np0"
            ip = "10.0.0.4"
            [[containers]]
            name = "e"
            network = "np0"
            "#,
        ));
        let ips: Vec<String> = plan.containers.iter().map(|c| c.ip.to_string()).collect();
        assert_eq!(
            ips,
            ["10.0.0.3", "10.0.0.2", "10.0.0.5", "10.0.0.4", "10.0.0.6"]
        );
    }

    #[test]
    fn explicit_gateway_is_skipped_and_low_addresses_used() {
        let plan = plan(
            r#"
            [[networks]]
            name = "np0"
            subnet = "10.0.0.0/29"
            gateway = "10.0.0.2"
            [[containers]]
            name = "a"
            network = "np0"
            [[containers]]
            name = "b"
            network = "np0"
            "#,
        );
        assert_eq!(plan.networks[0].gateway, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(plan.containers[0].ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(plan.containers[1].ip, Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(plan.containers[1].gateway, Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn addresses_are_allocated_per_network() {
        let plan = plan(
            r#"
            name = "lab"
            mode = "iptables"
            uplink = "eth0"
            [[networks]]
            name = "np0"
            subnet = "10.0.0.0/24"
            [[networks]]
            name = "np1"
            subnet = "10.1.0.0/16"
            [[containers]]
            name = "a"
            network = "np1"
            [[containers]]
            name = "b"
            network = "np0"
            [[containers]]
            name = "c"
            network = "np1"
            "#,
        );
        assert_eq!(plan.mode, Mode::Iptables);
        assert_eq!(plan.uplink.as_deref(), Some("eth0"));
        let got: Vec<(&str, String, u8)> = plan
            .containers
            .iter()
            .map(|c| (c.network.as_str(), c.ip.to_string(), c.prefix_len))
            .collect();
        assert_eq!(
            got,
            [
                ("np1", "10.1.0.2".to_owned(), 16),
                ("np0", "10.0.0.2".to_owned(), 24),
                ("np1", "10.1.0.3".to_owned(), 16),
            ]
        );
        assert_eq!(plan.containers[0].gateway, Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(plan.containers[0].netns, "lab-a");
        assert_eq!(format_mac(plan.containers[0].mac), "02:42:0a:01:00:02");
    }

    #[test]
    fn subnet_exhaustion() {
        let toml = r#"
            [[networks]]
            name = "tiny"
            subnet = "10.0.0.0/30"
            [[containers]]
            name = "a"
            network = "tiny"
            [[containers]]
            name = "b"
            network = "tiny"
        "#;
        let msg = plan_err(toml, "containers[1].network", "tiny");
        assert!(
            msg.contains("no free address") && msg.contains("10.0.0.0/30"),
            "{msg}"
        );
    }

    #[test]
    fn host_veth_names() {
        let plan = plan(&with_containers(
            r#"
            [[containers]]
            name = "a-container-with-a-long-name-32c"
            network = "np0"
            [[containers]]
            name = "b"
            network = "np0"
            "#,
        ));
        let (a, b) = (&plan.containers[0].host_veth, &plan.containers[1].host_veth);
        for veth in [a, b] {
            assert!(
                veth.len() <= IFNAME_MAX && veth.starts_with("vnp"),
                "{veth}"
            );
            assert!(check_bridge_name("veth", veth).is_ok(), "{veth}");
        }
        assert_ne!(a, b);
        assert_eq!(
            host_veth_name("netplane", "web"),
            host_veth_name("netplane", "web")
        );
        assert_eq!(host_veth_name("netplane", "web"), "vnpd2569b7f");
        assert_ne!(
            host_veth_name("netplane", "web"),
            host_veth_name("other", "web")
        );
        // The separator keeps "a"+"b/c" and "a/b"+"c" from meaning the same thing.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn host_veth_collision_is_rejected() {
        // Found by brute force: both hash to vnp5fd96a26 under instance "netplane".
        let msg = plan_err(
            &with_containers(
                r#"
                [[containers]]
                name = "c476999"
                network = "np0"
                [[containers]]
                name = "c1014994"
                network = "np0"
                "#,
            ),
            "containers[1].name",
            "c1014994",
        );
        assert!(
            msg.contains("vnp5fd96a26") && msg.contains("containers[0]"),
            "{msg}"
        );
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac([0x02, 0x42, 0xac, 0x12, 0, 0x02]),
            "02:42:ac:12:00:02"
        );
        assert_eq!(format_mac([0xff; 6]), "ff:ff:ff:ff:ff:ff");
    }

    #[test]
    fn mode_display() {
        assert_eq!(Mode::Ebpf.to_string(), "ebpf");
        assert_eq!(Mode::Iptables.to_string(), "iptables");
    }

    #[test]
    fn invalid_instance_names() {
        plan_err(r#"name = """#, "name", "");
        let msg = plan_err(r#"name = "my net""#, "name", "my net");
        assert!(msg.contains("' '"), "{msg}");
        plan_err(r#"name = "a/b""#, "name", "a/b");
        plan_err(r#"name = "a.b""#, "name", "a.b");
        let long = "n".repeat(33);
        let msg = plan_err(&format!("name = {long:?}"), "name", &long);
        assert!(msg.contains("32"), "{msg}");
        plan(&format!("name = {:?}", "n".repeat(32)));
        plan(r#"name = "Lab_2-x""#);
    }

    #[test]
    fn invalid_uplink() {
        plan_err(r#"uplink = """#, "uplink", "");
        let msg = plan_err(
            r#"uplink = "sixteen-chars-xx""#,
            "uplink",
            "sixteen-chars-xx",
        );
        assert!(msg.contains("15 characters"), "{msg}");
        plan_err(r#"uplink = "eth 0""#, "uplink", "eth 0");
        plan_err(r#"uplink = "..""#, "uplink", "..");
        plan(r#"uplink = "enp0s31f6""#);
    }

    fn network(name: &str, subnet: &str, gateway: Option<&str>) -> String {
        let gateway = gateway
            .map(|g| format!("gateway = {g:?}"))
            .unwrap_or_default();
        format!("[[networks]]\nname = {name:?}\nsubnet = {subnet:?}\n{gateway}\n")
    }

    #[test]
    fn invalid_network_names() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "br 0",
            "br:0",
            "br@0",
            "sixteen-chars-xx",
        ] {
            plan_err(&network(bad, "10.0.0.0/24", None), "networks[0].name", bad);
        }
        let msg = plan_err(
            &network("sixteen-chars-xx", "10.0.0.0/24", None),
            "networks[0].name",
            "sixteen-chars-xx",
        );
        assert!(msg.contains("15 characters"), "{msg}");
        plan(&network("br-0.lab_x", "10.0.0.0/24", None));
        plan(&network(&"b".repeat(15), "10.0.0.0/24", None));
    }

    #[test]
    fn duplicate_network_names() {
        let toml = network("np0", "10.0.0.0/24", None) + &network("np0", "10.1.0.0/24", None);
        let msg = plan_err(&toml, "networks[1].name", "np0");
        assert!(msg.contains("networks[0]"), "{msg}");
    }

    #[test]
    fn invalid_subnets() {
        let net = |subnet| network("np0", subnet, None);
        for bad in ["", "172.18.0.0", "172.18.0.0/33", "nonsense", "300.0.0.0/8"] {
            plan_err(&net(bad), "networks[0].subnet", bad);
        }
        let msg = plan_err(&net("172.18.0.1/16"), "networks[0].subnet", "172.18.0.1/16");
        assert!(msg.contains("\"172.18.0.0/16\""), "{msg}");
        let msg = plan_err(&net("10.0.0.0/31"), "networks[0].subnet", "10.0.0.0/31");
        assert!(msg.contains("/30"), "{msg}");
        plan_err(&net("10.0.0.0/32"), "networks[0].subnet", "10.0.0.0/32");
        let msg = plan_err(&net("fd00::/64"), "networks[0].subnet", "fd00::/64");
        assert!(msg.contains("IPv6"), "{msg}");
        plan(&net("10.0.0.0/30"));
    }

    #[test]
    fn overlapping_subnets() {
        let two = |a, b| network("np0", a, None) + &network("np1", b, None);
        for (a, b) in [
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("10.0.0.0/16", "10.0.5.0/24"),
            ("10.0.5.0/24", "10.0.0.0/16"),
        ] {
            let msg = plan_err(&two(a, b), "networks[1].subnet", b);
            assert!(
                msg.contains("networks[0]") && msg.contains(a) && msg.contains("np0"),
                "{msg}"
            );
        }
        plan(&two("10.0.0.0/24", "10.0.1.0/24"));
    }

    #[test]
    fn invalid_gateways() {
        let gw = |g| network("np0", "10.0.0.0/24", Some(g));
        for bad in [
            "",
            "10.0.0",
            "fd00::1",
            "10.0.1.1",
            "10.0.0.0",
            "10.0.0.255",
        ] {
            plan_err(&gw(bad), "networks[0].gateway", bad);
        }
        assert!(
            plan_err(&gw("10.0.0.255"), "networks[0].gateway", "10.0.0.255").contains("broadcast")
        );
        assert!(
            plan_err(&gw("10.0.0.0"), "networks[0].gateway", "10.0.0.0")
                .contains("network address")
        );
        assert!(plan_err(&gw("10.0.1.1"), "networks[0].gateway", "10.0.1.1").contains("outside"));
        assert_eq!(
            plan(&gw("10.0.0.254")).networks[0].gateway,
            Ipv4Addr::new(10, 0, 0, 254)
        );
    }

    fn container(name: &str, network: &str, ip: Option<&str>, publish: &[&str]) -> String {
        let ip = ip.map(|ip| format!("ip = {ip:?}")).unwrap_or_default();
        format!(
            "[[containers]]\nname = {name:?}\nnetwork = {network:?}\n{ip}\npublish = {publish:?}\n"
        )
    }

    #[test]
    fn invalid_container_names() {
        for bad in ["", "a b", "a.b", "a/b", &"c".repeat(33)] {
            plan_err(
                &with_containers(&container(bad, "np0", None, &[])),
                "containers[0].name",
                bad,
            );
        }
        plan(&with_containers(&container(
            &"c".repeat(32),
            "np0",
            None,
            &[],
        )));
    }

    #[test]
    fn duplicate_container_names() {
        let toml = with_containers(
            &(container("a", "np0", None, &[])
                + &container("b", "np0", None, &[])
                + &container("a", "np0", None, &[])),
        );
        let msg = plan_err(&toml, "containers[2].name", "a");
        assert!(msg.contains("containers[0]"), "{msg}");
    }

    #[test]
    fn unknown_network() {
        let toml = network("np0", "10.0.0.0/24", None)
            + &network("np1", "10.1.0.0/24", None)
            + &container("a", "np0", None, &[])
            + &container("b", "np2", None, &[]);
        let msg = plan_err(&toml, "containers[1].network", "np2");
        assert!(msg.contains("defined: np0, np1"), "{msg}");

        let msg = plan_err(
            &container("a", "np0", None, &[]),
            "containers[0].network",
            "np0",
        );
        assert!(msg.contains("no networks are defined"), "{msg}");
    }

    #[test]
    fn invalid_container_ips() {
        let ip = |ip| with_containers(&container("a", "np0", Some(ip), &[]));
        for bad in [
            "",
            "10.0.0",
            "fd00::2",
            "10.0.1.2",
            "10.0.0.0",
            "10.0.0.255",
            "10.0.0.1",
        ] {
            plan_err(&ip(bad), "containers[0].ip", bad);
        }
        assert!(plan_err(&ip("10.0.0.1"), "containers[0].ip", "10.0.0.1").contains("gateway"));
        assert_eq!(
            plan(&ip("10.0.0.254")).containers[0].ip,
            Ipv4Addr::new(10, 0, 0, 254)
        );
    }

    #[test]
    fn duplicate_container_ips() {
        let toml = with_containers(
            &(container("a", "np0", Some("10.0.0.9"), &[])
                + &container("b", "np0", None, &[])
                + &container("c", "np0", Some("10.0.0.9"), &[])),
        );
        let msg = plan_err(&toml, "containers[2].ip", "10.0.0.9");
        assert!(
            msg.contains("containers[0]") && msg.contains("\"a\""),
            "{msg}"
        );
    }

    #[test]
    fn publish_entries_are_parsed() {
        let plan = plan(&with_containers(&container(
            "a",
            "np0",
            None,
            &["8080:80", "127.0.0.1:5353:53/udp", "9000-9002:9000-9002"],
        )));
        let specs: Vec<String> = plan.containers[0]
            .publish
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            specs,
            [
                "8080:80/tcp",
                "127.0.0.1:5353:53/udp",
                "9000-9002:9000-9002/tcp"
            ]
        );
    }

    #[test]
    fn invalid_publish_entries() {
        for (bad, reason) in [
            ("0:80", "port 0"),
            ("70000:80", "above 65535"),
            ("80", "host port is required"),
            ("8080:80/sctp", "sctp"),
            ("[::1]:80:80", "IPv6"),
            ("9000-9005:9000-9003", "6 ports"),
            ("garbage", "hostPort"),
        ] {
            let toml = with_containers(&container("a", "np0", None, &["1:1", bad]));
            let msg = plan_err(&toml, "containers[0].publish[1]", bad);
            assert!(msg.contains(reason), "{msg}");
        }
    }

    #[test]
    fn conflicting_publish_entries() {
        let conflict = |a: &str, b: &str| {
            let toml = with_containers(
                &(container("a", "np0", None, &[a]) + &container("b", "np0", None, &[b])),
            );
            Config::parse(&toml, "test.toml")
                .expect("parses")
                .plan()
                .err()
                .map(|e| {
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with(&format!("containers[1].publish[0] = {b:?}")),
                        "{msg}"
                    );
                    assert!(
                        msg.contains(&format!("containers[0].publish[0] ({a:?})")),
                        "{msg}"
                    );
                    msg
                })
        };
        let msg = conflict("8080:80/tcp", "8080:80").expect("conflict");
        assert_eq!(
            msg,
            "containers[1].publish[0] = \"8080:80\": host port 8080/tcp is already published \
             by containers[0].publish[0] (\"8080:80/tcp\")"
        );
        assert!(conflict("8080:80/tcp", "8080:80/udp").is_none());
        assert!(conflict("127.0.0.1:8080:80", "8080:80").is_some());
        assert!(conflict("8080:80", "127.0.0.1:8080:80").is_some());
        assert!(conflict("127.0.0.1:8080:80", "127.0.0.2:8080:80").is_none());
        assert!(conflict("0.0.0.0:8080:80", "127.0.0.1:8080:80").is_some());
        let msg = conflict("9000-9005:9000-9005", "8990-9003:1-14").expect("ranges overlap");
        assert!(msg.contains("host port 9000/tcp"), "{msg}");
        assert!(conflict("9000-9005:9000-9005", "9006-9010:1-5").is_none());
    }

    #[test]
    fn conflicting_publish_within_one_container() {
        let toml = with_containers(&container("a", "np0", None, &["53:53/udp", "53:5353/udp"]));
        let msg = plan_err(&toml, "containers[0].publish[1]", "53:5353/udp");
        assert!(msg.contains("containers[0].publish[0]"), "{msg}");
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

    #[test]
    fn plan_round_trips_through_json() {
        let plan = Config::embedded_default().plan().expect("plan");
        let json = serde_json::to_string(&plan).expect("serialize");
        assert!(json.contains("\"subnet\":\"172.18.0.0/16\""), "{json}");
        assert_eq!(
            serde_json::from_str::<Plan>(&json).expect("deserialize"),
            plan
        );
    }
}

#[cfg(test)]
mod conntrack_tests {
    use super::*;

    fn with(section: &str) -> Result<Plan, ConfigError> {
        Config::parse(&format!("[conntrack]\n{section}\n"), "test").and_then(|c| c.plan())
    }

    #[test]
    fn defaults_are_ciliums() {
        let ct = with("").unwrap().conntrack;
        assert_eq!(
            (
                ct.tcp_syn_timeout,
                ct.tcp_established_timeout,
                ct.tcp_closing_timeout
            ),
            (60, 21_600, 10)
        );
        assert_eq!(ct.nat_port_range, [32_768, 60_999]);
    }

    #[test]
    fn settings_are_validated_by_field() {
        assert_eq!(with("udp_timeout = 5").unwrap().conntrack.udp_timeout, 5);
        assert!(with("udp_timeout = 604801").is_err());
        for (section, field) in [
            ("udp_timeout = 0", "conntrack.udp_timeout"),
            (
                "nat_port_range = [40000, 30000]",
                "conntrack.nat_port_range",
            ),
            ("nat_port_range = [80, 90]", "conntrack.nat_port_range"),
            ("max_entries = 10", "conntrack.max_entries"),
        ] {
            let e = with(section).unwrap_err().to_string();
            assert!(e.contains(field), "{section}: {e}");
        }
        assert!(with("bogus = 1").is_err(), "unknown keys are rejected");
    }
}
