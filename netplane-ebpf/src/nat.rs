//! The two NAT stages (see netplane_common::nat for the model).
//!
//! - dst stage, TC ingress of the uplink and of each container network (its bridge, or
//!   each host veth of a `ptp` network): reverse SNAT, DNAT of published ports (on the
//!   uplink for remote clients; on a network for containers, i.e. hairpin and
//!   cross-network, which also set up the SNAT that brings replies back through the host),
//!   isolation between networks, and the gateway modes' rules for what comes straight
//!   from the outside (crate::access).
//! - src stage, TC egress of the same devices: reverse DNAT, and on the uplink masquerade,
//!   or, for a `routed` network's containers, the tracking of the flows they open.
//!
//! Nothing between the local containers and a never-NAT prefix (`[[routes]]`) is
//! translated, either way.
//!
//! The source ports of SNAT come from crate::nat_port; ICMP errors about these flows go to
//! crate::icmp. Other IP protocols are masqueraded by address only. Whatever a container
//! sends that cannot be translated (malformed headers, an ICMP error about no flow, a
//! later fragment of no datagram) is dropped at the uplink with a named reason: no packet
//! leaves it with a container's source.

use aya_ebpf::bindings::TC_ACT_SHOT;
use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{
    Backend, CtEntry, CtKey, DpConfig, DropReason, FragKey, Side, Tick, flags, forwarded, kind,
    tcp_seen,
};
use netplane_common::observe::{self, Dir, monitor};
use netplane_common::packet::{IPPROTO_TCP, IPPROTO_UDP, tcp_flags};

use crate::access::{self, Onward, Source};
use crate::addr::{is_local, published_on_local, routed_port};
use crate::conntrack::{self, Probe, config, key_of, now, opens_flow};
use crate::csum::set_port;
use crate::family::v6_outlined;
use crate::forward::Forward;
use crate::icmp::Quoting;
use crate::metrics::{self, drop};
use crate::nat_port::{
    Masquerade, known_port, local_socket, masquerade_port, masqueraded, remember, reserve_port,
};
use crate::parse::{Frag, Kind, Packet, ether_type, ptr_at};
use crate::{events, forward, icmp};

/// A family the NAT stages translate: everything below them, for it.
pub trait Nat: Forward + Quoting {}
impl<A: Forward + Quoting> Nat for A {}

/// Where a program is attached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Uplink,
    /// A container network's device on the host: its bridge, or, on a `ptp` network, each
    /// container's host veth. The hooks see the same packets (from containers to the host,
    /// from the host to containers), except that on ptp they also see what containers of
    /// one network send each other, which a bridge switches.
    Network,
}

/// Where family `A`'s stage at `hook`, TC direction `dir`, runs: an
/// [`observe::path_slot`], which the counters and events of its packets say.
#[inline(always)]
fn path<A: Nat>(hook: Hook, dir: Dir) -> u32 {
    let hook = match hook {
        Hook::Uplink => observe::Hook::Uplink,
        Hook::Network => observe::Hook::Network,
    };
    observe::path_slot(A::BITS == 128, hook, dir)
}

/// The start of every stage that parsed a packet: while a monitor listens, the packet as
/// it arrived, for its event.
#[inline(always)]
fn start<A: Nat>(ctx: &TcContext, p: &Packet<A>, cfg: &DpConfig) {
    if cfg.monitor & monitor::ALL != 0 {
        events::begin(ctx, p);
    }
}

/// The tail of every stage that parsed a packet: counts its drop where it happened (the
/// reason is [`drop`]'s), and, while a monitor listens, writes its event.
///
/// The monitor's flag is read again here rather than kept from [`start`]: a value kept
/// across the stage is one the verifier knows as 0 on one side of `start`'s branch and
/// not 0 on the other, and it walked the whole stage twice (twice the instructions to
/// verify, twice the load time); the load is of a cache line the stage read already.
/// (events::np_event writes nothing for a packet that `start` did not note.)
#[inline(always)]
fn finish<A: Nat>(ctx: &TcContext, p: &Packet<A>, path: u32, verdict: i32) -> i32 {
    if verdict == TC_ACT_SHOT as i32 {
        let _reason = metrics::dropped(ctx, path);
        #[cfg(feature = "debug-log")]
        crate::debug::dropped(_reason, path, ctx.len());
    }
    if let Some(cfg) = config()
        && cfg.monitor & monitor::ALL != 0
    {
        events::finish(ctx, p, cfg.monitor, path, verdict);
    }
    verdict
}

#[inline(always)]
fn entry<A>(addr: A, port: u16, k: u8, now: Tick, tcp_flags: u8) -> CtEntry<A> {
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
fn frag_key<A: Copy>(p: &Packet<A>, stage: Side) -> FragKey<A> {
    FragKey {
        saddr: p.saddr,
        daddr: p.daddr,
        id: p.id,
        proto: p.proto,
        stage: stage as u8,
        _pad: [0; 2],
    }
}

/// Applies a stage's translation to the packet (the side it rewrites becomes `addr:port`),
/// records it for later fragments, and counts it at `path` (see [`path`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite<A: Nat>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    stage: Side,
    addr: A,
    port: u16,
    now: Tick,
    path: u32,
) -> i32 {
    let fk = frag_key(p, stage);
    // The later fragments that came first went on with the old address, into the host's
    // reassembly queue: this datagram can no longer complete (see DropReason).
    if p.frag == Frag::First && stage == Side::Dst && conntrack::frag_went_ahead(&fk) {
        return drop(DropReason::FragmentReordered);
    }
    // Routed and direct flows' rewrite is the identity: not a translation to count.
    let changed = match stage {
        Side::Src => p.sport != port || p.saddr != addr,
        Side::Dst => p.dport != port || p.daddr != addr,
    };
    if set_port(ctx, p, stage, port)
        .and_then(|()| A::set_addr(ctx, p, stage, addr))
        .is_err()
    {
        return drop(DropReason::RewriteFailed);
    }
    if p.frag == Frag::First {
        conntrack::frag_record(&fk, addr, now);
    }
    if changed {
        metrics::translated(ctx, path);
    }
    TCX_NEXT
}

