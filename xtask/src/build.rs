use std::process::Command;

use anyhow::{Context, bail};

use crate::setup;
use crate::util::{self, is_root, run, workspace_root};

/// Every namespace the tests create starts with this (`TEST_PREFIX` in
/// tests/src/sandbox.rs; the bench's start with `npbench`, the demo's with `npdemo`).
const TEST_NETNS_PREFIX: &str = "npt";

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Builds the userspace binary; its build script builds and embeds the eBPF object.
pub(crate) fn build(release: bool) -> anyhow::Result<()> {
    if let Some(msg) = setup::build_prerequisites_missing() {
        bail!(msg);
    }
    let mut c = cargo();
    c.args([
        "build",
        "--workspace",
        "--exclude",
        "netplane-ebpf",
        "--all-targets",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

pub(crate) fn test(extra: &[String]) -> anyhow::Result<()> {
    setup::install()?;
    build(false)?;
    if !is_root() {
        eprintln!("note: not root, so the in-kernel and end-to-end tests will skip with a reason");
    }
    let tests = run(cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "netplane-ebpf",
            "--no-fail-fast",
            "--",
        ])
        .args(extra));
    let leaks = check_leaks();
    tests.and(leaks)
}

/// Rule 1 of the house: after the suite no test namespace and no netplane pin remains.
/// Anything found is removed, and the run fails so that the leaking test gets fixed.
fn check_leaks() -> anyhow::Result<()> {
    let mut leaked = Vec::new();
    let netns = util::output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for name in netns.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(TEST_NETNS_PREFIX) {
            leaked.push(format!("netns {name}"));
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") {
        for e in dir
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("netplane"))
        {
            leaked.push(format!("pin {}", e.path().display()));
        }
    }
    if leaked.is_empty() {
        eprintln!("xtask: no namespace or pin left behind");
        return Ok(());
    }
    bail!(
        "the tests left these behind (removed where possible): {}",
        leaked.join(", ")
    )
}

/// The demo is a binary of the test harness (tests/src/bin/netplane-demo.rs), which
/// xtask runs rather than links: netplane's build script needs the eBPF toolchain that
/// `setup` installs first.
pub(crate) fn demo() -> anyhow::Result<()> {
    setup::install()?;
    build(false)?;
    run_tool(&mut Command::new(
        workspace_root().join("target/debug/netplane-demo"),
    ))
}

/// The benchmark (tests/src/bin/netplane-bench.rs) runs the release build: debug
/// userspace would measure the load generator.
pub(crate) fn bench(quick: bool) -> anyhow::Result<()> {
    setup::install()?;
    build(true)?;
    let out = workspace_root().join(if quick {
        "target/bench-quick"
    } else {
        "docs/bench"
    });
    let mut c = Command::new(workspace_root().join("target/release/netplane-bench"));
    c.arg("--out").arg(&out);
    if quick {
        c.arg("--quick");
    }
    run_tool(&mut c)
}

/// Runs the demo or the bench. Ctrl-C reaches them too (the terminal signals the whole
/// foreground process group): they remove their sandbox and exit, and xtask waits for that
/// instead of dying first and handing the terminal back mid-cleanup.
fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    ctrlc::set_handler(|| {}).context("install the Ctrl-C handler")?;
    run(cmd)
}
