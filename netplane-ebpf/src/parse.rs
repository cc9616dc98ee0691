//! Header parsing for the NAT programs. Everything goes through `bpf_skb_load_bytes`
//! (`TcContext::load`), which bounds-checks against the skb, so the verifier is satisfied
//! the same way everywhere and non-linear skbs (GRO, fragments) parse too.

use aya_ebpf::programs::TcContext;
use netplane_common::nat::DropReason;
use netplane_common::packet::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use network_types::ip::Ipv4Hdr;

pub const IP_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SRC_OFF: usize = IP_OFF + 12;
pub const IP_DST_OFF: usize = IP_OFF + 16;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header, ports unknown.
    Later,
}

/// An IPv4 packet netplane may translate: TCP, UDP, or ICMP echo. Addresses and ports
/// are in network byte order. For ICMP echo the identifier is `sport` of a request and
/// `dport` of a reply.
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
}

pub enum Parsed {
    Nat(Packet),
    /// Not IPv4, or a protocol netplane does not translate: passed untouched.
    Other,
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, DropReason> {
    let ethertype: u16 = ctx.load(12).map_err(|_| DropReason::Malformed)?;
    if ethertype != ETH_P_IP.to_be() {
        return Ok(Parsed::Other);
    }
    let ip: Ipv4Hdr = ctx.load(IP_OFF).map_err(|_| DropReason::Malformed)?;
    let ihl = usize::from(ip.ihl());
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || usize::from(ip.tot_len()) < ihl {
        return Err(DropReason::Malformed);
    }
    let proto = ip.proto;
    if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return Ok(Parsed::Other);
    }
    let frag_field = u16::from_be_bytes(ip.frags);
    let more = frag_field & 0x2000 != 0;
    let offset = frag_field & 0x1fff;
    let frag = match (offset, more) {
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
    };
    if frag == Frag::Later {
        return Ok(Parsed::Nat(p));
    }
    match proto {
        IPPROTO_ICMP => {
            let ty: u8 = ctx.load(p.l4_off).map_err(|_| DropReason::Malformed)?;
            let id: u16 = ctx.load(p.l4_off + 4).map_err(|_| DropReason::Malformed)?;
            match ty {
                ICMP_ECHO_REQUEST => p.sport = id,
                ICMP_ECHO_REPLY => p.dport = id,
                // Errors and the rest are not translated (see the closing note).
                _ => return Ok(Parsed::Other),
            }
        }
        _ => {
            let ports: [u16; 2] = ctx.load(p.l4_off).map_err(|_| DropReason::Malformed)?;
            p.sport = ports[0];
            p.dport = ports[1];
            if proto == IPPROTO_TCP {
                p.tcp_flags = ctx.load(p.l4_off + 13).map_err(|_| DropReason::Malformed)?;
            } else {
                // A UDP header must be whole even when its checksum is not used.
                let _len: u16 = ctx.load(p.l4_off + 4).map_err(|_| DropReason::Malformed)?;
            }
        }
    }
    Ok(Parsed::Nat(p))
}
