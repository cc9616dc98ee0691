//! netplane: a container network data plane.
//!
//! - [`ebpf`]: the embedded eBPF object, its loader, and the programs' userspace halves.
//! - [`bpffs`]: the BPF filesystem that pins live in.
pub mod bpffs;
pub mod ebpf;
