//! The agent as `status` shows it, built from what `up` started (its pid file), what runs
//! (/proc) and what the agent recorded, and put into words. Pure: the caller reads the
//! files and the clock, so that tests need neither.

use serde::Serialize;

use super::GC_STALE;
use super::record::{AgentRecord, GcRun, MetricsRecord, RecordedError, UnixTime, age};
use super::{GC_INTERVAL, GC_MAX_INTERVAL};

/// The agent of a data plane: whether it runs, since when, its last garbage collection
/// and the errors it met. Of one that died, the same as it last recorded them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentStatus {
    pub running: bool,
    /// The running agent's pid; when none runs, the pid of the one `up` started and that
    /// exited (crashed or was killed), if any.
    pub pid: Option<u32>,
    /// When that agent started (seconds since the Unix epoch): a restart makes it newer.
    pub started: Option<UnixTime>,
    /// Of an agent that exited: when it was last known alive.
    pub last_seen: Option<UnixTime>,
    /// Seconds since its last sign of garbage collection (a walk finished or begun, or
    /// its start); `None` without a record.
    pub last_gc_secs_ago: Option<u64>,
    pub last_gc: Option<GcRun>,
    /// The last errors it met, the oldest first; `error_count` counts them all.
    pub errors: Vec<RecordedError>,
    pub error_count: u64,
    /// Where it serves metrics, and why it does not, when asked to.
    pub metrics: Option<MetricsRecord>,
    /// Whether it collects garbage (eBPF mode's), or serves metrics alone.
    pub collects_garbage: bool,
}

/// What an agent is for, which says what its absence costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// eBPF mode's: garbage collection and following the host (and metrics, if asked).
    Ebpf,
    /// Another mode's: the metrics alone.
    MetricsOnly,
}

impl AgentStatus {
    /// The agent's status at `now`, and what is wrong with it: `running` is the pid of
    /// the agent that runs, `started_pid` the one `up` last started, `record` what the
    /// agent last wrote (taken only when it is that pid's, not a predecessor's).
    pub fn of(
        running: Option<u32>,
        started_pid: Option<u32>,
        record: Option<AgentRecord>,
        now: UnixTime,
    ) -> (AgentStatus, Option<String>) {
        let (status, mut problems) = Self::of_duty(Duty::Ebpf, running, started_pid, record, now);
        (status, (!problems.is_empty()).then(|| problems.remove(0)))
    }

    /// [`AgentStatus::of`] for an agent of `duty`, with every problem: its absence or
    /// hang, and a metrics address it could not serve on.
    pub fn of_duty(
        duty: Duty,
        running: Option<u32>,
        started_pid: Option<u32>,
        record: Option<AgentRecord>,
        now: UnixTime,
    ) -> (AgentStatus, Vec<String>) {
        let pid = running.or(started_pid);
        let record = record.filter(|r| Some(r.pid) == pid);
        // An agent that serves metrics alone collects no garbage: no heartbeat of it.
        let heartbeat = record
            .as_ref()
            .filter(|_| duty == Duty::Ebpf)
            .map(|r| age(now, r.gc_heartbeat()));
        let status = AgentStatus {
            running: running.is_some(),
            pid,
            started: record.as_ref().map(|r| r.started),
            last_seen: record
                .as_ref()
                .filter(|_| running.is_none())
                .map(AgentRecord::last_seen),
            last_gc_secs_ago: heartbeat.map(|a| a.as_secs()),
            last_gc: record.as_ref().and_then(|r| r.last_gc),
            error_count: record.as_ref().map_or(0, |r| r.error_count),
            metrics: record.as_ref().and_then(|r| r.metrics.clone()),
            collects_garbage: duty == Duty::Ebpf,
            errors: record.map(|r| r.errors.into()).unwrap_or_default(),
        };
        let uncared = match duty {
            Duty::Ebpf => {
                "no conntrack garbage collection, and nothing follows the uplink's address and links"
            }
            Duty::MetricsOnly => "no metrics are served",
        };
        let problem = match (running, pid, heartbeat) {
            (Some(pid), _, Some(a)) if duty == Duty::Ebpf && a > GC_STALE => Some(format!(
                "the agent (pid {pid}) last collected garbage {}s ago (every {}–{}s is normal, {}s is the limit)",
                a.as_secs(),
                GC_INTERVAL.as_secs(),
                GC_MAX_INTERVAL.as_secs(),
                GC_STALE.as_secs()
            )),
            (Some(_), _, _) => None,
            (None, Some(pid), _) => Some(format!(
                "the agent (pid {pid}) exited{}: {uncared} (`netplane up` restarts it)",
                status
                    .last_seen
                    .map(|t| format!(", last seen {}s ago", age(now, t).as_secs()))
                    .unwrap_or_default()
            )),
            (None, None, _) => Some(format!(
                "the agent is not running: {uncared} (`netplane up` starts it)"
            )),
        };
        let metrics = status
            .metrics
            .as_ref()
            .filter(|_| status.running)
            .and_then(|m| {
                m.error
                    .as_ref()
                    .map(|e| format!("the agent serves no metrics: {e}"))
            });
        let problems = problem.into_iter().chain(metrics).collect();
        (status, problems)
    }

