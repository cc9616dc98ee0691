//! The per-direction packet/byte counters of the `netplane_count_*` TC programs.

use bytemuck::{Pod, Zeroable};

/// Which TC hook saw the packet. The discriminant is the index into [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The interface's TC ingress hook (packets the interface received).
    Ingress = 0,
    /// The interface's TC egress hook (packets the interface transmits).
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` holding one [`Counters`] per [`Direction`].
pub const COUNTERS_MAP: &str = "NETPLANE_COUNTERS";
/// Entries in [`COUNTERS_MAP`].
pub const COUNTERS_SLOTS: u32 = Direction::ALL.len() as u32;

/// Packets and bytes (`skb->len`, L2 header included) seen at one hook on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    /// Adds one packet of `len` bytes. Wrapping: the kernel never fails a packet over a
    /// counter, and 2^64 bytes is not reached in practice.
    #[inline(always)]
    pub fn record(&mut self, len: u32) {
        self.packets = self.packets.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(u64::from(len));
    }

    /// Sums per-CPU values, as read from a per-CPU map.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Counters>) -> Counters {
        per_cpu
            .into_iter()
            .fold(Counters::default(), |acc, c| Counters {
                packets: acc.packets.wrapping_add(c.packets),
                bytes: acc.bytes.wrapping_add(c.bytes),
            })
    }
}

#[cfg(feature = "user")]
// SAFETY: `Counters` is `repr(C)`, has no padding and is valid for any bit pattern
// (bytemuck's `Pod` derive checks both at compile time).
unsafe impl aya::Pod for Counters {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_sum() {
        let mut a = Counters::default();
        a.record(98);
        a.record(2);
        let mut b = Counters::default();
        b.record(1500);
        assert_eq!(
            Counters::sum([&a, &b]),
            Counters {
                packets: 3,
                bytes: 1600
            }
        );
    }

    #[test]
    fn layout_is_what_the_kernel_map_stores() {
        assert_eq!(core::mem::size_of::<Counters>(), 16);
        assert_eq!(Direction::Egress.index(), 1);
        assert_eq!(COUNTERS_SLOTS, 2);
    }
}
