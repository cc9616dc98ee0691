//! netplane's eBPF programs. Entry points only: each is a thin wrapper over the modules
//! that do the work. From the bottom up (a module uses only those of the lines above its
//! own):
//!
//! - `maps`: every map; `parse`: headers; `debug`: aya-log's sites (`debug-log` builds);
//! - `metrics`: counters and drops; `csum`: rewrites with checksum updates;
//!   `family`: what differs between IPv4 and IPv6 (maps, headers, checksums), so that
//!   every module above is written once for both;
//!   `addr`: what an address is (local, container network, never-NAT, published port);
//!   `conntrack`: the conntrack and fragment maps' lookups and inserts; `events`: the
//!   monitor's events;
//! - `access`: the gateway modes and never-NAT prefixes (what reaches a container from the
//!   outside, what leaves untranslated);
//! - `nat_port`: the source port of SNAT; `forward`: the short way past the stack;
//! - `icmp`: ICMP errors about translated flows;
//! - `nat`: the two NAT stages of the TC programs; `sock`: the cgroup programs.
#![no_std]
#![no_main]

mod access;
mod addr;
mod conntrack;
mod csum;
// aya-log's sites, in the `debug-log` build only (see the module).
#[cfg(feature = "debug-log")]
mod debug;
mod events;
mod family;
mod forward;
mod icmp;
mod maps;
mod metrics;
mod nat;
mod nat_port;
mod parse;
mod sock;

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::macros::{cgroup_sock_addr, classifier};
use aya_ebpf::programs::{SockAddrContext, TcContext};
use nat::Hook;
use netplane_common::addr::Ip6;
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

/// Uplink, TC ingress: reverse masquerade, DNAT of published ports.
#[classifier]
pub fn netplane_uplink_ingress(ctx: TcContext) -> i32 {
    nat::dst_stage::<u32>(&ctx, Hook::Uplink)
}

/// Uplink, TC egress: masquerade, reverse DNAT.
#[classifier]
pub fn netplane_uplink_egress(ctx: TcContext) -> i32 {
    nat::src_stage::<u32>(&ctx, Hook::Uplink)
}

/// A container network's device, TC ingress (packets from containers into the host): on a
/// bridge network its bridge, on a ptp network each container's host veth (one program,
/// attached per veth). Hairpin DNAT, reverse of hairpin SNAT, isolation between networks,
/// masquerade taken early (see nat::out_of_bridge).
#[classifier]
pub fn netplane_bridge_ingress(ctx: TcContext) -> i32 {
    nat::dst_stage::<u32>(&ctx, Hook::Network)
}

/// The same devices, TC egress (packets from the host into containers): hairpin SNAT and
/// the reverse of hairpin DNAT; nothing into an isolated network.
#[classifier]
pub fn netplane_bridge_egress(ctx: TcContext) -> i32 {
    nat::src_stage::<u32>(&ctx, Hook::Network)
}

/// A bridge network's host veth, TC ingress (packets its container sends), which runs in
/// the veth's own receive, before the bridge's rx_handler (__netif_receive_skb_core():
/// TCX ingress comes first): a packet of a flow that the uplink translates leaves here for
/// the uplink's next hop, past the bridge and the host's second receive
/// (nat::from_container). Everything else goes on (TCX_NEXT) into the bridge, whose
/// programs see it as before. ptp host veths carry netplane_bridge_ingress instead.
#[classifier]
pub fn netplane_from_container(ctx: TcContext) -> i32 {
    nat::from_container::<u32>(&ctx)
}

// The same five for IPv6: the same code, compiled for it (crate::family). Programs of
// their own, attached after the IPv4 ones only where a network has a subnet6, so that
// IPv4 pays nothing for IPv6 it does not use, and each family's chain of calls has the
// verifier's 512 bytes of stack to itself.

#[classifier]
pub fn netplane_uplink_ingress6(ctx: TcContext) -> i32 {
    nat::dst_stage::<Ip6>(&ctx, Hook::Uplink)
}

#[classifier]
pub fn netplane_uplink_egress6(ctx: TcContext) -> i32 {
    nat::src_stage::<Ip6>(&ctx, Hook::Uplink)
}

#[classifier]
pub fn netplane_bridge_ingress6(ctx: TcContext) -> i32 {
    nat::dst_stage::<Ip6>(&ctx, Hook::Network)
}

#[classifier]
pub fn netplane_bridge_egress6(ctx: TcContext) -> i32 {
    nat::src_stage::<Ip6>(&ctx, Hook::Network)
}

#[classifier]
pub fn netplane_from_container6(ctx: TcContext) -> i32 {
    nat::from_container::<Ip6>(&ctx)
}

/// Host processes connecting (TCP, connected UDP) to a published port.
#[cgroup_sock_addr(connect4)]
pub fn netplane_connect4(ctx: SockAddrContext) -> i32 {
    sock::connect4(&ctx)
}

/// Host processes sending unconnected UDP to a published port.
#[cgroup_sock_addr(sendmsg4)]
pub fn netplane_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::sendmsg4(&ctx)
}

/// The answers to those, shown as coming from the published address.
#[cgroup_sock_addr(recvmsg4)]
pub fn netplane_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::recvmsg4(&ctx)
}

/// Host processes connecting (TCP, connected UDP) to a published port over IPv6.
#[cgroup_sock_addr(connect6)]
pub fn netplane_connect6(ctx: SockAddrContext) -> i32 {
    sock::connect6(&ctx)
}

/// Host processes sending unconnected UDP to a published port over IPv6.
#[cgroup_sock_addr(sendmsg6)]
pub fn netplane_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::sendmsg6(&ctx)
}

/// The answers to those, shown as coming from the published address.
#[cgroup_sock_addr(recvmsg6)]
pub fn netplane_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::recvmsg6(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this is never called.
    loop {}
}

/// The programs' license. The verifier lets a program call a helper marked `.gpl_only`
/// only if its license is GPL-compatible (check_helper_call() in kernel/bpf/verifier.c,
/// license_is_gpl_compatible()). Of the helpers used here, bpf_fib_lookup() is one
/// (bpf_skb_fib_lookup_proto in net/core/filter.c), which crate::forward calls.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
