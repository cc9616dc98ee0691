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
//! [`MASQ_PORTS`], a cache of the search checked against the conntrack entry each time;
//! a TCP segment whose cache entry was evicted searches again, boundedly ([`FIND_PROBES`]).

use aya_ebpf::bindings::{
    BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
};
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::generated::{
    bpf_loop, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
};
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{CtEntry, CtKey, DpConfig, DropReason, Side, Tick, tuple_hash};
use netplane_common::packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::addr::published;
use crate::conntrack::{self, Probe, config, key_of, opens_flow};
use crate::maps::MASQ_PORTS;
use crate::parse::Packet;

/// Whether a container's packet to the outside belongs to a masqueraded flow.
pub enum Masquerade {
    /// Yes: the flow's source port on the uplink address (network byte order).
    Port(u16),
    None,
}

/// How many ports a TCP segment whose port is not in [`MASQ_PORTS`] (evicted: more flows
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

/// An address nothing has: probing with it looks at an entry without touching it.
const NOBODY: (u32, u16) = (u32::MAX, 0);

/// The search's state, shared with its bpf_loop() callback through the stack.
#[repr(C)]
struct Search {
    peer: u32,
    nat_addr: u32,
    peer_port: u16,
    proto: u8,
    /// 1: look for the flow of `want` (its entry says `want`); 0: take a free port.
    find: u8,
    want_addr: u32,
    want_port: u16,
    _pad: u16,
    /// The next candidate's offset in the range, the stride, the range.
    cur: u32,
    stride: u32,
    span: u32,
    min: u32,
    tried: u32,
    now: Tick,
    tcp_flags: u8,
    /// 1 when `port` (network byte order) is the answer.
    found: u8,
    port: u16,
    reply: CtEntry,
}

impl Search {
    #[inline(always)]
    fn new(p: &Packet, nat_addr: u32, peer: u32, peer_port: u16, cfg: &DpConfig) -> Search {
        let hash = tuple_hash(&key_of(p, Side::Src));
        let min = u32::from(cfg.nat_port_min);
        // At most 65,536, at least 1 (the agent checks min ≤ max).
        let span = (u32::from(cfg.nat_port_max).saturating_sub(min) + 1).max(1);
        let mut stride = STRIDES[(hash >> 29) as usize & 7];
        if span % stride == 0 {
            stride = STRIDE_FALLBACK;
        }
        Search {
            peer,
            nat_addr,
            peer_port,
            proto: p.proto,
            find: 0,
            want_addr: p.saddr,
            want_port: p.sport,
            _pad: 0,
            cur: hash % span,
            stride: stride % span,
            span,
            min,
            tried: 0,
            now: 0,
            tcp_flags: p.tcp_flags,
            found: 0,
            port: 0,
            reply: CtEntry::default(),
        }
    }

    /// Runs the search over at most `limit` more candidates; the answer in `port`.
    #[inline(always)]
    fn run(&mut self, limit: u32) -> Option<u16> {
        self.found = 0;
        let left = limit.min(self.span).saturating_sub(self.tried);
        if left == 0 {
            return None;
        }
        // SAFETY: `step` is a callback of the bpf_loop() signature; its context is this
        // Search, alive on our stack for the call.
        unsafe {
            bpf_loop(
                left,
                step as *mut c_void,
                self as *mut Search as *mut c_void,
                0,
            )
        };
        (self.found != 0).then_some(self.port)
    }
}

/// One candidate of the search: 1 stops the loop (bpf_loop()'s contract), 0 goes on.
#[inline(never)]
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop() passes the Search that Search::run() gave it.
    let s = unsafe { &mut *(ctx as *mut Search) };
    let Some(cfg) = config() else { return 1 };
    if s.span == 0 {
        return 1;
    }
    let port = (s.min.wrapping_add(s.cur) as u16).to_be();
    s.cur = s.cur.wrapping_add(s.stride) % s.span;
    s.tried += 1;
    let rk = CtKey::new(s.peer, s.nat_addr, s.peer_port, port, s.proto, Side::Dst);
    let hit = if s.find != 0 {
        let want = Some((s.want_addr, s.want_port));
        matches!(
            conntrack::probe(&rk, want, cfg, s.now, s.tcp_flags),
            Probe::Mine(_)
        )
    } else {
        // Look before inserting: an insert into a full LRU table evicts, even when the
        // key turns out to be taken (htab_lru_map_update_elem() pops a node first).
        matches!(
            conntrack::probe(&rk, Some(NOBODY), cfg, s.now, 0),
            Probe::Free
        ) && takeable(s.proto, s.nat_addr, port)
            && conntrack::insert_new(&rk, &s.reply, cfg, s.now, false)
    };
    if hit {
        s.found = 1;
        s.port = port;
        return 1;
    }
    0
}

/// A published port of the NAT address is never handed out.
#[inline(always)]
fn takeable(proto: u8, nat_addr: u32, port: u16) -> bool {
    proto == IPPROTO_ICMP || published(nat_addr, port, proto).is_none()
}

