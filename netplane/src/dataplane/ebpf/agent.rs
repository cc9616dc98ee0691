//! The agent: the long-running half of eBPF mode. The data plane's `apply` starts it
//! (detached, one per instance) and its `teardown` stops it. It does up to three jobs, on
//! threads of their own:
//!
//! - it garbage-collects expired conntrack entries, every [`GC_INTERVAL`], at SCHED_IDLE,
//!   counting what stays for the metrics;
//! - it follows the host: on every change of a link or an address (rtnetlink
//!   notifications), and every [`GC_INTERVAL`] in case one was missed, it points the
//!   programs at the uplink's addresses and index as they are now and attaches again the
//!   programs of a device that was deleted and created again (see [`reconcile`]);
//! - with `[metrics] listen` (or `up --metrics`), it serves Prometheus metrics
//!   ([`crate::metrics`]). In iptables mode the agent runs for this alone.
//!
//! The data path never depends on it (programs and maps are pinned), so killing it loses
//! memory reclamation and the following of the host until the next `up` starts it again.
//! It exits by itself when the instance's pins disappear.
//!
//! It keeps a [`record`] of itself for `status` (`/run/netplane/<name>/agent.json`): its
//! pid and start, its last garbage collection and the last errors it met. Its log (stderr,
//! at the level of the `up` that started it, or `RUST_LOG`) goes to
//! `/run/netplane/<name>/agent.log`.

pub mod record;
pub mod report;

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use self::record::{AgentRecord, GcRun, MetricsRecord, RecordError, unix_now};
use super::conntrack::gc_and_count;
pub use super::conntrack::{CtCount, CtTableCount, FlowClass};
/// One collection pass as the agent runs it, timed, and the synthetic flows it is timed
/// on: the bench's 100k and 1M live-flow rows, and tests/tests/conntrack_scale.rs.
pub use super::conntrack::{
    GcReport, Walk, ct_walk_count, fill_synthetic, gc_once, now as ct_now, unreplied_evicted,
};
use super::{EbpfError, attach, maps, pin_dir};
use crate::config::{Mode, Plan};
use crate::dataplane::{HostContext, Observation};
use crate::lock::{DirLock, LockError};
use crate::metrics::{AgentInfo, AgentMetrics, Area, server};
use crate::state::{self, State, StateError};
use crate::topology::{self, TopologyError};

/// How often the agent collects garbage: at least this often, and always for tables of
/// fewer than [`GC_ADAPT_FROM`] entries.
pub const GC_INTERVAL: Duration = Duration::from_secs(5);

/// The longest the agent waits between collections of a large table that little expires
/// in (see [`next_gc_interval`]): nf_conntrack's worker too scans its whole table at least
/// every 16 s (GC_SCAN_MAX_DURATION in net/netfilter/nf_conntrack_core.c).
pub const GC_MAX_INTERVAL: Duration = Duration::from_secs(20);

/// From how many entries the interval adapts to what a collection finds.
pub const GC_ADAPT_FROM: usize = 16_384;

/// How old the last garbage collection may be before `status` calls the agent stuck:
/// longer than the longest interval, since SCHED_IDLE lets it wait while the CPUs are
/// busy.
pub const GC_STALE: Duration = Duration::from_secs(45);

/// The wait before the next collection, after one that walked `seen` entries and removed
/// `removed` of them and left the fullest table `fullest` full (0 to 1), `prev` after the
/// one before: a pass over a million entries costs
/// ~0.5 s of CPU (the bench's conntrack scale rows), so a large table of long-lived flows
/// is walked less often, as Cilium's dynamic conntrack-gc-interval and nf_conntrack's
/// gc_worker() adapt to the share of entries found expired. A quarter or more expired
/// (connection churn, whose closed entries would fill the table), or a table half full:
/// back to every [`GC_INTERVAL`]. Under a twentieth: twice as long, up to
/// [`GC_MAX_INTERVAL`]. Between: unchanged. The programs treat an expired entry as absent,
/// but a new flow cannot take its place in a full table (`ct-full`): hence the fill.
pub fn next_gc_interval(prev: Duration, seen: usize, removed: usize, fullest: f64) -> Duration {
    if seen < GC_ADAPT_FROM || removed * 4 >= seen || fullest >= 0.5 {
        GC_INTERVAL
    } else if removed * 20 < seen {
        (prev * 2).min(GC_MAX_INTERVAL)
    } else {
        prev.clamp(GC_INTERVAL, GC_MAX_INTERVAL)
    }
}

