//! The NAT programs for BPF_PROG_TEST_RUN: loaded with private maps programmed for a plan,
//! attached nowhere, run on crafted packets.

use aya::Ebpf as AyaEbpf;
use aya::maps::{PerCpuArray, RingBuf};
use aya::programs::{Program, SchedClassifier, TestRun, TestRunOptions};
use netplane_common::counters::Counters;
use netplane_common::nat::maps;
use netplane_common::observe;

use super::attach::programs;
use super::conntrack::CtCapacity;
use super::maps::Maps;
use super::object::{self, EbpfError, LoadOptions};
use super::stats::{per_cpu_sums, sum_drops};
use crate::config::Plan;
use crate::dataplane::HostContext;

/// The NAT programs loaded into the kernel with private (unpinned) maps programmed for a
/// plan, attached nowhere: for running them on crafted packets with BPF_PROG_TEST_RUN.
pub struct TestRunPrograms {
    bpf: AyaEbpf,
    maps: Option<Maps>,
}

/// The maps of a [`TestRunPrograms`] that `up` programs, taken out of it to be programmed
/// again (from another thread while packets run, say).
pub struct TestRunMaps {
    maps: Maps,
}

impl TestRunMaps {
    /// Programs the maps for `plan`, as `up` does with the previous plan `old`.
    ///
    /// # Errors
    /// What programming the maps met.
    pub fn program(
        &mut self,
        plan: &Plan,
        host: &HostContext,
        old: Option<&Plan>,
    ) -> Result<(), EbpfError> {
        self.maps.program(plan, host, old)
    }
}

impl TestRunPrograms {
    /// Loads the programs and programs their maps for `plan` on `host`, both families'
    /// (the IPv6 ones from a dual-stack plan and `host`'s IPv6 addresses), as `up` does.
    ///
    /// # Errors
    /// [`EbpfError::Load`] carries the verifier log when the kernel rejects a program.
    pub fn load(plan: &Plan, host: &HostContext) -> Result<TestRunPrograms, EbpfError> {
        // Both families' tables sized as `up` sizes them for `plan`.
        let mut bpf = object::load(&LoadOptions {
            conntrack: Some(CtCapacity::of(plan)),
            ..LoadOptions::default()
        })?;
        for (prog, _, _) in programs(plan) {
            object::program::<SchedClassifier>(&mut bpf, prog)?
                .load()
                .map_err(EbpfError::load(prog))?;
        }
        let mut maps = Maps::take(&mut bpf)?;
        maps.program(plan, host, None)?;
        Ok(TestRunPrograms {
            bpf,
            maps: Some(maps),
        })
    }

    /// The maps `up` programs, taken out (once; `None` after).
    pub fn take_maps(&mut self) -> Option<TestRunMaps> {
        self.maps.take().map(|maps| TestRunMaps { maps })
    }

