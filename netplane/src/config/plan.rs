//! The resolved config: [`Config::plan`] checks everything that can be checked without
//! touching the host and fills in every default, so later stages work from a complete
//! [`Plan`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::alloc::{
    Addresses, Addresses6, first_host, first_host6, parse_host_addr, parse_host_addr6,
    parse_subnet, parse_subnet6,
};
use super::names::{
    check_bridge_name, check_ifname, check_name, container_mac, format_mac, host_veth_name,
    netns_name,
};
use super::publish::{Family, PortMapping};
use super::schema::{
    Config, ConfigError, ContainerConfig, Driver, GatewayMode, Mode, NetworkConfig, RouteConfig,
    invalid,
};
use super::tunables::{ConntrackConfig, EbpfConfig, Metrics, MetricsConfig};

/// A validated config with every default filled in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub name: String,
    pub mode: Mode,
    pub uplink: Option<String>,
    pub networks: Vec<Network>,
    pub containers: Vec<Container>,
    // Defaulted, like `ebpf`, so that a plan recorded without these sections still loads.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub ebpf: EbpfConfig,
    #[serde(default)]
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// Also the bridge device's name (a `bridge` network's).
    pub name: String,
    /// The IPv4 subnet; `None` on an IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// The host's address on the network, the containers' next hop: on the bridge, or on
    /// every host veth of a `ptp` network (as CNI's ptp plugin does). An `isolated`
    /// network has none on the host (see [`Network::has_gateway`]). `None` on an
    /// IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub gateway_mode: GatewayMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// A dual-stack or IPv6-only network's IPv6 subnet, and the host's address on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// What `of` gives for IPv4 (`false`) and IPv6 (`true`), those it has, space-separated.
fn both_families<T: std::fmt::Display>(of: impl Fn(bool) -> Option<T>) -> String {
    let all: Vec<String> = [false, true]
        .into_iter()
        .filter_map(of)
        .map(|x| x.to_string())
        .collect();
    all.join(" ")
}

impl Network {
    /// Whether the host carries the gateway address and the containers a default route.
    pub fn has_gateway(&self) -> bool {
        self.gateway_mode != GatewayMode::Isolated
    }

    /// The subnet of one family (IPv6 when `v6`), when the network has it.
    pub fn subnet_of(&self, v6: bool) -> Option<IpNet> {
        if v6 {
            self.subnet6.map(IpNet::V6)
        } else {
            self.subnet.map(IpNet::V4)
        }
    }

    /// The gateway of one family, when the network has that family.
    pub fn gateway_of(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.gateway6.map(IpAddr::V6)
        } else {
            self.gateway.map(IpAddr::V4)
        }
    }

    /// Its subnets, IPv4's first, as written in messages.
    pub fn describe_subnets(&self) -> String {
        both_families(|v6| self.subnet_of(v6))
    }
}

/// `[[routes]]`: another host's container subnet and the underlay address it is reached
/// through, of one family. Never masqueraded; its containers are peers of the local ones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub subnet: IpNet,
    pub via: IpAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Container {
    pub name: String,
    pub network: String,
    /// Its IPv4 address; `None` on an IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The prefix length of its IPv4 address: the network's on a bridge network, 32 on a
    /// ptp network (0 without one).
    pub prefix_len: u8,
    /// The network's IPv4 gateway, when it has IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Docker style: 02:42 followed by the IPv4 address (on an IPv6-only network, the
    /// last 32 bits of the IPv6 one), so it is stable and readable.
    pub mac: [u8; 6],
    /// `<instance>-<container>`.
    pub netns: String,
    /// The host end of the container's veth pair: `vnp` and a hash of the instance and
    /// container names, so that it fits the kernel's 15-byte limit.
    pub host_veth: String,
    pub publish: Vec<PortMapping>,
    /// Its IPv6 address, on a network with a subnet6 (the prefix is the subnet6's; a ptp
    /// network's is a /128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// A container that a runtime made and attached through CNI (`netplane-cni`): its
    /// namespace is the runtime's, and `netns` is then its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// A CNI attachment: the runtime's container ID and interface name, which identify it
/// (CNI spec: "the tuple (CNI_CONTAINERID, CNI_IFNAME)"), and its namespace's path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
}

impl Container {
    /// The container end of its veth pair: eth0, or the runtime's `CNI_IFNAME`.
    pub fn ifname(&self) -> &str {
        self.attachment
            .as_ref()
            .map_or(crate::topology::CONTAINER_IF, |a| a.ifname.as_str())
    }

    /// Whether netplane made its namespace (and so deletes it); a runtime's it never does.
    pub fn owns_netns(&self) -> bool {
        self.attachment.is_none()
    }

    /// Its IPv4 address with its prefix, when it has one.
    pub fn net4(&self) -> Option<Ipv4Net> {
        self.ip
            .map(|ip| Ipv4Net::new(ip, self.prefix_len).expect("a planned prefix length"))
    }

    /// Its address of one family (IPv6 when `v6`), when it has one.
    pub fn ip_of(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.ip6.map(IpAddr::V6)
        } else {
            self.ip.map(IpAddr::V4)
        }
    }

    /// Its addresses, IPv4's first, as written in messages.
    pub fn describe_addresses(&self) -> String {
        both_families(|v6| self.ip_of(v6))
    }
}

