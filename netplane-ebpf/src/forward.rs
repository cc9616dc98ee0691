//! Forwarding of translated packets past the kernel's IP forwarding path.
//!
//! Into a container, [`to_container`] transmits the packet on the host end of the
//! container's veth pair (bpf_redirect): past the host's routing, the neighbour table and
//! the bridge; or, with `flags::PEER_DELIVERY` (`[ebpf] into_container = "peer"`), puts it
//! straight on the ingress of the container's end (bpf_redirect_peer), past the veth's
//! transmit and its backlog queue too. Elsewhere, [`route`] and [`send`] do:
//!
//! A packet that a NAT stage has just translated, of a flow conntrack already knows, needs
//! nothing more from the stack than a route and a neighbour: `ip_rcv()`, the route cache,
//! `ip_forward()`, netfilter's FORWARD/POSTROUTING hooks and `ip_finish_output()` only
//! repeat what we know. So the program does what `ip_forward()` would (route, TTL, MTU)
//! and hands the packet to the next hop's device with bpf_redirect_neigh(), which fills in
//! the L2 header from the neighbour table and resolves it when needed, as Cilium's BPF
//! host routing does (bpf/lib/fib.h). Anything unusual (no route, too big, TTL expiring,
//! IP options, fragments) goes on through the stack, which answers with the right ICMP.
//!
//! Pure ACKs are the exception: they go through the bridge (route + send), as slowly as
//! the kernel's own forwarding would take them. On veth, the faster a bulk sender in a
//! container gets its ACKs, the worse it does: ACKs are processed in the softirq of the
//! CPU that received them, the sender's TCP then transmits from that CPU too, veth queues
//! each packet on its transmitting CPU's backlog, and segments sent from two CPUs
//! overtake each other and are retransmitted for nothing (DSACKed). Measured with
//! `cargo xtask bench` on a 2-vCPU VM, TCP stream out of a container against iptables:
//! bpf_redirect_peer() (Cilium's delivery, which skips even the veth's backlog) 0.79–0.87,
//! everything by bpf_redirect() to the host veth 1.01, everything through the bridge 1.20,
//! pure ACKs through the bridge and the rest to the host veth 1.18; connections/s gain
//! most from the last. So the way in is a runtime switch (`DpConfig::flags`, no reload):
//! `veth` (bpf_redirect, the default), `peer` (bpf_redirect_peer, pure ACKs still through
//! the bridge) or `peer-all` (pure ACKs too, `flags::PEER_ACKS`). Issue 17's bench, with
//! the container's own hook, measured each against the no-NAT baseline (3 rounds):
//! connect/request/close 1.13 veth, 0.99 peer, 1.07 peer-all; stream out 1.30, 1.13, 1.16;
//! stream in 1.30, 1.11, 1.38; request/response 1.04, 1.15, 1.01. veth stays the default.
//!
//! IPv6 takes the same way ([`Forward`] says what differs): its hop limit has no header
//! checksum to update, and a packet with extension headers goes through the stack.

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::bindings::{
    BPF_F_RECOMPUTE_CSUM, BPF_FIB_LOOKUP_SKIP_NEIGH, bpf_fib_lookup, bpf_redir_neigh,
    bpf_redir_neigh__bindgen_ty_1,
};
use aya_ebpf::helpers::generated::{
    bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
};
use aya_ebpf::programs::TcContext;
use netplane_common::addr::Ip6;
use netplane_common::nat::{DpConfig, Tick, flags, forwarded, ticks_since};
use netplane_common::packet::{ETH_HLEN, IPPROTO_TCP, tcp_flags};
use netplane_common::packet6::IPV6_HLEN;

use crate::family::Family;
use crate::maps::{CachedRoute, FORWARDED, RouteKey};
use crate::parse::{Frag, IP_CSUM_OFF, IP6_HOP_LIMIT_OFF, IP6_PAYLOAD_LEN_OFF, Packet, ptr_at};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// bpf_fib_lookup()'s BPF_FIB_LKUP_RET_SUCCESS.
const FIB_SUCCESS: i64 = 0;
const IP_TTL_OFF: usize = ETH_HLEN + 8;

