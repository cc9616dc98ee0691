//! Conntrack at scale: the main table holding 100,000 or 1,000,000 live flows while new
//! connections are measured through it, and what the agent's garbage collection costs at
//! that size.
//!
//! A million real TCP connections cannot be held open on a small VM (sockets, ports,
//! memory), and what these rows exercise is the table: its occupancy, the cache misses of
//! a lookup in a 200 MB hash, and the GC walk. So the table is filled with synthetic flows,
//! assured and established (tcp_established_timeout: 6 h by default, so the GC keeps them),
//! from TEST-NET-2 (198.51.100.0/24), which the bench's real flows never use: none of them
//! can find a synthetic entry.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use netplane::dataplane::ebpf::pin_dir;
use netplane_common::nat::{CtEntry, CtKey, Side, kind, maps, seen, tick};
use netplane_common::packet::IPPROTO_TCP;
use serde::Serialize;

/// Ports a synthetic peer address uses (1024..61024) before the next address takes over.
const PORTS_PER_PEER: u32 = 60_000;

/// The main conntrack table's capacity for `flows` live flows: the power of two above
/// twice as many, room for the measurement's own churn at a load of at most one half
/// (262,144 for 100k, 2,097,152 for 1M).
pub fn max_entries_for(flows: u32) -> u32 {
    (flows * 2).next_power_of_two()
}

/// The conntrack key and entry of synthetic flow `i`: a connection from
/// 198.51.100.(1 + i / 60,000) to published port `published` (at `uplink`), served by
/// `backend`:80, keyed as the data path keys a published flow (its replies' tuple at the
/// uplink's src stage, nat::published_reply_key), seen both ways, at `now` (ticks).
pub fn synthetic_flow(
    i: u32,
    backend: Ipv4Addr,
    uplink: Ipv4Addr,
    published: u16,
    now: u32,
) -> (CtKey, CtEntry) {
    let peer = Ipv4Addr::new(198, 51, 100, (1 + i / PORTS_PER_PEER) as u8);
    let peer_port = (1024 + i % PORTS_PER_PEER) as u16;
    let be = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let key = CtKey::new(
        be(backend),
        be(peer),
        80u16.to_be(),
        peer_port.to_be(),
        IPPROTO_TCP,
        Side::Src,
    );
    let entry = CtEntry {
        addr: be(uplink),
        port: published.to_be(),
        seen: seen::SYN | seen::ACK | seen::REPLIED,
        kind: kind::PUBLISHED,
        created: now,
        last_seen: now,
        seq: [0; 2],
    };
    (key, entry)
}

/// CLOCK_MONOTONIC (bpf_ktime_get_ns()'s clock) in conntrack ticks.
fn now_tick() -> u32 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    tick(t)
}

/// Inserts `n` synthetic flows into instance `name`'s pinned IPv4 main conntrack table,
/// one element per syscall (aya 0.14 has no batch update). Returns how many went in.
pub fn fill(
    name: &str,
    n: u32,
    backend: Ipv4Addr,
    uplink: Ipv4Addr,
    published: u16,
) -> anyhow::Result<u32> {
    let mut ct = main_table(name)?;
    let now = now_tick();
    let mut done = 0;
    for i in 0..n {
        let (k, e) = synthetic_flow(i, backend, uplink, published, now);
        if ct.insert(k, e, 0).is_ok() {
            done += 1;
        }
    }
    Ok(done)
}

/// Instance `name`'s pinned IPv4 main conntrack table.
fn main_table(name: &str) -> anyhow::Result<HashMap<MapData, CtKey, CtEntry>> {
    use anyhow::Context;
    let path = pin_dir(name).join(maps::CT);
    let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
    HashMap::try_from(aya::maps::Map::HashMap(data)).context("NP_CT as a hash map")
}

/// One conntrack garbage collection of instance `name`, as the agent runs it every
/// GC_INTERVAL: its wall time and this thread's CPU time.
pub fn gc_pass(name: &str) -> (Duration, f64) {
    let (t, cpu) = (Instant::now(), super::cpu::thread_cpu_s());
    let _ = netplane::dataplane::ebpf::gc(name);
    (t.elapsed(), super::cpu::thread_cpu_s() - cpu)
}

/// The pid of instance `name`'s agent, which `up` started without waiting for it: given a
/// few seconds to say so.
pub fn agent(name: &str) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match netplane::dataplane::ebpf::agent::running(name) {
            Some(pid) => return Some(pid),
            None if Instant::now() >= deadline => return None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Connect/request/close (N = 1) with the table empty, then full of synthetic flows:
/// one pair of measurements, back to back in one instance.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ScalePair {
    pub empty: super::Rate,
    pub full: super::Rate,
    /// Kernel CPU per connection (µs), empty and full: the machine's, and the bench
    /// process's own (see `bench::cpu::own_seconds`).
    pub empty_cpu_us: f64,
    pub full_cpu_us: f64,
    pub empty_cpu_own_us: f64,
    pub full_cpu_own_us: f64,
}

/// One size of the conntrack scale rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleSample {
    /// Synthetic flows in the table, and its capacity.
    pub flows: u32,
    pub max_entries: u32,
    /// How long the last fill took.
    pub fill_s: f64,
    /// Empty and full, each pair in a new instance.
    pub pairs: Vec<ScalePair>,
    /// One GC pass over the full table, run in the bench's process as the agent runs it:
    /// wall time and CPU time (s).
    pub gc_pass_s: f64,
    pub gc_pass_cpu_s: f64,
    /// The agent process's CPU time (user + system) from the last fill on, over at least
    /// two GC intervals, scaled to a minute (GC is what it does then; `None`: not found).
    pub agent_cpu_s_per_min: Option<f64>,
}

impl ScaleSample {
    /// CPU seconds per minute that GC costs at this size: a pass every GC_INTERVAL.
    pub fn gc_cpu_s_per_min(&self) -> f64 {
        let interval = netplane::dataplane::ebpf::agent::GC_INTERVAL.as_secs_f64();
        self.gc_pass_cpu_s * 60.0 / interval
    }

    /// Full over empty, per pair.
    pub fn ratios(&self) -> Vec<f64> {
        self.pairs
            .iter()
            .map(|p| p.full.per_s / p.empty.per_s)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_flows_are_distinct_and_from_test_net_2() {
        let (b, u) = (Ipv4Addr::new(10, 89, 0, 2), Ipv4Addr::new(203, 0, 113, 1));
        let keys: std::collections::HashSet<CtKey> = (0..200_000)
            .step_by(7)
            .map(|i| synthetic_flow(i, b, u, 10_000, 5).0)
            .collect();
        assert_eq!(keys.len(), 200_000usize.div_ceil(7));
        let (k, e) = synthetic_flow(999_999, b, u, 10_000, 5);
        assert_eq!(
            Ipv4Addr::from(k.daddr.to_ne_bytes()),
            Ipv4Addr::new(198, 51, 100, 17)
        );
        assert_eq!(e.seen & seen::REPLIED, seen::REPLIED);
        assert_eq!(max_entries_for(100_000), 262_144);
        assert_eq!(max_entries_for(1_000_000), 2_097_152);
    }
}
