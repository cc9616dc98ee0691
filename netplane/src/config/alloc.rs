//! Addresses: subnets and host addresses as written, the default gateway, and handing out
//! container addresses.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::plan::Network;
use super::schema::{ConfigError, invalid};

/// A /31 or /32 has no room for a gateway plus a container.
const PREFIX_MAX: u8 = 30;

pub(super) fn parse_subnet(field: &str, value: &str) -> Result<Ipv4Net, ConfigError> {
    let subnet: Ipv4Net = value.parse().map_err(|_| {
        let reason = if value.parse::<ipnet::Ipv6Net>().is_ok() {
            "an IPv6 subnet: that is what subnet6 is for"
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
pub(super) fn parse_host_addr(
    field: &str,
    value: &str,
    subnet: Ipv4Net,
) -> Result<Ipv4Addr, ConfigError> {
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

/// The shortest and longest IPv6 prefixes of a network: a /64 is what SLAAC and most
/// deployments hand out; a /120 still leaves 255 addresses.
const PREFIX6_MIN: u8 = 64;
const PREFIX6_MAX: u8 = 120;

pub(super) fn parse_subnet6(field: &str, value: &str) -> Result<Ipv6Net, ConfigError> {
    let subnet: Ipv6Net = value.parse().map_err(|_| {
        invalid(
            field,
            value,
            "not an IPv6 subnet in CIDR form, e.g. \"2001:db8:18::/64\"",
        )
    })?;
    if subnet.trunc() != subnet {
        return Err(invalid(
            field,
            value,
            format!("host bits are set; did you mean \"{}\"?", subnet.trunc()),
        ));
    }
    if !(PREFIX6_MIN..=PREFIX6_MAX).contains(&subnet.prefix_len()) {
        return Err(invalid(
            field,
            value,
            format!("must be a /{PREFIX6_MIN} to /{PREFIX6_MAX}"),
        ));
    }
    let a = subnet.addr();
    let reserved = if a.is_loopback() || a.is_unspecified() {
        Some("loopback or unspecified")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_unicast_link_local() {
        Some("link-local (fe80::/10)")
    } else if a.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped (::ffff:0:0/96)")
    } else {
        None
    };
    if let Some(what) = reserved {
        return Err(invalid(field, value, format!("is {what} address space")));
    }
    Ok(subnet)
}

/// An IPv6 address a host may use inside `subnet`: not its first address (the
/// subnet-router anycast address of RFC 4291, 2.6.1).
pub(super) fn parse_host_addr6(
    field: &str,
    value: &str,
    subnet: Ipv6Net,
) -> Result<Ipv6Addr, ConfigError> {
    let ip: Ipv6Addr = value
        .parse()
        .map_err(|_| invalid(field, value, "not an IPv6 address"))?;
    if !subnet.contains(&ip) {
        return Err(invalid(
            field,
            value,
            format!("outside the network's subnet6 {subnet}"),
        ));
    }
    if ip == subnet.network() {
        return Err(invalid(
            field,
            value,
            format!("is the subnet-router anycast address of {subnet}"),
        ));
    }
    Ok(ip)
}

/// The IPv6 subnet's `::1`: the default gateway6.
pub(super) fn first_host6(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// The subnet's first host address: the default gateway, and where allocation starts.
pub(super) fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The container addresses of one plan, of one family: `A` (`Ipv4Addr`, `Ipv6Addr`)
/// counted as `N` (`u32`, `u128`). The caller reserves every explicit address before it
/// allocates any, so an explicit address never depends on its position.
pub(super) struct Family<'a, A, N> {
    /// Each address in use, with the index of the container that has it.
    taken: HashMap<A, usize>,
    /// The next candidate address per network, so allocation is one sweep per subnet.
    cursors: HashMap<&'a str, N>,
}

/// A plan's IPv4 container addresses.
pub(super) type Addresses<'a> = Family<'a, Ipv4Addr, u32>;
/// A plan's IPv6 container addresses (dual-stack networks).
pub(super) type Addresses6<'a> = Family<'a, Ipv6Addr, u128>;

impl<A, N> Default for Family<'_, A, N> {
    fn default() -> Self {
        Family {
            taken: HashMap::new(),
            cursors: HashMap::new(),
        }
    }
}

impl<'a, A, N> Family<'a, A, N>
where
    A: Copy + Eq + std::hash::Hash + From<N>,
    N: Copy + PartialOrd + std::ops::AddAssign + From<u8>,
{
    /// Reserves `ip` for container `i`; `Err(j)` when container `j` has it already.
    pub(super) fn reserve(&mut self, ip: A, i: usize) -> Result<(), usize> {
        match self.taken.insert(ip, i) {
            Some(j) => Err(j),
            None => Ok(()),
        }
    }

    /// The lowest free address of network `net` from `first` to `last`, skipping its
    /// `gateway` and anything taken, now container `i`'s; `None` when none is left.
    /// Starting at the first host address rather than after the gateway keeps the low
    /// addresses usable when the gateway is set to, say, `.254`.
    fn next(&mut self, net: &'a str, first: N, last: N, gateway: A, i: usize) -> Option<A> {
        let cursor = self.cursors.entry(net).or_insert(first);
        while *cursor <= last {
            let ip = A::from(*cursor);
            *cursor += N::from(1);
            if ip != gateway && !self.taken.contains_key(&ip) {
                self.taken.insert(ip, i);
                return Some(ip);
            }
        }
        None
    }
}

impl<'a> Addresses<'a> {
    /// The lowest free address of `net`'s subnet below its broadcast address.
    pub(super) fn allocate(&mut self, net: &'a Network, i: usize) -> Option<Ipv4Addr> {
        let (subnet, gateway) = net.subnet.zip(net.gateway)?;
        let first = u32::from(first_host(subnet));
        let last = u32::from(subnet.broadcast()) - 1;
        self.next(&net.name, first, last, gateway, i)
    }
}

impl<'a> Addresses6<'a> {
    /// The lowest free address of `net`'s subnet6 after its first (there is no broadcast
    /// address in IPv6: the last one is a host's too).
    pub(super) fn allocate(&mut self, net: &'a Network, i: usize) -> Option<Ipv6Addr> {
        let (subnet, gateway) = (net.subnet6?, net.gateway6?);
        let first = u128::from(first_host6(subnet));
        self.next(&net.name, first, u128::from(subnet.broadcast()), gateway, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{container, network, plan, plan_err, with_containers};
    use crate::config::{Mode, format_mac};

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
        let ips: Vec<String> = plan
            .containers
            .iter()
            .map(|c| c.ip.unwrap().to_string())
            .collect();
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
        assert_eq!(plan.networks[0].gateway, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(plan.containers[0].ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(plan.containers[1].ip, Some(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(plan.containers[1].gateway, Some(Ipv4Addr::new(10, 0, 0, 2)));
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
            .map(|c| (c.network.as_str(), c.ip.unwrap().to_string(), c.prefix_len))
            .collect();
        assert_eq!(
            got,
            [
                ("np1", "10.1.0.2".to_owned(), 16),
                ("np0", "10.0.0.2".to_owned(), 24),
                ("np1", "10.1.0.3".to_owned(), 16),
            ]
        );
        assert_eq!(plan.containers[0].gateway, Some(Ipv4Addr::new(10, 1, 0, 1)));
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
            Some(Ipv4Addr::new(10, 0, 0, 254))
        );
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
            Some(Ipv4Addr::new(10, 0, 0, 254))
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
}
