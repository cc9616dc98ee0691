//! Types and pure logic shared by netplane's eBPF programs and its agent.
//!
//! Everything here is `no_std` and allocation-free so that `netplane-ebpf` can call it,
//! and plain Rust so that `cargo test` covers it on the host. Map keys and values are
//! `#[repr(C)]` with explicit padding and derive bytemuck's `Pod`, so both sides agree on
//! the bytes without unsafe casts on the agent side.
#![no_std]

pub mod addr;
pub mod counters;
pub mod csum;
pub mod nat;
pub mod observe;
pub mod packet;
pub mod packet6;