/// How long the agent lets a burst of notifications settle before it looks (one `ip`
/// command of a DHCP client sends several), and how soon it tries again when `up` or
/// `down` holds the instance.
const SETTLE: Duration = Duration::from_millis(50);
const RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
}

fn pid_file(name: &str) -> PathBuf {
    state::dir(name).join("agent.pid")
}

/// The agent's [`record`] of itself.
pub fn record_file(name: &str) -> PathBuf {
    state::dir(name).join("agent.json")
}

/// The record of instance `name`'s agent, as it last wrote it.
///
/// # Errors
/// When the record cannot be read or is damaged.
pub fn record(name: &str) -> Result<Option<AgentRecord>, RecordError> {
    AgentRecord::load(&record_file(name))
}

/// The agent of instance `name`, which does `duty`, and what is wrong with it (a damaged
/// record too).
pub fn status(name: &str, duty: report::Duty) -> (report::AgentStatus, Vec<String>) {
    let (record, damaged) = match record(name) {
        Ok(r) => (r, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (status, problems) =
        report::AgentStatus::of_duty(duty, running(name), started_pid(name), record, unix_now());
    (status, problems.into_iter().chain(damaged).collect())
}

/// Why instance `name`'s agent does not serve the metrics at `addr`, once it has said
/// (it binds as it starts: waits for its record, at most `wait`); `None` when it serves
/// them, or has not said within `wait`.
pub fn metrics_problem(name: &str, addr: SocketAddr, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let pid = running(name);
        let said = record(name)
            .ok()
            .flatten()
            .filter(|r| Some(r.pid) == pid)
            .and_then(|r| r.metrics)
            .filter(|m| m.listen == addr);
        match said {
            Some(m) => return m.error,
            None if Instant::now() >= deadline => return None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Where the agent of instance `name` writes its log.
pub fn log_file(name: &str) -> PathBuf {
    state::dir(name).join("agent.log")
}

/// What the agent of an instance runs with: its command line after `agent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentArgs {
    /// Where it serves metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The data plane it serves: eBPF (every job) or iptables (metrics alone).
    pub mode: Mode,
}

impl AgentArgs {
    /// What `plan`'s agent runs with.
    pub fn of(plan: &Plan) -> AgentArgs {
        AgentArgs {
            metrics: plan.metrics.listen,
            mode: plan.mode,
        }
    }

    /// Whether the mode needs an agent at all: eBPF always (garbage collection), the
    /// others only to serve metrics.
    pub fn needed(&self) -> bool {
        self.mode == Mode::Ebpf || self.metrics.is_some()
    }

    /// The command line of instance `name`'s agent, after the executable.
    fn command_line(&self, name: &str) -> Vec<String> {
        let mut args = vec!["agent".to_owned(), "--name".to_owned(), name.to_owned()];
        if let Some(addr) = self.metrics {
            args.extend(["--metrics".to_owned(), addr.to_string()]);
        }
        if self.mode != Mode::Ebpf {
            args.extend(["--mode".to_owned(), self.mode.to_string()]);
        }
        args
    }

    /// The inverse of [`AgentArgs::command_line`]: the instance and the arguments of an
    /// agent's command line (after the executable), or `None` when `args` is none. For
    /// `netplane-cni`, which an ADD runs as the agent, and has no CLI parser of its own.
    pub fn parse(args: &[String]) -> Option<(String, AgentArgs)> {
        let (first, rest) = args.split_first()?;
        if first != "agent" {
            return None;
        }
        let (mut name, mut parsed) = (None, AgentArgs::default());
        for pair in rest.chunks(2) {
            match pair {
                [flag, value] if flag == "--name" => name = Some(value.clone()),
                [flag, value] if flag == "--metrics" => parsed.metrics = Some(value.parse().ok()?),
                [flag, value] if flag == "--mode" => parsed.mode = value.parse().ok()?,
                _ => return None,
            }
        }
        Some((name?, parsed))
    }
}

/// The agent's record of itself, shared by its threads; every change is saved at once, so
/// that `status` sees it even if the agent dies the next moment. Its errors are counted
/// for the metrics too.
struct Recorder {
    path: PathBuf,
    record: Mutex<AgentRecord>,
    metrics: Arc<AgentMetrics>,
}

impl Recorder {
    fn start(name: &str, metrics: Arc<AgentMetrics>) -> Recorder {
        let r = Recorder {
            path: record_file(name),
            record: Mutex::new(AgentRecord::new(std::process::id(), unix_now())),
            metrics,
        };
        r.update(|_| {});
        r
    }

    fn update(&self, change: impl FnOnce(&mut AgentRecord)) {
        // A thread that panicked holding the lock left a record that is still whole.
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut record);
        if let Err(e) = record.save(&self.path) {
            tracing::warn!("{e}");
        }
    }

    /// Logs an error of `area` and records it, for `status` and the metrics.
    fn error(&self, area: Area, message: String) {
        tracing::warn!("{message}");
        self.metrics.error(area);
        self.update(|r| r.push_error(unix_now(), message));
    }
}

/// Whether instance `name` of `mode` still exists: its pins (eBPF), its state directory
/// (the others). The agent exits when it is gone.
fn instance_exists(name: &str, mode: Mode) -> bool {
    match mode {
        Mode::Ebpf => pin_dir(name).exists(),
        _ => state::dir(name).exists(),
    }
}

/// The agent's main: garbage collection and the metrics on threads of their own, the
/// following of the host on this one; in another mode than eBPF the metrics alone.
/// Returns when the instance is gone.
pub fn run_with(name: &str, args: AgentArgs) {
    tracing::info!(instance = name, pid = std::process::id(), mode = %args.mode, "agent running");
    // The names and labels are constants, checked by the metrics' unit tests.
    let metrics = Arc::new(AgentMetrics::new().expect("the agent's metrics are well-formed"));
    let recorder = Recorder::start(name, metrics.clone());
    std::thread::scope(|s| {
        if let Some(addr) = args.metrics {
            start_metrics(s, name, args, addr, &recorder, metrics);
        }
        if args.mode != Mode::Ebpf {
            while instance_exists(name, args.mode) {
                std::thread::sleep(Duration::from_secs(1));
            }
            return;
        }
        if let Err(e) = std::thread::Builder::new()
            .name("gc".into())
            .spawn_scoped(s, || collect(name, &recorder))
        {
            recorder.error(
                Area::Gc,
                format!("cannot start the garbage collection thread: {e}"),
            );
        }
        follow(name, &recorder);
    });
}

/// Binds the metrics address and serves it on a thread of the scope `s`. A bind that
/// fails (the port taken) is recorded, for `status` and `up`'s warning.
fn start_metrics<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    name: &'scope str,
    args: AgentArgs,
    addr: SocketAddr,
    recorder: &'scope Recorder,
    metrics: Arc<AgentMetrics>,
) {
    let listener = match server::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            serve_failed(recorder, addr, e.to_string());
            return;
        }
    };
    recorder.update(|r| {
        r.metrics = Some(MetricsRecord {
            listen: addr,
            error: None,
        });
    });
    let started = recorder
        .record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .started;
    let owned = name.to_owned();
    let render: server::Render = Arc::new(move || {
        let seen = State::load(&owned)
            .ok()
            .flatten()
            .and_then(|s| s.plan)
            .map(|p| crate::dataplane::observe(&p))
            .unwrap_or_default();
        let info = AgentInfo {
            mode: args.mode,
            ebpf_object: ebpf_object(&owned, args.mode),
            started,
            now: unix_now(),
        };
        crate::metrics::render(&seen, &metrics, &info).map_err(|e| e.to_string())
    });
    let spawned = std::thread::Builder::new()
        .name("metrics".into())
        .spawn_scoped(s, move || {
            if let Err(e) = server::serve(listener, render, || instance_exists(name, args.mode)) {
                serve_failed(recorder, addr, e.to_string());
            }
        });
    if let Err(e) = spawned {
        serve_failed(
            recorder,
            addr,
            format!("cannot start the metrics thread: {e}"),
        );
    }
}

