//! The topology file: networks (bridges), containers (network namespaces) and published
//! ports, in TOML.
//!
//! [`Config`] is the file as written; [`Config::plan`] checks everything that can be
//! checked without touching the host and resolves every default, so later stages work
//! from a complete [`Plan`] and never have to second-guess user input.
//!
//! - `schema`: the file format ([`Config`]) and [`ConfigError`];
//! - `plan`: the resolved [`Plan`] and [`Config::plan`], with `alloc` for addresses;
//! - `names`: netns names, host veth names, MACs and the rules for names;
//! - `tunables`: `[conntrack]`, `[ebpf]` and `[metrics]`, with their defaults;
//! - [`publish`]: published ports in Docker's `-p` syntax.

mod alloc;
mod names;
mod plan;
pub mod publish;
mod schema;
#[cfg(test)]
pub(crate) mod testutil;
mod tunables;

pub(crate) use names::fnv1a_32;
pub use names::{HOST_VETH_PREFIX, format_mac, host_veth_name};
pub use plan::{Attachment, Container, Network, Plan, Route};
pub use publish::{PortMapping, Proto};
pub use schema::{
    Config, ConfigError, ContainerConfig, DEFAULT_CONFIG, Driver, GatewayMode, Mode, NetworkConfig,
    RouteConfig,
};
pub use tunables::{
    ConntrackConfig, DEFAULT_METRICS_LISTEN, EbpfConfig, Metrics, MetricsConfig, parse_listen,
};
