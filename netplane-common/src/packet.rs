//! IPv4 packet parsing and checksum verification over byte slices.
//!
//! The eBPF programs parse through bounds-checked pointers (the verifier needs that); this
//! is the slice-based counterpart the agent and the tests use to inspect packets captured
//! on the wire, with the same rules: IHL ≥ 5, total length within the buffer, ports only
//! in the first fragment.

use crate::csum;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP header flags (byte 13).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer ends before the header it claims to hold.
    Truncated,
    /// Not IPv4 (version field, or EtherType for [`parse_ethernet`]).
    NotIpv4,
    /// Not IPv6 (version field, or EtherType), for [`crate::packet6`].
    NotIpv6,
    /// IHL below 5 words, or total length shorter than the header.
    BadHeaderLength,
}

/// A view of one IPv4 packet: header and payload, cut to the header's total length.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4<'a> {
    pub header: &'a [u8],
    pub payload: &'a [u8],
}

/// Parses the IPv4 packet inside an Ethernet II frame.
pub fn parse_ethernet(frame: &[u8]) -> Result<Ipv4<'_>, ParseError> {
    let ethertype = frame.get(12..14).ok_or(ParseError::Truncated)?;
    if u16::from_be_bytes([ethertype[0], ethertype[1]]) != ETH_P_IP {
        return Err(ParseError::NotIpv4);
    }
    parse_ipv4(&frame[ETH_HLEN..])
}

/// Parses an IPv4 packet starting at `buf[0]`. Trailing bytes (Ethernet padding) are cut.
pub fn parse_ipv4(buf: &[u8]) -> Result<Ipv4<'_>, ParseError> {
    let first = *buf.first().ok_or(ParseError::Truncated)?;
    if first >> 4 != 4 {
        return Err(ParseError::NotIpv4);
    }
    let hlen = usize::from(first & 0x0f) * 4;
    if hlen < 20 {
        return Err(ParseError::BadHeaderLength);
    }
    let total = usize::from(u16::from_be_bytes([
        *buf.get(2).ok_or(ParseError::Truncated)?,
        *buf.get(3).ok_or(ParseError::Truncated)?,
    ]));
    if total < hlen {
        return Err(ParseError::BadHeaderLength);
    }
    let pkt = buf.get(..total).ok_or(ParseError::Truncated)?;
    Ok(Ipv4 {
        header: &pkt[..hlen],
        payload: &pkt[hlen..],
    })
}

impl<'a> Ipv4<'a> {
    pub fn src(&self) -> [u8; 4] {
        self.header[12..16]
            .try_into()
            .expect("header is ≥ 20 bytes")
    }
    pub fn dst(&self) -> [u8; 4] {
        self.header[16..20]
            .try_into()
            .expect("header is ≥ 20 bytes")
    }
    pub fn protocol(&self) -> u8 {
        self.header[9]
    }
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.header[4], self.header[5]])
    }
    /// Fragment offset in bytes.
    pub fn fragment_offset(&self) -> usize {
        usize::from(u16::from_be_bytes([self.header[6], self.header[7]]) & 0x1fff) * 8
    }
    pub fn more_fragments(&self) -> bool {
        self.header[6] & 0x20 != 0
    }
    /// Part of a fragmented datagram (first or later fragment).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    /// Source and destination port of a TCP or UDP first fragment.
    pub fn ports(&self) -> Option<(u16, u16)> {
        if !matches!(self.protocol(), IPPROTO_TCP | IPPROTO_UDP) || self.fragment_offset() != 0 {
            return None;
        }
        let p = self.payload.get(..4)?;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }

    pub fn header_checksum_ok(&self) -> bool {
        csum::checksum(self.header) == 0
    }

    /// Verifies the TCP, UDP or ICMP checksum over the whole (unfragmented) payload.
    ///
    /// `None` when it cannot be checked here: a fragment, or another protocol.
    /// A UDP checksum of zero means "not computed" (RFC 768) and counts as valid.
    pub fn l4_checksum_ok(&self) -> Option<bool> {
        if self.is_fragment() {
            return None;
        }
        let len = u16::try_from(self.payload.len()).ok()?;
        match self.protocol() {
            IPPROTO_ICMP => Some(csum::checksum(self.payload) == 0),
            IPPROTO_UDP if self.payload.get(6..8)? == [0, 0] => Some(true),
            p @ (IPPROTO_TCP | IPPROTO_UDP) => {
                let acc = csum::pseudo_header(self.src(), self.dst(), p, len);
                Some(!csum::fold(csum::sum(self.payload, acc)) == 0)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP datagram 10.0.0.1:1000 → 10.0.0.2:53 with payload "hi", checksums filled in.
    fn udp() -> [u8; 30] {
        let mut p = [0u8; 30];
        p[..20].copy_from_slice(&[
            0x45,
            0,
            0,
            30,
            0x12,
            0x34,
            0x40,
            0,
            64,
            IPPROTO_UDP,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ]);
        p[20..28].copy_from_slice(&[0x03, 0xe8, 0, 53, 0, 10, 0, 0]);
        p[28..].copy_from_slice(b"hi");
        let c = csum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let acc = csum::pseudo_header([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, 10);
        let c = !csum::fold(csum::sum(&p[20..], acc));
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn parses_and_verifies_udp() {
        let p = udp();
        let ip = parse_ipv4(&p).unwrap();
        assert_eq!(ip.src(), [10, 0, 0, 1]);
        assert_eq!(ip.ports(), Some((1000, 53)));
        assert!(ip.header_checksum_ok());
        assert_eq!(ip.l4_checksum_ok(), Some(true));
        assert!(!ip.is_fragment());
    }

    #[test]
    fn detects_a_rewrite_without_checksum_update() {
        let mut p = udp();
        p[12] = 203; // SNAT forgot both checksums
        let ip = parse_ipv4(&p).unwrap();
        assert!(!ip.header_checksum_ok());
        assert_eq!(
            ip.l4_checksum_ok(),
            Some(false),
            "the pseudo-header covers the address"
        );
    }

    #[test]
    fn udp_zero_checksum_is_valid() {
        let mut p = udp();
        p[26] = 0;
        p[27] = 0;
        assert_eq!(parse_ipv4(&p).unwrap().l4_checksum_ok(), Some(true));
    }

    #[test]
    fn rejects_malformed() {
        let p = udp();
        assert_eq!(parse_ipv4(&p[..10]).unwrap_err(), ParseError::Truncated);
        let mut bad = p;
        bad[0] = 0x44;
        assert_eq!(parse_ipv4(&bad).unwrap_err(), ParseError::BadHeaderLength);
        bad[0] = 0x65;
        assert_eq!(parse_ipv4(&bad).unwrap_err(), ParseError::NotIpv4);
        let mut long = p;
        long[3] = 31; // claims one byte more than the buffer
        assert_eq!(parse_ipv4(&long).unwrap_err(), ParseError::Truncated);
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut p = udp();
        p[6] = 0x00;
        p[7] = 0xb9; // offset 185 * 8 = 1480
        let ip = parse_ipv4(&p).unwrap();
        assert!(ip.is_fragment());
        assert_eq!(ip.ports(), None);
        assert_eq!(ip.l4_checksum_ok(), None);
    }

    #[test]
    fn ethernet_wrapping() {
        let mut f = [0u8; 44];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        f[14..].copy_from_slice(&udp());
        assert_eq!(parse_ethernet(&f).unwrap().dst(), [10, 0, 0, 2]);
        f[12] = 0x86;
        assert_eq!(parse_ethernet(&f).unwrap_err(), ParseError::NotIpv4);
    }
}