impl Plan {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether a network has a subnet6 (dual-stack or IPv6-only).
    pub fn dual_stack(&self) -> bool {
        self.networks.iter().any(|n| n.subnet6.is_some())
    }

    /// The config that plans to this plan (every address and gateway explicit), for a
    /// caller that changes it and plans again: the CNI plugin adds or removes one
    /// container, and [`Config::plan`] checks the result as it checks a file.
    pub fn to_config(&self) -> Config {
        Config {
            name: self.name.clone(),
            mode: self.mode,
            uplink: self.uplink.clone(),
            networks: self
                .networks
                .iter()
                .map(|n| NetworkConfig {
                    name: n.name.clone(),
                    subnet: n.subnet.map(|s| s.to_string()),
                    gateway: n.gateway.map(|g| g.to_string()),
                    subnet6: n.subnet6.map(|s| s.to_string()),
                    gateway6: n.gateway6.map(|g| g.to_string()),
                    driver: n.driver,
                    gateway_mode: n.gateway_mode,
                    mtu: n.mtu,
                })
                .collect(),
            containers: self
                .containers
                .iter()
                .map(|c| ContainerConfig {
                    name: c.name.clone(),
                    network: c.network.clone(),
                    ip: c.ip.map(|a| a.to_string()),
                    ip6: c.ip6.map(|a| a.to_string()),
                    publish: c.publish.iter().map(|p| p.spec.clone()).collect(),
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteConfig {
                    subnet: r.subnet.to_string(),
                    via: r.via.to_string(),
                })
                .collect(),
            conntrack: self.conntrack,
            ebpf: self.ebpf,
            metrics: MetricsConfig {
                listen: self.metrics.listen.map(|a| a.to_string()),
            },
        }
    }
}

/// A `[[routes]]` subnet, IPv4 or IPv6: any prefix length (a /32 or /128 is one remote
/// container), but unicast space only: not the default route, nor loopback, "this
/// network" or unspecified, multicast, IPv4's reserved 240.0.0.0/4, IPv6's link-local or
/// IPv4-mapped space.
fn parse_route_subnet(field: &str, value: &str) -> Result<IpNet, ConfigError> {
    let subnet: IpNet = value.parse().map_err(|_| {
        invalid(
            field,
            value,
            "not a subnet in CIDR form, e.g. \"10.0.2.0/24\" or \"2001:db8:2::/64\"",
        )
    })?;
    if subnet.trunc() != subnet {
        return Err(invalid(
            field,
            value,
            format!("has host bits set; did you mean {}?", subnet.trunc()),
        ));
    }
    if subnet.prefix_len() == 0 {
        return Err(invalid(
            field,
            value,
            "the default route is not another host's container subnet",
        ));
    }
    let net = |s: &str| s.parse::<IpNet>().expect("a literal prefix");
    let reserved: &[(&str, IpNet)] = match subnet {
        IpNet::V4(_) => &[
            ("\"this network\"", net("0.0.0.0/8")),
            ("loopback", net("127.0.0.0/8")),
            ("multicast", net("224.0.0.0/4")),
            ("reserved", net("240.0.0.0/4")),
        ],
        IpNet::V6(_) => &[
            ("unspecified", net("::/128")),
            ("loopback", net("::1/128")),
            ("IPv4-mapped", net("::ffff:0:0/96")),
            ("link-local", net("fe80::/10")),
            ("multicast", net("ff00::/8")),
        ],
    };
    if let Some((what, _)) = reserved
        .iter()
        .find(|(_, r)| r.contains(&subnet) || subnet.contains(r))
    {
        return Err(invalid(
            field,
            value,
            format!("overlaps {what} address space"),
        ));
    }
    Ok(subnet)
}

/// A `[[routes]]` next hop, of `subnet`'s family: a unicast address another host can
/// have. IPv6's link-local ones are refused: a route through one needs its device named.
fn parse_route_via(field: &str, value: &str, subnet: IpNet) -> Result<IpAddr, ConfigError> {
    let via: IpAddr = value
        .parse()
        .map_err(|_| invalid(field, value, "not an IPv4 or IPv6 address"))?;
    let family = |v6: bool| if v6 { "IPv6" } else { "IPv4" };
    let v6 = matches!(subnet, IpNet::V6(_));
    if via.is_ipv6() != v6 {
        return Err(invalid(
            field,
            value,
            format!(
                "an {} address for the {} subnet {subnet}: subnet and via are of one family",
                family(via.is_ipv6()),
                family(v6)
            ),
        ));
    }
    let unusable = match via {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_multicast()
                || a.is_loopback()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some()
        }
    };
    if unusable {
        return Err(invalid(field, value, "not a global unicast host address"));
    }
    Ok(via)
}

