//! Header parsing for the NAT programs. Headers are read in place (direct packet access)
//! through one bounds-checking helper, [`ptr_at`], so the verifier is satisfied the same
//! way everywhere; when they are not in the skb's linear part, `bpf_skb_load_bytes`
//! (`TcContext::load`) reads them instead.

use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::generated::{bpf_loop, bpf_skb_load_bytes};
use aya_ebpf::programs::TcContext;
use netplane_common::addr::{Addr, Ip6, ip6};
use netplane_common::packet::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use netplane_common::packet6::{IPPROTO_ICMPV6, IPV6_HLEN, MAX_EXT_HEADERS, next};
use network_types::eth::EthHdr;
use network_types::ip::Ipv4Hdr;

use crate::maps::{EXT_HEADERS, EXT_WINDOW};

pub const IP_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SRC_OFF: usize = IP_OFF + 12;
pub const IP_DST_OFF: usize = IP_OFF + 16;

const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIMESTAMP: u8 = 13;
const ICMP_TIMESTAMP_REPLY: u8 = 14;
const ICMP_INFO_REQUEST: u8 = 15;
const ICMP_INFO_REPLY: u8 = 16;
const ICMP_ADDRESS: u8 = 17;
const ICMP_ADDRESS_REPLY: u8 = 18;
/// The shortest TCP header (data offset 5).
const TCP_MIN_HLEN: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header, ports unknown.
    Later,
}

/// A packet netplane may translate, of either family: TCP, UDP, or an ICMP query (echo,
/// timestamp, information, address mask: the types with an identifier, which
/// nf_conntrack_proto_icmp tracks too; ICMPv6 has echo only). Addresses and ports are in
/// network byte order. For an ICMP query the identifier is `sport` of a request and
/// `dport` of a reply.
#[repr(C)]
pub struct Packet<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub l4_off: usize,
    pub frag: Frag,
    /// The datagram's identification, for fragments: IPv4's 16 bits (as they are in the
    /// header), IPv6's 32 (from the fragment header).
    pub id: u32,
    /// TCP flags byte; 0 otherwise.
    pub tcp_flags: u8,
    /// The L4 header's length (TCP's data offset, with its options); 8 for UDP and ICMP.
    pub l4_hlen: u8,
    /// The ICMP type of an ICMP message (not of a later fragment); 0 otherwise.
    pub icmp_type: u8,
}

/// What [`parse`] found. A kind and an always complete [`Packet`], not an enum with a
/// payload: the compiler copies an enum whole, the undefined bytes of a variant without
/// payload included, and the verifier refuses to read those ("!read_ok").
pub struct Parsed<A = u32> {
    pub kind: Kind,
    pub p: Packet<A>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP, UDP or an ICMP query: `p` is it.
    Nat,
    /// An ICMP error (destination unreachable, time exceeded, parameter problem): `p` has
    /// its own addresses, and in `l4_off` where its ICMP header starts. What it quotes is
    /// read by [`quote`] (see crate::icmp).
    IcmpError,
    /// Another IP protocol (GRE, SCTP, …): `p` has its addresses and protocol, no ports.
    /// Masquerade translates it by address only, as netfilter's generic protocol NAT does
    /// (nf_nat_proto.c: no port to change).
    Generic,
    /// An ICMP message that is neither a query with an identifier nor an error (router
    /// solicitation, redirect, unknown types; over IPv6 also neighbour discovery and MLD
    /// between global addresses): `p` has its addresses. Nothing ties its answers to a
    /// flow, so it cannot be masqueraded.
    Untranslatable,
    /// Headers that contradict themselves (an IHL or a TCP data offset below 5, a total
    /// length shorter than the header, an L4 header cut short; over IPv6 also an extension
    /// header chain too long to follow, and UDP with a zero checksum): `p` has its
    /// addresses, read from the fixed header, which the frame holds.
    Malformed,
    /// Not of the family, or too short to hold its header; over IPv6 also whatever has a
    /// link-local or multicast address (neighbour discovery, MLD, router advertisements):
    /// passed untouched, for the stack to judge.
    Other,
}

