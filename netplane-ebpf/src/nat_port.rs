//! The source port of a translated flow: reserving one for a new flow (masquerade to the
//! uplink address, hairpin to a gateway), and finding the one a masqueraded flow has.
//!
//! A port is taken by inserting the entry of the flow's replies (conntrack::insert_new):
//! the conntrack tables are the only record of the ports in use. The packet's own port
//! comes first, as in Cilium's snat_v4_new_mapping(). When it is taken, the search visits
//! every port of the NAT port range once, in an order of the flow's own (a start and a
//! stride from the tuple's hash, the stride prime to the range's size: double hashing,
//! which does not pile flows up behind one another as consecutive probing does), so it
//! finds a free port whenever the range has one. It runs in bpf_loop(), whose callback
//! the verifier checks once rather than once per iteration (kernel/bpf/bpf_iter.c,
//! BPF_MAX_LOOPS 8M), and it stops at the first free port: at an occupancy of f it
//! takes about 1/(1-f) probes.
//!
//! A port that a local socket uses towards the same peer is skipped
//! (bpf_skc_lookup_tcp(), bpf_sk_lookup_udp()): the host's own connection has that
//! 4-tuple already, and would break (or, for UDP, lose its replies to the container). So
//! is a port where a listener or an unconnected UDP socket would take the replies. A
//! connected UDP socket that comes later, with a tuple masquerade already uses (the
//! kernel's own port choice does not know about NAT), keeps its traffic: see crate::nat's
//! dst stage.
//!
//! A masqueraded flow's later packets find a port that is not their own through
//! [`MASQ_PORTS`](crate::maps::MASQ_PORTS), a cache of the search checked against the conntrack entry each time;
//! a TCP segment whose cache entry was evicted searches again, boundedly ([`FIND_PROBES`]).

use aya_ebpf::bindings::{BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN};
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::generated::{
    bpf_loop, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
};
use aya_ebpf::programs::TcContext;
use netplane_common::addr::Ip6;
use netplane_common::nat::{CtEntry, CtKey, DpConfig, DropReason, PortKey, Side, Tick, tuple_hash};
use netplane_common::observe::nat_stat;
use netplane_common::packet::{IPPROTO_TCP, IPPROTO_UDP};

use crate::addr::published;
use crate::conntrack::{self, Probe, config, key_of, opens_flow};
use crate::family::Family;
use crate::maps::SEARCH;
use crate::metrics;
use crate::parse::Packet;

/// Whether a container's packet to the outside belongs to a masqueraded flow.
pub enum Masquerade {
    /// Yes: the flow's source port on the uplink address (network byte order).
    Port(u16),
    None,
}

/// How many ports a TCP segment whose port is not in [`MASQ_PORTS`](crate::maps::MASQ_PORTS) (evicted: more flows
/// off their own port than it holds) probes to find its flow; a segment of no flow at all
/// (a late retransmission, a flood) pays as much, ~65 ns a probe. A flow's port is this
/// deep in its order with probability f^64 at an occupancy f when it began: 0.1 % at
/// 90 %. Such a flow is lost, as one whose entry is.
const FIND_PROBES: u32 = 64;

/// How many ports the search may find taken by a local socket before it gives up.
const SOCKET_RETRIES: u32 = 4;

/// Strides of the search, primes above 256: two of them cannot both divide a range's
/// size (≤ 65,536), so the fallback [`STRIDE_FALLBACK`] is prime to it when the first is not.
const STRIDES: [u32; 8] = [257, 263, 269, 271, 277, 281, 283, 293];
const STRIDE_FALLBACK: u32 = 307;

/// The search's state, shared with its bpf_loop() callback through this CPU's
/// [`SEARCH`] slot rather than the stack: with IPv6 addresses it would not fit beside
/// the frames of the stage that searches (512 bytes for the whole chain of calls). A
/// program run has the slot to itself (see crate::maps::SEGMENT), and runs one search at
/// a time.
#[repr(C)]
struct Search<A> {
    /// The candidate's reply key (peer → nat_addr:port at the dst stage): each step
    /// writes its port into `dport`.
    key: CtKey<A>,
    /// 1: look for the flow of `want` (its entry says `want`); 0: take a free port.
    find: u8,
    tcp_flags: u8,
    want_port: u16,
    want_addr: A,
    /// The next candidate's offset in the range, the stride, the range.
    cur: u32,
    stride: u32,
    span: u32,
    min: u32,
    tried: u32,
    now: Tick,
    /// 1 when `port` (network byte order) is the answer.
    found: u32,
    port: u32,
    reply: CtEntry<A>,
    /// The published-ports key of the candidate, for [`Search::takeable`].
    published: PortKey<A>,
}

