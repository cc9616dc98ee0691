//! Rewrites with incremental checksum updates by the kernel's helpers
//! (bpf_l3_csum_replace / bpf_l4_csum_replace, RFC 1624 inside).
//!
//! An address change also changes the TCP/UDP pseudo-header, hence BPF_F_PSEUDO_HDR: with
//! it the helper also fixes CHECKSUM_PARTIAL packets, whose L4 field holds only the
//! pseudo-header sum (inet_proto_csum_replace4()). Veth never verifies checksums, so a
//! mistake here would not break a connection over veth: the tests check on the wire.
//! A UDP checksum of 0 means "none" (RFC 768): BPF_F_MARK_MANGLED_0 leaves it 0.

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use aya_ebpf::programs::TcContext;
use netplane_common::nat::Side;
use netplane_common::packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::parse::{Frag, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, Packet, ptr_at};

/// Writes `v` at `off`: in place when the linear data holds it (after the checksum
/// helpers, which may move the data, so the pointer is taken anew), else by helper.
#[inline(always)]
pub fn write<T: Copy>(ctx: &TcContext, off: usize, v: T) -> Result<(), i64> {
    match ptr_at::<T>(ctx, off) {
        // SAFETY: ptr_at checked that the whole T is inside the packet. A TC program may
        // write packet data directly: for one that does, the verifier adds a prologue
        // that unclones the skb (tc_cls_act_prologue() in net/core/filter.c).
        Some(p) => {
            unsafe { core::ptr::write_unaligned(p, v) };
            Ok(())
        }
        None => ctx.store(off, &v, 0),
    }
}

/// The offset of the L4 checksum and the extra helper flags for the packet's protocol.
#[inline(always)]
fn l4_csum(p: &Packet) -> Option<(usize, u64)> {
    match p.proto {
        IPPROTO_TCP => Some((p.l4_off + 16, 0)),
        IPPROTO_UDP => Some((p.l4_off + 6, BPF_F_MARK_MANGLED_0 as u64)),
        IPPROTO_ICMP => Some((p.l4_off + 2, 0)),
        _ => None,
    }
}

/// Writes `new` as the packet's source or destination address.
#[inline(always)]
pub fn set_addr(ctx: &TcContext, p: &mut Packet, side: Side, new: u32) -> Result<(), i64> {
    let (off, old) = match side {
        Side::Src => (IP_SRC_OFF, p.saddr),
        Side::Dst => (IP_DST_OFF, p.daddr),
    };
    if old == new {
        return Ok(());
    }
    // ICMP has no pseudo-header; a later fragment has no L4 header at all.
    if p.frag != Frag::Later && p.proto != IPPROTO_ICMP {
        if let Some((csum_off, flags)) = l4_csum(p) {
            ctx.l4_csum_replace(
                csum_off,
                old as u64,
                new as u64,
                flags | BPF_F_PSEUDO_HDR as u64 | 4,
            )?;
        }
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)?;
    write(ctx, off, new)?;
    match side {
        Side::Src => p.saddr = new,
        Side::Dst => p.daddr = new,
    }
    Ok(())
}

/// Writes `new` as the source or destination port (the ICMP echo identifier for ICMP).
#[inline(always)]
pub fn set_port(ctx: &TcContext, p: &mut Packet, side: Side, new: u16) -> Result<(), i64> {
    let old = match side {
        Side::Src => p.sport,
        Side::Dst => p.dport,
    };
    if old == new || p.frag == Frag::Later {
        return Ok(());
    }
    let off = match (p.proto, side) {
        (IPPROTO_ICMP, _) => p.l4_off + 4,
        (_, Side::Src) => p.l4_off,
        (_, Side::Dst) => p.l4_off + 2,
    };
    if let Some((csum_off, flags)) = l4_csum(p) {
        ctx.l4_csum_replace(csum_off, old as u64, new as u64, flags | 2)?;
    }
    write(ctx, off, new)?;
    match side {
        Side::Src => p.sport = new,
        Side::Dst => p.dport = new,
    }
    Ok(())
}