impl<A: Addr> Packet<A> {
    /// A packet of nothing, to parse into.
    #[inline(always)]
    pub const fn empty() -> Self {
        Packet {
            saddr: A::UNSPECIFIED,
            daddr: A::UNSPECIFIED,
            sport: 0,
            dport: 0,
            proto: 0,
            l4_off: 0,
            frag: Frag::Whole,
            id: 0,
            tcp_flags: 0,
            l4_hlen: 0,
            icmp_type: 0,
        }
    }
}

impl<A: Addr> Parsed<A> {
    pub const OTHER: Parsed<A> = Parsed {
        kind: Kind::Other,
        p: Packet::empty(),
    };
}

/// The tuple of the TCP, UDP or ICMP query packet an ICMP error quotes, network byte order
/// (an ICMP query's identifier is its port, see [`quote4`]). Its IP header starts
/// [`QUOTE_OFF`] bytes after the ICMP header; only option-less IPv4 headers, and IPv6 ones
/// followed by the L4 header or a first fragment's header, are translated.
#[repr(C)]
pub struct Quote<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// How many bytes of extension headers lie between the quoted IP header and its L4
    /// header: an IPv6 fragment header's 8 (path MTU discovery of fragmented UDP), or 0.
    pub ext: u8,
    /// Explicit: a copy of an odd size crashes LLVM 22's BPF backend (post-RA MEMCPY
    /// expansion).
    pub _pad: [u8; 2],
}

pub const QUOTE_OFF: usize = 8;
/// Where a quoted ICMP query's identifier is, from the start of its ICMP header.
pub const ICMP_ID_OFF: usize = 4;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;

/// Ethernet and a minimal IPv4 header.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct L2L3 {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

/// How far into a frame any header netplane reads can be: Ethernet, IPv6 with
/// EXT_WINDOW bytes of extension headers, a TCP header with options, and an ICMP error's
/// quote of the same.
const MAX_HEADER_OFF: usize = 1024;

/// A pointer to a `T` at `off` bytes into the packet, if the linear data holds all of it.
/// Valid until the next helper that may change the packet's data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    // Offsets read back from a map (an IPv6 packet's, see crate::family) are unbounded to
    // the verifier, which refuses pointer arithmetic with them: no header netplane reads
    // is this far in.
    if off > MAX_HEADER_OFF {
        return None;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads a `T` at `off`: in place when it is in the linear data, else by helper.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    match ptr_at::<T>(ctx, off) {
        // SAFETY: ptr_at checked that the whole T is inside the packet.
        Some(p) => Ok(unsafe { core::ptr::read_unaligned(p) }),
        None => ctx.load(off).map_err(|_| ()),
    }
}

