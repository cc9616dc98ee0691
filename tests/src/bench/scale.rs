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

use std::time::{Duration, Instant};

use serde::Serialize;

/// The main conntrack table's capacity for `flows` live flows: the power of two above
/// twice as many, room for the measurement's own churn at a load of at most one half
/// (262,144 for 100k, 2,097,152 for 1M).
pub fn max_entries_for(flows: u32) -> u32 {
    (flows * 2).next_power_of_two()
}

/// Writes `n` synthetic assured flows of the first published port into instance
/// `name`'s IPv4 main conntrack table (netplane's fill_synthetic, batched). Returns how
/// many went in.
pub fn fill(name: &str, n: u32) -> anyhow::Result<u32> {
    use netplane::dataplane::ebpf::agent::{ct_now, fill_synthetic};
    Ok(fill_synthetic(name, n as usize, ct_now())? as u32)
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
    /// CPU seconds per minute that GC costs at this size with a pass every `interval`
    /// (the agent's adapts, between GC_INTERVAL and GC_MAX_INTERVAL).
    pub fn gc_cpu_s_per_min(&self, interval: Duration) -> f64 {
        self.gc_pass_cpu_s * 60.0 / interval.as_secs_f64()
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
    fn the_table_has_room_for_the_flows_and_the_churn() {
        assert_eq!(max_entries_for(100_000), 262_144);
        assert_eq!(max_entries_for(1_000_000), 2_097_152);
    }
}