/// What the short way does differently per family.
pub trait Forward: Family {
    /// The IP header's length without options or extension headers.
    const HLEN: usize;
    /// Where the TTL or hop limit is.
    const TTL_OFF: usize;
    const AF: u8;
    /// Puts the addresses into a FIB lookup.
    fn fib_addrs(fib: &mut bpf_fib_lookup, saddr: Self, daddr: Self);
    /// The next hop a FIB lookup answered.
    fn fib_next_hop(fib: &bpf_fib_lookup) -> Self;
    fn neigh(next_hop: Self) -> bpf_redir_neigh__bindgen_ty_1;
    /// The IP header holds up as ip_rcv_core() would check it: the checksum, which
    /// nothing verified yet (IPv4), and a length within the frame.
    fn header_valid(ctx: &TcContext) -> bool;
    /// Decrements the TTL or hop limit, as ip_forward() / ip6_forward() would.
    fn decrement_ttl(ctx: &TcContext) -> Result<(), ()>;
    /// The IP datagram's length from its header.
    fn ip_len(ctx: &TcContext) -> Option<usize>;
}

impl Forward for u32 {
    const HLEN: usize = 20;
    const TTL_OFF: usize = IP_TTL_OFF;
    const AF: u8 = AF_INET;
    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, saddr: u32, daddr: u32) {
        fib.__bindgen_anon_3.ipv4_src = saddr;
        fib.__bindgen_anon_4.ipv4_dst = daddr;
    }
    #[inline(always)]
    fn fib_next_hop(fib: &bpf_fib_lookup) -> u32 {
        // SAFETY: the IPv4 member of the union an IPv4 lookup filled.
        unsafe { fib.__bindgen_anon_4.ipv4_dst }
    }
    #[inline(always)]
    fn neigh(next_hop: u32) -> bpf_redir_neigh__bindgen_ty_1 {
        bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: next_hop }
    }
    /// What ip_rcv_core() checks of an option-less IPv4 header before anything else sees the
    /// packet, and the redirect skips: the header checksum (ip_fast_csum()), and a total
    /// length that covers the header and fits the frame. A packet that fails goes to the
    /// stack, which drops it (IPSTATS_MIB_CSUMERRORS, INHDRERRORS) as it would have. The NAT
    /// stages' incremental updates keep a right checksum right and a wrong one wrong, so this
    /// holds before or after them.
    #[inline(always)]
    fn header_valid(ctx: &TcContext) -> bool {
        let Some(h) = ptr_at::<[u8; 20]>(ctx, ETH_HLEN) else {
            return false;
        };
        // SAFETY: ptr_at checked the 20 bytes are in the packet.
        let h = unsafe { &*h };
        let mut sum = 0u32;
        let mut i = 0;
        while i < 20 {
            sum += u32::from(u16::from_ne_bytes([h[i], h[i + 1]]));
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let tot_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        sum == 0xffff && tot_len >= 20 && ETH_HLEN + tot_len <= ctx.len() as usize
    }
    /// What ip_forward() does to the header: TTL minus one, checksum updated (RFC 1624).
    /// Refuses a TTL that would expire, so that the stack sends the ICMP time-exceeded.
    #[inline(always)]
    fn decrement_ttl(ctx: &TcContext) -> Result<(), ()> {
        let ttl_proto: *mut [u8; 2] = ptr_at(ctx, IP_TTL_OFF).ok_or(())?;
        // SAFETY: ptr_at checked the bytes are in the packet.
        let old = unsafe { *ttl_proto };
        if old[0] <= 1 {
            return Err(());
        }
        let new = [old[0] - 1, old[1]];
        ctx.l3_csum_replace(
            IP_CSUM_OFF,
            u16::from_ne_bytes(old) as u64,
            u16::from_ne_bytes(new) as u64,
            2,
        )
        .map_err(|_| ())?;
        // The helper may have moved the data: the pointer is taken anew.
        let ttl: *mut u8 = ptr_at(ctx, IP_TTL_OFF).ok_or(())?;
        // SAFETY: as above.
        unsafe { *ttl = new[0] };
        Ok(())
    }
    #[inline(always)]
    fn ip_len(ctx: &TcContext) -> Option<usize> {
        let tot_len = ptr_at::<[u8; 2]>(ctx, ETH_HLEN + 2)?;
        // SAFETY: ptr_at checked the bytes are in the packet.
        Some(usize::from(u16::from_be_bytes(unsafe { *tot_len })))
    }
}

