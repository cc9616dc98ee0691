//! The two NAT stages (see netplane_common::nat for the model).
//!
//! - dst stage, TC ingress of the uplink and of each bridge: reverse SNAT, DNAT of
//!   published ports (on the uplink for remote clients; on a bridge for containers, i.e.
//!   hairpin and cross-network, which also set up the SNAT that brings replies back through
//!   the host), and isolation between networks.
//! - src stage, TC egress of the same devices: reverse DNAT, and masquerade on the uplink.
//!
//! The source ports of SNAT come from crate::nat_port; ICMP errors about these flows go to
//! crate::icmp. Other IP protocols are masqueraded by address only. Whatever a container
//! sends that cannot be translated (malformed headers, an ICMP error about no flow, a
//! later fragment of no datagram) is dropped at the uplink with a named reason: no packet
//! leaves it with a container's source.

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{
    Backend, CtEntry, CtKey, DpConfig, DropReason, FragKey, Side, Tick, forwarded, kind, tcp_seen,
};
use netplane_common::packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::addr::{is_local, is_loopback, published, published_on_local, subnet_of};
use crate::conntrack::{self, Probe, config, key_of, now, opens_flow};
use crate::csum::{set_addr, set_port};
use crate::metrics::drop;
use crate::nat_port::{Masquerade, local_socket, masquerade_port, remember, reserve_port};
use crate::parse::{Frag, Kind, Packet, Parsed, parse};
use crate::{forward, icmp};

/// Where a program is attached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Uplink,
    Bridge,
}

#[inline(always)]
fn entry(addr: u32, port: u16, k: u8, now: Tick, tcp_flags: u8) -> CtEntry {
    CtEntry {
        addr,
        port,
        seen: tcp_seen(tcp_flags),
        kind: k,
        created: now,
        last_seen: now,
        // Recorded by conntrack::probe() from the flow's packets.
        seq: [0; 2],
    }
}

#[inline(always)]
fn frag_key(p: &Packet, stage: Side) -> FragKey {
    FragKey {
        saddr: p.saddr,
        daddr: p.daddr,
        id: p.id,
        proto: p.proto,
        stage: stage as u8,
    }
}

/// Applies a stage's translation to the packet (the side it rewrites becomes `addr:port`),
/// and records it for later fragments.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &mut Packet, stage: Side, addr: u32, port: u16, now: Tick) -> i32 {
    let fk = frag_key(p, stage);
    // The later fragments that came first went on with the old address, into the host's
    // reassembly queue: this datagram can no longer complete (see DropReason).
    if p.frag == Frag::First && stage == Side::Dst && conntrack::frag_went_ahead(&fk) {
        return drop(DropReason::FragmentReordered);
    }
    if set_port(ctx, p, stage, port)
        .and_then(|()| set_addr(ctx, p, stage, addr))
        .is_err()
    {
        return drop(DropReason::RewriteFailed);
    }
    if p.frag == Frag::First {
        conntrack::frag_record(&fk, addr, now);
    }
    TCX_NEXT
}

/// Later fragments follow their first fragment's translation at this stage; `None` when
/// no first fragment was translated here.
#[inline(always)]
fn later_fragment(ctx: &TcContext, p: &mut Packet, key: &FragKey, stage: Side) -> Option<i32> {
    let addr = conntrack::frag_lookup(key)?;
    Some(match set_addr(ctx, p, stage, addr) {
        Ok(()) => TCX_NEXT,
        Err(_) => drop(DropReason::RewriteFailed),
    })
}

