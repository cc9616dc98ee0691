//! Observing the data plane (issue 16): the agent's Prometheus metrics, scraped as
//! Prometheus would and validated by `promtool check metrics`, against real packets; and
//! `status --json`, which reads the same numbers.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::time::{Duration, Instant};

use netplane_tests::host::{Host, OUTSIDE_IP, Server, UPLINK_IP, alive, client, tcp_exchange};
use netplane_tests::http::{get, promtool_check, sample, scrape};
use netplane_tests::{each_mode, privileged};

/// Where the tests serve metrics: loopback of the instance's own (sandbox) namespace.
const LISTEN: &str = "127.0.0.1:9975";

/// Two networks, a published web server on npa (also on 127.0.0.1), a peer on npb.
fn config(mode: &str, extra: &str) -> String {
    format!(
        r#"mode = "{mode}"
{extra}
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[networks]]
name = "npb"
subnet = "10.89.1.0/24"
[[containers]]
name = "web"
network = "npa"
ip = "10.89.0.10"
publish = ["8080:80", "127.0.0.1:8081:80"]
[[containers]]
name = "peer"
network = "npb"
ip = "10.89.1.10"
"#
    )
}

/// A sandboxed host whose instance is up in `mode`, serving metrics at [`LISTEN`], with
/// `extra` config (TOML tables after `[metrics]`).
fn up_with_metrics(mode: &str, extra: &str) -> Host {
    let h = Host::new();
    h.write_config(&config(
        mode,
        &format!("[metrics]\nlisten = \"{LISTEN}\"\n{extra}"),
    ));
    h.netplane_ok(&["up"]);
    h
}

/// `promtool check metrics` passes the exposition: exit 0, nothing said.
fn assert_promtool_clean(exposition: &str) {
    let (ok, said) = promtool_check(exposition);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{exposition}"
    );
}

