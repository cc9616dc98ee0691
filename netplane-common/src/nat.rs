//! The eBPF data plane's map types and the pure logic of its connection tracking.
//!
//! NAT works in two stages, as in netfilter: the **dst stage** (TC ingress: the uplink's,
//! and each container network's: its bridge's, or a `ptp` network's host veths', for
//! packets from containers) rewrites destinations: DNAT of published
//! ports and the reverse of SNAT. The **src stage** (TC egress of the same devices)
//! rewrites sources: SNAT (masquerade, hairpin) and the reverse of DNAT. Rewriting a
//! destination before routing and a source after it keeps every packet the kernel routes
//! free of a local source address, which it would drop as martian (fib_validate_source()).
//!
//! Each stage looks packets up in the conntrack map by their tuple as seen at that stage;
//! an entry says what to write. Masquerade and published ports keep one entry per flow,
//! keyed by the tuple of its replies, which also tracks its state for both directions:
//! the original direction finds it from its own tuple (a published port's through the
//! published-ports map; a masqueraded flow's by trying the ports masquerade hands out).
//! Hairpin, translated twice, keeps an entry per stage and direction: four. A flow that a
//! container of a `routed` network opens is tracked by one such entry too, whose rewrite
//! is the identity ([`kind::ROUTED`]): its replies are what the outside may send it.

use bytemuck::{Pod, Zeroable};

use crate::addr::{Addr, Ip6};

use crate::packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use crate::packet6::IPPROTO_ICMPV6;

/// A side of a packet's tuple: its destination or its source (address and port).
///
/// A NAT stage is named by the side it rewrites, so a `Side` also names a stage; as such
/// it is stored, as a `u8`, in [`CtKey::stage`] and [`FragKey::stage`], which the agent
/// reads back: the values are fixed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The dst stage (TC ingress) rewrites it.
    Dst = 0,
    /// The src stage (TC egress) rewrites it.
    Src = 1,
}

/// A packet's 5-tuple as it is on the wire at one stage, plus the stage: the key of the
/// conntrack map. Addresses and ports are in network byte order, as in the packet.
/// For ICMP echo, the identifier is the source port of a request and the destination
/// port of a reply, so that a reply's tuple is the reverse of its request's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Zeroable)]
pub struct CtKey<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// The stage, as the [`Side`] it rewrites.
    pub stage: u8,
    pub _pad: [u8; 2],
}

impl<A: Addr> CtKey<A> {
    pub const fn new(
        saddr: A,
        daddr: A,
        sport: u16,
        dport: u16,
        proto: u8,
        stage: Side,
    ) -> CtKey<A> {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            stage: stage as u8,
            _pad: [0; 2],
        }
    }

    /// The tuple of a packet going the other way, at `stage`.
    pub const fn reversed(&self, stage: Side) -> CtKey<A> {
        CtKey::new(
            self.daddr, self.saddr, self.dport, self.sport, self.proto, stage,
        )
    }
}

/// What a conntrack entry has seen: the TCP flags of the packets that found it, and
/// whether a packet of the flow's reply direction did.
pub mod seen {
    pub const SYN: u8 = 1;
    pub const ACK: u8 = 2;
    pub const FIN: u8 = 4;
    pub const RST: u8 = 8;
    /// A packet of the reply direction passed (any protocol). The next packet of the
    /// original direction moves the entry into the main table (see [`super::CtTables`]).
    pub const REPLIED: u8 = 16;
    /// [`super::CtEntry::seq`] holds a sequence number of the original direction.
    pub const ORIGINAL_SEQ: u8 = 32;
    /// [`super::CtEntry::seq`] holds a sequence number of the reply direction.
    pub const REPLY_SEQ: u8 = 64;
}

/// The two conntrack tables, and why there are two.
///
/// An entry is born in the table of unreplied flows (`NP_CT_NEW`, an LRU hash) and moves
/// to the main table (`NP_CT`, a preallocated hash of exactly `max_entries`) when its flow
/// is *assured*, as nf_conntrack calls it: a packet of the original direction after one of
/// the reply direction. A spoofed SYN gets its SYN-ACK but never the third ACK, a UDP probe
/// its one answer at most: neither ever reaches the main table, and the LRU only ever evicts
/// unreplied entries (nf_conntrack's early_drop() has the same guarantee). The main table
/// never evicts: when it is full, a flow that should move stays among the unreplied ones
/// (counted as `ct-full`). Its LRU has one list for all CPUs (no `BPF_F_NO_COMMON_LRU`,
/// which splits the capacity per CPU: only ~1/ncpus of it was usable per CPU).
pub struct CtTables;

impl CtTables {
    /// The size of the table of unreplied flows for a main table of `max_entries`: an
    /// eighth (a handshake needs an entry for one round trip; at 16,384 entries a flood of
    /// a million SYNs a second leaves it 16 ms), and at least 256. With the kernel's
    /// overhead a tracked flow then costs ~117 bytes (104 in the main table, an eighth of
    /// that for the other), within the 128 the bench allows.
    pub const fn unreplied_entries(max_entries: u32) -> u32 {
        let n = max_entries / 8;
        if n < 256 { 256 } else { n }
    }
}

