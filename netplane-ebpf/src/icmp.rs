//! ICMP errors about translated flows: destination unreachable (with "fragmentation needed",
//! which path MTU discovery depends on), time exceeded, parameter problem.
//!
//! An error quotes the header of the packet it is about as that packet was on the wire,
//! translated. For the end of the flow on our side to match it to its socket, the quote,
//! and the error's own address when it is the translated one, are translated back, as
//! nf_nat_icmp_reply_translation() does for iptables. The quote's IPv4 checksum and the
//! ICMP checksum (which covers the quote; ICMPv6's also a pseudo-header, which the outer
//! address's rewrite updates) are updated; the quoted TCP/UDP/ICMP checksum is left as it
//! is, as receivers do not check it (tcp_v4_err(), __udp4_lib_err() read the ports only,
//! ping_err() the identifier). An ICMP query's identifier is its port, as for the query
//! itself. Over IPv6, Packet Too Big is the error that matters most: routers never
//! fragment, so path MTU discovery lives on it.
//!
//! An error from outside straight to a container's address is let in as the container
//! network's gateway mode says (crate::access): in a `routed` network, one about a flow
//! the container opened (tracked, untranslated) or about one of its published ports.

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::programs::TcContext;
use netplane_common::addr::{Addr, Ip6};
use netplane_common::nat::{CtKey, DpConfig, DropReason, Side, kind};
use netplane_common::observe::{Dir, Hook, path_slot};
use netplane_common::packet::IPPROTO_ICMP;
use netplane_common::packet6::{IPPROTO_ICMPV6, IPV6_HLEN};
use network_types::ip::Ipv4Hdr;

use crate::access::{self, Source};
use crate::addr::{never_nat, published, routed_port, subnet_of};
use crate::conntrack::{self, Probe, now};
use crate::csum::{diff128, write, write_addr6};
use crate::family::Family;
use crate::metrics::{drop, translated};
use crate::nat_port::{Masquerade, masquerade_port};
use crate::parse::{ICMP_ID_OFF, Packet, QUOTE_OFF, Quote, read};

/// How the quote of an ICMP error is rewritten, per family.
pub trait Quoting: Family {
    /// Writes `addr:port` as the `side` of the quoted packet, with the error's checksum
    /// (and IPv4's quoted header checksum) updated.
    fn rewrite_quote(
        ctx: &TcContext,
        e: &IcmpError<'_, Self>,
        side: Side,
        addr: Self,
        port: u16,
    ) -> Result<(), ()>;
}

/// Uplink ingress: an error from outside. Translated back when it quotes a flow netplane
/// translated; when it quotes none, and goes straight to a container, its network's
/// gateway mode decides. A BPF-to-BPF call for either family: errors are rare, and their
/// translation's locals stay off the stages' frames.
#[inline(never)]
pub fn from_outside<A: Quoting>(ctx: &TcContext, outer: &mut Packet<A>, cfg: &DpConfig) -> i32 {
    let mut q = Quote::none();
    if !A::quote(ctx, outer, &mut q) {
        return access::from_outside(outer.saddr, outer.daddr, cfg, || false, || TCX_NEXT);
    }
    let mut t = Target::none();
    let found = about_flow_in(outer, &q, cfg, &mut t);
    if found == NO_FLOW {
        return about_no_flow_in(outer, &q, cfg);
    }
    if found == UNTRANSLATED {
        return TCX_NEXT;
    }
    let at = path_slot(A::BITS == 128, Hook::Uplink, Dir::Ingress);
    write_back(ctx, &mut IcmpError { outer, quote: &q }, &t, at)
}

/// Uplink egress: an error going out, from a container of a `nat` network or from the
/// host. Untouched unless it quotes a flow netplane translated; one from a container
/// about no such flow is dropped. A BPF-to-BPF call, as [`from_outside`].
#[inline(never)]
pub fn to_outside<A: Quoting>(ctx: &TcContext, outer: &mut Packet<A>, cfg: &DpConfig) -> i32 {
    let from_container = match access::source(outer, cfg) {
        Source::Isolated => return drop(DropReason::IsolatedNetwork),
        Source::Nat | Source::Unprotected => true,
        Source::Host => false,
        Source::Routed | Source::Peer => return TCX_NEXT,
    };
    let mut q = Quote::none();
    let mut t = Target::none();
    if A::quote(ctx, outer, &mut q) && about_flow_out(outer, &q, cfg, &mut t) == FOUND {
        let at = path_slot(A::BITS == 128, Hook::Uplink, Dir::Egress);
        return write_back(ctx, &mut IcmpError { outer, quote: &q }, &t, at);
    }
    // An error from a container about no flow of ours (or quoting what netplane does
    // not translate) would leave with the container's address: nf_conntrack calls it
    // INVALID and lets it out; here it stays in.
    if from_container {
        drop(DropReason::Untranslatable)
    } else {
        TCX_NEXT
    }
}

