//! Connection tracking in two tables (netplane_common::nat::CtTables says why): every
//! entry is born in the LRU table of unreplied flows [`CT_NEW`] and moves to the main
//! table [`CT`], which never evicts, when its flow is assured. The entries are the ones
//! netplane_common::nat describes (one per masqueraded or published flow, four per
//! hairpin), and the fragment map [`FRAGS`]. Expired entries count as absent here and are
//! removed by the agent's garbage collection.
//!
//! The move is a copy into the main table and a removal from the other, done by the
//! packet that assures the flow; between the two, both tables hold the entry, and the main
//! table's copy is the one every lookup finds first.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use netplane_common::nat::{
    CtEntry, CtKey, Direction, DpConfig, FragEntry, FragKey, Side, Tick, acknowledges, assure,
    kind, seen, tcp_seen, tick, ticks_since, track_seq,
};
use netplane_common::observe::ct_stat;
use netplane_common::packet::IPPROTO_TCP;
use netplane_common::packet::tcp_flags::{ACK as TCP_ACK, SYN as TCP_SYN};

use crate::events;
use crate::family::Family;
use crate::maps::{CONFIG, SEGMENT};
use crate::metrics;
use crate::parse::{Frag, Packet, read};

#[inline(always)]
pub fn now() -> Tick {
    // SAFETY: a helper without arguments.
    tick(unsafe { bpf_ktime_get_ns() })
}

#[inline(always)]
pub fn config() -> Option<&'static DpConfig> {
    CONFIG.get(0)
}

/// The conntrack key of `p` at `stage`: its tuple as it is on the wire there.
#[inline(always)]
pub fn key_of<A: Family>(p: &Packet<A>, stage: Side) -> CtKey<A> {
    CtKey::new(p.saddr, p.daddr, p.sport, p.dport, p.proto, stage)
}