/// What created a flow, for `netplane conntrack`.
pub mod kind {
    pub const MASQUERADE: u8 = 1;
    pub const PUBLISHED: u8 = 2;
    pub const HAIRPIN: u8 = 3;
    /// A flow that a container of a `routed` network opened towards the outside: tracked,
    /// not translated (the entry's address and port are the container's own), so that its
    /// replies may come in while the rest of the outside may not. One entry, keyed by the
    /// replies' tuple at the uplink's dst stage, as a masqueraded flow's.
    pub const ROUTED: u8 = 4;
    /// A flow that the outside opened straight to a container of a `nat-unprotected`
    /// network: tracked, not translated, so that the container's replies leave with its
    /// own address instead of being masqueraded as a flow of its own. One entry, keyed by
    /// the replies' tuple at the uplink's src stage, as a published flow's.
    pub const DIRECT: u8 = 5;
    /// Set on the entries of the reply direction.
    pub const REPLY: u8 = 0x80;

    /// The kind's name, as `netplane conntrack`, the metrics and the monitor say it (the
    /// direction bit aside).
    pub const fn name(k: u8) -> &'static str {
        match k & !REPLY {
            MASQUERADE => "masquerade",
            PUBLISHED => "published",
            HAIRPIN => "hairpin",
            ROUTED => "routed",
            DIRECT => "direct",
            _ => "unknown",
        }
    }
}

/// What a stage writes into a matching packet: the address and port of the side it
/// rewrites, and what the flow's TCP state needs. 24 bytes: the rest of the translated
/// tuple is the key's, so it is not stored, and times are 32-bit [`Tick`]s. With the key
/// and the kernel's per-element overhead an entry costs 104 bytes, ~117 per flow with the
/// table of unreplied flows (see `netplane bench`'s memory figure).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct CtEntry<A = u32> {
    pub addr: A,
    pub port: u16,
    /// [`seen`] flags, TCP only.
    pub seen: u8,
    /// [`kind`], for display.
    pub kind: u8,
    /// When the flow was created and when its last packet was seen.
    pub created: Tick,
    pub last_seen: Tick,
    /// TCP: a recent sequence number of each [`Direction`] (original, reply), for
    /// [`track_seq`]; valid once [`seen::ORIGINAL_SEQ`] / [`seen::REPLY_SEQ`] says so.
    pub seq: [u32; 2],
}

/// Conntrack time: CLOCK_MONOTONIC (`bpf_ktime_get_ns()`) in ticks of 2^20 ns (1.05 ms),
/// in 32 bits. It wraps every 52 days; ages are taken by wrapping subtraction, which is
/// right for any age below 26 days, and lifetimes are limited to 7 days
/// ([`MAX_LIFETIME_S`]); the agent collects entries long before they could look young again.
pub type Tick = u32;

pub const TICK_SHIFT: u32 = 20;

/// The longest lifetime a conntrack entry may be given, in seconds.
pub const MAX_LIFETIME_S: u32 = 7 * 24 * 3600;

pub const fn tick(ns: u64) -> Tick {
    (ns >> TICK_SHIFT) as Tick
}

/// How long ago `then` was at `now`, in ticks; 0 for a `then` a little in the future,
/// which another CPU may have written between our clock read and our look.
pub const fn ticks_since(now: Tick, then: Tick) -> u32 {
    let d = now.wrapping_sub(then) as i32;
    if d < 0 { 0 } else { d as u32 }
}

/// Ticks in seconds, rounded down.
pub const fn ticks_to_s(t: u32) -> u64 {
    ((t as u64) << TICK_SHIFT) / 1_000_000_000
}

/// Seconds in ticks, rounded up.
pub const fn s_to_ticks(s: u32) -> u32 {
    let ns = s as u64 * 1_000_000_000;
    ns.div_ceil(1 << TICK_SHIFT) as u32
}

/// Connection-tracking lifetimes, in seconds. Defaults as Cilium's (bpf/lib/conntrack.h:
/// CT_CONNECTION_LIFETIME_TCP 6 h, CT_SYN_TIMEOUT 60 s, CT_CLOSE_TIMEOUT 10 s,
/// CT_CONNECTION_LIFETIME_NONTCP 60 s).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub icmp: u32,
    pub _pad: u32,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            udp: 60,
            icmp: 30,
            _pad: 0,
        }
    }
}

impl Timeouts {
    /// How long an entry lives after its last packet, from what it has seen.
    pub const fn lifetime_s(&self, proto: u8, seen_flags: u8) -> u32 {
        match proto {
            IPPROTO_TCP if seen_flags & (seen::FIN | seen::RST) != 0 => self.tcp_closing,
            IPPROTO_TCP if seen_flags & seen::ACK != 0 => self.tcp_established,
            IPPROTO_TCP => self.tcp_syn,
            IPPROTO_UDP => self.udp,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => self.icmp,
            _ => self.udp,
        }
    }

    /// Whether `e` (of protocol `proto`) has expired at `now`.
    pub const fn expired<A>(&self, proto: u8, e: &CtEntry<A>, now: Tick) -> bool {
        ticks_since(now, e.last_seen) > s_to_ticks(self.lifetime_s(proto, e.seen))
    }
}

/// Which way a packet goes in its flow, as its conntrack entry knows the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Original,
    Reply,
}