/// Later fragments follow their first fragment's translation at this stage; `None` when
/// no first fragment was translated here. Counted at `path`, as [`rewrite`].
#[inline(always)]
fn later_fragment<A: Nat>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    key: &FragKey<A>,
    stage: Side,
    path: u32,
) -> Option<i32> {
    let addr = conntrack::frag_lookup(key)?;
    Some(match A::set_addr(ctx, p, stage, addr) {
        Ok(()) => {
            metrics::translated(ctx, path);
            TCX_NEXT
        }
        Err(_) => drop(DropReason::RewriteFailed),
    })
}

/// TC ingress: the dst stage, of family `A`'s packets (the others go on: each family
/// has its programs, attached one after the other).
#[inline(always)]
pub fn dst_stage<A: Nat>(ctx: &TcContext, hook: Hook) -> i32 {
    if ether_type(ctx) != A::ETHER_TYPE {
        return TCX_NEXT;
    }
    dst::<A>(ctx, hook)
}

/// The dst stage: the parse, and each kind of packet to its handler. For IPv6 the
/// handlers are BPF-to-BPF calls (crate::family::v6_outlined): each chain of calls has the
/// verifier's 512 bytes of stack, and IPv6's keys and entries fill most of it.
#[inline(always)]
fn dst<A: Nat>(ctx: &TcContext, hook: Hook) -> i32 {
    let mut local = Packet::empty();
    let Some((kind, p)) = A::parse(ctx, &mut local) else {
        return TCX_NEXT;
    };
    conntrack::segment(ctx, p);
    let Some(cfg) = config() else { return TCX_NEXT };
    start(ctx, p, cfg);
    let verdict = match (kind, hook) {
        (Kind::Nat, _) => dst_nat(ctx, p, cfg, hook),
        // Not ours to translate.
        (Kind::Other, _) => TCX_NEXT,
        (Kind::IcmpError, Hook::Uplink) => icmp::from_outside(ctx, p, cfg),
        (Kind::Generic, Hook::Uplink) => generic_reply(ctx, p, cfg),
        // Nothing to translate; what goes straight to a container obeys its gateway mode.
        (Kind::Untranslatable | Kind::Malformed, Hook::Uplink) => {
            access::from_outside(p.saddr, p.daddr, cfg, || false, || TCX_NEXT)
        }
        // From a container, whatever it is, isolation between networks holds.
        (_, Hook::Network) => access::contain(p, cfg),
    };
    finish(ctx, p, path::<A>(hook, Dir::Ingress), verdict)
}

/// The dst stage of TCP, UDP and ICMP queries: inlined for IPv4, for IPv6 a function of
/// its own per hook (as crate::family::v6_outlined, with the hook a constant in each, as
/// it is in the inlined IPv4 code: one function for both hooks needs a frame as large
/// as both).
#[inline(always)]
fn dst_nat<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig, hook: Hook) -> i32 {
    #[inline(never)]
    fn uplink<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig) -> i32 {
        dst_nat_inline(ctx, p, cfg, Hook::Uplink)
    }
    #[inline(never)]
    fn network<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig) -> i32 {
        dst_nat_inline(ctx, p, cfg, Hook::Network)
    }
    match (A::BITS, hook) {
        (32, _) => dst_nat_inline(ctx, p, cfg, hook),
        (_, Hook::Uplink) => uplink(ctx, p, cfg),
        (_, Hook::Network) => network(ctx, p, cfg),
    }
}