    /// Runs `program` once on `frame`; returns its verdict and the frame as it left.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> Result<(i32, Vec<u8>), EbpfError> {
        self.run_ctx(program, frame, None)
    }

    /// [`TestRunPrograms::run`] for a packet the host forwards, received on interface
    /// `ingress_ifindex` (`skb->skb_iif`): what a network's egress sees of a packet from
    /// a container of the host (hairpin), where a plain test run's packet comes from no
    /// interface.
    pub fn run_forwarded(
        &mut self,
        program: &str,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        // The head of a struct __sk_buff, up to ingress_ifindex (offset 36), which
        // BPF_PROG_TEST_RUN copies into the skb (convert___skb_to_skb()).
        let mut skb = [0u8; 40];
        skb[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        self.run_ctx(program, frame, Some(&skb))
    }

    fn run_ctx(
        &mut self,
        program: &str,
        frame: &[u8],
        ctx: Option<&[u8]>,
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        let mut out = vec![0u8; frame.len() + 256];
        let res = object::program::<SchedClassifier>(&mut self.bpf, program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ctx,
                ..TestRunOptions::new()
            })
            .map_err(|source| EbpfError::TestRun {
                program: program.to_owned(),
                source: source.into(),
            })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value as i32, out))
    }

    /// Drops per reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        self.bpf
            .map(maps::DROPS)
            .map(|d| sum_drops(d, self.bpf.map(observe::maps::CT_STATS)))
            .unwrap_or_default()
    }

    /// Every drop counter that counted: (`observe::drop_slot`, packets and bytes summed
    /// over CPUs).
    pub fn drop_slots(&self) -> Vec<(u32, Counters)> {
        self.counters(maps::DROPS, observe::DROP_SLOTS)
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.packets != 0)
            .map(|(slot, c)| (slot as u32, c))
            .collect()
    }

    /// Packets and bytes translated, per `observe::path_slot`.
    pub fn translated(&self) -> Vec<Counters> {
        self.counters(observe::maps::TRANSLATED, observe::PATH_SLOTS)
    }

    /// Packets that took a short way, per `nat::forwarded` slot.
    pub fn forwarded(&self) -> Vec<u64> {
        self.sums(
            netplane_common::nat::maps::FORWARDED,
            netplane_common::nat::forwarded::SLOTS,
        )
    }

    /// Masquerade's port allocations, per `observe::nat_stat` slot.
    pub fn nat_stats(&self) -> Vec<u64> {
        self.sums(observe::maps::NAT_STATS, observe::nat_stat::SLOTS)
    }

    /// Conntrack events that are not drops, per `observe::ct_stat` slot.
    pub fn ct_stats(&self) -> Vec<u64> {
        self.sums(observe::maps::CT_STATS, observe::ct_stat::SLOTS)
    }

    /// Events lost to a full ring buffer.
    pub fn events_lost(&self) -> u64 {
        self.sums(observe::maps::EVENTS_LOST, 1)[0]
    }

    /// Sets which events the programs write (`observe::monitor` bits), as
    /// `netplane monitor` does.
    ///
    /// # Errors
    /// When the maps were taken out ([`TestRunPrograms::take_maps`]), or the config map
    /// cannot be written.
    pub fn set_monitor(&mut self, mask: u32) -> Result<(), EbpfError> {
        self.maps
            .as_mut()
            .ok_or(EbpfError::MissingMap(maps::CONFIG))?
            .set_monitor(mask)
    }

    /// The events in the ring buffer, read (and so consumed) in order.
    ///
    /// # Errors
    /// When the ring buffer cannot be opened.
    pub fn events(&mut self) -> Result<Vec<observe::Event>, EbpfError> {
        let name = observe::maps::EVENTS;
        let map = self.bpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        let mut ring = RingBuf::try_from(map).map_err(EbpfError::map(name))?;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<observe::Event>() {
                // SAFETY: the record holds an Event (netplane-ebpf's events.rs writes
                // them whole), a plain struct valid for any bytes, read unaligned.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        Ok(events)
    }

    /// The per-CPU [`Counters`] of array `map`, summed over CPUs, one per slot in `0..n`.
    fn counters(&self, map: &'static str, n: u32) -> Vec<Counters> {
        let Some(array) = self
            .bpf
            .map(map)
            .and_then(|m| PerCpuArray::<_, Counters>::try_from(m).ok())
        else {
            return vec![Counters::default(); n as usize];
        };
        (0..n)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|v| Counters::sum(v.iter()))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// [`per_cpu_sums`] of map `map`, zeros when it is missing.
    fn sums(&self, map: &'static str, n: u32) -> Vec<u64> {
        self.bpf
            .map(map)
            .map_or_else(|| vec![0; n as usize], |m| per_cpu_sums(m, n))
    }
}

/// Each program of the embedded object (the default one, or with `debug` the one that
/// logs through aya-log, at debug level), loaded with private maps: (name, instructions
/// after the verifier's rewrites (xlated), instructions the verifier processed). What
/// tells whether two builds' programs cost the same.
///
/// # Errors
/// [`EbpfError::Load`] carries the verifier log when the kernel rejects a program.
pub fn instruction_counts(debug: bool) -> Result<Vec<(String, u32, u32)>, EbpfError> {
    let mut bpf = object::load(&LoadOptions {
        debug,
        ..LoadOptions::default()
    })?;
    let mut counts = Vec::new();
    for (name, prog) in bpf.programs_mut() {
        let loaded = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            _ => continue,
        };
        loaded.map_err(EbpfError::load(name))?;
        let info = prog.info().map_err(EbpfError::load(name))?;
        counts.push((
            name.to_owned(),
            info.size_translated().unwrap_or(0) / 8,
            info.verified_instruction_count().unwrap_or(0),
        ));
    }
    counts.sort();
    Ok(counts)
}