impl Direction {
    /// The direction of a packet that found entry `e_kind`: by its own tuple (the key is the
    /// packet's tuple at the stage), or through a key made for it (`by_own_tuple` false: a
    /// masqueraded flow's original direction, found by its port, or a published port's,
    /// through the backend, or a routed container's, by its reversed tuple). Masqueraded,
    /// published and routed flows are keyed by their replies' tuple; hairpin keeps an entry per direction, its replies' marked [`kind::REPLY`].
    /// (An ICMP error about a masqueraded flow, from outside, finds it as its replies do,
    /// and counts as one, where nf_conntrack would not set IPS_SEEN_REPLY: it takes a
    /// packet of the original direction after it to assure the flow all the same.)
    pub const fn of(by_own_tuple: bool, e_kind: u8) -> Direction {
        if by_own_tuple && e_kind != kind::HAIRPIN {
            Direction::Reply
        } else {
            Direction::Original
        }
    }
}

/// What a packet going `dir` does to an entry of the unreplied table with [`seen`] flags
/// `seen_flags`: its new flags, and whether it moves to the main table now (the flow is
/// assured: an original packet after a reply; see [`CtTables`]).
pub const fn assure(seen_flags: u8, dir: Direction) -> (u8, bool) {
    match dir {
        Direction::Reply => (seen_flags | seen::REPLIED, false),
        Direction::Original => (seen_flags, seen_flags & seen::REPLIED != 0),
    }
}

/// How far, in sequence space, a FIN or RST may lie from the sequence number its direction
/// last showed, and still count. nf_conntrack checks segments against each side's tracked
/// window (tcp_in_window()); netplane keeps one number per direction, which advances in
/// [`TCP_SEQ_STEP`]s (a write per 64 KiB, not per packet). A legitimate FIN or RST lies
/// within a segment and a step of it (a RST without a socket carries the ACK it answers,
/// which is the same place); a blind one, at a random sequence number, falls inside with a
/// chance of 2 × 2^18 / 2^32 = 1/8,192 per guess. RFC 5961's receivers are stricter still.
pub const TCP_CLOSE_WINDOW: u32 = 1 << 18;

/// How far a direction's sequence number moves before its entry is written again.
pub const TCP_SEQ_STEP: u32 = 1 << 16;

/// A TCP segment going `dir` with [`seen`] flags `flags` and sequence number `seq`, met by
/// an entry with [`seen`] flags `seen_flags` and the sequence number `seq_of_dir` for that
/// direction. Returns the entry's new flags and sequence number for `dir`, and the flags
/// that count: none, for a segment outside [`TCP_CLOSE_WINDOW`] (nf_conntrack's "invalid":
/// it is translated, but changes no state), so that a blind RST or FIN cannot shorten a
/// live flow's life. Only segments within the window move the sequence number, so that a
/// blind segment cannot move it either. The first segment of a direction sets it, as does
/// a SYN that reopens a closed flow (a new incarnation, new sequence numbers: the other
/// direction's number is forgotten too).
pub const fn track_seq(
    seen_flags: u8,
    seq_of_dir: u32,
    dir: Direction,
    flags: u8,
    seq: u32,
) -> (u8, u32, u8) {
    let bit = match dir {
        Direction::Original => seen::ORIGINAL_SEQ,
        Direction::Reply => seen::REPLY_SEQ,
    };
    let closed = seen_flags & (seen::FIN | seen::RST) != 0;
    if closed && flags & (seen::SYN | seen::ACK) == seen::SYN {
        let fresh = seen_flags & !(seen::ORIGINAL_SEQ | seen::REPLY_SEQ);
        return (fresh | bit, seq, flags);
    }
    if seen_flags & bit == 0 {
        return (seen_flags | bit, seq, flags);
    }
    let delta = seq.wrapping_sub(seq_of_dir) as i32;
    if delta > TCP_CLOSE_WINDOW as i32 || delta < -(TCP_CLOSE_WINDOW as i32) {
        return (seen_flags, seq_of_dir, 0);
    }
    let moved = if delta > TCP_SEQ_STEP as i32 {
        seq
    } else {
        seq_of_dir
    };
    (seen_flags, moved, flags)
}

/// Whether a TCP segment of the original direction with acknowledgment number `ack` (None:
/// no ACK flag) acknowledges what the reply direction sent, whose sequence number the
/// entry keeps as `reply_seq` (valid once [`seen::REPLY_SEQ`] is in `seen_flags`): within
/// [`TCP_CLOSE_WINDOW`] of it, as the handshake's third packet is (SYN-ACK's + 1). Only
/// such a segment assures a TCP flow, as nf_conntrack's SYN_RECV → ESTABLISHED needs an
/// ACK in window: a spoofer who never saw the SYN-ACK guesses right once in 8,192.
pub const fn acknowledges(seen_flags: u8, reply_seq: u32, ack: Option<u32>) -> bool {
    let Some(ack) = ack else { return false };
    if seen_flags & seen::REPLY_SEQ == 0 {
        return false;
    }
    let delta = ack.wrapping_sub(reply_seq) as i32;
    delta <= TCP_CLOSE_WINDOW as i32 && delta >= -(TCP_CLOSE_WINDOW as i32)
}

/// The [`seen`] flags for a TCP header's flag byte (byte 13).
pub const fn tcp_seen(flags: u8) -> u8 {
    use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};
    let mut s = 0;
    if flags & SYN != 0 {
        s |= seen::SYN;
    }
    if flags & ACK != 0 {
        s |= seen::ACK;
    }
    if flags & FIN != 0 {
        s |= seen::FIN;
    }
    if flags & RST != 0 {
        s |= seen::RST;
    }
    s
}