impl Forward for Ip6 {
    const HLEN: usize = IPV6_HLEN;
    const TTL_OFF: usize = IP6_HOP_LIMIT_OFF;
    const AF: u8 = AF_INET6;
    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, saddr: Ip6, daddr: Ip6) {
        fib.__bindgen_anon_3.ipv6_src = saddr;
        fib.__bindgen_anon_4.ipv6_dst = daddr;
    }
    #[inline(always)]
    fn fib_next_hop(fib: &bpf_fib_lookup) -> Ip6 {
        // SAFETY: the IPv6 member of the union an IPv6 lookup filled.
        unsafe { fib.__bindgen_anon_4.ipv6_dst }
    }
    #[inline(always)]
    fn neigh(next_hop: Ip6) -> bpf_redir_neigh__bindgen_ty_1 {
        bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: next_hop }
    }
    /// No header checksum: only the payload length against the frame (ipv6_rcv()).
    #[inline(always)]
    fn header_valid(ctx: &TcContext) -> bool {
        Self::ip_len(ctx).is_some_and(|len| ETH_HLEN + len <= ctx.len() as usize)
    }
    /// No header checksum covers it, but a CHECKSUM_COMPLETE skb's csum does: written by
    /// helper with BPF_F_RECOMPUTE_CSUM, as ip6_forward()'s skb_forward_csum() would
    /// have left it consistent.
    #[inline(always)]
    fn decrement_ttl(ctx: &TcContext) -> Result<(), ()> {
        let hop: *mut u8 = ptr_at(ctx, IP6_HOP_LIMIT_OFF).ok_or(())?;
        // SAFETY: ptr_at checked the byte is in the packet.
        let hop = unsafe { *hop };
        if hop <= 1 {
            return Err(());
        }
        ctx.store(IP6_HOP_LIMIT_OFF, &(hop - 1), BPF_F_RECOMPUTE_CSUM as u64)
            .map_err(|_| ())
    }
    #[inline(always)]
    fn ip_len(ctx: &TcContext) -> Option<usize> {
        let len = ptr_at::<[u8; 2]>(ctx, IP6_PAYLOAD_LEN_OFF)?;
        // SAFETY: ptr_at checked the bytes are in the packet.
        Some(IPV6_HLEN + usize::from(u16::from_be_bytes(unsafe { *len })))
    }
}

/// Whether the short way may take `p` at all: it is on, and the packet is neither a
/// fragment nor has IP options or extension headers (which the stack would process).
#[inline(always)]
pub fn eligible<A: Forward>(p: &Packet<A>, cfg: &DpConfig) -> bool {
    cfg.flags & flags::FAST_FORWARD != 0 && p.frag == Frag::Whole && p.l4_off == ETH_HLEN + A::HLEN
}

/// Where a packet goes next: the device and the next hop's address.
pub struct Route<A> {
    ifindex: u32,
    next_hop: A,
}
/// How long a route in the cache ([`ROUTES`](crate::maps::ROUTES)) is used: one second, in ticks.
const ROUTE_TTL: u32 = 954;

