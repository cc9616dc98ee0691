//! Crafting frames for in-kernel tests (`BPF_PROG_TEST_RUN`), with correct checksums unless
//! a test breaks them on purpose.

use netplane_common::csum;
use netplane_common::packet::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

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