/// What an error's translation writes: `addr:port` as the quote's `side`, and `addr` as
/// the error's own `outer` side when it has one (`outer` 1: the source, 2: the
/// destination, 0: none). Filled by the lookups, written by [`write_back`].
pub struct Target<A> {
    addr: A,
    port: u16,
    side: Side,
    outer: u8,
}

impl<A: Addr> Target<A> {
    #[inline(always)]
    fn none() -> Self {
        Target {
            addr: A::UNSPECIFIED,
            port: 0,
            side: Side::Src,
            outer: 0,
        }
    }
}

impl<A: Addr> Quote<A> {
    #[inline(always)]
    fn none() -> Self {
        Quote {
            saddr: A::UNSPECIFIED,
            daddr: A::UNSPECIFIED,
            sport: 0,
            dport: 0,
            proto: 0,
            ext: 0,
            _pad: [0; 2],
        }
    }
}

/// What the lookups of an error's flow found.
const NO_FLOW: u32 = 0;
const FOUND: u32 = 1;
/// A flow that was not translated: nothing to write.
const UNTRANSLATED: u32 = 2;

#[inline(always)]
const fn outer_side(side: Option<Side>) -> u8 {
    match side {
        None => 0,
        Some(Side::Src) => 1,
        Some(Side::Dst) => 2,
    }
}

/// Uplink ingress: an error from outside about a packet that left translated, a
/// masqueraded flow's or a published port's reply. The quote's source becomes the
/// container's again.
#[inline(always)]
fn about_flow_in<A: Quoting>(
    outer: &Packet<A>,
    q: &Quote<A>,
    cfg: &DpConfig,
    t: &mut Target<A>,
) -> u32 {
    let now = now();
    // Masquerade: the quote's reverse is the tuple of the flow's replies, its key.
    let replies = CtKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto, Side::Dst);
    match conntrack::lookup(&replies, cfg, now, 0) {
        Some(entry) if entry.kind != kind::ROUTED => {
            t.addr = entry.addr;
            t.port = entry.port;
        }
        // A routed container's own flow (the entry says the container, the quote's
        // source): nothing was translated, nothing to write back. Only to that
        // container: to another, the error goes where the flow does not, and its
        // gateway mode decides.
        Some(_) if outer.daddr == q.saddr => return UNTRANSLATED,
        _ => match published(q.saddr, q.sport, q.proto) {
            Some(b)
                if matches!(
                    conntrack::probe(
                        &CtKey::new(b.addr, q.daddr, b.port, q.dport, q.proto, Side::Src),
                        Some((q.saddr, q.sport)),
                        cfg,
                        now,
                        0,
                    ),
                    Probe::Mine(_)
                ) =>
            {
                t.addr = b.addr;
                t.port = b.port;
            }
            _ => return NO_FLOW,
        },
    }
    t.side = Side::Src;
    t.outer = outer_side((outer.daddr == q.saddr).then_some(Side::Dst));
    FOUND
}

/// Uplink ingress: an error from outside about no flow netplane translated or tracked.
#[inline(always)]
fn about_no_flow_in<A: Quoting>(outer: &Packet<A>, q: &Quote<A>, cfg: &DpConfig) -> i32 {
    let (source, sport, proto, to) = (q.saddr, q.sport, q.proto, outer.daddr);
    // About what the container sent to a never-NAT prefix (another host's containers,
    // whose flows are not tracked): path MTU discovery between the hosts, from the peer
    // host's or a router's address, which is in no prefix. iptables lets it in as
    // RELATED; only an `isolated` network refuses it.
    if source == to && never_nat(q.daddr, cfg) {
        return access::unless_isolated(to);
    }
    // About a packet a routed container sent from a published port (path MTU discovery
    // of the flows that reach it).
    access::from_outside(
        outer.saddr,
        to,
        cfg,
        || source == to && routed_port(source, sport, proto),
        || TCX_NEXT,
    )
}

/// Uplink egress: an error going out, from a container or from the host itself, about
/// a packet that came in translated, a published port's or a masqueraded flow's reply.
/// The quote's destination becomes the address the peer sent to.
#[inline(always)]
fn about_flow_out<A: Quoting>(
    outer: &Packet<A>,
    q: &Quote<A>,
    cfg: &DpConfig,
    t: &mut Target<A>,
) -> u32 {
    let now = now();
    // A published port: the quote's reverse is the tuple of the flow's replies.
    let replies = CtKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto, Side::Src);
    if let Some(entry) = conntrack::lookup(&replies, cfg, now, 0) {
        t.addr = entry.addr;
        t.port = entry.port;
    } else if subnet_of(q.daddr).is_some() {
        // A masqueraded flow: found as its own packets find it.
        let flow = Packet {
            saddr: q.daddr,
            daddr: q.saddr,
            sport: q.dport,
            dport: q.sport,
            proto: q.proto,
            ..Packet::empty()
        };
        match masquerade_port(&flow, cfg, now) {
            Masquerade::Port(port) => {
                t.addr = A::uplink(cfg);
                t.port = port;
            }
            Masquerade::None => return NO_FLOW,
        }
    } else {
        return NO_FLOW;
    }
    let outer_src = outer.saddr == q.daddr;
    // An error about the flow from another container than the flow's own: its address
    // would leave as it is.
    if !outer_src && subnet_of(outer.saddr).is_some() {
        return NO_FLOW;
    }
    t.side = Side::Dst;
    t.outer = outer_side(outer_src.then_some(Side::Src));
    FOUND
}

