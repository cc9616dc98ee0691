//! netplane: a container network data plane.
//!
//! - [`config`]: the TOML config, validated and resolved into a [`config::Plan`].
//! - [`ebpf`]: the embedded eBPF object, its loader, and the programs' userspace halves.
//! - [`bpffs`]: the BPF filesystem that pins live in.
//! - [`instance`]: `up`, `down` and `status`, over [`topology`] (rtnetlink), [`netns`],
//!   [`sysctl`] and the recorded [`state`].
pub mod agent;
pub mod bench;
pub mod bpffs;
pub mod config;
pub mod dataplane;
pub mod ebpf;
pub mod instance;
pub mod netns;
pub mod state;
pub mod sysctl;
pub mod topology;
