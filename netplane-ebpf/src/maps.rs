//! Every BPF map of the programs, apart from the logic that uses them (as Cilium's
//! `bpf/lib/*_map.h`), so that any module can reach any map without importing another
//! module's logic.
//!
//! The agent finds the maps by these names (`netplane_common::nat::maps`,
//! `netplane_common::counters::COUNTERS_MAP`), and a new `up` reuses the maps pinned
//! under them (`netplane_common::nat::maps::PINNED`): a map's name, type, key, value, size
//! and flags are shared with the agent and with the data plane already running.

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf};
use netplane_common::addr::Ip6;
use netplane_common::counters::{COUNTERS_SLOTS, Counters};
use netplane_common::nat::{
    Backend, CtEntry, CtKey, CtTables, DpConfig, Endpoint, FragEntry, FragKey, NetInfo, PortKey,
    SockRevEntry, SockRevKey, Tick, forwarded,
};
use netplane_common::observe::{DROP_SLOTS, PATH_SLOTS, Tuple, ct_stat, nat_stat};

/// The conntrack table's default size; `up` sets its own (`conntrack.max_entries`, and
/// CtTables::unreplied_entries of it) at load time (EbpfLoader::map_max_entries).
const CT_MAX_ENTRIES: u32 = 131_072;
const FRAG_MAX_ENTRIES: u32 = 8_192;

/// Connection tracking, the main table: the assured flows (see
/// netplane_common::nat::CtTables). A preallocated hash: it holds exactly `max_entries`,
/// and an insert into a full table fails (-E2BIG, alloc_htab_elem()) instead of evicting.
#[map(name = "NP_CT")]
pub static CT: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// Connection tracking, the unreplied flows: where every entry is born. An LRU with one
/// list for all CPUs, so that all of its entries are usable whichever CPU inserts
/// (BPF_F_NO_COMMON_LRU would give each CPU its own share to evict from).
#[map(name = "NP_CT_NEW")]
pub static CT_NEW: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(CtTables::unreplied_entries(CT_MAX_ENTRIES), 0);

/// The TCP sequence and acknowledgment numbers of the packet this CPU's program run is
/// handling, and which are valid (bit 0: the sequence number, bit 1: the ACK): set once
/// per packet by crate::conntrack::segment, read by its lookups (a
/// program run is never interleaved with another on its CPU: TC runs with bottom halves
/// off, and redirects happen after it returns).
#[map(name = "NP_SEGMENT")]
pub static SEGMENT: PerCpuArray<[u32; 3]> = PerCpuArray::with_max_entries(1, 0);

/// How many bytes of IPv6 extension headers crate::parse can follow: the realistic
/// chains (hop-by-hop options, a routing header, a fragment header) fit many times over.
/// A packet whose upper layer starts further is Malformed: dropped rather than sent out of
/// the uplink with a container's address.
pub const EXT_WINDOW: usize = 128;

/// The IPv6 extension headers of the packet this CPU's program run is parsing, copied
/// for crate::parse's walk (see SEGMENT on why a per-CPU slot is the run's own).
#[map(name = "NP_EXT_HEADERS")]
pub static EXT_HEADERS: PerCpuArray<[u8; EXT_WINDOW]> = PerCpuArray::with_max_entries(1, 0);

/// The IPv6 packet this CPU's program run is translating, as crate::parse read it: in a
/// map, not on the stack, where it would not fit beside the stages' frames (see
/// crate::family).
#[map(name = "NP6_PACKET")]
pub static PACKET6: PerCpuArray<[u64; 8]> = PerCpuArray::with_max_entries(1, 0);

/// The state of crate::nat_port's port search, per CPU (see its `Search`).
#[map(name = "NP_SEARCH")]
pub static SEARCH: PerCpuArray<[u64; 32]> = PerCpuArray::with_max_entries(1, 0);

/// What the first fragment of a datagram was translated to, for its later fragments.
#[map(name = "NP_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(FRAG_MAX_ENTRIES, 0);

/// Later fragments to a local address that came before their first fragment, by the key
/// the first fragment will look up: small, as such fragments are rare and its entries
/// only live until that first fragment. Its evictions cost only the count of
/// `fragment-reordered`, never a packet.
#[map(name = "NP_FRAGS_EARLY")]
pub static FRAGS_EARLY: LruHashMap<FragKey, Tick> = LruHashMap::with_max_entries(1_024, 0);

/// The instance's settings, in the single entry.
#[map(name = "NP_CONFIG")]
pub static CONFIG: Array<DpConfig> = Array::with_max_entries(1, 0);

