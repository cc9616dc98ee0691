//! ICMP errors about translated flows: destination unreachable (with "fragmentation needed",
//! which path MTU discovery depends on), time exceeded, parameter problem.
//!
//! An error quotes the header of the packet it is about as that packet was on the wire,
//! translated. For the end of the flow on our side to match it to its socket, the quote,
//! and the error's own address when it is the translated one, are translated back, as
//! nf_nat_icmp_reply_translation() does for iptables. The quote's IP checksum and the
//! ICMP checksum (which covers the quote, and has no pseudo-header) are updated; the
//! quoted TCP/UDP checksum is left as it is, as receivers do not check it (tcp_v4_err(),
//! __udp4_lib_err() read the ports only).

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{CtKey, DpConfig, DropReason, Side};

use crate::addr::{published, subnet_of};
use crate::conntrack::{self, Probe, now};
use crate::csum::{set_addr, write};
use crate::metrics::drop;
use crate::nat_port::{Masquerade, masquerade_port};
use crate::parse::{Frag, IcmpError, Packet, QUOTE_OFF, quote, read};

/// An ICMP error `outer` met on the uplink at `stage`: ingress (dst stage) for errors from
/// outside, egress (src stage) for errors going out. Untouched unless it quotes a flow
/// netplane translated.
#[inline(always)]
pub fn translate(ctx: &TcContext, outer: Packet, cfg: &DpConfig, stage: Side) -> i32 {
    let from_container = stage == Side::Src && subnet_of(outer.saddr).is_some();
    let verdict = match (quote(ctx, outer), stage) {
        (Some(mut e), Side::Dst) => return from_outside(ctx, &mut e, cfg),
        (Some(mut e), Side::Src) => to_outside(ctx, &mut e, cfg),
        (None, _) => Untranslated,
    };
    match verdict {
        Translated(v) => v,
        // An error from a container about no flow of ours (or quoting what netplane does
        // not translate) would leave with the container's address: nf_conntrack calls it
        // INVALID and lets it out; here it stays in.
        Untranslated if from_container => drop(DropReason::Untranslatable),
        Untranslated => TCX_NEXT,
    }
}

/// What [`to_outside`] did: the verdict of a translation, or nothing.
enum Outgoing {
    Translated(i32),
    Untranslated,
}
use Outgoing::{Translated, Untranslated};

/// Uplink ingress: an error from outside about a packet that left translated, a
/// masqueraded flow's or a published port's reply. The quote's source becomes the
/// container's again.
#[inline(always)]
fn from_outside(ctx: &TcContext, e: &mut IcmpError, cfg: &DpConfig) -> i32 {
    let q = &e.quote;
    let now = now();
    // Masquerade: the quote's reverse is the tuple of the flow's replies, its key.
    let replies = CtKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto, Side::Dst);
    let (addr, port) = if let Some(entry) = conntrack::lookup(&replies, cfg, now, 0) {
        (entry.addr, entry.port)
    } else if let Some(b) = published(q.saddr, q.sport, q.proto)
        && let Probe::Mine(_) = conntrack::probe(
            &CtKey::new(b.addr, q.daddr, b.port, q.dport, q.proto, Side::Src),
            Some((q.saddr, q.sport)),
            cfg,
            now,
            0,
        )
    {
        (b.addr, b.port)
    } else {
        return TCX_NEXT;
    };
    let outer = (e.outer.daddr == q.saddr).then_some(Side::Dst);
    write_back(ctx, e, Side::Src, addr, port, outer)
}

/// Uplink egress: an error going out, from a container or from the host itself, about a
/// packet that came in translated, a published port's or a masqueraded flow's reply. The
/// quote's destination becomes the address the peer sent to.
#[inline(always)]
fn to_outside(ctx: &TcContext, e: &mut IcmpError, cfg: &DpConfig) -> Outgoing {
    let q = &e.quote;
    let now = now();
    // A published port: the quote's reverse is the tuple of the flow's replies.
    let replies = CtKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto, Side::Src);
    let (addr, port) = if let Some(entry) = conntrack::lookup(&replies, cfg, now, 0) {
        (entry.addr, entry.port)
    } else if subnet_of(q.daddr).is_some() {
        // A masqueraded flow: found as its own packets find it.
        let flow = Packet {
            saddr: q.daddr,
            daddr: q.saddr,
            sport: q.dport,
            dport: q.sport,
            proto: q.proto,
            l4_off: 0,
            frag: Frag::Whole,
            id: 0,
            tcp_flags: 0,
            l4_hlen: 0,
        };
        match masquerade_port(&flow, cfg, now) {
            Masquerade::Port(port) => (cfg.uplink_addr, port),
            Masquerade::None => return Untranslated,
        }
    } else {
        return Untranslated;
    };
    let outer = (e.outer.saddr == q.daddr).then_some(Side::Src);
    // An error about the flow from another container than the flow's own: its address
    // would leave as it is.
    if outer.is_none() && subnet_of(e.outer.saddr).is_some() {
        return Untranslated;
    }
    Translated(write_back(ctx, e, Side::Dst, addr, port, outer))
}

/// Writes `addr:port` as the quote's `side`, and `addr` as the error's own `outer` side.
#[inline(always)]
fn write_back(
    ctx: &TcContext,
    e: &mut IcmpError,
    side: Side,
    addr: u32,
    port: u16,
    outer: Option<Side>,
) -> i32 {
    match rewrite_quote(ctx, e, side, addr, port).and_then(|()| match outer {
        Some(s) => set_addr(ctx, &mut e.outer, s, addr).map_err(|_| ()),
        None => Ok(()),
    }) {
        Ok(()) => TCX_NEXT,
        Err(()) => drop(DropReason::RewriteFailed),
    }
}

#[inline(always)]
fn rewrite_quote(
    ctx: &TcContext,
    e: &IcmpError,
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
