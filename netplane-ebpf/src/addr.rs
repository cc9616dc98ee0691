//! What an address is to netplane, from the maps the agent fills: one of the host's own
//! (local), loopback, in a container network, and which published port it reaches with a
//! port. Both NAT stages, ICMP errors and the socket programs ask.

use aya_ebpf::maps::lpm_trie::Key;
use netplane_common::nat::{Backend, NetInfo, PortKey};

use crate::maps::{LOCAL_ADDRS, PUBLISHED, SUBNETS};

/// The container network `addr` is in, if any.
#[inline(always)]
pub fn subnet_of(addr: u32) -> Option<NetInfo> {
    SUBNETS.get(Key::new(32, addr)).copied()
}

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