/// Whether `p` may open a flow: any UDP or ICMP packet, a TCP segment only with SYN
/// without ACK.
#[inline(always)]
pub fn opens_flow<A>(p: &Packet<A>) -> bool {
    p.proto != IPPROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Notes the TCP sequence and acknowledgment numbers of `p`, the packet of this program
/// run, for the lookups that follow (see [`probe`]). Every stage calls it first, after
/// parsing: a packet that is not a TCP segment with a header clears them.
#[inline(always)]
pub fn segment<A>(ctx: &TcContext, p: &Packet<A>) {
    let Some(slot) = SEGMENT.get_ptr_mut(0) else {
        return;
    };
    let numbers = if p.proto == IPPROTO_TCP && p.frag != Frag::Later {
        read::<[u32; 2]>(ctx, p.l4_off + 4).ok()
    } else {
        None
    };
    // SAFETY: this CPU's slot of a per-CPU array, as in crate::metrics.
    unsafe {
        *slot = match numbers {
            Some([seq, ack]) => {
                let ack_valid = if p.tcp_flags & TCP_ACK != 0 { 2 } else { 0 };
                [u32::from_be(seq), u32::from_be(ack), 1 | ack_valid]
            }
            None => [0, 0, 0],
        }
    };
}

/// The sequence number [`segment`] noted for this packet.
#[inline(always)]
fn segment_seq() -> Option<u32> {
    // SAFETY: as in segment().
    let s = unsafe { *SEGMENT.get_ptr(0)? };
    (s[2] & 1 != 0).then_some(s[0])
}

/// The acknowledgment number [`segment`] noted for this packet, if it has the ACK flag.
#[inline(always)]
fn segment_ack() -> Option<u32> {
    // SAFETY: as in segment().
    let s = unsafe { *SEGMENT.get_ptr(0)? };
    (s[2] & 2 != 0).then_some(s[1])
}

/// What a key of the conntrack tables holds for the packet looking.
pub enum Probe<A> {
    /// The packet's flow: the entry, refreshed with its TCP flags.
    Mine(CtEntry<A>),
    /// A live entry of another flow, left as it is (this packet's flags are not its own).
    Other,
    /// Nothing live.
    Free,
}

/// The entry of `key`: in the main table (the second member false), or among the
/// unreplied flows (true).
#[inline(always)]
fn find<A: Family>(key: &CtKey<A>) -> Option<(*mut CtEntry<A>, bool)> {
    if let Some(e) = A::ct().get_ptr_mut(key) {
        return Some((e, false));
    }
    A::ct_new().get_ptr_mut(key).map(|e| (e, true))
}

/// The live entry for `key`, the packet's own tuple, refreshed with this packet's TCP
/// flags.
#[inline(always)]
pub fn lookup<A: Family>(
    key: &CtKey<A>,
    cfg: &DpConfig,
    now: Tick,
    tcp_flags: u8,
) -> Option<CtEntry<A>> {
    match probe(key, None, cfg, now, tcp_flags) {
        Probe::Mine(e) => Some(e),
        Probe::Other | Probe::Free => None,
    }
}

/// Whether `key` holds a live entry that says `want` (address, port), looked at without
/// touching it: for a packet that is not of that flow (its timestamp and TCP state are
/// not this packet's to change).
#[inline(always)]
pub fn holds<A: Family>(key: &CtKey<A>, want: (A, u16), cfg: &DpConfig, now: Tick) -> bool {
    let Some((e, _)) = find(key) else {
        return false;
    };
    // SAFETY: as in probe(); only read.
    let e = unsafe { &*e };
    !cfg.timeouts.expired(key.proto, e, now) && e.addr == want.0 && e.port == want.1
}

/// Whether `key` is free for a new flow: nothing there, or only an expired entry, which
/// goes.
#[inline(always)]
pub fn vacant<A: Family>(key: &CtKey<A>, cfg: &DpConfig, now: Tick) -> bool {
    let Some((e, unreplied)) = find(key) else {
        return true;
    };
    // SAFETY: as in probe(); only read.
    if !cfg.timeouts.expired(key.proto, unsafe { &*e }, now) {
        return false;
    }
    if unreplied {
        unreplied_gone::<A>(key);
    } else {
        let _ = A::ct().remove(key);
    }
    true
}

/// [`lookup`], where the entry of the packet's flow must also say `want` (address, port):
/// several flows may share a key, as the ports masquerade hands out do. With `want`, the
/// key is not the packet's own tuple, but its flow's replies'.
#[inline(always)]
pub fn probe<A: Family>(
    key: &CtKey<A>,
    want: Option<(A, u16)>,
    cfg: &DpConfig,
    now: Tick,
    tcp_flags: u8,
) -> Probe<A> {
    let Some((e, unreplied)) = find(key) else {
        return Probe::Free;
    };
    // SAFETY: a pointer into the map's value, valid for this program run; concurrent
    // updates of these plain fields from another CPU are benign (last writer wins).
    let entry = unsafe { &mut *e };
    if cfg.timeouts.expired(key.proto, entry, now) {
        if unreplied {
            unreplied_gone::<A>(key);
        } else {
            let _ = A::ct().remove(key);
        }
        return Probe::Free;
    }
    if let Some((addr, port)) = want
        && (entry.addr != addr || entry.port != port)
    {
        return Probe::Other;
    }
    // Refresh the timestamp at most every 100 ticks (~0.1 s): a write per packet would
    // bounce the entry's cache line between CPUs for no gain in precision that lifetimes
    // need.
    if ticks_since(now, entry.last_seen) > 100 {
        entry.last_seen = now;
    }
    let dir = Direction::of(want.is_none(), entry.kind);
    let mut flags = tcp_seen(tcp_flags);
    let mut seen_now = entry.seen;
    // A TCP segment's FIN, RST or SYN counts only near where its direction is in sequence
    // space (track_seq): a blind one from a spoofed peer changes nothing. The ICMP errors'
    // lookups pass no flags and are not tracked.
    if key.proto == IPPROTO_TCP
        && tcp_flags != 0
        && let Some(seq) = segment_seq()
    {
        let reply = dir == Direction::Reply;
        let known = if reply { entry.seq[1] } else { entry.seq[0] };
        let (s, at, counted) = track_seq(seen_now, known, dir, flags, seq);
        (seen_now, flags) = (s, counted);
        if at != known {
            if reply {
                entry.seq[1] = at;
            } else {
                entry.seq[0] = at;
            }
        }
    }
    // A SYN on a closed flow's tuple (the client reused its port) starts a new
    // incarnation: forget the FIN/RST that would shorten its lifetime.
    if flags & seen::SYN != 0 {
        seen_now &= !(seen::FIN | seen::RST);
    }
    seen_now |= flags;
    let mut promote = false;
    if unreplied {
        (seen_now, promote) = assure(seen_now, dir);
        // A SYN again (a retransmission, or a spoofer repeating itself after the SYN-ACK
        // it never saw) assures nothing: the handshake's third packet does.
        promote &= flags & seen::SYN == 0;
        // And for TCP only a segment that acknowledges the reply side's (the handshake's
        // third packet, SYN-ACK's sequence number + 1) assures: a spoofer's blind ACK does
        // not, so it cannot fill the main table with flows that never were.
        // (Hairpin flows, between local containers, keep each direction's numbers in
        // another entry, and are left out.)
        promote &= key.proto != IPPROTO_TCP
            || entry.kind & !kind::REPLY == kind::HAIRPIN
            || acknowledges(seen_now, entry.seq[1], segment_ack());
    }
    if seen_now != entry.seen {
        if key.proto == IPPROTO_TCP {
            events::flow_state(cfg, entry.kind, entry.seen, seen_now);
        }
        entry.seen = seen_now;
    }
    // Hairpin keeps an entry per direction and stage, in pairs that one packet meets at
    // the two stages: what one learns, its peer (the other direction's entry at the other
    // stage) needs too. A flow with a single entry finds no peer.
    if entry.kind & !kind::REPLY == kind::HAIRPIN {
        // A RST ends both directions at once; the peer would stay "established" for hours
        // and refuse the next flow that reuses the tuple (nf_conntrack keeps one state for
        // both).
        let reset = flags & seen::RST != 0;
        // The replies' entries are the first to see a reply; the original direction's
        // learn it from them, and are the ones that assure the flow.
        let replied = unreplied && dir == Direction::Reply;
        if reset || replied || promote {
            let news = u32::from(reset) | u32::from(replied) << 1 | u32::from(promote) << 2;
            tell_peer(key, entry, news);
        }
    }
    let out = *entry;
    if promote {
        enter_main(key, &out);
    }
    Probe::Mine(out)
}

/// Hairpin keeps an entry per direction and stage, in pairs that one packet meets at the
/// two stages: what one learns, its peer (the other direction's entry at the other
/// stage) needs too. `news`: bit 0 a RST, bit 1 the first reply, bit 2 the flow is
/// assured.
#[inline(always)]
fn tell_peer<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>, news: u32) -> () {
    let peer = peer_key(key, entry);
    let Some((pe, peer_unreplied)) = find(&peer) else {
        return;
    };
    // SAFETY: as in probe().
    let pe = unsafe { &mut *pe };
    if news & 1 != 0 {
        pe.seen |= seen::RST;
    }
    // Written only when it changes: the peer's line is shared with other CPUs.
    if news & 2 != 0 && pe.seen & seen::REPLIED == 0 {
        pe.seen |= seen::REPLIED;
    }
    if news & 4 != 0 && peer_unreplied {
        enter_main(&peer, pe);
    }
}

