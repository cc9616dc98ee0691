//! The source port of a translated flow: reserving one for a new flow (masquerade to the
//! uplink address, hairpin to a gateway), and finding the one a masqueraded flow has.
//!
//! As Cilium's snat_v4_new_mapping(): the packet's own port when it is free, else up to
//! NAT_PORT_RETRIES candidates spread by the tuple's hash. A port is taken by inserting the
//! entry of the flow's replies (conntrack::insert_new): the conntrack map is the only
//! record of the ports in use.

use netplane_common::nat::{
    CtEntry, CtKey, DpConfig, DropReason, NAT_PORT_RETRIES, Side, Tick, nat_port_candidate,
    tuple_hash,
};
use netplane_common::packet::IPPROTO_ICMP;

use crate::addr::published;
use crate::conntrack::{self, Probe, key_of, opens_flow};
use crate::parse::Packet;

/// Whether a container's packet to the outside belongs to a masqueraded flow.
pub enum Masquerade {
    /// Yes: the flow's source port on the uplink address (network byte order).
    Port(u16),
    None,
}

/// The source port masquerade gave the flow of `p` (container → outside), if any.
///
/// A masqueraded flow has a single entry, its replies' (peer → uplink:port, saying which
/// container and port they go to). The original direction finds it by trying the ports
/// [`reserve_port`] hands out, in its order: the packet's own source port first, where
/// nearly every flow is, then the candidates. A new flow whose own port is free takes
/// that at once. So does, rarely, a UDP or ICMP flow that got a candidate port and whose
/// own port was freed since: its later packets leave from its own port again, as after a
/// NAT rebinding. A TCP segment without SYN never opens a flow, so it looks further, and
/// finds its connection.
#[inline(always)]
pub fn masquerade_port(p: &Packet, cfg: &DpConfig, now: Tick) -> Masquerade {
    let at = |port: u16| CtKey::new(p.daddr, cfg.uplink_addr, p.dport, port, p.proto, Side::Dst);
    let me = Some((p.saddr, p.sport));
    match conntrack::probe(&at(p.sport), me, cfg, now, p.tcp_flags) {
        Probe::Mine(_) => return Masquerade::Port(p.sport),
        Probe::Free if opens_flow(p) => return Masquerade::None,
        Probe::Free | Probe::Other => {}
    }
    let hash = tuple_hash(&key_of(p, Side::Src));
    for i in 0..NAT_PORT_RETRIES {
        let port = nat_port_candidate(hash, i, cfg.nat_port_min, cfg.nat_port_max).to_be();
        if let Probe::Mine(_) = conntrack::probe(&at(port), me, cfg, now, p.tcp_flags) {
            return Masquerade::Port(port);
        }
    }
    Masquerade::None
}

/// Reserves a source port on `nat_addr` for a flow towards `peer:peer_port` by inserting
/// the dst-stage entry of its replies: the original port when free, else up to
/// NAT_PORT_RETRIES candidates. Returns the port (network byte order).
#[inline(always)]
pub fn reserve_port(
    p: &Packet,
    nat_addr: u32,
    peer: u32,
    peer_port: u16,
    reply: &CtEntry,
    cfg: &DpConfig,
    now: Tick,
) -> Result<u16, DropReason> {
    let hash = tuple_hash(&key_of(p, Side::Src));
    let mut port = p.sport;
    for i in 0..=NAT_PORT_RETRIES {
        if i > 0 {
            port = nat_port_candidate(hash, i - 1, cfg.nat_port_min, cfg.nat_port_max).to_be();
        }
        // A published port of the NAT address is never handed out.
        if p.proto == IPPROTO_ICMP || published(nat_addr, port, p.proto).is_none() {
            let rk = CtKey::new(peer, nat_addr, peer_port, port, p.proto, Side::Dst);
            if conntrack::insert_new(&rk, reply, cfg, now, false) {
                return Ok(port);
            }
        }
    }
    Err(DropReason::NatPortExhausted)
}
