//! The monitor's events (`netplane monitor`): drops, new flows, and TCP flows that change
//! state, written into the [`EVENTS`] ring buffer only while `DpConfig::monitor` asks for
//! them. Each stage tests that field at its start and at its tail (see crate::nat's
//! `finish` on why twice); with it 0 (nobody listens) a packet pays two loads of a cache
//! line it read already and two branches, nothing more.
//!
//! While it is set, a stage notes the packet's tuple as it arrived ([`begin`]); what
//! happens to the packet notes the flow event it makes ([`flow_new`], [`flow_state`]); the
//! stage's tail writes one event at most ([`finish`]), with the tuple after translation.
//! Flow events are rate-limited as Cilium's trace events are: one per new flow (a hairpin
//! flow's several entries make one), one per TCP state change, never one per packet. A
//! full ring buffer loses the event, counted in [`EVENTS_LOST`], never the packet.

use aya_ebpf::bindings::{__sk_buff, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use netplane_common::addr::Ip6;
use netplane_common::nat::{DpConfig, kind, seen};
use netplane_common::observe::{Event, Tuple, event_kind, monitor, path_of};

use crate::family::Family;
use crate::maps::{EVENTS, EVENTS_LOST, NOTE, Note, PACKET6};
use crate::parse::Packet;

/// The TCP flags whose first sighting is a state change worth an event: the handshake,
/// the first reply, the end.
const STATE_BITS: u8 = seen::SYN | seen::ACK | seen::FIN | seen::RST | seen::REPLIED;

/// Longer than any one program run takes: a stage's run is microseconds.
const NOTE_MAX_AGE_NS: u64 = 10_000_000;

/// A stage starts on a packet while a monitor listens: its tuple as it arrived, no flow
/// event yet. A call of its own, made before the stage's deep calls: its frame is gone
/// when theirs are stacked.
#[inline(never)]
pub fn begin<A: Family>(ctx: &TcContext, p: &Packet<A>) {
    let Some(n) = NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, the program run's own (see
    // crate::maps::SEGMENT).
    unsafe {
        (*n).flow = 0;
        (*n).skb = ctx.skb.skb as u64;
        (*n).noted_ns = bpf_ktime_get_ns();
        tuple(&mut (*n).orig, p);
    }
}

/// The packet made a new flow of conntrack kind `ct_kind`, with TCP flags `seen`: noted
/// when the monitor wants flows (read again here, off the packets of known flows).
#[inline(always)]
pub fn flow_new(cfg: &DpConfig, ct_kind: u8, seen: u8) {
    if cfg.monitor & monitor::FLOW == 0 {
        return;
    }
    if let Some(n) = NOTE.get_ptr_mut(0) {
        // SAFETY: as in begin().
        unsafe { note(n, event_kind::FLOW_NEW, ct_kind, seen) };
    }
}

/// The packet changed its TCP flow's flags seen from `was` to `now`: noted when that is a
/// state change ([`STATE_BITS`]) and the monitor wants flows. A new flow's event stays
/// the one its first packet makes. (Other protocols have no states but new: a UDP flow's
/// first reply is no event.)
#[inline(always)]
pub fn flow_state(cfg: &DpConfig, ct_kind: u8, was: u8, now: u8) {
    if (was ^ now) & STATE_BITS == 0 || cfg.monitor & monitor::FLOW == 0 {
        return;
    }
    if let Some(n) = NOTE.get_ptr_mut(0) {
        // SAFETY: as in begin().
        unsafe {
            if (*n).flow == 0 {
                note(n, event_kind::FLOW_STATE, ct_kind, now);
            }
        }
    }
}

/// # Safety
/// `n` is this CPU's [`NOTE`] slot.
#[inline(always)]
unsafe fn note(n: *mut Note, event: u8, ct_kind: u8, seen: u8) {
    // SAFETY: the caller's.
    unsafe {
        (*n).flow = event;
        (*n).ct_kind = ct_kind & !kind::REPLY;
        (*n).seen = seen;
    }
}

/// The stage's tail while a monitor listens (`mon`): the event of the packet, if it has
/// one the monitor wants, written with `p` as it leaves. `path` is where the stage runs
/// (an `observe::path_slot`). Only what the event needs of an IPv4 packet on the stage's
/// stack is copied here: the rest is [`np_event`]'s.
#[inline(always)]
pub fn finish<A: Family>(ctx: &TcContext, p: &Packet<A>, mon: u32, path: u32, verdict: i32) {
    if A::BITS == 32
        && let Some(n) = NOTE.get_ptr_mut(0)
    {
        // SAFETY: as in begin(); `A` is u32 here (A::BITS).
        unsafe {
            let (saddr, daddr) = (
                core::mem::transmute_copy::<A, u32>(&p.saddr),
                core::mem::transmute_copy::<A, u32>(&p.daddr),
            );
            (*n).xlat4 = [saddr, daddr, u32::from(p.sport) | u32::from(p.dport) << 16];
            (*n).proto4 = u32::from(p.proto);
        }
    }
    np_event(ctx.skb.skb, mon, path, verdict);
}

/// [`finish`]'s work, from the note (and IPv6's PACKET6 slot): a global function, which
/// the verifier checks once, on its own, rather than once more for every way a stage
/// reaches its tail (a static call's body is walked again with each caller state).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn np_event(skb: *mut __sk_buff, mon: u32, path: u32, verdict: i32) -> i32 {
    let Some(n) = NOTE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in begin(); the borrow ends with this function.
    let n = unsafe { &mut *n };
    // The stage reads the monitor's flag at its start and at its tail: a monitor that
    // came in between finds no note of this packet (its tuple would be another's).
    // A note older than any stage's run is another packet's, whose tail found the flag
    // off (a monitor that left), in an skb at the same address since.
    // SAFETY: a helper that takes nothing.
    let now = unsafe { bpf_ktime_get_ns() };
    if n.skb != skb as u64 || now.wrapping_sub(n.noted_ns) > NOTE_MAX_AGE_NS {
        return 0;
    }
    n.skb = 0;
    let event = if verdict == TC_ACT_SHOT as i32 {
        if mon & monitor::DROP == 0 {
            return 0;
        }
        event_kind::DROP
    } else {
        if n.flow == 0 || mon & monitor::FLOW == 0 {
            return 0;
        }
        n.flow
    };
    n.flow = 0;
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: as in begin().
            unsafe { *lost += 1 };
        }
        return 0;
    };
    let (v6, hook, dir) = path_of(path);
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, of Event's size, written whole before submit;
    // `skb` is the program's context.
    unsafe {
        (*e).ts_ns = now;
        (*e).ifindex = (*skb).ifindex;
        (*e).len = (*skb).len;
        (*e).kind = event;
        (*e).hook = hook as u8;
        (*e).dir = dir as u8;
        (*e).family = if v6 { 6 } else { 4 };
        (*e).verdict = verdict;
        (*e)._pad = 0;
        (*e).orig = n.orig;
        if event == event_kind::DROP {
            (*e).reason = n.reason as u8;
            (*e).ct_kind = 0;
            (*e).seen = 0;
            // Whatever a failed rewrite left half done, the packet is the one that came.
            (*e).xlat = n.orig;
        } else {
            (*e).reason = 0;
            (*e).ct_kind = n.ct_kind;
            (*e).seen = n.seen;
        }
        // The packet as it leaves: IPv6's in this run's PACKET6 slot, IPv4's noted.
        if v6 {
            let Some(p) = PACKET6.get_ptr(0) else {
                entry.discard(0);
                return 0;
            };
            let p = &*(p as *const Packet<Ip6>);
            (*e).proto = p.proto;
            if event != event_kind::DROP {
                tuple(&mut (*e).xlat, p);
            }
        } else {
            let [saddr, daddr, ports] = n.xlat4;
            (*e).proto = n.proto4 as u8;
            if event != event_kind::DROP {
                let x = &mut (*e).xlat;
                x.saddr = [0; 16];
                x.daddr = [0; 16];
                x.saddr[..4].copy_from_slice(&saddr.to_ne_bytes());
                x.daddr[..4].copy_from_slice(&daddr.to_ne_bytes());
                x.sport = ports as u16;
                x.dport = (ports >> 16) as u16;
            }
        }
    }
    entry.submit(0);
    0
}

/// Writes `p`'s addresses and ports into `t` (an IPv4 address fills the first 4 bytes).
#[inline(always)]
fn tuple<A: Family>(t: &mut Tuple, p: &Packet<A>) {
    t.saddr = [0; 16];
    t.daddr = [0; 16];
    // SAFETY: an address is at most 16 bytes (IPv4's 4, IPv6's 16) of plain integers,
    // written unaligned into the byte arrays.
    unsafe {
        core::ptr::write_unaligned(t.saddr.as_mut_ptr() as *mut A, p.saddr);
        core::ptr::write_unaligned(t.daddr.as_mut_ptr() as *mut A, p.daddr);
    }
    t.sport = p.sport;
    t.dport = p.dport;
}
