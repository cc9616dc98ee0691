//! Helpers shared by the config modules' tests.

use super::{Config, ConfigError, Plan};

pub(super) fn plan(toml: &str) -> Plan {
    let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    config.plan().unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that planning fails with an `Invalid` naming `field` and `value`; returns
/// the message.
pub(super) fn plan_err(toml: &str, field: &str, value: &str) -> String {
    let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let err = match config.plan() {
        Ok(plan) => panic!("expected an error for {field}, got {plan:#?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    match &err {
        ConfigError::Invalid {
            field: f, value: v, ..
        } => {
            assert_eq!((f.as_str(), v.as_str()), (field, value), "{msg}");
        }
        ConfigError::Toml { .. } => panic!("expected Invalid, got {msg}"),
    }
    assert!(
        msg.contains(field) && msg.contains(&format!("{value:?}")),
        "{msg}"
    );
    msg
}

pub(super) fn toml_err(toml: &str) -> String {
    match Config::parse(toml, "test.toml") {
        Ok(c) => panic!("parsed: {c:?}"),
        Err(e @ ConfigError::Toml { .. }) => e.to_string(),
        Err(e) => panic!("expected a toml error, got {e}"),
    }
}

const ONE_NET: &str = r#"
    [[networks]]
    name = "np0"
    subnet = "10.0.0.0/24"
"#;

/// `ONE_NET` (network `np0`, 10.0.0.0/24) plus the given containers.
pub(super) fn with_containers(containers: &str) -> String {
    format!("{ONE_NET}\n{containers}")
}

/// One `[[networks]]` entry.
pub(super) fn network(name: &str, subnet: &str, gateway: Option<&str>) -> String {
    let gateway = gateway
        .map(|g| format!("gateway = {g:?}"))
        .unwrap_or_default();
    format!("[[networks]]\nname = {name:?}\nsubnet = {subnet:?}\n{gateway}\n")
}

/// One `[[containers]]` entry.
pub(super) fn container(name: &str, network: &str, ip: Option<&str>, publish: &[&str]) -> String {
    let ip = ip.map(|ip| format!("ip = {ip:?}")).unwrap_or_default();
    format!("[[containers]]\nname = {name:?}\nnetwork = {network:?}\n{ip}\npublish = {publish:?}\n")
}

/// Instance `t`: a dual-stack network `npa` (10.89.0.0/24, 2001:db8:89::/64) whose
/// container `web` publishes `publish`, beside an IPv4-only network `npb` whose container
/// `v4only` publishes 9090:90; for the data planes' IPv6 tests.
pub(crate) fn dual_stack(publish: &[&str]) -> Plan {
    plan(&format!(
        r#"
        name = "t"
        [[networks]]
        name = "npa"
        subnet = "10.89.0.0/24"
        subnet6 = "2001:db8:89::/64"
        [[networks]]
        name = "npb"
        subnet = "10.89.1.0/24"
        [[containers]]
        name = "web"
        network = "npa"
        publish = {publish:?}
        [[containers]]
        name = "v4only"
        network = "npb"
        publish = ["9090:90"]
        "#
    ))
}

/// Instance `t`: an IPv6-only network `np6` (2001:db8:6::/64) whose container `web`
/// publishes 8080:80, a routed IPv6-only `np7` (2001:db8:7::/64), an IPv4-only `np4`
/// whose container `v4` publishes 9090:90, and a route of each family (2001:db8:2::/64
/// via 2001:db8:c0::12, 10.0.2.0/24 via 192.0.2.12); for the data planes' tests of
/// IPv6-only networks and IPv6 routes.
pub(crate) fn ipv6_only_and_routes() -> Plan {
    plan(
        r#"
        name = "t"
        [[networks]]
        name = "np6"
        subnet6 = "2001:db8:6::/64"
        [[networks]]
        name = "np7"
        subnet6 = "2001:db8:7::/64"
        gateway_mode = "routed"
        [[networks]]
        name = "np4"
        subnet = "10.89.4.0/24"
        [[containers]]
        name = "web"
        network = "np6"
        publish = ["8080:80"]
        [[containers]]
        name = "v4"
        network = "np4"
        publish = ["9090:90"]
        [[routes]]
        subnet = "2001:db8:2::/64"
        via = "2001:db8:c0::12"
        [[routes]]
        subnet = "10.0.2.0/24"
        via = "192.0.2.12"
        "#,
    )
}