/// The metrics at `addr` are not served (the port taken, the server failed): said in the
/// record, for `status` and `up`'s warning, and for the next `up`, which starts the agent
/// again.
fn serve_failed(recorder: &Recorder, addr: SocketAddr, message: String) {
    recorder.update(|r| {
        r.metrics = Some(MetricsRecord {
            listen: addr,
            error: Some(message.clone()),
        });
    });
    recorder.error(Area::Metrics, message);
}

/// The stamp of the eBPF object `up` last loaded for instance `name` (the state's
/// `ebpf.object`), `none` in a mode without one.
fn ebpf_object(name: &str, mode: Mode) -> String {
    if mode != Mode::Ebpf {
        return "none".to_owned();
    }
    std::fs::read_to_string(state::dir(name).join("ebpf.object"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// What the agent's metrics show of instance `plan.name`'s eBPF data plane (the reader
/// `status` uses too).
pub fn observe(plan: &Plan) -> Observation {
    super::stats::observe(plan)
}

/// The garbage collection loop, at SCHED_IDLE.
fn collect(name: &str, recorder: &Recorder) {
    // Garbage collection walks the whole conntrack map, two syscalls per entry, and
    // nothing is lost if it waits: the programs treat an expired entry as absent, and the
    // LRU map evicts under pressure. So it runs only when a CPU has nothing else to do
    // (SCHED_IDLE), never in the way of the containers' work. The policy is per thread
    // (sched_setscheduler(2) with pid 0: the calling thread), so the thread that follows
    // the host keeps the normal policy and answers within milliseconds.
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on this thread, with a parameter block on our stack.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
        recorder.error(
            Area::Gc,
            format!(
                "could not lower garbage collection to SCHED_IDLE: {}",
                io::Error::last_os_error()
            ),
        );
    }
    // Whether the last collection failed: a failure is recorded once, not every interval.
    let mut failing = false;
    let mut interval = GC_INTERVAL;
    let mut evicted = std::collections::BTreeMap::new();
    while pin_dir(name).exists() {
        // A heartbeat before the walk too: walking a table of a million entries at
        // SCHED_IDLE on a busy host may take longer than `status` waits for one.
        recorder.update(|r| r.gc_walking_since = Some(unix_now()));
        let began = Instant::now();
        match gc_and_count(name) {
            Ok((removed, mut count)) => {
                if removed.total() > 0 {
                    tracing::debug!(?removed, "conntrack garbage collection");
                }
                let took = began.elapsed();
                let left: u64 = count.tables.iter().map(|t| t.entries).sum();
                let seen = usize::try_from(left).unwrap_or(usize::MAX);
                let fullest = count
                    .tables
                    .iter()
                    .filter_map(|t| {
                        Some(t.entries as f64 / t.max_entries.filter(|m| *m > 1)? as f64)
                    })
                    .fold(0.0, f64::max);
                interval =
                    next_gc_interval(interval, seen + removed.total(), removed.total(), fullest);
                // A lower bound, recomputed each pass (flows arriving mid-walk lower it for a
                // moment): the metric is a counter, so it never goes back.
                for (family, n) in &mut count.unreplied_evicted {
                    let high = evicted.entry(*family).or_insert(0);
                    *high = (*high).max(*n);
                    *n = *high;
                }
                recorder.metrics.gc_done(removed, count, took);
                recorder.update(|r| {
                    r.gc_walking_since = None;
                    r.last_gc = Some(GcRun {
                        at: unix_now(),
                        duration_ms: took.as_millis() as u64,
                        removed,
                    });
                });
                failing = false;
            }
            Err(e) => {
                recorder.metrics.gc_failed();
                if !failing {
                    recorder.error(Area::Gc, e.to_string());
                    failing = true;
                }
            }
        }
        // A monitor that died left the programs writing events nobody reads.
        super::monitor::clear_if_abandoned(name);
        std::thread::sleep(interval);
    }
}

/// The loop that follows the host: a reconciliation after every burst of link and address
/// notifications, and every [`GC_INTERVAL`] in case one was lost (a netlink socket
/// overruns silently under a storm of changes). Returns when the instance is gone.
fn follow(name: &str, recorder: &Recorder) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            recorder.error(
                Area::Follow,
                format!("cannot follow the host's changes (no runtime: {e})"),
            );
            return;
        }
    };
    rt.block_on(async {
        let mut changes = match topology::watch_links_and_addresses() {
            Ok(s) => Some(s),
            Err(e) => {
                recorder.error(Area::Follow, format!("cannot subscribe to link and address changes ({e}); looking every {GC_INTERVAL:?}"));
                None
            }
        };
        let mut tick = tokio::time::interval(GC_INTERVAL);
        // Whether a change waits to be looked at (`up` held the instance).
        let mut pending = true;
        // What could not be done last time: said once, not every few seconds.
        let mut failed: Vec<String> = Vec::new();
        while pin_dir(name).exists() {
            let retry = tokio::time::sleep(if pending { RETRY } else { GC_INTERVAL * 2 });
            tokio::select! {
                ev = async { changes.as_mut()?.next().await }, if changes.is_some() => {
                    match ev {
                        Some(()) => {
                            tokio::time::sleep(SETTLE).await;
                            // Drain the burst: one look covers it all.
                            while let Some(Some(())) =
                                changes.as_mut().and_then(|c| c.next().now_or_never())
                            {}
                        }
                        None => {
                            recorder.error(Area::Follow, "the netlink subscription ended; subscribing again".to_owned());
                            tokio::time::sleep(RETRY).await;
                            changes = topology::watch_links_and_addresses().ok();
                        }
                    }
                    pending = true;
                }
                _ = tick.tick() => {
                    pending = true;
                    // A subscription that failed is tried again at every tick.
                    if changes.is_none() {
                        changes = topology::watch_links_and_addresses().ok();
                    }
                }
                _ = retry => {}
            }
            if pending {
                let now = match reconcile(name) {
                    Ok(failures) => failures,
                    Err(AgentError::Lock(LockError::Busy { .. })) => continue,
                    Err(e) => vec![format!("cannot follow the host: {e}")],
                };
                pending = false;
                for f in now.iter().filter(|f| !failed.contains(f)) {
                    recorder.error(Area::Follow, f.clone());
                }
                failed = now;
            }
        }
    });
}

