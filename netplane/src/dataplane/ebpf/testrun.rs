//! The NAT programs for BPF_PROG_TEST_RUN: loaded with private maps programmed for a plan,
//! attached nowhere, run on crafted packets.

use aya::Ebpf as AyaEbpf;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use netplane_common::nat::maps;
use netplane_common::observe;

use super::attach::programs;
use super::conntrack::CtCapacity;
use super::maps::Maps;
use super::object::{self, EbpfError, LoadOptions};
use super::stats::sum_drops;
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
        let mut out = vec![0u8; frame.len() + 256];
        let res = object::program::<SchedClassifier>(&mut self.bpf, program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
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
}
