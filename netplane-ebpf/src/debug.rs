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

/// A packet dropped: its reason (`netplane_common::nat::DropReason`), where (an
/// `observe::path_slot`) and its length.
#[inline(never)]
pub fn dropped(reason: u32, path: u32, len: u32) {
    np_debug!("drop: reason {} at path {}, {} bytes", reason, path, len);
}

/// A new flow: its conntrack kind (`netplane_common::nat::kind`), where it began, and
/// its source port after translation (network byte order).
#[inline(never)]
pub fn new_flow(kind: u32, path: u32, port: u16) {
    np_debug!(
        "new flow: kind {} at path {}, port {}",
        kind,
        path,
        u16::from_be(port)
    );
}