/// Brings the data plane in line with the host as it is now, without the config: the
/// programs of a device that was deleted and created again are attached again, and the
/// masquerade addresses, the uplink's index and the local addresses are the host's. Holds
/// the instance's lock, without waiting: while `up` or `down` holds it, the change is
/// theirs to see ([`LockError::Busy`], tried again soon). Returns what it could not do.
fn reconcile(name: &str) -> Result<Vec<String>, AgentError> {
    let _lock = DirLock::acquire(
        &state::dir(name),
        &format!("instance {name}"),
        "netplane agent",
        Duration::ZERO,
    )?;
    // The plan last applied completely; none while the first `up` runs.
    let Some(plan) = State::load(name)?.and_then(|s| s.plan) else {
        return Ok(Vec::new());
    };
    let dir = pin_dir(name);
    let Some(uplink) = attach::pinned_uplink(&plan, &dir) else {
        return Ok(vec![
            "no uplink program is pinned: re-run `netplane up`".to_owned(),
        ]);
    };
    let (mut changes, failures) = attach::reattach(&dir, &plan, &uplink);
    let failures = failures
        .iter()
        .map(|e| format!("cannot attach again: {}", error_chain(e)))
        .collect();
    let (links, addrs, addrs6) = topology::host_now(plan.dual_stack())?;
    match HostContext::from_host(&plan, &uplink, links, &addrs, &addrs6) {
        Some(host) => changes.extend(maps::follow_uplink(name, &host)?),
        None => tracing::debug!(uplink, "the uplink is missing or has no IPv4 address"),
    }
    for c in changes {
        tracing::info!("followed the host: {c}");
    }
    Ok(failures)
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// The pid of the agent that `up` last started for instance `name`, running or not:
/// `stop` forgets it, so a pid here whose process is gone is an agent that died.
pub fn started_pid(name: &str) -> Option<u32> {
    std::fs::read_to_string(pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The command line of process `pid` after its executable, if it runs.
fn command_line(pid: u32) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The pid of instance `name`'s agent, if one is running.
pub fn running(name: &str) -> Option<u32> {
    let pid = started_pid(name)?;
    // The pid must still be our agent for this instance, not a recycled pid.
    let args = command_line(pid)?;
    (args.iter().any(|a| a == "agent") && args.iter().any(|a| a == name)).then_some(pid)
}

/// Starts instance `name`'s agent with `args` unless it runs so already. Returns the pid
/// of a newly started one.
///
/// # Errors
/// When it cannot be started (its log file, the spawn).
pub fn ensure_running_with(name: &str, args: AgentArgs) -> io::Result<Option<u32>> {
    crate::instance::phases::time("ebpf.agent", || start_unless_running(name, args))
}

/// [`ensure_running_with`]'s work.
fn start_unless_running(name: &str, args: AgentArgs) -> io::Result<Option<u32>> {
    let line = args.command_line(name);
    if let Some(pid) = running(name) {
        let same_args = command_line(pid).is_some_and(|a| a == line);
        // One that could not bind its metrics port (taken then) tries again.
        let unserved = record(name)
            .ok()
            .flatten()
            .filter(|r| r.pid == pid)
            .and_then(|r| r.metrics)
            .is_some_and(|m| m.error.is_some());
        if same_executable(pid) && same_args && !unserved {
            return Ok(None);
        }
        // An agent of another build (netplane was upgraded) would keep the old code's
        // idea of the maps, and of what to follow; one with other arguments serves
        // metrics elsewhere, or not at all. The new one takes over; for a moment both
        // may run, which is harmless (each collection and each reconciliation is
        // complete on its own, the latter under the instance's lock), except for a
        // metrics port both want: the old one is waited for.
        tracing::info!(
            pid,
            "the agent runs another build of netplane, or other arguments: restarting it"
        );
        stop(name);
        wait_exited(pid, Duration::from_secs(2));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(name))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(&line)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group, not the terminal's foreground one: the Ctrl-C or the
        // hangup of the terminal that ran `up` does not reach it.
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        // The level this process logs at (`-v`, `-q`), for the agent too.
        let level = tracing::level_filters::LevelFilter::current();
        cmd.env("RUST_LOG", level.to_string().to_lowercase());
    }
    let child = cmd.spawn()?;
    std::fs::write(pid_file(name), child.id().to_string())?;
    Ok(Some(child.id()))
}

/// Whether process `pid` runs the same executable file as this process (compared by
/// inode: a replaced binary keeps its old inode alive for the processes running it).
fn same_executable(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let theirs = id(&format!("/proc/{pid}/exe"));
    theirs.is_some() && theirs == id("/proc/self/exe")
}

/// Waits until process `pid` is gone (a zombie counts as gone: its port is closed), for at
/// most `limit`.
fn wait_exited(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while command_line(pid).is_some_and(|a| !a.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops instance `name`'s agent, if it runs.
pub fn stop(name: &str) -> Option<u32> {
    let pid = running(name)?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = std::fs::remove_file(pid_file(name));
    let _ = std::fs::remove_file(record_file(name));
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_parses_back() {
        for (metrics, mode) in [
            (None, Mode::Ebpf),
            (Some("127.0.0.1:9975"), Mode::Ebpf),
            (Some("[::1]:9975"), Mode::Iptables),
        ] {
            let args = AgentArgs {
                metrics: metrics.map(|m| m.parse().unwrap()),
                mode,
            };
            let line = args.command_line("np1");
            assert_eq!(AgentArgs::parse(&line), Some(("np1".to_owned(), args)));
        }
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        for not in [
            "agent",
            "agent --name",
            "agent --metrics x --name n",
            "add --name n",
        ] {
            assert_eq!(AgentArgs::parse(&words(not)), None, "{not}");
        }
    }

    #[test]
    fn large_tables_that_little_expires_in_are_collected_less_often() {
        let big = 1_000_000;
        // Small tables: always the shortest interval.
        assert_eq!(next_gc_interval(GC_INTERVAL, 1000, 0, 0.0), GC_INTERVAL);
        // Quiet and large: doubling, up to the longest.
        let mut i = GC_INTERVAL;
        for want in [10, 20, 20] {
            i = next_gc_interval(i, big, 10, 0.4);
            assert_eq!(i, Duration::from_secs(want));
        }
        // Some churn: unchanged; a quarter expired, or a table half full: the shortest.
        assert_eq!(next_gc_interval(i, big, big / 10, 0.4), i);
        assert_eq!(next_gc_interval(i, big, big / 4, 0.4), GC_INTERVAL);
        assert_eq!(next_gc_interval(i, big, 10, 0.5), GC_INTERVAL);
        assert!(
            GC_STALE > GC_MAX_INTERVAL + GC_INTERVAL,
            "status allows the longest wait"
        );
    }

    #[test]
    fn the_command_line_says_what_the_agent_runs_with() {
        let args = |metrics: Option<&str>, mode| {
            AgentArgs {
                metrics: metrics.map(|m| m.parse().unwrap()),
                mode,
            }
            .command_line("np1")
        };
        // As before metrics: an agent of an earlier build with these arguments is the
        // same agent, and is not restarted for them.
        assert_eq!(args(None, Mode::Ebpf), ["agent", "--name", "np1"]);
        assert_eq!(
            args(Some("127.0.0.1:9975"), Mode::Ebpf),
            ["agent", "--name", "np1", "--metrics", "127.0.0.1:9975"]
        );
        assert_eq!(
            args(Some("[::1]:9975"), Mode::Iptables),
            [
                "agent",
                "--name",
                "np1",
                "--metrics",
                "[::1]:9975",
                "--mode",
                "iptables"
            ]
        );
        assert!(AgentArgs::default().needed(), "eBPF collects garbage");
        let iptables = AgentArgs {
            metrics: None,
            mode: Mode::Iptables,
        };
        assert!(
            !iptables.needed(),
            "iptables without metrics has nothing to run"
        );
    }
}