/// The key of a hairpin entry's peer: the entry of the other direction at the other stage
/// (the replies' dst stage pairs with the original direction's src stage, and the other
/// way round).
#[inline(always)]
fn peer_key<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) -> CtKey<A> {
    if key.stage == Side::Dst as u8 {
        CtKey::new(
            entry.addr,
            key.saddr,
            entry.port,
            key.sport,
            key.proto,
            Side::Src,
        )
    } else {
        CtKey::new(
            key.daddr,
            entry.addr,
            key.dport,
            entry.port,
            key.proto,
            Side::Dst,
        )
    }
}

/// Moves an assured flow's entry into the main table. When the main table is full the
/// entry stays where it is, counted as `ct-full` (in NP_CT_STATS: not a drop): the flow
/// goes on, exposed to the LRU.
#[inline(always)]
fn enter_main<A: Family>(key: &CtKey<A>, entry: &CtEntry<A>) {
    // BPF_NOEXIST: another CPU may have moved it first; then this copy is not needed.
    if A::ct().insert(key, entry, BPF_NOEXIST as u64).is_ok() || A::ct().get_ptr(key).is_some() {
        unreplied_gone::<A>(key);
    } else {
        metrics::ct_full::<A>();
    }
}

/// Whether `e`, found at `key`, may give way to a new flow: expired, or, with `reopen`,
/// closed (see [`insert_new`]).
#[inline(always)]
fn replaceable<A>(key: &CtKey<A>, e: &CtEntry<A>, cfg: &DpConfig, now: Tick, reopen: bool) -> bool {
    cfg.timeouts.expired(key.proto, e, now) || (reopen && e.seen & (seen::FIN | seen::RST) != 0)
}

