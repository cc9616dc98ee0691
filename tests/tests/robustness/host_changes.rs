//! The host changes under the data plane (issue 12, items 4, 5 and 6): the uplink's address
//! moves (a DHCP renewal, a failover), the uplink or a bridge is deleted and created again,
//! and `status` must say so rather than "healthy".
//!
//! Every change is made inside the sandbox's host namespace, as a DHCP client or an
//! administrator would make it, and every verdict comes from real connections: the source
//! address the outside's server saw, a published port answering on the new address.

use std::process::Output;
use std::time::{Duration, Instant};

use netplane_tests::each_mode;
use netplane_tests::host::{Host, OUTSIDE_IP, Server, UPLINK, UPLINK_IP, alive, client};

/// The uplink's address after a renewal (TEST-NET-3, the outside's subnet).
const RENEWED_IP: &str = "203.0.113.5";

/// How long the data plane has to follow a change (the agent must within a second; the
/// rest is a loaded machine's slack).
const FOLLOW: Duration = Duration::from_secs(3);

const CONFIG: &str = r#"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80"]
[[containers]]
name = "peer"
network = "npa"
"#;

/// A host with the network up in `mode`.
fn up(mode: &str) -> Host {
    let h = Host::new();
    h.write_config(&format!("mode = \"{mode}\"\n{CONFIG}"));
    h.netplane_ok(&["up"]);
    h
}

/// One TCP exchange that may fail: a server in `server_ns` on `listen`, a client in
/// `from` to `target`. Ok when the server answered and saw the client as `seen`.
fn exchange(
    server_ns: &netplane_tests::Netns,
    listen: &str,
    from: &netplane_tests::Netns,
    target: &str,
    seen: &str,
) -> Result<(), String> {
    let _server = Server::start(server_ns, &["serve-tcp", listen]);
    let answer = client(from, &["send-tcp", target, "m"])?;
    if answer == format!("m from {seen}") {
        Ok(())
    } else {
        Err(format!("{target}: the server saw {answer:?}, not {seen}"))
    }
}

/// Masquerade (the outside sees `uplink_ip`), the published port from the outside on
/// `uplink_ip`, and hairpin from a neighbour of the web container.
fn nat_works(h: &Host, uplink_ip: &str) -> Result<(), String> {
    let (web, peer) = (h.container("web"), h.container("peer"));
    exchange(
        &h.outside,
        "0.0.0.0:7000",
        &web,
        &format!("{OUTSIDE_IP}:7000"),
        uplink_ip,
    )
    .map_err(|e| format!("masquerade: {e}"))?;
    exchange(
        &web,
        "0.0.0.0:80",
        &h.outside,
        &format!("{uplink_ip}:8080"),
        OUTSIDE_IP,
    )
    .map_err(|e| format!("published port: {e}"))?;
    exchange(
        &web,
        "0.0.0.0:80",
        &peer,
        &format!("{uplink_ip}:8080"),
        "10.89.0.1",
    )
    .map_err(|e| format!("hairpin: {e}"))
}