/// Parses an IPv4 frame (the caller checked the EtherType).
#[inline(always)]
pub fn parse4(ctx: &TcContext) -> Parsed {
    // One read for Ethernet + IPv4, one for the L4 header.
    let L2L3 { eth, ip } = match read::<L2L3>(ctx, 0) {
        Ok(h) => h,
        // Too short for IPv4: not ours (ARP and the like), or truncated.
        Err(_) => return Parsed::OTHER,
    };
    if { eth.ether_type } != ETH_P_IP.to_be() {
        return Parsed::OTHER;
    }
    let ihl = usize::from(ip.ihl());
    let proto = ip.proto;
    let frag_field = u16::from_be_bytes(ip.frags);
    let frag = match (frag_field & 0x1fff, frag_field & 0x2000 != 0) {
        (0, false) => Frag::Whole,
        (0, true) => Frag::First,
        _ => Frag::Later,
    };
    let mut p = Packet {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport: 0,
        dport: 0,
        proto,
        l4_off: IP_OFF + ihl,
        frag,
        id: u32::from(u16::from_ne_bytes(ip.id)),
        tcp_flags: 0,
        l4_hlen: 8,
        icmp_type: 0,
    };
    // The checks of ip_rcv_core(), except the checksum (see crate::forward): what fails
    // them is junk, which the stack drops on input, but which a program on an egress
    // hook must not let out with a container's address.
    let mut tot_len = usize::from(ip.tot_len());
    // A BIG TCP packet (GSO beyond 64 KiB) says 0 here, and its length is the skb's
    // (iph_set_totlen(), skb_ip_totlen()).
    // SAFETY: reading a field of the context the kernel passed in.
    if tot_len == 0 && unsafe { (*ctx.skb.skb).gso_size } != 0 {
        tot_len = (ctx.len() as usize).saturating_sub(IP_OFF);
    }
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl {
        return Parsed {
            kind: Kind::Malformed,
            p,
        };
    }
    if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return Parsed {
            kind: Kind::Generic,
            p,
        };
    }
    if frag == Frag::Later {
        return Parsed { kind: Kind::Nat, p };
    }
    // The L4 header must lie within the IP total length, not only within the frame: a
    // short packet's Ethernet padding is not a header.
    let l4_room = tot_len - ihl;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if !transport(ctx, &mut p, l4_room, true) {
                return Parsed {
                    kind: Kind::Malformed,
                    p,
                };
            }
        }
        _ => {
            let Ok(l4) = read::<[u8; 8]>(ctx, p.l4_off) else {
                return Parsed {
                    kind: Kind::Malformed,
                    p,
                };
            };
            if l4_room < 8 {
                return Parsed {
                    kind: Kind::Malformed,
                    p,
                };
            }
            let id = u16::from_ne_bytes([l4[4], l4[5]]);
            p.icmp_type = l4[0];
            match l4[0] {
                t if query_request(t) => p.sport = id,
                ICMP_ECHO_REPLY | ICMP_TIMESTAMP_REPLY | ICMP_INFO_REPLY | ICMP_ADDRESS_REPLY => {
                    p.dport = id
                }
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
                    if frag == Frag::Whole =>
                {
                    return Parsed {
                        kind: Kind::IcmpError,
                        p,
                    };
                }
                _ => {
                    return Parsed {
                        kind: Kind::Untranslatable,
                        p,
                    };
                }
            }
        }
    }
    Parsed { kind: Kind::Nat, p }
}

/// Reads the ports of the TCP or UDP header at `p.l4_off` (and TCP's flags and header
/// length), which must lie within the `l4_room` bytes of the IP payload; false when it is
/// malformed. The whole UDP header must be there, even when its checksum is not used;
/// a zero UDP checksum counts as malformed unless `zero_udp_checksum_ok` (IPv4's "none").
#[inline(always)]
fn transport<A>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    l4_room: usize,
    zero_udp_checksum_ok: bool,
) -> bool {
    if p.proto == IPPROTO_TCP {
        // Ports, and the flags byte at offset 13.
        let Ok(l4) = read::<[u8; 14]>(ctx, p.l4_off) else {
            return false;
        };
        p.sport = u16::from_ne_bytes([l4[0], l4[1]]);
        p.dport = u16::from_ne_bytes([l4[2], l4[3]]);
        p.tcp_flags = l4[13];
        p.l4_hlen = (l4[12] >> 4) * 4;
        let hlen = usize::from(p.l4_hlen);
        return (TCP_MIN_HLEN..=l4_room).contains(&hlen);
    }
    let Ok(l4) = read::<[u8; 8]>(ctx, p.l4_off) else {
        return false;
    };
    p.sport = u16::from_ne_bytes([l4[0], l4[1]]);
    p.dport = u16::from_ne_bytes([l4[2], l4[3]]);
    l4_room >= 8 && (zero_udp_checksum_ok || l4[6] != 0 || l4[7] != 0)
}

