//! IPv6 packet parsing over byte slices: the fixed header, the extension-header chain
//! walked to a bounded depth, the fragment header, and what NAT66 must leave alone.
//!
//! The counterpart of [`crate::packet`] for IPv6, with the rules the eBPF programs will
//! follow (`MAX_EXT_HEADERS`: the verifier needs a bound, and a chain longer than this is
//! not a packet a container network needs to translate), so that the agent, the tests and
//! the programs agree on what a packet is.

use crate::csum;
use crate::packet::ParseError;

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Extension headers that may precede the upper layer (RFC 8200, 4.1): hop-by-hop,
/// routing, fragment, destination options; the two that end a walk: no next header, and
/// the encrypted payload (ESP), past which nothing can be read.
pub mod next {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AUTH: u8 = 51;
    pub const NONE: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// How many extension headers a walk follows before it gives up.
pub const MAX_EXT_HEADERS: usize = 6;

/// Neighbour discovery (RFC 4861): router and neighbour solicitations and advertisements,
/// and redirects. Link-local by definition: NAT66 passes them untouched.
pub fn is_ndp(icmpv6_type: u8) -> bool {
    (133..=137).contains(&icmpv6_type)
}

/// ICMPv6 errors (types below 128) quote the packet that caused them: NAT66 translates
/// them back, quote included. Packet Too Big (2) is the one path MTU discovery needs.
pub fn is_icmpv6_error(icmpv6_type: u8) -> bool {
    icmpv6_type < 128
}

/// The fragment header's fields (RFC 8200, 4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: usize,
    pub more: bool,
    pub id: u32,
}

/// One IPv6 packet: its fixed header, the upper-layer protocol found after the extension
/// headers, where that upper layer starts, and the fragment header if there was one.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6<'a> {
    pub header: &'a [u8],
    /// Everything after the fixed header, cut to the payload length.
    pub payload: &'a [u8],
    /// The upper-layer protocol (TCP, UDP, ICMPv6…), or `next::NONE`/`next::ESP`.
    pub protocol: u8,
    /// Where the upper-layer header starts in `payload`.
    pub l4_offset: usize,
    pub fragment: Option<Fragment>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Error {
    Parse(ParseError),
    /// More than [`MAX_EXT_HEADERS`] extension headers.
    TooManyExtensionHeaders,
}

impl From<ParseError> for Ipv6Error {
    fn from(e: ParseError) -> Self {
        Ipv6Error::Parse(e)
    }
}

/// Parses the IPv6 packet inside an Ethernet II frame.
pub fn parse_ethernet6(frame: &[u8]) -> Result<Ipv6<'_>, Ipv6Error> {
    let ethertype = frame.get(12..14).ok_or(ParseError::Truncated)?;
    if u16::from_be_bytes([ethertype[0], ethertype[1]]) != ETH_P_IPV6 {
        return Err(ParseError::NotIpv6.into());
    }
    parse_ipv6(&frame[crate::packet::ETH_HLEN..])
}

/// Parses an IPv6 packet starting at `buf[0]`, walking its extension headers.
pub fn parse_ipv6(buf: &[u8]) -> Result<Ipv6<'_>, Ipv6Error> {
    let header = buf.get(..IPV6_HLEN).ok_or(ParseError::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(ParseError::NotIpv6.into());
    }
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let payload = buf
        .get(IPV6_HLEN..IPV6_HLEN + len)
        .ok_or(ParseError::Truncated)?;
    let mut protocol = header[6];
    let mut offset = 0;
    let mut fragment = None;
    for _ in 0..=MAX_EXT_HEADERS {
        match protocol {
            next::HOP_BY_HOP | next::ROUTING | next::DEST_OPTS => {
                let ext = payload
                    .get(offset..offset + 2)
                    .ok_or(ParseError::Truncated)?;
                protocol = ext[0];
                // In 8-octet units, not counting the first 8.
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            next::AUTH => {
                let ext = payload
                    .get(offset..offset + 2)
                    .ok_or(ParseError::Truncated)?;
                protocol = ext[0];
                // In 4-octet units, not counting the first 2 (RFC 4302, 2.2).
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            next::FRAGMENT => {
                let ext = payload
                    .get(offset..offset + 8)
                    .ok_or(ParseError::Truncated)?;
                protocol = ext[0];
                let field = u16::from_be_bytes([ext[2], ext[3]]);
                fragment = Some(Fragment {
                    offset: usize::from(field >> 3) * 8,
                    more: field & 1 != 0,
                    id: u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]),
                });
                offset += 8;
            }
            _ => {
                if offset > payload.len() {
                    return Err(ParseError::Truncated.into());
                }
                return Ok(Ipv6 {
                    header,
                    payload,
                    protocol,
                    l4_offset: offset,
                    fragment,
                });
            }
        }
    }
    Err(Ipv6Error::TooManyExtensionHeaders)
}

