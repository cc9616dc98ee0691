//! What only the eBPF data plane has: its conntrack table and lifetimes, its agent, its pins.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use netplane_tests::host::{Host, OUTSIDE_IP, UPLINK_IP, alive, udp_exchange};
use netplane_tests::privileged;

const CONFIG: &str = r#"
mode = "ebpf"
[conntrack]
udp_timeout = 2
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[containers]]
name = "web"
network = "npa"
publish = ["5353:53/udp"]
"#;

fn status(h: &Host) -> serde_json::Value {
    serde_json::from_str(&h.netplane_ok(&["status", "--json"])).unwrap()
}

fn ct_entries(h: &Host) -> u64 {
    status(h)["dataplane_health"]["conntrack"]["entries"]
        .as_u64()
        .expect("the conntrack map's fill")
}

#[test]
fn flows_are_listed_expire_on_time_and_are_collected() {
    if !privileged("flows_are_listed_expire_on_time_and_are_collected") {
        return;
    }
    let h = Host::new();
    h.write_config(CONFIG);
    h.netplane_ok(&["up"]);
    let web = h.container("web");
    udp_exchange(
        &h.outside,
        "0.0.0.0:7001",
        &web,
        &format!("{OUTSIDE_IP}:7001"),
        10,
        Some(4444),
    )
    .unwrap();
    udp_exchange(
        &web,
        "0.0.0.0:53",
        &h.outside,
        &format!("{UPLINK_IP}:5353"),
        10,
        Some(5555),
    )
    .unwrap();

    let flows: serde_json::Value =
        serde_json::from_str(&h.netplane_ok(&["conntrack", "--json"])).unwrap();
    let flows = flows.as_array().unwrap();
    let masq = flows
        .iter()
        .find(|f| f["kind"] == "masquerade")
        .expect("the masquerade flow");
    assert_eq!(
        masq["original"],
        format!("10.89.0.2:4444 → {OUTSIDE_IP}:7001")
    );
    assert_eq!(
        masq["translated"],
        format!("{UPLINK_IP}:4444 → {OUTSIDE_IP}:7001"),
        "source port kept"
    );
    let published = flows
        .iter()
        .find(|f| f["kind"] == "published")
        .expect("the published flow");
    assert_eq!(
        published["original"],
        format!("{OUTSIDE_IP}:5555 → {UPLINK_IP}:5353")
    );
    assert_eq!(
        published["translated"],
        format!("{OUTSIDE_IP}:5555 → 10.89.0.2:53")
    );
    assert!(
        masq["expires_in_s"].as_u64().unwrap() <= 2,
        "the configured UDP lifetime"
    );
    // One entry per flow, its replies'.
    assert_eq!(ct_entries(&h), 2, "one entry per flow");

    // After the lifetime the flows are gone from the table's view at once, and the agent
    // gives their entries back within its interval.
    std::thread::sleep(Duration::from_secs(3));
    let flows: serde_json::Value =
        serde_json::from_str(&h.netplane_ok(&["conntrack", "--json"])).unwrap();
    assert_eq!(flows.as_array().unwrap().len(), 0, "{flows}");
    let deadline =
        Instant::now() + netplane::dataplane::ebpf::agent::GC_INTERVAL + Duration::from_secs(3);
    while ct_entries(&h) > 0 {
        assert!(
            Instant::now() < deadline,
            "the agent did not collect the expired entries"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn down_unpins_everything_and_stops_the_agent() {
    if !privileged("down_unpins_everything_and_stops_the_agent") {
        return;
    }
    let h = Host::new();
    h.write_config(CONFIG);
    h.netplane_ok(&["up"]);
    let pins = Path::new(netplane::dataplane::ebpf::PIN_ROOT).join(h.name());
    let pid = status(&h)["dataplane_health"]["agent_pid"]
        .as_u64()
        .expect("an agent runs");
    let pinned: Vec<String> = std::fs::read_dir(&pins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for want in [
        "NP_CT",
        "NP_PUBLISHED",
        "link_netplane_uplink_ingress_up0",
        "link_netplane_bridge_egress_npa",
        "link_netplane_connect4_cgroup",
    ] {
        assert!(
            pinned.iter().any(|p| p == want),
            "{want} pinned: {pinned:?}"
        );
    }
    h.netplane_ok(&["down"]);
    assert!(!pins.exists(), "pins left: {}", pins.display());
    let deadline = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the agent (pid {pid}) outlived down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent part of `status --json`, whatever the exit status (a dead agent fails it).
fn agent_json(h: &Host) -> (bool, serde_json::Value) {
    let out = h.netplane(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.success(), v["dataplane_health"]["agent"].clone())
}

/// Polls the agent part of `status --json` until `done` holds of it, for at most `wait`.
fn agent_until(
    h: &Host,
    wait: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + wait;
    loop {
        let (_, a) = agent_json(h);
        if done(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "{what}: {a:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_shows_the_agent_since_when_and_its_garbage_collections() {
    if !privileged("status_shows_the_agent_since_when_and_its_garbage_collections") {
        return;
    }
    use netplane::dataplane::ebpf::agent::{GC_INTERVAL, record::unix_now};
    let h = Host::new();
    h.write_config(CONFIG);
    h.netplane_ok(&["up"]);
    // Its first collection comes as it starts.
    let a = agent_until(&h, Duration::from_secs(2), "no first collection", |a| {
        a["last_gc"].is_object()
    });
    assert_eq!(a["running"], true, "{a:#}");
    let pid = a["pid"].as_u64().expect("the agent's pid");
    assert!(alive(pid), "pid {pid} runs");
    let started = a["started"].as_f64().expect("its start");
    let now = unix_now();
    assert!(
        started <= now && now - started < 60.0,
        "started {started}, now {now}"
    );
    assert_eq!(a["errors"], serde_json::json!([]), "{a:#}");
    // And one every interval after it.
    let first = a["last_gc"]["at"].as_f64().unwrap();
    let a = agent_until(
        &h,
        GC_INTERVAL + Duration::from_secs(3),
        "no second collection",
        |a| a["last_gc"]["at"].as_f64().is_some_and(|at| at > first),
    );
    assert!(a["last_gc"]["removed"]["ipv4"].is_u64(), "{a:#}");
    let text = h.netplane_ok(&["status"]);
    assert!(
        text.contains(&format!("agent: running (pid {pid}, started "))
            && text.contains("last garbage collection ")
            && text.contains(" removed "),
        "{text}"
    );
}

#[test]
fn a_killed_agent_is_named_in_status_and_up_starts_a_new_one() {
    if !privileged("a_killed_agent_is_named_in_status_and_up_starts_a_new_one") {
        return;
    }
    let h = Host::new();
    h.write_config(CONFIG);
    h.netplane_ok(&["up"]);
    let a = agent_until(&h, Duration::from_secs(2), "no record", |a| {
        a["started"].is_f64()
    });
    let (pid, started) = (a["pid"].as_u64().unwrap(), a["started"].as_f64().unwrap());

    h.host.sh(&["kill", "-9", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, a) = agent_json(&h);
    assert!(!ok, "a dead agent is a problem: {a:#}");
    assert_eq!(
        (&a["running"], a["pid"].as_u64(), a["started"].as_f64()),
        (&serde_json::json!(false), Some(pid), Some(started)),
        "the dead agent as it last recorded itself: {a:#}"
    );
    assert!(
        a["last_seen"].as_f64().is_some_and(|t| t >= started),
        "{a:#}"
    );
    let out = h.netplane(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "status exits 0:\n{text}");
    assert!(
        text.contains(&format!("agent: NOT RUNNING: pid {pid} exited; last seen "))
            && text.contains("run `netplane up` to restart it")
            && text.contains(&format!("problem: the agent (pid {pid}) exited")),
        "{text}"
    );

    let up = h.netplane_ok(&["up"]);
    assert!(
        up.contains(&format!("the previous one, pid {pid}, had exited")),
        "{up}"
    );
    let a = agent_until(&h, Duration::from_secs(2), "no new agent", |a| {
        a["running"] == true && a["started"].is_f64()
    });
    let new_pid = a["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid, "{a:#}");
    assert!(
        a["started"].as_f64().unwrap() > started,
        "the up time starts again: {a:#}"
    );
    h.netplane_ok(&["status"]);
}
