//! Docker 28's gateway modes and `[[routes]]`: what may reach a container straight from the
//! outside, and where a container's packets go untranslated. ("Outside": anything that is
//! neither a local container network nor a never-NAT prefix.)
//!
//! Everything here is decided from LPM lookups (~10–20 ns each here): the container
//! network of the source or destination, whose [`NetInfo`] (NP_SUBNETS' value) carries
//! its gateway mode, and the never-NAT trie (NP_NEVER_NAT). Each is made only where the
//! config makes it matter ([`netplane_common::nat::flags`]), and where the packet has not
//! been settled more cheaply before (a conntrack hit, a published port):
//!
//! - uplink ingress, [`from_outside`]: only for what no flow and no published port
//!   accounts for, and is not addressed to the host: one subnet lookup (no translated
//!   traffic gets here), plus the never-NAT one with `[[routes]]`, plus one routed-ports
//!   lookup for a `routed` network's containers;
//! - a network's ingress (its bridge, or a ptp network's host veth), [`onward`]: the
//!   source's network when there are several networks or one is not `nat`, the
//!   destination's when there are several or one is `ptp`, the never-NAT trie with
//!   `[[routes]]`; a single `nat` bridge network without routes pays nothing new;
//! - uplink egress, [`source`]: the source's subnet lookup that masquerade always made
//!   (first: only a `nat` network's container needs the conntrack lookup of a published
//!   port's replies, so the host's and a routed container's packets skip it),
//!   plus the never-NAT one with `[[routes]]`.

use aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
use netplane_common::nat::{DpConfig, DropReason, NetInfo, flags, gateway_mode};

use crate::addr::{network_of, never_nat, no_network, routed_port};
use crate::family::Family;
use crate::metrics::drop;
use crate::parse::Packet;

/// A packet from the outside (in through the uplink) to `daddr`, which no translated or
/// tracked flow accounts for: passed or dropped by the gateway mode of the container
/// network `daddr` is in (passed when it is in none: transit, not ours). `routed_open`
/// says whether a `routed` network lets it in; it is asked only then. A `nat-unprotected`
/// network lets everything in, with the verdict of `unprotected`, which tracks the flow
/// so that its replies are not masqueraded.
#[inline(always)]
pub fn from_outside<A: Family>(
    saddr: A,
    daddr: A,
    cfg: &DpConfig,
    routed_open: impl FnOnce() -> bool,
    unprotected: impl FnOnce() -> i32,
) -> i32 {
    let net = network_of(daddr);
    if net.id == 0 {
        return TCX_NEXT;
    }
    match net.mode {
        gateway_mode::ISOLATED => drop(DropReason::IsolatedNetwork),
        // The host's own address on the network (its gateway) is no container's.
        _ if daddr == net.gateway => TCX_NEXT,
        // Other hosts' containers are peers: as between containers of one network (whose
        // replies to them are never masqueraded).
        _ if never_nat(saddr, cfg) => TCX_NEXT,
        gateway_mode::NAT_UNPROTECTED => unprotected(),
        gateway_mode::ROUTED if routed_open() => TCX_NEXT,
        _ => drop(DropReason::DirectRouting),
    }
}

/// Whether a `routed` network lets `p` (TCP, UDP or an ICMP query) in from the outside: a
/// container port its publish entries name, or an ICMP echo request.
#[inline(always)]
pub fn routed_open<A: Family>(p: &Packet<A>) -> bool {
    if p.proto == A::ICMP {
        p.icmp_type == A::ECHO_REQUEST
    } else {
        routed_port(p.daddr, p.dport, p.proto)
    }
}

/// A later fragment from the outside that follows no translated first fragment: it
/// carries no ports, so only an `isolated` network refuses it outright. Elsewhere its
/// first fragment decides: a datagram whose first fragment was refused never completes in
/// the container (and the kernel drops overlapping fragments, ip_frag_queue()).
#[inline(always)]
pub fn fragment_from_outside<A: Family>(daddr: A) -> i32 {
    unless_isolated(daddr)
}

/// From the outside to `daddr`: dropped only when it is in an `isolated` network.
#[inline(always)]
pub fn unless_isolated<A: Family>(daddr: A) -> i32 {
    let n = network_of(daddr);
    if n.id != 0 && n.mode == gateway_mode::ISOLATED {
        return drop(DropReason::IsolatedNetwork);
    }
    TCX_NEXT
}

/// Where a container's packet to a non-local address goes, at its network's ingress (its
/// bridge, or its ptp host veth).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Onward {
    /// To a container of a local network: its own (on ptp, or a broadcast), or another
    /// that isolation lets it reach. Nothing to translate.
    Container,
    /// To a never-NAT prefix, or from a `routed` network: leaves with its own address.
    Untranslated,
    /// To the outside from a `nat` network: masquerade.
    Outside,
}