/// The published ports, by local address (0: every local address), port and protocol.
/// Not preallocated, as its IPv6 twin: only `up` writes it, and 65,536 preallocated
/// elements cost every cold `up` their allocation (~2 ms, ~6 MB) for a few entries.
#[map(name = "NP_PUBLISHED")]
pub static PUBLISHED: HashMap<PortKey, Backend> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// The container networks, by prefix, with their gateway modes.
#[map(name = "NP_SUBNETS")]
pub static SUBNETS: LpmTrie<u32, NetInfo> = LpmTrie::with_max_entries(256, BPF_F_NO_PREALLOC);

/// The never-NAT prefixes, `[[routes]]`: other hosts' container subnets, whose traffic
/// with the local containers is never translated, either way (the value is unused).
#[map(name = "NP_NEVER_NAT")]
pub static NEVER_NAT: LpmTrie<u32, u32> = LpmTrie::with_max_entries(1_024, BPF_F_NO_PREALLOC);

/// The container ports of `routed` networks that the outside may reach directly (their
/// publish entries' container ports), by container address, port and protocol (the value
/// is unused). Not preallocated: most hosts have none.
#[map(name = "NP_ROUTED_PORTS")]
pub static ROUTED_PORTS: HashMap<PortKey, u32> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// The host's own addresses (the value is unused).
#[map(name = "NP_LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(1_024, 0);

/// The containers, by address: their host veth, MTU and MACs.
#[map(name = "NP_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(4_096, 0);

/// How many packets took the short way, per CPU and [`forwarded`] slot (the agent sums
/// the CPUs).
#[map(name = "NP_FORWARDED")]
pub static FORWARDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(forwarded::SLOTS, 0);

/// The route cache's key: a destination as reached from a device.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RouteKey<A> {
    pub daddr: A,
    pub from_ifindex: u32,
}

/// A route lookup's answer, and when it was made.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedRoute<A> {
    pub ifindex: u32,
    pub next_hop: A,
    pub mtu: u32,
    pub at: Tick,
}

/// bpf_fib_lookup() answers, per CPU, for crate::forward's ROUTE_TTL: a lookup costs
/// ~200 ns a packet, about a third of a translated packet's time on the bridge. A route
/// change applies to translated flows within ROUTE_TTL; neighbours are resolved per packet
/// regardless (bpf_redirect_neigh).
#[map(name = "NP_ROUTES")]
pub static ROUTES: LruPerCpuHashMap<RouteKey<u32>, CachedRoute<u32>> =
    LruPerCpuHashMap::with_max_entries(4_096, 0);

/// Packets and bytes per [`netplane_common::counters::Direction`], per CPU.
#[map(name = "NETPLANE_COUNTERS")]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(COUNTERS_SLOTS, 0);

/// Drops (packets and bytes) per CPU, by where they happened and why: one slot per
/// [`netplane_common::observe::drop_slot`] (family, hook, direction, and
/// [`netplane_common::nat::DropReason`]).
#[map(name = "NP_DROPS")]
pub static DROPS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

/// Packets and bytes translated, per CPU and [`netplane_common::observe::path_slot`].
#[map(name = "NP_TRANSLATED")]
pub static TRANSLATED: PerCpuArray<Counters> = PerCpuArray::with_max_entries(PATH_SLOTS, 0);

/// Masquerade's port allocations, per CPU and [`nat_stat`] slot.
#[map(name = "NP_NAT_STATS")]
pub static NAT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(nat_stat::SLOTS, 0);

/// Conntrack events that are not drops, per CPU and [`ct_stat`] slot.
#[map(name = "NP_CT_STATS")]
pub static CT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ct_stat::SLOTS, 0);

/// The monitor's events ([`netplane_common::observe::Event`]), written only while
/// `DpConfig::monitor` asks for them (see crate::events). Pinned, as the other maps are,
/// where `netplane monitor` opens it.
#[map(name = "NP_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that found the ring buffer full, per CPU: lost, their packets never.
#[map(name = "NP_EVENTS_LOST")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What a program run notes for its tail (crate::events), in [`NOTE`].
#[repr(C)]
pub struct Note {
    /// The reason of the run's drop (crate::metrics::drop), if it drops.
    pub reason: u32,
    /// The flow event pending (`observe::event_kind`), 0 for none.
    pub flow: u8,
    /// The flow's conntrack kind and TCP flags seen, for that event.
    pub ct_kind: u8,
    pub seen: u8,
    pub _pad: u8,
    /// The skb that crate::events' `begin` noted (its address): the tail writes an event
    /// only for it (see crate::events).
    pub skb: u64,
    /// When `begin` noted it (bpf_ktime_get_ns): an skb's address is reused, so a note
    /// left by a run whose tail found the monitor gone is told from this run's by age.
    pub noted_ns: u64,
    /// The packet's tuple as it arrived: written only while a monitor listens.
    pub orig: Tuple,
    /// An IPv4 packet's protocol, addresses and ports as it leaves (source port in the low
    /// half, wire order), for the event; an IPv6 packet's are in [`PACKET6`].
    pub proto4: u32,
    pub xlat4: [u32; 3],
}