/// A published port: the key of the published-ports map. `addr` 0 means every local
/// address. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Zeroable)]
pub struct PortKey<A = u32> {
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Where a published port goes: a container's address and port (network byte order), and
/// the gateway of its network, which hairpinned flows are masqueraded to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct Backend<A = u32> {
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
    pub gateway: A,
}

/// A container network, the value of the subnet LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct NetInfo<A = u32> {
    /// A number unique per network, never 0: two addresses are on one network iff equal.
    /// (The agent derives it from the subnet, so that it stays while the maps change.)
    pub id: u32,
    pub gateway: A,
    /// Its [`gateway_mode`].
    pub mode: u8,
    pub _pad: [u8; 3],
}

impl<A> NetInfo<A> {
    /// Whether its containers' packets to the outside are masqueraded, and its published
    /// ports DNATed (`nat`, `nat-unprotected`).
    pub const fn nat(&self) -> bool {
        matches!(self.mode, gateway_mode::NAT | gateway_mode::NAT_UNPROTECTED)
    }
}

/// A network's gateway mode ([`NetInfo::mode`]), Docker 28's: what the programs do between
/// its containers and the outside ("outside": neither a local container network nor a
/// never-NAT prefix).
pub mod gateway_mode {
    /// Masquerade out, published host ports DNATed in; nothing else from the outside
    /// reaches a container's address directly (`direct-routing`).
    pub const NAT: u8 = 0;
    /// As [`NAT`], but the outside may reach any container port directly.
    pub const NAT_UNPROTECTED: u8 = 1;
    /// No translation: containers go out with their own addresses. From the outside only
    /// the container ports of their publish entries, ICMP echo requests and the replies of
    /// flows they opened ([`super::kind::ROUTED`]) come in.
    pub const ROUTED: u8 = 2;
    /// Nothing in or out, except between its own containers (`isolated-network`).
    pub const ISOLATED: u8 = 3;
}

/// A container as the uplink's programs deliver to it: the value of the endpoints map,
/// keyed by its address (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Endpoint {
    /// The host end of its veth pair, on which bpf_redirect() transmits to the container.
    pub ifindex: u32,
    /// The MTU of that veth pair.
    pub mtu: u32,
    /// The device its gateway address is on, from which the kernel routes what it sends:
    /// its bridge, or on ptp its host veth. netplane_from_container, at the host veth of
    /// a bridge port, routes as if from there (policy rules by `iif`, the route cache).
    pub gateway_ifindex: u32,
    pub mac: [u8; 6],
    /// Its gateway's (its bridge's) MAC: the source of what the host sends it.
    pub gateway_mac: [u8; 6],
}

/// Where the packets that took the short way went (crate netplane-ebpf's `forward`): the
/// index into the per-CPU counter array.
pub mod forwarded {
    /// From the uplink into a container: transmitted on its host veth (bpf_redirect), or,
    /// pure ACKs, sent to the bridge (bpf_redirect_neigh).
    pub const INTO_CONTAINER: u32 = 0;
    /// Out of a container, to the uplink's next hop (bpf_redirect_neigh).
    pub const OUT_OF_CONTAINER: u32 = 1;
    /// Out of a container, at its host veth before the bridge (netplane_from_container).
    pub const FROM_CONTAINER: u32 = 2;
    /// From the uplink into a container, by bpf_redirect_peer (flags::PEER_DELIVERY).
    pub const INTO_CONTAINER_PEER: u32 = 3;
    pub const SLOTS: u32 = 4;
}

/// Per-instance settings, the single entry of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DpConfig {
    /// The uplink's address that masquerade uses (network byte order).
    pub uplink_addr: u32,
    /// Source ports masquerade may allocate when the original one is taken (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub timeouts: Timeouts,
    /// The netns cookie of the namespace netplane manages (for the cgroup programs).
    pub netns_cookie: u64,
    /// How many networks there are: with one, there is nothing to isolate, and the
    /// bridge programs skip the subnet lookups.
    pub networks: u32,
    /// The uplink's ifindex: packets that came in through it never need the bridges' src
    /// stage (only hairpinned flows do).
    pub uplink_ifindex: u32,
    /// [`flags`].
    pub flags: u32,
    /// The uplink's IPv6 address that masquerade uses; :: when it has none.
    pub uplink_addr6: Ip6,
    /// Which events the programs write into the monitor's ring buffer
    /// ([`crate::observe::monitor`] bits); 0 unless a `netplane monitor` runs.
    pub monitor: u32,
}

/// Switches in [`DpConfig::flags`].
pub mod flags {
    /// Translated packets of known flows go straight to their next hop
    /// (bpf_redirect_neigh), past the kernel's forwarding path and netfilter.
    pub const FAST_FORWARD: u32 = 1;
    /// Some network is not in a nat mode (`routed`, `isolated`): a container's packet on
    /// its way out needs its network's mode (one subnet lookup, skipped without this).
    pub const MODES: u32 = 2;
    /// Some network is `ptp`: containers of one network talk through the host, so the
    /// hooks of their host veths see that traffic, and must tell it from the outside.
    pub const PTP: u32 = 4;
    /// The never-NAT map holds prefixes (`[[routes]]`): consulted before masquerade, and for
    /// what comes in from the outside straight to a container.
    pub const ROUTES: u32 = 8;
    /// Some network is `isolated`: the bridges' egress looks at what the host sends.
    pub const ISOLATED: u32 = 16;
    /// Bridge networks' host veths carry `netplane_from_container`: a container's packet of
    /// a known translated flow leaves for the uplink there, before the bridge.
    pub const FROM_CONTAINER: u32 = 32;
    /// Into containers by `bpf_redirect_peer` (straight to the container's ingress, no
    /// backlog hop) rather than `bpf_redirect` to the host veth.
    pub const PEER_DELIVERY: u32 = 64;
    /// With PEER_DELIVERY, pure ACKs too (otherwise they cross the bridge: a faster ACK
    /// path slowed a container's bulk sender on veth, see forward.rs).
    pub const PEER_ACKS: u32 = 128;
}

