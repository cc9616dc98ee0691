//! Counters kept in per-CPU maps: no atomics and no contention on the packet path; the
//! agent sums the CPUs when it reads.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};
use netplane_common::counters::{COUNTERS_SLOTS, Counters, Direction};

#[map(name = "NETPLANE_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(COUNTERS_SLOTS, 0);

#[inline(always)]
pub fn count(ctx: &TcContext, dir: Direction) {
    if let Some(c) = COUNTERS.get_ptr_mut(dir.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the
        // program's run, and nothing else on this CPU runs concurrently with us.
        unsafe { (*c).record(ctx.len()) };
    }
}
