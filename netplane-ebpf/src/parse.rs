//! Header parsing for the NAT programs. Headers are read in place (direct packet access)
//! through one bounds-checking helper, [`ptr_at`], so the verifier is satisfied the same
//! way everywhere; when they are not in the skb's linear part, `bpf_skb_load_bytes`
//! (`TcContext::load`) reads them instead.

use aya_ebpf::programs::TcContext;
use netplane_common::packet::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use network_types::eth::EthHdr;
use network_types::ip::Ipv4Hdr;

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

/// An IPv4 packet netplane may translate: TCP, UDP, or an ICMP query (echo, timestamp,
/// information, address mask: the types with an identifier, which nf_conntrack_proto_icmp
/// tracks too). Addresses and ports are in network byte order. For an ICMP query the
/// identifier is `sport` of a request and `dport` of a reply.
pub struct Packet {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub l4_off: usize,
    pub frag: Frag,
    /// IP identification, for fragments.
    pub id: u16,
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
pub struct Parsed {
    pub kind: Kind,
    pub p: Packet,
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
    /// solicitation, redirect, unknown types): `p` has its addresses. Nothing ties its
    /// answers to a flow, so it cannot be masqueraded.
    Untranslatable,
    /// IPv4 with headers that contradict themselves (an IHL or a TCP data offset below 5,
    /// a total length shorter than the header, an L4 header cut short): `p` has its
    /// addresses, read from the fixed header, which the frame holds.
    Malformed,
    /// Not IPv4, or too short to hold its header: passed untouched, for the stack to judge.
    Other,
}

impl Parsed {
    const OTHER: Parsed = Parsed {
        kind: Kind::Other,
        p: Packet {
            saddr: 0,
            daddr: 0,
            sport: 0,
            dport: 0,
            proto: 0,
            l4_off: 0,
            frag: Frag::Whole,
            id: 0,
            tcp_flags: 0,
            l4_hlen: 0,
            icmp_type: 0,
        },
    };
}

/// An ICMP error: its own addresses in `outer` (`l4_off` is where the ICMP header
/// starts), and the tuple of the packet it quotes.
pub struct IcmpError {
    pub outer: Packet,
    pub quote: Quote,
}

/// The tuple of the TCP, UDP or ICMP query packet an ICMP error quotes, network byte order
/// (an ICMP query's identifier is its port, see [`quote`]). Its IPv4
/// header starts [`QUOTE_OFF`] bytes after the ICMP header; only option-less headers are
/// translated.
pub struct Quote {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
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

/// A pointer to a `T` at `off` bytes into the packet, if the linear data holds all of it.
/// Valid until the next helper that may change the packet's data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
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

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
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
        id: u16::from_ne_bytes(ip.id),
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
        IPPROTO_TCP => {
            // Ports, and the flags byte at offset 13.
            let Ok(l4) = read::<[u8; 14]>(ctx, p.l4_off) else {
                return Parsed {
                    kind: Kind::Malformed,
                    p,
                };
            };
            p.sport = u16::from_ne_bytes([l4[0], l4[1]]);
            p.dport = u16::from_ne_bytes([l4[2], l4[3]]);
            p.tcp_flags = l4[13];
            p.l4_hlen = (l4[12] >> 4) * 4;
            let hlen = usize::from(p.l4_hlen);
            if hlen < TCP_MIN_HLEN || hlen > l4_room {
                return Parsed {
                    kind: Kind::Malformed,
                    p,
                };
            }
        }
        IPPROTO_UDP => {
            // The whole UDP header must be there, even when its checksum is not used.
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
            p.sport = u16::from_ne_bytes([l4[0], l4[1]]);
            p.dport = u16::from_ne_bytes([l4[2], l4[3]]);
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

/// Whether ICMP type `t` is a query's request (echo, timestamp, information, address
/// mask): the types that carry an identifier and ask for an answer.
#[inline(always)]
pub const fn query_request(t: u8) -> bool {
    matches!(
        t,
        ICMP_ECHO_REQUEST | ICMP_TIMESTAMP | ICMP_INFO_REQUEST | ICMP_ADDRESS
    )
}

/// What the ICMP error `outer` quotes, if it is TCP, UDP or an ICMP query (the identifier
/// as the port, as [`parse`] has it: `sport` of a request, `dport` of a reply) with an
/// option-less header, not a later fragment, and its ports are there.
#[inline(always)]
pub fn quote(ctx: &TcContext, outer: Packet) -> Option<IcmpError> {
    let off = outer.l4_off + QUOTE_OFF;
    let ip: Ipv4Hdr = read(ctx, off).ok()?;
    let later_fragment = u16::from_be_bytes(ip.frags) & 0x1fff != 0;
    if ip.version() != 4 || usize::from(ip.ihl()) != Ipv4Hdr::LEN || later_fragment {
        return None;
    }
    let l4 = off + Ipv4Hdr::LEN;
    let (sport, dport) = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u8; 4] = read(ctx, l4).ok()?;
            (
                u16::from_ne_bytes([ports[0], ports[1]]),
                u16::from_ne_bytes([ports[2], ports[3]]),
            )
        }
        IPPROTO_ICMP => {
            // An error quotes 8 bytes of the payload at least (RFC 792): the whole header.
            let h: [u8; 8] = read(ctx, l4).ok()?;
            let id = u16::from_ne_bytes([h[4], h[5]]);
            match h[0] {
                t if query_request(t) => (id, 0),
                ICMP_ECHO_REPLY | ICMP_TIMESTAMP_REPLY | ICMP_INFO_REPLY | ICMP_ADDRESS_REPLY => {
                    (0, id)
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    let quote = Quote {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport,
        dport,
        proto: ip.proto,
    };
    Some(IcmpError { outer, quote })
}