/// Refuses the next network's `key` (`subnet` or `subnet6`), written `text`, when it
/// overlaps a subnet of its family of `networks`: every earlier entry, kept, so that
/// their indices are the config's and the next one's is their number.
fn no_overlap(
    networks: &[Network],
    key: &str,
    text: &str,
    subnet: IpNet,
) -> Result<(), ConfigError> {
    let v6 = matches!(subnet, IpNet::V6(_));
    let found = networks.iter().enumerate().find_map(|(j, n)| {
        let theirs = n.subnet_of(v6)?;
        (theirs.contains(&subnet) || subnet.contains(&theirs)).then_some((j, n, theirs))
    });
    match found {
        Some((j, other, theirs)) => Err(invalid(
            format!("networks[{}].{key}", networks.len()),
            text,
            format!(
                "overlaps networks[{j}].{key} ({theirs}) of network {:?}",
                other.name
            ),
        )),
        None => Ok(()),
    }
}

impl Config {
    /// Validates everything that can be checked without looking at the host, and
    /// resolves defaults (gateways, container addresses, device names).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        check_name("name", &self.name)?;
        if let Some(uplink) = &self.uplink {
            check_ifname("uplink", uplink)?;
        }
        let networks = self.plan_networks()?;
        let containers = self.plan_containers(&networks)?;
        let routes = self.plan_routes(&networks)?;
        self.conntrack.validate()?;
        Ok(Plan {
            name: self.name.clone(),
            mode: self.mode,
            uplink: self.uplink.clone(),
            networks,
            containers,
            routes,
            conntrack: self.conntrack,
            ebpf: self.ebpf,
            metrics: self.metrics.plan()?,
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

            if net.subnet.is_none() && net.subnet6.is_none() {
                return Err(invalid(
                    field("name"),
                    &net.name,
                    "the network has neither subnet nor subnet6; give it one or both",
                ));
            }
            let subnet = match &net.subnet {
                None => None,
                Some(text) => {
                    let subnet = parse_subnet(&field("subnet"), text)?;
                    no_overlap(&networks, "subnet", text, IpNet::V4(subnet))?;
                    Some(subnet)
                }
            };

            let gateway = match (&net.gateway, subnet) {
                (None, s) => s.map(first_host),
                (Some(text), Some(s)) => Some(parse_host_addr(&field("gateway"), text, s)?),
                (Some(text), None) => {
                    return Err(invalid(
                        field("gateway"),
                        text,
                        "the network has no subnet (it is IPv6-only)",
                    ));
                }
            };

            let subnet6 = match &net.subnet6 {
                None => None,
                Some(text) => {
                    let s6 = parse_subnet6(&field("subnet6"), text)?;
                    no_overlap(&networks, "subnet6", text, IpNet::V6(s6))?;
                    Some(s6)
                }
            };
            let gateway6 = match (&net.gateway6, subnet6) {
                (None, s6) => s6.map(first_host6),
                (Some(text), Some(s6)) => Some(parse_host_addr6(&field("gateway6"), text, s6)?),
                (Some(text), None) => {
                    return Err(invalid(
                        field("gateway6"),
                        text,
                        "the network has no subnet6",
                    ));
                }
            };

            if net.driver == Driver::Ptp && net.gateway_mode == GatewayMode::Isolated {
                return Err(invalid(
                    field("gateway_mode"),
                    "isolated",
                    "a ptp network's containers reach each other only through the host's \
                     routing, so it needs a gateway; use driver = \"bridge\"",
                ));
            }

            networks.push(Network {
                name: net.name.clone(),
                subnet,
                gateway,
                driver: net.driver,
                gateway_mode: net.gateway_mode,
                mtu: match net.mtu {
                    // IPv4's minimum (RFC 791), and the largest a veth takes.
                    Some(m) if !(68..=65535).contains(&m) => {
                        return Err(invalid(
                            field("mtu"),
                            &m.to_string(),
                            "must be between 68 and 65535",
                        ));
                    }
                    // Below IPv6's minimum (RFC 8200) the kernel turns IPv6 off on the
                    // device (addrconf_notify(), NETDEV_CHANGEMTU).
                    Some(m) if subnet6.is_some() && m < 1280 => {
                        return Err(invalid(
                            field("mtu"),
                            &m.to_string(),
                            "the network has a subnet6, and IPv6 needs at least 1280",
                        ));
                    }
                    m => m,
                },
                subnet6,
                gateway6,
            });
        }
        Ok(networks)
    }

