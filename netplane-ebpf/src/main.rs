//! netplane's eBPF programs. Entry points only: each `#[classifier]` is a thin wrapper
//! over the modules that do the work.
#![no_std]
#![no_main]

mod metrics;

use aya_ebpf::{bindings::tcx_action_base::TCX_NEXT, macros::classifier, programs::TcContext};
use netplane_common::counters::Direction;

/// Counts packets and bytes received by the interface it is attached to.
#[classifier]
pub fn netplane_count_ingress(ctx: TcContext) -> i32 {
    metrics::count(&ctx, Direction::Ingress);
    // tcx_run() (include/net/tcx.h) runs the next program of the chain only on TCX_NEXT and
    // stops at any other verdict; after the last program the packet goes on as if no
    // program had run. So the counter observes without deciding.
    TCX_NEXT
}

/// Counts packets and bytes transmitted by the interface it is attached to.
#[classifier]
pub fn netplane_count_egress(ctx: TcContext) -> i32 {
    metrics::count(&ctx, Direction::Egress);
    TCX_NEXT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this is never called.
    loop {}
}

/// The license section the kernel checks before allowing GPL-only helpers, which the
/// NAT programs and aya-log use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
