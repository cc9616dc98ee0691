//! nf_conntrack, as iptables mode uses it: flushing the kernel's entries that would
//! blackhole a UDP port whose translation changed, and reading how full its table is.
//!
//! UDP has no handshake: a client that kept sending to host:port before the port was
//! published keeps matching its old, un-NATed conntrack entry for as long as it sends, and
//! never reaches the container (moby#8795, containernetworking/plugins#123). The same
//! happens in reverse after unpublishing, and when the port's backend changes (the
//! container was re-created at another address): the entry's DNAT still names the old
//! backend, and each datagram refreshes it. NAT is decided once per connection, when the
//! entry is created (nf_nat_inet_fn() runs the nat table only for a new one), so only
//! deleting the entries for the port makes the next datagram go through the rules again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::rules::dnat_mappings_of;
use super::run;
use crate::config::{Plan, Proto};
use crate::dataplane::{DataplaneError, MapFill};

/// Host UDP ports whose translation differs between `old` and `new`: published in only
/// one of them, or to another backend (container address or port) or host address. A
/// routed network's `publish` takes no host port: a network turning routed unpublishes.
pub fn changed_udp_ports(old: Option<&Plan>, new: &Plan) -> BTreeSet<u16> {
    changed_udp_ports_of(old, new, false)
}

/// [`changed_udp_ports`] of one family (IPv6: the mappings ip6tables translates).
pub fn changed_udp_ports_of(old: Option<&Plan>, new: &Plan, v6: bool) -> BTreeSet<u16> {
    type Backends = BTreeMap<u16, BTreeSet<(Option<IpAddr>, IpAddr, u16)>>;
    let backends = |p: &Plan| -> Backends {
        let mut by_port = Backends::new();
        for (c, m) in dnat_mappings_of(p, v6).filter(|(_, m)| m.proto == Proto::Udp) {
            let Some(to) = c.ip_of(v6) else { continue };
            let host: Option<IpAddr> = if v6 {
                m.host_ip6.map(Into::into)
            } else {
                m.host_ip.map(Into::into)
            };
            for (hp, cp) in m.pairs() {
                by_port.entry(hp).or_default().insert((host, to, cp));
            }
        }
        by_port
    };
    let new_backends = backends(new);
    let old_backends = old.map(backends).unwrap_or_default();
    new_backends
        .keys()
        .chain(old_backends.keys())
        .filter(|port| new_backends.get(port) != old_backends.get(port))
        .copied()
        .collect()
}

/// The addresses of `old`'s containers that `new` no longer has: a container removed,
/// or moved to another address (IPv4 or IPv6).
pub fn gone_addresses(old: Option<&Plan>, new: &Plan) -> Vec<IpAddr> {
    let mut gone = Vec::new();
    for o in old.into_iter().flat_map(|o| &o.containers) {
        let now = new.container(&o.name);
        for v6 in [false, true] {
            if let Some(ip) = o.ip_of(v6)
                && now.is_none_or(|c| c.ip_of(v6) != Some(ip))
            {
                gone.push(ip);
            }
        }
    }
    gone
}

/// Deletes every conntrack entry of address `ip`: the flows it opened (masqueraded or
/// not), and those DNATed to it, whose reply comes from it. A container that took the
/// address next would otherwise inherit them (as `conntrack -D` by the runtime would).
pub fn flush_address(ip: IpAddr) -> Result<(), DataplaneError> {
    let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
    for side in ["--orig-src", "--reply-src"] {
        match run(
            "conntrack",
            &["-D", "-f", family, side, &ip.to_string()],
            None,
        ) {
            Err(DataplaneError::Command { stderr, .. }) if stderr.contains("0 flow entries") => {}
            other => other.map(drop)?,
        }
    }
    Ok(())
}

/// Deletes the UDP conntrack entries whose original destination port is `port`.
pub fn flush_udp_port(port: u16, v6: bool) -> Result<(), DataplaneError> {
    let family = if v6 { "ipv6" } else { "ipv4" };
    match run(
        "conntrack",
        &[
            "-D",
            "-f",
            family,
            "-p",
            "udp",
            "--orig-port-dst",
            &port.to_string(),
        ],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn plan(web: &str, publish: &str) -> Plan {
        Config::parse(
            &format!(
                r#"
                [[networks]]
                name = "npa"
                subnet = "10.89.0.0/24"
                [[containers]]
                name = "web"
                network = "npa"
                ip = "{web}"
                publish = [{publish}]
                [[containers]]
                name = "dns"
                network = "npa"
                publish = ["5300:53/udp"]
                "#
            ),
            "test",
        )
        .unwrap()
        .plan()
        .unwrap()
    }

    #[test]
    fn a_udp_port_whose_backend_changed_is_flushed() {
        let ports = r#""5353:53/udp", "8080:80""#;
        let before = plan("10.89.0.10", ports);
        assert!(changed_udp_ports(Some(&before), &before).is_empty());
        assert_eq!(
            changed_udp_ports(None, &before),
            [5300, 5353].into(),
            "first up"
        );
        // Re-created at another address: its UDP port's entries are stale, TCP and the
        // other container's are not.
        let moved = plan("10.89.0.20", ports);
        assert_eq!(changed_udp_ports(Some(&before), &moved), [5353].into());
        let other_port = plan("10.89.0.10", r#""5353:54/udp", "8080:80""#);
        assert_eq!(changed_udp_ports(Some(&before), &other_port), [5353].into());
        let unpublished = plan("10.89.0.10", r#""8080:80""#);
        assert_eq!(
            changed_udp_ports(Some(&before), &unpublished),
            [5353].into()
        );
        // A network turning routed takes its host ports back: every one is stale.
        let mut routed = before.clone();
        routed.networks[0].gateway_mode = crate::config::GatewayMode::Routed;
        assert!(changed_udp_ports(None, &routed).is_empty());
        assert_eq!(
            changed_udp_ports(Some(&before), &routed),
            [5300, 5353].into()
        );
    }
}