/// How many ports masquerade tries after the original one.
pub const NAT_PORT_RETRIES: u32 = 16;

/// The `i`-th candidate port in `[min, max]` for a flow whose hash is `hash`: spread by the
/// hash, then linear, as Cilium's snat_v4_new_mapping() retries.
pub const fn nat_port_candidate(hash: u32, i: u32, min: u16, max: u16) -> u16 {
    let span = (max as u32).saturating_sub(min as u32) + 1;
    (min as u32 + (hash.wrapping_add(i)) % span) as u16
}

/// A cheap, stable mix of a tuple, to spread port choices.
pub fn tuple_hash<A: Addr>(k: &CtKey<A>) -> u32 {
    let mut h =
        k.saddr.fold() ^ k.daddr.fold().rotate_left(7) ^ ((k.sport as u32) << 16 | k.dport as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h
}

/// Why a packet was dropped: the index into the per-CPU drop counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated or inconsistent headers where netplane had to translate.
    Malformed = 0,
    /// A container sent to another network's container directly.
    Isolation = 1,
    /// Masquerade found no free source port.
    NatPortExhausted = 2,
    /// A conntrack entry could not be inserted (map full, or a race lost twice), or a packet
    /// from the outside straight to a `nat-unprotected` container would start a flow whose
    /// tuple clashes with one of a translated flow of that container (nf_conntrack's
    /// insert_failed, which drops the packet too).
    CtInsertFailed = 3,
    /// A TCP segment without SYN that would open a new masqueraded flow.
    TcpNoSynNewFlow = 4,
    /// A rewrite helper failed.
    RewriteFailed = 5,
    /// A non-first fragment of a flow whose first fragment was not seen.
    FragmentUnknown = 6,
    /// A packet from outside `lo` to a port published on 127.0.0.1 (moby#45610).
    LoopbackGuard = 7,
    /// Not a drop: an assured flow could not enter the full main conntrack table, and goes
    /// on from the table of unreplied flows, whose LRU may evict it (see [`CtTables`]).
    CtFull = 8,
    /// A container's packet to the outside that masquerade cannot translate (an ICMP
    /// error about no known flow, an ICMP type that is neither a query nor an error,
    /// another protocol towards a peer that another container already talks to in it):
    /// it must not leave with the container's address.
    Untranslatable = 9,
    /// The first fragment of a datagram to a translated flow, after a later fragment of it
    /// went ahead untranslated: the datagram cannot be completed, so it is dropped whole
    /// (the later fragments expire in the host's reassembly queue). TC ingress runs before
    /// the kernel's reassembly, and nothing after it can rewrite the datagram: see the
    /// README, "Fragments".
    FragmentReordered = 10,
    /// From the outside (through the uplink) straight to a container's address, not part
    /// of any flow netplane translated or tracked, and not open in the container network's
    /// gateway mode: `nat` (only published host ports reach containers), or `routed` (a
    /// container port that no publish entry names).
    DirectRouting = 11,
    /// Into or out of an `isolated` network, other than between its own containers.
    IsolatedNetwork = 12,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::Malformed,
        DropReason::Isolation,
        DropReason::NatPortExhausted,
        DropReason::CtInsertFailed,
        DropReason::TcpNoSynNewFlow,
        DropReason::RewriteFailed,
        DropReason::FragmentUnknown,
        DropReason::LoopbackGuard,
        DropReason::CtFull,
        DropReason::Untranslatable,
        DropReason::FragmentReordered,
        DropReason::DirectRouting,
        DropReason::IsolatedNetwork,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Isolation => "isolation",
            DropReason::NatPortExhausted => "nat-port-exhausted",
            DropReason::CtInsertFailed => "ct-insert-failed",
            DropReason::TcpNoSynNewFlow => "tcp-no-syn-new-flow",
            DropReason::RewriteFailed => "rewrite-failed",
            DropReason::FragmentUnknown => "fragment-unknown",
            DropReason::LoopbackGuard => "loopback-guard",
            DropReason::CtFull => "ct-full",
            DropReason::Untranslatable => "untranslatable",
            DropReason::FragmentReordered => "fragment-reordered",
            DropReason::DirectRouting => "direct-routing",
            DropReason::IsolatedNetwork => "isolated-network",
        }
    }
}

pub const DROP_REASONS: u32 = DropReason::ALL.len() as u32;

/// The key of the fragment map: later fragments carry no ports, so they follow the
/// translation of their first fragment by (addresses, IP id, protocol), as Cilium's
/// IPV4_FRAG_DATAGRAMS_MAP does. The id is IPv4's 16-bit identification, or the 32-bit
/// one of IPv6's fragment header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Zeroable)]
pub struct FragKey<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub id: u32,
    pub proto: u8,
    /// As in [`CtKey::stage`].
    pub stage: u8,
    pub _pad: [u8; 2],
}