/// TC ingress: the dst stage.
#[inline(always)]
pub fn dst_stage(ctx: &TcContext, hook: Hook) -> i32 {
    let Parsed { kind, mut p } = parse(ctx);
    conntrack::segment(ctx, &p);
    let Some(cfg) = config() else { return TCX_NEXT };
    match kind {
        Kind::Nat => {}
        Kind::IcmpError if hook == Hook::Uplink => return icmp::translate(ctx, p, cfg, Side::Dst),
        Kind::Generic if hook == Hook::Uplink => return generic_reply(ctx, &mut p, cfg),
        // From a container, whatever it is, isolation between networks holds.
        Kind::IcmpError | Kind::Generic | Kind::Untranslatable | Kind::Malformed
            if hook == Hook::Bridge =>
        {
            return isolate(&p, cfg);
        }
        // Not ours to translate.
        _ => return TCX_NEXT,
    }
    if p.frag == Frag::Later {
        let key = frag_key(&p, Side::Dst);
        return later_fragment(ctx, &mut p, &key, Side::Dst).unwrap_or_else(|| {
            // Ahead of its first fragment, to a host address: if the first turns out to
            // belong to a translated flow, the datagram is lost, and counted there.
            if hook == Hook::Uplink && is_local(p.daddr) {
                conntrack::frag_early(&key, now());
            }
            TCX_NEXT
        });
    }
    // From a container, only what goes to a host address can need a translation (hairpin,
    // and the replies of hairpin, addressed to a gateway); the rest only needs isolation.
    if hook == Hook::Bridge && !is_local(p.daddr) {
        let verdict = isolate(&p, cfg);
        if verdict != TCX_NEXT {
            return verdict;
        }
        return out_of_bridge(ctx, &mut p, cfg);
    }
    let now = now();
    if let Some(e) = conntrack::lookup(&key_of(&p, Side::Dst), cfg, now, p.tcp_flags) {
        // A connected UDP socket of this very tuple, opened after the masqueraded flow
        // took it (the kernel's port choice knows nothing of NAT), keeps its traffic: the
        // stack delivers to it, as without NAT. Not asked for TCP, where it would cost a
        // socket lookup per packet for nothing: the peer has one connection per 4-tuple,
        // so a later local connection with the tuple of a live flow cannot open anyway
        // (its SYN meets a challenge ACK, which the container's stack ignores), and opens
        // once the flow is gone.
        if hook == Hook::Uplink
            && p.proto == IPPROTO_UDP
            && e.kind == kind::MASQUERADE
            && local_socket(ctx, p.proto, p.daddr, p.dport, p.saddr, p.sport, true)
        {
            return TCX_NEXT;
        }
        return forward_after(ctx, &mut p, cfg, hook, Side::Dst, e.addr, e.port, now);
    }
    // On a bridge the destination is known to be local already (checked above). ICMP
    // echo is never published.
    let backend = match (hook, p.proto) {
        (_, IPPROTO_ICMP) => None,
        (Hook::Uplink, _) => published(p.daddr, p.dport, p.proto),
        (Hook::Bridge, _) => published_on_local(p.daddr, p.dport, p.proto),
    };
    if let Some(b) = backend {
        // Ports published on 127.0.0.1 are for host processes (the cgroup programs); a
        // packet that arrives on a device with that destination is an attack (moby#45610).
        if is_loopback(p.daddr) {
            return drop(DropReason::LoopbackGuard);
        }
        // A flow to a published port from outside has one entry, its replies'; the
        // original direction is translated by the published-ports map, and finds its flow
        // through the reply's tuple, which the backend makes known.
        let this_flow = Some((p.daddr, p.dport));
        if hook == Hook::Uplink
            && let Probe::Mine(_) = conntrack::probe(
                &published_reply_key(&p, &b),
                this_flow,
                cfg,
                now,
                p.tcp_flags,
            )
        {
            return forward_after(ctx, &mut p, cfg, hook, Side::Dst, b.addr, b.port, now);
        }
        if !opens_flow(&p) {
            return TCX_NEXT;
        }
        let created = match hook {
            Hook::Uplink => new_published_flow(&p, &b, cfg, now),
            Hook::Bridge => new_hairpin_flow(ctx, &p, &b, cfg, now),
        };
        if let Err(reason) = created {
            return drop(reason);
        }
        return forward_after(ctx, &mut p, cfg, hook, Side::Dst, b.addr, b.port, now);
    }
    TCX_NEXT
}

