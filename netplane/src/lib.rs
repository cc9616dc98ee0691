//! netplane: a container network data plane.
//!
//! - [`config`]: the TOML config, validated and resolved into a [`config::Plan`].
//! - [`instance`]: `up`, `down` and `status`, over [`topology`] (rtnetlink), [`netns`],
//!   [`sysctl`] and the recorded [`state`]. It never asks which mode runs.
//! - [`dataplane`]: the `Dataplane` trait and its three modes: `ebpf` (the embedded
//!   object, its loader, attachments, maps, conntrack, agent), `iptables` and `none`.
//! - [`cni`]: `netplane-cni`, the CNI plugin over the same instances.
//! - [`privilege`]: the one root check.
// The CLI's (src/main.rs) own dependencies, which the library target sees too.
use anyhow as _;
use clap as _;
use tracing_subscriber as _;

pub mod cni;
pub mod config;
pub mod dataplane;
pub mod instance;
pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod netns;
pub mod privilege;
pub mod state;
pub mod sysctl;
pub mod topology;
