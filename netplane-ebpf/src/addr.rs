//! What an address is to netplane, from the maps the agent fills: one of the host's own
//! (local), loopback, in a container network, in a never-NAT prefix, and which published
//! port it reaches with a port. Both NAT stages, ICMP errors and the socket programs ask,
//! for either family.

use aya_ebpf::maps::lpm_trie::Key;
use netplane_common::addr::Addr;
use netplane_common::nat::{Backend, DpConfig, NetInfo, PortKey, flags};

use crate::family::Family;

/// The container network `addr` is in, if any.
#[inline(always)]
pub fn subnet_of<A: Family>(addr: A) -> Option<NetInfo<A>> {
    A::subnets().get(Key::new(A::BITS, addr)).copied()
}

/// The container network `addr` is in, as a value whose every field is defined: id 0
/// ([`no_network`]) when it is in none. Where the answer is kept and tested more than
/// once, an `Option` would let the compiler read its payload speculatively, undefined when
/// it is `None`, which the verifier refuses (as crate::parse's `Parsed` says).
#[inline(always)]
pub fn network_of<A: Family>(addr: A) -> NetInfo<A> {
    match A::subnets().get(Key::new(A::BITS, addr)) {
        Some(n) => *n,
        None => no_network(),
    }
}

/// No container network: [`NetInfo::id`] 0 (networks count from 1).
#[inline(always)]
pub const fn no_network<A: Addr>() -> NetInfo<A> {
    NetInfo {
        id: 0,
        gateway: A::UNSPECIFIED,
        mode: 0,
        _pad: [0; 3],
    }
}

/// One of the host's own addresses.
#[inline(always)]
pub fn is_local<A: Family>(addr: A) -> bool {
    // SAFETY: a lookup; the value is not kept.
    unsafe { A::local_addrs().get(&addr).is_some() }
}

/// The backend of a published port reached at `addr:port`, if any. Published ports answer
/// on local addresses only, so one lookup settles the common case of a packet in transit.
#[inline(always)]
pub fn published<A: Family>(addr: A, port: u16, proto: u8) -> Option<Backend<A>> {
    if !is_local(addr) {
        return None;
    }
    published_on_local(addr, port, proto)
}

/// [`published`] for an address already known to be local.
#[inline(always)]
pub fn published_on_local<A: Family>(addr: A, port: u16, proto: u8) -> Option<Backend<A>> {
    let exact = PortKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: lookups; values are copied out.
    if let Some(b) = unsafe { A::published().get(&exact) } {
        return Some(*b);
    }
    unsafe {
        A::published().get(&PortKey {
            addr: A::UNSPECIFIED,
            ..exact
        })
    }
    .copied()
}

/// Whether `addr` is in a never-NAT prefix (a `[[routes]]` subnet). No lookup when there is
/// none.
#[inline(always)]
pub fn never_nat<A: Family>(addr: A, cfg: &DpConfig) -> bool {
    cfg.flags & flags::ROUTES != 0
        && A::never_nat_prefixes()
            .get(Key::new(A::BITS, addr))
            .is_some()
}

/// Whether `addr:port` (a container of a `routed` network) is open to the outside.
#[inline(always)]
pub fn routed_port<A: Family>(addr: A, port: u16, proto: u8) -> bool {
    let key = PortKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: a lookup; the value is not kept.
    unsafe { A::routed_ports().get(&key).is_some() }
}
