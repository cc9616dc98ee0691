//! Rewrites with incremental checksum updates by the kernel's helpers
//! (bpf_l3_csum_replace / bpf_l4_csum_replace, RFC 1624 inside).
//!
//! An address change also changes the TCP/UDP pseudo-header, hence BPF_F_PSEUDO_HDR: with
//! it the helper also fixes CHECKSUM_PARTIAL packets, whose L4 field holds only the
//! pseudo-header sum (inet_proto_csum_replace4()). Veth never verifies checksums, so a
//! mistake here would not break a connection over veth: the tests check on the wire.
//! A UDP checksum of 0 means "none" (RFC 768): BPF_F_MARK_MANGLED_0 leaves it 0, and
//! turns a computed 0 into 0xffff, which IPv6 needs (it has no "none": RFC 8200, 8.1;
//! crate::parse drops a zero one as malformed).
//!
//! IPv6 has no header checksum, and its ICMPv6 checksum covers a pseudo-header as TCP's
//! and UDP's do (RFC 4443, 2.3): an address change is folded into all three.

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use aya_ebpf::helpers::generated::{bpf_csum_diff, bpf_csum_update};
use aya_ebpf::programs::TcContext;
use netplane_common::addr::Ip6;
use netplane_common::nat::Side;
use netplane_common::packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use netplane_common::packet6::IPPROTO_ICMPV6;

use crate::family::Family;
use crate::parse::{
    Frag, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, IP6_DST_OFF, IP6_SRC_OFF, Packet, ptr_at,
};

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

/// The offset of the L4 checksum and the extra helper flags for the packet's protocol;
/// `icmp` is the family's ICMP (the other family's is another protocol here).
#[inline(always)]
fn l4_csum<A>(p: &Packet<A>, icmp: u8) -> Option<(usize, u64)> {
    match p.proto {
        IPPROTO_TCP => Some((p.l4_off + 16, 0)),
        IPPROTO_UDP => Some((p.l4_off + 6, BPF_F_MARK_MANGLED_0 as u64)),
        proto if proto == icmp => Some((p.l4_off + 2, 0)),
        _ => None,
    }
}

/// Writes `new` as the IPv4 packet's source or destination address.
#[inline(always)]
pub fn set_addr4(ctx: &TcContext, p: &mut Packet, side: Side, new: u32) -> Result<(), i64> {
    let (off, old) = match side {
        Side::Src => (IP_SRC_OFF, p.saddr),
        Side::Dst => (IP_DST_OFF, p.daddr),
    };
    if old == new {
        return Ok(());
    }
    // ICMP has no pseudo-header; a later fragment has no L4 header at all.
    if p.frag != Frag::Later && p.proto != IPPROTO_ICMP {
        if let Some((csum_off, flags)) = l4_csum(p, IPPROTO_ICMP) {
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
pub fn set_port<A: Family>(
    ctx: &TcContext,
    p: &mut Packet<A>,
    side: Side,
    new: u16,
) -> Result<(), i64> {
    let old = match side {
        Side::Src => p.sport,
        Side::Dst => p.dport,
    };
    if old == new || p.frag == Frag::Later {
        return Ok(());
    }
    let off = match (p.proto, side) {
        (proto, _) if proto == A::ICMP => p.l4_off + 4,
        (_, Side::Src) => p.l4_off,
        (_, Side::Dst) => p.l4_off + 2,
    };
    if let Some((csum_off, flags)) = l4_csum(p, A::ICMP) {
        ctx.l4_csum_replace(csum_off, old as u64, new as u64, flags | 2)?;
    }
    write(ctx, off, new)?;
    match side {
        Side::Src => p.sport = new,
        Side::Dst => p.dport = new,
    }
    Ok(())
}

/// Writes an IPv6 address at `off`, as four 32-bit words (one 16-byte unaligned copy
/// crashes LLVM 22's BPF backend: post-RA MEMCPY expansion).
#[inline(always)]
pub fn write_addr6(ctx: &TcContext, off: usize, a: Ip6) -> Result<(), i64> {
    for (i, w) in a.iter().enumerate() {
        write(ctx, off + 4 * i, *w)?;
    }
    Ok(())
}

/// The checksum difference of replacing the 16 bytes `old` with `new` (bpf_csum_diff(),
/// a 32-bit one's complement sum), for the helpers' size-0 form that takes a sum.
#[inline(always)]
pub fn diff128(old: &Ip6, new: &Ip6) -> Result<u64, i64> {
    let (mut from, mut to) = (*old, *new);
    // SAFETY: both buffers are 16 bytes on the stack, as passed.
    let d = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if d < 0 {
        return Err(d);
    }
    Ok(d as u64)
}

/// Writes `new` as the IPv6 packet's source or destination address: the L4 checksum of
/// TCP, UDP and ICMPv6 takes the 128-bit change through its pseudo-header, in one sum.
#[inline(always)]
pub fn set_addr6(ctx: &TcContext, p: &mut Packet<Ip6>, side: Side, new: Ip6) -> Result<(), i64> {
    let (off, old) = match side {
        Side::Src => (IP6_SRC_OFF, p.saddr),
        Side::Dst => (IP6_DST_OFF, p.daddr),
    };
    if old == new {
        return Ok(());
    }
    let d = diff128(&old, &new)?;
    // A later fragment has no L4 header.
    if p.frag != Frag::Later
        && let Some((csum_off, flags)) = l4_csum(p, IPPROTO_ICMPV6)
    {
        ctx.l4_csum_replace(csum_off, 0, d, flags | BPF_F_PSEUDO_HDR as u64)?;
    }
    write_addr6(ctx, off, new)?;
    // On a CHECKSUM_COMPLETE skb (a NIC's receive checksum, which skb->csum carries) the
    // pseudo-header update above took the change out of skb->csum, as is right for IPv4,
    // where the IP header checksum absorbs the address change; IPv6 has none, so the
    // address's own change goes back in. Without it the receiver's checksum check fails
    // ("hw csum failure"), as Cilium found (cilium#39279; Linux 6.16's BPF_F_IPV6 does
    // it in the helper). A no-op on any other skb.
    // SAFETY: a helper that takes the context and a value.
    unsafe { bpf_csum_update(ctx.skb.skb, d as u32) };
    match side {
        Side::Src => p.saddr = new,
        Side::Dst => p.daddr = new,
    }
    Ok(())
}
