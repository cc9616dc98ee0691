//! Cold start (issue 17): `up --json` says where its time went, and an `up` with nothing
//! to change loads nothing. No timing is asserted here: the bench measures speed.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::path::Path;

use aya::programs::SchedClassifier;
use netplane_tests::host::Host;
use netplane_tests::privileged;

const CONFIG: &str = r#"
mode = "ebpf"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80/tcp"]
"#;

fn up_json(h: &Host) -> serde_json::Value {
    serde_json::from_str(&h.netplane_ok(&["up", "--json"])).expect("up --json prints JSON")
}

/// (name, ms) of each phase of an `up --json` report.
fn phases(report: &serde_json::Value) -> Vec<(String, f64)> {
    report["phases"]
        .as_array()
        .expect("a phases list")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("a phase name").to_owned(),
                p["ms"].as_f64().expect("a phase time"),
            )
        })
        .collect()
}

/// The ids of the TC programs pinned by instance `name`: a load makes new ones.
fn pinned_program_ids(name: &str) -> Vec<(String, u32)> {
    let dir = Path::new(netplane::dataplane::ebpf::PIN_ROOT).join(name);
    let mut ids: Vec<(String, u32)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("prog_") && !n.ends_with("_new"))
        .map(|n| {
            let prog = SchedClassifier::from_pin(dir.join(&n)).expect("a pinned program");
            let id = prog.info().expect("its info").id();
            (n, id)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn up_reports_its_phases_and_a_second_up_loads_nothing() {
    if !privileged("up_reports_its_phases_and_a_second_up_loads_nothing") {
        return;
    }
    let h = Host::new();
    h.write_config(CONFIG);

    let cold = up_json(&h);
    assert_eq!(cold["name"], h.name());
    let total = cold["total_ms"].as_f64().expect("total_ms");
    let cold_phases = phases(&cold);
    eprintln!("cold up: {total:.1} ms, {cold_phases:?}");
    let names: Vec<&str> = cold_phases.iter().map(|(n, _)| n.as_str()).collect();
    for phase in [
        "check",
        "topology",
        "ebpf.object",
        "ebpf.verify",
        "ebpf.attach",
        "dataplane",
        "finish",
    ] {
        assert!(names.contains(&phase), "phase {phase} in {names:?}");
    }
    assert!(cold_phases.iter().all(|(_, ms)| *ms >= 0.0));
    let sum: f64 = cold_phases.iter().map(|(_, ms)| ms).sum();
    assert!(
        sum <= total,
        "the phases, one after the other, add up to {sum} ms, more than the {total} ms of the whole"
    );
    assert!(
        !cold["changes"].as_array().unwrap().is_empty(),
        "a cold up changes things"
    );
    let loaded = pinned_program_ids(h.name());
    assert!(!loaded.is_empty(), "the TC programs are pinned");

    // Nothing changed: the fast path, no object loaded, no program replaced.
    let warm = up_json(&h);
    let warm_phases = phases(&warm);
    eprintln!("warm up: {:.1} ms, {warm_phases:?}", warm["total_ms"]);
    assert!(
        warm_phases.iter().all(|(n, _)| n != "ebpf.object"),
        "a second up loads no object: {warm_phases:?}"
    );
    assert_eq!(warm["changes"], serde_json::json!([]), "nothing to change");
    assert_eq!(
        pinned_program_ids(h.name()),
        loaded,
        "the same programs stay pinned"
    );
    let sum: f64 = warm_phases.iter().map(|(_, ms)| ms).sum();
    assert!(sum <= warm["total_ms"].as_f64().unwrap());
}
