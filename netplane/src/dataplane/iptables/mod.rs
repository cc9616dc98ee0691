//! The iptables data plane: the rules the seeds and Docker (userland proxy off) use, in
//! netplane's own chains, applied as one `iptables-restore --noflush` batch.
//!
//! Per instance, four chains (`<tag>` is 6 hex digits of the instance name, because chain
//! names are limited to 28 characters); [`rules`] decides what each holds, per network,
//! from its driver (bridge device or ptp host veths) and its gateway mode:
//! - `raw NETPLANE-RAW-<tag>` (from PREROUTING): drops packets to 127.0.0.1-published ports
//!   that did not arrive on `lo` (moby#45610: a neighbour routing 127.0.0.1 to us).
//! - `nat NETPLANE-DNAT-<tag>` (from PREROUTING and OUTPUT, for local destinations): one
//!   DNAT per published port of the NAT networks, so remote hosts, host processes and
//!   containers (hairpin) all reach it.
//! - `nat NETPLANE-MASQ-<tag>` (from POSTROUTING): nothing towards `[[routes]]` subnets;
//!   masquerade of the NAT networks' subnets leaving the network (the seeds' rule), SNAT
//!   to the gateway of hairpinned DNAT flows going back in, and of loopback sources
//!   (host → 127.0.0.1:port needs `route_localnet` on the way out and a source that can
//!   leave the host).
//! - `filter NETPLANE-FWD-<tag>` (first in FORWARD): isolation between networks except
//!   for DNATed (published) flows, routed subnets as peers, each gateway mode's filter on
//!   what enters a network, and accepts for what leaves one, so netplane works when the
//!   FORWARD policy is DROP. netplane never changes a policy.
//!
//! Other tools' rules are never flushed: built-in chains are not declared in the batch (a
//! declaration would reset their policy); jumps are added only when missing, and `down`
//! deletes exactly the jumps to our chains and our chains.
//!
//! [`nf_conntrack`] flushes the kernel's conntrack entries that would blackhole a UDP port.
//! [`counters`] reads what the rules counted. With `[metrics] listen`, the agent runs
//! beside the rules to serve them (it has nothing else to do in this mode).

pub mod counters;
pub mod nf_conntrack;
pub mod rules;

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{Dataplane, DataplaneError, DataplaneStatus, HostContext};
use crate::config::{Container, Driver, Mode, Plan, fnv1a_32};
use crate::state;

pub use counters::observe;
pub use rules::{ruleset, ruleset6};

use super::ebpf::agent::{self, AgentArgs, report::Duty};

/// The two rule sets: IPv4 (iptables) and, for dual-stack networks, IPv6 (ip6tables),
/// with the same chains and jumps in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Family {
    save: &'static str,
    restore: &'static str,
    /// What the last applied rule set is kept as, in the instance's state directory.
    file: &'static str,
    v6: bool,
}

const V4: Family = Family {
    save: "iptables-save",
    restore: "iptables-restore",
    file: "iptables.rules",
    v6: false,
};
const V6: Family = Family {
    save: "ip6tables-save",
    restore: "ip6tables-restore",
    file: "ip6tables.rules",
    v6: true,
};

impl Family {
    fn rules(self, plan: &Plan) -> String {
        if self.v6 {
            ruleset6(plan)
        } else {
            ruleset(plan)
        }
    }

    /// Whether `plan` has rules of this family: IPv6 only with a network with a subnet6.
    fn wanted(self, plan: &Plan) -> bool {
        !self.v6 || plan.networks.iter().any(|n| n.subnet6.is_some())
    }
}

pub struct Iptables;

/// The tables netplane uses, with (our chain kind, the built-in chain jumping to it, the
/// jump's match, whether the jump is inserted first rather than appended).
const JUMPS: &[(&str, &str, &str, &str, bool)] = &[
    ("raw", "RAW", "PREROUTING", "", false),
    (
        "nat",
        "DNAT",
        "PREROUTING",
        "-m addrtype --dst-type LOCAL ",
        false,
    ),
    (
        "nat",
        "DNAT",
        "OUTPUT",
        "-m addrtype --dst-type LOCAL ",
        false,
    ),
    ("nat", "MASQ", "POSTROUTING", "", false),
    ("filter", "FWD", "FORWARD", "", true),
];
const TABLES: [&str; 3] = ["raw", "nat", "filter"];

