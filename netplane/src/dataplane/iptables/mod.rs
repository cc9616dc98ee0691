//! The iptables data plane: the rules the seeds and Docker (userland proxy off) use, in
//! netplane's own chains, applied as one `iptables-restore --noflush` batch.
//!
//! Per instance, four chains (`<tag>` is 6 hex digits of the instance name, because chain
//! names are limited to 28 characters):
//! - `raw NETPLANE-RAW-<tag>` (from PREROUTING): drops packets to 127.0.0.1-published ports
//!   that did not arrive on `lo` (moby#45610: a neighbour routing 127.0.0.1 to us).
//! - `nat NETPLANE-DNAT-<tag>` (from PREROUTING and OUTPUT, for local destinations): one
//!   DNAT per published port, so remote hosts, host processes and containers (hairpin)
//!   all reach it.
//! - `nat NETPLANE-MASQ-<tag>` (from POSTROUTING): masquerade of the subnets leaving their
//!   bridge (the seeds' rule), of hairpinned DNAT flows going back into their bridge, and
//!   of loopback sources (host → 127.0.0.1:port needs `route_localnet` on the bridge and a
//!   source that can leave the host).
//! - `filter NETPLANE-FWD-<tag>` (first in FORWARD): isolation between networks except
//!   for DNATed (published) flows, then accepts for the bridges, so netplane works when the
//!   FORWARD policy is DROP. netplane never changes a policy.
//!
//! Other tools' rules are never flushed: built-in chains are not declared in the batch (a
//! declaration would reset their policy); jumps are added only when missing, and `down`
//! deletes exactly the jumps to our chains and our chains.
//!
//! [`nf_conntrack`] flushes the kernel's conntrack entries that would blackhole a UDP port.

pub mod nf_conntrack;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Dataplane, DataplaneError, DataplaneStatus, HostContext};
use crate::config::{Mode, Plan, fnv1a_32};
use crate::state;

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