/// [`dst_nat`]'s work.
#[inline(always)]
fn dst_nat_inline<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig, hook: Hook) -> i32 {
    if p.frag == Frag::Later {
        let key = frag_key(p, Side::Dst);
        let at = path::<A>(hook, Dir::Ingress);
        return later_fragment(ctx, p, &key, Side::Dst, at).unwrap_or_else(|| {
            if hook == Hook::Network {
                return TCX_NEXT;
            }
            // Ahead of its first fragment, to a host address: if the first turns out to
            // belong to a translated flow, the datagram is lost, and counted there.
            if is_local(p.daddr) {
                conntrack::frag_early(&key, now());
                return TCX_NEXT;
            }
            access::fragment_from_outside(p.daddr)
        });
    }
    // From a container, only what goes to a host address can need a translation (hairpin,
    // and the replies of hairpin, addressed to a gateway); the rest needs isolation, and
    // masquerade when it leaves for the outside.
    if hook == Hook::Network {
        if !is_local(p.daddr) {
            return match access::onward(p, cfg) {
                Ok(Onward::Outside) => out_of_bridge(
                    ctx,
                    p,
                    cfg,
                    forward::in_ifindex(ctx),
                    forwarded::OUT_OF_CONTAINER,
                    true,
                ),
                Ok(Onward::Container | Onward::Untranslated) => TCX_NEXT,
                Err(reason) => drop(reason),
            };
        }
        if access::from_isolated(p, cfg) {
            return drop(DropReason::IsolatedNetwork);
        }
    }
    let now = now();
    if let Some(e) = conntrack::lookup(&key_of(p, Side::Dst), cfg, now, p.tcp_flags) {
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
        // (A routed container's flow: the rewrite is the identity, and its replies take
        // the short way in as translated ones do.)
        return forward_after(ctx, p, cfg, hook, Side::Dst, e.addr, e.port, now);
    }
    // On a network the destination is known to be local already (checked above). ICMP
    // echo is never published.
    let local = hook == Hook::Network || is_local(p.daddr);
    let backend = if local && p.proto != A::ICMP {
        published_on_local(p.daddr, p.dport, p.proto)
    } else {
        None
    };
    if let Some(b) = backend {
        // Ports published on 127.0.0.1 are for host processes (the cgroup programs); a
        // packet that arrives on a device with that destination is an attack (moby#45610).
        if p.daddr.is_loopback() {
            return drop(DropReason::LoopbackGuard);
        }
        // A flow to a published port from outside has one entry, its replies'; the
        // original direction is translated by the published-ports map, and finds its flow
        // through the reply's tuple, which the backend makes known.
        let this_flow = Some((p.daddr, p.dport));
        if hook == Hook::Uplink
            && let Probe::Mine(_) = conntrack::probe(
                &published_reply_key(p, &b),
                this_flow,
                cfg,
                now,
                p.tcp_flags,
            )
        {
            return forward_after(ctx, p, cfg, hook, Side::Dst, b.addr, b.port, now);
        }
        if !opens_flow(p) {
            return TCX_NEXT;
        }
        let created = match hook {
            Hook::Uplink => new_published_flow(p, &b, cfg, now),
            Hook::Network => new_hairpin_flow(ctx, &p, &b, cfg, now),
        };
        if let Err(reason) = created {
            return drop(reason);
        }
        let k = if hook == Hook::Uplink {
            kind::PUBLISHED
        } else {
            kind::HAIRPIN
        };
        events::flow_new(cfg, k, tcp_seen(p.tcp_flags));
        return forward_after(ctx, p, cfg, hook, Side::Dst, b.addr, b.port, now);
    }
    if !local {
        // From the outside straight to a container's address, maybe: its gateway mode
        // decides.
        return access::from_outside(
            p.saddr,
            p.daddr,
            cfg,
            || access::routed_open(p),
            || track_direct(p, cfg, now),
        );
    }
    TCX_NEXT
}

/// Translates, then, for packets that came in through the uplink (destined to a
/// container now), takes the short way to it (see crate::forward).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_after<A: Nat>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    cfg: &DpConfig,
    hook: Hook,
    stage: Side,
    addr: A,
    port: u16,
    now: Tick,
) -> i32 {
    let verdict = rewrite(
        ctx,
        p,
        stage,
        addr,
        port,
        now,
        path::<A>(hook, Dir::Ingress),
    );
    if verdict != TCX_NEXT || hook != Hook::Uplink {
        return verdict;
    }
    if let Some(verdict) = forward::to_container(ctx, p, cfg) {
        return verdict;
    }
    match forward::route(ctx, p, cfg, forward::in_ifindex(ctx), 0, now) {
        Some(r) => forward::send(ctx, &r, forwarded::INTO_CONTAINER),
        None => TCX_NEXT,
    }
}

/// The key of the replies of another protocol's flow masqueraded to `uplink` (no ports).
#[inline(always)]
fn generic_key<A: Nat>(peer: A, uplink: A, proto: u8) -> CtKey<A> {
    CtKey::new(peer, uplink, 0, 0, proto, Side::Dst)
}

v6_outlined! {
    /// Uplink ingress, another protocol: the reply of a masqueraded flow goes back to its
    /// container, by address.
    fn generic_reply<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig) -> i32 {
        // Only what is addressed to the translation address can be a reply: the rest (a
        // router's VRRP, another host's GRE) costs no conntrack lookup, unless it goes
        // straight to a container: a routed container's own flow's replies, tracked.
        if p.daddr != A::uplink(cfg) {
            let (peer, to, proto) = (p.saddr, p.daddr, p.proto);
            return access::from_outside(
                peer,
                to,
                cfg,
                || conntrack::lookup(&generic_key(peer, to, proto), cfg, now(), 0).is_some(),
                || generic_track_direct(to, peer, proto, cfg),
            );
        }
        let now = now();
        let Some(e) = conntrack::lookup(&generic_key(p.saddr, p.daddr, p.proto), cfg, now, 0) else {
            return TCX_NEXT;
        };
        match A::set_addr(ctx, p, Side::Dst, e.addr) {
            Ok(()) => {
                metrics::translated(ctx, path::<A>(Hook::Uplink, Dir::Ingress));
                TCX_NEXT
            }
            Err(_) => drop(DropReason::RewriteFailed),
        }
    }
}

/// The protocols whose checksum covers the addresses, beyond TCP and UDP (RFC 4340 §9.1,
/// RFC 3828 §3.2); over IPv6 also OSPFv3, PIM and Mobility (their checksums take the
/// IPv6 pseudo-header: RFC 5340 A.1, RFC 7761 4.9, RFC 6275 6.1.1).
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_OSPF: u8 = 89;
const IPPROTO_PIM: u8 = 103;
const IPPROTO_MOBILITY: u8 = 135;

