//! What the programs tell the agent and `netplane monitor` beyond their verdicts: drops by
//! where they happened, translated packets, masquerade's port allocations, and the events
//! of the monitor's ring buffer. The layouts are shared by both sides, as the map types in
//! [`crate::nat`] are.

use bytemuck::{Pod, Zeroable};

use crate::nat::DROP_REASONS;

/// Map names (pinned with the others, see [`crate::nat::maps::PINNED`]).
pub mod maps {
    /// The monitor's events: a `BPF_MAP_TYPE_RINGBUF` of [`super::Event`]s, written only
    /// while [`crate::nat::DpConfig::monitor`] asks for them.
    pub const EVENTS: &str = "NP_EVENTS";
    /// Events lost to a full ring buffer: a per-CPU `u64` (one entry). The packet is never
    /// lost with its event.
    pub const EVENTS_LOST: &str = "NP_EVENTS_LOST";
    /// Packets and bytes translated, per [`super::path_slot`]: per-CPU
    /// [`crate::counters::Counters`].
    pub const TRANSLATED: &str = "NP_TRANSLATED";
    /// Masquerade's port allocations, per [`super::nat_stat`] slot: per-CPU `u64`.
    pub const NAT_STATS: &str = "NP_NAT_STATS";
    /// Conntrack events that are not drops, per [`super::ct_stat`] slot: per-CPU `u64`.
    pub const CT_STATS: &str = "NP_CT_STATS";
}

/// Which of netplane's two kinds of TC hook ran: the uplink's, or a network's (its bridge,
/// or a `ptp` container's host veth).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Uplink = 0,
    Network = 1,
}

/// The TC direction of the hook: what the interface received, or what it transmits.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Ingress = 0,
    Egress = 1,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Uplink, Hook::Network];
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Uplink => "uplink",
            Hook::Network => "network",
        }
    }
}

impl Dir {
    pub const ALL: [Dir; 2] = [Dir::Ingress, Dir::Egress];
    pub const fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// Where a packet was seen: the family, the hook and its direction, as one index in
/// `0..PATH_SLOTS`.
#[inline(always)]
pub const fn path_slot(v6: bool, hook: Hook, dir: Dir) -> u32 {
    ((v6 as u32) * 2 + hook as u32) * 2 + dir as u32
}

pub const PATH_SLOTS: u32 = 8;

/// The inverse of [`path_slot`], for the readers.
pub const fn path_of(slot: u32) -> (bool, Hook, Dir) {
    let dir = if slot & 1 == 0 {
        Dir::Ingress
    } else {
        Dir::Egress
    };
    let hook = if (slot >> 1) & 1 == 0 {
        Hook::Uplink
    } else {
        Hook::Network
    };
    (slot >> 2 != 0, hook, dir)
}

/// The index of a drop counter in `NP_DROPS`: a [`path_slot`] and a
/// [`crate::nat::DropReason`]. The value is [`crate::counters::Counters`].
#[inline(always)]
pub const fn drop_slot(path: u32, reason: u32) -> u32 {
    path * DROP_REASONS + reason
}

pub const DROP_SLOTS: u32 = PATH_SLOTS * DROP_REASONS;

/// The slots of `NP_NAT_STATS`, per family: add [`nat_stat::V6`] for IPv6.
pub mod nat_stat {
    /// A flow kept its own source port.
    pub const OWN: u32 = 0;
    /// A flow got another port from the search.
    pub const SEARCHED: u32 = 1;
    /// Ports the search tried and found taken.
    pub const RETRIES: u32 = 2;
    /// The search found no port (the packet is dropped as `nat-port-exhausted`).
    pub const FAILED: u32 = 3;
    pub const V6: u32 = 4;
    pub const SLOTS: u32 = 8;
}

/// The slots of `NP_CT_STATS`, per family: add [`ct_stat::V6`] for IPv6.
///
/// Each event has a slot per family: the IPv4 one, and `+ V6` for IPv6.
pub mod ct_stat {
    /// An assured flow could not enter the full main table (see
    /// [`crate::nat::DropReason::CtFull`], which `status` still shows among the drops).
    pub const FULL: u32 = 0;
    pub const V6: u32 = 1;
    /// Entries the data path put into the unreplied flows' table (`NP_CT_NEW`) under a
    /// key it did not hold.
    pub const NEW_INSERTED: u32 = 2;
    /// Entries the data path took out of it: promoted to the main table, expired, or
    /// given up.
    pub const NEW_LEFT: u32 = 4;
    /// Entries userspace deleted from it (the agent's garbage collection, `up`'s removal
    /// of a changed network's flows): written by userspace alone, in the first CPU's
    /// value.
    pub const NEW_COLLECTED: u32 = 6;
    pub const SLOTS: u32 = 8;