/// Translates, then, for packets that came in through the uplink (destined to a
/// container now), takes the short way to it (see crate::forward).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_after(
    ctx: &TcContext,
    p: &mut Packet,
    cfg: &DpConfig,
    hook: Hook,
    stage: Side,
    addr: u32,
    port: u16,
    now: Tick,
) -> i32 {
    let verdict = rewrite(ctx, p, stage, addr, port, now);
    if verdict != TCX_NEXT || hook != Hook::Uplink {
        return verdict;
    }
    if let Some(verdict) = forward::to_container(ctx, p, cfg) {
        return verdict;
    }
    match forward::route(ctx, p, cfg, 0, now) {
        Some(r) => forward::send(ctx, &r, forwarded::INTO_CONTAINER),
        None => TCX_NEXT,
    }
}

/// Isolation between networks: a container's packet straight to another network's
/// container is dropped.
#[inline(always)]
fn isolate(p: &Packet, cfg: &DpConfig) -> i32 {
    if cfg.networks > 1
        && let (Some(from), Some(to)) = (subnet_of(p.saddr), subnet_of(p.daddr))
        && from.id != to.id
    {
        return drop(DropReason::Isolation);
    }
    TCX_NEXT
}

/// The key of the replies of another protocol's flow masqueraded to `uplink` (no ports).
#[inline(always)]
fn generic_key(peer: u32, uplink: u32, proto: u8) -> CtKey {
    CtKey::new(peer, uplink, 0, 0, proto, Side::Dst)
}

/// Uplink ingress, another protocol: the reply of a masqueraded flow goes back to its
/// container, by address.
#[inline(always)]
fn generic_reply(ctx: &TcContext, p: &mut Packet, cfg: &DpConfig) -> i32 {
    // Only what is addressed to the translation address can be a reply: the rest (a
    // router's VRRP, another host's GRE) costs no lookup.
    if p.daddr != cfg.uplink_addr {
        return TCX_NEXT;
    }
    let now = now();
    let Some(e) = conntrack::lookup(&generic_key(p.saddr, p.daddr, p.proto), cfg, now, 0) else {
        return TCX_NEXT;
    };
    match set_addr(ctx, p, Side::Dst, e.addr) {
        Ok(()) => TCX_NEXT,
        Err(_) => drop(DropReason::RewriteFailed),
    }
}

/// The protocols whose checksum covers the addresses, beyond TCP and UDP (RFC 4340 §9.1,
/// RFC 3828 §3.2).
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_UDPLITE: u8 = 136;

/// Uplink egress, another protocol from a container: masquerade by address only, as
/// netfilter's generic protocol NAT (nf_nat_l4proto_unique_tuple() has no port to change
/// for it). One container at a time talks a protocol to a peer; another's packet is
/// untranslatable until that flow expires. Every fragment carries the addresses: none
/// needs its first.
#[inline(always)]
fn generic_masquerade(ctx: &TcContext, p: &mut Packet, cfg: &DpConfig) -> i32 {
    // DCCP and UDP-Lite checksum a pseudo-header with the addresses, as TCP and UDP do:
    // rewritten by address alone they would leave with a wrong checksum, so they are
    // refused, counted, rather than sent corrupt (netfilter translates them by port).
    if matches!(p.proto, IPPROTO_DCCP | IPPROTO_UDPLITE) {
        return drop(DropReason::Untranslatable);
    }
    let now = now();
    let key = generic_key(p.daddr, cfg.uplink_addr, p.proto);
    let mine = match conntrack::probe(&key, Some((p.saddr, 0)), cfg, now, 0) {
        Probe::Mine(_) => true,
        Probe::Free => {
            let e = entry(p.saddr, 0, kind::MASQUERADE, now, 0);
            conntrack::insert_new(&key, &e, cfg, now, false)
        }
        Probe::Other => false,
    };
    if !mine {
        return drop(DropReason::Untranslatable);
    }
    match set_addr(ctx, p, Side::Src, cfg.uplink_addr) {
        Ok(()) => TCX_NEXT,
        Err(_) => drop(DropReason::RewriteFailed),
    }
}

