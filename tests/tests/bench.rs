//! `netplane-bench --smoke`: the benchmark runs end to end and every mode answers, on the
//! bridge network, on the ptp one and over IPv6, and its CNI section attaches and detaches
//! containers with netplane-cni and with the reference chain. A smoke test only: no figure is
//! asserted (speed is measured by the benchmark, not by tests).
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::privileged;

#[test]
fn the_benchmark_runs_every_mode_without_a_failed_request() {
    if !privileged("the_benchmark_runs_every_mode_without_a_failed_request") {
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("npbench-smoke-{}", std::process::id()));
    // Cargo builds the package's binaries for its integration tests and says where.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netplane-bench"))
        .args(["--smoke", "--out", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("bench.json")).unwrap())
            .unwrap();
    let all = doc["results"]["rounds"][0].as_array().unwrap();
    // The eBPF variants ("ebpf E0"…) run as modes of their own (checked below).
    let (variants, round): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = all
        .iter()
        .partition(|m| m[0].as_str().unwrap().starts_with("ebpf E"));
    let mut modes: Vec<&str> = round.iter().map(|m| m[0].as_str().unwrap()).collect();
    modes.sort();
    assert_eq!(modes, ["baseline", "ebpf", "iptables", "nftables"]);
    // Every mode and variant: connections out (masquerade), and kernel CPU per unit and
    // TCP counters for each measurement on the bridge network.
    for m in all {
        let (mode, s) = (m[0].as_str().unwrap(), &m[1]);
        assert!(
            s["tcp_crr_out"]["per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: connections out: {}",
            s["tcp_crr_out"]
        );
        assert_eq!(
            s["tcp_crr_out"]["errors"], 0,
            "{mode}: failed connections out"
        );
        let cpu: Vec<(&str, f64)> = s["cpu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x[0].as_str().unwrap(), x[1].as_f64().unwrap_or(f64::NAN)))
            .collect();
        for key in [
            "stream_in",
            "stream_out",
            "tcp_rr",
            "tcp_crr_1",
            "tcp_crr_out",
        ] {
            let v = cpu.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            assert!(
                v.is_some_and(|v| v.is_finite() && v >= 0.0),
                "{mode}: kernel CPU per unit of {key}: {cpu:?}"
            );
            assert!(
                s["tcpext"].as_array().unwrap().iter().any(|x| x[0] == key),
                "{mode}: TCP counters of {key}"
            );
        }
    }
    if doc["results"]["variants_skipped"].is_null() {
        let mut names: Vec<&str> = variants.iter().map(|m| m[0].as_str().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["ebpf E0", "ebpf E1", "ebpf E2", "ebpf E3"]);
    }
    for m in round {
        let (mode, s) = (m[0].as_str().unwrap(), &m[1]);
        assert!(
            s["cold_up_ms"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: cold up"
        );
        assert!(
            s["stream_in_gbps"].as_f64().unwrap() > 0.0,
            "{mode}: stream in"
        );
        assert!(
            s["stream_out_gbps"].as_f64().unwrap() > 0.0,
            "{mode}: stream out"
        );
        for (n, rate) in s["tcp_crr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (&x[0], &x[1]))
        {
            assert!(
                rate["per_s"].as_f64().unwrap() > 0.0,
                "{mode}: connections at N={n}"
            );
            assert_eq!(rate["errors"], 0, "{mode}: failed connections at N={n}");
        }
        // The same container on a ptp network: request/response and connections.
        for key in ["ptp_tcp_rr", "ptp_tcp_crr"] {
            assert!(
                s[key]["per_s"].as_f64().unwrap_or(0.0) > 0.0,
                "{mode}: {key}: {}",
                s[key]
            );
            assert_eq!(s[key]["errors"], 0, "{mode}: {key}: failed requests");
        }
        // Over IPv6: the stream, request/response, and connections at the first and the
        // last N.
        let v6 = &s["ipv6"];
        assert!(
            v6["stream_in_gbps"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: IPv6 stream in: {v6}"
        );
        assert!(
            v6["tcp_rr"]["per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{mode}: IPv6 request/response: {v6}"
        );
        assert_eq!(v6["tcp_rr"]["errors"], 0, "{mode}: IPv6 request/response");
        let ns: Vec<u64> = v6["tcp_crr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[0].as_u64().unwrap())
            .collect();
        assert_eq!(
            ns,
            [1, 100],
            "{mode}: IPv6 connections at the ends of the scale"
        );
        for x in v6["tcp_crr"].as_array().unwrap() {
            assert!(
                x[1]["per_s"].as_f64().unwrap() > 0.0,
                "{mode}: IPv6 connections: {x}"
            );
            assert_eq!(x[1]["errors"], 0, "{mode}: IPv6 failed connections: {x}");
        }
        // UDP may lose a datagram on a busy machine (its 500 ms timeout counts as an error);
        // more than one would be a fault.
        assert!(
            s["udp_rr"]["errors"].as_u64().unwrap() <= 1,
            "{mode}: UDP errors"
        );
        assert!(
            s["udp_rr"]["per_s"].as_f64().unwrap() > 0.0,
            "{mode}: UDP answers"
        );
    }
    // ptp over bridge, per mode, for both ptp rows.
    let ratios = &doc["summary"]["ptp_over_bridge"];
    for metric in ["tcp_rr_ptp", "tcp_crr_1_ptp"] {
        for mode in ["baseline", "ebpf", "iptables", "nftables"] {
            assert!(
                ratios[metric][mode]["median"].as_f64().unwrap_or(0.0) > 0.0,
                "ptp/bridge {metric} {mode}: {ratios}"
            );
        }
    }
    // The IPv6 rows, with a value per mode and eBPF's ratio to each other mode.
    let rows = doc["summary"]["rows"].as_array().unwrap();
    for metric in [
        "stream_in_ipv6",
        "tcp_rr_ipv6",
        "tcp_crr_1_ipv6",
        "tcp_crr_100_ipv6",
    ] {
        let row = rows
            .iter()
            .find(|r| r["metric"] == metric)
            .unwrap_or_else(|| panic!("no row {metric}"));
        for mode in ["baseline", "ebpf", "iptables", "nftables"] {
            assert!(
                row["values"][mode].as_f64().unwrap_or(0.0) > 0.0,
                "{metric} {mode}: {row}"
            );
        }
        for other in ["baseline", "iptables", "nftables"] {
            assert!(
                row["ebpf_over"][other]["median"].as_f64().unwrap_or(0.0) > 0.0,
                "{metric} ebpf/{other}: {row}"
            );
        }
    }
    // Memory per tracked connection, for both families: every published flow took a
    // conntrack entry in both modes, and an IPv6 entry costs more than an IPv4 one.
    let (m4, m6) = (&doc["results"]["memory"], &doc["results"]["memory_ipv6"]);
    for m in [m4, m6] {
        assert!(
            m["published"]["ebpf_entries"].as_f64().unwrap() > 0.9,
            "{m}"
        );
        assert!(
            m["published"]["nf_conntrack_entries"].as_f64().unwrap() > 0.0,
            "{m}"
        );
    }
    assert!(
        m6["ebpf_bytes_per_entry"].as_f64().unwrap() > m4["ebpf_bytes_per_entry"].as_f64().unwrap(),
        "{m4} {m6}"
    );
    // Conntrack at scale: the synthetic flows went in, and connections went through them.
    let scale = doc["results"]["ct_scale"].as_array().unwrap();
    assert_eq!(scale.len(), 1, "{scale:?}");
    for c in scale {
        for pair in c["pairs"].as_array().unwrap() {
            assert!(pair["full"]["per_s"].as_f64().unwrap() > 0.0, "{c}");
            assert_eq!(pair["full"]["errors"], 0, "{c}");
        }
        assert!(c["gc_pass_s"].as_f64().unwrap() > 0.0, "{c}");
    }
    // The CNI section: every ADD and DEL succeeded (a failure fails the bench), for both
    // plugins, at 1 and at the larger number attached, and `podman run` answered.
    let cni = &doc["results"]["cni"];
    let attached = cni["options"]["attached"].as_u64().unwrap();
    let samples = cni["options"]["samples"].as_u64().unwrap() as usize;
    for plugin in ["netplane", "reference"] {
        let t = &cni[plugin];
        assert!(
            t["first_add_ms"].as_f64().unwrap() > 0.0,
            "{plugin}: first ADD: {t}"
        );
        for key in ["add_ms", "del_ms", "add_many_ms", "del_many_ms"] {
            let v = t[key].as_array().unwrap();
            assert_eq!(v.len(), samples, "{plugin}: {key}: {t}");
            assert!(
                v.iter().all(|x| x.as_f64().unwrap() > 0.0),
                "{plugin}: {key}: {t}"
            );
        }
        assert_eq!(
            t["fill_add_ms"].as_array().unwrap().len() as u64,
            attached - 1,
            "{plugin}: containers attached before the many-attached samples"
        );
        if cni["podman_skipped"].is_null() {
            assert!(
                t["podman_first_ms"].as_f64().unwrap() > 0.0,
                "{plugin}: podman"
            );
            let runs = t["podman_ms"].as_array().unwrap();
            assert!(
                runs.iter().all(|x| x.as_f64().unwrap() > 0.0),
                "{plugin}: podman {runs:?}"
            );
        }
    }
    let rows = doc["summary"]["cni"]["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["metric"] == "add_1_p50" && r["ratio"].as_f64().unwrap() > 0.0),
        "CNI summary: {rows:?}"
    );
    for f in ["bench.md", "bench.svg"] {
        assert!(out_dir.join(f).exists(), "{f} written");
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}
