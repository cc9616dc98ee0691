//! `netplane monitor`, end to end: it turns the programs' events on while it runs, and
//! only then; prints a drop with its reason and tuple, a new flow with its translation;
//! turns the events off when interrupted, or, killed, the agent does; one monitor at a
//! time; and `--log` prints the programs' debug logs when they have them.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use netplane::dataplane::ebpf::monitor::flag;
use netplane_common::observe::monitor;
use netplane_tests::host::{
    Host, OUTSIDE_IP, OUTSIDE_IP6, UPLINK_IP, UPLINK_IP6, client, netplane_bin, udp_exchange,
};
use netplane_tests::privileged;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Two networks, a container on each, in `mode`.
fn config(mode: &str) -> String {
    format!(
        "mode = \"{mode}\"\n{}{}",
        netplane_tests::TWO_NETWORKS,
        r#"
[[containers]]
name = "web"
network = "npa"
[[containers]]
name = "other"
network = "npb"
"#
    )
}
const WEB: &str = "10.89.0.2";
const OTHER: &str = "10.89.1.2";

/// A host with the two networks up in eBPF mode; `up_args` are `up`'s further flags.
fn up(up_args: &[&str]) -> Host {
    let h = Host::new();
    h.write_config(&config("ebpf"));
    let mut args = vec!["up"];
    args.extend_from_slice(up_args);
    h.netplane_ok(&args);
    h
}

/// `netplane monitor -c CONFIG ARGS…` started in the host namespace, once it said it is
/// ready (its events flag is set); its stdout is the caller's to read.
fn spawn_ready(h: &Host, args: &[&str]) -> Child {
    let bin = netplane_bin();
    let mut all = vec![
        bin.to_str().unwrap(),
        "monitor",
        "-c",
        h.config_path().to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut child = h.host.spawn(&all);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("monitor {args:?} ended before it was ready:\n{seen}");
        }
        seen.push_str(&line);
        if line.starts_with("monitoring instance ") {
            break;
        }
    }
    // Keep draining stderr, so that the monitor never blocks on it.
    std::thread::spawn(move || for _ in stderr.lines() {});
    child
}