/// The source's network, when the config makes it matter at a network's ingress (several
/// networks: isolation; a mode other than `nat`: what leaves translated); else, as when
/// it is in none, [`no_network`](crate::addr::no_network).
#[inline(always)]
fn source_network<A: Family>(p: &Packet<A>, cfg: &DpConfig) -> NetInfo<A> {
    if cfg.networks > 1 || cfg.flags & flags::MODES != 0 {
        network_of(p.saddr)
    } else {
        no_network()
    }
}

/// Where a container's packet to a non-local address goes (see [`Onward`]), or why it may
/// not: isolation between networks, an `isolated` network.
#[inline(always)]
pub fn onward<A: Family>(p: &Packet<A>, cfg: &DpConfig) -> Result<Onward, DropReason> {
    let from = source_network(p, cfg);
    // Nothing of an isolated network reaches its bridge's own hook legitimately: between
    // its containers the bridge switches, and the host has no address on it.
    if from.id != 0 && from.mode == gateway_mode::ISOLATED {
        return Err(DropReason::IsolatedNetwork);
    }
    // With one bridge network, a container's packet that reaches the host is never for
    // another container; on ptp, containers of one network talk through the host.
    if cfg.networks > 1 || cfg.flags & flags::PTP != 0 {
        let to = network_of(p.daddr);
        if to.id != 0 {
            if from.id != 0 && from.id != to.id {
                return Err(DropReason::Isolation);
            }
            return Ok(Onward::Container);
        }
    }
    if never_nat(p.daddr, cfg) || (from.id != 0 && from.mode == gateway_mode::ROUTED) {
        return Ok(Onward::Untranslated);
    }
    Ok(Onward::Outside)
}

/// Isolation for what a container sends that is not translated (ICMP errors, other
/// protocols, malformed packets): between networks, and out of an `isolated` one.
#[inline(always)]
pub fn contain<A: Family>(p: &Packet<A>, cfg: &DpConfig) -> i32 {
    let from = source_network(p, cfg);
    if from.id == 0 {
        return TCX_NEXT;
    }
    if from.mode == gateway_mode::ISOLATED {
        return drop(DropReason::IsolatedNetwork);
    }
    if cfg.networks > 1 {
        let to = network_of(p.daddr);
        if to.id != 0 && to.id != from.id {
            return drop(DropReason::Isolation);
        }
    }
    TCX_NEXT
}

/// Whether `p`, at a network's ingress to a host address, comes from an `isolated`
/// network (no lookup unless there is one).
#[inline(always)]
pub fn from_isolated<A: Family>(p: &Packet<A>, cfg: &DpConfig) -> bool {
    cfg.flags & flags::ISOLATED != 0 && {
        let n = network_of(p.saddr);
        n.id != 0 && n.mode == gateway_mode::ISOLATED
    }
}

/// Whether `daddr`, at a bridge's egress (the host sends it on), is in an `isolated`
/// network (no lookup unless there is one). Its own containers' packets never take the
/// bridge's own hooks: the bridge switches them.
#[inline(always)]
pub fn into_isolated<A: Family>(daddr: A, cfg: &DpConfig) -> bool {
    cfg.flags & flags::ISOLATED != 0 && {
        let n = network_of(daddr);
        n.id != 0 && n.mode == gateway_mode::ISOLATED
    }
}

/// A packet leaving through the uplink, by its source.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Not a container: the host's own, or in transit.
    Host,
    /// A container of a `nat` network, to the outside: masquerade.
    Nat,
    /// A container of a `nat-unprotected` network, to the outside: masquerade, but for the
    /// replies of flows the outside opened straight to it ([`netplane_common::nat::kind::DIRECT`]).
    Unprotected,
    /// A container of a `routed` network, to the outside: its own address, its flow
    /// tracked for the replies.
    Routed,
    /// A container, to a never-NAT prefix: its own address, nothing to track (the peer's
    /// packets come in as between containers).
    Peer,
    /// A container of an `isolated` network: never leaves.
    Isolated,
}

/// What a packet leaving through the uplink is, by its source and destination.
#[inline(always)]
pub fn source<A: Family>(p: &Packet<A>, cfg: &DpConfig) -> Source {
    let n = network_of(p.saddr);
    if n.id == 0 {
        Source::Host
    } else if n.mode == gateway_mode::ISOLATED {
        Source::Isolated
    } else if never_nat(p.daddr, cfg) {
        Source::Peer
    } else if n.mode == gateway_mode::ROUTED {
        Source::Routed
    } else if n.mode == gateway_mode::NAT_UNPROTECTED {
        Source::Unprotected
    } else {
        Source::Nat
    }
}