const _: () = assert!(core::mem::size_of::<Search<Ip6>>() <= core::mem::size_of::<[u64; 32]>());

/// This CPU's search, set up for a flow `p` towards `peer:peer_port` on `nat_addr`.
#[inline(always)]
fn search<A: Family>(
    p: &Packet<A>,
    nat_addr: A,
    peer: A,
    peer_port: u16,
    cfg: &DpConfig,
) -> Option<*mut Search<A>> {
    let slot = SEARCH.get_ptr_mut(0)? as *mut Search<A>;
    // SAFETY: this CPU's slot, large enough (asserted above) and 8-byte aligned, valid
    // for the program run; every field is written before it is read. A borrow that
    // ends here: the search's callback writes the slot through its own pointer, so no
    // reference to it may live across run().
    let s = unsafe { &mut *slot };
    let hash = tuple_hash(&key_of(p, Side::Src));
    let min = u32::from(cfg.nat_port_min);
    // At most 65,536, at least 1 (the agent checks min ≤ max).
    let span = (u32::from(cfg.nat_port_max).saturating_sub(min) + 1).max(1);
    let mut stride = STRIDES[(hash >> 29) as usize & 7];
    if span % stride == 0 {
        stride = STRIDE_FALLBACK;
    }
    s.key = CtKey::new(peer, nat_addr, peer_port, 0, p.proto, Side::Dst);
    s.find = 0;
    s.tcp_flags = p.tcp_flags;
    s.want_addr = p.saddr;
    s.want_port = p.sport;
    s.cur = hash % span;
    s.stride = stride % span;
    s.span = span;
    s.min = min;
    s.tried = 0;
    s.now = 0;
    s.found = 0;
    s.port = 0;
    Some(slot)
}

impl<A: Family> Search<A> {
    /// [`takeable`] for the candidate, with the keys in the slot, not on the callback's
    /// stack.
    #[inline(always)]
    fn takeable(&mut self) -> bool {
        let k = &self.key;
        if k.proto == A::ICMP {
            return true;
        }
        // SAFETY: lookups; the values are not kept.
        if unsafe { A::local_addrs().get(&k.daddr).is_none() } {
            return true;
        }
        self.published = PortKey {
            addr: k.daddr,
            port: k.dport,
            proto: k.proto,
            _pad: 0,
        };
        if unsafe { A::published().get(&self.published).is_some() } {
            return false;
        }
        self.published.addr = A::UNSPECIFIED;
        unsafe { A::published().get(&self.published).is_none() }
    }
}

/// Runs the search `s` over at most `limit` more candidates; the answer in its `port`.
///
/// A raw pointer, not `&mut`: the callback writes the search through its own pointer to
/// the slot, and a `&mut` argument would let the compiler assume nothing else does (it
/// then read `found` as the 0 written before the loop).
#[inline(always)]
fn run<A: Family>(s: *mut Search<A>, limit: u32) -> Option<u16> {
    // SAFETY: `s` is this CPU's slot (see search()), valid for the program run; the
    // reads after the loop are volatile, as the loop's callback wrote them.
    unsafe {
        (*s).found = 0;
        let left = limit.min((*s).span).saturating_sub((*s).tried);
        if left == 0 {
            return None;
        }
        // `step` is a callback of the bpf_loop() signature; it finds its Search in this
        // CPU's slot (no context: bpf_loop's must be on the stack).
        bpf_loop(left, step::<A> as *mut c_void, core::ptr::null_mut(), 0);
        let found = core::ptr::read_volatile(&(*s).found);
        (found != 0).then(|| core::ptr::read_volatile(&(*s).port) as u16)
    }
}

/// One candidate port of the search.
#[inline(never)]
extern "C" fn step<A: Family>(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(slot) = SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the Search that search() set up in this CPU's slot.
    let s = unsafe { &mut *(slot as *mut Search<A>) };
    let Some(cfg) = config() else { return 1 };
    if s.span == 0 {
        return 1;
    }
    let port = (s.min.wrapping_add(s.cur) as u16).to_be();
    s.cur = s.cur.wrapping_add(s.stride) % s.span;
    s.tried += 1;
    s.key.dport = port;
    // Only looks: the flow found is refreshed by its packet's own probe afterwards. This
    // callback's stack adds to the searching stage's, which IPv6 fills nearly (512 bytes
    // for the chain), so it stays this small.
    let hit = if s.find != 0 {
        conntrack::holds(&s.key, (s.want_addr, s.want_port), cfg, s.now)
    } else {
        // Look before inserting: an insert into a full LRU table evicts, even when the
        // key turns out to be taken (htab_lru_map_update_elem() pops a node first).
        conntrack::vacant(&s.key, cfg, s.now)
            && s.takeable()
            && conntrack::insert_new(&s.key, &s.reply, cfg, s.now, false)
    };
    if hit {
        s.found = 1;
        s.port = u32::from(port);
        return 1;
    }
    0
}

