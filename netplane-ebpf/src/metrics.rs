//! Counters kept in per-CPU maps: no atomics and no contention on the packet path; the
//! agent sums the CPUs when it reads. Drops are counted per numbered reason, never logged
//! per packet.

use aya_ebpf::bindings::TC_ACT_SHOT;
use aya_ebpf::programs::TcContext;
use netplane_common::counters::Direction;
use netplane_common::nat::DropReason;

use crate::maps::{COUNTERS, DROPS};

#[inline(always)]
pub fn count(ctx: &TcContext, dir: Direction) {
    if let Some(c) = COUNTERS.get_ptr_mut(dir.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the
        // program's run, and nothing else on this CPU runs concurrently with us.
        unsafe { (*c).record(ctx.len()) };
    }
}

/// Counts a drop and returns the verdict that drops.
#[inline(always)]
pub fn drop(reason: DropReason) -> i32 {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: as in count().
        unsafe { *c += 1 };
    }
    TC_ACT_SHOT as i32
}