/// Whether protocol `proto`'s checksum covers the addresses (see [`IPPROTO_DCCP`]).
#[inline(always)]
fn checksums_addresses<A: Nat>(proto: u8) -> bool {
    matches!(proto, IPPROTO_DCCP | IPPROTO_UDPLITE)
        || (A::BITS == 128 && matches!(proto, IPPROTO_OSPF | IPPROTO_PIM | IPPROTO_MOBILITY))
}

v6_outlined! {
    /// Uplink egress, another protocol from a container: masquerade by address only, as
    /// netfilter's generic protocol NAT (nf_nat_l4proto_unique_tuple() has no port to change
    /// for it). One container at a time talks a protocol to a peer; another's packet is
    /// untranslatable until that flow expires. Every fragment carries the addresses: none
    /// needs its first.
    fn generic_masquerade<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig) -> i32 {
        if A::uplink(cfg) == A::UNSPECIFIED {
            return drop(DropReason::Untranslatable);
        }
        // DCCP and UDP-Lite (and a few over IPv6) checksum a pseudo-header with the
        // addresses, as TCP and UDP do: rewritten by address alone they would leave with a
        // wrong checksum, so they are refused, counted, rather than sent corrupt
        // (netfilter translates DCCP and UDP-Lite by port).
        if checksums_addresses::<A>(p.proto) {
            return drop(DropReason::Untranslatable);
        }
        let now = now();
        let key = generic_key(p.daddr, A::uplink(cfg), p.proto);
        let mine = match conntrack::probe(&key, Some((p.saddr, 0)), cfg, now, 0) {
            Probe::Mine(_) => true,
            Probe::Free => {
                let e = entry(p.saddr, 0, kind::MASQUERADE, now, 0);
                let new = conntrack::insert_new(&key, &e, cfg, now, false);
                if new {
                    events::flow_new(cfg, kind::MASQUERADE, 0);
                }
                new
            }
            Probe::Other => false,
        };
        if !mine {
            return drop(DropReason::Untranslatable);
        }
        match A::set_addr(ctx, p, Side::Src, A::uplink(cfg)) {
            Ok(()) => {
                metrics::translated(ctx, path::<A>(Hook::Uplink, Dir::Egress));
                TCX_NEXT
            }
            Err(_) => drop(DropReason::RewriteFailed),
        }
    }
}

/// A container's packet to a non-local address, leaving the bridge for the host's stack
/// (or, before the bridge, its host veth: [`from_container`]). A packet of a flow the
/// uplink's src stage translates (masquerade, the replies of a published port) gets that
/// translation here instead, and goes straight out of the uplink, counted in [`forwarded`]
/// slot `slot`; a new flow, or one routed elsewhere, takes the kernel's path. With
/// `search`, a masqueraded flow off its own port whose port the cache lost is searched
/// for (nat_port::masquerade_port); without, such a packet goes on as a new one would.
#[inline(always)]
fn out_of_bridge<A: Nat>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    cfg: &DpConfig,
    from_ifindex: u32,
    slot: u32,
    search: bool,
) -> i32 {
    if !forward::eligible(p, cfg) {
        return TCX_NEXT;
    }
    let now = now();
    let (addr, port) =
        if let Some(e) = conntrack::lookup(&key_of(p, Side::Src), cfg, now, p.tcp_flags) {
            (e.addr, e.port)
        } else if let Some(port) = masqueraded_port(p, cfg, now, search) {
            (A::uplink(cfg), port)
        } else {
            return TCX_NEXT;
        };
    // Route first: the translation belongs to the uplink's egress, so it may be applied
    // here only to a packet that is sure to leave through the uplink.
    let Some(route) = forward::route(ctx, p, cfg, from_ifindex, cfg.uplink_ifindex, now) else {
        return TCX_NEXT;
    };
    if !forward::sendable::<A>(ctx) {
        return TCX_NEXT;
    }
    // The uplink egress's translation, applied at the network's ingress, and counted there.
    let at = path::<A>(Hook::Network, Dir::Ingress);
    let verdict = rewrite(ctx, p, Side::Src, addr, port, now, at);
    if verdict != TCX_NEXT {
        return verdict;
    }
    forward::transmit(ctx, &route, slot)
}

/// The source port masquerade gave the flow of `p` (container → outside): with `search`,
/// as nat_port::masquerade_port finds it; without, only where nearly every flow is (its
/// own port, or the one NP_MASQ_PORTS remembers), never by the bounded search for a flow
/// whose cache entry was evicted. That search is half of the instructions of
/// netplane_from_container, which leaves such a rare packet to the bridge's program.
#[inline(always)]
fn masqueraded_port<A: Nat>(p: &Packet<A>, cfg: &DpConfig, now: Tick, search: bool) -> Option<u16> {
    if search {
        return match masquerade_port(p, cfg, now) {
            Masquerade::Port(port) => Some(port),
            Masquerade::None => None,
        };
    }
    known_port(p, cfg, now)
}