/// Inserts `entry`, among the unreplied flows, only if `key` is free (BPF_NOEXIST) in both
/// tables, or if what is there has expired, or, with `reopen` (a TCP SYN whose tuple
/// leaves no choice), if it belongs to a flow that has seen FIN or RST: as nf_conntrack lets
/// a SYN reopen a closed connection (tcp_conntrack's TCP_CONNTRACK_CLOSE → SYN_SENT), a
/// client that reuses its port through another published port of the same backend must
/// not be refused for 10 s.
#[inline(always)]
pub fn insert_new<A: Family>(
    key: &CtKey<A>,
    entry: &CtEntry<A>,
    cfg: &DpConfig,
    now: Tick,
    reopen: bool,
) -> bool {
    let (ct, ct_new) = (A::ct(), A::ct_new());
    // The unreplied table first, the main table second: an entry moves the other way
    // (into the main table, then out of this one), so a key that is moving is seen in
    // one of them, and two flows never both get it.
    if ct_new.insert(key, entry, BPF_NOEXIST as u64).is_ok() {
        metrics::ct_stat::<A>(ct_stat::NEW_INSERTED);
    } else {
        // An entry that gives way is replaced in place: nothing enters or leaves.
        let free = ct_new.get_ptr(key).is_some_and(|e| {
            // SAFETY: as in probe().
            replaceable(key, unsafe { &*e }, cfg, now, reopen)
        });
        if !(free && ct_new.insert(key, entry, BPF_ANY as u64).is_ok()) {
            return false;
        }
    }
    if let Some(e) = ct.get_ptr(key) {
        // SAFETY: as in probe().
        if replaceable(key, unsafe { &*e }, cfg, now, reopen) {
            let _ = ct.remove(key);
        } else {
            unreplied_gone::<A>(key);
            return false;
        }
    }
    true
}

/// Takes `key` out of the unreplied flows' table, counting it (NEW_LEFT): with the
/// inserts, what lets the agent tell how many the LRU evicted (ct_stat::evicted).
#[inline(always)]
fn unreplied_gone<A: Family>(key: &CtKey<A>) {
    if A::ct_new().remove(key).is_ok() {
        metrics::ct_stat::<A>(ct_stat::NEW_LEFT);
    }
}

/// Removes a flow's entry that [`insert_new`] made (it cannot have moved yet: that takes
/// a packet of the flow), when the rest of its flow could not be inserted.
#[inline(always)]
pub fn remove<A: Family>(key: &CtKey<A>) {
    unreplied_gone::<A>(key);
}

/// Remembers what a first fragment's `stage` wrote, for the later fragments.
#[inline(always)]
pub fn frag_record<A: Family>(key: &FragKey<A>, addr: A, now: Tick) {
    let _ = A::frags().insert(
        key,
        &FragEntry {
            addr,
            last_seen: now,
        },
        BPF_ANY as u64,
    );
}

#[inline(always)]
pub fn frag_lookup<A: Family>(key: &FragKey<A>) -> Option<A> {
    // SAFETY: as in lookup().
    A::frags().get_ptr(key).map(|e| unsafe { (*e).addr })
}

/// Remembers a later fragment that went on untranslated, before any first fragment.
#[inline(always)]
pub fn frag_early<A: Family>(key: &FragKey<A>, now: Tick) {
    let _ = A::frags_early().insert(key, &now, BPF_ANY as u64);
}

/// Whether a later fragment of this first fragment's datagram went ahead of it (and
/// forgets it: the answer is given once).
#[inline(always)]
pub fn frag_went_ahead<A: Family>(key: &FragKey<A>) -> bool {
    A::frags_early().remove(key).is_ok()
}
