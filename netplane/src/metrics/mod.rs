//! Prometheus metrics, served by the agent at `[metrics] listen` (or `up --metrics`).
//!
//! Two kinds of numbers, one exposition (the classic text format 0.0.4 of the
//! `prometheus` crate, which `promtool check metrics` reads):
//! - what the data plane counts ([`Observation`]: the programs' per-CPU counters, the
//!   maps' fills, the attached programs, iptables' rule counters), read at each scrape
//!   into a fresh registry by the same reader as `status --json`;
//! - what the agent measures itself ([`AgentMetrics`]: its garbage collections, their
//!   duration and what they found, its errors), kept between scrapes.
//!
//! Names follow Cilium's (`cilium_drop_count_total{reason,direction}`,
//! `cilium_bpf_map_pressure{map_name}`, …) under `netplane_`; labels are names, never
//! numbers (`reason="isolation"`, the names `status` prints).
//!
//! [`server`] binds the address and answers `GET /metrics`.

pub mod server;

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Mode;
use crate::dataplane::Observation;
use crate::dataplane::ebpf::agent::CtCount;
use crate::dataplane::ebpf::agent::record::Removed;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric {name}: {source}")]
    Metric {
        name: String,
        source: prometheus::Error,
    },
    #[error("encoding the exposition: {0}")]
    Encode(prometheus::Error),
}

/// What the agent measures itself, between scrapes.
pub struct AgentMetrics {
    gc_runs: IntCounterVec,
    gc_duration: Histogram,
    gc_entries: IntGaugeVec,
    errors: IntCounterVec,
    /// What the last garbage collection counted in the conntrack tables.
    conntrack: Mutex<Option<CtCount>>,
}

/// Where an error of the agent arose, as `netplane_agent_errors_total`'s `area`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Garbage collection.
    Gc,
    /// Following the host (links, addresses, the uplink).
    Follow,
    /// Serving the metrics.
    Metrics,
    /// `netplane monitor`'s flag.
    Monitor,
}

impl Area {
    pub const ALL: [Area; 4] = [Area::Gc, Area::Follow, Area::Metrics, Area::Monitor];

    pub const fn name(self) -> &'static str {
        match self {
            Area::Gc => "gc",
            Area::Follow => "follow",
            Area::Metrics => "metrics",
            Area::Monitor => "monitor",
        }
    }
}

