//! Connection tracking in the LRU hash map [`CT`], of the entries netplane_common::nat
//! describes (one per masqueraded or published flow, four per hairpin), and the fragment
//! map [`FRAGS`]. Expired entries count as absent here and are removed by the agent's
//! garbage collection; the LRU evicts under pressure.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use netplane_common::nat::{
    CtEntry, CtKey, DpConfig, FragEntry, FragKey, Side, Tick, seen, tcp_seen, tick, ticks_since,
};
use netplane_common::packet::IPPROTO_TCP;
use netplane_common::packet::tcp_flags::{ACK as TCP_ACK, SYN as TCP_SYN};

use crate::maps::{CONFIG, CT, FRAGS};
use crate::parse::Packet;

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
pub fn key_of(p: &Packet, stage: Side) -> CtKey {
    CtKey::new(p.saddr, p.daddr, p.sport, p.dport, p.proto, stage)
}

/// Whether `p` may open a flow: any UDP or ICMP packet, a TCP segment only with SYN
/// without ACK.
#[inline(always)]
pub fn opens_flow(p: &Packet) -> bool {
    p.proto != IPPROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// What a key of the conntrack map holds for the packet looking.
pub enum Probe {
    /// The packet's flow: the entry, refreshed with its TCP flags.
    Mine(CtEntry),
    /// A live entry of another flow, left as it is (this packet's flags are not its own).
    Other,
    /// Nothing live.
    Free,
}

/// The live entry for `key`, refreshed with this packet's TCP flags.
#[inline(always)]
pub fn lookup(key: &CtKey, cfg: &DpConfig, now: Tick, tcp_flags: u8) -> Option<CtEntry> {
    match probe(key, None, cfg, now, tcp_flags) {
        Probe::Mine(e) => Some(e),
        Probe::Other | Probe::Free => None,
    }
}

/// [`lookup`], where the entry of the packet's flow must also say `want` (address, port):
/// several flows may share a key, as the ports masquerade hands out do.
#[inline(always)]
pub fn probe(
    key: &CtKey,
    want: Option<(u32, u16)>,
    cfg: &DpConfig,
    now: Tick,
    tcp_flags: u8,
) -> Probe {
    let Some(e) = CT.get_ptr_mut(key) else {
        return Probe::Free;
    };
    // SAFETY: a pointer into the map's value, valid for this program run; concurrent
    // updates of these plain fields from another CPU are benign (last writer wins).
    let entry = unsafe { &mut *e };
    if cfg.timeouts.expired(key.proto, entry, now) {
        let _ = CT.remove(key);
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
    // A SYN on a closed flow's tuple (the client reused its port) starts a new
    // incarnation: forget the FIN/RST that would shorten its lifetime.
    let flags = tcp_seen(tcp_flags);
    let mut seen_now = entry.seen;
    if flags & seen::SYN != 0 {
        seen_now &= !(seen::FIN | seen::RST);
    }
    seen_now |= flags;
    if seen_now != entry.seen {
        entry.seen = seen_now;
    }
    // A RST ends both directions at once. A flow with an entry per direction (hairpin)
    // would see it in this direction's only: mark the other's too, or it would stay
    // "established" for hours and refuse the next flow that reuses the tuple
    // (nf_conntrack keeps one state for both). Flows with a single entry find no peer.
    if tcp_seen(tcp_flags) & seen::RST != 0 {
        let peer = if key.stage == Side::Dst as u8 {
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
        };
        if let Some(pe) = CT.get_ptr_mut(&peer) {
            // SAFETY: as above.
            unsafe { (*pe).seen |= seen::RST };
        }
    }
    Probe::Mine(*entry)
}

/// Inserts `entry` only if `key` is free (BPF_NOEXIST), or if what is there has expired,
/// or, with `reopen` (a TCP SYN whose tuple leaves no choice), if it belongs to a flow
/// that has seen FIN or RST: as nf_conntrack lets a SYN reopen a closed connection
/// (tcp_conntrack's TCP_CONNTRACK_CLOSE → SYN_SENT), a client that reuses its port through
/// another published port of the same backend must not be refused for 10 s.
#[inline(always)]
pub fn insert_new(key: &CtKey, entry: &CtEntry, cfg: &DpConfig, now: Tick, reopen: bool) -> bool {
    if CT.insert(key, entry, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    let replaceable = CT.get_ptr(key).is_some_and(|e| {
        // SAFETY: as in lookup().
        let e = unsafe { &*e };
        cfg.timeouts.expired(key.proto, e, now) || (reopen && e.seen & (seen::FIN | seen::RST) != 0)
    });
    replaceable && CT.insert(key, entry, BPF_ANY as u64).is_ok()
}

/// Inserts a flow's entries in order, all or none: after a failure the entries already
/// inserted, and `reserved` (a port reservation made before), are removed again.
#[inline(always)]
pub fn insert_flow<const N: usize>(
    entries: &[(CtKey, CtEntry); N],
    reserved: Option<&CtKey>,
    cfg: &DpConfig,
    now: Tick,
    reopen: bool,
) -> bool {
    for i in 0..N {
        if !insert_new(&entries[i].0, &entries[i].1, cfg, now, reopen) {
            // A constant bound: the verifier cannot follow a loop up to `i` over a slice.
            for (j, done) in entries.iter().enumerate() {
                if j >= i {
                    break;
                }
                remove(&done.0);
            }
            if let Some(r) = reserved {
                remove(r);
            }
            return false;
        }
    }
    true
}

#[inline(always)]
pub fn remove(key: &CtKey) {
    let _ = CT.remove(key);
}

/// Remembers what a first fragment's `stage` wrote, for the later fragments.
#[inline(always)]
pub fn frag_record(key: &FragKey, addr: u32, now: Tick) {
    let _ = FRAGS.insert(
        key,
        &FragEntry {
            addr,
            last_seen: now,
        },
        BPF_ANY as u64,
    );
}

#[inline(always)]
pub fn frag_lookup(key: &FragKey) -> Option<u32> {
    // SAFETY: as in lookup().
    FRAGS.get_ptr(key).map(|e| unsafe { (*e).addr })
}