/// Scrapes until `done` holds of the exposition, for at most `wait` (the agent starts
/// detached from `up`, and binds a moment later).
fn scrape_until(h: &Host, addr: &str, wait: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok((200, body)) = get(&h.host, addr, "/metrics")
            && done(&body)
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no such exposition at {addr} within {wait:?}: {:?}\nagent log:\n{}",
            get(&h.host, addr, "/metrics"),
            std::fs::read_to_string(format!("/run/netplane/{}/agent.log", h.name()))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(h: &Host, addr: &str) -> bool {
    matches!(get(&h.host, addr, "/metrics"), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn metrics_are_off_by_default_and_served_where_asked() {
    each_mode(
        "metrics_are_off_by_default_and_served_where_asked",
        |mode| {
            let h = Host::new();
            h.write_config(&config(mode, ""));
            h.netplane_ok(&["up"]);
            std::thread::sleep(Duration::from_millis(300));
            assert!(refused(&h, LISTEN), "{mode}: metrics served unasked");
            let st = h.status();
            assert!(
                st["dataplane_health"]["agent"]["metrics"].is_null(),
                "{mode}: {st:#}"
            );

            // The config asks.
            h.write_config(&config(mode, &format!("[metrics]\nlisten = \"{LISTEN}\"")));
            let up = h.netplane_ok(&["up"]);
            assert!(up.contains("agent started"), "{mode}: {up}");
            let text = scrape_until(&h, LISTEN, Duration::from_secs(3), |t| {
                t.contains("netplane_build_info")
            });
            assert_promtool_clean(&text);
            assert_eq!(
                sample(&text, "netplane_build_info", &[("mode", mode)]),
                Some(1.0),
                "{text}"
            );
            assert!(matches!(get(&h.host, LISTEN, "/"), Ok((404, _))));
            let st = h.status();
            assert_eq!(
                st["dataplane_health"]["agent"]["metrics"]["listen"], LISTEN,
                "{mode}: {st:#}"
            );
            assert_eq!(st["dataplane_health"]["agent"]["running"], true);

            // `up --metrics` without a value: the default address; with one, there instead
            // (the agent restarts on its new address).
            h.write_config(&config(mode, ""));
            h.netplane_ok(&["up", "--metrics"]);
            scrape_until(&h, LISTEN, Duration::from_secs(3), |_| true);
            let other = "127.0.0.1:9976";
            let up = h.netplane_ok(&["up", "--metrics", other]);
            assert!(up.contains("agent started"), "{mode}: {up}");
            let text = scrape_until(&h, other, Duration::from_secs(3), |_| true);
            assert_promtool_clean(&text);
            assert!(refused(&h, LISTEN), "{mode}: the old address still served");

            // A bad address names the flag and the value.
            let out = h.netplane(&["up", "--metrics", "localhost"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("--metrics") && err.contains("localhost"),
                "{err}"
            );
            // Asked no more: in iptables mode the agent goes, in eBPF it stops serving.
            h.netplane_ok(&["up"]);
            std::thread::sleep(Duration::from_millis(300));
            assert!(refused(&h, other), "{mode}: metrics still served");
            h.netplane_ok(&["status"]);
            h.netplane_ok(&["down"]);
        },
    );
}

/// The drop counter of `reason` at (hook, direction) of IPv4, in the exposition and in
/// `status --json`: both must say the same.
fn drops_both_ways(h: &Host, reason: &str, hook: &str, dir: &str) -> u64 {
    let text = scrape(&h.host, LISTEN);
    let labels = [
        ("reason", reason),
        ("family", "ipv4"),
        ("hook", hook),
        ("direction", dir),
    ];
    let metric = sample(&text, "netplane_drop_count_total", &labels).unwrap_or(0.0) as u64;
    let st = h.status();
    let counted: u64 = st["dataplane_health"]["counters"]["drops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            d["reason"] == reason
                && d["family"] == "ipv4"
                && d["hook"] == hook
                && d["direction"] == dir
        })
        .filter_map(|d| d["packets"].as_u64())
        .sum();
    assert_eq!(
        metric, counted,
        "{reason} at {hook} {dir}: metrics and status differ\n{st:#}"
    );
    let bytes = sample(&text, "netplane_drop_bytes_total", &labels).unwrap_or(0.0);
    assert!(
        metric == 0 || bytes >= 40.0 * metric as f64,
        "{reason}: {metric} packets of {bytes} bytes"
    );
    metric
}

/// Runs `provoke`, then asserts that the drops of `reason` at (hook, direction) rose, in
/// the metrics and in `status` (by reason, as before, too).
fn assert_drops(h: &Host, reason: &str, hook: &str, dir: &str, provoke: impl FnOnce()) {
    let before = drops_both_ways(h, reason, hook, dir);
    let by_reason = h.drops(reason);
    provoke();
    let after = drops_both_ways(h, reason, hook, dir);
    assert!(
        after > before,
        "{reason} at {hook} {dir}: {before} → {after}\n{}",
        scrape(&h.host, LISTEN)
            .lines()
            .filter(|l| l.starts_with("netplane_drop_count_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(h.drops(reason) >= by_reason + (after - before), "{reason}");
}

#[test]
fn each_kind_of_drop_is_counted_where_it_happened() {
    if !privileged("each_kind_of_drop_is_counted_where_it_happened") {
        return;
    }
    let h = up_with_metrics("ebpf", "");
    scrape_until(&h, LISTEN, Duration::from_secs(3), |_| true);
    let web = h.container("web");
    let peer = h.container("peer");

    // Isolation: a container of npa to one of npb, as it enters the host from npa.
    assert_drops(&h, "isolation", "network", "ingress", || {
        let _server = Server::start(&peer, &["serve-tcp", "0.0.0.0:80"]);
        assert!(client(&web, &["send-tcp", "10.89.1.10:80", "x"]).is_err());
    });
    // A TCP segment without SYN that would open a masqueraded flow, leaving the uplink.
    assert_drops(&h, "tcp-no-syn-new-flow", "uplink", "egress", || {
        let sent = client(
            &web,
            &[
                "blind-tcp",
                "10.89.0.10:40000",
                &format!("{OUTSIDE_IP}:7000"),
                "A",
                "3",
            ],
        );
        assert_eq!(sent.as_deref(), Ok("3 sent"));
        std::thread::sleep(Duration::from_millis(200));
    });
    // A later fragment of a datagram whose first fragment was not seen (sent last).
    assert_drops(&h, "fragment-unknown", "uplink", "egress", || {
        let _server = Server::start(&h.outside, &["serve-udp", "0.0.0.0:7001"]);
        let target = format!("{OUTSIDE_IP}:7001");
        let _ = client(&web, &["send-fragments", &target, "2500", "reversed"]);
    });
    // moby#45610: a neighbour (here a container that rewrote its routes) sends to a port
    // published on 127.0.0.1.
    assert_drops(&h, "loopback-guard", "network", "ingress", || {
        let _server = Server::start(&web, &["serve-tcp", "0.0.0.0:80"]);
        let evil = &peer;
        for dst in ["127.0.0.0/8", "127.0.0.1"] {
            evil.sh(&[
                "ip", "route", "del", "local", dst, "dev", "lo", "table", "local",
            ]);
        }
        evil.sysctl("net.ipv4.conf.all.route_localnet", "1");
        evil.sh(&[
            "ip",
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            "10.89.1.1",
            "dev",
            "eth0",
            "onlink",
        ]);
        assert!(client(evil, &["send-tcp", "127.0.0.1:8081", "x"]).is_err());
    });
    assert_promtool_clean(&scrape(&h.host, LISTEN));
}

#[test]
fn a_full_conntrack_table_is_counted() {
    if !privileged("a_full_conntrack_table_is_counted") {
        return;
    }
    let h = up_with_metrics("ebpf", "[conntrack]\nmax_entries = 64");
    let _echo = Server::start(
        &h.outside,
        &["echo-all", "tcp", &format!("{OUTSIDE_IP}:7000")],
    );
    // More assured flows at once than the main table holds.
    let web = h.container("web");
    client(&web, &["many-tcp", &format!("{OUTSIDE_IP}:7000"), "100"]).unwrap();
    let text = scrape_until(&h, LISTEN, Duration::from_secs(3), |t| {
        sample(t, "netplane_conntrack_full_total", &[("family", "ipv4")]).is_some()
    });
    let full = sample(
        &text,
        "netplane_conntrack_full_total",
        &[("family", "ipv4")],
    )
    .unwrap() as u64;
    assert!(full > 0, "{text}");
    // Each later packet of a flow left out counts again (the closing handshakes may still
    // run): `status` reads a number between two scrapes around it.
    let st = h.status();
    let later = sample(
        &scrape(&h.host, LISTEN),
        "netplane_conntrack_full_total",
        &[("family", "ipv4")],
    )
    .unwrap() as u64;
    let counted = st["dataplane_health"]["counters"]["conntrack_full"]["ipv4"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        full <= counted && counted <= later,
        "{full} ≤ {counted} ≤ {later}: {st:#}"
    );
    assert!(
        h.drops("ct-full") >= full,
        "status shows it among the drops, as before"
    );
    // The next garbage collection counts what the table holds, and its pressure.
    let runs = |t: &str| {
        sample(
            t,
            "netplane_datapath_conntrack_gc_runs_total",
            &[("status", "completed")],
        )
        .unwrap_or(0.0)
    };
    let before = runs(&text);
    let text = scrape_until(&h, LISTEN, Duration::from_secs(12), |t| runs(t) > before);
    let pressure = sample(&text, "netplane_bpf_map_pressure", &[("map_name", "NP_CT")]).unwrap();
    assert!(pressure > 0.5 && pressure <= 1.0, "{text}");
    assert_promtool_clean(&text);
}

#[test]
fn flows_and_translations_are_counted() {
    if !privileged("flows_and_translations_are_counted") {
        return;
    }
    let h = up_with_metrics("ebpf", "");
    let web = h.container("web");
    let answer = tcp_exchange(
        &h.outside,
        "0.0.0.0:7000",
        &web,
        &format!("{OUTSIDE_IP}:7000"),
        "out",
    );
    assert_eq!(answer, format!("out from {UPLINK_IP}"));
    let _server = Server::start(&web, &["echo-tcp", "0.0.0.0:80"]);
    let text = scrape_until(&h, LISTEN, Duration::from_secs(8), |t| {
        sample(
            t,
            "netplane_conntrack_entries",
            &[("kind", "masquerade"), ("protocol", "tcp")],
        )
        .is_some()
    });
    assert_promtool_clean(&text);
    let translated = sample(
        &text,
        "netplane_nat_translated_packets_total",
        &[("family", "ipv4")],
    );
    let st = h.status();
    let counted: u64 = st["dataplane_health"]["counters"]["translated"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["family"] == "ipv4")
        .filter_map(|t| t["packets"].as_u64())
        .sum();
    assert!(counted > 0, "{st:#}");
    assert_eq!(translated.map(|t| t as u64), Some(counted), "{text}");
    assert!(
        sample(
            &text,
            "netplane_nat_port_allocations_total",
            &[("family", "ipv4"), ("result", "own")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "netplane_bpf_program_attached",
            &[("program", "netplane_uplink_egress"), ("device", "up0")]
        ) == Some(1.0),
        "{text}"
    );
}

#[test]
fn a_killed_agent_serves_nothing_and_a_new_one_starts_from_zero() {
    if !privileged("a_killed_agent_serves_nothing_and_a_new_one_starts_from_zero") {
        return;
    }
    let h = up_with_metrics("ebpf", "");
    std::thread::sleep(Duration::from_millis(1500));
    let text = scrape_until(&h, LISTEN, Duration::from_secs(3), |_| true);
    let started = sample(&text, "netplane_agent_start_time_seconds", &[]).unwrap();
    let uptime = sample(&text, "netplane_agent_uptime_seconds", &[]).unwrap();
    assert!(uptime >= 1.0, "{text}");
    let pid = h.status()["dataplane_health"]["agent"]["pid"]
        .as_u64()
        .unwrap();

    h.host.sh(&["kill", "-9", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The leader's exit shows first; the socket closes with the last of its threads.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !refused(&h, LISTEN) {
        assert!(
            Instant::now() < deadline,
            "a dead agent's port still answers: {:?}",
            get(&h.host, LISTEN, "/metrics").map(|(code, _)| code)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = h.netplane(&["status"]);
    let text_status = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text_status.contains(&format!("the agent (pid {pid}) exited")),
        "{text_status}"
    );

    h.netplane_ok(&["up"]);
    let text = scrape_until(&h, LISTEN, Duration::from_secs(3), |_| true);
    let new_started = sample(&text, "netplane_agent_start_time_seconds", &[]).unwrap();
    let new_uptime = sample(&text, "netplane_agent_uptime_seconds", &[]).unwrap();
    assert!(new_started > started, "{started} → {new_started}");
    assert!(new_uptime < uptime, "{uptime} → {new_uptime}");
    assert_promtool_clean(&text);
}

#[test]
fn iptables_dnat_counters_rise_with_connections() {
    if !privileged("iptables_dnat_counters_rise_with_connections") {
        return;
    }
    let h = up_with_metrics("iptables", "");
    let labels = [
        ("protocol", "tcp"),
        ("host_port", "8080"),
        ("destination", "10.89.0.10:80"),
    ];
    let text = scrape_until(&h, LISTEN, Duration::from_secs(3), |t| {
        sample(t, "netplane_iptables_dnat_packets_total", &labels).is_some()
    });
    let before = sample(&text, "netplane_iptables_dnat_packets_total", &labels).unwrap();
    let web = h.container("web");
    let answer = tcp_exchange(
        &web,
        "0.0.0.0:80",
        &h.outside,
        &format!("{UPLINK_IP}:8080"),
        "in",
    );
    assert_eq!(answer, format!("in from {OUTSIDE_IP}"));
    let text = scrape(&h.host, LISTEN);
    let after = sample(&text, "netplane_iptables_dnat_packets_total", &labels).unwrap();
    assert!(after > before, "{before} → {after}\n{text}");
    assert!(
        sample(&text, "netplane_nf_conntrack_entries", &[]).is_some(),
        "{text}"
    );
    assert_promtool_clean(&text);
    // `status --json` reads the same rule counters.
    let st = h.status();
    let counted = st["dataplane_health"]["counters"]["dnat"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["host_port"] == "8080" && d["protocol"] == "tcp")
        .and_then(|d| d["packets"].as_u64());
    assert_eq!(counted, Some(after as u64), "{st:#}");
    h.netplane_ok(&["down"]);
    assert!(refused(&h, LISTEN), "down stops the agent");
}

#[test]
fn a_taken_metrics_port_is_said_by_up_and_status() {
    each_mode("a_taken_metrics_port_is_said_by_up_and_status", |mode| {
        let h = Host::new();
        let holder = Server::start(&h.host, &["serve-tcp", LISTEN]);
        h.write_config(&config(mode, ""));
        let up = h.netplane_ok(&["up", "--metrics"]);
        assert!(
            up.contains(
                "warning: the agent serves no metrics: cannot serve metrics on 127.0.0.1:9975"
            ),
            "{mode}: {up}"
        );
        let out = h.netplane(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success()
                && text.contains("agent metrics: NOT SERVED on 127.0.0.1:9975")
                && text.contains("problem: ")
                && text.contains("the agent serves no metrics"),
            "{mode}: {text}"
        );
        let st: serde_json::Value =
            serde_json::from_slice(&h.netplane(&["status", "--json"]).stdout).unwrap();
        assert!(
            st["dataplane_health"]["agent"]["metrics"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("Address already in use")),
            "{mode}: {st:#}"
        );
        // Once the port is free, the next `up` serves there.
        drop(holder);
        let up = h.netplane_ok(&["up", "--metrics"]);
        assert!(up.contains("agent started"), "{mode}: {up}");
        scrape_until(&h, LISTEN, Duration::from_secs(3), |_| true);
        h.netplane_ok(&["status"]);
        h.netplane_ok(&["down"]);
    });
}
