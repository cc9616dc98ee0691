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
