//! What the agent says about itself, for `status`: `/run/netplane/<name>/agent.json`,
//! written by the agent when it starts, around every garbage collection and at every
//! error, and read by other processes. Its pid outlives the process: a record whose pid
//! is gone is an agent that crashed or was killed (`down` removes the record).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::{read_json, write_json_atomically};

/// How many of the last errors the record keeps; `error_count` counts them all.
pub const KEPT_ERRORS: usize = 10;

#[derive(Debug, thiserror::Error)]
#[error("agent record {path}: {source}")]
pub struct RecordError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// A moment, as seconds since the Unix epoch (with milliseconds: two agents started
/// within the same second still differ).
pub type UnixTime = f64;

/// The time now, as [`UnixTime`].
pub fn unix_now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as f64
        / 1000.0
}

/// How long before `now` the moment `at` was (zero for a moment in the future: the clock
/// was set back).
pub fn age(now: UnixTime, at: UnixTime) -> Duration {
    Duration::try_from_secs_f64(now - at).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    pub pid: u32,
    pub started: UnixTime,
    /// Set while a garbage collection walks the tables: a walk at SCHED_IDLE on a busy
    /// host may take long, and is not a hang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_walking_since: Option<UnixTime>,
    pub last_gc: Option<GcRun>,
    /// The last [`KEPT_ERRORS`] errors, the oldest first.
    pub errors: VecDeque<RecordedError>,
    pub error_count: u64,
    /// Where it serves metrics, when asked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsRecord>,
}

/// The agent's metrics server: its address, and why it does not serve there, if so.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsRecord {
    pub listen: std::net::SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One completed garbage collection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct GcRun {
    /// When it finished.
    pub at: UnixTime,
    pub duration_ms: u64,
    pub removed: Removed,
}

/// Entries removed by one garbage collection, per address family (conntrack and fragment
/// entries both).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Removed {
    pub ipv4: usize,
    pub ipv6: usize,
}

impl Removed {
    pub fn total(&self) -> usize {
        self.ipv4 + self.ipv6
    }
}

/// An error the agent met, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedError {
    pub at: UnixTime,
    pub message: String,
}

impl AgentRecord {
    /// The record of a process `pid` starting now.
    pub fn new(pid: u32, started: UnixTime) -> AgentRecord {
        AgentRecord {
            pid,
            started,
            gc_walking_since: None,
            last_gc: None,
            errors: VecDeque::new(),
            error_count: 0,
            metrics: None,
        }
    }

    /// Records an error, forgetting the oldest beyond [`KEPT_ERRORS`].
    pub fn push_error(&mut self, at: UnixTime, message: String) {
        if self.errors.len() == KEPT_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(RecordedError { at, message });
        self.error_count += 1;
    }

    /// The last sign of life garbage collection gave: the end of the last walk, the start
    /// of the one under way, or the agent's start.
    pub fn gc_heartbeat(&self) -> UnixTime {
        [self.gc_walking_since, self.last_gc.map(|g| g.at)]
            .into_iter()
            .flatten()
            .fold(self.started, f64::max)
    }

    /// The last moment the agent is known to have been alive.
    pub fn last_seen(&self) -> UnixTime {
        self.errors
            .back()
            .map(|e| e.at)
            .into_iter()
            .fold(self.gc_heartbeat(), f64::max)
    }

    /// The record at `path`; `None` when there is none.
    ///
    /// # Errors
    /// When it cannot be read or is not a record.
    pub fn load(path: &Path) -> Result<Option<AgentRecord>, RecordError> {
        read_json(path).map_err(|source| RecordError {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the record at `path` atomically: `status` reads it while the agent writes,
    /// and must never see half of it.
    ///
    /// # Errors
    /// When the temp file cannot be written or renamed.
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        write_json_atomically(path, self).map_err(|source| RecordError {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netplane-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("agent.json")
    }

    #[test]
    fn a_record_reads_back_as_written_and_leaves_no_temp_file() {
        let path = temp_file("record-roundtrip");
        assert_eq!(AgentRecord::load(&path).unwrap(), None, "no record yet");
        let mut r = AgentRecord::new(4242, 1_700_000_000.125);
        r.last_gc = Some(GcRun {
            at: 1_700_000_005.5,
            duration_ms: 3,
            removed: Removed { ipv4: 2, ipv6: 1 },
        });
        r.push_error(1_700_000_001.0, "cannot attach again: ENODEV".into());
        r.save(&path).unwrap();
        assert_eq!(AgentRecord::load(&path).unwrap(), Some(r.clone()));
        assert!(!path.with_extension("json.tmp").exists());
        // A second write replaces the first.
        r.gc_walking_since = Some(1_700_000_010.0);
        r.save(&path).unwrap();
        assert_eq!(AgentRecord::load(&path).unwrap(), Some(r));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_damaged_record_is_an_error_that_names_the_file() {
        let path = temp_file("record-damaged");
        std::fs::write(&path, "{\"pid\": 1").unwrap();
        let e = AgentRecord::load(&path).unwrap_err();
        assert!(e.to_string().contains("agent.json"), "{e}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn errors_are_bounded_and_counted() {
        let mut r = AgentRecord::new(1, 0.0);
        for i in 0..KEPT_ERRORS + 5 {
            r.push_error(i as f64, format!("error {i}"));
        }
        assert_eq!(r.errors.len(), KEPT_ERRORS);
        assert_eq!(r.error_count, (KEPT_ERRORS + 5) as u64);
        assert_eq!(
            r.errors.front().unwrap().message,
            "error 5",
            "the oldest go"
        );
        assert_eq!(r.errors.back().unwrap().message, "error 14");
    }

    #[test]
    fn the_heartbeat_is_the_latest_sign_of_garbage_collection() {
        let mut r = AgentRecord::new(1, 100.0);
        assert_eq!(r.gc_heartbeat(), 100.0, "the start, before any walk");
        r.last_gc = Some(GcRun {
            at: 105.0,
            duration_ms: 0,
            removed: Removed::default(),
        });
        assert_eq!(r.gc_heartbeat(), 105.0);
        r.gc_walking_since = Some(110.0);
        assert_eq!(r.gc_heartbeat(), 110.0, "a long walk is not a hang");
        r.push_error(120.0, "x".into());
        assert_eq!((r.gc_heartbeat(), r.last_seen()), (110.0, 120.0));
    }

    #[test]
    fn an_age_in_the_future_is_zero() {
        assert_eq!(age(10.0, 7.5), Duration::from_millis(2500));
        assert_eq!(age(10.0, 12.0), Duration::ZERO, "the clock went back");
    }
}
