//! The kernel side of `netplane monitor`: the flag in NP_CONFIG that turns the programs'
//! events on, the ring buffer they write, and the count of events lost; and the program
//! whose aya-log ring buffer `monitor --log` reads.
//!
//! One monitor at a time per instance: it holds an exclusive flock on
//! `/run/netplane/<name>/monitor.lock` for as long as the flag is its own ([`Lease`]). An
//! flock goes with its holder, even when it is killed, so a flag that is set while the
//! lock is free was left by a monitor that crashed: the agent clears it
//! ([`clear_if_abandoned`]), and nothing keeps paying for events nobody reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData, MapInfo, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use netplane_common::nat::{DpConfig, maps};
use netplane_common::observe;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::maps::{pinned_map, pinned_map_data};
use super::{attach, pin_dir, stats};
use crate::state;

/// The lock file of instance `name`'s monitor.
fn lock_path(name: &str) -> PathBuf {
    state::dir(name).join("monitor.lock")
}

/// How long a new monitor retries a lock that is held: the agent holds it for the
/// moment of a check (see [`clear_if_abandoned`]).
const LOCK_RETRY: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("instance {name} already has a monitor ({holder}): one monitor at a time")]
    Busy { name: String, holder: String },
    #[error("monitor lock {path}: cannot {call}: {source}")]
    Lock {
        path: String,
        call: &'static str,
        source: io::Error,
    },
    #[error("instance {name}: map {map} is not pinned (is the instance up in eBPF mode?)")]
    NotPinned { name: String, map: &'static str },
    #[error("instance {name}: map {map}: {source}")]
    Map {
        name: String,
        map: &'static str,
        source: aya::maps::MapError,
    },
}

impl MonitorError {
    fn map(name: &str, map: &'static str) -> impl FnOnce(aya::maps::MapError) -> MonitorError {
        let name = name.to_owned();
        move |source| MonitorError::Map { name, map, source }
    }
}

/// Reads `monitor` from instance `name`'s pinned config, sets it with `set` and writes the
/// config back when that changed it: the rest stays as `up` and the agent wrote it.
/// Returns the value the programs read now.
fn update_flag(name: &str, set: impl FnOnce(u32) -> u32) -> Result<u32, MonitorError> {
    let map = pinned_map(name, maps::CONFIG).ok_or_else(|| MonitorError::NotPinned {
        name: name.to_owned(),
        map: maps::CONFIG,
    })?;
    let mut config: Array<_, DpConfig> =
        Array::try_from(map).map_err(MonitorError::map(name, maps::CONFIG))?;
    let mut cfg = config
        .get(&0, 0)
        .map_err(MonitorError::map(name, maps::CONFIG))?;
    let want = set(cfg.monitor);
    if cfg.monitor != want {
        cfg.monitor = want;
        config
            .set(0, cfg, 0)
            .map_err(MonitorError::map(name, maps::CONFIG))?;
    }
    Ok(want)
}

/// The events flag that instance `name`'s programs read now ([`observe::monitor`] bits).
pub fn flag(name: &str) -> Option<u32> {
    super::maps::pinned_config(name).map(|c| c.monitor)
}

/// The right to the events flag of one instance: the monitor lock, held until drop, which
/// clears the flag.
pub struct Lease {
    name: String,
    mask: u32,
    _lock: Flock<File>,
}

