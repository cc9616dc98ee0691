//! The agent: the long-running half of eBPF mode. The data plane's `apply` starts it
//! (detached, one per instance) and its `teardown` stops it. It garbage-collects expired
//! conntrack entries; the data path never depends on it (programs and maps are pinned), so
//! killing it loses nothing but memory reclamation until the next `up` starts it again. It
//! exits by itself when the instance's pins disappear.
//!
//! Its log (stderr, at the level of the `up` that started it, or `RUST_LOG`) goes to
//! `/run/netplane/<name>/agent.log`.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{gc, pin_dir};
use crate::state;

/// How often the agent collects garbage.
pub const GC_INTERVAL: Duration = Duration::from_secs(5);

fn pid_file(name: &str) -> PathBuf {
    state::dir(name).join("agent.pid")
}

/// Where the agent of instance `name` writes its log.
pub fn log_file(name: &str) -> PathBuf {
    state::dir(name).join("agent.log")
}

/// The agent's loop. Returns when the instance is gone.
pub fn run(name: &str) {
    // Garbage collection walks the whole conntrack map, two syscalls per entry, and
    // nothing is lost if it waits: the programs treat an expired entry as absent, and the
    // LRU map evicts under pressure. So it runs only when a CPU has nothing else to do
    // (SCHED_IDLE), never in the way of the containers' work.
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on this process, with a parameter block on our stack.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
        tracing::warn!(
            "could not lower the agent to SCHED_IDLE: {}",
            io::Error::last_os_error()
        );
    }
    tracing::info!(instance = name, pid = std::process::id(), "agent running");
    while pin_dir(name).exists() {
        let removed = gc(name);
        if removed > 0 {
            tracing::debug!(removed, "conntrack garbage collection");
        }
        std::thread::sleep(GC_INTERVAL);
    }
}

/// The pid of instance `name`'s agent, if one is running.
pub fn running(name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // The pid must still be our agent for this instance, not a recycled pid.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    (args.contains(&b"agent".as_slice()) && args.contains(&name.as_bytes())).then_some(pid)
}

/// Starts the agent unless it runs. Returns the pid of a newly started one.
pub fn ensure_running(name: &str) -> io::Result<Option<u32>> {
    if running(name).is_some() {
        return Ok(None);
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

/// Stops instance `name`'s agent, if it runs.
pub fn stop(name: &str) -> Option<u32> {
    let pid = running(name)?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = std::fs::remove_file(pid_file(name));
    Some(pid)
}