/// What this CPU's program run has to say at its tail (see crate::events' `Note`): the
/// reason of its drop, and, while a monitor listens, the packet's tuple as it arrived and
/// the flow event pending. A map, not the stack (see SEGMENT on why the slot is the run's
/// own).
#[map(name = "NP_NOTE")]
pub static NOTE: PerCpuArray<Note> = PerCpuArray::with_max_entries(1, 0);

/// Where redirected UDP sockets really sent to, for recvmsg4 (see crate::sock).
#[map(name = "NP_SOCK_REV")]
pub static SOCK_REV: LruHashMap<SockRevKey, SockRevEntry> = LruHashMap::with_max_entries(65_536, 0);

/// The port masquerade gave a flow whose own source port was taken (network byte order,
/// as `Masquerade::Port`, in a u32), by the flow's original tuple at the src stage: a cache of crate::nat_port's
/// search, checked against the conntrack entry on every use, so an eviction costs a
/// search, never a wrong translation.
#[map(name = "NP_MASQ_PORTS")]
pub static MASQ_PORTS: LruHashMap<CtKey, u32> = LruHashMap::with_max_entries(65_536, 0);

// The IPv6 maps: the same design as the IPv4 ones above, over Ip6 keys and values, so
// that an IPv4 flow's memory stays what it was. The agent sizes the conntrack tables to
// 1 entry when no network has a subnet6 (they are preallocated).

#[map(name = "NP6_CT")]
pub static CT6: HashMap<CtKey<Ip6>, CtEntry<Ip6>> = HashMap::with_max_entries(CT_MAX_ENTRIES, 0);

#[map(name = "NP6_CT_NEW")]
pub static CT6_NEW: LruHashMap<CtKey<Ip6>, CtEntry<Ip6>> =
    LruHashMap::with_max_entries(CtTables::unreplied_entries(CT_MAX_ENTRIES), 0);

#[map(name = "NP6_FRAGS")]
pub static FRAGS6: LruHashMap<FragKey<Ip6>, FragEntry<Ip6>> =
    LruHashMap::with_max_entries(FRAG_MAX_ENTRIES, 0);

#[map(name = "NP6_FRAGS_EARLY")]
pub static FRAGS6_EARLY: LruHashMap<FragKey<Ip6>, Tick> = LruHashMap::with_max_entries(1_024, 0);

#[map(name = "NP6_PUBLISHED")]
pub static PUBLISHED6: HashMap<PortKey<Ip6>, Backend<Ip6>> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

#[map(name = "NP6_SUBNETS")]
pub static SUBNETS6: LpmTrie<Ip6, NetInfo<Ip6>> = LpmTrie::with_max_entries(256, BPF_F_NO_PREALLOC);

#[map(name = "NP6_NEVER_NAT")]
pub static NEVER_NAT6: LpmTrie<Ip6, u32> = LpmTrie::with_max_entries(1_024, BPF_F_NO_PREALLOC);

#[map(name = "NP6_ROUTED")]
pub static ROUTED_PORTS6: HashMap<PortKey<Ip6>, u32> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

#[map(name = "NP6_LOCAL_ADDRS")]
pub static LOCAL_ADDRS6: HashMap<Ip6, u32> = HashMap::with_max_entries(1_024, BPF_F_NO_PREALLOC);

#[map(name = "NP6_ENDPOINTS")]
pub static ENDPOINTS6: HashMap<Ip6, Endpoint> = HashMap::with_max_entries(4_096, BPF_F_NO_PREALLOC);

#[map(name = "NP_ROUTES6")]
pub static ROUTES6: LruPerCpuHashMap<RouteKey<Ip6>, CachedRoute<Ip6>> =
    LruPerCpuHashMap::with_max_entries(1_024, 0);

#[map(name = "NP6_SOCK_REV")]
pub static SOCK_REV6: LruHashMap<SockRevKey<Ip6>, SockRevEntry<Ip6>> =
    LruHashMap::with_max_entries(16_384, 0);

#[map(name = "NP6_MASQ_PORTS")]
pub static MASQ_PORTS6: LruHashMap<CtKey<Ip6>, u32> = LruHashMap::with_max_entries(16_384, 0);