/// A container's packet at its host veth's TC ingress, before its bridge (see
/// netplane_from_container): the known-flow part of the Network hook's dst stage
/// ([`out_of_bridge`]) for what the container sends its gateway to route to the outside.
/// Everything else goes on untouched (TCX_NEXT) into the bridge, whose programs handle it
/// as before: new flows (which need the port search), the host's own addresses (hairpin),
/// other networks and isolated ones (counted as drops there, where they belong), and what
/// the bridge switches between its containers.
#[inline(always)]
pub fn from_container<A: Nat>(ctx: &TcContext) -> i32 {
    if ether_type(ctx) != A::ETHER_TYPE {
        return TCX_NEXT;
    }
    let Some(cfg) = config() else { return TCX_NEXT };
    if cfg.flags & flags::FROM_CONTAINER == 0 {
        return TCX_NEXT;
    }
    let mut local = Packet::empty();
    let Some((Kind::Nat, p)) = A::parse(ctx, &mut local) else {
        return TCX_NEXT;
    };
    // A SYN opens a flow (or reopens one): the bridge's, with no lookup here first.
    if opens_connection(p) || !forward::eligible(p, cfg) {
        return TCX_NEXT;
    }
    let Some(gateway) = sent_to_its_gateway(ctx, p) else {
        return TCX_NEXT;
    };
    if is_local(p.daddr) {
        return TCX_NEXT;
    }
    if access::onward(p, cfg) != Ok(Onward::Outside) {
        return TCX_NEXT;
    }
    conntrack::segment(ctx, p);
    start(ctx, p, cfg);
    // A drop (a rewrite that failed half-way) and a flow's state change are the Network
    // hook's, as they would have been at the bridge; when the packet goes on into the bridge,
    // its program finds the flow's state already changed and writes no second event.
    let verdict = leave_from_container(ctx, p, cfg, gateway);
    finish(ctx, p, path::<A>(Hook::Network, Dir::Ingress), verdict)
}

v6_outlined! {
    /// [`from_container`]'s translation and redirect (for IPv6 a frame of its own, freed
    /// before the tail's).
    fn leave_from_container<A: Nat>(
        ctx: &TcContext,
        p: &mut Packet<A>,
        cfg: &DpConfig,
        gateway: u32,
    ) -> i32 {
        // Routed as from the bridge, as the kernel would route it after the bridge.
        out_of_bridge(ctx, p, cfg, gateway, forwarded::FROM_CONTAINER, false)
    }
}

/// A TCP SYN without ACK.
#[inline(always)]
fn opens_connection<A>(p: &Packet<A>) -> bool {
    p.proto == IPPROTO_TCP && p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
}

/// Whether `p`, at a host veth's ingress, comes from the container behind it and goes to
/// its gateway for the host to route: its source is that container's (NP_ENDPOINTS: the
/// veth's ifindex is the device the packet came in on) and its destination MAC the
/// gateway's, the bridge's own (which is what the bridge passes up to the host:
/// br_handle_frame_finish() delivers a frame whose FDB entry is local with
/// br_pass_frame_up()). So a container cannot push a packet into another container's flow
/// through the short way, and what it sends to a peer on its bridge stays the bridge's.
/// Some: the gateway's device (the bridge), which the packet is routed from.
#[inline(always)]
fn sent_to_its_gateway<A: Nat>(ctx: &TcContext, p: &Packet<A>) -> Option<u32> {
    // SAFETY: a lookup; the value is read in place, during this run.
    let ep = unsafe { A::endpoints().get(&p.saddr) }?;
    let dst = ptr_at::<[u8; 6]>(ctx, 0)?;
    // SAFETY: ptr_at checked the bytes are in the packet.
    (ep.ifindex == forward::in_ifindex(ctx) && unsafe { *dst } == ep.gateway_mac)
        .then_some(ep.gateway_ifindex)
}

/// TC egress: the src stage, of family `A`'s packets.
#[inline(always)]
pub fn src_stage<A: Nat>(ctx: &TcContext, hook: Hook) -> i32 {
    if ether_type(ctx) != A::ETHER_TYPE {
        return TCX_NEXT;
    }
    src::<A>(ctx, hook)
}

/// The src stage: the parse, and each kind of packet to its handler (see [`dst`]).
#[inline(always)]
fn src<A: Nat>(ctx: &TcContext, hook: Hook) -> i32 {
    let Some(cfg) = config() else { return TCX_NEXT };
    if hook == Hook::Network {
        return into_network::<A>(ctx, cfg);
    }
    let mut local = Packet::empty();
    let Some((kind, p)) = A::parse(ctx, &mut local) else {
        return TCX_NEXT;
    };
    conntrack::segment(ctx, p);
    start(ctx, p, cfg);
    // What leaves the uplink never has the source of a `nat` network's container: it is
    // translated here, or dropped (Untranslatable, Malformed, FragmentUnknown), even
    // where nf_conntrack would call it INVALID and let it out. A `routed` network's
    // containers, and any container towards a never-NAT prefix, leave with their own
    // addresses; an `isolated` network's never leave.
    let verdict = match kind {
        Kind::Nat => src_nat(ctx, p, cfg),
        Kind::Other => TCX_NEXT,
        // Its own function (a BPF-to-BPF call for either family: errors are rare), which
        // finds the source itself, so that this frame stays small under it.
        Kind::IcmpError => icmp::to_outside(ctx, p, cfg),
        _ => src_other(ctx, p, cfg, kind as u32),
    };
    finish(ctx, p, path::<A>(Hook::Uplink, Dir::Egress), verdict)
}