/// Waits for `child` to exit, up to `wait`.
fn exit_within(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A running `netplane monitor`: its stdout lines as they come; killed on drop.
struct Monitor {
    child: Child,
    lines: Receiver<String>,
}

impl Monitor {
    /// `netplane monitor -c CONFIG ARGS…` in the host namespace, once it said it is ready
    /// (its events flag is set).
    fn start(h: &Host, args: &[&str]) -> Monitor {
        let mut child = spawn_ready(h, args);
        let (tx, rx) = channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines: rx }
    }

    /// The next JSON line for which `want` holds, within `wait`; the others are skipped
    /// (and returned, for the message) .
    fn find(&self, wait: Duration, want: impl Fn(&Value) -> bool) -> Result<Value, Vec<String>> {
        let deadline = Instant::now() + wait;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    if want(&v) {
                        return Ok(v);
                    }
                    skipped.push(line);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(skipped);
                }
            }
        }
    }

    /// Every line that comes within `wait`.
    fn drain(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        out
    }

    /// SIGINT, then its exit status.
    fn interrupt(mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        exit_within(&mut self.child, Duration::from_secs(5)).expect("the monitor ignored SIGINT")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `original` or `translated` of an event as `saddr:sport → daddr:dport`.
fn tuple(v: &Value) -> String {
    format!(
        "{}:{} → {}:{}",
        v["saddr"].as_str().unwrap_or("?"),
        v["sport"],
        v["daddr"].as_str().unwrap_or("?"),
        v["dport"]
    )
}

#[test]
fn a_drop_is_printed_with_its_reason_and_tuple_and_sigint_turns_the_events_off() {
    if !privileged("a_drop_is_printed_with_its_reason_and_tuple") {
        return;
    }
    let h = up(&[]);
    assert_eq!(flag(h.name()), Some(0), "no events before a monitor");
    let m = Monitor::start(&h, &["--json", "--type", "drop"]);
    assert_eq!(flag(h.name()), Some(monitor::DROP), "drops only");

    // other (network npb) → web (network npa): isolation.
    let (web, other) = (h.container("web"), h.container("other"));
    assert!(
        client(&other, &["send-udp", &format!("{WEB}:7000"), "10", "4321"]).is_err(),
        "across networks"
    );
    let drop = m
        .find(Duration::from_secs(5), |v| v["reason"] == "isolation")
        .unwrap_or_else(|lines| panic!("no isolation drop; got {lines:?}"));
    assert_eq!(drop["type"], "drop", "{drop}");
    assert_eq!(drop["protocol"], "udp", "{drop}");
    assert_eq!(drop["hook"], "network", "{drop}");
    assert_eq!(
        tuple(&drop["original"]),
        format!("{OTHER}:4321 → {WEB}:7000"),
        "{drop}"
    );
    assert_eq!(drop["original"], drop["translated"], "{drop}");
    assert!(drop["interface"].is_string(), "{drop}");

    // A masqueraded flow is not a drop: nothing of it with --type drop.
    udp_exchange(
        &h.outside,
        "0.0.0.0:7001",
        &web,
        &format!("{OUTSIDE_IP}:7001"),
        10,
        Some(4444),
    )
    .unwrap();
    let rest = m.drain(Duration::from_millis(500));
    assert!(
        rest.iter().all(|l| l.contains("\"type\":\"drop\"")),
        "{rest:?}"
    );

    let status = m.interrupt();
    assert!(status.success(), "{status}");
    assert_eq!(flag(h.name()), Some(0), "SIGINT turns the events off");
}

/// Waits for the monitor's first new-flow event and checks it: a masqueraded flow of
/// `family` from `src` to `dst`, leaving as `xlat` (the uplink's address, the port kept).
fn expect_new_masquerade(m: &Monitor, family: &str, src: &str, xlat: &str, dst: &str) {
    let new = m
        .find(Duration::from_secs(5), |v| v["event"] == "new")
        .unwrap_or_else(|lines| panic!("no new flow; got {lines:?}"));
    assert_eq!(
        (&new["type"], &new["family"], &new["kind"]),
        (&"flow".into(), &family.into(), &"masquerade".into()),
        "{new}"
    );
    assert_eq!(tuple(&new["original"]), format!("{src} → {dst}"), "{new}");
    assert_eq!(
        tuple(&new["translated"]),
        format!("{xlat} → {dst}"),
        "the uplink's address, the port kept: {new}"
    );
}

#[test]
fn a_new_masqueraded_flow_is_printed_with_its_translation() {
    if !privileged("a_new_masqueraded_flow_is_printed_with_its_translation") {
        return;
    }
    let h = up(&[]);
    let m = Monitor::start(&h, &["--json", "--type", "flow"]);
    assert_eq!(flag(h.name()), Some(monitor::FLOW));
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
    expect_new_masquerade(
        &m,
        "ipv4",
        &format!("{WEB}:4444"),
        &format!("{UPLINK_IP}:4444"),
        &format!("{OUTSIDE_IP}:7001"),
    );
    // One event per flow, not per packet: the reply is no new flow.
    let more = m.drain(Duration::from_millis(500));
    assert!(
        !more.iter().any(|l| l.contains("\"event\":\"new\"")),
        "{more:?}"
    );
    assert!(m.interrupt().success());
    assert_eq!(flag(h.name()), Some(0));
}

#[test]
fn a_full_ring_buffer_loses_events_not_packets_and_the_monitor_says_how_many() {
    if !privileged("a_full_ring_buffer_loses_events_not_packets") {
        return;
    }
    let h = up(&[]);
    let m = Monitor::start(&h, &["--json", "--type", "drop"]);
    let before = h.drops("isolation");
    // A stopped monitor reads nothing: the ring buffer (256 KiB, ~2,300 events) fills.
    let pid = Pid::from_raw(m.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    const FLOOD: u64 = 6000;
    let sent = client(
        &h.container("other"),
        &["udp-flood", &format!("{WEB}:7000"), &FLOOD.to_string()],
    );
    kill(pid, Signal::SIGCONT).unwrap();
    sent.unwrap();
    // Within a tick of the monitor: the ring's events, and a report of the others.
    let lines: Vec<Value> = m
        .drain(Duration::from_secs(3))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let counted = h.drops("isolation") - before;
    assert_eq!(counted, FLOOD, "every packet dropped, and counted");
    let printed = lines.iter().filter(|v| v["reason"] == "isolation").count() as u64;
    let lost: Vec<&Value> = lines.iter().filter(|v| v["type"] == "lost").collect();
    assert_eq!(lost.len(), 1, "one report of the loss: {lost:?}");
    let lost_events = lost[0]["events"].as_u64().unwrap();
    assert!(
        printed > 0 && lost_events > 0,
        "printed {printed}, lost {lost_events}"
    );
    assert_eq!(
        printed + lost_events,
        counted,
        "each drop is an event printed or one counted as lost"
    );
    assert!(m.interrupt().success());
}

#[test]
fn a_closed_output_ends_the_monitor_and_turns_the_events_off() {
    if !privileged("a_closed_output_ends_the_monitor_and_turns_the_events_off") {
        return;
    }
    let h = up(&[]);
    let mut child = spawn_ready(&h, &["--type", "drop"]);
    let other = h.container("other");
    let drop_one = |sport: &str| {
        let _ = client(&other, &["send-udp", &format!("{WEB}:7000"), "1", sport]);
    };
    drop_one("4001");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains(" DROP isolation "), "{line}");
    // The reader goes away (as `| head -1` does): the next line cannot be written.
    drop(stdout);
    drop_one("4002");
    let status =
        exit_within(&mut child, Duration::from_secs(5)).expect("the monitor outlived its reader");
    assert!(status.success(), "{status}");
    assert_eq!(flag(h.name()), Some(0), "its events are off");
}

#[test]
fn ipv6_events_carry_ipv6_tuples() {
    if !privileged("ipv6_events_carry_ipv6_tuples") {
        return;
    }
    let h = Host::new().with_ipv6();
    h.write_config(
        &config("ebpf")
            .replace(
                "subnet = \"10.89.0.0/24\"",
                "subnet = \"10.89.0.0/24\"\nsubnet6 = \"2001:db8:89::/64\"",
            )
            .replace(
                "subnet = \"10.89.1.0/24\"",
                "subnet = \"10.89.1.0/24\"\nsubnet6 = \"2001:db8:90::/64\"",
            ),
    );
    h.netplane_ok(&["up"]);
    let (web6, other6) = ("2001:db8:89::2", "2001:db8:90::2");
    let m = Monitor::start(&h, &["--json", "--type", "all"]);
    udp_exchange(
        &h.outside,
        "[::]:7001",
        &h.container("web"),
        &format!("[{OUTSIDE_IP6}]:7001"),
        10,
        Some(4444),
    )
    .unwrap();
    expect_new_masquerade(
        &m,
        "ipv6",
        &format!("{web6}:4444"),
        &format!("{UPLINK_IP6}:4444"),
        &format!("{OUTSIDE_IP6}:7001"),
    );
    let _ = client(
        &h.container("other"),
        &["send-udp", &format!("[{web6}]:7000"), "10", "4321"],
    );
    let drop = m
        .find(Duration::from_secs(5), |v| v["type"] == "drop")
        .unwrap_or_else(|lines| panic!("no drop; got {lines:?}"));
    assert_eq!(
        (&drop["family"], &drop["reason"]),
        (&"ipv6".into(), &"isolation".into()),
        "{drop}"
    );
    assert_eq!(
        tuple(&drop["original"]),
        format!("{other6}:4321 → {web6}:7000"),
        "{drop}"
    );
    assert!(m.interrupt().success());
}

#[test]
fn one_monitor_at_a_time_and_a_killed_one_is_cleaned_up_by_the_agent() {
    if !privileged("one_monitor_at_a_time_and_a_killed_one_is_cleaned_up_by_the_agent") {
        return;
    }
    let h = up(&[]);
    let mut m = Monitor::start(&h, &["--type", "all"]);
    assert_eq!(flag(h.name()), Some(monitor::ALL));
    let second = h.netplane(&["monitor", "--type", "drop"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second monitor ran: {err}");
    assert!(
        err.contains(&format!("instance {} already has a monitor", h.name())),
        "{err}"
    );
    assert_eq!(
        flag(h.name()),
        Some(monitor::ALL),
        "the second one left the flag alone"
    );

    // Killed, it cannot clear the flag: the agent does, at its next collection.
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    assert_eq!(flag(h.name()), Some(monitor::ALL));
    let deadline =
        Instant::now() + netplane::dataplane::ebpf::agent::GC_INTERVAL + Duration::from_secs(3);
    while flag(h.name()) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the agent left the abandoned events on"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the lock is free for the next monitor.
    let m = Monitor::start(&h, &["--type", "drop"]);
    assert!(m.interrupt().success());
}

#[test]
fn the_monitor_names_an_instance_that_is_down_or_not_ebpf() {
    if !privileged("the_monitor_names_an_instance_that_is_down_or_not_ebpf") {
        return;
    }
    let h = Host::new();
    h.write_config(&config("iptables"));
    let out = h.netplane(&["monitor"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("instance {} is not up", h.name())),
        "{err}"
    );
    h.netplane_ok(&["up"]);
    let out = h.netplane(&["monitor", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "instance {} runs the iptables data plane",
            h.name()
        )) && err.contains("needs mode \"ebpf\""),
        "{err}"
    );
}

#[test]
fn log_prints_the_programs_debug_logs_only_when_they_have_them() {
    if !privileged("log_prints_the_programs_debug_logs_only_when_they_have_them") {
        return;
    }
    let h = up(&[]);
    let out = h.netplane(&["monitor", "--log"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the programs run without debug logs: netplane up --debug-datapath"),
        "{err}"
    );

    h.netplane_ok(&["up", "--debug-datapath"]);
    let mut m = Monitor::start(&h, &["--log"]);
    assert_eq!(flag(h.name()), Some(0), "logs need no events");
    let other = h.container("other");
    let _ = client(&other, &["send-udp", &format!("{WEB}:7000"), "10", "4321"]);
    let lines = m.drain(Duration::from_secs(2));
    let logged = lines.iter().find(|l| {
        let mut w = l.split_whitespace();
        let time = w.next().unwrap_or("");
        let level = w.next().unwrap_or("");
        time.len() == 15
            && time.as_bytes()[2] == b':'
            && level == "DEBUG"
            // The isolation drop, by the names `status` and the metrics use.
            && l.contains("drop: isolation at network ingress (ipv4), ")
    });
    assert!(
        logged.is_some(),
        "no `TIME DEBUG drop: isolation …` line: {lines:?}"
    );
    kill(Pid::from_raw(m.child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(m.child.wait().unwrap().success());
}

/// The bench's monitor row alone (`netplane-bench` measures it in every round): eBPF
/// mode's connect/request/close with the events flag never set, with a monitor attached,
/// and after it left. A measurement, not a test; run it on purpose, in release mode:
/// `cargo build --release -p netplane && cargo test --release -p netplane-tests --test
/// monitor -- --ignored --nocapture bench_monitor_row` (NPBENCH_ROUNDS, NPBENCH_SECONDS).
#[test]
#[ignore = "a measurement: run it on purpose"]
fn bench_monitor_row() {
    if !privileged("bench_monitor_row") {
        return;
    }
    use netplane_tests::bench::{Options, monitor_row, report};
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let mut opts = Options::quick();
    opts.rounds = env("NPBENCH_ROUNDS").map_or(5, |r| r as usize);
    opts.seconds = env("NPBENCH_SECONDS").unwrap_or(2.0);
    let rows = monitor_row(&opts).unwrap();
    let per_round: Vec<(f64, f64, f64)> = rows
        .iter()
        .map(|(never, m)| (never.per_s, m.attached.per_s, m.detached.per_s))
        .collect();
    for (i, (r, (never, m))) in per_round.iter().zip(&rows).enumerate() {
        eprintln!(
            "round {}: never set {:.0} conn/s, attached {:.0}, detached {:.0} (errors {} {} {})",
            i + 1,
            r.0,
            r.1,
            r.2,
            never.errors,
            m.attached.errors,
            m.detached.errors
        );
    }
    let cost = report::monitor_cost(&per_round).expect("rounds");
    eprintln!("{}", cost.line(opts.scale[0]));
}
