//! What iptables mode counts, for `status --json` and the agent's metrics: each DNAT
//! rule's packet and byte counters (`iptables-save -c`), one rule per published host
//! port, and the kernel's conntrack table.
//!
//! A DNAT rule sees the first packet of each connection only: nf_conntrack translates
//! the rest of it (nf_nat_inet_fn() runs the nat table for a new entry alone), so its
//! packet counter is the connections, and datagram flows, the port received.

use super::nf_conntrack;
use super::{Family, V4, V6, chain, run, table_lines};
use crate::config::Plan;
use crate::dataplane::{Counters, DnatCount, Observation};

/// The DNAT rules of chain `dnat` in `saved` (an `iptables-save -c -t nat` dump of
/// family `family`), with their counters.
fn dnat_counts(saved: &str, dnat: &str, family: &'static str) -> Vec<DnatCount> {
    let rule = format!("-A {dnat} ");
    table_lines(saved, "nat")
        .filter_map(|l| {
            // `[packets:bytes] -A CHAIN …`
            let (counts, rest) = l.strip_prefix('[')?.split_once("] ")?;
            let rest = rest.strip_prefix(&rule)?;
            let (packets, bytes) = counts.split_once(':')?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let after = |flag: &str| {
                let i = words.iter().position(|w| *w == flag)?;
                words.get(i + 1).copied()
            };
            Some(DnatCount {
                family,
                protocol: after("-p")?.to_owned(),
                host_port: after("--dport")?.to_owned(),
                destination: after("--to-destination")?.to_owned(),
                packets: packets.parse().ok()?,
                bytes: bytes.parse().ok()?,
            })
        })
        .collect()
}

/// The DNAT counters of instance `plan.name` of `fam`, when it has rules of that family;
/// an error when iptables-save fails.
fn family_counts(fam: Family, plan: &Plan) -> Result<Vec<DnatCount>, String> {
    if !fam.wanted(plan) {
        return Ok(Vec::new());
    }
    let saved = run(fam.save, &["-c", "-t", "nat"], None).map_err(|e| e.to_string())?;
    let family = if fam.v6 { "ipv6" } else { "ipv4" };
    Ok(dnat_counts(&saved, &chain("DNAT", &plan.name), family))
}

/// What instance `plan.name`'s rules counted, and the problems reading them.
pub(super) fn counters(plan: &Plan) -> (Counters, Vec<String>) {
    let mut c = Counters::default();
    let mut problems = Vec::new();
    for fam in [V4, V6] {
        match family_counts(fam, plan) {
            Ok(counts) => c.dnat.extend(counts),
            Err(e) => problems.push(e),
        }
    }
    (c, problems)
}

/// What the agent's metrics show of instance `plan.name`'s iptables data plane.
pub fn observe(plan: &Plan) -> Observation {
    let (counters, problems) = counters(plan);
    for p in problems {
        tracing::debug!("metrics: {p}");
    }
    Observation {
        counters,
        fills: nf_conntrack::fill().into_iter().collect(),
        ..Observation::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnat_counters_are_read_per_published_port() {
        let saved = "\
*nat
:PREROUTING ACCEPT [12:720]
:NETPLANE-DNAT-abc123 - [0:0]
[0:0] -A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"netplane t\" -j NETPLANE-DNAT-abc123
[3:180] -A NETPLANE-DNAT-abc123 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.89.0.2:80
[0:0] -A NETPLANE-DNAT-abc123 -d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.89.0.2:53
[7:420] -A NETPLANE-DNAT-ffffff -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.89.9.2:90
COMMIT
";
        let counts = dnat_counts(saved, "NETPLANE-DNAT-abc123", "ipv4");
        assert_eq!(
            counts,
            [
                DnatCount {
                    family: "ipv4",
                    protocol: "tcp".into(),
                    host_port: "8080".into(),
                    destination: "10.89.0.2:80".into(),
                    packets: 3,
                    bytes: 180,
                },
                DnatCount {
                    family: "ipv4",
                    protocol: "udp".into(),
                    host_port: "5353".into(),
                    destination: "10.89.0.2:53".into(),
                    packets: 0,
                    bytes: 0,
                },
            ],
            "only this instance's DNAT chain, not its jump nor another instance's"
        );
    }
}