/// A published port of the NAT address is never handed out.
#[inline(always)]
fn takeable<A: Family>(proto: u8, nat_addr: A, port: u16) -> bool {
    proto == A::ICMP || !is_published(&nat_addr, u32::from(port) << 8 | u32::from(proto))
}

/// Whether `port_proto` (port << 8 | protocol) is published on `addr`.
#[inline(always)]
fn is_published<A: Family>(addr: &A, port_proto: u32) -> bool {
    published(*addr, (port_proto >> 8) as u16, port_proto as u8).is_some()
}

/// Whether a local socket would take a packet `remote:rport` → `local:lport`: the lookup
/// the stack makes for it on input. With `exact`, only a socket of that very 4-tuple
/// counts: a TCP connection (not a listener, which owns no tuple), a connected UDP
/// socket; without, any (a listener or an unconnected UDP socket on the port too).
#[inline(always)]
pub fn local_socket<A: Family>(
    ctx: &TcContext,
    proto: u8,
    local: A,
    lport: u16,
    remote: A,
    rport: u16,
    exact: bool,
) -> bool {
    let ports = u32::from(lport) << 16 | u32::from(rport);
    let how = u32::from(proto) | u32::from(exact) << 8;
    socket_lookup(ctx, &local, &remote, ports, how)
}

/// [`local_socket`]'s lookup; `ports` is lport << 16 | rport, `how` proto | exact << 8.
#[inline(always)]
fn socket_lookup<A: Family>(ctx: &TcContext, local: &A, remote: &A, ports: u32, how: u32) -> bool {
    let (proto, exact) = (how as u8, how >> 8 != 0);
    let (lport, rport) = ((ports >> 16) as u16, ports as u16);
    let (mut t, size) = A::sock_tuple(*remote, rport, *local, lport);
    // In the skb's device's network namespace (BPF_F_CURRENT_NETNS, __bpf_skc_lookup()).
    let netns = BPF_F_CURRENT_NETNS as i64 as u64;
    let skb = ctx.skb.skb as *mut c_void;
    // SAFETY: the helpers read the tuple, of the size given; a socket they return holds
    // a reference, released at once.
    unsafe {
        let sk = match proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb, &mut t, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, &mut t, size, netns, 0),
            _ => return false,
        };
        if sk.is_null() {
            return false;
        }
        // sock_common fields, readable from what skc_lookup returns
        // (bpf_sock_common_is_valid_access()).
        let owns = !exact
            || match proto {
                IPPROTO_TCP => (*sk).state != BPF_TCP_LISTEN,
                _ => core::ptr::read_volatile(&(*sk).dst_port) != 0,
            };
        bpf_sk_release(sk as *mut c_void);
        owns
    }
}

/// The conntrack key of the replies of a masqueraded flow given `port`.
#[inline(always)]
fn replies_at<A: Family>(p: &Packet<A>, cfg: &DpConfig, port: u16) -> CtKey<A> {
    CtKey::new(p.daddr, A::uplink(cfg), p.dport, port, p.proto, Side::Dst)
}

/// The source port masquerade gave the flow of `p` (container → outside), if any.
///
/// A masqueraded flow has a single entry, its replies' (peer → uplink:port, saying which
/// container and port they go to). The original direction finds it at its own port,
/// where nearly every flow is, else at the port [`MASQ_PORTS`](crate::maps::MASQ_PORTS) remembers. A new flow
/// whose own port is free takes that at once. A TCP segment without SYN never opens a
/// flow: when neither place has its flow, it searches (up to [`FIND_PROBES`] ports).
#[inline(always)]
pub fn masquerade_port<A: Family>(p: &Packet<A>, cfg: &DpConfig, now: Tick) -> Masquerade {
    if let Some(port) = known_port(p, cfg, now) {
        return Masquerade::Port(port);
    }
    let me = Some((p.saddr, p.sport));
    if opens_flow(p) {
        return Masquerade::None;
    }
    let Some(s) = search(p, A::uplink(cfg), p.daddr, p.dport, cfg) else {
        return Masquerade::None;
    };
    // SAFETY: this CPU's search slot (see search()).
    unsafe {
        (*s).find = 1;
        (*s).now = now;
    }
    match run(s, FIND_PROBES) {
        Some(port)
            if matches!(
                conntrack::probe(&replies_at(p, cfg, port), me, cfg, now, p.tcp_flags),
                Probe::Mine(_)
            ) =>
        {
            remember(p, port);
            Masquerade::Port(port)
        }
        _ => Masquerade::None,
    }
}

