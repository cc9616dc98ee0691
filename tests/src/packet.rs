//! Crafting frames for in-kernel tests (`BPF_PROG_TEST_RUN`), with correct checksums unless
//! a test breaks them on purpose.

use std::net::Ipv6Addr;

use netplane_common::csum;
use netplane_common::packet::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use netplane_common::packet6::{ETH_P_IPV6, IPPROTO_ICMPV6, IPV6_HLEN, next, udp6_checksum};

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 header fields a test may vary.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    /// Fragment offset in bytes (a multiple of 8) and the more-fragments flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// IP options, padded by the caller to a multiple of 4 bytes.
    pub options: &'static [u8],
}

impl Ip {
    pub fn new(src: [u8; 4], dst: [u8; 4]) -> Ip {
        Ip {
            src,
            dst,
            id: 0x1234,
            frag_offset: 0,
            more_fragments: false,
            options: &[],
        }
    }
}

/// Ethernet II + IPv4 with `payload` (an L4 header and data, or a fragment's bytes).
pub fn ipv4_frame(ip: Ip, proto: u8, payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + ip.options.len();
    let total = hlen + payload.len();
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut h = vec![0u8; hlen];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[4..6].copy_from_slice(&ip.id.to_be_bytes());
    let frag = (ip.frag_offset / 8) | if ip.more_fragments { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&ip.src);
    h[16..20].copy_from_slice(&ip.dst);
    h[20..].copy_from_slice(ip.options);
    let c = csum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

fn l4_checksum(ip: &Ip, proto: u8, seg: &mut [u8], at: usize) {
    let acc = csum::pseudo_header(ip.src, ip.dst, proto, seg.len() as u16);
    let c = !csum::fold(csum::sum(seg, acc));
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A TCP segment (20-byte header) from `ip.src:sport` to `ip.dst:dport`.
pub fn tcp(ip: Ip, sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&1000u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    seg.extend_from_slice(data);
    l4_checksum(&ip, IPPROTO_TCP, &mut seg, 16);
    ipv4_frame(ip, IPPROTO_TCP, &seg)
}

/// The UDP datagram (header + data) with its checksum, or 0 for "none".
pub fn udp_datagram(ip: &Ip, sport: u16, dport: u16, data: &[u8], with_checksum: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + data.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(data);
    if with_checksum {
        l4_checksum(ip, IPPROTO_UDP, &mut d, 6);
    }
    d
}

/// An Ethernet + IPv4 + UDP frame with correct checksums.
pub fn udp(ip: Ip, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    ipv4_frame(
        ip,
        IPPROTO_UDP,
        &udp_datagram(&ip, sport, dport, data, true),
    )
}

/// The old name of [`udp`] with plain arguments, used by the counter tests.
pub fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    udp(Ip::new(src, dst), sport, dport, payload)
}

/// An ICMP error of type `ty` and `code` from `ip`, quoting the IPv4 packet of `frame`
/// whole (Linux quotes up to 576 bytes). For "fragmentation needed" the next-hop MTU is
/// 1400.
pub fn icmp_error(ip: Ip, ty: u8, code: u8, frame: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0];
    m.extend_from_slice(&1400u16.to_be_bytes());
    m.extend_from_slice(&frame[14..]);
    let c = csum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(ip, IPPROTO_ICMP, &m)
}

/// An ICMP echo request (`ty` 8) or reply (`ty` 0).
pub fn icmp_echo(ip: Ip, ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"netplane");
    let c = csum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(ip, IPPROTO_ICMP, &m)
}

/// IPv6 header fields a test may vary.
#[derive(Clone, Copy, Debug)]
pub struct Ip6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// A fragment header after the fixed header (RFC 8200, 4.5): the packet is a fragment.
    pub fragment: Option<Fragment6>,
}

/// A fragment header's fields.
#[derive(Clone, Copy, Debug)]
pub struct Fragment6 {
    /// Where this fragment's data goes in the datagram, in bytes (a multiple of 8).
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

impl Ip6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Ip6 {
        Ip6 {
            src,
            dst,
            hop_limit: 64,
            fragment: None,
        }
    }
}