/// Whether ICMP type `t` is a query's request (echo, timestamp, information, address
/// mask): the types that carry an identifier and ask for an answer.
#[inline(always)]
pub const fn query_request(t: u8) -> bool {
    matches!(
        t,
        ICMP_ECHO_REQUEST | ICMP_TIMESTAMP | ICMP_INFO_REQUEST | ICMP_ADDRESS
    )
}

/// The ports of the TCP or UDP header an ICMP error quotes at `l4`, or, for a quoted
/// query of the family's ICMP (`icmp`), its identifier as the port on the side
/// `query_ports` says from the type and the identifier.
#[inline(always)]
fn quoted_ports(
    ctx: &TcContext,
    proto: u8,
    l4: usize,
    icmp: u8,
    query_ports: impl Fn(u8, u16) -> Option<(u16, u16)>,
) -> Option<(u16, u16)> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u8; 4] = read(ctx, l4).ok()?;
            Some((
                u16::from_ne_bytes([ports[0], ports[1]]),
                u16::from_ne_bytes([ports[2], ports[3]]),
            ))
        }
        p if p == icmp => {
            let h: [u8; 8] = read(ctx, l4).ok()?;
            query_ports(h[0], u16::from_ne_bytes([h[4], h[5]]))
        }
        _ => None,
    }
}

/// Reads into `quote` what the ICMP error `outer` quotes, if it is TCP, UDP or an ICMP
/// query (the identifier as the port, as [`parse4`] has it: `sport` of a request,
/// `dport` of a reply) with an option-less header, not a later fragment, and its ports
/// are there.
#[inline(always)]
pub fn quote4(ctx: &TcContext, outer: &Packet, quote: &mut Quote) -> bool {
    quote4_found(ctx, outer, quote).is_some()
}

#[inline(always)]
fn quote4_found(ctx: &TcContext, outer: &Packet, quote: &mut Quote) -> Option<()> {
    let off = outer.l4_off + QUOTE_OFF;
    let ip: Ipv4Hdr = read(ctx, off).ok()?;
    let later_fragment = u16::from_be_bytes(ip.frags) & 0x1fff != 0;
    if ip.version() != 4 || usize::from(ip.ihl()) != Ipv4Hdr::LEN || later_fragment {
        return None;
    }
    let l4 = off + Ipv4Hdr::LEN;
    // An error quotes 8 bytes of the payload at least (RFC 792): the ports, or the whole
    // ICMP header.
    let (sport, dport) = quoted_ports(ctx, ip.proto, l4, IPPROTO_ICMP, |t, id| match t {
        t if query_request(t) => Some((id, 0)),
        ICMP_ECHO_REPLY | ICMP_TIMESTAMP_REPLY | ICMP_INFO_REPLY | ICMP_ADDRESS_REPLY => {
            Some((0, id))
        }
        _ => None,
    })?;
    *quote = Quote {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport,
        dport,
        proto: ip.proto,
        ext: 0,
        _pad: [0; 2],
    };
    Some(())
}

/// The EtherType of the frame, as on the wire (network byte order); 0 when the frame is
/// too short to have one.
#[inline(always)]
pub fn ether_type(ctx: &TcContext) -> u16 {
    read::<u16>(ctx, 12).unwrap_or(0)
}

pub const IP6_SRC_OFF: usize = IP_OFF + 8;
pub const IP6_DST_OFF: usize = IP_OFF + 24;
pub const IP6_HOP_LIMIT_OFF: usize = IP_OFF + 7;
pub const IP6_PAYLOAD_LEN_OFF: usize = IP_OFF + 4;

pub const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_PARAMETERPROB: u8 = 4;

