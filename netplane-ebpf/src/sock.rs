//! Published ports for host processes, at the socket layer (as Cilium's socket
//! load-balancer): `connect4` and `sendmsg4` rewrite a destination that is a published port
//! of a host address (127.0.0.1 included) to the container's address before any packet
//! exists, and `recvmsg4` shows UDP answers as coming from the address the application
//! sent to. No packet of these flows needs NAT.
//!
//! The programs are attached to the root cgroup, so they see the sockets of every network
//! namespace: they act only in the one netplane manages, identified by its netns cookie.

use aya_ebpf::bindings::{BPF_ANY, bpf_sock_addr, sockaddr};
use aya_ebpf::helpers::{bpf_bind, bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::programs::SockAddrContext;
use netplane_common::nat::{SockRevEntry, SockRevKey};
use netplane_common::packet::IPPROTO_UDP;

use crate::addr::{is_loopback, published};
use crate::conntrack::config;
use crate::maps::SOCK_REV;

/// What a cgroup sock_addr program returns to let the call proceed.
const ALLOW: i32 = 1;
const AF_INET: u16 = 2;

/// `struct sockaddr_in`, for bpf_bind().
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

#[inline(always)]
fn in_our_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = config() else { return false };
    // SAFETY: the helper reads the context it is given.
    cfg.netns_cookie != 0
        && unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) } == cfg.netns_cookie
}

/// Rewrites the destination if it is a published port; returns the original destination.
#[inline(always)]
fn redirect(sa: &mut bpf_sock_addr) -> Option<(u32, u16, u32, u16)> {
    let (addr, port) = (sa.user_ip4, sa.user_port as u16);
    let b = published(addr, port, sa.protocol as u8)?;
    sa.user_ip4 = b.addr;
    sa.user_port = u32::from(b.port);
    Some((addr, port, b.addr, b.port))
}

/// Remembers, per socket, where a redirected UDP socket really sent to.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig_addr: u32, orig_port: u16, addr: u32, port: u16) {
    // SAFETY: the helper reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let key = SockRevKey {
        cookie,
        addr,
        port,
        _pad: 0,
    };
    let _ = SOCK_REV.insert(
        &key,
        &SockRevEntry {
            addr: orig_addr,
            port: orig_port,
            _pad: 0,
        },
        BPF_ANY as u64,
    );
}

#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel hands the program a valid context for its run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((orig_addr, orig_port, addr, port)) = redirect(sa) else {
        return ALLOW;
    };
    if sa.protocol == u32::from(IPPROTO_UDP) {
        remember(ctx, orig_addr, orig_port, addr, port);
    }
    // Connecting to a host address, the client would have used it as its source: keep it
    // (the container then sees the host's address, as with iptables DNAT). Not for
    // 127.0.0.1, which cannot leave the host; the route's source is used then.
    if !is_loopback(orig_addr) {
        let mut bind = SockaddrIn {
            family: AF_INET,
            port: 0,
            addr: orig_addr,
            zero: [0; 8],
        };
        // SAFETY: a sockaddr_in on our stack, with its size. A socket bound already keeps
        // its address (the helper fails, which is fine).
        unsafe {
            bpf_bind(
                ctx.sock_addr,
                &mut bind as *mut SockaddrIn as *mut sockaddr,
                16,
            )
        };
    }
    ALLOW
}

#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: as in connect4().
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some((orig_addr, orig_port, addr, port)) = redirect(sa) {
        remember(ctx, orig_addr, orig_port, addr, port);
    }
    ALLOW
}

#[inline(always)]
pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: as in connect4().
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let key = SockRevKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: a lookup; the value is copied out.
    if let Some(orig) = unsafe { SOCK_REV.get(&key) } {
        sa.user_ip4 = orig.addr;
        sa.user_port = u32::from(orig.port);
    }
    ALLOW
}
