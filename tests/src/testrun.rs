//! The host that BPF_PROG_TEST_RUN's programs are programmed for: no devices, an uplink
//! with the given addresses, and the local addresses as `HostContext::from_host` lists
//! them.

use std::net::{Ipv4Addr, Ipv6Addr};

use netplane::config::Plan;
use netplane::dataplane::HostContext;

/// A host whose uplink `up0` has `uplink` (and `uplink6`), and which carries every
/// network's gateway (an isolated network has none on the host), and `::1` with IPv6.
pub fn host(plan: &Plan, uplink: Ipv4Addr, uplink6: Option<Ipv6Addr>) -> HostContext {
    let gateways = || plan.networks.iter().filter(|n| n.has_gateway());
    HostContext {
        uplink: "up0".into(),
        uplink_index: 0,
        uplink_addr: uplink,
        local_addrs: std::iter::once(uplink)
            .chain(gateways().filter_map(|n| n.gateway))
            .collect(),
        uplink_addr6: uplink6,
        local_addrs6: uplink6
            .into_iter()
            .flat_map(|u| [u, Ipv6Addr::LOCALHOST])
            .chain(gateways().filter_map(|n| n.gateway6))
            .collect(),
        links: Vec::new(),
        touched: None,
    }
}