impl Lease {
    /// Takes instance `name`'s monitor lock and sets its events flag to `mask`.
    pub fn take(name: &str, mask: u32) -> Result<Lease, MonitorError> {
        let path = lock_path(name);
        let io_err = |call: &'static str| {
            let path = path.display().to_string();
            move |source: io::Error| MonitorError::Lock { path, call, source }
        };
        let start = Instant::now();
        let mut lock = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("open"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    if start.elapsed() >= LOCK_RETRY {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        let holder = holder.trim();
                        return Err(MonitorError::Busy {
                            name: name.to_owned(),
                            holder: if holder.is_empty() {
                                "another process".to_owned()
                            } else {
                                holder.to_owned()
                            },
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, errno)) => return Err(io_err("flock")(errno.into())),
            }
        };
        // Who holds it, for the message of a second monitor.
        let holder = format!("pid {}", std::process::id());
        lock.set_len(0).map_err(io_err("truncate"))?;
        lock.rewind().map_err(io_err("rewind"))?;
        lock.write_all(holder.as_bytes()).map_err(io_err("write"))?;
        let lease = Lease {
            name: name.to_owned(),
            mask,
            _lock: lock,
        };
        lease.assert()?;
        Ok(lease)
    }

    /// Sets the flag again if something rewrote it (an `up` writes the whole config; it
    /// keeps the running value, but a read-modify-write of another writer may race ours).
    pub fn assert(&self) -> Result<(), MonitorError> {
        let mask = self.mask;
        update_flag(&self.name, |_| mask).map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = update_flag(&self.name, |_| 0) {
            tracing::warn!("monitor of {}: cannot turn the events off: {e}", self.name);
        }
    }
}

/// Turns the events off when the monitor that turned them on is gone (crashed), so that
/// nothing keeps paying for them. Called by the agent.
pub fn clear_if_abandoned(name: &str) {
    if flag(name).unwrap_or(0) == 0 {
        return;
    }
    // No lock file: no monitor ever ran since `up` (the flag came from elsewhere).
    let file = match File::open(lock_path(name)) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("monitor lock of {name}: {e}");
            return;
        }
    };
    // Held for the moment of the check: a monitor that starts meanwhile waits for it.
    let _held = match file.map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock)) {
        Some(Ok(lock)) => Some(lock),
        Some(Err(_)) => return,
        None => None,
    };
    match update_flag(name, |_| 0) {
        Ok(_) => {
            tracing::info!("{name}: events turned off: the monitor that asked for them is gone")
        }
        Err(e) => tracing::warn!("{name}: cannot turn abandoned events off: {e}"),
    }
}

/// Instance `name`'s event ring buffer (NP_EVENTS), opened from its pin.
pub fn events(name: &str) -> Result<RingBuf<MapData>, MonitorError> {
    let data =
        pinned_map_data(name, observe::maps::EVENTS).ok_or_else(|| MonitorError::NotPinned {
            name: name.to_owned(),
            map: observe::maps::EVENTS,
        })?;
    let map = Map::from_map_data(data).map_err(MonitorError::map(name, observe::maps::EVENTS))?;
    RingBuf::try_from(map).map_err(MonitorError::map(name, observe::maps::EVENTS))
}

/// The events instance `name`'s programs lost to a full ring buffer since its maps were
/// created, summed over CPUs; `None` when the map is not pinned.
pub fn events_lost(name: &str) -> Option<u64> {
    let map = pinned_map(name, observe::maps::EVENTS_LOST)?;
    Some(stats::per_cpu_sums(&map, 1).iter().sum())
}

/// aya-log's ring buffer map (aya-log-ebpf's `AYA_LOGS`).
const AYA_LOGS: &str = "AYA_LOGS";

/// The id of one of instance `name`'s attached programs that logs through aya-log (the
/// object of `up --debug-datapath`); `None` when none does. Every program of the object
/// shares the one ring buffer, so any of them gives all the logs.
pub fn log_program_id(name: &str) -> Option<u32> {
    let dir = pin_dir(name);
    let ids: Vec<u32> = attach::pinned(&dir)
        .iter()
        .filter_map(|link| {
            let link = FdLink::from(PinnedLink::from_pin(dir.join(link)).ok()?);
            Some(link.info().ok()?.program_id())
        })
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .find(|p| {
            p.map_ids().ok().flatten().is_some_and(|maps| {
                maps.iter().any(|id| {
                    MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(AYA_LOGS))
                })
            })
        })
        .map(|p| p.id())
}