    /// The lines `status` prints about the agent at `now`.
    pub fn lines(&self, now: UnixTime) -> Vec<String> {
        let ago = |t: UnixTime| format!("{}s ago", age(now, t).as_secs());
        let started = self
            .started
            .map(|t| format!(", started {}", ago(t)))
            .unwrap_or_default();
        let mut lines = vec![match (self.running, self.pid) {
            (true, pid) if !self.collects_garbage => format!(
                "agent: running (pid {}{started}), serving metrics only",
                pid.unwrap_or_default()
            ),
            (true, pid) => format!(
                "agent: running (pid {}{started}), last garbage collection {}",
                pid.unwrap_or_default(),
                match self.last_gc {
                    Some(g) => format!(
                        "{}, removed {} (IPv4 {}, IPv6 {}) in {} ms",
                        ago(g.at),
                        g.removed.total(),
                        g.removed.ipv4,
                        g.removed.ipv6,
                        g.duration_ms
                    ),
                    None => "none yet".to_owned(),
                }
            ),
            (false, Some(pid)) => format!(
                "agent: NOT RUNNING: pid {pid} exited{}{started}; run `netplane up` to restart it",
                self.last_seen
                    .map(|t| format!("; last seen {}", ago(t)))
                    .unwrap_or_default()
            ),
            (false, None) => "agent: NOT RUNNING; run `netplane up` to start it".to_owned(),
        }];
        match &self.metrics {
            Some(MetricsRecord {
                listen,
                error: None,
            }) => lines.push(format!("agent metrics: http://{listen}/metrics")),
            Some(MetricsRecord {
                listen,
                error: Some(e),
            }) => lines.push(format!("agent metrics: NOT SERVED on {listen}: {e}")),
            None => {}
        }
        if self.error_count > 0 {
            lines.push(format!(
                "agent errors: {} in all, the last {}:",
                self.error_count,
                self.errors.len()
            ));
            lines.extend(
                self.errors
                    .iter()
                    .map(|e| format!("  {}: {}", ago(e.at), e.message)),
            );
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Removed;
    use super::*;

    fn record(pid: u32) -> AgentRecord {
        let mut r = AgentRecord::new(pid, 1000.0);
        r.last_gc = Some(GcRun {
            at: 1010.0,
            duration_ms: 4,
            removed: Removed { ipv4: 3, ipv6: 1 },
        });
        r
    }

    #[test]
    fn a_running_agent_says_since_when_and_its_last_collection() {
        let (s, problem) = AgentStatus::of(Some(42), Some(42), Some(record(42)), 1012.0);
        assert_eq!(problem, None);
        assert_eq!(
            (s.running, s.pid, s.started, s.last_gc_secs_ago),
            (true, Some(42), Some(1000.0), Some(2))
        );
        assert_eq!(
            s.lines(1012.0),
            [
                "agent: running (pid 42, started 12s ago), last garbage collection 2s ago, removed 4 (IPv4 3, IPv6 1) in 4 ms"
            ]
        );
    }

    #[test]
    fn a_hung_agent_is_a_problem() {
        let (_, problem) = AgentStatus::of(Some(42), Some(42), Some(record(42)), 1100.0);
        let problem = problem.expect("a problem");
        assert!(
            problem.contains("last collected garbage 90s ago"),
            "{problem}"
        );
    }

    #[test]
    fn a_dead_agent_is_named_with_its_pid_and_last_sign_of_life() {
        let mut r = record(42);
        r.push_error(1011.0, "cannot attach again: no such device".into());
        let (s, problem) = AgentStatus::of(None, Some(42), Some(r), 1020.0);
        assert_eq!(
            problem.as_deref(),
            Some(
                "the agent (pid 42) exited, last seen 9s ago: no conntrack garbage collection, and nothing follows the uplink's address and links (`netplane up` restarts it)"
            )
        );
        assert_eq!(
            (s.running, s.pid, s.last_seen),
            (false, Some(42), Some(1011.0))
        );
        assert_eq!(
            s.lines(1020.0),
            [
                "agent: NOT RUNNING: pid 42 exited; last seen 9s ago, started 20s ago; run `netplane up` to restart it",
                "agent errors: 1 in all, the last 1:",
                "  9s ago: cannot attach again: no such device",
            ]
        );
    }

    #[test]
    fn a_predecessors_record_is_not_taken_for_the_new_agents() {
        // `up` started pid 43; the record is still the dead 42's until 43 writes its own.
        let (s, problem) = AgentStatus::of(Some(43), Some(43), Some(record(42)), 1012.0);
        assert_eq!(problem, None);
        assert_eq!((s.pid, s.started, s.last_gc), (Some(43), None, None));
        assert_eq!(
            s.lines(1012.0),
            ["agent: running (pid 43), last garbage collection none yet"]
        );
    }

    #[test]
    fn no_agent_ever_started_is_a_problem() {
        let (s, problem) = AgentStatus::of(None, None, None, 0.0);
        assert!(problem.unwrap().contains("`netplane up` starts it"));
        assert_eq!(
            s.lines(0.0),
            ["agent: NOT RUNNING; run `netplane up` to start it"]
        );
    }

    #[test]
    fn an_agent_for_metrics_alone_is_judged_by_them() {
        let mut r = AgentRecord::new(42, 1000.0);
        r.metrics = Some(MetricsRecord {
            listen: "127.0.0.1:9975".parse().unwrap(),
            error: Some("cannot serve metrics on 127.0.0.1:9975: Address already in use".into()),
        });
        // Running for minutes without a garbage collection is not a hang: it has none.
        let (s, problems) = AgentStatus::of_duty(
            Duty::MetricsOnly,
            Some(42),
            Some(42),
            Some(r.clone()),
            1100.0,
        );
        assert_eq!(
            problems,
            [
                "the agent serves no metrics: cannot serve metrics on 127.0.0.1:9975: Address already in use"
            ]
        );
        assert_eq!(s.last_gc_secs_ago, None);
        assert_eq!(
            s.lines(1100.0),
            [
                "agent: running (pid 42, started 100s ago), serving metrics only",
                "agent metrics: NOT SERVED on 127.0.0.1:9975: cannot serve metrics on 127.0.0.1:9975: Address already in use",
            ]
        );
        let (_, problems) =
            AgentStatus::of_duty(Duty::MetricsOnly, None, Some(42), Some(r), 1100.0);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("the agent (pid 42) exited")
                && problems[0].contains("no metrics are served"),
            "{problems:?}"
        );
    }
}
