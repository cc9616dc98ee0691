//! The address families: what differs between IPv4 and IPv6 below the NAT logic (maps,
//! headers, checksums), behind one trait, so that every module above is written once and
//! compiled for both (`u32` and `Ip6`), as Cilium's `bpf/lib/nat.h` has its `snat_v4_*` and
//! `snat_v6_*` over one design.

use aya_ebpf::bindings::{
    bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
};
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap};
use aya_ebpf::programs::TcContext;
use netplane_common::addr::{Addr, Ip6};
use netplane_common::nat::{
    Backend, CtEntry, CtKey, DpConfig, Endpoint, FragEntry, FragKey, NetInfo, PortKey, Side,
    SockRevEntry, SockRevKey, Tick,
};
use netplane_common::packet::{ETH_P_IP, IPPROTO_ICMP};
use netplane_common::packet6::{ETH_P_IPV6, IPPROTO_ICMPV6};

use crate::csum;
use crate::maps::*;
use crate::parse::{self, Kind, Packet, Parsed, Quote};

/// An address family of the data plane: its maps, and how its packets are read and
/// rewritten.
pub trait Family: Addr {
    /// The frames' EtherType, in network byte order as read from the frame.
    const ETHER_TYPE: u16;
    /// ICMP or ICMPv6: the protocol whose queries are translated by identifier.
    const ICMP: u8;
    /// The ICMP echo request type, which a `routed` network's containers answer.
    const ECHO_REQUEST: u8;

    fn ct() -> &'static HashMap<CtKey<Self>, CtEntry<Self>>;
    fn ct_new() -> &'static LruHashMap<CtKey<Self>, CtEntry<Self>>;
    fn frags() -> &'static LruHashMap<FragKey<Self>, FragEntry<Self>>;
    fn frags_early() -> &'static LruHashMap<FragKey<Self>, Tick>;
    fn published() -> &'static HashMap<PortKey<Self>, Backend<Self>>;
    fn subnets() -> &'static LpmTrie<Self, NetInfo<Self>>;
    fn never_nat_prefixes() -> &'static LpmTrie<Self, u32>;
    fn routed_ports() -> &'static HashMap<PortKey<Self>, u32>;
    fn local_addrs() -> &'static HashMap<Self, u32>;
    fn endpoints() -> &'static HashMap<Self, Endpoint>;
    fn routes() -> &'static LruPerCpuHashMap<RouteKey<Self>, CachedRoute<Self>>;
    fn masq_ports() -> &'static LruHashMap<CtKey<Self>, u32>;
    fn sock_rev() -> &'static LruHashMap<SockRevKey<Self>, SockRevEntry<Self>>;

    /// The uplink's address, which masquerade writes.
    fn uplink(cfg: &DpConfig) -> Self;
    /// 127.0.0.0/8, or ::1.
    fn is_loopback(&self) -> bool;
    /// Whether ICMP type `t` is a query's request (see parse::query_request).
    fn query_request(t: u8) -> bool;

    /// Parses the frame: the packet in `local` (IPv4), or in this CPU's scratch slot
    /// (IPv6: its packet is too big for the stack beside the stages' frames).
    fn parse<'a>(
        ctx: &TcContext,
        local: &'a mut Packet<Self>,
    ) -> Option<(Kind, &'a mut Packet<Self>)>;
    /// Reads what the ICMP error `outer` quotes (see parse::quote4).
    fn quote(ctx: &TcContext, outer: &Packet<Self>, quote: &mut Quote<Self>) -> bool;
    /// Writes `new` as the packet's source or destination address, checksums updated.
    fn set_addr(ctx: &TcContext, p: &mut Packet<Self>, side: Side, new: Self) -> Result<(), i64>;
    /// The socket lookup helpers' tuple for a packet `remote:rport` → `local:lport`, and
    /// its size, which tells them the family.
    fn sock_tuple(remote: Self, rport: u16, local: Self, lport: u16) -> (bpf_sock_tuple, u32);
}

