//! Conntrack at scale (issue 17): the garbage collection walks and deletes in batches
//! (BPF_MAP_LOOKUP_BATCH / BPF_MAP_DELETE_BATCH), and removes exactly what expired, among
//! 100,000 synthetic flows, while real flows keep passing.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane::dataplane::ebpf::agent::{
    self, Walk, ct_now, ct_walk_count, fill_synthetic, gc_once,
};
use netplane_common::nat::s_to_ticks;
use netplane_tests::host::{Host, OUTSIDE_IP, UPLINK_IP, tcp_exchange};
use netplane_tests::privileged;

/// Established TCP flows live 600 s here: the synthetic ones last seen 700 s ago have
/// expired, those seen now have not.
const CONFIG: &str = r#"
mode = "ebpf"
[conntrack]
tcp_established_timeout = 600
tcp_closing_timeout = 600
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80/tcp"]
"#;

const FLOWS: usize = 100_000;
const EXPIRED: usize = FLOWS / 2;

/// A new connection through the published port, from outside.
fn connects(h: &Host) {
    let answer = tcp_exchange(
        &h.container("web"),
        "0.0.0.0:80",
        &h.outside,
        &format!("{UPLINK_IP}:8080"),
        "in",
    );
    assert_eq!(answer, format!("in from {OUTSIDE_IP}"));
}

#[test]
fn gc_removes_exactly_the_expired_flows_of_a_large_table() {
    if !privileged("gc_removes_exactly_the_expired_flows_of_a_large_table") {
        return;
    }
    let h = Host::new();
    h.write_config(CONFIG);
    h.netplane_ok(&["up"]);
    // This test collects, not the agent (every 5 s, it would race the counts).
    agent::stop(h.name());
    let name = h.name();

    let now = ct_now();
    assert_eq!(fill_synthetic(name, FLOWS, now).unwrap(), FLOWS);
    // The first half of the same flows again, last seen 700 s ago.
    let old = now.wrapping_sub(s_to_ticks(700));
    assert_eq!(fill_synthetic(name, EXPIRED, old).unwrap(), EXPIRED);

    let batch = ct_walk_count(name, Walk::Batch);
    assert_eq!(batch, FLOWS, "the batch walk sees every entry");
    assert_eq!(
        ct_walk_count(name, Walk::PerElement),
        batch,
        "both walks agree"
    );

    let pass = gc_once(name, Walk::Batch).unwrap();
    eprintln!("batch GC of {FLOWS} entries: {pass:?}");
    assert_eq!(pass.seen, FLOWS);
    assert_eq!(pass.deleted, EXPIRED, "exactly the expired flows");
    assert_eq!(ct_walk_count(name, Walk::Batch), FLOWS - EXPIRED);
    assert_eq!(ct_walk_count(name, Walk::PerElement), FLOWS - EXPIRED);

    // The live flows stayed, and new ones pass among them.
    connects(&h);
    // (`status` exits non-zero here: it reports the agent this test stopped.)
    let status: serde_json::Value =
        serde_json::from_slice(&h.netplane(&["status", "--json"]).stdout).unwrap();
    let listed = status["dataplane_health"]["conntrack"]["entries"]
        .as_u64()
        .expect("the conntrack table's fill");
    assert!(
        listed as usize > FLOWS - EXPIRED,
        "{listed} entries: the synthetic live flows and the real one"
    );

    // The element walk collects the same way: expire the same half again.
    let now = ct_now();
    let old = now.wrapping_sub(s_to_ticks(700));
    assert_eq!(fill_synthetic(name, EXPIRED, old).unwrap(), EXPIRED);
    let pass = gc_once(name, Walk::PerElement).unwrap();
    eprintln!("per-element GC: {pass:?}");
    assert!(
        (FLOWS..FLOWS + 8).contains(&pass.seen),
        "the synthetic flows, and the real ones"
    );
    assert_eq!(pass.deleted, EXPIRED);
    connects(&h);
}

/// 1,024 entries: the unreplied flows' table holds its minimum, 256
/// (CtTables::unreplied_entries).
const SMALL: &str = r#"
mode = "ebpf"
[conntrack]
max_entries = 1024
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[containers]]
name = "web"
network = "npa"
publish = ["5353:53/udp"]
"#;

/// A burst of one-datagram UDP flows larger than the unreplied table: its LRU evicts the
/// oldest, and `status` counts them (`ct-new-evicted`), which nothing counted before.
#[test]
fn evictions_of_unreplied_flows_are_counted() {
    if !privileged("evictions_of_unreplied_flows_are_counted") {
        return;
    }
    let h = Host::new();
    h.write_config(SMALL);
    h.netplane_ok(&["up"]);
    let flood = |n: u32| {
        let sent = netplane_tests::host::client(
            &h.outside,
            &["udp-flood", &format!("{UPLINK_IP}:5353"), &n.to_string()],
        )
        .unwrap();
        assert_eq!(sent, format!("{n} sent"));
    };
    flood(10);
    assert_eq!(h.drops("ct-new-evicted"), 0, "10 flows fit");
    // 1,000 flows, the first 10 of them the same as before: 1,000 in a table of 256. (Its
    // LRU may evict a little early: with a free list per CPU, it shrinks the common list
    // once the global free list is empty.)
    const FLOWS: u64 = 1000;
    flood(FLOWS as u32);
    let evicted = h.drops("ct-new-evicted");
    let left = agent::unreplied_evicted(h.name());
    eprintln!("{FLOWS} unreplied flows in a table of 256: {evicted} evicted ({left:?})");
    assert!(
        (FLOWS - 256..=FLOWS).contains(&evicted),
        "{evicted} evictions of {FLOWS} flows in 256 entries"
    );
}