/// Whether `a` is link-local (fe80::/10) or multicast (ff00::/8): never routed by the
/// host between a container and the outside, so never translated (neighbour discovery,
/// MLD and router advertisements use them).
#[inline(always)]
fn link_scoped(a: &Ip6) -> bool {
    let b = a[0].to_ne_bytes();
    b[0] == 0xff || (b[0] == 0xfe && b[1] & 0xc0 == 0x80)
}

/// The state of a walk over IPv6 extension headers, in a window of the packet copied to
/// this CPU's [`EXT_HEADERS`] (see [`walk`]): the stack has no room for it.
#[repr(C)]
struct Walk {
    /// How many bytes of the window the packet filled.
    filled: u32,
    /// Where the current header starts in the window.
    off: u32,
    /// The fragment header's offset field (offset and M flag), and identification.
    frag_field: u16,
    fragmented: u8,
    /// Its type.
    next: u8,
    frag_id: u32,
    /// 0 while walking, 1 when an upper layer was reached, 2 when the chain is malformed.
    done: u32,
}

/// One step of [`walk`]: the header at `w.off`, if it is an extension header.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the Walk that parse6 handed it.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let Some(window) = EXT_HEADERS.get_ptr(0) else {
        w.done = 2;
        return 1;
    };
    // SAFETY: this CPU's slot of a per-CPU array, filled by walk() in this program run.
    let window = unsafe { &*window };
    let at = w.off as usize;
    if !is_extension_header(w.next) {
        w.done = 1;
        return 1;
    }
    // Every extension header has its next header and length in its first two bytes, and
    // is at least 8 bytes long.
    if at + 8 > w.filled as usize || at + 8 > EXT_WINDOW {
        w.done = 2;
        return 1;
    }
    let Some(h) = window.get(at..at + 8) else {
        w.done = 2;
        return 1;
    };
    let len = match w.next {
        next::FRAGMENT => {
            w.fragmented = 1;
            w.frag_field = u16::from_be_bytes([h[2], h[3]]);
            w.frag_id = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
            8
        }
        // In 4-octet units, not counting the first 2 (RFC 4302, 2.2).
        next::AUTH => (usize::from(h[1]) + 2) * 4,
        // A routing header with segments left: the destination is not the final one,
        // which the L4 checksum's pseudo-header uses (RFC 8200, 8.1), so a translation
        // of it would leave the checksum wrong. Not translated: Malformed.
        next::ROUTING if h[3] != 0 => {
            w.done = 2;
            return 1;
        }
        // In 8-octet units, not counting the first 8 (RFC 8200, 4.3).
        _ => (usize::from(h[1]) + 1) * 8,
    };
    w.next = h[0];
    w.off = (at + len) as u32;
    // What follows a later fragment's header is payload, not headers: the walk ends
    // there, and the fragment follows its first by the fragment header's next header.
    if w.fragmented != 0 && w.frag_field >> 3 != 0 {
        w.done = 1;
        return 1;
    }
    0
}

/// Whether next-header value `next` is an extension header that [`walk`] follows.
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        next::HOP_BY_HOP | next::ROUTING | next::DEST_OPTS | next::AUTH | next::FRAGMENT
    )
}

/// Walks the extension headers that follow the fixed header, `MAX_EXT_HEADERS` at most
/// (netplane_common::packet6), through bpf_loop(): the verifier checks its step once,
/// where an unrolled walk would multiply the paths of everything after the parse.
/// Returns the upper-layer protocol, its offset after the fixed header, and the fragment
/// header's fields.
#[inline(always)]
fn walk(ctx: &TcContext, first: u8, payload_len: usize) -> Option<(u8, usize, Option<(u16, u32)>)> {
    let mut w = Walk {
        filled: 0,
        off: 0,
        frag_field: 0,
        fragmented: 0,
        next: first,
        frag_id: 0,
        done: 0,
    };
    let available = (ctx.len() as usize).saturating_sub(IP_OFF + IPV6_HLEN);
    let filled = available.min(payload_len).min(EXT_WINDOW);
    if filled < 8 {
        return None;
    }
    w.filled = filled as u32;
    let window = EXT_HEADERS.get_ptr_mut(0)?;
    // SAFETY: the helper copies `filled` (8..=EXT_WINDOW) bytes into this CPU's window.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            (IP_OFF + IPV6_HLEN) as u32,
            window as *mut c_void,
            filled as u32,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: bpf_loop calls walk_step with &mut w, at most MAX_EXT_HEADERS + 1 times.
    unsafe {
        bpf_loop(
            MAX_EXT_HEADERS as u32 + 1,
            walk_step as *mut c_void,
            &mut w as *mut Walk as *mut c_void,
            0,
        )
    };
    if w.done != 1 {
        return None;
    }
    let frag = (w.fragmented != 0).then_some((w.frag_field, w.frag_id));
    Some((w.next, w.off as usize, frag))
}

