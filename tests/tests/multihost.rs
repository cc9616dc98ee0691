//! Seed 004 across hosts (issue 13), end to end: the harness's multi-host world
//! (`netplane_tests::multihost`), an underlay L2 segment on TEST-NET-1 with two netplane
//! hosts and node02, a plain machine with static routes to both container subnets.
//!
//! - Host A (192.0.2.11): a ptp network in `routed` mode, 10.0.1.0/24: `web` (10.0.1.2)
//!   publishes container port 80, `peer` (10.0.1.3) nothing. `[[routes]]` B's subnet via B.
//! - Host B (192.0.2.12): a bridge network in `nat` mode, 10.0.2.0/24: `app` (10.0.2.2)
//!   publishes 8080:80. `[[routes]]` A's subnet via A.
//!
//! Every check is about real packets: the answer arrived, and the source address the
//! server saw. The scenario test collects every failed check with its evidence and reports
//! them all at the end of each mode, so that one failure does not hide the others.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::collections::BTreeMap;

use netplane_tests::host::{Instance, Server, Snapshot, client, pings};
use netplane_tests::multihost::{A_IP, A_SUBNET, B_IP, B_SUBNET, NODE02_IP, World};
use netplane_tests::{Netns, each_mode};

const A_GATEWAY: &str = "10.0.1.1";
const WEB: &str = "10.0.1.2";
const PEER: &str = "10.0.1.3";
const APP: &str = "10.0.2.2";

/// Host A's config (without `mode`).
fn a_config() -> String {
    format!(
        r#"
[[networks]]
name = "npp"
subnet = "{A_SUBNET}"
driver = "ptp"
gateway_mode = "routed"
[[containers]]
name = "web"
network = "npp"
publish = ["8080:80"]
[[containers]]
name = "peer"
network = "npp"
[[routes]]
subnet = "{B_SUBNET}"
via = "{B_IP}"
"#
    )
}

/// Host B's config (without `mode`).
fn b_config() -> String {
    format!(
        r#"
[[networks]]
name = "npb"
subnet = "{B_SUBNET}"
[[containers]]
name = "app"
network = "npb"
publish = ["8080:80"]
[[routes]]
subnet = "{A_SUBNET}"
via = "{A_IP}"
"#
    )
}

/// The failed checks of one run, each with its evidence.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, what: &str, ok: bool, evidence: impl std::fmt::Display) {
        if !ok {
            eprintln!("FAILED: {what}: {evidence}");
            self.0.push(format!("{what}: {evidence}"));
        }
    }

    /// A TCP exchange that must arrive, with the server seeing `source`.
    fn tcp_from(&mut self, what: &str, got: Result<String, String>, source: &str) {
        let ok = matches!(&got, Ok(a) if a.ends_with(&format!(" from {source}")));
        self.check(
            what,
            ok,
            format_args!("expected the server to see {source}; got {got:?}"),
        );
    }

    fn finish(self, mode: &str) {
        assert!(
            self.0.is_empty(),
            "mode {mode}: {} check(s) failed:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// One TCP exchange: a server in `server` on `listen`, a client in `from` connecting to
/// `target`. Ok(the server's answer, `<message> from <address it saw>`) or Err(what the
/// client said).
fn tcp(server: &Netns, listen: &str, from: &Netns, target: &str) -> Result<String, String> {
    let _server = Server::start(server, &["serve-tcp", listen]);
    client(from, &["send-tcp", target, "hello"])
}

/// One UDP datagram and its answer, `<size> bytes from <address the server saw>`.
fn udp(server: &Netns, listen: &str, from: &Netns, target: &str) -> Result<String, String> {
    let _server = Server::start(server, &["serve-udp", listen]);
    client(from, &["send-udp", target, "100"])
}

/// `from` pings `node` (at `target`, one of its addresses) once, while `node` captures on
/// its `up0`: whether the echo was answered, and the source address of every echo request
/// that arrived. The seed's evidence: a capture on node02 showing the containers' own
/// addresses.
fn echo_sources_at(node: &Netns, from: &Netns, target: &str) -> (bool, Vec<String>) {
    let capture = Server::start(node, &["capture-ip", "up0", "800"]);
    let answered = pings(from, target);
    // `SRC DST PROTO ip=ok hl=20 type=8` (nptest capture-ip)
    let sources = capture
        .output()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let request = f.len() == 6 && f[1] == target && f[2] == "1" && f[5] == "type=8";
            request.then(|| f[0].to_owned())
        })
        .collect();
    (answered, sources)
}

