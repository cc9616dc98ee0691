//! aya-log's debug logs, for `netplane up --debug-datapath` only: everything here exists in
//! the object built with the `debug-log` feature, and nothing of it in the default object,
//! whose programs are then the same, instruction for instruction, as without any log site
//! (a level read at run time would leave its loads and branches in every program).
//!
//! The sites are few and shallow, each in a function of its own (a BPF-to-BPF call from
//! the stage's tail, once the deep calls have returned), so that a log's locals never add
//! to the stack of the IPv6 stages' deepest chains: drops, and new flows. Never in a
//! `bpf_loop` callback.

/// `aya_log_ebpf::debug!` in the `debug-log` build, nothing otherwise. aya-log-ebpf 0.2's
/// macros only evaluate their context argument (to silence a warning), so the sites, which
/// have no context at hand, pass a unit.
macro_rules! np_debug {
    ($($arg:tt)+) => {
        #[cfg(feature = "debug-log")]
        aya_log_ebpf::debug!(&(), $($arg)+);
    };
}

use netplane_common::nat::{DropReason, kind};
use netplane_common::observe::path_of;

/// A packet dropped: its reason (`netplane_common::nat::DropReason`), where (an
/// `observe::path_slot`) and its length, by name as `status` and the metrics say them.
#[inline(never)]
pub fn dropped(reason: u32, path: u32, len: u32) {
    let reason = match DropReason::ALL.get(reason as usize) {
        Some(r) => r.name(),
        None => "unknown",
    };
    let (v6, hook, dir) = path_of(path);
    np_debug!(
        "drop: {} at {} {} ({}), {} bytes",
        reason,
        hook.name(),
        dir.name(),
        family(v6),
        len
    );
}

/// A new flow: its conntrack kind (`netplane_common::nat::kind`), where it began, and
/// its source port after translation (network byte order).
#[inline(never)]
pub fn new_flow(k: u32, path: u32, port: u16) {
    let (v6, hook, dir) = path_of(path);
    np_debug!(
        "new {} flow at {} {} ({}), source port {}",
        kind::name(k as u8),
        hook.name(),
        dir.name(),
        family(v6),
        u16::from_be(port)
    );
}

#[inline(always)]
fn family(v6: bool) -> &'static str {
    if v6 { "ipv6" } else { "ipv4" }
}
