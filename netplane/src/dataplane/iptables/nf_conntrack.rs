//! nf_conntrack, as iptables mode uses it: flushing the kernel's entries that would
//! blackhole a newly (un)published UDP port, and reading how full its table is.
//!
//! UDP has no handshake: a client that kept sending to host:port before the port was
//! published keeps matching its old, un-NATed conntrack entry for as long as it sends, and
//! never reaches the container (moby#8795, containernetworking/plugins#123). The same
//! happens in reverse after unpublishing. Deleting the entries for the port makes the next
//! datagram go through the NAT rules again.

use std::collections::BTreeSet;

use super::run;
use crate::config::{Plan, Proto};
use crate::dataplane::{DataplaneError, MapFill};

/// Host UDP ports published in exactly one of `old` and `new`.
pub fn changed_udp_ports(old: Option<&Plan>, new: &Plan) -> BTreeSet<u16> {
    let ports = |p: &Plan| -> BTreeSet<u16> {
        p.containers
            .iter()
            .flat_map(|c| &c.publish)
            .filter(|m| m.proto == Proto::Udp)
            .flat_map(|m| m.host_ports())
            .collect()
    };
    let new_ports = ports(new);
    let old_ports = old.map(ports).unwrap_or_default();
    new_ports
        .symmetric_difference(&old_ports)
        .copied()
        .collect()
}

/// Deletes the UDP conntrack entries whose original destination port is `port`.
pub fn flush_udp_port(port: u16) -> Result<(), DataplaneError> {
    match run(
        "conntrack",
        &["-D", "-p", "udp", "--orig-port-dst", &port.to_string()],
        None,
    ) {
        // conntrack exits 1 when no entry matched: nothing to flush is success.
        Err(DataplaneError::Command { stderr, .. }) if stderr.contains("0 flow entries") => Ok(()),
        other => other.map(drop),
    }
}

/// The kernel's conntrack table of this network namespace: entries and capacity, from
/// `/proc/sys/net/netfilter` (which shows the reader's namespace). `None` when
/// nf_conntrack has never been loaded here.
pub fn fill() -> Option<MapFill> {
    let read = |key: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{key}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(MapFill {
        name: "nf_conntrack".to_owned(),
        entries: read("nf_conntrack_count")?,
        max_entries: read("nf_conntrack_max"),
    })
}
