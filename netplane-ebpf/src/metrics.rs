//! Counters kept in per-CPU maps: no atomics and no contention on the packet path; the
//! agent sums the CPUs when it reads. Drops are counted per numbered reason and per place
//! (family, hook, direction), never logged per packet.
//!
//! A drop is counted in two halves: [`drop`], where the reason is known, notes it and
//! returns the verdict; the stage's tail, where the place is known, counts it
//! ([`dropped`]). `drop` is the only source of TC_ACT_SHOT, so the tail's one compare of
//! the verdict finds every drop.

use aya_ebpf::bindings::TC_ACT_SHOT;
use aya_ebpf::programs::TcContext;
use netplane_common::addr::Addr;
use netplane_common::counters::Direction;
use netplane_common::nat::DropReason;
use netplane_common::observe::{ct_stat, drop_slot, nat_stat};

use crate::maps::{COUNTERS, CT_STATS, DROPS, NAT_STATS, NOTE, TRANSLATED};

#[inline(always)]
pub fn count(ctx: &TcContext, dir: Direction) {
    if let Some(c) = COUNTERS.get_ptr_mut(dir.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the
        // program's run, and nothing else on this CPU runs concurrently with us.
        unsafe { (*c).record(ctx.len()) };
    }
}

/// Notes why the packet is dropped, for the stage's tail to count, and returns the verdict
/// that drops.
#[inline(always)]
pub fn drop(reason: DropReason) -> i32 {
    if let Some(n) = NOTE.get_ptr_mut(0) {
        // SAFETY: as in count().
        unsafe { (*n).reason = reason as u32 };
    }
    TC_ACT_SHOT as i32
}

/// Counts the drop that [`drop`] noted, at `path` (an `observe::path_slot`); returns its
/// reason.
#[inline(always)]
pub fn dropped(ctx: &TcContext, path: u32) -> u32 {
    // SAFETY: as in count().
    let reason = NOTE.get_ptr(0).map_or(0, |n| unsafe { (*n).reason });
    if let Some(c) = DROPS.get_ptr_mut(drop_slot(path, reason)) {
        // SAFETY: as in count().
        unsafe { (*c).record(ctx.len()) };
    }
    reason
}

/// Counts a packet translated at `path`.
#[inline(always)]
pub fn translated(ctx: &TcContext, path: u32) {
    if let Some(c) = TRANSLATED.get_ptr_mut(path) {
        // SAFETY: as in count().
        unsafe { (*c).record(ctx.len()) };
    }
}

/// Adds `n` to family `A`'s [`nat_stat`] counter `stat`.
#[inline(always)]
pub fn nat_stat<A: Addr>(stat: u32, n: u32) {
    let slot = if A::BITS == 128 {
        stat + nat_stat::V6
    } else {
        stat
    };
    if let Some(c) = NAT_STATS.get_ptr_mut(slot) {
        // SAFETY: as in count().
        unsafe { *c += u64::from(n) };
    }
}

/// Counts an assured flow that the full main conntrack table of family `A` refused.
#[inline(always)]
pub fn ct_full<A: Addr>() {
    ct_stat::<A>(ct_stat::FULL);
}

/// Counts conntrack event `stat` (a [`ct_stat`] slot) of family `A`.
#[inline(always)]
pub fn ct_stat<A: Addr>(stat: u32) {
    let slot = if A::BITS == 128 {
        stat + ct_stat::V6
    } else {
        stat
    };
    if let Some(c) = CT_STATS.get_ptr_mut(slot) {
        // SAFETY: as in count().
        unsafe { *c += 1 };
    }
}