/// Ethernet II + IPv6 with `payload` (an upper-layer header and data, or a fragment's
/// bytes) of upper-layer protocol `proto`, behind a fragment header if `ip` has one. A
/// multicast destination gets its multicast MAC (33:33 and the address's last 4 bytes,
/// RFC 2464, 7).
pub fn ipv6_frame(ip: Ip6, proto: u8, payload: &[u8]) -> Vec<u8> {
    let ext = if ip.fragment.is_some() { 8 } else { 0 };
    let dst = ip.dst.octets();
    let mut f = Vec::with_capacity(14 + IPV6_HLEN + ext + payload.len());
    if ip.dst.is_multicast() {
        f.extend_from_slice(&[0x33, 0x33, dst[12], dst[13], dst[14], dst[15]]);
    } else {
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    }
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext + payload.len()) as u16).to_be_bytes());
    f.push(if ip.fragment.is_some() {
        next::FRAGMENT
    } else {
        proto
    });
    f.push(ip.hop_limit);
    f.extend_from_slice(&ip.src.octets());
    f.extend_from_slice(&dst);
    if let Some(frag) = ip.fragment {
        f.extend_from_slice(&[proto, 0]);
        f.extend_from_slice(&(frag.offset | u16::from(frag.more)).to_be_bytes());
        f.extend_from_slice(&frag.id.to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// Writes at `at` the checksum of `seg`, an upper-layer message of `proto` whole (a
/// fragmented datagram's is over all of it), over the IPv6 pseudo-header of `ip`.
fn l4_checksum6(ip: &Ip6, proto: u8, seg: &mut [u8], at: usize) {
    let acc = csum::pseudo_header6(ip.src.octets(), ip.dst.octets(), proto, seg.len() as u32);
    let c = !csum::fold(csum::sum(seg, acc));
    let c = if proto == IPPROTO_UDP {
        udp6_checksum(c)
    } else {
        c
    };
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A TCP segment (20-byte header, sequence number 1000) from `[ip.src]:sport` to
/// `[ip.dst]:dport`.
pub fn tcp6(ip: Ip6, sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&1000u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    seg.extend_from_slice(data);
    l4_checksum6(&ip, IPPROTO_TCP, &mut seg, 16);
    ipv6_frame(ip, IPPROTO_TCP, &seg)
}

/// A UDP datagram (header + data), with its checksum over `ip`'s pseudo-header or, when
/// `with_checksum` is false, 0 (which IPv6 forbids: RFC 8200, 8.1). Cut it into
/// fragments for [`ipv6_frame`] with a fragment header.
pub fn udp6_datagram(
    ip: &Ip6,
    sport: u16,
    dport: u16,
    data: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + data.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(data);
    if with_checksum {
        l4_checksum6(ip, IPPROTO_UDP, &mut d, 6);
    }
    d
}

/// An Ethernet + IPv6 + UDP frame with a correct checksum.
pub fn udp6(ip: Ip6, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    ipv6_frame(
        ip,
        IPPROTO_UDP,
        &udp6_datagram(&ip, sport, dport, data, true),
    )
}

/// An ICMPv6 message of type `ty` and `code` whose body (after type, code and checksum)
/// is `body`, with its checksum over the pseudo-header (RFC 4443, 2.3).
pub fn icmp6(ip: Ip6, ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    l4_checksum6(&ip, IPPROTO_ICMPV6, &mut m, 2);
    ipv6_frame(ip, IPPROTO_ICMPV6, &m)
}

/// An ICMPv6 echo request (`ty` 128) or reply (`ty` 129).
pub fn icmp6_echo(ip: Ip6, ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(b"netplane");
    icmp6(ip, ty, 0, &body)
}

/// The minimum MTU of IPv6 (RFC 8200, 5), and the most an ICMPv6 error may be.
pub const IPV6_MIN_MTU: usize = 1280;

/// An ICMPv6 error of type `ty` and `code` from `ip`, quoting the IPv6 packet of `frame`
/// as much as fits in [`IPV6_MIN_MTU`] bytes (RFC 4443, 2.4 (c)), as Linux quotes.
/// `param` is the 32-bit field after the checksum: Packet Too Big's MTU, Parameter
/// Problem's pointer, unused (0) otherwise.
pub fn icmp6_error(ip: Ip6, ty: u8, code: u8, param: u32, frame: &[u8]) -> Vec<u8> {
    let room = IPV6_MIN_MTU - IPV6_HLEN - 8;
    let quote = &frame[14..];
    let mut body = param.to_be_bytes().to_vec();
    body.extend_from_slice(&quote[..quote.len().min(room)]);
    icmp6(ip, ty, code, &body)
}