/// The address a stage writes into the later fragments of a datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct FragEntry<A = u32> {
    pub addr: A,
    pub last_seen: Tick,
}

/// Map names, shared by the programs and the agent.
pub mod maps {
    pub const CT: &str = "NP_CT";
    /// The unreplied flows (see [`super::CtTables`]).
    pub const CT_NEW: &str = "NP_CT_NEW";
    pub const FRAGS: &str = "NP_FRAGS";
    /// Later fragments that arrived before their first fragment (see
    /// [`super::DropReason::FragmentReordered`]).
    pub const FRAGS_EARLY: &str = "NP_FRAGS_EARLY";
    pub const PUBLISHED: &str = "NP_PUBLISHED";
    pub const SUBNETS: &str = "NP_SUBNETS";
    pub const LOCAL_ADDRS: &str = "NP_LOCAL_ADDRS";
    pub const CONFIG: &str = "NP_CONFIG";
    pub const DROPS: &str = "NP_DROPS";
    pub const SOCK_REV: &str = "NP_SOCK_REV";
    pub const FORWARDED: &str = "NP_FORWARDED";
    pub const ENDPOINTS: &str = "NP_ENDPOINTS";
    /// Masquerade's ports of flows that could not keep their own: a cache of the search
    /// (see netplane-ebpf's nat_port), pinned so that a new `up` keeps them.
    pub const MASQ_PORTS: &str = "NP_MASQ_PORTS";
    /// The never-NAT prefixes: the `[[routes]]` subnets (other hosts' containers).
    pub const NEVER_NAT: &str = "NP_NEVER_NAT";
    /// The container ports of `routed` networks open to the outside.
    pub const ROUTED_PORTS: &str = "NP_ROUTED_PORTS";
    /// The IPv6 counterparts of the maps above, by the same key and value types over
    /// [`crate::addr::Ip6`] (names stay within the kernel's 15 characters).
    pub const CT6: &str = "NP6_CT";
    pub const CT6_NEW: &str = "NP6_CT_NEW";
    pub const FRAGS6: &str = "NP6_FRAGS";
    pub const FRAGS6_EARLY: &str = "NP6_FRAGS_EARLY";
    pub const PUBLISHED6: &str = "NP6_PUBLISHED";
    pub const SUBNETS6: &str = "NP6_SUBNETS";
    pub const LOCAL_ADDRS6: &str = "NP6_LOCAL_ADDRS";
    pub const SOCK_REV6: &str = "NP6_SOCK_REV";
    pub const ENDPOINTS6: &str = "NP6_ENDPOINTS";
    pub const MASQ_PORTS6: &str = "NP6_MASQ_PORTS";
    pub const NEVER_NAT6: &str = "NP6_NEVER_NAT";
    pub const ROUTED_PORTS6: &str = "NP6_ROUTED";
    /// Every map the agent pins, so that the data plane outlives it.
    pub const PINNED: [&str; 32] = [
        CT,
        CT_NEW,
        MASQ_PORTS,
        FRAGS,
        FRAGS_EARLY,
        PUBLISHED,
        SUBNETS,
        LOCAL_ADDRS,
        CONFIG,
        DROPS,
        SOCK_REV,
        FORWARDED,
        ENDPOINTS,
        NEVER_NAT,
        ROUTED_PORTS,
        CT6,
        CT6_NEW,
        MASQ_PORTS6,
        FRAGS6,
        FRAGS6_EARLY,
        PUBLISHED6,
        SUBNETS6,
        LOCAL_ADDRS6,
        SOCK_REV6,
        ENDPOINTS6,
        NEVER_NAT6,
        ROUTED_PORTS6,
        crate::observe::maps::EVENTS,
        crate::observe::maps::EVENTS_LOST,
        crate::observe::maps::TRANSLATED,
        crate::observe::maps::NAT_STATS,
        crate::observe::maps::CT_STATS,
    ];
}

/// The key of the socket reverse-NAT map: for a UDP socket whose `sendmsg` was redirected
/// to a container, the container's address and port, so that `recvmsg` can show the
/// address the application sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Zeroable)]
pub struct SockRevKey<A = u32> {
    /// The socket's cookie, in two halves: with a `u64` an IPv6 key would need padding.
    pub cookie: [u32; 2],
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
}

impl<A: Addr> SockRevKey<A> {
    pub fn new(cookie: u64, addr: A, port: u16) -> Self {
        SockRevKey {
            cookie: bytemuck::cast(cookie),
            addr,
            port,
            _pad: 0,
        }
    }
}

/// The address and port a socket originally sent to (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct SockRevEntry<A = u32> {
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
}

/// `Pod` for the generic map types, per family. bytemuck's derive cannot check a generic
/// struct for padding, so each instance states its size, which the compiler checks
/// against the sum of its fields': equal means no padding, and with all fields `Pod`
/// every bit pattern is valid.
macro_rules! pod_per_family {
    ($($t:ident { $($f:ty),* } = $v4:literal, $v6:literal;)*) => {$(
        // SAFETY: repr(C), every field Pod, no padding (the assertions below).
        unsafe impl Pod for $t<u32> {}
        unsafe impl Pod for $t<Ip6> {}
        const _: () = {
            type A = u32;
            assert!(core::mem::size_of::<$t<A>>() == $v4);
            assert!(0 $(+ core::mem::size_of::<$f>())* == $v4);
        };
        const _: () = {
            type A = Ip6;
            assert!(core::mem::size_of::<$t<A>>() == $v6);
            assert!(0 $(+ core::mem::size_of::<$f>())* == $v6);
        };
        #[cfg(feature = "user")]
        // SAFETY: as for bytemuck's Pod above.
        unsafe impl aya::Pod for $t<u32> {}
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t<Ip6> {}
    )*};
}