/// The 6-hex-digit tag that makes an instance's chain names unique.
pub fn tag(name: &str) -> String {
    format!("{:06x}", fnv1a_32(name.as_bytes()) & 0xff_ffff)
}

fn chain(kind: &str, name: &str) -> String {
    format!("NETPLANE-{kind}-{}", tag(name))
}

/// The chains of instance `name`, per table.
fn chains_of(table: &str, name: &str) -> Vec<String> {
    let mut kinds: Vec<&str> = JUMPS.iter().filter(|j| j.0 == table).map(|j| j.1).collect();
    kinds.dedup();
    kinds.into_iter().map(|k| chain(k, name)).collect()
}

/// The jump rules missing from `saved` (an `iptables-save` dump), as batch lines per table.
fn missing_jumps(saved: &str, name: &str) -> Vec<(&'static str, String)> {
    JUMPS
        .iter()
        .filter_map(|&(table, kind, builtin, matches, insert)| {
            let target = chain(kind, name);
            let present = table_lines(saved, table).any(|l| {
                l.starts_with(&format!("-A {builtin} ")) && l.ends_with(&format!("-j {target}"))
            });
            let op = if insert {
                format!("-I {builtin} 1")
            } else {
                format!("-A {builtin}")
            };
            (!present).then(|| {
                (
                    table,
                    format!("{op} {matches}-m comment --comment \"netplane {name}\" -j {target}"),
                )
            })
        })
        .collect()
}

/// The lines of one table in an `iptables-save` dump.
fn table_lines<'a>(saved: &'a str, table: &str) -> impl Iterator<Item = &'a str> {
    let header = format!("*{table}");
    saved
        .lines()
        .skip_while(move |l| *l != header)
        .skip(1)
        .take_while(|l| *l != "COMMIT")
}

/// What removes instance `name` from `saved`, one batch per table (its jumps, then its
/// chains), with a line per object each removes.
fn teardown_batches(saved: &str, name: &str) -> Vec<(&'static str, String, Vec<String>)> {
    let mut batches = Vec::new();
    for table in TABLES {
        let ours = chains_of(table, name);
        let jumps: Vec<&str> = table_lines(saved, table)
            .filter(|l| {
                l.starts_with("-A ") && ours.iter().any(|c| l.ends_with(&format!("-j {c}"))) && {
                    let chain = l.split_whitespace().nth(1).unwrap_or("");
                    !ours.iter().any(|c| c == chain)
                }
            })
            .collect();
        let present: Vec<&String> = ours
            .iter()
            .filter(|c| table_lines(saved, table).any(|l| l.starts_with(&format!(":{c} "))))
            .collect();
        if jumps.is_empty() && present.is_empty() {
            continue;
        }
        let mut batch = String::new();
        let mut removed = Vec::new();
        writeln!(batch, "*{table}").unwrap();
        for j in jumps {
            writeln!(batch, "-D {}", &j[3..]).unwrap();
            removed.push(format!("iptables -t {table} {j}"));
        }
        for c in &present {
            writeln!(batch, "-F {c}").unwrap();
        }
        for c in present {
            writeln!(batch, "-X {c}").unwrap();
            removed.push(format!("iptables -t {table} chain {c}"));
        }
        writeln!(batch, "COMMIT").unwrap();
        batches.push((table, batch, removed));
    }
    batches
}

/// Runs one table's teardown batch. When the batch fails as a whole (a rule gone since
/// the dump, a chain another tool still jumps to), each command runs on its own, so
/// everything that can go goes; returns the commands that failed.
fn run_teardown(fam: Family, table: &str, batch: &str) -> Vec<String> {
    let Err(whole) = run(fam.restore, &["--noflush"], Some(batch)) else {
        return Vec::new();
    };
    tracing::debug!("iptables teardown of table {table} as one batch: {whole}");
    batch
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|cmd| {
            let one = format!("*{table}\n{cmd}\nCOMMIT\n");
            run(fam.restore, &["--noflush"], Some(&one))
                .err()
                .map(|e| format!("{} -t {table} {cmd}: {e}", fam.restore))
        })
        .collect()
}

