//! ICMP errors about translated flows: destination unreachable (with "fragmentation needed",
//! which path MTU discovery depends on), time exceeded, parameter problem.
//!
//! An error quotes the header of the packet it is about as that packet was on the wire,
//! translated. For the end of the flow on our side to match it to its socket, the quote,
//! and the error's own address when it is the translated one, are translated back, as
//! nf_nat_icmp_reply_translation() does for iptables. The quote's IP checksum and the
//! ICMP checksum (which covers the quote, and has no pseudo-header) are updated; the
//! quoted TCP/UDP/ICMP checksum is left as it is, as receivers do not check it
//! (tcp_v4_err(), __udp4_lib_err() read the ports only, ping_err() the identifier). An
//! ICMP query's identifier is its port, as for the query itself.
//!
//! An error from outside straight to a container's address is let in as the container
//! network's gateway mode says (crate::access): in a `routed` network, one about a flow
//! the container opened (tracked, untranslated) or about one of its published ports.

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{CtKey, DpConfig, DropReason, Side, kind};
use netplane_common::packet::IPPROTO_ICMP;
use network_types::ip::Ipv4Hdr;

use crate::access;
use crate::addr::{never_nat, published, routed_port, subnet_of};
use crate::conntrack::{self, Probe, now};
use crate::csum::{set_addr, write};
use crate::metrics::drop;
use crate::nat_port::{Masquerade, masquerade_port};
use crate::parse::{Frag, ICMP_ID_OFF, IcmpError, Packet, QUOTE_OFF, quote, read};

/// Uplink ingress: an error from outside. Translated back when it quotes a flow netplane
/// translated; when it quotes none, and goes straight to a container, its network's
/// gateway mode decides.
#[inline(always)]
pub fn from_outside(ctx: &TcContext, outer: Packet, cfg: &DpConfig) -> i32 {
    let (saddr, daddr) = (outer.saddr, outer.daddr);
    match quote(ctx, outer) {
        Some(mut e) => about_flow_in(ctx, &mut e, cfg),
        None => access::from_outside(saddr, daddr, cfg, || false, || TCX_NEXT),
    }
}

/// Uplink egress: an error going out, from a container of a `nat` network
/// (`from_container`) or from the host. Untouched unless it quotes a flow netplane
/// translated; one from a container about no such flow is dropped.
#[inline(always)]
pub fn to_outside(ctx: &TcContext, outer: Packet, cfg: &DpConfig, from_container: bool) -> i32 {
    let verdict = match quote(ctx, outer) {
        Some(mut e) => about_flow_out(ctx, &mut e, cfg),
        None => Untranslated,
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

/// What [`about_flow_out`] did: the verdict of a translation, or nothing.
enum Outgoing {
    Translated(i32),
    Untranslated,
}
use Outgoing::{Translated, Untranslated};

/// Uplink ingress: an error from outside about a packet that left translated, a
/// masqueraded flow's or a published port's reply. The quote's source becomes the
/// container's again. About no such flow: the gateway mode of the container it goes to,
/// if any, decides.
#[inline(always)]
fn about_flow_in(ctx: &TcContext, e: &mut IcmpError, cfg: &DpConfig) -> i32 {
    let q = &e.quote;
    let now = now();
    // Masquerade: the quote's reverse is the tuple of the flow's replies, its key.
    let replies = CtKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto, Side::Dst);
    let (addr, port) = match conntrack::lookup(&replies, cfg, now, 0) {
        Some(entry) if entry.kind != kind::ROUTED => (entry.addr, entry.port),
        // A routed container's own flow (the entry says the container, the quote's
        // source): nothing was translated, nothing to write back. Only to that container:
        // to another, the error goes where the flow does not, and its gateway mode decides.
        Some(_) if e.outer.daddr == q.saddr => return TCX_NEXT,
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
                (b.addr, b.port)
            }
            _ => return about_no_flow_in(e, cfg),
        },
    };
    let outer = (e.outer.daddr == q.saddr).then_some(Side::Dst);
    write_back(ctx, e, Side::Src, addr, port, outer)
}

/// Uplink ingress: an error from outside about no flow netplane translated or tracked.
#[inline(always)]
fn about_no_flow_in(e: &IcmpError, cfg: &DpConfig) -> i32 {
    let q = &e.quote;
    let (source, sport, proto, to) = (q.saddr, q.sport, q.proto, e.outer.daddr);
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
        e.outer.saddr,
        to,
        cfg,
        || source == to && routed_port(source, sport, proto),
        || TCX_NEXT,
    )
}

/// Uplink egress: an error going out, from a container or from the host itself, about a
/// packet that came in translated, a published port's or a masqueraded flow's reply. The
/// quote's destination becomes the address the peer sent to.
#[inline(always)]
fn about_flow_out(ctx: &TcContext, e: &mut IcmpError, cfg: &DpConfig) -> Outgoing {
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
            icmp_type: 0,
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