/// An ICMP error: the packet, and what it quotes.
pub struct IcmpError<'a, A> {
    pub outer: &'a mut Packet<A>,
    pub quote: &'a Quote<A>,
}

/// Writes `t` into the error: the quote's side, and the error's own.
#[inline(always)]
fn write_back<A: Quoting>(ctx: &TcContext, e: &mut IcmpError<A>, t: &Target<A>, path: u32) -> i32 {
    let outer = match t.outer {
        1 => Some(Side::Src),
        2 => Some(Side::Dst),
        _ => None,
    };
    match A::rewrite_quote(ctx, e, t.side, t.addr, t.port).and_then(|()| match outer {
        Some(s) => A::set_addr(ctx, e.outer, s, t.addr).map_err(|_| ()),
        None => Ok(()),
    }) {
        Ok(()) => {
            translated(ctx, path);
            TCX_NEXT
        }
        Err(()) => drop(DropReason::RewriteFailed),
    }
}

impl Quoting for u32 {
    #[inline(always)]
    fn rewrite_quote(
        ctx: &TcContext,
        e: &IcmpError<'_, u32>,
        side: Side,
        addr: u32,
        port: u16,
    ) -> Result<(), ()> {
        let icmp_csum = e.outer.l4_off + 2;
        let ip = e.outer.l4_off + QUOTE_OFF;
        let (addr_off, old_addr, port_off, old_port) = match side {
            Side::Src => (ip + 12, e.quote.saddr, ip + 20, e.quote.sport),
            Side::Dst => (ip + 16, e.quote.daddr, ip + 22, e.quote.dport),
        };
        // An ICMP query's port is its identifier, on either side (see parse::quote). The
        // quoted ICMP checksum is left as it is, as the quoted TCP/UDP one is (ping_err()
        // reads the identifier only).
        let port_off = if e.quote.proto == IPPROTO_ICMP {
            ip + Ipv4Hdr::LEN + ICMP_ID_OFF
        } else {
            port_off
        };
        let old_ip_csum: u16 = read(ctx, ip + 10)?;
        ctx.l3_csum_replace(ip + 10, old_addr as u64, addr as u64, 4)
            .map_err(|_| ())?;
        let new_ip_csum: u16 = read(ctx, ip + 10)?;
        write(ctx, addr_off, addr).map_err(|_| ())?;
        write(ctx, port_off, port).map_err(|_| ())?;
        // Everything written lies inside the ICMP message; its checksum has no pseudo-header.
        for (old, new, size) in [
            (old_addr, addr, 4),
            (u32::from(old_port), u32::from(port), 2),
            (u32::from(old_ip_csum), u32::from(new_ip_csum), 2),
        ] {
            ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, size)
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

impl Quoting for Ip6 {
    /// ICMPv6 has no quoted header checksum to fix, but its own checksum covers the quote
    /// (and a pseudo-header, which crate::csum's set_addr6 keeps right for the outer
    /// addresses).
    #[inline(always)]
    fn rewrite_quote(
        ctx: &TcContext,
        e: &IcmpError<'_, Ip6>,
        side: Side,
        addr: Ip6,
        port: u16,
    ) -> Result<(), ()> {
        let icmp_csum = e.outer.l4_off + 2;
        let ip = e.outer.l4_off + QUOTE_OFF;
        let l4 = ip + IPV6_HLEN + usize::from(e.quote.ext);
        let (addr_off, old_addr, port_off, old_port) = match side {
            Side::Src => (ip + 8, e.quote.saddr, l4, e.quote.sport),
            Side::Dst => (ip + 24, e.quote.daddr, l4 + 2, e.quote.dport),
        };
        let port_off = if e.quote.proto == IPPROTO_ICMPV6 {
            l4 + ICMP_ID_OFF
        } else {
            port_off
        };
        let d = diff128(&old_addr, &addr).map_err(|_| ())?;
        write_addr6(ctx, addr_off, addr).map_err(|_| ())?;
        write(ctx, port_off, port).map_err(|_| ())?;
        ctx.l4_csum_replace(icmp_csum, 0, d, 0).map_err(|_| ())?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_port), u64::from(port), 2)
            .map_err(|_| ())
    }
}