/// How netplane's chains in `saved` differ from `rules` (a [`ruleset`]), one line per
/// chain that is missing or holds another number of rules than applied (flushed or edited
/// by hand). By count, not by text: iptables versions print some matches differently.
fn drift(saved: &str, rules: &str, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for table in TABLES {
        for c in chains_of(table, name) {
            let rule = format!("-A {c} ");
            let count = |lines: &mut dyn Iterator<Item = &str>| {
                lines.filter(|l| l.starts_with(&rule)).count()
            };
            let want = count(&mut rules.lines());
            if !table_lines(saved, table).any(|l| l.starts_with(&format!(":{c} "))) {
                found.push(format!("chain {c} (table {table}) is missing"));
            } else {
                let have = count(&mut table_lines(saved, table));
                if have != want {
                    found.push(format!(
                        "chain {c} (table {table}) has {have} rules, netplane applied {want}"
                    ));
                }
            }
        }
    }
    found
}

/// Where the last applied ruleset is kept, to tell "nothing to change" from a change.
fn applied_file(name: &str, fam: Family) -> PathBuf {
    state::dir(name).join(fam.file)
}

fn save(fam: Family) -> Result<String, DataplaneError> {
    run(fam.save, &[], None)
}

/// Programs `fam`'s rules of `plan` (netplane's chains, and the jumps missing) in one
/// atomic batch, unless what was applied last is still there. Returns the change.
fn program(fam: Family, plan: &Plan) -> Result<Option<String>, DataplaneError> {
    let rules = fam.rules(plan);
    let saved = save(fam)?;
    let jumps = missing_jumps(&saved, &plan.name);
    let unchanged = std::fs::read_to_string(applied_file(&plan.name, fam))
        .is_ok_and(|r| r == rules)
        && drift(&saved, &rules, &plan.name).is_empty();
    if unchanged && jumps.is_empty() {
        return Ok(None);
    }
    let mut batch = String::new();
    for table in TABLES {
        let section = rules
            .split(&format!("*{table}\n"))
            .nth(1)
            .and_then(|s| s.split("COMMIT\n").next())
            .unwrap_or("");
        writeln!(batch, "*{table}").unwrap();
        batch.push_str(section);
        for (_, j) in jumps.iter().filter(|(t, _)| *t == table) {
            writeln!(batch, "{j}").unwrap();
        }
        writeln!(batch, "COMMIT").unwrap();
    }
    run(fam.restore, &["--noflush"], Some(&batch))?;
    let path = applied_file(&plan.name, fam);
    std::fs::write(&path, &rules).map_err(|source| DataplaneError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let n = rules.lines().filter(|l| l.starts_with("-A ")).count();
    Ok(Some(format!(
        "{}: {n} rules in NETPLANE-*-{} chains, {} jumps added",
        fam.save.trim_end_matches("-save"),
        tag(&plan.name),
        jumps.len()
    )))
}

/// Removes instance `name`'s chains and jumps of `fam`. Returns what went, and pushes
/// what failed.
fn remove(fam: Family, name: &str, failures: &mut Vec<String>) -> Vec<String> {
    let mut removed = Vec::new();
    match save(fam) {
        Ok(saved) => {
            for (table, batch, objects) in teardown_batches(&saved, name) {
                let failed = run_teardown(fam, table, &batch);
                if failed.is_empty() {
                    removed.extend(objects);
                }
                failures.extend(failed);
            }
        }
        // No ip6tables on this host: nothing of it can be there, unless it was applied.
        Err(_) if fam.v6 && !applied_file(name, fam).exists() => {}
        Err(e) => failures.push(e.to_string()),
    }
    let path = applied_file(name, fam);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            failures.push(format!("cannot remove {}: {e}", path.display()));
        }
        _ => {}
    }
    removed
}

impl Dataplane for Iptables {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn check(&self) -> Result<(), DataplaneError> {
        // conntrack flushes the UDP entries of (un)published ports (see nf_conntrack).
        for (tool, package) in [
            ("iptables-restore", "iptables"),
            ("iptables-save", "iptables"),
            ("conntrack", "conntrack"),
        ] {
            if run(tool, &["--version"], None).is_err() {
                return Err(DataplaneError::MissingTool {
                    mode: Mode::Iptables,
                    tool,
                    package,
                });
            }
        }
        Ok(())
    }