pod_per_family! {
    CtKey { A, A, u16, u16, u8, u8, [u8; 2] } = 16, 40;
    CtEntry { A, u16, u8, u8, Tick, Tick, [u32; 2] } = 24, 36;
    PortKey { A, u16, u8, u8 } = 8, 20;
    Backend { A, u16, u16, A } = 12, 36;
    NetInfo { u32, A, u8, [u8; 3] } = 12, 24;
    FragKey { A, A, u32, u8, u8, [u8; 2] } = 16, 40;
    FragEntry { A, Tick } = 8, 20;
    SockRevKey { [u32; 2], A, u16, u16 } = 16, 28;
    SockRevEntry { A, u16, u16 } = 8, 20;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: repr(C), padding explicit, valid for any bit pattern (Pod derives check
    // both).
    unsafe impl aya::Pod for DpConfig {}
    unsafe impl aya::Pod for Endpoint {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ack_of_the_reply_assures() {
        let s = seen::REPLIED | seen::REPLY_SEQ;
        let synack = 0xffff_fff0;
        assert!(
            acknowledges(s, synack, Some(synack.wrapping_add(1))),
            "across the wrap"
        );
        assert!(acknowledges(s, synack, Some(synack.wrapping_add(60_000))));
        assert!(
            !acknowledges(s, synack, Some(synack.wrapping_add(1 << 20))),
            "blind"
        );
        assert!(
            !acknowledges(s, synack, Some(synack.wrapping_sub(1 << 20))),
            "blind"
        );
        assert!(!acknowledges(s, synack, None), "no ACK flag");
        assert!(
            !acknowledges(seen::REPLIED, synack, Some(synack.wrapping_add(1))),
            "no reply sequence number known"
        );
    }

    #[test]
    fn reversed_tuple_is_the_reply() {
        let k = CtKey::new(1, 2, 10, 20, IPPROTO_TCP, Side::Src);
        let r = k.reversed(Side::Dst);
        assert_eq!(
            (r.saddr, r.daddr, r.sport, r.dport, r.stage),
            (2, 1, 20, 10, Side::Dst as u8)
        );
        assert_eq!(r.reversed(Side::Src), k);
    }

    #[test]
    fn lifetimes_follow_tcp_state() {
        let t = Timeouts::default();
        assert_eq!(t.lifetime_s(IPPROTO_TCP, seen::SYN), 60);
        assert_eq!(t.lifetime_s(IPPROTO_TCP, seen::SYN | seen::ACK), 21_600);
        assert_eq!(t.lifetime_s(IPPROTO_TCP, seen::ACK | seen::FIN), 10);
        assert_eq!(t.lifetime_s(IPPROTO_TCP, seen::RST), 10);
        assert_eq!(t.lifetime_s(IPPROTO_UDP, 0), 60);
        assert_eq!(t.lifetime_s(IPPROTO_ICMP, 0), 30);
        assert_eq!(t.lifetime_s(IPPROTO_ICMPV6, 0), 30, "ICMPv6 lives as ICMP");
        let e = CtEntry::<u32> {
            last_seen: tick(1_000_000_000),
            seen: seen::SYN,
            ..Default::default()
        };
        assert!(!t.expired(IPPROTO_TCP, &e, tick(61_000_000_000)));
        assert!(t.expired(IPPROTO_TCP, &e, tick(61_002_000_000)));
        // Written by another CPU just after our clock read: young, not ancient.
        assert!(!t.expired(IPPROTO_TCP, &e, e.last_seen - 1));
    }

    #[test]
    fn ticks_wrap_without_losing_ages() {
        let before_wrap = u32::MAX - 5;
        assert_eq!(ticks_since(before_wrap.wrapping_add(10), before_wrap), 10);
        assert_eq!(
            ticks_to_s(s_to_ticks(MAX_LIFETIME_S)),
            MAX_LIFETIME_S as u64
        );
        assert!(s_to_ticks(MAX_LIFETIME_S) < i32::MAX as u32);
        let e = CtEntry::<u32> {
            last_seen: before_wrap,
            ..Default::default()
        };
        let t = Timeouts::default();
        assert!(!t.expired(IPPROTO_UDP, &e, before_wrap.wrapping_add(s_to_ticks(59))));
        assert!(t.expired(IPPROTO_UDP, &e, before_wrap.wrapping_add(s_to_ticks(61))));
    }

    #[test]
    fn only_an_original_packet_after_a_reply_assures_a_flow() {
        use Direction::{Original, Reply};
        // A masqueraded or published flow: its one entry is keyed by the replies' tuple.
        assert_eq!(Direction::of(true, kind::MASQUERADE), Reply);
        assert_eq!(Direction::of(false, kind::PUBLISHED), Original);
        assert_eq!(Direction::of(true, kind::HAIRPIN), Original);
        assert_eq!(Direction::of(true, kind::HAIRPIN | kind::REPLY), Reply);
        // A routed container's flow: keyed by its replies' tuple, as a masqueraded one.
        assert_eq!(Direction::of(true, kind::ROUTED), Reply);
        assert_eq!(Direction::of(false, kind::ROUTED), Original);
        assert_eq!(Direction::of(true, kind::DIRECT), Reply);
        assert_eq!(Direction::of(false, kind::DIRECT), Original);
        // A spoofed SYN: SYN, then the SYN-ACK to nowhere, and no third ACK.
        let (s, promote) = assure(seen::SYN, Original);
        assert!(!promote);
        let (s, promote) = assure(s | seen::SYN | seen::ACK, Reply);
        assert!(!promote);
        assert_eq!(s & seen::REPLIED, seen::REPLIED);
        // The third ACK assures it.
        assert!(assure(s, Original).1);
        // Replies alone never do (a UDP flood answered once per source).
        assert!(!assure(assure(0, Reply).0, Reply).1);
        // The flag does not change lifetimes.
        let t = Timeouts::default();
        assert_eq!(
            t.lifetime_s(IPPROTO_TCP, seen::SYN | seen::REPLIED),
            t.tcp_syn
        );
        assert_eq!(t.lifetime_s(IPPROTO_UDP, seen::REPLIED), t.udp);
    }

    #[test]
    fn a_fin_or_rst_counts_only_near_its_direction_s_sequence() {
        use Direction::{Original, Reply};
        let fin_rst = seen::FIN | seen::RST;
        // The first segment of a direction sets its number.
        let (s, hi, f) = track_seq(seen::SYN, 0, Reply, seen::SYN | seen::ACK, 5_000);
        assert_eq!(
            (s & seen::REPLY_SEQ, hi, f),
            (seen::REPLY_SEQ, 5_000, seen::SYN | seen::ACK)
        );
        // Data moves it in steps, a write per TCP_SEQ_STEP.
        let (_, hi2, _) = track_seq(s, hi, Reply, seen::ACK, 5_000 + 1_448);
        assert_eq!(hi2, 5_000, "within a step: no write");
        let (_, hi2, _) = track_seq(s, hi, Reply, seen::ACK, 5_000 + TCP_SEQ_STEP + 1);
        assert_eq!(hi2, 5_000 + TCP_SEQ_STEP + 1);
        // A RST or FIN at the flow's place counts, also a little behind it (retransmitted)
        // and across the wrap of sequence space.
        assert_eq!(track_seq(s, hi, Reply, seen::RST, 5_000).2, seen::RST);
        assert_eq!(
            track_seq(s, hi, Reply, seen::FIN | seen::ACK, 4_000).2 & fin_rst,
            seen::FIN
        );
        let (w, whi, _) = track_seq(0, 0, Original, seen::ACK, u32::MAX - 10);
        assert_eq!(track_seq(w, whi, Original, seen::RST, 20).2, seen::RST);
        // A blind one, anywhere else, changes nothing: not the flags, not the number.
        for blind in [
            5_000 + TCP_CLOSE_WINDOW + 1,
            5_000u32.wrapping_sub(TCP_CLOSE_WINDOW + 1),
            0x8000_0000,
        ] {
            assert_eq!(track_seq(s, hi, Reply, seen::RST, blind), (s, hi, 0));
            assert_eq!(track_seq(s, hi, Reply, seen::ACK, blind), (s, hi, 0));
        }
        // A SYN reopening a closed flow starts new numbers, for both directions.
        let closed = s | seen::ORIGINAL_SEQ | seen::RST;
        let (s2, hi3, f) = track_seq(closed, hi, Original, seen::SYN, 0x7777_0000);
        assert_eq!((hi3, f), (0x7777_0000, seen::SYN));
        assert_eq!(
            s2 & (seen::ORIGINAL_SEQ | seen::REPLY_SEQ),
            seen::ORIGINAL_SEQ
        );
        // ... but a blind SYN into a live flow does not.
        assert_eq!(track_seq(s, hi, Reply, seen::SYN, 0x7777_0000).2, 0);
    }

    #[test]
    fn tcp_flag_bits() {
        assert_eq!(tcp_seen(0x02), seen::SYN);
        assert_eq!(tcp_seen(0x12), seen::SYN | seen::ACK);
        assert_eq!(tcp_seen(0x11), seen::FIN | seen::ACK);
        assert_eq!(tcp_seen(0x04), seen::RST);
    }

    #[test]
    fn port_candidates_stay_in_range_and_spread() {
        let (min, max) = (32768, 60999);
        let ports: [u16; NAT_PORT_RETRIES as usize] =
            core::array::from_fn(|i| nat_port_candidate(0xdead_beef, i as u32, min, max));
        for (i, p) in ports.iter().enumerate() {
            assert!((min..=max).contains(p));
            assert!(!ports[..i].contains(p), "retries try distinct ports");
        }
        assert_eq!(nat_port_candidate(7, 0, 5000, 5000), 5000);
        let a = tuple_hash(&CtKey::new(1, 2, 3, 4, 6, Side::Src));
        let b = tuple_hash(&CtKey::new(1, 2, 3, 5, 6, Side::Src));
        assert_ne!(a, b);
    }

    /// The generic map types are checked at compile time (pod_per_family!); these are
    /// the others.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<DpConfig>(), 72);
        assert_eq!(core::mem::size_of::<Endpoint>(), 24);
    }

    #[test]
    fn an_ipv4_flow_costs_what_it_did_before_ipv6() {
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtEntry>(), 24);
        assert_eq!(core::mem::size_of::<CtKey<Ip6>>(), 40);
        assert_eq!(core::mem::size_of::<CtEntry<Ip6>>(), 36);
    }
}
