//! The resolved config: [`Config::plan`] checks everything that can be checked without
//! touching the host and fills in every default, so later stages work from a complete
//! [`Plan`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::alloc::{
    Addresses, Addresses6, first_host, first_host6, parse_host_addr, parse_host_addr6,
    parse_subnet, parse_subnet6,
};
use super::names::{
    check_bridge_name, check_ifname, check_name, container_mac, host_veth_name, netns_name,
};
use super::publish::{Family, PortMapping};
use super::schema::{
    Config, ConfigError, ContainerConfig, Driver, GatewayMode, Mode, NetworkConfig, RouteConfig,
    invalid,
};
use super::tunables::{ConntrackConfig, EbpfConfig};

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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// Also the bridge device's name (a `bridge` network's).
    pub name: String,
    pub subnet: Ipv4Net,
    /// The host's address on the network, the containers' next hop: on the bridge, or on
    /// every host veth of a `ptp` network (as CNI's ptp plugin does). An `isolated`
    /// network has none on the host (see [`Network::has_gateway`]).
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub gateway_mode: GatewayMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// A dual-stack network's IPv6 subnet, and the host's address on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

impl Network {
    /// Whether the host carries the gateway address and the containers a default route.
    pub fn has_gateway(&self) -> bool {
        self.gateway_mode != GatewayMode::Isolated
    }
}

/// `[[routes]]`: another host's container subnet and the underlay address it is reached
/// through. Never masqueraded; its containers are peers of the local ones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Container {
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// The network's prefix length on a bridge network, 32 on a ptp network.
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Docker style: 02:42 followed by the IPv4 address, so it is stable and readable.
    pub mac: [u8; 6],
    /// `<instance>-<container>`.
    pub netns: String,
    /// The host end of the container's veth pair: `vnp` and a hash of the instance and
    /// container names, so that it fits the kernel's 15-byte limit.
    pub host_veth: String,
    pub publish: Vec<PortMapping>,
    /// Its IPv6 address, on a dual-stack network (the prefix is the subnet6's; a ptp
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
}

impl Plan {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether a network has a subnet6 (dual-stack).
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
                    subnet: n.subnet.to_string(),
                    gateway: Some(n.gateway.to_string()),
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
                    ip: Some(c.ip.to_string()),
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
        }
    }
}

/// A `[[routes]]` subnet: any prefix length (a /32 is one remote container), but unicast
/// space only: not the default route, nor loopback, "this network", multicast or the
/// reserved 240.0.0.0/4.
fn parse_route_subnet(field: &str, value: &str) -> Result<Ipv4Net, ConfigError> {
    let subnet: Ipv4Net = value.parse().map_err(|_| {
        invalid(
            field,
            value,
            "not an IPv4 subnet in CIDR form, e.g. \"10.0.2.0/24\"",
        )
    })?;
    if subnet.trunc() != subnet {
        return Err(invalid(
            field,
            value,
            format!("has host bits set; did you mean {}?", subnet.trunc()),
        ));
    }
    let reserved: [(&str, Ipv4Net); 4] = [
        (
            "\"this network\"",
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 8).expect("/8"),
        ),
        (
            "loopback",
            Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("/8").trunc(),
        ),
        (
            "multicast",
            Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("/4"),
        ),
        (
            "reserved",
            Ipv4Net::new(Ipv4Addr::new(240, 0, 0, 0), 4).expect("/4"),
        ),
    ];
    if subnet.prefix_len() == 0 {
        return Err(invalid(
            field,
            value,
            "the default route is not another host's container subnet",
        ));
    }
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
                None => first_host(subnet),
                Some(text) => parse_host_addr(&field("gateway"), text, subnet)?,
            };

            let subnet6 = match &net.subnet6 {
                None => None,
                Some(text) => {
                    let s6 = parse_subnet6(&field("subnet6"), text)?;
                    if let Some((j, other)) = networks.iter().enumerate().find(|(_, n)| {
                        n.subnet6
                            .is_some_and(|o| o.contains(&s6) || s6.contains(&o))
                    }) {
                        return Err(invalid(
                            field("subnet6"),
                            text,
                            format!(
                                "overlaps networks[{j}].subnet6 ({}) of network {:?}",
                                other.subnet6.expect("found by it"),
                                other.name
                            ),
                        ));
                    }
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
                    m => m,
                },
                subnet6,
                gateway6,
            });
        }
        Ok(networks)
    }

    /// `[[routes]]`: each a subnet of its own, away from every local network, via an
    /// address outside them. (That `via` is on a local link is checked against the host,
    /// at `up`.)
    fn plan_routes(&self, networks: &[Network]) -> Result<Vec<Route>, ConfigError> {
        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            let subnet = parse_route_subnet(&field("subnet"), &r.subnet)?;
            let overlaps = |other: &Ipv4Net| other.contains(&subnet) || subnet.contains(other);
            if let Some((j, n)) = networks
                .iter()
                .enumerate()
                .find(|(_, n)| overlaps(&n.subnet))
            {
                return Err(invalid(
                    field("subnet"),
                    &r.subnet,
                    format!(
                        "overlaps networks[{j}].subnet ({}) of network {:?}: a routed subnet \
                         is another host's",
                        n.subnet, n.name
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
            let via: Ipv4Addr = r
                .via
                .parse()
                .map_err(|_| invalid(field("via"), &r.via, "not an IPv4 address"))?;
            if via.is_unspecified() || via.is_broadcast() || via.is_multicast() || via.is_loopback()
            {
                return Err(invalid(field("via"), &r.via, "not a unicast host address"));
            }
            if let Some(n) = networks.iter().find(|n| n.subnet.contains(&via)) {
                return Err(invalid(
                    field("via"),
                    &r.via,
                    format!(
                        "inside the subnet {} of local network {:?}: the next hop is another \
                         host's underlay address",
                        n.subnet, n.name
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
                ip6,
                publish,
                host_veth,
            });
        }

        let mut containers = Vec::with_capacity(pending.len());
        for (i, (c, p)) in self.containers.iter().zip(pending).enumerate() {
            let net = p.network;
            let ip = match p.ip {
                Some(ip) => ip,
                None => addresses.allocate(net, i).ok_or_else(|| {
                    invalid(
                        format!("containers[{i}].network"),
                        &c.network,
                        format!("no free address left in subnet {}", net.subnet),
                    )
                })?,
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
            containers.push(Container {
                name: c.name.clone(),
                network: net.name.clone(),
                ip,
                // A ptp container is alone on its link: its address is a /32.
                prefix_len: match net.driver {
                    Driver::Bridge => net.subnet.prefix_len(),
                    Driver::Ptp => 32,
                },
                gateway: net.gateway,
                mac: container_mac(ip),
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
                via: Ipv4Addr::new(192, 0, 2, 12),
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