    /// `[[routes]]`: each a subnet of its own, away from every local network, via an
    /// address outside them, of the subnet's family. (That `via` is on a local link is
    /// checked against the host, at `up`.)
    fn plan_routes(&self, networks: &[Network]) -> Result<Vec<Route>, ConfigError> {
        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            let subnet = parse_route_subnet(&field("subnet"), &r.subnet)?;
            let v6 = matches!(subnet, IpNet::V6(_));
            let key = if v6 { "subnet6" } else { "subnet" };
            let overlaps = |other: &IpNet| other.contains(&subnet) || subnet.contains(other);
            if let Some((j, n, local)) = networks
                .iter()
                .enumerate()
                .find_map(|(j, n)| Some((j, n, n.subnet_of(v6).filter(overlaps)?)))
            {
                return Err(invalid(
                    field("subnet"),
                    &r.subnet,
                    format!(
                        "overlaps networks[{j}].{key} ({local}) of network {:?}: a routed \
                         subnet is another host's",
                        n.name
                    ),
                ));
            }
            if let Some((j, o)) = routes.iter().enumerate().find(|(_, o)| overlaps(&o.subnet)) {
                return Err(invalid(
                    field("subnet"),
                    &r.subnet,
                    format!("overlaps routes[{j}].subnet ({})", o.subnet),
                ));
            }
            let via = parse_route_via(&field("via"), &r.via, subnet)?;
            if let Some((n, local)) = networks
                .iter()
                .find_map(|n| Some((n, n.subnet_of(v6).filter(|s| s.contains(&via))?)))
            {
                return Err(invalid(
                    field("via"),
                    &r.via,
                    format!(
                        "inside the {key} {local} of local network {:?}: the next hop is \
                         another host's underlay address",
                        n.name
                    ),
                ));
            }
            if subnet.contains(&via) {
                return Err(invalid(
                    field("via"),
                    &r.via,
                    format!("inside the routed subnet {subnet} itself"),
                ));
            }
            routes.push(Route { subnet, via });
        }
        Ok(routes)
    }

    /// Two passes: validate every container and reserve the explicit addresses, then hand
    /// out the rest in config order, so an explicit address never depends on its position.
    fn plan_containers(&self, networks: &[Network]) -> Result<Vec<Container>, ConfigError> {
        struct Pending<'a> {
            network: &'a Network,
            ip: Option<Ipv4Addr>,
            ip6: Option<Ipv6Addr>,
            publish: Vec<PortMapping>,
            host_veth: String,
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut veths: HashMap<String, usize> = HashMap::new();
        let mut addresses = Addresses::default();
        let mut addresses6 = Addresses6::default();
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

            let ip = match (&c.ip, network.subnet) {
                (None, _) => None,
                (Some(text), None) => {
                    return Err(invalid(
                        field("ip"),
                        text,
                        format!("network {:?} has no subnet (it is IPv6-only)", network.name),
                    ));
                }
                (Some(text), Some(subnet)) => {
                    let ip = parse_host_addr(&field("ip"), text, subnet)?;
                    if Some(ip) == network.gateway {
                        return Err(invalid(
                            field("ip"),
                            text,
                            format!("is the gateway of network {:?}", network.name),
                        ));
                    }
                    if let Err(j) = addresses.reserve(ip, i) {
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

            let ip6 = match (&c.ip6, network.subnet6) {
                (None, _) => None,
                (Some(text), None) => {
                    return Err(invalid(
                        field("ip6"),
                        text,
                        format!("network {:?} has no subnet6", network.name),
                    ));
                }
                (Some(text), Some(s6)) => {
                    let ip6 = parse_host_addr6(&field("ip6"), text, s6)?;
                    if Some(ip6) == network.gateway6 {
                        return Err(invalid(
                            field("ip6"),
                            text,
                            format!("is the gateway6 of network {:?}", network.name),
                        ));
                    }
                    if let Err(j) = addresses6.reserve(ip6, i) {
                        return Err(invalid(
                            field("ip6"),
                            text,
                            format!(
                                "already assigned to containers[{j}] ({:?})",
                                self.containers[j].name
                            ),
                        ));
                    }
                    Some(ip6)
                }
            };

            let mut publish = Vec::with_capacity(c.publish.len());
            for (j, spec) in c.publish.iter().enumerate() {
                let field = format!("containers[{i}].publish[{j}]");
                let mapping = PortMapping::parse(spec).map_err(|r| invalid(&field, spec, r))?;
                if mapping.family == Family::V6 && network.subnet6.is_none() {
                    return Err(invalid(
                        field,
                        spec,
                        format!(
                            "an IPv6 host address, but network {:?} has no subnet6",
                            network.name
                        ),
                    ));
                }
                if mapping.family == Family::V4 && network.subnet.is_none() {
                    return Err(invalid(
                        field,
                        spec,
                        format!(
                            "an IPv4 host address, but network {:?} has no subnet (it is \
                             IPv6-only)",
                            network.name
                        ),
                    ));
                }
                match network.gateway_mode {
                    GatewayMode::Isolated => {
                        return Err(invalid(
                            field,
                            spec,
                            format!(
                                "network {:?} is isolated: nothing outside it can reach its \
                                 containers",
                                network.name
                            ),
                        ));
                    }
                    // Docker's routed mode opens the container port by direct routing, and
                    // ignores the host port; a host address would mean a DNAT it never does.
                    GatewayMode::Routed => {
                        if let Some(ip) = mapping
                            .host_ip
                            .map(std::net::IpAddr::from)
                            .or(mapping.host_ip6.map(Into::into))
                        {
                            return Err(invalid(
                                field,
                                spec,
                                format!(
                                    "network {:?} is routed: its published container ports \
                                     are reached at the container's address, so host \
                                     address {ip} cannot apply",
                                    network.name
                                ),
                            ));
                        }
                        // Host ports are not taken on the host: no clash to look for.
                        publish.push(mapping);
                        continue;
                    }
                    GatewayMode::Nat | GatewayMode::NatUnprotected => {}
                }
                // Without a host address, a mapping publishes only in the families its
                // network has: that is what may clash.
                let mut claims = mapping.clone();
                if claims.family == Family::Both {
                    match (network.subnet, network.subnet6) {
                        (Some(_), None) => claims.family = Family::V4,
                        (None, Some(_)) => claims.family = Family::V6,
                        _ => {}
                    }
                }
                if let Some((oi, oj, other)) =
                    published.iter().find(|(_, _, m)| m.overlaps(&claims))
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
                published.push((i, j, claims));
                publish.push(mapping);
            }

            pending.push(Pending {
                network,
                ip,
                ip6,
                publish,
                host_veth,
            });
        }

        let mut containers = Vec::with_capacity(pending.len());
        // An IPv6-only container's MAC comes from its address's last 32 bits, which two
        // addresses of one subnet6 may share; an IPv4 one never clashes.
        let mut macs: HashMap<(&str, [u8; 6]), usize> = HashMap::new();
        for (i, (c, p)) in self.containers.iter().zip(pending).enumerate() {
            let net = p.network;
            let ip = match (p.ip, net.subnet) {
                (Some(ip), _) => Some(ip),
                (None, None) => None,
                (None, Some(subnet)) => Some(addresses.allocate(net, i).ok_or_else(|| {
                    invalid(
                        format!("containers[{i}].network"),
                        &c.network,
                        format!("no free address left in subnet {subnet}"),
                    )
                })?),
            };
            let ip6 = match (p.ip6, net.subnet6) {
                (Some(ip6), _) => Some(ip6),
                (None, None) => None,
                (None, Some(s6)) => Some(addresses6.allocate(net, i).ok_or_else(|| {
                    invalid(
                        format!("containers[{i}].network"),
                        &c.network,
                        format!("no free address left in subnet6 {s6}"),
                    )
                })?),
            };
            let mac = container_mac(
                ip.map(IpAddr::V4)
                    .or(ip6.map(IpAddr::V6))
                    .expect("a planned network has a subnet or a subnet6"),
            );
            if let Some(j) = macs.insert((&net.name, mac), i) {
                return Err(invalid(
                    format!("containers[{i}].ip6"),
                    &ip6.map(|a| a.to_string()).unwrap_or_default(),
                    format!(
                        "its MAC {} (from the address's last 32 bits) is that of \
                         containers[{j}] ({:?}) on the same network; give one an address \
                         that differs there",
                        format_mac(mac),
                        self.containers[j].name
                    ),
                ));
            }
            containers.push(Container {
                name: c.name.clone(),
                network: net.name.clone(),
                ip,
                // A ptp container is alone on its link: its address is a /32.
                prefix_len: match (net.driver, net.subnet) {
                    (_, None) => 0,
                    (Driver::Bridge, Some(subnet)) => subnet.prefix_len(),
                    (Driver::Ptp, Some(_)) => 32,
                },
                gateway: net.gateway,
                mac,
                netns: netns_name(&self.name, &c.name),
                host_veth: p.host_veth,
                publish: p.publish,
                ip6,
                attachment: None,
            });
        }
        Ok(containers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::format_mac;
    use crate::config::testutil::{container, network, plan, plan_err, with_containers};

    #[test]
    fn dual_stack_networks_plan_ipv6_addresses() {
        let toml = r#"
            [[networks]]
            name = "np0"
            subnet = "10.0.0.0/24"
            subnet6 = "2001:db8:18::/64"
            [[networks]]
            name = "np1"
            subnet = "10.0.1.0/24"
            [[containers]]
            name = "a"
            network = "np0"
            publish = ["8080:80", "[::1]:8081:80", "[2001:db8:113::1]:8082:80/udp"]
            [[containers]]
            name = "b"
            network = "np0"
            ip6 = "2001:db8:18::2"
            [[containers]]
            name = "c"
            network = "np1"
        "#;
        let p = plan(toml);
        let net = &p.networks[0];
        assert_eq!(net.gateway6, Some("2001:db8:18::1".parse().unwrap()));
        // The explicit address is reserved first: the automatic one skips it.
        assert_eq!(p.containers[1].ip6, Some("2001:db8:18::2".parse().unwrap()));
        assert_eq!(p.containers[0].ip6, Some("2001:db8:18::3".parse().unwrap()));
        assert_eq!((p.networks[1].subnet6, p.containers[2].ip6), (None, None));
        // And the plan survives the trip back to a config.
        assert_eq!(p.to_config().plan().unwrap(), p);
    }

    /// An IPv6-only network `np6` (2001:db8:6::/64) beside an IPv4-only `np4`, with the
    /// given extra TOML.
    fn v6_only(extra: &str) -> String {
        format!(
            "[[networks]]\nname = \"np6\"\nsubnet6 = \"2001:db8:6::/64\"\n\
             [[networks]]\nname = \"np4\"\nsubnet = \"10.0.4.0/24\"\n{extra}"
        )
    }

    #[test]
    fn ipv6_only_networks_plan_without_ipv4() {
        let p = plan(&v6_only(
            "[[containers]]\nname = \"a\"\nnetwork = \"np6\"\npublish = [\"8080:80\", \"[::]:53:53/udp\"]\n\
             [[containers]]\nname = \"b\"\nnetwork = \"np6\"\nip6 = \"2001:db8:6::a:b0c\"\n\
             [[containers]]\nname = \"c\"\nnetwork = \"np4\"\npublish = [\"8080:80\"]\n",
        ));
        let net = &p.networks[0];
        assert_eq!((net.subnet, net.gateway), (None, None));
        assert_eq!(net.gateway6, Some("2001:db8:6::1".parse().unwrap()));
        assert_eq!(net.describe_subnets(), "2001:db8:6::/64");
        let (a, b) = (p.container("a").unwrap(), p.container("b").unwrap());
        assert_eq!((a.ip, a.gateway, a.net4()), (None, None, None));
        assert_eq!(a.ip6, Some("2001:db8:6::2".parse().unwrap()));
        // The MAC comes from the IPv6 address's last 32 bits.
        assert_eq!(format_mac(b.mac), "02:42:00:0a:0b:0c");
        assert_eq!(a.describe_addresses(), "2001:db8:6::2");
        // Both publish 8080 without a host address: on IPv6 and on IPv4 only, no clash.
        assert_eq!(p.container("c").unwrap().publish.len(), 1);
        // The plan survives the trip back to a config, and JSON without an IPv4 field.
        assert_eq!(p.to_config().plan().unwrap(), p);
        let json = serde_json::to_string(&p.networks[0]).unwrap();
        assert!(
            !json.contains("\"subnet\"") && !json.contains("\"gateway\""),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Network>(&json).unwrap(),
            p.networks[0]
        );
        let json = serde_json::to_string(a).unwrap();
        assert!(
            !json.contains("\"ip\"") && !json.contains("\"gateway\""),
            "{json}"
        );
        assert_eq!(&serde_json::from_str::<Container>(&json).unwrap(), a);
    }

    #[test]
    fn bad_ipv6_only_input_names_the_field() {
        let msg = plan_err("[[networks]]\nname = \"np6\"\n", "networks[0].name", "np6");
        assert!(msg.contains("neither subnet nor subnet6"), "{msg}");
        let one = |extra: &str| {
            v6_only(&format!(
                "[[containers]]\nname = \"a\"\nnetwork = \"np6\"\n{extra}\n"
            ))
        };
        for (toml, field, value, why) in [
            (
                v6_only("").replace(
                    "subnet6 = \"2001:db8:6::/64\"",
                    "subnet6 = \"2001:db8:6::/64\"\ngateway = \"10.0.6.1\"",
                ),
                "networks[0].gateway",
                "10.0.6.1",
                "no subnet",
            ),
            (
                one("ip = \"10.0.6.2\""),
                "containers[0].ip",
                "10.0.6.2",
                "has no subnet",
            ),
            (
                one("publish = [\"0.0.0.0:8080:80\"]"),
                "containers[0].publish[0]",
                "0.0.0.0:8080:80",
                "an IPv4 host address",
            ),
            (
                one("publish = [\"127.0.0.1:8080:80\"]"),
                "containers[0].publish[0]",
                "127.0.0.1:8080:80",
                "an IPv4 host address",
            ),
            (
                v6_only("").replace(
                    "subnet6 = \"2001:db8:6::/64\"",
                    "subnet6 = \"2001:db8:6::/64\"\nmtu = 1200",
                ),
                "networks[0].mtu",
                "1200",
                "at least 1280",
            ),
            (
                one("ip6 = \"2001:db8:6::1:0:0:5\"")
                    + "[[containers]]\nname = \"b\"\nnetwork = \"np6\"\nip6 = \"2001:db8:6::5\"\n",
                "containers[1].ip6",
                "2001:db8:6::5",
                "containers[0]",
            ),
        ] {
            let msg = plan_err(&toml, field, value);
            assert!(msg.contains(why), "{msg}");
        }
        // A host port that both families of one mapping claim: a dual-stack network's
        // [::]:8080 and an IPv6-only network's 8080 clash.
        let toml = v6_only(
            "[[networks]]\nname = \"npd\"\nsubnet = \"10.0.5.0/24\"\nsubnet6 = \"2001:db8:5::/64\"\n\
             [[containers]]\nname = \"a\"\nnetwork = \"npd\"\npublish = [\"[::]:8080:80\"]\n\
             [[containers]]\nname = \"b\"\nnetwork = \"np6\"\npublish = [\"8080:80\"]\n",
        );
        let msg = plan_err(&toml, "containers[1].publish[0]", "8080:80");
        assert!(msg.contains("containers[0].publish[0]"), "{msg}");
    }

    #[test]
    fn ipv6_routes_plan_and_bad_ones_name_the_field() {
        let route =
            |subnet: &str, via: &str| format!("[[routes]]\nsubnet = {subnet:?}\nvia = {via:?}\n");
        let p = plan(&v6_only(
            &(route("2001:db8:2::/64", "2001:db8:c0::12") + &route("10.0.2.0/24", "192.0.2.12")),
        ));
        assert_eq!(
            p.routes[0],
            Route {
                subnet: "2001:db8:2::/64".parse().unwrap(),
                via: "2001:db8:c0::12".parse().unwrap(),
            }
        );
        assert_eq!(p.to_config().plan().unwrap(), p);
        for (toml, field, value, why) in [
            (
                route("2001:db8:2::/64", "192.0.2.12"),
                "routes[0].via",
                "192.0.2.12",
                "of one family",
            ),
            (
                route("10.0.2.0/24", "2001:db8:c0::12"),
                "routes[0].via",
                "2001:db8:c0::12",
                "of one family",
            ),
            (
                route("2001:db8:6:0:8000::/65", "2001:db8:c0::12"),
                "routes[0].subnet",
                "2001:db8:6:0:8000::/65",
                "networks[0].subnet6",
            ),
            (
                route("2001:db8:2::/64", "2001:db8:6::9"),
                "routes[0].via",
                "2001:db8:6::9",
                "np6",
            ),
            (
                route("2001:db8:2::/64", "2001:db8:2::1"),
                "routes[0].via",
                "2001:db8:2::1",
                "routed subnet",
            ),
            (
                route("2001:db8:2::/64", "fe80::12"),
                "routes[0].via",
                "fe80::12",
                "global unicast",
            ),
            (
                route("fe80::/64", "2001:db8:c0::12"),
                "routes[0].subnet",
                "fe80::/64",
                "link-local",
            ),
            (
                route("::/0", "2001:db8:c0::12"),
                "routes[0].subnet",
                "::/0",
                "default",
            ),
            (
                route("ff02::/16", "2001:db8:c0::12"),
                "routes[0].subnet",
                "ff02::/16",
                "multicast",
            ),
            (
                route("2001:db8:2::1/64", "2001:db8:c0::12"),
                "routes[0].subnet",
                "2001:db8:2::1/64",
                "2001:db8:2::/64",
            ),
            (
                route("2001:db8:2::/64", "2001:db8:c0::12")
                    + &route("2001:db8:2::/48", "2001:db8:c0::13"),
                "routes[1].subnet",
                "2001:db8:2::/48",
                "routes[0]",
            ),
        ] {
            let msg = plan_err(&v6_only(&toml), field, value);
            assert!(msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn bad_ipv6_input_names_the_field() {
        let net = |extra: &str| {
            format!(
                "[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\n{extra}\n\
                 [[networks]]\nname = \"np1\"\nsubnet = \"10.0.1.0/24\"\nsubnet6 = \"2001:db8:1::/64\"\n"
            )
        };
        let cases: [(&str, &str, &str, &str); 6] = [
            (
                "subnet6 = \"2001:db8::/48\"",
                "networks[0].subnet6",
                "2001:db8::/48",
                "/64 to /120",
            ),
            (
                "subnet6 = \"2001:db8:1::/80\"",
                "networks[1].subnet6",
                "2001:db8:1::/64",
                "overlaps",
            ),
            (
                "subnet6 = \"fe80::/64\"",
                "networks[0].subnet6",
                "fe80::/64",
                "link-local",
            ),
            (
                "gateway6 = \"2001:db8:9::1\"",
                "networks[0].gateway6",
                "2001:db8:9::1",
                "no subnet6",
            ),
            (
                "[[containers]]\nname = \"a\"\nnetwork = \"np0\"\nip6 = \"2001:db8:1::5\"",
                "containers[0].ip6",
                "2001:db8:1::5",
                "has no subnet6",
            ),
            (
                "[[containers]]\nname = \"a\"\nnetwork = \"np0\"\npublish = [\"[::1]:80:80\"]",
                "containers[0].publish[0]",
                "[::1]:80:80",
                "has no subnet6",
            ),
        ];
        for (extra, field, value, why) in cases {
            // The overlap is reported on the second network, which comes later.
            let toml = if why == "overlaps" {
                format!(
                    "{}{}",
                    net(""),
                    "[[networks]]\nname = \"np2\"\nsubnet = \"10.0.2.0/24\"\nsubnet6 = \"2001:db8:1::/80\"\n"
                )
            } else {
                net(extra)
            };
            let (field, value) = if why == "overlaps" {
                ("networks[2].subnet6", "2001:db8:1::/80")
            } else {
                (field, value)
            };
            let msg = plan_err(&toml, field, value);
            assert!(msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn a_network_mtu_is_checked() {
        let net = |mtu: &str| {
            format!("[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\nmtu = {mtu}\n")
        };
        assert_eq!(plan(&net("1400")).networks[0].mtu, Some(1400));
        let msg = plan_err(&net("40"), "networks[0].mtu", "40");
        assert!(msg.contains("between 68 and 65535"), "{msg}");
    }

    #[test]
    fn default_config_plans() {
        let plan = Config::embedded_default().plan().expect("default plans");
        assert_eq!(plan.name, "netplane");
        assert_eq!(plan.mode, Mode::Ebpf);
        assert_eq!(plan.uplink, None);

        let np0 = plan.network("np0").expect("np0");
        assert_eq!(np0.subnet, Some("172.18.0.0/16".parse().expect("net")));
        assert_eq!(np0.gateway, Some(Ipv4Addr::new(172, 18, 0, 1)));

        let web = plan.container("web").expect("web");
        assert_eq!(web.ip, Some(Ipv4Addr::new(172, 18, 0, 2)));
        assert_eq!(web.prefix_len, 16);
        assert_eq!(web.gateway, np0.gateway);
        assert_eq!(format_mac(web.mac), "02:42:ac:12:00:02");
        assert_eq!(web.netns, "netplane-web");
        assert_eq!(web.publish.len(), 1);
        assert_eq!(web.publish[0].to_string(), "8080:80/tcp");

        let client = plan.container("client").expect("client");
        assert_eq!(client.ip, Some(Ipv4Addr::new(172, 18, 0, 3)));
        assert_eq!(client.netns, "netplane-client");
        assert!(client.publish.is_empty());

        assert!(plan.container("nope").is_none());
        assert!(plan.network("nope").is_none());
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

    #[test]
    fn duplicate_network_names() {
        let toml = network("np0", "10.0.0.0/24", None) + &network("np0", "10.1.0.0/24", None);
        let msg = plan_err(&toml, "networks[1].name", "np0");
        assert!(msg.contains("networks[0]"), "{msg}");
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
    fn drivers_gateway_modes_and_routes_plan() {
        let plan = plan(
            r#"
            [[networks]]
            name = "np1"
            subnet = "10.0.1.0/24"
            driver = "ptp"
            gateway_mode = "routed"
            [[networks]]
            name = "np2"
            subnet = "10.0.3.0/24"
            gateway_mode = "isolated"
            [[containers]]
            name = "web"
            network = "np1"
            publish = ["8080:80", "53:53/udp"]
            [[containers]]
            name = "other"
            network = "np1"
            publish = ["8080:80"]
            [[routes]]
            subnet = "10.0.2.0/24"
            via = "192.0.2.12"
            "#,
        );
        let np1 = plan.network("np1").expect("np1");
        assert_eq!(
            (np1.driver, np1.gateway_mode),
            (Driver::Ptp, GatewayMode::Routed)
        );
        assert!(np1.has_gateway() && !plan.network("np2").expect("np2").has_gateway());
        assert_eq!(plan.network("np2").expect("np2").driver, Driver::Bridge);
        // Routed: host ports are not taken, so two containers may name the same one.
        assert_eq!(plan.container("other").expect("other").publish.len(), 1);
        assert_eq!(
            plan.routes,
            [Route {
                subnet: "10.0.2.0/24".parse().expect("net"),
                via: Ipv4Addr::new(192, 0, 2, 12).into(),
            }]
        );
    }

    #[test]
    fn bad_routes_and_gateway_modes() {
        let net = network("np0", "10.0.0.0/24", None);
        let route =
            |subnet: &str, via: &str| format!("[[routes]]\nsubnet = {subnet:?}\nvia = {via:?}\n");
        for (toml, field, value, reason) in [
            (
                route("10.0.0.128/25", "192.0.2.2"),
                "routes[0].subnet",
                "10.0.0.128/25",
                "networks[0]",
            ),
            (
                route("10.0.2.0/24", "10.0.0.7"),
                "routes[0].via",
                "10.0.0.7",
                "np0",
            ),
            (
                route("10.0.2.0/24", "10.0.2.1"),
                "routes[0].via",
                "10.0.2.1",
                "routed subnet",
            ),
            (
                route("10.0.2.0/24", "nowhere"),
                "routes[0].via",
                "nowhere",
                "IPv4",
            ),
            (
                route("224.0.0.0/4", "192.0.2.2"),
                "routes[0].subnet",
                "224.0.0.0/4",
                "multicast",
            ),
            (
                route("0.0.0.0/0", "192.0.2.2"),
                "routes[0].subnet",
                "0.0.0.0/0",
                "default",
            ),
            (
                route("10.0.2.1/24", "192.0.2.2"),
                "routes[0].subnet",
                "10.0.2.1/24",
                "10.0.2.0/24",
            ),
            (
                route("10.0.2.0/24", "192.0.2.2") + &route("10.0.0.0/8", "192.0.2.3"),
                "routes[1].subnet",
                "10.0.0.0/8",
                "networks[0]",
            ),
            (
                route("10.0.2.0/24", "192.0.2.2") + &route("10.0.2.0/25", "192.0.2.3"),
                "routes[1].subnet",
                "10.0.2.0/25",
                "routes[0]",
            ),
        ] {
            let msg = plan_err(&(net.clone() + &toml), field, value);
            assert!(msg.contains(reason), "{msg}");
        }
        let ptp_isolated = "[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\n\
                            driver = \"ptp\"\ngateway_mode = \"isolated\"\n";
        plan_err(ptp_isolated, "networks[0].gateway_mode", "isolated");
        let with_mode = |mode: &str, publish: &str| {
            format!(
                "[[networks]]\nname = \"np0\"\nsubnet = \"10.0.0.0/24\"\n\
                 gateway_mode = {mode:?}\n{}",
                container("a", "np0", None, &[publish])
            )
        };
        let msg = plan_err(
            &with_mode("routed", "192.0.2.1:8080:80"),
            "containers[0].publish[0]",
            "192.0.2.1:8080:80",
        );
        assert!(msg.contains("routed") && msg.contains("192.0.2.1"), "{msg}");
        let msg = plan_err(
            &with_mode("isolated", "8080:80"),
            "containers[0].publish[0]",
            "8080:80",
        );
        assert!(msg.contains("isolated"), "{msg}");
        plan(&with_mode("nat-unprotected", "127.0.0.1:8080:80"));
        // One remote container is a route of its own.
        plan(&(net.clone() + &route("10.0.2.7/32", "192.0.2.2")));
    }

    #[test]
    fn conflicting_publish_within_one_container() {
        let toml = with_containers(&container("a", "np0", None, &["53:53/udp", "53:5353/udp"]));
        let msg = plan_err(&toml, "containers[0].publish[1]", "53:5353/udp");
        assert!(msg.contains("containers[0].publish[0]"), "{msg}");
    }
}