v6_outlined! {
    /// The uplink's src stage of another protocol, or of what cannot be translated.
    fn src_other<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig, kind: u32) -> i32 {
        let generic = kind == Kind::Generic as u32;
        match access::source(p, cfg) {
            Source::Isolated => drop(DropReason::IsolatedNetwork),
            Source::Nat if generic => generic_masquerade(ctx, p, cfg),
            Source::Unprotected if generic => {
                // The replies of another protocol's flow from the outside.
                let direct = generic_direct_key(p.saddr, p.daddr, p.proto);
                if conntrack::lookup(&direct, cfg, now(), 0).is_some() {
                    return TCX_NEXT;
                }
                generic_masquerade(ctx, p, cfg)
            }
            Source::Routed if generic => generic_track(p, cfg),
            Source::Nat | Source::Unprotected if kind == Kind::Untranslatable as u32 => {
                drop(DropReason::Untranslatable)
            }
            Source::Nat | Source::Unprotected if kind == Kind::Malformed as u32 => {
                drop(DropReason::Malformed)
            }
            _ => TCX_NEXT,
        }
    }
}

v6_outlined! {
    /// The uplink's src stage of TCP, UDP and ICMP queries.
    fn src_nat<A: Nat>(ctx: &TcContext, p: &mut Packet<A>, cfg: &DpConfig) -> i32 {
        if p.frag == Frag::Later {
            let key = frag_key(p, Side::Src);
            let at = path::<A>(Hook::Uplink, Dir::Egress);
            return match later_fragment(ctx, p, &key, Side::Src, at) {
                Some(verdict) => verdict,
                None => match access::source(p, cfg) {
                    Source::Nat | Source::Unprotected => drop(DropReason::FragmentUnknown),
                    Source::Isolated => drop(DropReason::IsolatedNetwork),
                    Source::Host | Source::Routed | Source::Peer => TCX_NEXT,
                },
            };
        }
        // The uplink's own address is never a source this stage rewrites (those are container
        // addresses), and it is what packets the bridge already translated carry.
        if p.saddr == A::uplink(cfg) {
            return TCX_NEXT;
        }
        let now = now();
        let source = access::source(p, cfg);
        match source {
            Source::Host => return TCX_NEXT,
            Source::Isolated => return drop(DropReason::IsolatedNetwork),
            Source::Routed => return track_routed(p, cfg, now),
            Source::Nat | Source::Unprotected | Source::Peer => {}
        }
        // The replies of a published port (a `nat` network's container, to a client outside or
        // in a never-NAT prefix): reverse DNAT; of a direct flow into a `nat-unprotected`
        // one: nothing to write.
        if let Some(e) = conntrack::lookup(&key_of(p, Side::Src), cfg, now, p.tcp_flags) {
            let at = path::<A>(Hook::Uplink, Dir::Egress);
            return rewrite(ctx, p, Side::Src, e.addr, e.port, now, at);
        }
        if source == Source::Peer {
            return TCX_NEXT;
        }
        // Masquerade, as iptables' `-s SUBNET ! -o BRIDGE`: whatever the destination outside.
        let port = match masquerade_port(p, cfg, now) {
            Masquerade::Port(port) => Ok(port),
            // Never let a container address out: without a flow there is no translation.
            Masquerade::None if !opens_flow(p) => Err(DropReason::TcpNoSynNewFlow),
            Masquerade::None => new_masquerade_flow(ctx, &p, cfg, now),
        };
        match port {
            Ok(port) => {
                let at = path::<A>(Hook::Uplink, Dir::Egress);
                rewrite(ctx, p, Side::Src, A::uplink(cfg), port, now, at)
            }
            Err(reason) => drop(reason),
        }
    }
}

v6_outlined! {
    /// A network's TC egress (the host sends a packet into a container network): only
    /// hairpinned flows (which entered through a network) are translated here; packets from
    /// the uplink or from host processes go on without a parse, unless an `isolated` network
    /// exists, into which nothing goes.
    fn into_network<A: Nat>(ctx: &TcContext, cfg: &DpConfig) -> i32 {
        // SAFETY: reading a field of the context the kernel passed in.
        let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
        let outsider = iif == 0 || iif == cfg.uplink_ifindex;
        if outsider && cfg.flags & flags::ISOLATED == 0 {
            return TCX_NEXT;
        }
        let mut local = Packet::empty();
        let Some((kind, p)) = A::parse(ctx, &mut local) else {
            return TCX_NEXT;
        };
        if kind == Kind::Other {
            return TCX_NEXT;
        }
        start(ctx, p, cfg);
        let verdict = into_container(ctx, p, cfg, !outsider && kind == Kind::Nat);
        finish(ctx, p, path::<A>(Hook::Network, Dir::Egress), verdict)
    }
}

/// [`into_network`]'s work on the parsed packet: isolation, and with `translate` (a flow
/// that entered through a network) the hairpin's translation.
#[inline(always)]
fn into_container<A: Nat>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    cfg: &DpConfig,
    translate: bool,
) -> i32 {
    if access::into_isolated(p.daddr, cfg) {
        return drop(DropReason::IsolatedNetwork);
    }
    if !translate {
        return TCX_NEXT;
    }
    conntrack::segment(ctx, p);
    let at = path::<A>(Hook::Network, Dir::Egress);
    if p.frag == Frag::Later {
        let key = frag_key(p, Side::Src);
        return later_fragment(ctx, p, &key, Side::Src, at).unwrap_or(TCX_NEXT);
    }
    let now = now();
    match conntrack::lookup(&key_of(p, Side::Src), cfg, now, p.tcp_flags) {
        Some(e) => rewrite(ctx, p, Side::Src, e.addr, e.port, now, at),
        None => TCX_NEXT,
    }
}