/// `made`, or its error naming metric `name`.
fn metric<T>(name: &str, made: prometheus::Result<T>) -> Result<T, MetricsError> {
    made.map_err(|source| MetricsError::Metric {
        name: name.to_owned(),
        source,
    })
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
    metric(name, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
    metric(name, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn float_gauge_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<prometheus::GaugeVec, MetricsError> {
    metric(
        name,
        prometheus::GaugeVec::new(Opts::new(name, help), labels),
    )
}

impl AgentMetrics {
    /// # Errors
    /// Never with these names; a bad name or label would be named.
    pub fn new() -> Result<AgentMetrics, MetricsError> {
        const DURATION: &str = "netplane_datapath_conntrack_gc_duration_seconds";
        // A walk costs two syscalls per entry: from a millisecond for a few flows to
        // seconds for a full table of millions, at SCHED_IDLE.
        let buckets = metric(DURATION, prometheus::exponential_buckets(0.001, 4.0, 9))?;
        let m = AgentMetrics {
            gc_runs: counter_vec(
                "netplane_datapath_conntrack_gc_runs_total",
                "Conntrack garbage collections the agent ran, by outcome.",
                &["status"],
            )?,
            gc_duration: metric(
                DURATION,
                Histogram::with_opts(
                    HistogramOpts::new(
                        DURATION,
                        "How long a conntrack garbage collection took (both families).",
                    )
                    .buckets(buckets),
                ),
            )?,
            gc_entries: gauge_vec(
                "netplane_datapath_conntrack_gc_entries",
                "Conntrack entries the last garbage collection left alive or deleted (conntrack and fragment entries).",
                &["family", "status"],
            )?,
            errors: counter_vec(
                "netplane_agent_errors_total",
                "Errors the agent met, by where.",
                &["area"],
            )?,
            conntrack: Mutex::new(None),
        };
        // Every area from the start at 0: a rate needs the series before the first error.
        for a in Area::ALL {
            m.errors.with_label_values(&[a.name()]);
        }
        Ok(m)
    }

    /// Records a completed garbage collection: what it removed, what it left, how long.
    pub fn gc_done(&self, removed: Removed, count: CtCount, took: Duration) {
        self.gc_runs.with_label_values(&["completed"]).inc();
        self.gc_duration.observe(took.as_secs_f64());
        let mut alive: BTreeMap<&str, u64> = BTreeMap::new();
        for t in &count.tables {
            let family = if t.name.starts_with("NP6_") {
                "ipv6"
            } else {
                "ipv4"
            };
            *alive.entry(family).or_default() += t.entries;
        }
        for (family, deleted) in [("ipv4", removed.ipv4), ("ipv6", removed.ipv6)] {
            let set = |status, n: u64| {
                self.gc_entries
                    .with_label_values(&[family, status])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            set("deleted", deleted as u64);
            set("alive", alive.get(family).copied().unwrap_or(0));
        }
        *self
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(count);
    }

    /// Records a garbage collection that could not run.
    pub fn gc_failed(&self) {
        self.gc_runs.with_label_values(&["failed"]).inc();
    }

    /// Counts an error of `area`.
    pub fn error(&self, area: Area) {
        self.errors.with_label_values(&[area.name()]).inc();
    }

    fn collectors(&self) -> [Box<dyn Collector>; 4] {
        [
            Box::new(self.gc_runs.clone()),
            Box::new(self.gc_duration.clone()),
            Box::new(self.gc_entries.clone()),
            Box::new(self.errors.clone()),
        ]
    }
}

/// The agent itself: what `netplane_build_info` and the up time say.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub mode: Mode,
    /// The object `up` loaded (its stamp), `none` without one (iptables mode).
    pub ebpf_object: String,
    /// When the agent started, and now (seconds since the Unix epoch).
    pub started: f64,
    pub now: f64,
}

/// The exposition of one scrape: the data plane as `seen` now, the agent's own metrics.
///
/// # Errors
/// When a metric cannot be made or encoded (a bug, named).
pub fn render(
    seen: &Observation,
    agent: &AgentMetrics,
    info: &AgentInfo,
) -> Result<String, MetricsError> {
    let reg = Registry::new();
    let add = |c: Box<dyn Collector>| {
        let name = c
            .desc()
            .first()
            .map_or(String::new(), |d| d.fq_name.clone());
        metric(&name, reg.register(c))
    };
    for c in agent.collectors() {
        add(c)?;
    }
    for c in dataplane(seen)? {
        add(c)?;
    }
    let conntrack = agent
        .conntrack
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for c in conntrack_families(conntrack.as_ref(), &seen.fills)? {
        add(c)?;
    }
    for c in agent_families(info)? {
        add(c)?;
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut out)
        .map_err(MetricsError::Encode)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The families of what the data plane counts. A counter that counted nothing has no
/// series (the registry leaves an empty family out).
fn dataplane(seen: &Observation) -> Result<Vec<Box<dyn Collector>>, MetricsError> {
    let c = &seen.counters;
    let place = ["family", "hook", "direction"];
    let drop_labels = ["reason", "family", "hook", "direction"];
    let drops = counter_vec(
        "netplane_drop_count_total",
        "Packets the data plane dropped, by reason and where.",
        &drop_labels,
    )?;
    let drop_bytes = counter_vec(
        "netplane_drop_bytes_total",
        "Bytes of the packets the data plane dropped, by reason and where.",
        &drop_labels,
    )?;
    for d in &c.drops {
        let l = [d.reason, d.family, d.hook, d.direction];
        drops.with_label_values(&l).inc_by(d.packets);
        drop_bytes.with_label_values(&l).inc_by(d.bytes);
    }
    let ct_full = counter_vec(
        "netplane_conntrack_full_total",
        "Packets of assured flows that found the main conntrack table full (each tries again, so a flow counts once per packet until it enters): the flow stays in the unreplied flows' table, whose LRU may evict it.",
        &["family"],
    )?;
    for (family, n) in &c.conntrack_full {
        ct_full.with_label_values(&[family.as_str()]).inc_by(*n);
    }
    let translated = counter_vec(
        "netplane_nat_translated_packets_total",
        "Packets whose addresses or ports the data plane rewrote, by family, hook and direction (a translation taken the short way out of a container counts at the network's ingress).",
        &place,
    )?;
    let translated_bytes = counter_vec(
        "netplane_nat_translated_bytes_total",
        "Bytes of the packets the data plane translated, by family, hook and direction.",
        &place,
    )?;
    for t in &c.translated {
        let l = [t.family, t.hook, t.direction];
        translated.with_label_values(&l).inc_by(t.packets);
        translated_bytes.with_label_values(&l).inc_by(t.bytes);
    }
    let allocations = counter_vec(
        "netplane_nat_port_allocations_total",
        "Source ports allocated for masquerade and hairpin flows: the flow's own port, or one the search found.",
        &["family", "result"],
    )?;
    let retries = counter_vec(
        "netplane_nat_port_alloc_retries_total",
        "Ports masquerade's search tried and found taken.",
        &["family"],
    )?;
    let failures = counter_vec(
        "netplane_nat_port_alloc_failures_total",
        "Masquerade port searches that found no free port (the packet is dropped as nat-port-exhausted).",
        &["family"],
    )?;
    for n in &c.nat_ports {
        allocations
            .with_label_values(&[n.family, "own"])
            .inc_by(n.own);
        allocations
            .with_label_values(&[n.family, "searched"])
            .inc_by(n.searched);
        retries.with_label_values(&[n.family]).inc_by(n.retries);
        failures.with_label_values(&[n.family]).inc_by(n.failed);
    }
    let forwarded = counter_vec(
        "netplane_fast_forward_count_total",
        "Packets the programs forwarded themselves, past the kernel's forwarding path, by \
         direction and way (into a container: veth or peer; out of one: from the bridge or \
         from the container's own hook).",
        &["direction", "via"],
    )?;
    if let Some(f) = seen.fast_forwarded {
        for (direction, via, n) in [
            (
                "into_container",
                "veth",
                f.into_containers - f.into_containers_peer,
            ),
            ("into_container", "peer", f.into_containers_peer),
            (
                "out_of_container",
                "bridge",
                f.out_of_containers - f.out_of_containers_at_hook,
            ),
            ("out_of_container", "hook", f.out_of_containers_at_hook),
        ] {
            forwarded.with_label_values(&[direction, via]).inc_by(n);
        }
    }
    let lost = counter_vec(
        "netplane_monitor_events_lost_total",
        "Events of `netplane monitor` lost to a full ring buffer (never the packets).",
        &[],
    )?;
    if let Some(n) = c.monitor_events_lost {
        lost.with_label_values::<&str>(&[]).inc_by(n);
    }
    let dnat_labels = ["family", "protocol", "host_port", "destination"];
    let dnat = counter_vec(
        "netplane_iptables_dnat_packets_total",
        "Packets that matched the DNAT rule of a published port (new connections: nf_conntrack NATs the rest).",
        &dnat_labels,
    )?;
    let dnat_bytes = counter_vec(
        "netplane_iptables_dnat_bytes_total",
        "Bytes of the packets that matched the DNAT rule of a published port.",
        &dnat_labels,
    )?;
    for d in &c.dnat {
        let l = [
            d.family,
            d.protocol.as_str(),
            d.host_port.as_str(),
            d.destination.as_str(),
        ];
        dnat.with_label_values(&l).inc_by(d.packets);
        dnat_bytes.with_label_values(&l).inc_by(d.bytes);
    }
    let attached = gauge_vec(
        "netplane_bpf_program_attached",
        "Programs attached (1), by program and device.",
        &["program", "device"],
    )?;
    for (program, device) in &seen.attached {
        attached
            .with_label_values(&[program.as_str(), device.as_str()])
            .set(1);
    }
    Ok(vec![
        Box::new(drops),
        Box::new(drop_bytes),
        Box::new(ct_full),
        Box::new(translated),
        Box::new(translated_bytes),
        Box::new(allocations),
        Box::new(retries),
        Box::new(failures),
        Box::new(forwarded),
        Box::new(lost),
        Box::new(dnat),
        Box::new(dnat_bytes),
        Box::new(attached),
    ])
}

/// The conntrack tables as the last garbage collection counted them, and every bounded
/// table's fill: the maps read at the scrape, the conntrack tables from the collection.
fn conntrack_families(
    count: Option<&CtCount>,
    fills: &[crate::dataplane::MapFill],
) -> Result<Vec<Box<dyn Collector>>, MetricsError> {
    let entries = gauge_vec(
        "netplane_conntrack_entries",
        "Tracked flows at the last garbage collection, each once, by family, kind, protocol and TCP state.",
        &["family", "kind", "protocol", "state"],
    )?;
    let pressure = float_gauge_vec(
        "netplane_bpf_map_pressure",
        "How full each bounded map is: entries over capacity (0 to 1).",
        &["map_name"],
    )?;
    let nf_entries = gauge_vec(
        "netplane_nf_conntrack_entries",
        "Entries of the kernel's conntrack table in this network namespace (iptables mode).",
        &[],
    )?;
    let nf_max = gauge_vec(
        "netplane_nf_conntrack_max",
        "Capacity of the kernel's conntrack table (iptables mode).",
        &[],
    )?;
    let evicted = counter_vec(
        "netplane_conntrack_unreplied_evicted_total",
        "Unreplied flows whose entry the unreplied table's LRU evicted when it was full (a \
         reply of such a flow then finds no entry), at the last garbage collection.",
        &["family"],
    )?;
    if let Some(count) = count {
        for (family, n) in &count.unreplied_evicted {
            evicted.with_label_values(&[*family]).inc_by(*n);
        }
        for ((family, kind, protocol, state), n) in &count.flows {
            entries
                .with_label_values(&[*family, *kind, *protocol, *state])
                .set(saturating(*n));
        }
        // A family without a network holds a table of one entry, for the programs to
        // load: no pressure to speak of.
        for t in &count.tables {
            if let Some(max) = t.max_entries.filter(|m| *m > 1) {
                pressure
                    .with_label_values(&[t.name])
                    .set(t.entries as f64 / max as f64);
            }
        }
    }
    for f in fills {
        if f.name == "nf_conntrack" {
            nf_entries
                .with_label_values::<&str>(&[])
                .set(saturating(f.entries));
            if let Some(max) = f.max_entries {
                nf_max.with_label_values::<&str>(&[]).set(saturating(max));
            }
        } else if let Some(max) = f.max_entries.filter(|m| *m > 0) {
            pressure
                .with_label_values(&[f.name.as_str()])
                .set(f.entries as f64 / max as f64);
        }
    }
    Ok(vec![
        Box::new(entries),
        Box::new(evicted),
        Box::new(pressure),
        Box::new(nf_entries),
        Box::new(nf_max),
    ])
}

/// The agent's build and up time.
fn agent_families(info: &AgentInfo) -> Result<Vec<Box<dyn Collector>>, MetricsError> {
    let build = gauge_vec(
        "netplane_build_info",
        "The agent's build (1): netplane's version, the eBPF object's stamp, the data plane's mode.",
        &["version", "ebpf_object", "mode"],
    )?;
    build
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            info.ebpf_object.as_str(),
            info.mode.to_string().as_str(),
        ])
        .set(1);
    let started = float_gauge_vec(
        "netplane_agent_start_time_seconds",
        "When the agent started, in seconds since the Unix epoch: a restart makes it later.",
        &[],
    )?;
    started.with_label_values::<&str>(&[]).set(info.started);
    let uptime = float_gauge_vec(
        "netplane_agent_uptime_seconds",
        "How long the agent has run: 0 again after a restart.",
        &[],
    )?;
    uptime
        .with_label_values::<&str>(&[])
        .set((info.now - info.started).max(0.0));
    Ok(vec![Box::new(build), Box::new(started), Box::new(uptime)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Counters, DropCount, FastForwarded, MapFill, NatPortCount};

    fn seen() -> Observation {
        Observation {
            counters: Counters {
                drops: vec![DropCount {
                    reason: "isolation",
                    family: "ipv4",
                    hook: "network",
                    direction: "ingress",
                    packets: 3,
                    bytes: 222,
                }],
                conntrack_full: [("ipv4".to_owned(), 2)].into(),
                nat_ports: vec![NatPortCount {
                    family: "ipv4",
                    own: 5,
                    ..NatPortCount::default()
                }],
                monitor_events_lost: Some(0),
                ..Counters::default()
            },
            fast_forwarded: Some(FastForwarded {
                into_containers: 7,
                into_containers_peer: 2,
                out_of_containers: 8,
                out_of_containers_at_hook: 8,
            }),
            fills: vec![MapFill {
                name: "NP_PUBLISHED".into(),
                entries: 1,
                max_entries: Some(4),
            }],
            attached: vec![("netplane_uplink_ingress".into(), "up0".into())],
        }
    }

    #[test]
    fn the_exposition_names_reasons_and_places_and_leaves_out_empty_families() {
        let agent = AgentMetrics::new().unwrap();
        let info = AgentInfo {
            mode: Mode::Ebpf,
            ebpf_object: "abc".into(),
            started: 100.0,
            now: 112.5,
        };
        let text = render(&seen(), &agent, &info).unwrap();
        for line in [
            "netplane_drop_count_total{direction=\"ingress\",family=\"ipv4\",hook=\"network\",reason=\"isolation\"} 3",
            "netplane_drop_bytes_total{direction=\"ingress\",family=\"ipv4\",hook=\"network\",reason=\"isolation\"} 222",
            "netplane_conntrack_full_total{family=\"ipv4\"} 2",
            "netplane_nat_port_allocations_total{family=\"ipv4\",result=\"own\"} 5",
            "netplane_fast_forward_count_total{direction=\"into_container\",via=\"veth\"} 5",
            "netplane_fast_forward_count_total{direction=\"into_container\",via=\"peer\"} 2",
            "netplane_fast_forward_count_total{direction=\"out_of_container\",via=\"bridge\"} 0",
            "netplane_fast_forward_count_total{direction=\"out_of_container\",via=\"hook\"} 8",
            "netplane_monitor_events_lost_total 0",
            "netplane_bpf_map_pressure{map_name=\"NP_PUBLISHED\"} 0.25",
            "netplane_bpf_program_attached{device=\"up0\",program=\"netplane_uplink_ingress\"} 1",
            "netplane_agent_uptime_seconds 12.5",
            "netplane_agent_start_time_seconds 100",
            "netplane_agent_errors_total{area=\"gc\"} 0",
            "# HELP netplane_drop_count_total ",
            "# TYPE netplane_drop_count_total counter",
            "# TYPE netplane_datapath_conntrack_gc_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains(&format!(
            "netplane_build_info{{ebpf_object=\"abc\",mode=\"ebpf\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        // Nothing translated, no iptables rule, no garbage collection yet: no family.
        for absent in [
            "netplane_nat_translated_packets_total",
            "netplane_iptables_dnat_packets_total",
            "netplane_conntrack_entries",
            "netplane_nf_conntrack_entries",
        ] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
    }

    #[test]
    fn garbage_collections_count_what_stays_by_family() {
        use crate::dataplane::ebpf::agent::CtTableCount;
        let agent = AgentMetrics::new().unwrap();
        let mut count = CtCount {
            tables: vec![
                CtTableCount {
                    name: "NP_CT",
                    entries: 3,
                    max_entries: Some(64),
                },
                CtTableCount {
                    name: "NP6_CT",
                    entries: 1,
                    max_entries: Some(2),
                },
                CtTableCount {
                    name: "NP6_CT_NEW",
                    entries: 0,
                    max_entries: Some(1),
                },
            ],
            ..CtCount::default()
        };
        count
            .flows
            .insert(("ipv4", "masquerade", "tcp", "established"), 3);
        count.unreplied_evicted.insert("ipv4", 768);
        agent.gc_done(
            Removed { ipv4: 2, ipv6: 0 },
            count,
            Duration::from_millis(3),
        );
        agent.gc_failed();
        let info = AgentInfo {
            mode: Mode::Ebpf,
            ebpf_object: "abc".into(),
            started: 0.0,
            now: 1.0,
        };
        let text = render(&Observation::default(), &agent, &info).unwrap();
        for line in [
            "netplane_datapath_conntrack_gc_runs_total{status=\"completed\"} 1",
            "netplane_datapath_conntrack_gc_runs_total{status=\"failed\"} 1",
            "netplane_datapath_conntrack_gc_entries{family=\"ipv4\",status=\"alive\"} 3",
            "netplane_datapath_conntrack_gc_entries{family=\"ipv4\",status=\"deleted\"} 2",
            "netplane_datapath_conntrack_gc_entries{family=\"ipv6\",status=\"alive\"} 1",
            "netplane_datapath_conntrack_gc_duration_seconds_count 1",
            "netplane_conntrack_entries{family=\"ipv4\",kind=\"masquerade\",protocol=\"tcp\",state=\"established\"} 3",
            "netplane_bpf_map_pressure{map_name=\"NP_CT\"} 0.046875",
            "netplane_bpf_map_pressure{map_name=\"NP6_CT\"} 0.5",
            "netplane_conntrack_unreplied_evicted_total{family=\"ipv4\"} 768",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("NP6_CT_NEW"), "a placeholder table: {text}");
    }
}
