//! What an address is to netplane, from the maps the agent fills: one of the host's own
//! (local), loopback, in a container network, in a never-NAT prefix, and which published
//! port it reaches with a port. Both NAT stages, ICMP errors and the socket programs ask.

use aya_ebpf::maps::lpm_trie::Key;
use netplane_common::nat::{Backend, DpConfig, NetInfo, PortKey, flags};

use crate::maps::{LOCAL_ADDRS, NEVER_NAT, PUBLISHED, ROUTED_PORTS, SUBNETS};

/// The container network `addr` is in, if any.
#[inline(always)]
pub fn subnet_of(addr: u32) -> Option<NetInfo> {
    SUBNETS.get(Key::new(32, addr)).copied()
}

/// The container network `addr` is in, as a value whose every field is defined: id 0
/// ([`NO_NETWORK`]) when it is in none. Where the answer is kept and tested more than
/// once, an `Option` would let the compiler read its payload speculatively, undefined when
/// it is `None`, which the verifier refuses (as crate::parse's `Parsed` says).
#[inline(always)]
pub fn network_of(addr: u32) -> NetInfo {
    match SUBNETS.get(Key::new(32, addr)) {
        Some(n) => *n,
        None => NO_NETWORK,
    }
}

/// No container network: [`NetInfo::id`] 0 (networks count from 1).
pub const NO_NETWORK: NetInfo = NetInfo {
    id: 0,
    gateway: 0,
    mode: 0,
    _pad: [0; 3],
};

/// 127.0.0.0/8 (the address is in network byte order: its first byte is the first octet).
#[inline(always)]
pub fn is_loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
}

/// One of the host's own addresses.
#[inline(always)]
pub fn is_local(addr: u32) -> bool {
    // SAFETY: a lookup; the value is not kept.
    unsafe { LOCAL_ADDRS.get(&addr).is_some() }
}

/// The backend of a published port reached at `addr:port`, if any. Published ports answer
/// on local addresses only, so one lookup settles the common case of a packet in transit.
#[inline(always)]
pub fn published(addr: u32, port: u16, proto: u8) -> Option<Backend> {
    if !is_local(addr) {
        return None;
    }
    published_on_local(addr, port, proto)
}

/// [`published`] for an address already known to be local.
#[inline(always)]
pub fn published_on_local(addr: u32, port: u16, proto: u8) -> Option<Backend> {
    let exact = PortKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: lookups; values are copied out.
    if let Some(b) = unsafe { PUBLISHED.get(&exact) } {
        return Some(*b);
    }
    unsafe { PUBLISHED.get(&PortKey { addr: 0, ..exact }) }.copied()
}

/// Whether `addr` is in a never-NAT prefix (a `[[routes]]` subnet). No lookup when there is
/// none.
#[inline(always)]
pub fn never_nat(addr: u32, cfg: &DpConfig) -> bool {
    cfg.flags & flags::ROUTES != 0 && NEVER_NAT.get(Key::new(32, addr)).is_some()
}

/// Whether `addr:port` (a container of a `routed` network) is open to the outside.
#[inline(always)]
pub fn routed_port(addr: u32, port: u16, proto: u8) -> bool {
    let key = PortKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: a lookup; the value is not kept.
    unsafe { ROUTED_PORTS.get(&key).is_some() }
}