/// Parses an IPv6 frame (the caller checked the EtherType) into `out`: as [`parse4`],
/// with ICMPv6 in place of ICMP. Neighbour discovery, MLD, and whatever is link-scoped is
/// `Other`: untouched. A function of its own (a BPF-to-BPF call), so that its reads stay
/// off the frames of the stages, which IPv6's addresses fill enough.
#[inline(never)]
pub fn parse6(ctx: &TcContext, p: &mut Packet<Ip6>) -> Kind {
    parse6_into(ctx, p)
}

/// [`parse6`]'s work: fills `p` in place (copies of IPv6 packets cost stack) and returns
/// the kind.
#[inline(always)]
fn parse6_into(ctx: &TcContext, p: &mut Packet<Ip6>) -> Kind {
    // The slot holds the previous run's packet: nothing of it may be seen (an early
    // return below leaves this one).
    *p = Packet::empty();
    // The fixed header's first 8 bytes: version, payload length, next header.
    let Ok(h) = read::<[u8; 8]>(ctx, IP_OFF) else {
        return Kind::Other;
    };
    let (Ok(saddr), Ok(daddr)) = (read::<Ip6>(ctx, IP6_SRC_OFF), read::<Ip6>(ctx, IP6_DST_OFF))
    else {
        return Kind::Other;
    };
    *p = Packet {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: h[6],
        l4_off: IP_OFF + IPV6_HLEN,
        frag: Frag::Whole,
        id: 0,
        tcp_flags: 0,
        l4_hlen: 8,
        icmp_type: 0,
    };
    if link_scoped(&p.saddr) || link_scoped(&p.daddr) {
        return Kind::Other;
    }
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    // A jumbogram (payload length 0, RFC 2675) or a BIG TCP packet: the skb's length.
    // SAFETY: reading a field of the context the kernel passed in.
    let payload_len = if payload_len == 0 && unsafe { (*ctx.skb.skb).gso_size } != 0 {
        (ctx.len() as usize).saturating_sub(IP_OFF + IPV6_HLEN)
    } else {
        payload_len
    };
    if h[0] >> 4 != 6 {
        return Kind::Malformed;
    }
    if is_extension_header(h[6]) {
        let Some((proto, off, frag)) = walk(ctx, h[6], payload_len) else {
            return Kind::Malformed;
        };
        // An upper layer past the window is not followed (see EXT_WINDOW).
        if off > payload_len || off > EXT_WINDOW {
            return Kind::Malformed;
        }
        p.proto = proto;
        p.l4_off = IP_OFF + IPV6_HLEN + (off & (2 * EXT_WINDOW - 1));
        if let Some((field, id)) = frag {
            p.id = id;
            p.frag = match (field >> 3, field & 1 != 0) {
                (0, false) => Frag::Whole,
                (0, true) => Frag::First,
                _ => Frag::Later,
            };
        }
    }
    if !matches!(p.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
        return Kind::Generic;
    }
    if p.frag == Frag::Later {
        return Kind::Nat;
    }
    let Some(l4_room) = (IP_OFF + IPV6_HLEN + payload_len).checked_sub(p.l4_off) else {
        return Kind::Malformed;
    };
    match p.proto {
        // A zero UDP checksum is invalid in IPv6 (RFC 8200, 8.1): the receiver drops it,
        // so netplane does not translate it into something that looks sent.
        IPPROTO_TCP | IPPROTO_UDP => {
            if !transport(ctx, p, l4_room, false) {
                return Kind::Malformed;
            }
        }
        _ => {
            let Ok(l4) = read::<[u8; 8]>(ctx, p.l4_off) else {
                return Kind::Malformed;
            };
            if l4_room < 8 {
                return Kind::Malformed;
            }
            let id = u16::from_ne_bytes([l4[4], l4[5]]);
            p.icmp_type = l4[0];
            match l4[0] {
                ICMP6_ECHO_REQUEST => p.sport = id,
                ICMP6_ECHO_REPLY => p.dport = id,
                ICMP6_DEST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED
                | ICMP6_PARAMETERPROB
                    if p.frag == Frag::Whole =>
                {
                    return Kind::IcmpError;
                }
                // Neighbour discovery (RFC 4861) and MLD between global addresses (a
                // neighbour unreachability probe): untranslatable, as a router
                // solicitation is over IPv4. Between a container and the host, or the
                // host and its neighbours, they pass as without netplane; what a
                // container sends out of the uplink is dropped, as no packet leaves it
                // with a container's source. (Link-scoped ones never get here: Other.)
                _ => {
                    return Kind::Untranslatable;
                }
            }
        }
    }
    Kind::Nat
}