/// The route of `p` as it is now, if the short way may take it: it leaves through
/// `want_oif` (0: any device), and nothing about it needs the stack.
#[inline(always)]
pub fn route<A: Forward>(
    ctx: &TcContext,
    p: &Packet<A>,
    cfg: &DpConfig,
    from_ifindex: u32,
    want_oif: u32,
    now: Tick,
) -> Option<Route<A>> {
    if !eligible(p, cfg) {
        return None;
    }
    let mut r = Route {
        ifindex: 0,
        next_hop: A::UNSPECIFIED,
    };
    lookup_route(ctx, p, from_ifindex, want_oif, now, &mut r).then_some(r)
}

/// [`route`]'s lookup: the cached route, or the FIB's answer (cached).
#[inline(always)]
fn lookup_route<A: Forward>(
    ctx: &TcContext,
    p: &Packet<A>,
    from_ifindex: u32,
    want_oif: u32,
    now: Tick,
    out: &mut Route<A>,
) -> bool {
    let key = RouteKey {
        daddr: p.daddr,
        from_ifindex,
    };
    // SAFETY: a lookup in this CPU's part of the map; the value is copied out.
    if let Some(r) = unsafe { A::routes().get(&key) }.copied()
        && ticks_since(now, r.at) < ROUTE_TTL
    {
        out.ifindex = r.ifindex;
        out.next_hop = r.next_hop;
        return (want_oif == 0 || r.ifindex == want_oif) && fits(ctx, p, r.mtu);
    }
    // SAFETY: a plain, zeroable C struct.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = A::AF;
    fib.l4_protocol = p.proto;
    fib.sport = p.sport;
    fib.dport = p.dport;
    A::fib_addrs(&mut fib, p.saddr, p.daddr);
    fib.ifindex = from_ifindex;
    // An input lookup from the device the packet came in through, as ip_route_input()
    // does; it refuses when forwarding is off there (BPF_FIB_LKUP_RET_FWD_DISABLED) and
    // checks the MTU, GSO aware (is_skb_forwardable() in bpf_skb_fib_lookup()).
    // SAFETY: the helper reads and writes `fib`, whose size it is given.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != FIB_SUCCESS {
        return false;
    }
    let route = Route {
        ifindex: fib.ifindex,
        next_hop: A::fib_next_hop(&fib),
    };
    let cached = CachedRoute {
        ifindex: route.ifindex,
        next_hop: route.next_hop,
        // SAFETY: on success without tot_len, the helper leaves the device's MTU here.
        mtu: u32::from(unsafe { fib.__bindgen_anon_1.mtu_result }),
        at: now,
    };
    let _ = A::routes().insert(&key, &cached, 0);
    let wanted = want_oif == 0 || route.ifindex == want_oif;
    *out = route;
    wanted
}

/// Whether `p` fits a device of MTU `mtu`, as is_skb_forwardable() judges it (a redirect
/// drops what does not; the stack would answer with an ICMP error). A GSO packet is cut
/// into segments of gso_size payload, each with the headers (skb_gso_validate_network_len()):
/// counting the longest TCP header instead of this one's would send every full-sized
/// segment of a bulk stream the slow way and its small packets the short way, which
/// reorders them.
#[inline(always)]
fn fits<A>(ctx: &TcContext, p: &Packet<A>, mtu: u32) -> bool {
    // SAFETY: reading a field of the context the kernel passed in.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        ctx.len() <= mtu + ETH_HLEN as u32
    } else {
        gso_size + (p.l4_off - ETH_HLEN) as u32 + u32::from(p.l4_hlen) <= mtu
    }
}

/// The device the packet came in on: where the kernel would route it from.
#[inline(always)]
pub fn in_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether [`send`] will take the packet: its header holds up and its TTL (hop limit)
/// survives the hop. What applies the uplink's translation early, for the short way only
/// (nat's out_of_bridge), asks before it translates: a packet then left to the kernel
/// would reach the host with the uplink's address as its source, and its sender would
/// never get the time exceeded that `traceroute`/`mtr` wait for.
#[inline(always)]
pub fn sendable<A: Forward>(ctx: &TcContext) -> bool {
    // SAFETY: ptr_at checked the byte is in the packet.
    A::header_valid(ctx) && ptr_at::<u8>(ctx, A::TTL_OFF).is_some_and(|t| unsafe { *t } > 1)
}

