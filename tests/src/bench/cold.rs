//! A cold `netplane up`: the first `up` of the default-shaped config (netplane's embedded
//! default: one bridge network, two containers, one published port, IPv4) in new
//! namespaces, by the `netplane` binary, as a user or the first container of a CNI
//! runtime meets it. In eBPF mode, almost all of it is loading and verifying the
//! programs.

use std::time::Instant;

use anyhow::bail;
use netplane::config::{DEFAULT_CONFIG, Mode};

use super::{Bench, IPV4};
use crate::host::UPLINK;

/// The embedded default config without its name (the sandbox's instance takes its own),
/// in `mode`, on the bench's uplink and subnet (TEST-NET-free addresses of the bench's,
/// instead of the default's 172.18.0.0/16).
pub(super) fn config_body(mode: Mode) -> String {
    let mut body = format!("uplink = \"{UPLINK}\"\n");
    for line in DEFAULT_CONFIG.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            _ if key.starts_with('#') => continue,
            "name" if !body.contains("[[") => continue,
            "mode" => body.push_str(&format!("mode = \"{mode}\"\n")),
            "subnet" => body.push_str(&format!("subnet = \"{}\"\n", IPV4.subnet)),
            _ => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    body
}

/// What a cold `up` took.
#[derive(Debug, Clone, Default)]
pub(super) struct ColdUp {
    pub ms: f64,
    /// Its phases (name, ms), when `up --json` reports them.
    pub phases: Vec<(String, f64)>,
}

/// A cold `up` of `mode` in new namespaces (the nftables reference: no-NAT mode's, plus
/// `nft -f` of its ruleset at one published port).
pub(super) fn cold_up(bench: &mut Bench, mode: &str) -> anyhow::Result<ColdUp> {
    let netplane_mode = match mode {
        "iptables" => Mode::Iptables,
        "ebpf" => Mode::Ebpf,
        _ => Mode::NoNat,
    };
    let sb = bench.fresh();
    sb.host.write_config(&config_body(netplane_mode));
    let json = up_reports_json();
    let args: &[&str] = if json {
        &["up", "--json"]
    } else {
        &["up", "-q"]
    };
    let t = Instant::now();
    let out = sb.host.netplane(args);
    let mut ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "cold netplane up ({mode}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if mode == "nftables" {
        ms += super::nft_apply(sb, 1, false, IPV4)?.as_secs_f64() * 1e3;
    }
    let phases = if json {
        phases_of(&String::from_utf8_lossy(&out.stdout))
    } else {
        Vec::new()
    };
    Ok(ColdUp { ms, phases })
}

/// Whether this build's `up` has `--json` (its report, with `phases`).
fn up_reports_json() -> bool {
    static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JSON.get_or_init(|| {
        std::process::Command::new(crate::host::netplane_bin())
            .args(["up", "--help"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--json"))
    })
}

/// `phases` of `up --json`'s report: `[[name, ms], …]` or `[{"name": …, "ms": …}, …]`.
fn phases_of(json: &str) -> Vec<(String, f64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    v["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| match p {
                    serde_json::Value::Array(x) => {
                        Some((x.first()?.as_str()?.to_owned(), x.get(1)?.as_f64()?))
                    }
                    serde_json::Value::Object(o) => Some((
                        o.get("name")
                            .or_else(|| o.get("phase"))?
                            .as_str()?
                            .to_owned(),
                        o.get("ms")?.as_f64()?,
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_keeps_its_shape_on_the_bench_s_addresses() {
        let body = config_body(Mode::Iptables);
        let plan = netplane::config::Config::parse(&format!("name = \"npbench0\"\n{body}"), "cold")
            .and_then(|c| c.plan())
            .expect("the cold config parses");
        assert_eq!(plan.mode, Mode::Iptables);
        assert!(!body.contains("172.18."), "{body}");
        assert_eq!(body.matches("[[containers]]").count(), 2, "{body}");
        assert_eq!(
            phases_of(r#"{"phases": [["maps", 3.5], {"name": "programs", "ms": 80}]}"#),
            [("maps".to_owned(), 3.5), ("programs".to_owned(), 80.0)]
        );
    }
}