/// A container's packet to a non-local address, leaving the bridge for the host's stack.
/// A packet of a flow the uplink's src stage translates (masquerade, the replies of a
/// published port) gets that translation here instead, and goes straight out of the
/// uplink; a new flow, or one routed elsewhere, takes the kernel's path.
#[inline(always)]
fn out_of_bridge(ctx: &TcContext, p: &mut Packet, cfg: &DpConfig) -> i32 {
    if !forward::eligible(p, cfg) {
        return TCX_NEXT;
    }
    let now = now();
    let (addr, port) =
        if let Some(e) = conntrack::lookup(&key_of(p, Side::Src), cfg, now, p.tcp_flags) {
            (e.addr, e.port)
        } else if let Masquerade::Port(port) = masquerade_port(p, cfg, now) {
            (cfg.uplink_addr, port)
        } else {
            return TCX_NEXT;
        };
    // Route first: the translation belongs to the uplink's egress, so it may be applied
    // here only to a packet that is sure to leave through the uplink.
    let Some(route) = forward::route(ctx, p, cfg, cfg.uplink_ifindex, now) else {
        return TCX_NEXT;
    };
    let verdict = rewrite(ctx, p, Side::Src, addr, port, now);
    if verdict != TCX_NEXT {
        return verdict;
    }
    forward::send(ctx, &route, forwarded::OUT_OF_CONTAINER)
}

/// TC egress: the src stage.
#[inline(always)]
pub fn src_stage(ctx: &TcContext, hook: Hook) -> i32 {
    let Some(cfg) = config() else { return TCX_NEXT };
    if hook == Hook::Bridge {
        // Only hairpinned flows (which entered through a bridge) are translated here;
        // packets from the uplink or from host processes go on without a parse.
        // SAFETY: reading a field of the context the kernel passed in.
        let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
        if iif == 0 || iif == cfg.uplink_ifindex {
            return TCX_NEXT;
        }
    }
    let Parsed { kind, mut p } = parse(ctx);
    conntrack::segment(ctx, &p);
    // What leaves the uplink never has a container's source: it is translated here, or
    // dropped (Untranslatable, Malformed, FragmentUnknown), even where nf_conntrack would
    // call it INVALID and let it out.
    let from_container = |p: &Packet| hook == Hook::Uplink && subnet_of(p.saddr).is_some();
    match kind {
        Kind::Nat => {}
        Kind::IcmpError if hook == Hook::Uplink => return icmp::translate(ctx, p, cfg, Side::Src),
        Kind::Generic if from_container(&p) => return generic_masquerade(ctx, &mut p, cfg),
        Kind::Untranslatable if from_container(&p) => return drop(DropReason::Untranslatable),
        Kind::Malformed if from_container(&p) => return drop(DropReason::Malformed),
        _ => return TCX_NEXT,
    }
    if p.frag == Frag::Later {
        let key = frag_key(&p, Side::Src);
        return match later_fragment(ctx, &mut p, &key, Side::Src) {
            Some(verdict) => verdict,
            None if from_container(&p) => drop(DropReason::FragmentUnknown),
            None => TCX_NEXT,
        };
    }
    // The uplink's own address is never a source this stage rewrites (those are container
    // addresses), and it is what packets the bridge already translated carry.
    if hook == Hook::Uplink && p.saddr == cfg.uplink_addr {
        return TCX_NEXT;
    }
    let now = now();
    if let Some(e) = conntrack::lookup(&key_of(&p, Side::Src), cfg, now, p.tcp_flags) {
        return rewrite(ctx, &mut p, Side::Src, e.addr, e.port, now);
    }
    // Masquerade, as iptables' `-s SUBNET ! -o BRIDGE`: whatever the destination.
    if from_container(&p) {
        let port = match masquerade_port(&p, cfg, now) {
            Masquerade::Port(port) => Ok(port),
            // Never let a container address out: without a flow there is no translation.
            Masquerade::None if !opens_flow(&p) => Err(DropReason::TcpNoSynNewFlow),
            Masquerade::None => new_masquerade_flow(ctx, &p, cfg, now),
        };
        return match port {
            Ok(port) => rewrite(ctx, &mut p, Side::Src, cfg.uplink_addr, port, now),
            Err(reason) => drop(reason),
        };
    }
    TCX_NEXT
}

