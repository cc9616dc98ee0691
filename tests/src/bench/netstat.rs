//! TCP's own counters of a network namespace (`TcpExt` in /proc/net/netstat, `Tcp` in
//! /proc/net/snmp), to explain a figure: spurious retransmits and reordering on veth (see
//! `load::STREAM_CONNECTIONS`) show up here, not in a rate.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Netns;

/// The counters kept: reordering and its consequences on the sending side (DSACKs back,
/// SACK reordering, retransmits, timeouts, tail-loss probes, retransmits that left while
/// the first copy was still queued), out-of-order queueing on the receiving side.
pub const KEPT: [&str; 8] = [
    "TCPDSACKRecv",
    "TCPDSACKOfoRecv",
    "TCPSACKReorder",
    "TCPOFOQueue",
    "TCPSpuriousRtxHostQueues",
    "TCPLossProbes",
    "RetransSegs",
    "TCPTimeouts",
];

/// Every `TcpExt` and `Tcp` counter of namespace `ns`, by name.
///
/// /proc/net is /proc/self/net, the thread group leader's namespace: the thread that
/// joined `ns` reads /proc/thread-self/net instead.
pub fn counters(ns: &Netns) -> BTreeMap<String, u64> {
    ns.enter(|| {
        let mut out = BTreeMap::new();
        for file in ["netstat", "snmp"] {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                .unwrap_or_default();
            parse(&text, &mut out);
        }
        out
    })
}

/// The header/value line pairs ("TcpExt: A B …" then "TcpExt: 1 2 …") of the `TcpExt`
/// and `Tcp` groups.
fn parse(text: &str, out: &mut BTreeMap<String, u64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let Some((group, names)) = names.split_once(':') else {
            continue;
        };
        if !matches!(group, "TcpExt" | "Tcp") {
            continue;
        }
        let values = values.split_once(':').map_or("", |(_, v)| v);
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            // Tcp's MaxConn is -1: not a counter.
            if let Ok(v) = v.parse::<u64>() {
                out.insert(n.to_owned(), v);
            }
        }
    }
}

/// The [`KEPT`] counters' growth from `a` to `b` (the ones that moved).
pub fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    KEPT.iter()
        .filter_map(|k| {
            let d = b.get(*k)?.saturating_sub(*a.get(*k)?);
            (d > 0).then(|| ((*k).to_owned(), d))
        })
        .collect()
}

/// One measurement's counters, on both ends of its TCP connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TcpDelta {
    pub sender: BTreeMap<String, u64>,
    pub receiver: BTreeMap<String, u64>,
}

/// Counters of a sender and a receiver namespace, read before a measurement.
pub struct Before<'a> {
    sender: (&'a Netns, BTreeMap<String, u64>),
    receiver: (&'a Netns, BTreeMap<String, u64>),
}

impl<'a> Before<'a> {
    pub fn read(sender: &'a Netns, receiver: &'a Netns) -> Before<'a> {
        Before {
            sender: (sender, counters(sender)),
            receiver: (receiver, counters(receiver)),
        }
    }

    /// What grew since.
    pub fn delta(self) -> TcpDelta {
        TcpDelta {
            sender: delta(&self.sender.1, &counters(self.sender.0)),
            receiver: delta(&self.receiver.1, &counters(self.receiver.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpext_and_tcp_pairs_are_read_by_name() {
        let netstat = "TcpExt: SyncookiesSent TCPDSACKRecv TCPOFOQueue\nTcpExt: 0 7 3\n\
                       IpExt: InNoRoutes InOctets\nIpExt: 1 900\n";
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm MaxConn RetransSegs\nTcp: 1 -1 12\n";
        let mut a = BTreeMap::new();
        parse(netstat, &mut a);
        parse(snmp, &mut a);
        assert_eq!(a.get("TCPDSACKRecv"), Some(&7));
        assert_eq!(a.get("RetransSegs"), Some(&12));
        assert!(!a.contains_key("InOctets") && !a.contains_key("MaxConn"));
        let mut b = a.clone();
        b.insert("RetransSegs".into(), 20);
        let d = delta(&a, &b);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            [("RetransSegs".to_owned(), 8)]
        );
    }
}