    /// `[::1]:` publishing needs DNAT of loopback traffic out of the host, which IPv4
    /// allows with `route_localnet` and IPv6 has no equivalent of.
    fn check_plan(&self, plan: &Plan) -> Result<(), DataplaneError> {
        if V6.wanted(plan) {
            for tool in [V6.save, V6.restore] {
                if run(tool, &["--version"], None).is_err() {
                    return Err(DataplaneError::MissingTool {
                        mode: Mode::Iptables,
                        tool,
                        package: "iptables",
                    });
                }
            }
        }
        for (i, c) in plan.containers.iter().enumerate() {
            for (j, m) in c.publish.iter().enumerate() {
                if m.host_ip6 == Some(std::net::Ipv6Addr::LOCALHOST) {
                    return Err(DataplaneError::NotInMode {
                        field: format!("containers[{i}].publish[{j}]"),
                        value: m.spec.clone(),
                        reason: "iptables mode cannot publish on [::1]: IPv6 has no \
                                 route_localnet, so DNAT of loopback traffic to a container \
                                 is dropped; eBPF mode serves it"
                            .to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    fn sysctls(&self, plan: &Plan) -> Vec<(String, String)> {
        // Lets DNATed packets from 127.0.0.1 be routed out of the device towards the
        // container: the bridge, or a ptp container's host veth (__mkroute_output()
        // refuses a loopback source on a device without it). Only NAT networks publish,
        // and only those with IPv4 on 127.0.0.1.
        let devices = plan
            .networks
            .iter()
            .filter(|n| n.gateway_mode.nat() && n.subnet.is_some())
            .flat_map(|n| match n.driver {
                Driver::Bridge => vec![n.name.as_str()],
                Driver::Ptp => plan
                    .containers
                    .iter()
                    .filter(|c| c.network == n.name)
                    .map(|c| c.host_veth.as_str())
                    .collect(),
            });
        devices
            .map(|dev| {
                (
                    format!("net.ipv4.conf.{dev}.route_localnet"),
                    "1".to_owned(),
                )
            })
            .collect()
    }

    fn apply(
        &self,
        plan: &Plan,
        old: Option<&Plan>,
        _host: &HostContext,
    ) -> Result<Vec<String>, DataplaneError> {
        let mut changes = Vec::new();
        for fam in [V4, V6] {
            if fam.wanted(plan) {
                changes.extend(program(fam, plan)?);
            } else if applied_file(&plan.name, fam).exists() {
                // The last dual-stack network went: its IPv6 rules go.
                let mut failures = Vec::new();
                let removed = remove(fam, &plan.name, &mut failures);
                if !failures.is_empty() {
                    return Err(DataplaneError::Teardown {
                        mode: Mode::Iptables,
                        failures,
                    });
                }
                changes.extend(removed);
            }
        }
        for fam in [V4, V6] {
            for port in nf_conntrack::changed_udp_ports_of(old, plan, fam.v6) {
                nf_conntrack::flush_udp_port(port, fam.v6)?;
                let which = if fam.v6 { "IPv6 " } else { "" };
                changes.push(format!(
                    "conntrack: flushed {which}UDP entries to port {port}"
                ));
            }
        }
        for ip in nf_conntrack::gone_addresses(old, plan) {
            nf_conntrack::flush_address(ip)?;
            changes.push(format!("conntrack: flushed the entries of {ip}"));
        }
        changes.extend(run_agent(plan));
        Ok(changes)
    }

    fn teardown(&self, name: &str) -> Result<Vec<String>, DataplaneError> {
        let mut failures = Vec::new();
        let mut removed: Vec<String> = agent::stop(name)
            .map(|pid| format!("agent (pid {pid})"))
            .into_iter()
            .collect();
        removed.extend(remove(V4, name, &mut failures));
        removed.extend(remove(V6, name, &mut failures));
        if failures.is_empty() {
            Ok(removed)
        } else {
            Err(DataplaneError::Teardown {
                mode: Mode::Iptables,
                failures,
            })
        }
    }

    /// Each DNAT rule of `c`'s ports, as `ruleset` (and `ruleset6`) write it and
    /// iptables-save (ip6tables-save) prints it.
    fn verify_ports(&self, plan: &Plan, c: &Container) -> Vec<String> {
        let mut problems = Vec::new();
        for fam in [V4, V6] {
            let to = match c.ip_of(fam.v6) {
                Some(std::net::IpAddr::V4(ip)) => format!("--to-destination {ip}:"),
                Some(std::net::IpAddr::V6(ip6)) => format!("--to-destination [{ip6}]:"),
                None => continue,
            };
            let want: Vec<String> = fam
                .rules(plan)
                .lines()
                .filter(|l| l.starts_with("-A ") && l.contains(&to))
                .map(str::to_owned)
                .collect();
            if want.is_empty() {
                continue;
            }
            match run(fam.save, &["-t", "nat"], None) {
                Ok(saved) => problems.extend(
                    want.into_iter()
                        .filter(|rule| !saved.lines().any(|l| l == rule))
                        .map(|rule| format!("{} rule missing: {rule}", fam.save)),
                ),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    fn describe(&self) -> &'static str {
        "iptables (masquerade, published ports, isolation)"
    }

    fn status(&self, plan: &Plan) -> DataplaneStatus {
        let mut st = DataplaneStatus::new(Mode::Iptables);
        if V6.wanted(plan) {
            match save(V6) {
                Ok(saved) => {
                    for (t, j) in missing_jumps(&saved, &plan.name) {
                        st.problems
                            .push(format!("missing ip6tables jump in table {t}: {j}"));
                    }
                    if let Ok(applied) = std::fs::read_to_string(applied_file(&plan.name, V6)) {
                        st.problems.extend(
                            drift(&saved, &applied, &plan.name)
                                .into_iter()
                                .map(|d| format!("ip6tables {d}; `netplane up` restores it")),
                        );
                    }
                }
                Err(e) => st.problems.push(e.to_string()),
            }
        }
        match save(V4) {
            Ok(saved) => {
                for (t, j) in missing_jumps(&saved, &plan.name) {
                    st.problems.push(format!("missing jump in table {t}: {j}"));
                }
                // Against what `up` applied (absent before the first `up`).
                if let Ok(applied) = std::fs::read_to_string(applied_file(&plan.name, V4)) {
                    st.problems.extend(
                        drift(&saved, &applied, &plan.name)
                            .into_iter()
                            .map(|d| format!("{d}; `netplane up` restores it")),
                    );
                }
                st.attached = TABLES
                    .iter()
                    .flat_map(|t| {
                        chains_of(t, &plan.name)
                            .into_iter()
                            .filter(|c| {
                                table_lines(&saved, t).any(|l| l.starts_with(&format!(":{c} ")))
                            })
                            .map(move |c| format!("{t} {c}"))
                    })
                    .collect();
                st.dnat_rules = Some(
                    table_lines(&saved, "nat")
                        .filter(|l| l.starts_with(&format!("-A {} ", chain("DNAT", &plan.name))))
                        .count(),
                );
            }
            Err(e) => st.problems.push(e.to_string()),
        }
        st.conntrack = nf_conntrack::fill();
        let (counted, problems) = counters::counters(plan);
        st.counters = counted;
        st.problems.extend(problems);
        if plan.metrics.listen.is_some() {
            let (agent, problems) = agent::status(&plan.name, Duty::MetricsOnly);
            st.agent_pid = agent.pid.filter(|_| agent.running);
            st.agent = Some(agent);
            st.problems.extend(problems);
        }
        st.finish()
    }
}

/// Starts the agent when `plan` asks for metrics (it serves them, and does nothing else
/// in this mode), stops one that no longer has any to serve. Returns a line per change.
fn run_agent(plan: &Plan) -> Vec<String> {
    let args = AgentArgs::of(plan);
    let Some(addr) = args.metrics else {
        return agent::stop(&plan.name)
            .map(|pid| format!("agent stopped (pid {pid}): no metrics to serve"))
            .into_iter()
            .collect();
    };
    let dead = agent::started_pid(&plan.name).filter(|_| agent::running(&plan.name).is_none());
    match agent::ensure_running_with(&plan.name, args) {
        Ok(Some(pid)) => vec![match dead {
            Some(old) => format!(
                "agent started (pid {pid}; the previous one, pid {old}, had exited): metrics on http://{addr}/metrics"
            ),
            None => format!("agent started (pid {pid}): metrics on http://{addr}/metrics"),
        }],
        Ok(None) => Vec::new(),
        Err(e) => vec![format!(
            "warning: the agent did not start ({e}); no metrics are served"
        )],
    }
}

/// Runs a command, feeding `stdin`, and returns stdout; a non-zero exit is an error that
/// carries stderr.
pub(super) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, DataplaneError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DataplaneError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .map_err(|source| DataplaneError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| DataplaneError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DataplaneError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unit tests' plan: instance `t`, networks `npa` (10.89.0.0/24, `mode`) and `npb`
/// (10.89.1.0/24, nat), both of `driver`; on `npa`, container `web` publishing `publish`
/// (TOML list items) and container `peer`.
#[cfg(test)]
fn test_plan(driver: &str, mode: &str, publish: &str) -> Plan {
    crate::config::Config::parse(
        &format!(
            r#"
            name = "t"
            mode = "iptables"
            [[networks]]
            name = "npa"
            subnet = "10.89.0.0/24"
            driver = "{driver}"
            gateway_mode = "{mode}"
            [[networks]]
            name = "npb"
            subnet = "10.89.1.0/24"
            driver = "{driver}"
            [[containers]]
            name = "web"
            network = "npa"
            publish = [{publish}]
            [[containers]]
            name = "peer"
            network = "npa"
            "#
        ),
        "test",
    )
    .unwrap()
    .plan()
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_localnet_is_set_on_the_devices_towards_nat_networks() {
        let keys = |p: &Plan| -> Vec<String> {
            Iptables
                .sysctls(p)
                .into_iter()
                .map(|(k, v)| {
                    assert_eq!(v, "1");
                    k
                })
                .collect()
        };
        let key = |dev: &str| format!("net.ipv4.conf.{dev}.route_localnet");
        assert_eq!(
            keys(&test_plan("bridge", "nat", "")),
            [key("npa"), key("npb")]
        );
        // No bridge on ptp: each container's host veth is the way to it (npb has none).
        let p = test_plan("ptp", "nat-unprotected", "");
        let veths = ["web", "peer"].map(|c| key(&p.container(c).unwrap().host_veth));
        assert_eq!(keys(&p), veths);
        // A routed network publishes nothing on a host address.
        assert_eq!(keys(&test_plan("bridge", "routed", "")), [key("npb")]);
    }

    #[test]
    fn jumps_are_added_once_and_torn_down_exactly() {
        let t = tag("t");
        let saved = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:NETPLANE-DNAT-{t} - [0:0]\n:NETPLANE-MASQ-{t} - [0:0]\n:OTHER - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"netplane t\" -j NETPLANE-DNAT-{t}\n\
             -A POSTROUTING -s 192.0.2.0/24 -j OTHER\n\
             -A NETPLANE-DNAT-{t} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.89.0.2:80\nCOMMIT\n"
        );
        let missing = missing_jumps(&saved, "t");
        let tables: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tables,
            ["raw", "nat", "nat", "filter"],
            "PREROUTING's jump exists already"
        );
        assert!(missing[3].1.starts_with("-I FORWARD 1 "));

        let batches = teardown_batches(&saved, "t");
        assert_eq!(batches.len(), 1, "only the nat table has anything of ours");
        let (table, batch, removed) = &batches[0];
        assert_eq!(*table, "nat");
        assert_eq!(
            *batch,
            format!(
                "*nat\n-D PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"netplane t\" -j NETPLANE-DNAT-{t}\n\
                 -F NETPLANE-DNAT-{t}\n-F NETPLANE-MASQ-{t}\n-X NETPLANE-DNAT-{t}\n-X NETPLANE-MASQ-{t}\nCOMMIT\n"
            )
        );
        assert_eq!(removed.len(), 3);
        assert!(
            !batch.contains("OTHER"),
            "other tools' rules are never touched"
        );
    }

    #[test]
    fn drift_names_chains_flushed_or_missing() {
        let p = test_plan("ptp", "nat", "");
        let rules = ruleset(&p);
        // The host as `up` left it: our chains, as iptables-save prints them.
        assert!(drift(&rules, &rules, "t").is_empty());
        let t = tag("t");
        let flushed: String = rules
            .lines()
            .filter(|l| !l.starts_with(&format!("-A NETPLANE-FWD-{t} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            drift(&flushed, &rules, "t"),
            [format!(
                "chain NETPLANE-FWD-{t} (table filter) has 0 rules, netplane applied {}",
                rules.matches("-A NETPLANE-FWD-").count()
            )]
        );
        let gone = flushed.replace(&format!(":NETPLANE-FWD-{t} - [0:0]\n"), "");
        assert_eq!(
            drift(&gone, &rules, "t"),
            [format!("chain NETPLANE-FWD-{t} (table filter) is missing")]
        );
    }

    #[test]
    fn tags_fit_chain_names() {
        let longest = chain("DNAT", "a-name-that-is-32-characters-ok");
        assert!(longest.len() <= 28, "{longest}");
        assert_ne!(tag("a"), tag("b"));
    }
}