    /// The unreplied flows the table's LRU evicted to make room: what went in, less what
    /// left it otherwise and what is still there. With `inserted` read before the table
    /// is walked for `live`, and `left` and `collected` after, a flow that comes or goes
    /// meanwhile makes it low, never high.
    pub const fn evicted(inserted: u64, left: u64, collected: u64, live: u64) -> u64 {
        inserted.saturating_sub(left.saturating_add(collected).saturating_add(live))
    }
}

/// Bits of [`crate::nat::DpConfig::monitor`]: which events the programs write. 0, the
/// default, writes none, and costs one load and a branch per packet.
pub mod monitor {
    pub const DROP: u32 = 1;
    pub const FLOW: u32 = 2;
    pub const ALL: u32 = DROP | FLOW;
}

/// [`Event::kind`].
pub mod event_kind {
    /// A packet dropped: [`super::Event::reason`] says why.
    pub const DROP: u8 = 1;
    /// The first packet of a new flow (one event per flow).
    pub const FLOW_NEW: u8 = 2;
    /// A TCP flow changed state (SYN, SYN-ACK, FIN or RST seen, or replied): one event per
    /// change, never one per packet.
    pub const FLOW_STATE: u8 = 3;
}

/// A 5-tuple without its protocol, in wire order; an IPv4 address fills `[..4]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
}

/// One record of `NP_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// The interface whose hook saw the packet.
    pub ifindex: u32,
    /// `skb->len`.
    pub len: u32,
    /// [`event_kind`].
    pub kind: u8,
    /// [`Hook`].
    pub hook: u8,
    /// [`Dir`].
    pub dir: u8,
    /// 4 or 6.
    pub family: u8,
    /// A [`crate::nat::DropReason`] for a drop, else 0.
    pub reason: u8,
    /// The conntrack entry's kind (masquerade, published, …: `crate::nat::CtKind`), for a
    /// flow event.
    pub ct_kind: u8,
    /// The flow's TCP flags seen so far (`crate::nat::seen`), for a flow event.
    pub seen: u8,
    /// IP protocol number.
    pub proto: u8,
    /// The TC verdict the program returned (TC_ACT_SHOT for a drop).
    pub verdict: i32,
    pub _pad: u32,
    /// The tuple as the packet arrived at the hook.
    pub orig: Tuple,
    /// The tuple after translation (equal to `orig` when nothing was translated).
    pub xlat: Tuple,
}

#[cfg(feature = "user")]
// SAFETY: `Event` is `repr(C)`, has no padding and is valid for any bit pattern
// (bytemuck's `Pod` derive checks both at compile time).
unsafe impl aya::Pod for Event {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<Tuple>(), 36);
        assert_eq!(core::mem::size_of::<Event>(), 104);
        assert_eq!(core::mem::offset_of!(Event, orig), 32);
        assert_eq!(core::mem::offset_of!(Event, xlat), 68);
    }

    #[test]
    fn path_slots_are_a_bijection() {
        let mut seen = [false; PATH_SLOTS as usize];
        for v6 in [false, true] {
            for hook in Hook::ALL {
                for dir in Dir::ALL {
                    let s = path_slot(v6, hook, dir);
                    assert!(s < PATH_SLOTS);
                    assert!(!seen[s as usize]);
                    seen[s as usize] = true;
                    assert_eq!(path_of(s), (v6, hook, dir));
                }
            }
        }
        assert_eq!(drop_slot(PATH_SLOTS - 1, DROP_REASONS - 1), DROP_SLOTS - 1);
    }
}