/// Whether a local socket would take a packet `remote:rport` → `local:lport`: the lookup
/// the stack makes for it on input. With `exact`, only a socket of that very 4-tuple
/// counts: a TCP connection (not a listener, which owns no tuple), a connected UDP
/// socket; without, any (a listener or an unconnected UDP socket on the port too).
#[inline(always)]
pub fn local_socket(
    ctx: &TcContext,
    proto: u8,
    local: u32,
    lport: u16,
    remote: u32,
    rport: u16,
    exact: bool,
) -> bool {
    let mut t = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: remote,
                daddr: local,
                sport: rport,
                dport: lport,
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
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
fn replies_at(p: &Packet, cfg: &DpConfig, port: u16) -> CtKey {
    CtKey::new(p.daddr, cfg.uplink_addr, p.dport, port, p.proto, Side::Dst)
}

/// The source port masquerade gave the flow of `p` (container → outside), if any.
///
/// A masqueraded flow has a single entry, its replies' (peer → uplink:port, saying which
/// container and port they go to). The original direction finds it at its own port,
/// where nearly every flow is, else at the port [`MASQ_PORTS`] remembers. A new flow
/// whose own port is free takes that at once. A TCP segment without SYN never opens a
/// flow: when neither place has its flow, it searches (up to [`FIND_PROBES`] ports).
#[inline(always)]
pub fn masquerade_port(p: &Packet, cfg: &DpConfig, now: Tick) -> Masquerade {
    let me = Some((p.saddr, p.sport));
    let own = conntrack::probe(&replies_at(p, cfg, p.sport), me, cfg, now, p.tcp_flags);
    if let Probe::Mine(_) = own {
        return Masquerade::Port(p.sport);
    }
    let orig = key_of(p, Side::Src);
    // SAFETY: a lookup; the value is copied out.
    if let Some(port) = unsafe { MASQ_PORTS.get(&orig) }.map(|v| *v as u16)
        && let Probe::Mine(_) =
            conntrack::probe(&replies_at(p, cfg, port), me, cfg, now, p.tcp_flags)
    {
        return Masquerade::Port(port);
    }
    if opens_flow(p) {
        return Masquerade::None;
    }
    let mut s = Search::new(p, cfg.uplink_addr, p.daddr, p.dport, cfg);
    s.find = 1;
    s.now = now;
    match s.run(FIND_PROBES) {
        Some(port) => {
            remember(p, port);
            Masquerade::Port(port)
        }
        None => Masquerade::None,
    }
}

/// Whether container → outside packet `p` is of a live masqueraded flow, looked at without
/// touching the flow (for a packet from the outside that has the reverse tuple, see
/// crate::nat's `track_direct`): at its own port or at the one [`MASQ_PORTS`] remembers.
/// No search: a flow off its own port whose cache entry was evicted is not seen, as its
/// own segments would not see it without one.
#[inline(always)]
pub fn masqueraded(p: &Packet, cfg: &DpConfig, now: Tick) -> bool {
    let me = (p.saddr, p.sport);
    if conntrack::holds(&replies_at(p, cfg, p.sport), me, cfg, now) {
        return true;
    }
    // SAFETY: a lookup; the value is copied out.
    unsafe { MASQ_PORTS.get(&key_of(p, Side::Src)) }
        .is_some_and(|port| conntrack::holds(&replies_at(p, cfg, *port as u16), me, cfg, now))
}

/// Records the port a masqueraded flow got when it is not its own.
#[inline(always)]
pub fn remember(p: &Packet, port: u16) {
    if port != p.sport {
        let _ = MASQ_PORTS.insert(&key_of(p, Side::Src), &u32::from(port), 0);
    }
}

/// Reserves a source port on `nat_addr` for a flow towards `peer:peer_port` by inserting
/// the dst-stage entry of its replies: the original port when free, else the first free
/// one of the search. Returns the port (network byte order).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn reserve_port(
    ctx: &TcContext,
    p: &Packet,
    nat_addr: u32,
    peer: u32,
    peer_port: u16,
    reply: &CtEntry,
    cfg: &DpConfig,
    now: Tick,
) -> Result<u16, DropReason> {
    let owned = |port: u16| local_socket(ctx, p.proto, nat_addr, port, peer, peer_port, false);
    let rk = |port: u16| CtKey::new(peer, nat_addr, peer_port, port, p.proto, Side::Dst);
    if takeable(p.proto, nat_addr, p.sport)
        && !owned(p.sport)
        && conntrack::insert_new(&rk(p.sport), reply, cfg, now, false)
    {
        return Ok(p.sport);
    }
    let mut s = Search::new(p, nat_addr, peer, peer_port, cfg);
    s.now = now;
    s.reply = *reply;
    for _ in 0..SOCKET_RETRIES {
        let Some(port) = s.run(u32::MAX) else {
            break;
        };
        // Rare enough to check after the reservation: give the port back, search on.
        if !owned(port) {
            return Ok(port);
        }
        conntrack::remove(&rk(port));
    }
    Err(DropReason::NatPortExhausted)
}
