//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! In the data path the kernel helpers `bpf_l3_csum_replace`/`bpf_l4_csum_replace` do the
//! incremental update on the skb; this module is the reference they are tested against and
//! what the agent and the tests use to build and verify packets.

/// One's-complement sum of `data` as big-endian 16-bit words, added to `acc`, unfolded.
/// An odd trailing byte is padded with zero, as RFC 1071 says.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so that `acc` cannot overflow on jumbo payloads.
        if acc & 0x8000_0000 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds a 32-bit one's-complement accumulator to 16 bits (not inverted).
pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (the field itself must be zero in `data`, or the
/// result is 0 when the stored checksum is right).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP checksums.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut acc = sum(&src, 0);
    acc = sum(&dst, acc);
    acc + u32::from(proto) + u32::from(l4_len)
}

/// Sum of the IPv6 pseudo-header (RFC 8200, 8.1) used by TCP, UDP and ICMPv6 checksums:
/// both addresses, the upper-layer length, and the next header value.
pub fn pseudo_header6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4_len: u32) -> u32 {
    let mut acc = sum(&src, 0);
    acc = sum(&dst, acc);
    acc = sum(&l4_len.to_be_bytes(), acc);
    acc + u32::from(next_header)
}

/// RFC 1624 for a 128-bit field (an IPv6 address, which every upper-layer checksum
/// covers through the pseudo-header; IPv6 has no header checksum): eight 16-bit
/// replacements, folded into one.
pub fn replace128(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut acc = u32::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit field changes from `old` to `new`.
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// RFC 1624 for a 32-bit field (an IPv4 address): two 16-bit replacements.
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, (old >> 16) as u16, (new >> 16) as u16);
    replace16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The IPv4 header from RFC 1071's usual worked example (Wikipedia "IPv4 header checksum").
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn known_ipv4_header() {
        assert_eq!(checksum(&HDR), 0xb861);
        let mut h = HDR;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0, "a correct header sums to 0xffff");
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[0x01, 0x02, 0x03]), !(0x0102u16 + 0x0300));
    }

    #[test]
    fn incremental_update_matches_recompute() {
        // Rewrite the source address (bytes 12..16) the way SNAT does.
        let mut h = HDR;
        let before = checksum(&h);
        let old = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let new = u32::from_be_bytes([203, 0, 113, 1]);
        h[12..16].copy_from_slice(&new.to_be_bytes());
        assert_eq!(replace32(before, old, new), checksum(&h));
        // And a port-sized field.
        let mut p = [0u8; 8];
        p[0..2].copy_from_slice(&40000u16.to_be_bytes());
        let c0 = checksum(&p);
        p[0..2].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(replace16(c0, 40000, 8080), checksum(&p));
    }

    #[test]
    fn no_overflow_on_large_buffers() {
        let big = [0xffu8; 70_000];
        assert_eq!(checksum(&big), 0);
    }

    #[test]
    fn an_ipv6_address_change_folds_into_the_l4_checksum() {
        // A UDP datagram's checksum over the IPv6 pseudo-header, then its source rewritten
        // (masquerade): the incremental update equals a full recomputation.
        let src = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ];
        let dst = [
            0x20, 0x01, 0x0d, 0xb8, 1, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ];
        let new_src = [
            0x20, 0x01, 0x0d, 0xb8, 1, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        let mut udp = [
            0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g',
        ];
        let full =
            |s: [u8; 16], u: &[u8]| !fold(sum(u, pseudo_header6(s, dst, 17, u.len() as u32)));
        let before = full(src, &udp);
        udp[6..8].copy_from_slice(&before.to_be_bytes());
        assert_eq!(fold(sum(&udp, pseudo_header6(src, dst, 17, 12))), 0xffff);
        let after = replace128(before, src, new_src);
        udp[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(after, full(new_src, &udp));
        // Changing nothing changes nothing.
        assert_eq!(replace128(before, src, src), before);
    }
}