impl Family for u32 {
    const ETHER_TYPE: u16 = ETH_P_IP.to_be();
    const ICMP: u8 = IPPROTO_ICMP;
    const ECHO_REQUEST: u8 = parse::ICMP_ECHO_REQUEST;

    fn ct() -> &'static HashMap<CtKey, CtEntry> {
        &CT
    }
    fn ct_new() -> &'static LruHashMap<CtKey, CtEntry> {
        &CT_NEW
    }
    fn frags() -> &'static LruHashMap<FragKey, FragEntry> {
        &FRAGS
    }
    fn frags_early() -> &'static LruHashMap<FragKey, Tick> {
        &FRAGS_EARLY
    }
    fn published() -> &'static HashMap<PortKey, Backend> {
        &PUBLISHED
    }
    fn subnets() -> &'static LpmTrie<u32, NetInfo> {
        &SUBNETS
    }
    fn never_nat_prefixes() -> &'static LpmTrie<u32, u32> {
        &NEVER_NAT
    }
    fn routed_ports() -> &'static HashMap<PortKey, u32> {
        &ROUTED_PORTS
    }
    fn local_addrs() -> &'static HashMap<u32, u32> {
        &LOCAL_ADDRS
    }
    fn endpoints() -> &'static HashMap<u32, Endpoint> {
        &ENDPOINTS
    }
    fn routes() -> &'static LruPerCpuHashMap<RouteKey<u32>, CachedRoute<u32>> {
        &ROUTES
    }
    fn masq_ports() -> &'static LruHashMap<CtKey, u32> {
        &MASQ_PORTS
    }
    fn sock_rev() -> &'static LruHashMap<SockRevKey, SockRevEntry> {
        &SOCK_REV
    }

    #[inline(always)]
    fn uplink(cfg: &DpConfig) -> u32 {
        cfg.uplink_addr
    }
    /// The address is in network byte order: its first byte is the first octet.
    #[inline(always)]
    fn is_loopback(&self) -> bool {
        self.to_ne_bytes()[0] == 127
    }
    #[inline(always)]
    fn query_request(t: u8) -> bool {
        parse::query_request(t)
    }
    #[inline(always)]
    fn parse<'a>(ctx: &TcContext, local: &'a mut Packet) -> Option<(Kind, &'a mut Packet)> {
        let Parsed { kind, p } = parse::parse4(ctx);
        *local = p;
        Some((kind, local))
    }
    #[inline(always)]
    fn quote(ctx: &TcContext, outer: &Packet, quote: &mut Quote) -> bool {
        parse::quote4(ctx, outer, quote)
    }
    #[inline(always)]
    fn set_addr(ctx: &TcContext, p: &mut Packet, side: Side, new: u32) -> Result<(), i64> {
        csum::set_addr4(ctx, p, side, new)
    }
    #[inline(always)]
    fn sock_tuple(remote: u32, rport: u16, local: u32, lport: u16) -> (bpf_sock_tuple, u32) {
        let t = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                    saddr: remote,
                    daddr: local,
                    sport: rport,
                    dport: lport,
                },
            },
        };
        let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>();
        (t, size as u32)
    }
}

impl Family for Ip6 {
    const ETHER_TYPE: u16 = ETH_P_IPV6.to_be();
    const ICMP: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = parse::ICMP6_ECHO_REQUEST;

