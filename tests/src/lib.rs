//! The sandbox harness for netplane's in-kernel and end-to-end tests, its benchmark
//! (`netplane-bench`) and its demo (`netplane-demo`).
//!
//! Each of them builds its own world out of uniquely named network namespaces
//! ([`Sandbox`], and the [`host::Host`] that netplane runs in, or the several hosts of
//! [`multihost::World`] on one underlay segment) and removes it on drop, also when a test
//! panics, and on SIGINT, SIGTERM or SIGHUP. Nothing here touches the root
//! namespace's interfaces, routes, sysctls or firewall: veth pairs are created directly
//! inside the sandbox namespaces, and every address is on a TEST-NET range (RFC 5737).

// What the harness's binaries (the bench's command line) use, which the library target
// sees too.
use clap as _;

pub mod bench;
pub mod cni;
pub mod cni_plugin;
pub mod host;
pub mod http;
pub mod multihost;
pub mod packet;
pub mod sandbox;
pub mod testrun;

pub use sandbox::{Netns, Sandbox};

/// The two networks the end-to-end and in-kernel tests share (config TOML): containers
/// are added after it. Bridge networks; [`two_networks`] gives them for each driver.
pub const TWO_NETWORKS: &str = r#"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[networks]]
name = "npb"
subnet = "10.89.1.0/24"
"#;

/// The network drivers that the NAT suite runs on: published ports, masquerade, hairpin,
/// 127.0.0.1 publishing and isolation must behave the same on both.
pub const DRIVERS: &[&str] = &["bridge", "ptp"];

/// [`TWO_NETWORKS`] with `driver` (one of [`DRIVERS`]): the same names, subnets and
/// gateways, so a test body holds for either.
pub fn two_networks(driver: &str) -> String {
    assert!(DRIVERS.contains(&driver), "unknown driver {driver}");
    TWO_NETWORKS.replace("/24\"\n", &format!("/24\"\ndriver = \"{driver}\"\n"))
}

/// Returns `false`, after saying why, when the test cannot run here. Privileged tests
/// start with `if !netplane_tests::privileged("…") { return; }`. CI runs as root, so it
/// skips nothing.
pub fn privileged(what: &str) -> bool {
    if netplane::privilege::is_root() {
        return true;
    }
    eprintln!("SKIPPED {what}: needs root (network namespaces and BPF); CI runs it as root");
    false
}

/// The data planes that every end-to-end test runs against (`none` has no NAT to test).
pub const MODES: &[&str] = &["iptables", "ebpf"];

/// Runs `f` once per mode of [`MODES`], saying which, or skips the whole test (with the
/// reason) when it cannot run here.
pub fn each_mode(test: &str, f: impl Fn(&str)) {
    if !privileged(test) {
        return;
    }
    for mode in MODES {
        eprintln!("{test}: mode {mode}");
        f(mode);
    }
}

/// Runs `f` once per mode of [`MODES`] and driver of [`DRIVERS`], saying which, or skips
/// the whole test (with the reason) when it cannot run here.
pub fn each_mode_and_driver(test: &str, f: impl Fn(&str, &str)) {
    if !privileged(test) {
        return;
    }
    for mode in MODES {
        for driver in DRIVERS {
            eprintln!("{test}: mode {mode}, driver {driver}");
            f(mode, driver);
        }
    }
}
