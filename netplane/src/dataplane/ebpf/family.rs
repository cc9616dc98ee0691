//! The two address families as the agent sees them: IPv4 (`u32`) and IPv6 ([`Ip6`]), each
//! with maps of its own (`NP_*`, `NP6_*`) of one design, so that an IPv4 flow costs what it
//! did before IPv6. What differs between them is here: the maps' names, and which of the
//! plan's and the host's addresses go into them. The code that programs, reads and
//! collects the maps (`maps`, `conntrack`, `stats`) is written once, over [`Family`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::Map;
use ipnet::IpNet;
use netplane_common::addr::{Addr, Ip6, ip6, octets6};
use netplane_common::nat::{CtEntry, CtKey, maps};

use crate::config::{Container, Network, Plan, PortMapping};
use crate::dataplane::HostContext;

/// An address family by name, where a value says which (the TC program a hook runs, the
/// conntrack tables a caller asks about); [`Family`] is the same distinction at compile
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// A prefix as the LPM tries key it: (prefix length, network address).
pub(super) type Prefix<A> = (u32, A);

/// An address family: its maps, and its addresses in the plan and on the host, as the
/// programs hold them (network byte order in memory).
pub(super) trait Family: Addr + aya::Pod + Ord {
    /// "IPv4" or "IPv6", for messages.
    const NAME: &'static str;
    const CT: &'static str;
    const CT_NEW: &'static str;
    const FRAGS: &'static str;
    const FRAGS_EARLY: &'static str;
    const PUBLISHED: &'static str;
    const SUBNETS: &'static str;
    const NEVER_NAT: &'static str;
    const ROUTED_PORTS: &'static str;
    const LOCAL_ADDRS: &'static str;
    const ENDPOINTS: &'static str;
    const SOCK_REV: &'static str;
    const MASQ_PORTS: &'static str;

    fn ip(self) -> IpAddr;
    /// Network `n`'s subnet, when it has one in this family.
    fn subnet(n: &Network) -> Option<Prefix<Self>>;
    /// The host's address on network `n`.
    fn gateway(n: &Network) -> Option<Self>;
    /// Container `c`'s address.
    fn container(c: &Container) -> Option<Self>;
    /// Whether mapping `m` publishes on this family's host addresses.
    fn publishes(m: &PortMapping) -> bool;
    /// The host address mapping `m` publishes on; [`Addr::UNSPECIFIED`] for every one.
    fn host_addr(m: &PortMapping) -> Self;
    /// The `[[routes]]` subnets of this family.
    fn routes(plan: &Plan) -> Vec<Prefix<Self>>;
    /// The host's addresses that published ports answer on, loopback included.
    fn local_addrs(host: &HostContext) -> Vec<Self>;
    /// The entries of a conntrack table set aside in an older netplane's layout, which
    /// only IPv4 ever had.
    fn legacy_entries(_old: &Map) -> Vec<(CtKey<Self>, CtEntry<Self>)> {
        Vec::new()
    }
}

pub(super) fn ne4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub(super) fn ne6(a: Ipv6Addr) -> Ip6 {
    ip6(a.octets())
}

/// `p` as a prefix of the standard library's.
pub(super) fn net<A: Family>((len, addr): Prefix<A>) -> IpNet {
    IpNet::new(addr.ip(), len as u8).expect("a family's prefix length fits its addresses")
}

impl Family for u32 {
    const NAME: &'static str = "IPv4";
    const CT: &'static str = maps::CT;
    const CT_NEW: &'static str = maps::CT_NEW;
    const FRAGS: &'static str = maps::FRAGS;
    const FRAGS_EARLY: &'static str = maps::FRAGS_EARLY;
    const PUBLISHED: &'static str = maps::PUBLISHED;
    const SUBNETS: &'static str = maps::SUBNETS;
    const NEVER_NAT: &'static str = maps::NEVER_NAT;
    const ROUTED_PORTS: &'static str = maps::ROUTED_PORTS;
    const LOCAL_ADDRS: &'static str = maps::LOCAL_ADDRS;
    const ENDPOINTS: &'static str = maps::ENDPOINTS;
    const SOCK_REV: &'static str = maps::SOCK_REV;
    const MASQ_PORTS: &'static str = maps::MASQ_PORTS;