/// A container of a `routed` network sends to the outside with its own address: its flow
/// is tracked, untranslated, by the entry of its replies at the uplink's dst stage, so
/// that they come in (see [`kind::ROUTED`]). A packet of no entry that starts none (see
/// [`opens_routed_flow`]) leaves all the same: its address is its own; only a flow that
/// cannot be tracked is refused, as its replies could not come in.
#[inline(always)]
fn track_routed<A: Nat>(p: &Packet<A>, cfg: &DpConfig, now: Tick) -> i32 {
    // The replies of flows to its published container ports come in anyway: no entry.
    if p.proto != A::ICMP && routed_port(p.saddr, p.sport, p.proto) {
        return TCX_NEXT;
    }
    let replies = CtKey::new(p.daddr, p.saddr, p.dport, p.sport, p.proto, Side::Dst);
    if let Probe::Free = conntrack::probe(&replies, Some((p.saddr, p.sport)), cfg, now, p.tcp_flags)
        && opens_routed_flow(p)
    {
        let e = entry(p.saddr, p.sport, kind::ROUTED, now, p.tcp_flags);
        // Only a SYN may take the tuple of a closed flow (see conntrack::insert_new): a
        // segment picked up mid-stream is no new connection.
        let reopen = p.proto == IPPROTO_TCP && p.tcp_flags & tcp_flags::SYN != 0;
        if !conntrack::insert_new(&replies, &e, cfg, now, reopen) {
            // Its replies would find no entry: refused now rather than later.
            return drop(DropReason::CtInsertFailed);
        }
        events::flow_new(cfg, kind::ROUTED, e.seen);
    }
    TCX_NEXT
}

/// From the outside straight to a container of a `nat-unprotected` network: let in, and
/// tracked untranslated by the entry of its replies at the uplink's src stage (the
/// container's answers find it as a published port's replies find theirs, and leave with
/// its own address rather than masqueraded as a flow of their own). Every packet of the
/// flow refreshes the entry, as it refreshes a published flow's.
///
/// Unless the container's end of the tuple is taken by a translated flow: one the
/// container opened (masqueraded: its replies come to the uplink's address), or one that
/// reached it through a published port. A packet with the reverse tuple straight to the
/// container would join that flow untranslated, and an entry for it would make the
/// container's next packets of the flow leave with its own address. nf_conntrack refuses
/// such a packet the same way: its new connection's reply tuple is the existing one's
/// original tuple (or its reply tuple), so __nf_conntrack_confirm() finds the clash,
/// drops the packet, and counts insert_failed: here `ct-insert-failed`.
#[inline(always)]
fn track_direct<A: Nat>(p: &Packet<A>, cfg: &DpConfig, now: Tick) -> i32 {
    let replies = CtKey::new(p.daddr, p.saddr, p.dport, p.sport, p.proto, Side::Src);
    match conntrack::probe(&replies, Some((p.daddr, p.dport)), cfg, now, p.tcp_flags) {
        Probe::Mine(_) => TCX_NEXT,
        // A published port's flow (its entry says the published address).
        Probe::Other => drop(DropReason::CtInsertFailed),
        Probe::Free => {
            if masqueraded(&reversed(p), cfg, now) {
                return drop(DropReason::CtInsertFailed);
            }
            if opens_flow(p) {
                let e = entry(p.daddr, p.dport, kind::DIRECT, now, p.tcp_flags);
                if !conntrack::insert_new(&replies, &e, cfg, now, p.proto == IPPROTO_TCP) {
                    return drop(DropReason::CtInsertFailed);
                }
                events::flow_new(cfg, kind::DIRECT, e.seen);
            }
            TCX_NEXT
        }
    }
}

/// The packet of the other direction of `p`'s tuple (no TCP flags: it is only looked up).
#[inline(always)]
fn reversed<A: Nat>(p: &Packet<A>) -> Packet<A> {
    Packet {
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        proto: p.proto,
        ..Packet::empty()
    }
}

/// The key of the replies of another protocol's flow from `peer` straight to `container`
/// (a `nat-unprotected` network's), at the uplink's src stage.
#[inline(always)]
fn generic_direct_key<A: Nat>(container: A, peer: A, proto: u8) -> CtKey<A> {
    CtKey::new(container, peer, 0, 0, proto, Side::Src)
}

/// [`track_direct`] for another protocol, by address: refused when the container
/// already talks the protocol to `peer` masqueraded (its packets would leave
/// untranslated once this entry exists).
#[inline(always)]
fn generic_track_direct<A: Nat>(container: A, peer: A, proto: u8, cfg: &DpConfig) -> i32 {
    let now = now();
    let key = generic_direct_key(container, peer, proto);
    if let Probe::Free = conntrack::probe(&key, Some((container, 0)), cfg, now, 0) {
        let masqueraded = generic_key(peer, A::uplink(cfg), proto);
        if conntrack::holds(&masqueraded, (container, 0), cfg, now) {
            return drop(DropReason::CtInsertFailed);
        }
        let e = entry(container, 0, kind::DIRECT, now, 0);
        if !conntrack::insert_new(&key, &e, cfg, now, false) {
            return drop(DropReason::CtInsertFailed);
        }
        events::flow_new(cfg, kind::DIRECT, 0);
    }
    TCX_NEXT
}

/// Whether a routed container's packet without an entry starts one: any UDP datagram, an
/// ICMP query request (not the answer to one from outside, which echo requests get), and
/// a TCP segment other than a bare reset, so that a connection older than its entry (the
/// data plane came up, or the entry expired while idle) is picked up mid-stream, as
/// nf_conntrack does by default (nf_conntrack_tcp_loose).
#[inline(always)]
fn opens_routed_flow<A: Nat>(p: &Packet<A>) -> bool {
    match p.proto {
        IPPROTO_TCP => p.tcp_flags & tcp_flags::RST == 0,
        proto if proto == A::ICMP => A::query_request(p.icmp_type),
        _ => true,
    }
}

