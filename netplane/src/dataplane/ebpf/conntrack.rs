//! The BPF conntrack table from userspace: the flows `netplane conntrack` lists, the
//! garbage collection the agent runs, and what an entry costs the kernel.

use std::net::Ipv4Addr;

use aya::maps::HashMap;
use netplane_common::nat::{
    CtEntry, CtKey, DpConfig, FragEntry, FragKey, Side, Tick, kind, maps, s_to_ticks, seen, tick,
    ticks_since, ticks_to_s,
};

use super::maps::{pinned_config, pinned_map, pinned_map_data};

/// CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns()) in conntrack ticks.
fn now_tick() -> Tick {
    let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    tick(ns)
}

/// The live conntrack entries of instance `name`.
pub fn conntrack_entries(name: &str) -> Vec<(CtKey, CtEntry)> {
    let Some(map) = pinned_map(name, maps::CT) else {
        return Vec::new();
    };
    let Ok(ct) = HashMap::<_, CtKey, CtEntry>::try_from(map) else {
        return Vec::new();
    };
    ct.iter().filter_map(Result::ok).collect()
}

/// Kernel memory per entry of instance `name`'s conntrack map: the map's `memlock` (in
/// /proc/self/fdinfo, what the kernel charges for it) over its capacity.
pub fn ct_bytes_per_entry(name: &str) -> Option<f64> {
    use std::os::fd::{AsFd, AsRawFd};
    let data = pinned_map_data(name, maps::CT)?;
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<f64>().ok())
    };
    Some(field("memlock:")? / field("max_entries:")?)
}

/// Removes the expired conntrack and fragment entries of instance `name` (the data path
/// already ignores them; this gives their memory back). Returns how many went.
pub fn gc(name: &str) -> usize {
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return 0;
    };
    let mut removed = 0;
    if let Some(map) = pinned_map(name, maps::CT)
        && let Ok(mut ct) = HashMap::<_, CtKey, CtEntry>::try_from(map)
    {
        let expired: Vec<CtKey> = ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| timeouts.expired(k.proto, e, now))
            .map(|(k, _)| k)
            .collect();
        removed += expired.iter().filter(|k| ct.remove(k).is_ok()).count();
    }
    if let Some(map) = pinned_map(name, maps::FRAGS)
        && let Ok(mut frags) = HashMap::<_, FragKey, FragEntry>::try_from(map)
    {
        // A datagram's fragments arrive within moments; the kernel's own reassembly gives
        // up after 30 s (ipfrag_time).
        let expired: Vec<FragKey> = frags
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| ticks_since(now, e.last_seen) > s_to_ticks(30))
            .map(|(k, _)| k)
            .collect();
        removed += expired.iter().filter(|k| frags.remove(k).is_ok()).count();
    }
    removed
}

/// One tracked flow, as `netplane conntrack` shows it: the original tuple, what NAT makes
/// of it, its state and timing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flow {
    pub protocol: &'static str,
    pub kind: &'static str,
    pub original: String,
    pub translated: String,
    pub state: &'static str,
    pub age_s: u64,
    pub expires_in_s: u64,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    }
}

fn endpoint(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(addr.to_ne_bytes()),
        u16::from_be(port)
    )
}

/// The live flows of instance `name`, one per original direction.
pub fn flows(name: &str) -> Vec<Flow> {
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return Vec::new();
    };
    let (dst_stage, src_stage) = (Side::Dst as u8, Side::Src as u8);
    let entries = conntrack_entries(name);
    let mut flows: Vec<Flow> = entries
        .iter()
        .filter(|(k, e)| e.kind & kind::REPLY == 0 && !timeouts.expired(k.proto, e, now))
        // Each flow once: masquerade and published flows by their only entry, their
        // replies'; hairpin by its original direction's dst-stage entry.
        .filter(|(k, e)| e.kind != kind::HAIRPIN || k.stage == dst_stage)
        .map(|(k, e)| {
            let (mut src, mut dst) = (endpoint(k.saddr, k.sport), endpoint(k.daddr, k.dport));
            let translated = if e.kind == kind::PUBLISHED {
                // Key: backend → client; entry: the published address.
                (src, dst) = (dst, endpoint(e.addr, e.port));
                format!("{src} → {}", endpoint(k.saddr, k.sport))
            } else if e.kind == kind::MASQUERADE {
                // Key: peer → uplink:port; entry: the container.
                let nat = dst;
                (src, dst) = (endpoint(e.addr, e.port), src);
                format!("{nat} → {dst}")
            } else {
                // For hairpin, the src-stage entry tells the source the backend sees.
                let nat_src = entries
                    .iter()
                    .find(|(k2, e2)| {
                        k2.stage == src_stage
                            && e2.kind == kind::HAIRPIN
                            && k2.saddr == k.saddr
                            && k2.sport == k.sport
                            && k2.daddr == e.addr
                            && k2.dport == e.port
                            && k2.proto == k.proto
                    })
                    .map(|(_, e2)| endpoint(e2.addr, e2.port))
                    .unwrap_or_else(|| src.clone());
                format!("{nat_src} → {}", endpoint(e.addr, e.port))
            };
            let state = match (k.proto, e.seen) {
                (6, s) if s & (seen::FIN | seen::RST) != 0 => "CLOSING",
                (6, s) if s & seen::ACK != 0 => "ESTABLISHED",
                (6, _) => "SYN_SENT",
                _ => "-",
            };
            let life = u64::from(timeouts.lifetime_s(k.proto, e.seen));
            Flow {
                protocol: proto_name(k.proto),
                kind: match e.kind {
                    kind::MASQUERADE => "masquerade",
                    kind::PUBLISHED => "published",
                    _ => "hairpin",
                },
                original: format!("{src} → {dst}"),
                translated,
                state,
                age_s: ticks_to_s(ticks_since(now, e.created)),
                expires_in_s: life.saturating_sub(ticks_to_s(ticks_since(now, e.last_seen))),
            }
        })
        .collect();
    flows.sort_by(|a, b| (a.protocol, &a.original).cmp(&(b.protocol, &b.original)));
    flows
}