    fn ip(self) -> IpAddr {
        Ipv4Addr::from(self.to_ne_bytes()).into()
    }
    fn subnet(n: &Network) -> Option<Prefix<u32>> {
        n.subnet.map(|s| (s.prefix_len().into(), ne4(s.network())))
    }
    fn gateway(n: &Network) -> Option<u32> {
        n.gateway.map(ne4)
    }
    fn container(c: &Container) -> Option<u32> {
        c.ip.map(ne4)
    }
    fn publishes(m: &PortMapping) -> bool {
        m.on_v4()
    }
    fn host_addr(m: &PortMapping) -> u32 {
        m.host_ip.map_or(Self::UNSPECIFIED, ne4)
    }
    fn routes(plan: &Plan) -> Vec<Prefix<u32>> {
        plan.routes
            .iter()
            .filter_map(|r| match r.subnet {
                IpNet::V4(s) => Some((s.prefix_len().into(), ne4(s.network()))),
                IpNet::V6(_) => None,
            })
            .collect()
    }
    fn local_addrs(host: &HostContext) -> Vec<u32> {
        host.local_addrs
            .iter()
            .copied()
            .chain([Ipv4Addr::LOCALHOST])
            .map(ne4)
            .collect()
    }
    fn legacy_entries(old: &Map) -> Vec<(CtKey, CtEntry)> {
        super::conntrack::legacy_entries(old)
    }
}

impl Family for Ip6 {
    const NAME: &'static str = "IPv6";
    const CT: &'static str = maps::CT6;
    const CT_NEW: &'static str = maps::CT6_NEW;
    const FRAGS: &'static str = maps::FRAGS6;
    const FRAGS_EARLY: &'static str = maps::FRAGS6_EARLY;
    const PUBLISHED: &'static str = maps::PUBLISHED6;
    const SUBNETS: &'static str = maps::SUBNETS6;
    const NEVER_NAT: &'static str = maps::NEVER_NAT6;
    const ROUTED_PORTS: &'static str = maps::ROUTED_PORTS6;
    const LOCAL_ADDRS: &'static str = maps::LOCAL_ADDRS6;
    const ENDPOINTS: &'static str = maps::ENDPOINTS6;
    const SOCK_REV: &'static str = maps::SOCK_REV6;
    const MASQ_PORTS: &'static str = maps::MASQ_PORTS6;

    fn ip(self) -> IpAddr {
        Ipv6Addr::from(octets6(self)).into()
    }
    fn subnet(n: &Network) -> Option<Prefix<Ip6>> {
        n.subnet6.map(|s| (s.prefix_len().into(), ne6(s.network())))
    }
    fn gateway(n: &Network) -> Option<Ip6> {
        n.gateway6.map(ne6)
    }
    fn container(c: &Container) -> Option<Ip6> {
        c.ip6.map(ne6)
    }
    fn publishes(m: &PortMapping) -> bool {
        m.on_v6()
    }
    fn host_addr(m: &PortMapping) -> Ip6 {
        m.host_ip6.map_or(Self::UNSPECIFIED, ne6)
    }
    fn routes(plan: &Plan) -> Vec<Prefix<Ip6>> {
        plan.routes
            .iter()
            .filter_map(|r| match r.subnet {
                IpNet::V6(s) => Some((s.prefix_len().into(), ne6(s.network()))),
                IpNet::V4(_) => None,
            })
            .collect()
    }
    fn local_addrs(host: &HostContext) -> Vec<Ip6> {
        host.local_addrs6
            .iter()
            .copied()
            .chain([Ipv6Addr::LOCALHOST])
            .map(ne6)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_keep_their_bytes_in_network_order() {
        let v4 = Ipv4Addr::new(10, 89, 0, 1);
        assert_eq!(ne4(v4).ip(), IpAddr::V4(v4));
        let v6: Ipv6Addr = "2001:db8:89::1".parse().unwrap();
        assert_eq!(ne6(v6).ip(), IpAddr::V6(v6));
        assert_eq!(net::<Ip6>((64, ne6(v6))).to_string(), "2001:db8:89::1/64");
    }
}