/// The port of `p`'s live masqueraded flow without a search: its own port, else the one
/// [`MASQ_PORTS`](crate::maps::MASQ_PORTS) remembers (the first half of
/// [`masquerade_port`], which is all that netplane_from_container does).
#[inline(always)]
pub fn known_port<A: Family>(p: &Packet<A>, cfg: &DpConfig, now: Tick) -> Option<u16> {
    let me = Some((p.saddr, p.sport));
    if let Probe::Mine(_) =
        conntrack::probe(&replies_at(p, cfg, p.sport), me, cfg, now, p.tcp_flags)
    {
        return Some(p.sport);
    }
    // SAFETY: a lookup; the value is copied out.
    let port = unsafe { A::masq_ports().get(&key_of(p, Side::Src)) }.map(|v| *v as u16)?;
    match conntrack::probe(&replies_at(p, cfg, port), me, cfg, now, p.tcp_flags) {
        Probe::Mine(_) => Some(port),
        Probe::Other | Probe::Free => None,
    }
}

/// Whether container → outside packet `p` is of a live masqueraded flow, looked at without
/// touching the flow (for a packet from the outside that has the reverse tuple, see
/// crate::nat's `track_direct`): at its own port or at the one [`MASQ_PORTS`](crate::maps::MASQ_PORTS) remembers.
/// No search: a flow off its own port whose cache entry was evicted is not seen, as its
/// own segments would not see it without one.
#[inline(always)]
pub fn masqueraded<A: Family>(p: &Packet<A>, cfg: &DpConfig, now: Tick) -> bool {
    let me = (p.saddr, p.sport);
    if conntrack::holds(&replies_at(p, cfg, p.sport), me, cfg, now) {
        return true;
    }
    // SAFETY: a lookup; the value is copied out.
    unsafe { A::masq_ports().get(&key_of(p, Side::Src)) }
        .is_some_and(|port| conntrack::holds(&replies_at(p, cfg, *port as u16), me, cfg, now))
}

/// Records the port a masqueraded flow got when it is not its own.
#[inline(always)]
pub fn remember<A: Family>(p: &Packet<A>, port: u16) -> () {
    if port != p.sport {
        let _ = A::masq_ports().insert(&key_of(p, Side::Src), &u32::from(port), 0);
    }
}

/// Reserves a source port on `nat_addr` for a flow towards `peer:peer_port` by inserting
/// the dst-stage entry of its replies: the original port when free, else the first free
/// one of the search. Returns the port (network byte order).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn reserve_port<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    nat_addr: A,
    peer: A,
    peer_port: u16,
    reply: &CtEntry<A>,
    cfg: &DpConfig,
    now: Tick,
) -> Result<u16, DropReason> {
    let owned = |port: u16| local_socket(ctx, p.proto, nat_addr, port, peer, peer_port, false);
    // The reply key and entry live in this CPU's search slot (see Search): the packet's own
    // port first, then the search's.
    let s = search(p, nat_addr, peer, peer_port, cfg).ok_or(DropReason::NatPortExhausted)?;
    // SAFETY (each block): this CPU's search slot (see search()); the borrows end before
    // run(), whose callback writes the slot.
    let own = unsafe {
        (*s).now = now;
        (*s).reply = *reply;
        (*s).key.dport = p.sport;
        takeable(p.proto, nat_addr, p.sport)
            && !owned(p.sport)
            && conntrack::insert_new(&(*s).key, &(*s).reply, cfg, now, false)
    };
    if own {
        metrics::nat_stat::<A>(nat_stat::OWN, 1);
        return Ok(p.sport);
    }
    for _ in 0..SOCKET_RETRIES {
        let Some(port) = run(s, u32::MAX) else {
            break;
        };
        // Rare enough to check after the reservation: give the port back, search on.
        if !owned(port) {
            searched::<A>(s, true);
            return Ok(port);
        }
        unsafe {
            (*s).key.dport = port;
            conntrack::remove(&(*s).key);
        }
    }
    searched::<A>(s, false);
    Err(DropReason::NatPortExhausted)
}

/// Counts a search's outcome (found a port or not) and its retries: the ports it tried
/// and found taken (the one it took is no retry).
#[inline(always)]
fn searched<A: Family>(s: *mut Search<A>, found: bool) {
    // SAFETY: this CPU's search slot (see search()), read after the search's callbacks
    // wrote it.
    let tried = unsafe { core::ptr::read_volatile(&(*s).tried) };
    metrics::nat_stat::<A>(nat_stat::RETRIES, tried.saturating_sub(u32::from(found)));
    let outcome = if found {
        nat_stat::SEARCHED
    } else {
        nat_stat::FAILED
    };
    metrics::nat_stat::<A>(outcome, 1);
}