/// Masquerade: container → outside, SNAT to the uplink address. The flow's one entry is
/// its replies', which reserves the port (see [`masquerade_port`]).
#[inline(always)]
fn new_masquerade_flow(
    ctx: &TcContext,
    p: &Packet,
    cfg: &DpConfig,
    now: Tick,
) -> Result<u16, DropReason> {
    let e = entry(p.saddr, p.sport, kind::MASQUERADE, now, p.tcp_flags);
    let port = reserve_port(ctx, p, cfg.uplink_addr, p.daddr, p.dport, &e, cfg, now)?;
    remember(p, port);
    Ok(port)
}

/// The conntrack key of the replies of a flow from outside to published port `b`: the
/// backend's tuple at the uplink's src stage.
#[inline(always)]
fn published_reply_key(p: &Packet, b: &Backend) -> CtKey {
    CtKey::new(b.addr, p.saddr, b.port, p.sport, p.proto, Side::Src)
}

/// A published port reached from outside: the entry that turns the replies' source back
/// into the published address, and that tracks the flow for both directions.
#[inline(always)]
fn new_published_flow(
    p: &Packet,
    b: &Backend,
    cfg: &DpConfig,
    now: Tick,
) -> Result<(), DropReason> {
    let reopen = p.proto == IPPROTO_TCP;
    let e = entry(p.daddr, p.dport, kind::PUBLISHED, now, p.tcp_flags);
    if !conntrack::insert_flow(&[(published_reply_key(p, b), e)], None, cfg, now, reopen) {
        return Err(DropReason::CtInsertFailed);
    }
    Ok(())
}

/// A published port reached from a container (its own, a peer's, or one on another
/// network): DNAT here, and SNAT to the backend network's gateway at the bridge's egress so
/// that the replies come back through the host. Four entries.
#[inline(always)]
fn new_hairpin_flow(
    ctx: &TcContext,
    p: &Packet,
    b: &Backend,
    cfg: &DpConfig,
    now: Tick,
) -> Result<(), DropReason> {
    let reopen = p.proto == IPPROTO_TCP;
    let g = b.gateway;
    // The replies' dst stage: backend → gateway:P becomes backend → client.
    let reply_dst = entry(p.saddr, p.sport, kind::HAIRPIN | kind::REPLY, now, 0);
    let port = reserve_port(ctx, p, g, b.addr, b.port, &reply_dst, cfg, now)?;
    let reply_dst_key = CtKey::new(b.addr, g, b.port, port, p.proto, Side::Dst);
    // The replies' src stage: backend → client becomes published address → client.
    let reply_src_key = CtKey::new(b.addr, p.saddr, b.port, p.sport, p.proto, Side::Src);
    let reply_src = entry(p.daddr, p.dport, kind::HAIRPIN | kind::REPLY, now, 0);
    // The original direction's src stage: client → backend becomes gateway:P → backend.
    let orig_src_key = CtKey::new(p.saddr, b.addr, p.sport, b.port, p.proto, Side::Src);
    let orig_src = entry(g, port, kind::HAIRPIN, now, p.tcp_flags);
    // The original direction's dst stage.
    let orig_dst = entry(b.addr, b.port, kind::HAIRPIN, now, p.tcp_flags);
    let orig_dst_key = key_of(p, Side::Dst);
    // The original direction's dst stage goes last: it is what makes the flow known.
    let entries = [
        (reply_src_key, reply_src),
        (orig_src_key, orig_src),
        (orig_dst_key, orig_dst),
    ];
    if !conntrack::insert_flow(&entries, Some(&reply_dst_key), cfg, now, reopen) {
        return Err(DropReason::CtInsertFailed);
    }
    Ok(())
}
