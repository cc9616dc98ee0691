//! The agent: the long-running half of eBPF mode. The data plane's `apply` starts it
//! (detached, one per instance) and its `teardown` stops it. It does two jobs, on two
//! threads:
//!
//! - it garbage-collects expired conntrack entries, every [`GC_INTERVAL`], at SCHED_IDLE;
//! - it follows the host: on every change of a link or an address (rtnetlink
//!   notifications), and every [`GC_INTERVAL`] in case one was missed, it points the
//!   programs at the uplink's addresses and index as they are now and attaches again the
//!   programs of a device that was deleted and created again (see [`reconcile`]).
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
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use self::record::{AgentRecord, GcRun, RecordError, unix_now};
use super::{EbpfError, attach, gc, maps, pin_dir};
use crate::dataplane::HostContext;
use crate::lock::{DirLock, LockError};
use crate::state::{self, State, StateError};
use crate::topology::{self, TopologyError};

/// How often the agent collects garbage.
pub const GC_INTERVAL: Duration = Duration::from_secs(5);

/// How old the last garbage collection may be before `status` calls the agent stuck:
/// several intervals, since SCHED_IDLE lets it wait while the CPUs are busy.
pub const GC_STALE: Duration = Duration::from_secs(30);

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

/// Where the agent of instance `name` writes its log.
pub fn log_file(name: &str) -> PathBuf {
    state::dir(name).join("agent.log")
}

/// The agent's record of itself, shared by its two threads; every change is saved at
/// once, so that `status` sees it even if the agent dies the next moment.
struct Recorder {
    path: PathBuf,
    record: Mutex<AgentRecord>,
}

impl Recorder {
    fn start(name: &str) -> Recorder {
        let r = Recorder {
            path: record_file(name),
            record: Mutex::new(AgentRecord::new(std::process::id(), unix_now())),
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

    /// Logs an error and records it, for `status`.
    fn error(&self, message: String) {
        tracing::warn!("{message}");
        self.update(|r| r.push_error(unix_now(), message));
    }
}

/// The agent's main: garbage collection on a thread of its own, the following of the host
/// on this one. Returns when the instance is gone.
pub fn run(name: &str) {
    tracing::info!(instance = name, pid = std::process::id(), "agent running");
    let recorder = Recorder::start(name);
    std::thread::scope(|s| {
        if let Err(e) = std::thread::Builder::new()
            .name("gc".into())
            .spawn_scoped(s, || collect(name, &recorder))
        {
            recorder.error(format!("cannot start the garbage collection thread: {e}"));
        }
        follow(name, &recorder);
    });
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
        recorder.error(format!(
            "could not lower garbage collection to SCHED_IDLE: {}",
            io::Error::last_os_error()
        ));
    }
    // Whether the last collection failed: a failure is recorded once, not every interval.
    let mut failing = false;
    while pin_dir(name).exists() {
        // A heartbeat before the walk too: walking a table of a million entries at
        // SCHED_IDLE on a busy host may take longer than `status` waits for one.
        recorder.update(|r| r.gc_walking_since = Some(unix_now()));
        let began = Instant::now();
        match gc(name) {
            Ok(removed) => {
                if removed.total() > 0 {
                    tracing::debug!(?removed, "conntrack garbage collection");
                }
                recorder.update(|r| {
                    r.gc_walking_since = None;
                    r.last_gc = Some(GcRun {
                        at: unix_now(),
                        duration_ms: began.elapsed().as_millis() as u64,
                        removed,
                    });
                });
                failing = false;
            }
            Err(e) if !failing => {
                recorder.error(e.to_string());
                failing = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(GC_INTERVAL);
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
            recorder.error(format!(
                "cannot follow the host's changes (no runtime: {e})"
            ));
            return;
        }
    };
    rt.block_on(async {
        let mut changes = match topology::watch_links_and_addresses() {
            Ok(s) => Some(s),
            Err(e) => {
                recorder.error(format!("cannot subscribe to link and address changes ({e}); looking every {GC_INTERVAL:?}"));
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
                            recorder.error("the netlink subscription ended; subscribing again".to_owned());
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
                    recorder.error(f.clone());
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

/// The pid of instance `name`'s agent, if one is running.
pub fn running(name: &str) -> Option<u32> {
    let pid = started_pid(name)?;
    // The pid must still be our agent for this instance, not a recycled pid.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    (args.contains(&b"agent".as_slice()) && args.contains(&name.as_bytes())).then_some(pid)
}

/// Starts the agent unless it runs. Returns the pid of a newly started one.
pub fn ensure_running(name: &str) -> io::Result<Option<u32>> {
    if let Some(pid) = running(name) {
        if same_executable(pid) {
            return Ok(None);
        }
        // An agent of another build (netplane was upgraded): it would keep the old
        // code's idea of the maps, and of what to follow. The new one takes over; for a
        // moment both may run, which is harmless (each collection and each
        // reconciliation is complete on its own, the latter under the instance's lock).
        tracing::info!(
            pid,
            "the agent runs another build of netplane: restarting it"
        );
        stop(name);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(name))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["agent", "--name", name])
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