    fn ct() -> &'static HashMap<CtKey<Ip6>, CtEntry<Ip6>> {
        &CT6
    }
    fn ct_new() -> &'static LruHashMap<CtKey<Ip6>, CtEntry<Ip6>> {
        &CT6_NEW
    }
    fn frags() -> &'static LruHashMap<FragKey<Ip6>, FragEntry<Ip6>> {
        &FRAGS6
    }
    fn frags_early() -> &'static LruHashMap<FragKey<Ip6>, Tick> {
        &FRAGS6_EARLY
    }
    fn published() -> &'static HashMap<PortKey<Ip6>, Backend<Ip6>> {
        &PUBLISHED6
    }
    fn subnets() -> &'static LpmTrie<Ip6, NetInfo<Ip6>> {
        &SUBNETS6
    }
    fn never_nat_prefixes() -> &'static LpmTrie<Ip6, u32> {
        &NEVER_NAT6
    }
    fn routed_ports() -> &'static HashMap<PortKey<Ip6>, u32> {
        &ROUTED_PORTS6
    }
    fn local_addrs() -> &'static HashMap<Ip6, u32> {
        &LOCAL_ADDRS6
    }
    fn endpoints() -> &'static HashMap<Ip6, Endpoint> {
        &ENDPOINTS6
    }
    fn routes() -> &'static LruPerCpuHashMap<RouteKey<Ip6>, CachedRoute<Ip6>> {
        &ROUTES6
    }
    fn masq_ports() -> &'static LruHashMap<CtKey<Ip6>, u32> {
        &MASQ_PORTS6
    }
    fn sock_rev() -> &'static LruHashMap<SockRevKey<Ip6>, SockRevEntry<Ip6>> {
        &SOCK_REV6
    }

    #[inline(always)]
    fn uplink(cfg: &DpConfig) -> Ip6 {
        cfg.uplink_addr6
    }
    #[inline(always)]
    fn is_loopback(&self) -> bool {
        *self == [0, 0, 0, 1u32.to_be()]
    }
    #[inline(always)]
    fn query_request(t: u8) -> bool {
        parse::query_request6(t)
    }
    #[inline(always)]
    fn parse<'a>(
        ctx: &TcContext,
        _local: &'a mut Packet<Ip6>,
    ) -> Option<(Kind, &'a mut Packet<Ip6>)> {
        let slot = PACKET6.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot, the program run's own (see crate::maps::SEGMENT), large
        // enough (asserted below), and a plain struct of integers and a field-less enum
        // that parse6 writes whole before anything reads it.
        let p = unsafe { &mut *(slot as *mut Packet<Ip6>) };
        Some((parse::parse6(ctx, p), p))
    }
    #[inline(always)]
    fn quote(ctx: &TcContext, outer: &Packet<Ip6>, quote: &mut Quote<Ip6>) -> bool {
        parse::quote6(ctx, outer, quote)
    }
    #[inline(always)]
    fn set_addr(ctx: &TcContext, p: &mut Packet<Ip6>, side: Side, new: Ip6) -> Result<(), i64> {
        csum::set_addr6(ctx, p, side, new)
    }
    #[inline(always)]
    fn sock_tuple(remote: Ip6, rport: u16, local: Ip6, lport: u16) -> (bpf_sock_tuple, u32) {
        let t = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr: remote,
                    daddr: local,
                    sport: rport,
                    dport: lport,
                },
            },
        };
        let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>();
        (t, size as u32)
    }
}

/// Defines a function that IPv4 inlines and IPv6 calls (a BPF-to-BPF call). The verifier
/// allows 512 bytes of stack for a whole chain of calls. IPv6's keys and entries are more
/// than twice IPv4's, so an IPv6 stage keeps each kind of packet's work in a frame of its
/// own, freed on return, while IPv4 keeps the single frame (and the speed) it had.
macro_rules! v6_outlined {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<A: $bound:path>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$doc])*
        #[inline(always)]
        $vis fn $name<A: $bound>($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body<A: $bound>($($arg: $ty),*) -> $ret $body
            #[inline(never)]
            fn outlined<A: $bound>($($arg: $ty),*) -> $ret {
                body::<A>($($arg),*)
            }
            if <A as netplane_common::addr::Addr>::BITS == 32 {
                body::<A>($($arg),*)
            } else {
                outlined::<A>($($arg),*)
            }
        }
    };
}
pub(crate) use v6_outlined;

const _: () = assert!(core::mem::size_of::<Packet<Ip6>>() <= core::mem::size_of::<[u64; 8]>());
