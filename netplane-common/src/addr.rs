//! The two address families of the data plane, as the programs hold addresses: IPv4 as
//! one `u32`, IPv6 as [`Ip6`], both the packet's bytes in network order. The map types of
//! [`crate::nat`] are generic over [`Addr`], so that IPv4 and IPv6 share one conntrack
//! design in separate maps, and an IPv4 flow costs what it cost before IPv6 existed.

use bytemuck::{Pod, Zeroable};

/// An IPv6 address: its 16 bytes in network order, read as four `u32` (4-byte aligned,
/// as the kernel's `struct in6_addr` and `bpf_sock_tuple` have it).
pub type Ip6 = [u32; 4];

/// An address of one family.
pub trait Addr:
    Copy + Eq + Default + Pod + Zeroable + core::fmt::Debug + core::hash::Hash + 'static
{
    /// 32 or 128: the prefix length of a single address.
    const BITS: u32;
    /// 0.0.0.0 or ::, which published-port keys use for "every local address".
    const UNSPECIFIED: Self;
    /// All ones: an address no flow has (IPv4's broadcast, in IPv6 a multicast one).
    const ALL_ONES: Self;
    /// The address folded into 32 bits, to spread port choices.
    fn fold(&self) -> u32;
}

impl Addr for u32 {
    const BITS: u32 = 32;
    const UNSPECIFIED: u32 = 0;
    const ALL_ONES: u32 = u32::MAX;
    #[inline(always)]
    fn fold(&self) -> u32 {
        *self
    }
}

impl Addr for Ip6 {
    const BITS: u32 = 128;
    const UNSPECIFIED: Ip6 = [0; 4];
    const ALL_ONES: Ip6 = [u32::MAX; 4];
    #[inline(always)]
    fn fold(&self) -> u32 {
        self[0] ^ self[1].rotate_left(5) ^ self[2].rotate_left(11) ^ self[3].rotate_left(17)
    }
}

/// The [`Ip6`] of 16 network-order bytes.
pub fn ip6(octets: [u8; 16]) -> Ip6 {
    bytemuck::cast(octets)
}

/// The 16 network-order bytes of an [`Ip6`].
pub fn octets6(a: Ip6) -> [u8; 16] {
    bytemuck::cast(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip6_keeps_the_bytes_in_network_order() {
        let b = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(octets6(ip6(b)), b);
        assert_eq!(ip6(b)[0], u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]));
    }
}