v6_outlined! {
    /// Uplink egress, another protocol from a routed container: tracked by address, as
    /// [`generic_masquerade`] does, without the translation.
    fn generic_track<A: Nat>(p: &Packet<A>, cfg: &DpConfig) -> i32 {
        let now = now();
        let key = generic_key(p.daddr, p.saddr, p.proto);
        if let Probe::Free = conntrack::probe(&key, Some((p.saddr, 0)), cfg, now, 0) {
            let e = entry(p.saddr, 0, kind::ROUTED, now, 0);
            if !conntrack::insert_new(&key, &e, cfg, now, false) {
                return drop(DropReason::CtInsertFailed);
            }
            events::flow_new(cfg, kind::ROUTED, 0);
        }
        TCX_NEXT
    }
}

/// Masquerade: container → outside, SNAT to the uplink address. The flow's one entry is
/// its replies', which reserves the port (see [`masquerade_port`]).
#[inline(always)]
fn new_masquerade_flow<A: Nat>(
    ctx: &TcContext,
    p: &Packet<A>,
    cfg: &DpConfig,
    now: Tick,
) -> Result<u16, DropReason> {
    // No address to masquerade to (the uplink lost its IPv6 address; `up` refuses to
    // start without one, and status reports it): nothing can leave translated.
    if A::uplink(cfg) == A::UNSPECIFIED {
        return Err(DropReason::Untranslatable);
    }
    let e = entry(p.saddr, p.sport, kind::MASQUERADE, now, p.tcp_flags);
    let port = reserve_port(ctx, p, A::uplink(cfg), p.daddr, p.dport, &e, cfg, now)?;
    remember(p, port);
    events::flow_new(cfg, kind::MASQUERADE, e.seen);
    #[cfg(feature = "debug-log")]
    crate::debug::new_flow(
        u32::from(kind::MASQUERADE),
        path::<A>(Hook::Uplink, Dir::Egress),
        port,
    );
    Ok(port)
}

/// The conntrack key of the replies of a flow from outside to published port `b`: the
/// backend's tuple at the uplink's src stage.
#[inline(always)]
fn published_reply_key<A: Nat>(p: &Packet<A>, b: &Backend<A>) -> CtKey<A> {
    CtKey::new(b.addr, p.saddr, b.port, p.sport, p.proto, Side::Src)
}

/// A published port reached from outside: the entry that turns the replies' source back
/// into the published address, and that tracks the flow for both directions.
#[inline(always)]
fn new_published_flow<A: Nat>(
    p: &Packet<A>,
    b: &Backend<A>,
    cfg: &DpConfig,
    now: Tick,
) -> Result<(), DropReason> {
    let reopen = p.proto == IPPROTO_TCP;
    let e = entry(p.daddr, p.dport, kind::PUBLISHED, now, p.tcp_flags);
    if !conntrack::insert_new(&published_reply_key(p, b), &e, cfg, now, reopen) {
        return Err(DropReason::CtInsertFailed);
    }
    Ok(())
}

/// A published port reached from a container (its own, a peer's, or one on another
/// network): DNAT here, and SNAT to the backend network's gateway at the bridge's egress so
/// that the replies come back through the host. Four entries.
#[inline(always)]
fn new_hairpin_flow<A: Nat>(
    ctx: &TcContext,
    p: &Packet<A>,
    b: &Backend<A>,
    cfg: &DpConfig,
    now: Tick,
) -> Result<(), DropReason> {
    let reopen = p.proto == IPPROTO_TCP;
    let g = b.gateway;
    // The replies' dst stage: backend → gateway:P becomes backend → client.
    let reply_dst = entry(p.saddr, p.sport, kind::HAIRPIN | kind::REPLY, now, 0);
    let port = reserve_port(ctx, p, g, b.addr, b.port, &reply_dst, cfg, now)?;
    // The other three, in order. Built when used, one at a time: with IPv6 addresses three
    // keys and entries at once would not fit the stack.
    let key = |i: usize| match i {
        // The replies' src stage: backend → client becomes published address → client.
        0 => CtKey::new(b.addr, p.saddr, b.port, p.sport, p.proto, Side::Src),
        // The original direction's src stage: client → backend becomes gateway:P → backend.
        1 => CtKey::new(p.saddr, b.addr, p.sport, b.port, p.proto, Side::Src),
        // The original direction's dst stage goes last: it is what makes the flow known.
        _ => key_of(p, Side::Dst),
    };
    let value = |i: usize| match i {
        0 => entry(p.daddr, p.dport, kind::HAIRPIN | kind::REPLY, now, 0),
        1 => entry(g, port, kind::HAIRPIN, now, p.tcp_flags),
        _ => entry(b.addr, b.port, kind::HAIRPIN, now, p.tcp_flags),
    };
    for i in 0..3 {
        if !conntrack::insert_new(&key(i), &value(i), cfg, now, reopen) {
            // All or none: what was inserted goes again, with the port reservation.
            for j in 0..i {
                conntrack::remove(&key(j));
            }
            conntrack::remove(&CtKey::new(b.addr, g, b.port, port, p.proto, Side::Dst));
            return Err(DropReason::CtInsertFailed);
        }
    }
    Ok(())
}