impl<'a> Ipv6<'a> {
    pub fn src(&self) -> [u8; 16] {
        self.header[8..24].try_into().expect("40-byte header")
    }

    pub fn dst(&self) -> [u8; 16] {
        self.header[24..40].try_into().expect("40-byte header")
    }

    /// The upper layer: after the extension headers.
    pub fn l4(&self) -> &'a [u8] {
        &self.payload[self.l4_offset..]
    }

    /// A later fragment has no upper-layer header: it follows its first fragment.
    pub fn is_later_fragment(&self) -> bool {
        self.fragment.is_some_and(|f| f.offset != 0)
    }

    /// Source and destination port of TCP or UDP (not of a later fragment).
    pub fn ports(&self) -> Option<(u16, u16)> {
        if !matches!(
            self.protocol,
            crate::packet::IPPROTO_TCP | crate::packet::IPPROTO_UDP
        ) || self.is_later_fragment()
        {
            return None;
        }
        let p = self.l4().get(..4)?;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }

    /// Verifies the TCP, UDP or ICMPv6 checksum of an unfragmented packet over the
    /// IPv6 pseudo-header. A zero UDP checksum is invalid in IPv6 (RFC 8200, 8.1).
    /// `None` when it cannot be checked: a fragment, or another protocol.
    pub fn l4_checksum_ok(&self) -> Option<bool> {
        if self.fragment.is_some() {
            return None;
        }
        let l4 = self.l4();
        let len = u32::try_from(l4.len()).ok()?;
        match self.protocol {
            crate::packet::IPPROTO_UDP if l4.get(6..8)? == [0, 0] => Some(false),
            crate::packet::IPPROTO_TCP | crate::packet::IPPROTO_UDP | IPPROTO_ICMPV6 => {
                let acc = csum::pseudo_header6(self.src(), self.dst(), self.protocol, len);
                Some(csum::fold(csum::sum(l4, acc)) == 0xffff)
            }
            _ => None,
        }
    }
}