/// Whether ICMPv6 type `t` is a query's request: echo, the one type with an identifier.
#[inline(always)]
pub const fn query_request6(t: u8) -> bool {
    t == ICMP6_ECHO_REQUEST
}

/// [`quote4`] for an ICMPv6 error: the quoted IPv6 header must be followed by TCP, UDP or
/// ICMPv6 echo, directly or after the fragment header of a first fragment. A BPF-to-BPF call (see
/// crate::family::v6_outlined).
#[inline(never)]
pub fn quote6(ctx: &TcContext, outer: &Packet<Ip6>, quote: &mut Quote<Ip6>) -> bool {
    quote6_found(ctx, outer, quote).is_some()
}

#[inline(always)]
fn quote6_found(ctx: &TcContext, outer: &Packet<Ip6>, quote: &mut Quote<Ip6>) -> Option<()> {
    let off = outer.l4_off + QUOTE_OFF;
    let h: [u8; 8] = read(ctx, off).ok()?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut proto = h[6];
    let mut l4 = off + IPV6_HLEN;
    let mut ext = 0;
    // A first fragment (a UDP datagram too big for the path, fragmented by its sender)
    // has its ports after the fragment header; a later one has none.
    if proto == next::FRAGMENT {
        let f: [u8; 8] = read(ctx, l4).ok()?;
        if u16::from_be_bytes([f[2], f[3]]) >> 3 != 0 {
            return None;
        }
        proto = f[0];
        l4 += 8;
        ext = 8;
    }
    let (sport, dport) = quoted_ports(ctx, proto, l4, IPPROTO_ICMPV6, |t, id| match t {
        ICMP6_ECHO_REQUEST => Some((id, 0)),
        ICMP6_ECHO_REPLY => Some((0, id)),
        _ => None,
    })?;
    // As bytes, then converted: a 16-byte unaligned copy straight into the caller's
    // Quote crashes LLVM 22's BPF backend (post-RA MEMCPY expansion).
    quote.saddr = ip6(read::<[u8; 16]>(ctx, off + 8).ok()?);
    quote.daddr = ip6(read::<[u8; 16]>(ctx, off + 24).ok()?);
    quote.sport = sport;
    quote.dport = dport;
    quote.proto = proto;
    quote.ext = ext;
    Some(())
}