/// Connections that must NOT get through, each to a listening server: tried all at once,
/// so the whole set costs one connect timeout. Returns the ones that got an answer.
fn refused(attempts: &[(&str, &Netns, &str, &Netns, &str)]) -> Vec<(String, String)> {
    let _servers: Vec<Server> = attempts
        .iter()
        .map(|(_, server, listen, _, _)| Server::start(server, &["serve-tcp", listen]))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = attempts
            .iter()
            .map(|(what, _, _, from, target)| {
                s.spawn(move || {
                    client(from, &["send-tcp", target, "intruder"])
                        .ok()
                        .map(|answer| (what.to_string(), answer))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    })
}

/// `COUNT` sequential connections from `from` to `target`, each checked by nptest.
fn many(
    server: &Netns,
    listen: &str,
    from: &Netns,
    target: &str,
    count: u32,
) -> Result<(), String> {
    let n = count.to_string();
    let srv = Server::start(server, &["serve-tcp", listen, &n]);
    client(from, &["send-tcp", target, "many", &n])?;
    if srv.finish() {
        Ok(())
    } else {
        Err(format!("the server at {listen} did not answer all {count}"))
    }
}

/// Snapshot differences, field by field, for the evidence of a failed check.
fn diff(before: &Snapshot, after: &Snapshot) -> String {
    before.diff(after).join("\n")
}

#[test]
fn seed_004_across_two_hosts_and_node02() {
    each_mode("seed_004_across_two_hosts_and_node02", |mode| {
        let w = World::new();
        let (a, b, node02) = (&w.a, &w.b, &w.node02);
        let before = (a.snapshot(), b.snapshot());
        a.write_config(&format!("mode = \"{mode}\"\n{}", a_config()));
        b.write_config(&format!("mode = \"{mode}\"\n{}", b_config()));
        a.netplane_ok(&["up"]);
        b.netplane_ok(&["up"]);
        let (web, peer, app) = (a.container("web"), a.container("peer"), b.container("app"));
        let mut c = Checks::default();

        // Host A: its containers reach each other and the host, with their own addresses.
        c.check("A: web pings peer", pings(&web, PEER), "no echo reply");
        c.check(
            "A: web pings its gateway",
            pings(&web, A_GATEWAY),
            "no echo reply",
        );
        c.check("A: host A pings web", pings(&a.host, WEB), "no echo reply");
        c.tcp_from(
            "A: peer -> web:80",
            tcp(&web, "0.0.0.0:80", &peer, &format!("{WEB}:80")),
            PEER,
        );
        c.tcp_from(
            "A: web -> peer:81",
            tcp(&peer, "0.0.0.0:81", &web, &format!("{PEER}:81")),
            WEB,
        );
        c.tcp_from(
            "A: web -> host A (its gateway):9000",
            tcp(&a.host, "0.0.0.0:9000", &web, &format!("{A_GATEWAY}:9000")),
            WEB,
        );
        c.tcp_from(
            "A: host A -> web:80 (from the gateway address on the host veth)",
            tcp(&web, "0.0.0.0:80", &a.host, &format!("{WEB}:80")),
            A_GATEWAY,
        );

        // node02 reaches A's published container port directly, and sees A's containers
        // with their own addresses (the seed's capture on node02): routed, no NAT.
        c.tcp_from(
            "node02 -> A's web:80 directly (published, routed)",
            tcp(&web, "0.0.0.0:80", node02, &format!("{WEB}:80")),
            NODE02_IP,
        );
        c.check(
            "node02 pings A's web (ICMP echo is allowed in routed mode)",
            pings(node02, WEB),
            "no echo reply",
        );
        c.check(
            "node02 pings A's peer (ICMP echo is allowed in routed mode)",
            pings(node02, PEER),
            "no echo reply",
        );
        c.tcp_from(
            "A's web -> node02:7000 with its own address",
            tcp(node02, "0.0.0.0:7000", &web, &format!("{NODE02_IP}:7000")),
            WEB,
        );
        let got = udp(node02, "0.0.0.0:7001", &web, &format!("{NODE02_IP}:7001"));
        c.check(
            "A's web -> node02 UDP with its own address",
            got.as_deref() == Ok(&format!("100 bytes from {WEB}")),
            format_args!("{got:?}"),
        );
        let (answered, sources) = echo_sources_at(node02, &web, NODE02_IP);
        c.check(
            "A's web pings node02, which sees the echo from 10.0.1.2",
            answered && sources == [WEB],
            format_args!("answered: {answered}, sources captured on node02: {sources:?}"),
        );

        // A's and B's containers are peers: their own addresses both ways, on any port
        // (no routed-mode port filter on A, no nat-mode protection on B, for them).
        c.tcp_from(
            "A's web -> B's app:80",
            tcp(&app, "0.0.0.0:80", &web, &format!("{APP}:80")),
            WEB,
        );
        c.tcp_from(
            "A's web -> B's app:81 (not published: peers are not filtered)",
            tcp(&app, "0.0.0.0:81", &web, &format!("{APP}:81")),
            WEB,
        );
        c.tcp_from(
            "B's app -> A's web:80",
            tcp(&web, "0.0.0.0:80", &app, &format!("{WEB}:80")),
            APP,
        );
        c.tcp_from(
            "B's app -> A's peer:81 (not published: peers are not filtered)",
            tcp(&peer, "0.0.0.0:81", &app, &format!("{PEER}:81")),
            APP,
        );
        c.check("A's web pings B's app", pings(&web, APP), "no echo reply");
        c.check("B's app pings A's peer", pings(&app, PEER), "no echo reply");
        // B's published port through B's address, from A's container: DNATed, not
        // masqueraded (A's subnet is a peer).
        c.tcp_from(
            "A's web -> B's published port 192.0.2.12:8080",
            tcp(&app, "0.0.0.0:80", &web, &format!("{B_IP}:8080")),
            WEB,
        );

        // B's container is masqueraded toward everything else: node02, and host A's own
        // address (not a routed subnet).
        c.tcp_from(
            "B's app -> node02:7000, masqueraded",
            tcp(node02, "0.0.0.0:7000", &app, &format!("{NODE02_IP}:7000")),
            B_IP,
        );
        let got = udp(node02, "0.0.0.0:7001", &app, &format!("{NODE02_IP}:7001"));
        c.check(
            "B's app -> node02 UDP, masqueraded",
            got.as_deref() == Ok(&format!("100 bytes from {B_IP}")),
            format_args!("{got:?}"),
        );
        c.tcp_from(
            "B's app -> host A's address 192.0.2.11:7002, masqueraded",
            tcp(&a.host, "0.0.0.0:7002", &app, &format!("{A_IP}:7002")),
            B_IP,
        );
        let (answered, sources) = echo_sources_at(node02, &app, NODE02_IP);
        c.check(
            "B's app pings node02, which sees the echo from 192.0.2.12 (masqueraded)",
            answered && sources == [B_IP],
            format_args!("answered: {answered}, sources captured on node02: {sources:?}"),
        );

        // node02 reaches B's published port through B's address.
        c.tcp_from(
            "node02 -> B's published port 192.0.2.12:8080",
            tcp(&app, "0.0.0.0:80", node02, &format!("{B_IP}:8080")),
            NODE02_IP,
        );

        // Refused: every target has a listening server, so only the data plane stops it.
        let drops_before = (mode == "ebpf").then(|| (a.all_drops(), b.all_drops()));
        let (web81, peer80, app80) = (
            format!("{WEB}:81"),
            format!("{PEER}:80"),
            format!("{APP}:80"),
        );
        let host_port = format!("{A_IP}:8080");
        let got_through = refused(&[
            (
                "node02 -> A's web:81 (not published, routed mode)",
                &web,
                "0.0.0.0:81",
                node02,
                &web81,
            ),
            (
                "node02 -> A's peer:80 (nothing published, routed mode)",
                &peer,
                "0.0.0.0:80",
                node02,
                &peer80,
            ),
            (
                "node02 -> host A 192.0.2.11:8080 (a routed mapping opens no host port)",
                &web,
                "0.0.0.0:80",
                node02,
                &host_port,
            ),
            (
                "node02 -> B's app:80 directly (nat mode)",
                &app,
                "0.0.0.0:80",
                node02,
                &app80,
            ),
        ]);
        for (what, answer) in got_through {
            c.check(&what, false, format_args!("got through: {answer:?}"));
        }
        if let Some((a_before, b_before)) = drops_before {
            // eBPF mode: the programs drop the refused SYNs (each attempt's first and its
            // retransmissions) under the reason `direct-routing`. Host A's port 8080 is
            // refused by A's own stack instead (nothing listens there): no drop.
            let grew = |before: &BTreeMap<String, u64>, i: &Instance, attempts: u64| {
                let after = i.all_drops();
                let reason = |m: &BTreeMap<String, u64>| m.get("direct-routing").copied();
                let evidence = format!("drops of {}: {before:?} -> {after:?}", i.name());
                // Shown either way: which reasons counted them.
                eprintln!("{evidence}");
                let grown = reason(&after)
                    .unwrap_or(0)
                    .saturating_sub(reason(before).unwrap_or(0));
                (grown >= attempts, evidence)
            };
            let (ok, evidence) = grew(&a_before, a, 2);
            c.check(
                "A counts both refused direct accesses as direct-routing drops",
                ok,
                evidence,
            );
            let (ok, evidence) = grew(&b_before, b, 1);
            c.check(
                "B counts the refused direct access as a direct-routing drop",
                ok,
                evidence,
            );
        }

        // Hundreds of sequential cross-host connections, none failing.
        for (what, server, listen, from, target, count) in [
            (
                "A's web -> B's app",
                &app,
                "0.0.0.0:80",
                &web,
                format!("{APP}:80"),
                300,
            ),
            (
                "B's app -> A's web",
                &web,
                "0.0.0.0:80",
                &app,
                format!("{WEB}:80"),
                300,
            ),
            (
                "node02 -> A's web directly",
                &web,
                "0.0.0.0:80",
                node02,
                format!("{WEB}:80"),
                200,
            ),
            (
                "node02 -> B's published port",
                &app,
                "0.0.0.0:80",
                node02,
                format!("{B_IP}:8080"),
                200,
            ),
        ] {
            let got = many(server, listen, from, &target, count);
            c.check(
                &format!("{count} sequential connections {what}"),
                got.is_ok(),
                format_args!("{got:?}"),
            );
        }

        // down on both hosts leaves nothing: no namespace, link, address, route, rule,
        // firewall chain, pin or state, and ip_forward as it was.
        a.netplane_ok(&["down"]);
        b.netplane_ok(&["down"]);
        for (host, before) in [(a, &before.0), (b, &before.1)] {
            let after = host.snapshot();
            c.check(
                &format!("down leaves host {} as before up", host.name()),
                &after == before,
                diff(before, &after),
            );
        }
        c.finish(mode);
    });
}

#[test]
fn bad_multi_host_input_is_refused_and_changes_nothing() {
    each_mode(
        "bad_multi_host_input_is_refused_and_changes_nothing",
        |mode| {
            let w = World::new();
            let a = &w.a;
            let before = a.snapshot();
            let good = a_config();
            let cases: Vec<(String, &[&str])> = vec![
                // The route overlaps the local network's subnet.
                (
                    good.replace(
                        &format!("subnet = \"{B_SUBNET}\""),
                        "subnet = \"10.0.1.128/25\"",
                    ),
                    &["routes[0].subnet", "10.0.1.128/25"],
                ),
                // The next hop is inside a local container subnet.
                (
                    good.replace(&format!("via = \"{B_IP}\""), "via = \"10.0.1.9\""),
                    &["routes[0].via", "10.0.1.9"],
                ),
                // The next hop is on no link of host A (only up0's 192.0.2.0/24 is): refused
                // at `up`, against the host, before anything changes.
                (
                    good.replace(&format!("via = \"{B_IP}\""), "via = \"198.51.100.7\""),
                    &["routes[0].via", "198.51.100.7"],
                ),
                (
                    good.replace("driver = \"ptp\"", "driver = \"vxlan\""),
                    &["driver", "vxlan"],
                ),
                (
                    good.replace("gateway_mode = \"routed\"", "gateway_mode = \"bridged\""),
                    &["gateway_mode", "bridged"],
                ),
                // A host address in a routed network's mapping: routed mode never DNATs.
                (
                    good.replace("\"8080:80\"", "\"192.0.2.11:8080:80\""),
                    &["containers[0].publish[0]", "192.0.2.11:8080:80"],
                ),
                // A ptp network needs its gateway: isolated is a bridge's.
                (
                    good.replace("gateway_mode = \"routed\"", "gateway_mode = \"isolated\"")
                        .replace("publish = [\"8080:80\"]\n", ""),
                    &["networks[0].gateway_mode", "isolated"],
                ),
            ];
            for (body, expect) in cases {
                a.write_config(&format!("mode = \"{mode}\"\n{body}"));
                let out = a.netplane(&["up"]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(!out.status.success(), "accepted:\n{body}");
                for e in expect {
                    assert!(
                        err.contains(e),
                        "error for\n{body}\nshould name {e:?}; it says: {err}"
                    );
                }
                let after = a.snapshot();
                assert!(
                    after == before,
                    "host A changed by a refused up of\n{body}\n{}",
                    diff(&before, &after)
                );
            }
            // And the good config goes up (the cases above failed for their own reason).
            a.write_config(&format!("mode = \"{mode}\"\n{good}"));
            a.netplane_ok(&["up"]);
            a.netplane_ok(&["down"]);
        },
    );
}
