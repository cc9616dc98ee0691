//! Published ports for host processes, at the socket layer (as Cilium's socket
//! load-balancer): `connect4`/`connect6` and `sendmsg4`/`sendmsg6` rewrite a destination
//! that is a published port of a host address (127.0.0.1 and ::1 included) to the
//! container's address before any packet exists, and `recvmsg4`/`recvmsg6` show UDP
//! answers as coming from the address the application sent to. No packet of these flows
//! needs NAT, so `[::1]`-published ports work with the client's address kept, where Docker
//! needs its userland proxy (IPv6 has no route_localnet for DNAT to use).
//!
//! The programs are attached to the root cgroup, so they see the sockets of every network
//! namespace: they act only in the one netplane manages, identified by its netns cookie.

use aya_ebpf::bindings::{BPF_ANY, bpf_sock_addr, sockaddr};
use aya_ebpf::helpers::{bpf_bind, bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::programs::SockAddrContext;
use netplane_common::addr::Ip6;
use netplane_common::nat::{SockRevEntry, SockRevKey};
use netplane_common::packet::IPPROTO_UDP;

use crate::addr::published;
use crate::conntrack::config;
use crate::family::Family;

/// What a cgroup sock_addr program returns to let the call proceed.
const ALLOW: i32 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `struct sockaddr_in`, for bpf_bind().
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6`, for bpf_bind().
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: Ip6,
    scope_id: u32,
}

/// The address of a `bpf_sock_addr` context, per family.
trait SockFamily: Family {
    fn user_addr(sa: &bpf_sock_addr) -> Self;
    fn set_user_addr(sa: &mut bpf_sock_addr, a: Self);
    /// Binds the socket to `addr` (port 0: any), as the client would have sourced it.
    fn bind(ctx: &SockAddrContext, addr: Self);
    /// The container address and port that `addr:port` publishes, if any.
    #[inline(always)]
    fn backend(addr: Self, port: u16, proto: u8) -> Option<(Self, u16)> {
        published(addr, port, proto).map(|b| (b.addr, b.port))
    }
    /// Whether the client's source would be loopback, which cannot leave the host.
    #[inline(always)]
    fn local_only(addr: &Self) -> bool {
        addr.is_loopback()
    }
    /// Where socket `cookie` really sent what comes back from `addr:port`, if it was
    /// redirected.
    #[inline(always)]
    fn original(cookie: u64, addr: Self, port: u16) -> Option<(Self, u16)> {
        sent_to(cookie, addr, port)
    }
}

/// The original destination a redirected socket's datagram to `addr:port` had.
#[inline(always)]
fn sent_to<A: Family>(cookie: u64, addr: A, port: u16) -> Option<(A, u16)> {
    // SAFETY: a lookup; the value is copied out.
    unsafe { A::sock_rev().get(&SockRevKey::new(cookie, addr, port)) }.map(|o| (o.addr, o.port))
}

/// The IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d) carries.
#[inline(always)]
fn v4_mapped(a: &Ip6) -> Option<u32> {
    (a[0] == 0 && a[1] == 0 && a[2] == 0xffffu32.to_be()).then_some(a[3])
}

impl SockFamily for u32 {
    #[inline(always)]
    fn user_addr(sa: &bpf_sock_addr) -> u32 {
        sa.user_ip4
    }
    #[inline(always)]
    fn set_user_addr(sa: &mut bpf_sock_addr, a: u32) {
        sa.user_ip4 = a;
    }
    #[inline(always)]
    fn bind(ctx: &SockAddrContext, addr: u32) {
        let mut sa = SockaddrIn {
            family: AF_INET,
            port: 0,
            addr,
            zero: [0; 8],
        };
        // SAFETY: a sockaddr_in on our stack, with its size. A socket bound already keeps
        // its address (the helper fails, which is fine).
        unsafe {
            bpf_bind(
                ctx.sock_addr,
                &mut sa as *mut SockaddrIn as *mut sockaddr,
                core::mem::size_of::<SockaddrIn>() as i32,
            )
        };
    }
}

impl SockFamily for Ip6 {
    /// A dual-stack socket reaches IPv4 through IPv4-mapped addresses, past connect4
    /// (tcp_v6_connect() hands them to tcp_v4_connect()): those are looked up among the
    /// IPv4 published ports, and stay mapped, as Cilium's sock6 load-balancer does.
    #[inline(always)]
    fn backend(addr: Ip6, port: u16, proto: u8) -> Option<(Ip6, u16)> {
        match v4_mapped(&addr) {
            Some(v4) => {
                published(v4, port, proto).map(|b| ([0, 0, 0xffffu32.to_be(), b.addr], b.port))
            }
            None => published(addr, port, proto).map(|b| (b.addr, b.port)),
        }
    }
    #[inline(always)]
    fn local_only(addr: &Ip6) -> bool {
        addr.is_loopback() || v4_mapped(addr).is_some_and(|v4| v4.is_loopback())
    }
    /// A dual-stack socket's unconnected datagram to an IPv4-mapped address went through
    /// sendmsg4 (udpv6_sendmsg() hands it to udp_sendmsg() before the IPv6 hook), which
    /// recorded it as IPv4; its answers come through recvmsg6, mapped.
    #[inline(always)]
    fn original(cookie: u64, addr: Ip6, port: u16) -> Option<(Ip6, u16)> {
        match v4_mapped(&addr) {
            Some(v4) => sent_to(cookie, v4, port).map(|(a, p)| ([0, 0, 0xffffu32.to_be(), a], p)),
            None => sent_to(cookie, addr, port),
        }
    }
    /// Word by word: the context allows 4-byte accesses to user_ip6
    /// (sock_addr_is_valid_access()).
    #[inline(always)]
    fn user_addr(sa: &bpf_sock_addr) -> Ip6 {
        // SAFETY: reads of the context's fields.
        unsafe {
            [
                core::ptr::read_volatile(&sa.user_ip6[0]),
                core::ptr::read_volatile(&sa.user_ip6[1]),
                core::ptr::read_volatile(&sa.user_ip6[2]),
                core::ptr::read_volatile(&sa.user_ip6[3]),
            ]
        }
    }
    #[inline(always)]
    fn set_user_addr(sa: &mut bpf_sock_addr, a: Ip6) {
        // SAFETY: writes of the context's fields, allowed in these hooks.
        unsafe {
            core::ptr::write_volatile(&mut sa.user_ip6[0], a[0]);
            core::ptr::write_volatile(&mut sa.user_ip6[1], a[1]);
            core::ptr::write_volatile(&mut sa.user_ip6[2], a[2]);
            core::ptr::write_volatile(&mut sa.user_ip6[3], a[3]);
        }
    }
    #[inline(always)]
    fn bind(ctx: &SockAddrContext, addr: Ip6) {
        let mut sa = SockaddrIn6 {
            family: AF_INET6,
            port: 0,
            flowinfo: 0,
            addr,
            scope_id: 0,
        };
        // SAFETY: as for IPv4.
        unsafe {
            bpf_bind(
                ctx.sock_addr,
                &mut sa as *mut SockaddrIn6 as *mut sockaddr,
                core::mem::size_of::<SockaddrIn6>() as i32,
            )
        };
    }
}

#[inline(always)]
fn in_our_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = config() else { return false };
    // SAFETY: the helper reads the context it is given.
    cfg.netns_cookie != 0
        && unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) } == cfg.netns_cookie
}

/// Rewrites the destination if it is a published port; returns the original destination
/// and the new one.
#[inline(always)]
fn redirect<A: SockFamily>(sa: &mut bpf_sock_addr) -> Option<(A, u16, A, u16)> {
    let (addr, port) = (A::user_addr(sa), sa.user_port as u16);
    let (to, to_port) = A::backend(addr, port, sa.protocol as u8)?;
    A::set_user_addr(sa, to);
    sa.user_port = u32::from(to_port);
    Some((addr, port, to, to_port))
}

/// Remembers, per socket, where a redirected UDP socket really sent to.
#[inline(always)]
fn remember<A: SockFamily>(
    ctx: &SockAddrContext,
    orig_addr: A,
    orig_port: u16,
    addr: A,
    port: u16,
) {
    // SAFETY: the helper reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let _ = A::sock_rev().insert(
        &SockRevKey::new(cookie, addr, port),
        &SockRevEntry {
            addr: orig_addr,
            port: orig_port,
            _pad: 0,
        },
        BPF_ANY as u64,
    );
}

#[inline(always)]
fn connect<A: SockFamily>(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel hands the program a valid context for its run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((orig_addr, orig_port, addr, port)) = redirect::<A>(sa) else {
        return ALLOW;
    };
    if sa.protocol == u32::from(IPPROTO_UDP) {
        remember(ctx, orig_addr, orig_port, addr, port);
    }
    // Connecting to a host address, the client would have used it as its source: keep it
    // (the container then sees the host's address, as with iptables DNAT). Not for
    // loopback, which cannot leave the host; the route's source is used then.
    if !A::local_only(&orig_addr) {
        A::bind(ctx, orig_addr);
    }
    ALLOW
}

#[inline(always)]
fn sendmsg<A: SockFamily>(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: as in connect().
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some((orig_addr, orig_port, addr, port)) = redirect::<A>(sa) {
        remember(ctx, orig_addr, orig_port, addr, port);
    }
    ALLOW
}

#[inline(always)]
fn recvmsg<A: SockFamily>(ctx: &SockAddrContext) -> i32 {
    if !in_our_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: as in connect().
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    if let Some((addr, port)) = A::original(cookie, A::user_addr(sa), sa.user_port as u16) {
        A::set_user_addr(sa, addr);
        sa.user_port = u32::from(port);
    }
    ALLOW
}

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    connect::<u32>(ctx)
}
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    sendmsg::<u32>(ctx)
}
pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    recvmsg::<u32>(ctx)
}
pub fn connect6(ctx: &SockAddrContext) -> i32 {
    connect::<Ip6>(ctx)
}
pub fn sendmsg6(ctx: &SockAddrContext) -> i32 {
    sendmsg::<Ip6>(ctx)
}
pub fn recvmsg6(ctx: &SockAddrContext) -> i32 {
    recvmsg::<Ip6>(ctx)
}
