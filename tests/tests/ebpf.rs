//! What only the eBPF data plane has: its conntrack table and lifetimes, its agent, its pins.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use netplane_tests::host::{Host, OUTSIDE_IP, UPLINK_IP, udp_exchange};
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