/// Sends the packet along `route`, counted in [`forwarded`] slot `slot`: TC_ACT_REDIRECT,
/// or TCX_NEXT (the kernel's path) when its header does not hold up or its TTL is about
/// to expire.
#[inline(always)]
pub fn send<A: Forward>(ctx: &TcContext, route: &Route<A>, slot: u32) -> i32 {
    if !A::header_valid(ctx) {
        return TCX_NEXT;
    }
    transmit(ctx, route, slot)
}

/// [`send`] for a packet that [`sendable`] already vetted: its header is not checked a
/// second time on the per-packet path.
#[inline(always)]
pub fn transmit<A: Forward>(ctx: &TcContext, route: &Route<A>, slot: u32) -> i32 {
    if A::decrement_ttl(ctx).is_err() {
        return TCX_NEXT;
    }
    let mut nh = bpf_redir_neigh {
        nh_family: u32::from(A::AF),
        __bindgen_anon_1: A::neigh(route.next_hop),
    };
    count(slot);
    // SAFETY: the helper reads `nh`, whose size it is given.
    unsafe {
        bpf_redirect_neigh(
            route.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

/// Delivers the packet, now addressed to `p.daddr`, to that container's veth (or, with
/// `flags::PEER_DELIVERY`, into the container's end of it) if it is one of ours and the
/// packet needs nothing the stack would do. None: take another way.
#[inline(always)]
pub fn to_container<A: Forward>(ctx: &TcContext, p: &Packet<A>, cfg: &DpConfig) -> Option<i32> {
    let peer = cfg.flags & flags::PEER_DELIVERY != 0;
    if !eligible(p, cfg) {
        return None;
    }
    // Pure ACKs through the bridge, unless peer delivery is asked for them too.
    if (!peer || cfg.flags & flags::PEER_ACKS == 0) && pure_ack(ctx, p) {
        return None;
    }
    // SAFETY: a lookup; the value is copied out.
    let ep = *unsafe { A::endpoints().get(&p.daddr) }?;
    if !fits(ctx, p, ep.mtu) || !A::header_valid(ctx) {
        return None;
    }
    // Ethernet and the IP header up to the TTL or hop limit (both within the first
    // IP_TTL_OFF + 1 bytes), checked before anything is written, so that a packet left to
    // the stack is as it came.
    let hdr: *mut [u8; IP_TTL_OFF + 1] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let hdr = unsafe { &mut *hdr };
    if hdr[A::TTL_OFF] <= 1 {
        return None;
    }
    hdr[..6].copy_from_slice(&ep.mac);
    hdr[6..12].copy_from_slice(&ep.gateway_mac);
    A::decrement_ttl(ctx).ok()?;
    if peer {
        count(forwarded::INTO_CONTAINER_PEER);
        // Onto the ingress of the veth's other end, in the container's netns: no transmit,
        // no backlog. skb_do_redirect() honours BPF_F_PEER only from TC ingress (here, the
        // uplink's) and scrubs the packet for the other netns.
        // SAFETY: a helper that takes plain values.
        return Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32);
    }
    count(forwarded::INTO_CONTAINER);
    // SAFETY: a helper that takes plain values; flags 0: the device's egress.
    Some(unsafe { bpf_redirect(ep.ifindex, 0) } as i32)
}

/// A TCP segment with only the ACK flag and no payload (see the module's note).
#[inline(always)]
fn pure_ack<A: Forward>(ctx: &TcContext, p: &Packet<A>) -> bool {
    if p.proto != IPPROTO_TCP || p.tcp_flags != tcp_flags::ACK {
        return false;
    }
    // The IP length, not the frame's: short frames may carry Ethernet padding.
    A::ip_len(ctx).is_some_and(|len| len == p.l4_off - ETH_HLEN + usize::from(p.l4_hlen))
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = FORWARDED.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *c += 1 };
    }
}