/// A UDP checksum as IPv6 must carry it: a computed 0 is sent as 0xffff, since 0 means
/// "none", which IPv6 does not allow (RFC 8200, 8.1).
pub fn udp6_checksum(computed: u16) -> u16 {
    if computed == 0 { 0xffff } else { computed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{IPPROTO_TCP, IPPROTO_UDP};

    const SRC: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const DST: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 1, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// An IPv6 packet of `next` carrying `ext` (extension headers, already chained) and
    /// `l4`, with a correct checksum when `l4` is UDP (its checksum field at 6..8).
    fn packet(next: u8, ext: &[u8], l4: &[u8], l4_proto: u8) -> [u8; 256] {
        let mut p = [0u8; 256];
        let len = ext.len() + l4.len();
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&SRC);
        p[24..40].copy_from_slice(&DST);
        p[40..40 + ext.len()].copy_from_slice(ext);
        let at = 40 + ext.len();
        p[at..at + l4.len()].copy_from_slice(l4);
        if l4_proto == IPPROTO_UDP {
            let acc = csum::pseudo_header6(SRC, DST, IPPROTO_UDP, l4.len() as u32);
            let c = udp6_checksum(!csum::fold(csum::sum(&p[at..at + l4.len()], acc)));
            p[at + 6..at + 8].copy_from_slice(&c.to_be_bytes());
        }
        p
    }

    const UDP: [u8; 12] = [
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0, 0, b'p', b'i', b'n', b'g',
    ];

    #[test]
    fn a_plain_udp_packet() {
        let p = packet(IPPROTO_UDP, &[], &UDP, IPPROTO_UDP);
        let v6 = parse_ipv6(&p).unwrap();
        assert_eq!(
            (v6.protocol, v6.l4_offset, v6.fragment),
            (IPPROTO_UDP, 0, None)
        );
        assert_eq!(v6.ports(), Some((40000, 53)));
        assert_eq!((v6.src(), v6.dst()), (SRC, DST));
        assert_eq!(v6.l4_checksum_ok(), Some(true));
        // Trailing bytes past the payload length are not the packet's.
        assert_eq!(v6.payload.len(), UDP.len());
    }

    #[test]
    fn a_zero_udp_checksum_is_invalid() {
        let mut p = packet(IPPROTO_UDP, &[], &UDP, IPPROTO_UDP);
        p[46..48].copy_from_slice(&[0, 0]);
        assert_eq!(parse_ipv6(&p).unwrap().l4_checksum_ok(), Some(false));
        assert_eq!(udp6_checksum(0), 0xffff);
        assert_eq!(udp6_checksum(0x1234), 0x1234);
    }

    #[test]
    fn extension_headers_are_walked_to_the_upper_layer() {
        // Hop-by-hop (8 bytes) → destination options (16 bytes) → TCP.
        let mut ext = [0u8; 24];
        ext[0] = next::DEST_OPTS;
        ext[1] = 0;
        ext[8] = IPPROTO_TCP;
        ext[9] = 1;
        let tcp = [
            0x1f, 0x90, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0,
        ];
        let p = packet(next::HOP_BY_HOP, &ext, &tcp, IPPROTO_TCP);
        let v6 = parse_ipv6(&p).unwrap();
        assert_eq!((v6.protocol, v6.l4_offset), (IPPROTO_TCP, 24));
        assert_eq!(v6.ports(), Some((8080, 80)));
    }

    #[test]
    fn fragments_carry_ports_only_in_the_first() {
        // Fragment header: next UDP, offset 0, more fragments, id 0xdeadbeef.
        let first = [IPPROTO_UDP, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef];
        let p = packet(next::FRAGMENT, &first, &UDP, 0);
        let v6 = parse_ipv6(&p).unwrap();
        let frag = v6.fragment.unwrap();
        assert_eq!((frag.offset, frag.more, frag.id), (0, true, 0xdead_beef));
        assert_eq!(v6.ports(), Some((40000, 53)));
        assert_eq!(
            v6.l4_checksum_ok(),
            None,
            "a fragment cannot be checked alone"
        );
        // A later one: offset 1448 (181 units), last.
        let later = [
            IPPROTO_UDP,
            0,
            (1448u16 >> 8) as u8,
            (1448u16 & 0xf8) as u8,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        let p = packet(next::FRAGMENT, &later, &UDP, 0);
        let v6 = parse_ipv6(&p).unwrap();
        assert!(v6.is_later_fragment());
        assert_eq!(v6.fragment.unwrap().offset, 1448);
        assert_eq!(v6.ports(), None);
    }

    #[test]
    fn a_chain_longer_than_the_bound_is_refused() {
        // Seven destination-options headers, each pointing at the next.
        let mut ext = [0u8; 56];
        for i in 0..7 {
            ext[i * 8] = if i < 6 { next::DEST_OPTS } else { IPPROTO_UDP };
        }
        let p = packet(next::DEST_OPTS, &ext, &UDP, 0);
        assert_eq!(
            parse_ipv6(&p).unwrap_err(),
            Ipv6Error::TooManyExtensionHeaders
        );
        // Six are fine.
        let p = packet(next::DEST_OPTS, &ext[8..], &UDP, 0);
        assert_eq!(parse_ipv6(&p).unwrap().protocol, IPPROTO_UDP);
    }

    #[test]
    fn truncated_and_foreign_packets() {
        let p = packet(IPPROTO_UDP, &[], &UDP, IPPROTO_UDP);
        assert_eq!(
            parse_ipv6(&p[..39]).unwrap_err(),
            Ipv6Error::Parse(ParseError::Truncated)
        );
        assert_eq!(
            parse_ipv6(&p[..45]).unwrap_err(),
            Ipv6Error::Parse(ParseError::Truncated)
        );
        let mut v4 = p;
        v4[0] = 0x45;
        assert!(parse_ipv6(&v4).is_err());
        // NDP is left alone; errors are translated back.
        assert!(is_ndp(135) && is_ndp(133) && !is_ndp(128) && !is_ndp(2));
        assert!(is_icmpv6_error(2) && !is_icmpv6_error(128));
    }
}