/// Polls `nat_works` until it holds, for at most [`FOLLOW`] (an attempt started in time
/// may finish after it); panics with the last failure.
fn nat_works_soon(h: &Host, uplink_ip: &str, what: &str) {
    let deadline = Instant::now() + FOLLOW;
    loop {
        match nat_works(h, uplink_ip) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: NAT did not work within {FOLLOW:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `netplane status` (text, or `--json` parsed): its output, whatever its exit status.
fn status(h: &Host) -> (Output, String) {
    let out = h.netplane(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

fn status_json(h: &Host) -> (bool, serde_json::Value) {
    let out = h.netplane(&["status", "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

/// The data plane's problems, as `status --json` names them.
fn problems(v: &serde_json::Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            v["dataplane_health"]["problems"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

/// Asserts that `status` is healthy and exits 0, in both forms.
fn assert_healthy(h: &Host, when: &str) {
    let (ok, v) = status_json(h);
    assert!(
        ok && v["dataplane_health"]["healthy"] == true,
        "{when}: status is not healthy: {:?}",
        problems(&v)
    );
    let (out, text) = status(h);
    assert!(
        out.status.success(),
        "{when}: status exits non-zero:\n{text}"
    );
    assert!(
        text.contains("agent"),
        "{when}: the text names the agent:\n{text}"
    );
}

/// Asserts that `status` exits non-zero and names a problem containing every one of
/// `words`.
fn assert_problem(h: &Host, words: &[&str], when: &str) {
    let (ok, v) = status_json(h);
    let all = problems(&v);
    assert!(!ok, "{when}: status --json exits 0 with problems {all:?}");
    assert!(
        all.iter().any(|p| words.iter().all(|w| p.contains(w))),
        "{when}: no problem names {words:?}: {all:?}"
    );
    let (out, text) = status(h);
    assert!(!out.status.success(), "{when}: status exits 0:\n{text}");
}

/// Moves every time in the (stopped) agent's record `secs` into the past, as if it had
/// hung that long.
fn age_agent_record(h: &Host, secs: f64) {
    use netplane::dataplane::ebpf::agent;
    let path = agent::record_file(h.name());
    let mut r = agent::record(h.name())
        .unwrap()
        .expect("the agent keeps a record");
    r.started -= secs;
    r.gc_walking_since = r.gc_walking_since.map(|t| t - secs);
    if let Some(g) = &mut r.last_gc {
        g.at -= secs;
    }
    r.save(&path).unwrap();
}

/// Kills the agent of the eBPF data plane (SIGKILL) and waits until it is gone.
fn kill_agent(h: &Host) {
    let (_, v) = status_json(h);
    let pid = v["dataplane_health"]["agent_pid"]
        .as_u64()
        .expect("an agent runs in eBPF mode");
    h.host.sh(&["kill", "-9", &pid.to_string()]);
    let deadline = Instant::now() + FOLLOW;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The uplink goes (the kernel detaches its TCX links: tcx_uninstall()) and a device of
/// the same name and address comes, with a new ifindex, and the default route with it.
fn recreate_uplink(h: &Host) {
    h.host.sh(&["ip", "link", "del", UPLINK]);
    h.sandbox.veth(
        &h.host,
        UPLINK,
        &format!("{UPLINK_IP}/24"),
        &h.outside,
        "eth0",
        &format!("{OUTSIDE_IP}/24"),
    );
    h.host
        .sh(&["ip", "route", "add", "default", "via", OUTSIDE_IP]);
}

/// What a DHCP client does on a new lease: the old address goes, the new one comes, and
/// the default route (which went with the last address of its subnet) comes back.
fn renew_uplink_address(h: &Host, from: &str, to: &str) {
    h.host
        .sh(&["ip", "addr", "del", &format!("{from}/24"), "dev", UPLINK]);
    h.host
        .sh(&["ip", "addr", "add", &format!("{to}/24"), "dev", UPLINK]);
    h.host.sh(&[
        "ip", "route", "replace", "default", "via", OUTSIDE_IP, "dev", UPLINK,
    ]);
}

#[test]
fn uplink_address_change_is_followed_without_up() {
    each_mode("uplink_address_change_is_followed_without_up", |mode| {
        let h = up(mode);
        nat_works_soon(&h, UPLINK_IP, "before the change");
        renew_uplink_address(&h, UPLINK_IP, RENEWED_IP);
        if mode == "ebpf" {
            // For the record, not asserted: how soon the programs had the new address.
            let t = Instant::now();
            while status_json(&h).1["dataplane_health"]["uplink"]["translation_address"]
                != RENEWED_IP
                && t.elapsed() < FOLLOW
            {}
            eprintln!("the agent followed the renewal within {:?}", t.elapsed());
        }
        // eBPF: the agent follows the address notification (RTM_NEWADDR); iptables:
        // MASQUERADE takes the address of the outgoing device per new flow, and DNAT
        // matches `--dst-type LOCAL`, whatever the address.
        nat_works_soon(&h, RENEWED_IP, "after the renewal, without up");
        assert_healthy(&h, "after the renewal");
        // And back, so that the change is not a one-off.
        renew_uplink_address(&h, RENEWED_IP, UPLINK_IP);
        nat_works_soon(&h, UPLINK_IP, "after the second renewal");
        let out = h.netplane_ok(&["up"]);
        assert!(out.contains("nothing to change"), "{out}");
        assert_healthy(&h, "after up");
    });
}

#[test]
fn recreated_uplink_works_again_without_and_with_up() {
    each_mode("recreated_uplink_works_again_without_and_with_up", |mode| {
        let h = up(mode);
        nat_works_soon(&h, UPLINK_IP, "before the change");
        recreate_uplink(&h);
        if mode == "ebpf" {
            // For the record, not asserted: how soon `status` was healthy again.
            let t = Instant::now();
            while !status_json(&h).0 && t.elapsed() < FOLLOW {}
            eprintln!("the agent attached again within {:?}", t.elapsed());
        }
        // eBPF: the agent re-attaches on the link notification (RTM_NEWLINK); iptables:
        // its rules name the bridges, never the uplink.
        nat_works_soon(&h, UPLINK_IP, "after the uplink came back, without up");
        assert_healthy(&h, "after the uplink came back");
        h.netplane_ok(&["up"]);
        nat_works_soon(&h, UPLINK_IP, "after up");
        assert_healthy(&h, "after up");
        if mode == "ebpf" {
            // `up` alone must see it too, from the devices rather than from the pins
            // (which still name up0): with no agent to repair it first.
            kill_agent(&h);
            recreate_uplink(&h);
            assert_problem(
                &h,
                &["netplane_uplink_ingress", UPLINK, "detached"],
                "the uplink came back, no agent",
            );
            let out = h.netplane_ok(&["up"]);
            assert!(!out.contains("nothing to change"), "{out}");
            nat_works_soon(&h, UPLINK_IP, "after up, without the agent's help");
            assert_healthy(&h, "after up, without the agent's help");
        }
    });
}

#[test]
fn recreated_bridge_works_again_after_up() {
    each_mode("recreated_bridge_works_again_after_up", |mode| {
        let h = up(mode);
        nat_works_soon(&h, UPLINK_IP, "before the change");
        // The bridge goes, and its ports with their hairpin flags; `up` must build it
        // again and attach the programs to the new device, not trust the pins.
        h.host.sh(&["ip", "link", "del", "npa"]);
        assert_problem(&h, &["npa"], "without the bridge");
        let out = h.netplane_ok(&["up"]);
        assert!(!out.contains("nothing to change"), "{out}");
        nat_works_soon(&h, UPLINK_IP, "after up");
        assert_healthy(&h, "after up");
    });
}

#[test]
fn status_names_every_problem_and_exits_non_zero() {
    each_mode("status_names_every_problem_and_exits_non_zero", |mode| {
        let h = up(mode);
        assert_healthy(&h, "after up");
        match mode {
            "ebpf" => {
                // The agent hangs: its last garbage collection gets old (set back here,
                // rather than waited for).
                let (_, v) = status_json(&h);
                let pid = v["dataplane_health"]["agent_pid"]
                    .as_u64()
                    .unwrap()
                    .to_string();
                h.host.sh(&["kill", "-STOP", &pid]);
                age_agent_record(&h, 60.0);
                assert_problem(&h, &["agent", "last collected garbage"], "agent stopped");
                h.host.sh(&["kill", "-CONT", &pid]);
                let deadline = Instant::now() + netplane::dataplane::ebpf::agent::GC_INTERVAL * 2;
                while !status_json(&h).0 {
                    assert!(Instant::now() < deadline, "the agent did not collect again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                // The agent dies: no garbage collection, nothing follows the host.
                kill_agent(&h);
                assert_problem(&h, &["agent"], "agent killed");
                let (_, text) = status(&h);
                assert!(text.contains("agent: NOT RUNNING"), "{text}");
                // A program is detached: its pin goes, and with it the link.
                let pin = std::path::Path::new(netplane::dataplane::ebpf::PIN_ROOT)
                    .join(h.name())
                    .join("link_netplane_uplink_ingress_up0");
                std::fs::remove_file(&pin).unwrap();
                assert_problem(
                    &h,
                    &["netplane_uplink_ingress", UPLINK],
                    "a program detached",
                );
                // The uplink's address moves while nobody follows it.
                renew_uplink_address(&h, UPLINK_IP, RENEWED_IP);
                assert_problem(&h, &[UPLINK_IP, RENEWED_IP], "the uplink address moved");
            }
            "iptables" => {
                // No agent in iptables mode: nf_conntrack collects its own entries, and
                // MASQUERADE follows the uplink's address by itself, so a moved address
                // is no problem here.
                renew_uplink_address(&h, UPLINK_IP, RENEWED_IP);
                assert_healthy(&h, "the uplink address moved");
                // The analogue of a detached program: a jump to netplane's chain is gone.
                let (_, v) = status_json(&h);
                let masq = v["dataplane_health"]["attached"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|a| a.as_str()?.strip_prefix("nat "))
                    .find(|c| c.starts_with("NETPLANE-MASQ-"))
                    .expect("the masquerade chain")
                    .to_owned();
                let comment = format!("netplane {}", h.name());
                h.host.sh(&[
                    "iptables",
                    "-t",
                    "nat",
                    "-D",
                    "POSTROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    &masq,
                ]);
                assert_problem(&h, &["POSTROUTING"], "a jump deleted");
            }
            other => panic!("no status checks for mode {other}"),
        }
        // `up` repairs all of it.
        h.netplane_ok(&["up"]);
        assert_healthy(&h, "after up");
    });
}
