//! Robustness: what a hostile or changing world does to a running data plane (issue 12).
//! Every test here reproduced a failure of the data plane before its fix, and runs
//! against every mode where the case applies (each says why where one does not).
//!
//! - [`concurrency`]: two `up`s at once, two instances on one host, stale UDP state;
//! - [`host_changes`]: the uplink's address and links change under the data plane, and
//!   what `status` says about it;
//! - [`conntrack`]: floods and blind RST/FIN against established flows, table resizing;
//! - [`masquerade`]: no private address leaks, port search, the host's own sockets;
//! - [`fragments`]: fragments that arrive before their first fragment.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

mod concurrency;
mod conntrack;
mod fragments;
mod host_changes;
mod masquerade;