/// The contents of netplane's chains for `plan`, as `iptables-restore` input (declaring a
/// chain in a `--noflush` batch creates it or flushes it). Pure, so unit-tested.
pub fn ruleset(plan: &Plan) -> String {
    let (raw, dnat, masq, fwd) = (
        chain("RAW", &plan.name),
        chain("DNAT", &plan.name),
        chain("MASQ", &plan.name),
        chain("FWD", &plan.name),
    );
    let mut rules: Vec<(&str, String)> = Vec::new();

    for c in &plan.containers {
        for m in &c.publish {
            let proto = m.proto;
            let dst = m
                .host_ip
                .map(|ip| format!("-d {ip}/32 "))
                .unwrap_or_default();
            for (hp, cp) in m.pairs() {
                if m.host_ip == Some(Ipv4Addr::LOCALHOST) {
                    rules.push(("raw", format!("-A {raw} -d 127.0.0.1/32 ! -i lo -p {proto} -m {proto} --dport {hp} -j DROP")));
                }
                // One rule per port: a DNAT range would pick any port of the range, not
                // the matching one (what Docker does too).
                rules.push((
                    "nat",
                    format!("-A {dnat} {dst}-p {proto} -m {proto} --dport {hp} -j DNAT --to-destination {}:{cp}", c.ip),
                ));
            }
        }
    }
    for n in &plan.networks {
        let (br, subnet) = (&n.name, n.subnet);
        rules.push((
            "nat",
            format!("-A {masq} -s {subnet} ! -o {br} -j MASQUERADE"),
        ));
        rules.push((
            "nat",
            format!("-A {masq} -s {subnet} -o {br} -m conntrack --ctstate DNAT -j MASQUERADE"),
        ));
        rules.push((
            "nat",
            format!("-A {masq} -s 127.0.0.0/8 -o {br} -j MASQUERADE"),
        ));
    }
    for a in &plan.networks {
        for b in plan.networks.iter().filter(|b| b.name != a.name) {
            rules.push((
                "filter",
                format!(
                    "-A {fwd} -i {} -o {} -m conntrack ! --ctstate DNAT -j DROP",
                    a.name, b.name
                ),
            ));
        }
    }
    for n in &plan.networks {
        let br = &n.name;
        rules.push((
            "filter",
            format!("-A {fwd} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ));
        rules.push((
            "filter",
            format!("-A {fwd} -o {br} -m conntrack --ctstate DNAT -j ACCEPT"),
        ));
        rules.push(("filter", format!("-A {fwd} -i {br} -j ACCEPT")));
    }

    let mut out = String::new();
    for table in TABLES {
        writeln!(out, "*{table}").unwrap();
        for c in chains_of(table, &plan.name) {
            writeln!(out, ":{c} - [0:0]").unwrap();
        }
        for (_, r) in rules.iter().filter(|(t, _)| *t == table) {
            writeln!(out, "{r}").unwrap();
        }
        writeln!(out, "COMMIT").unwrap();
    }
    out
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

/// The batch that removes instance `name` from `saved`: its jumps, then its chains.
fn teardown_batch(saved: &str, name: &str) -> (String, Vec<String>) {
    let mut batch = String::new();
    let mut removed = Vec::new();
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
    }
    (batch, removed)
}

/// Where the last applied ruleset is kept, to tell "nothing to change" from a change.
fn applied_file(name: &str) -> PathBuf {
    state::dir(name).join("iptables.rules")
}

fn save() -> Result<String, DataplaneError> {
    run("iptables-save", &[], None)
}

impl Dataplane for Iptables {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn check(&self) -> Result<(), DataplaneError> {
        for tool in ["iptables-restore", "iptables-save"] {
            if run(tool, &["--version"], None).is_err() {
                return Err(DataplaneError::MissingTool {
                    mode: Mode::Iptables,
                    tool,
                    package: "iptables",
                });
            }
        }
        Ok(())
    }

    fn sysctls(&self, plan: &Plan) -> Vec<(String, String)> {
        // Lets DNATed packets from 127.0.0.1 be routed out of the bridge (the kernel
        // otherwise drops loopback sources on non-loopback devices: ip_route_output_key_hash).
        plan.networks
            .iter()
            .map(|n| {
                (
                    format!("net.ipv4.conf.{}.route_localnet", n.name),
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
        let rules = ruleset(plan);
        let saved = save()?;
        let jumps = missing_jumps(&saved, &plan.name);
        let unchanged = std::fs::read_to_string(applied_file(&plan.name)).is_ok_and(|r| r == rules)
            && TABLES.iter().all(|t| {
                chains_of(t, &plan.name)
                    .iter()
                    .all(|c| table_lines(&saved, t).any(|l| l.starts_with(&format!(":{c} "))))
            });
        let mut changes = Vec::new();
        if !unchanged || !jumps.is_empty() {
            // One atomic batch: our chains' contents and any missing jump.
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
            run("iptables-restore", &["--noflush"], Some(&batch))?;
            let path = applied_file(&plan.name);
            std::fs::write(&path, &rules).map_err(|source| DataplaneError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let n = rules.lines().filter(|l| l.starts_with("-A ")).count();
            changes.push(format!(
                "iptables: {n} rules in NETPLANE-*-{} chains, {} jumps added",
                tag(&plan.name),
                jumps.len()
            ));
        }
        for port in nf_conntrack::changed_udp_ports(old, plan) {
            nf_conntrack::flush_udp_port(port)?;
            changes.push(format!("conntrack: flushed UDP entries to port {port}"));
        }
        Ok(changes)
    }

    fn teardown(&self, name: &str) -> Result<Vec<String>, DataplaneError> {
        let (batch, removed) = teardown_batch(&save()?, name);
        if !batch.is_empty() {
            run("iptables-restore", &["--noflush"], Some(&batch))?;
        }
        let _ = std::fs::remove_file(applied_file(name));
        Ok(removed)
    }

    fn describe(&self) -> &'static str {
        "iptables (masquerade, published ports, isolation)"
    }

    fn status(&self, plan: &Plan) -> DataplaneStatus {
        let mut st = DataplaneStatus::new(Mode::Iptables);
        match save() {
            Ok(saved) => {
                for (t, j) in missing_jumps(&saved, &plan.name) {
                    st.problems.push(format!("missing jump in table {t}: {j}"));
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
        st.finish()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn plan() -> Plan {
        Config::parse(
            r#"
            name = "t"
            mode = "iptables"
            [[networks]]
            name = "npa"
            subnet = "10.89.0.0/24"
            [[networks]]
            name = "npb"
            subnet = "10.89.1.0/24"
            [[containers]]
            name = "web"
            network = "npa"
            publish = ["8080:80", "127.0.0.1:8081:80", "5353:53/udp", "9000-9001:7000-7001"]
            "#,
            "test",
        )
        .unwrap()
        .plan()
        .unwrap()
    }

    #[test]
    fn ruleset_has_a_dnat_per_port_and_the_masquerades() {
        let r = ruleset(&plan());
        let t = tag("t");
        for want in [
            format!(
                "-A NETPLANE-DNAT-{t} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.89.0.2:80"
            ),
            format!(
                "-A NETPLANE-DNAT-{t} -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.89.0.2:80"
            ),
            format!(
                "-A NETPLANE-DNAT-{t} -p udp -m udp --dport 5353 -j DNAT --to-destination 10.89.0.2:53"
            ),
            format!(
                "-A NETPLANE-DNAT-{t} -p tcp -m tcp --dport 9001 -j DNAT --to-destination 10.89.0.2:7001"
            ),
            format!(
                "-A NETPLANE-RAW-{t} -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 8081 -j DROP"
            ),
            format!("-A NETPLANE-MASQ-{t} -s 10.89.0.0/24 ! -o npa -j MASQUERADE"),
            format!("-A NETPLANE-FWD-{t} -i npa -o npb -m conntrack ! --ctstate DNAT -j DROP"),
            format!("-A NETPLANE-FWD-{t} -i npb -o npa -m conntrack ! --ctstate DNAT -j DROP"),
        ] {
            assert!(r.lines().any(|l| l == want), "missing {want}\n{r}");
        }
        // Only the loopback-bound port gets the moby#45610 drop.
        assert_eq!(r.matches("-j DROP").count(), 3);
        // Each table is declared, committed, and declares only netplane's chains.
        assert_eq!(r.matches("COMMIT").count(), 3);
        assert!(
            r.lines()
                .filter(|l| l.starts_with(':'))
                .all(|l| l.starts_with(":NETPLANE-"))
        );
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

        let (batch, removed) = teardown_batch(&saved, "t");
        assert_eq!(
            batch,
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
    fn tags_fit_chain_names() {
        let longest = chain("DNAT", "a-name-that-is-32-characters-ok");
        assert!(longest.len() <= 28, "{longest}");
        assert_ne!(tag("a"), tag("b"));
    }
}
