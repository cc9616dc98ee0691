//! `[conntrack]` and `[ebpf]`: the eBPF data plane's tunables, and `[metrics]`, where the
//! agent serves Prometheus metrics. Each default is defined once, below or (the
//! lifetimes) in [`Timeouts::default`], which the NAT shares.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use netplane_common::nat::{MAX_LIFETIME_S, Timeouts};
use serde::{Deserialize, Serialize};

use super::schema::{ConfigError, invalid};

/// The kernel's default `ip_local_port_range`.
const DEFAULT_NAT_PORT_RANGE: [u16; 2] = [32_768, 60_999];
/// Masquerade stays out of the well-known ports.
const NAT_PORT_MIN: u16 = 1024;
const DEFAULT_MAX_ENTRIES: u32 = 131_072;
// As low as 64 so that a test can fill the table with a handful of connections.
const MAX_ENTRIES: RangeInclusive<u32> = 64..=16_777_216;
const DEFAULT_FAST_FORWARD: bool = true;
const DEFAULT_FROM_CONTAINER: bool = true;

/// `[ebpf]`: the eBPF data plane's forwarding.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Translated packets of known flows skip the kernel's forwarding path: into a
    /// container they are transmitted on its host veth (bpf_redirect), out of one they go
    /// to the uplink's next hop (bpf_fib_lookup + bpf_redirect_neigh), as Cilium's BPF
    /// host routing does. They then also pass netfilter by: set false when host firewall
    /// rules in FORWARD or POSTROUTING must see container traffic.
    pub fast_forward: bool,
    /// Load the programs built with aya-log calls, at debug level (`up --debug-datapath`;
    /// `netplane monitor --log` prints them). Off, the loaded object has no log code at all.
    pub debug_datapath: bool,
    /// With `fast_forward`: a bridge network's container's packets of translated flows
    /// leave for the uplink from its host veth (`netplane_from_container`, attached per
    /// veth), before the bridge and the host's second receive. A runtime switch: no
    /// program is loaded again when it changes.
    pub from_container: bool,
    /// With `fast_forward`: how translated packets are delivered into containers (see
    /// [`IntoContainer`]). A runtime switch, as `from_container`.
    pub into_container: IntoContainer,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            fast_forward: DEFAULT_FAST_FORWARD,
            debug_datapath: false,
            from_container: DEFAULT_FROM_CONTAINER,
            into_container: IntoContainer::default(),
        }
    }
}

impl EbpfConfig {
    /// Whether bridge ports carry the container's own hook: `from_container`, which is
    /// part of the short way (`fast_forward`).
    pub fn from_container_hook(&self) -> bool {
        self.fast_forward && self.from_container
    }

    /// Whether translated packets go into containers by bpf_redirect_peer (`peer`,
    /// `peer-all`; part of the short way too).
    pub fn peer_delivery(&self) -> bool {
        self.fast_forward && self.into_container != IntoContainer::Veth
    }

    /// Whether pure ACKs do too (`peer-all`).
    pub fn peer_acks(&self) -> bool {
        self.fast_forward && self.into_container == IntoContainer::PeerAll
    }

    /// What `up` warns of when the short way is off and a way into containers was asked
    /// for: it does nothing then. Only for a value other than the default (a default
    /// cannot be told from one written out), and not an error.
    pub fn idle_switches(&self) -> Option<String> {
        (!self.fast_forward && self.into_container != IntoContainer::default()).then(|| {
            format!(
                "warning: [ebpf] into_container = \"{}\" does nothing while fast_forward = \
                 false (from_container and into_container are parts of the short way)",
                self.into_container
            )
        })
    }
}

/// `[ebpf] into_container`: the way translated packets of known flows take into a
/// container. On veth, the faster way in is not always the faster connection: ACKs that
/// reach a bulk sender sooner slowed it (netplane-ebpf's forward.rs has the history), so
/// each way is measured (`netplane-bench`) before it becomes the default.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IntoContainer {
    /// Transmitted on the host end of the container's veth (bpf_redirect); pure ACKs
    /// through the bridge. The default: with the container's own hook it won the bench's
    /// connection and stream rows over `peer` (docs/bench/bench.md, "eBPF variants").
    #[default]
    Veth,
    /// Straight onto the container end's ingress (bpf_redirect_peer): no veth transmit,
    /// no backlog queue; pure ACKs still through the bridge.
    Peer,
    /// As `peer`, pure ACKs too.
    PeerAll,
}

impl IntoContainer {
    /// The word the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            IntoContainer::Veth => "veth",
            IntoContainer::Peer => "peer",
            IntoContainer::PeerAll => "peer-all",
        }
    }
}

impl std::fmt::Display for IntoContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where `up --metrics` serves when given without an address: loopback, Cilium's agent
/// port range (9962-9965 are Cilium's, 9975 is free).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9975";

/// `[metrics]` as written: off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ADDR:PORT` the agent serves `GET /metrics` on, in the instance's network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `[metrics]` resolved: where the agent serves, if anywhere.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Metrics {
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    pub(super) fn is_off(&self) -> bool {
        self.listen.is_none()
    }

    pub(super) fn plan(&self) -> Result<Metrics, ConfigError> {
        let Some(text) = &self.listen else {
            return Ok(Metrics::default());
        };
        Ok(Metrics {
            listen: Some(parse_listen("metrics.listen", text)?),
        })
    }
}

/// A metrics address (`ADDR:PORT`, `[ADDR6]:PORT`) that a scraper can be told: port 0,
/// which would take any, is refused. `field` names it in the error.
pub fn parse_listen(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        invalid(
            field,
            text,
            "must be ADDR:PORT, such as \"127.0.0.1:9975\" or \"[::1]:9975\"",
        )
    })?;
    if addr.port() == 0 {
        return Err(invalid(
            field,
            text,
            "port 0 would take any port: name the one Prometheus scrapes",
        ));
    }
    Ok(addr)
}

/// `[conntrack]`: the eBPF data plane's connection tracking. Lifetimes in seconds after a
/// flow's last packet, by default those of [`Timeouts::default`]; the NAT port range by
/// default the kernel's ip_local_port_range.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    pub tcp_syn_timeout: u32,
    pub tcp_established_timeout: u32,
    pub tcp_closing_timeout: u32,
    pub udp_timeout: u32,
    pub icmp_timeout: u32,
    /// Source ports masquerade may use when a container's own is taken: `[first, last]`.
    pub nat_port_range: [u16; 2],
    /// Entries of the conntrack map (an LRU: the least recently used go when it is full).
    pub max_entries: u32,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        let t = Timeouts::default();
        ConntrackConfig {
            tcp_syn_timeout: t.tcp_syn,
            tcp_established_timeout: t.tcp_established,
            tcp_closing_timeout: t.tcp_closing,
            udp_timeout: t.udp,
            icmp_timeout: t.icmp,
            nat_port_range: DEFAULT_NAT_PORT_RANGE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl ConntrackConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("conntrack.tcp_syn_timeout", self.tcp_syn_timeout),
            (
                "conntrack.tcp_established_timeout",
                self.tcp_established_timeout,
            ),
            ("conntrack.tcp_closing_timeout", self.tcp_closing_timeout),
            ("conntrack.udp_timeout", self.udp_timeout),
            ("conntrack.icmp_timeout", self.icmp_timeout),
        ] {
            if v == 0 || v > MAX_LIFETIME_S {
                return Err(invalid(
                    field,
                    &v.to_string(),
                    format!("a lifetime must be between 1 and {MAX_LIFETIME_S} seconds (7 days)"),
                ));
            }
        }
        let [lo, hi] = self.nat_port_range;
        if lo < NAT_PORT_MIN || lo > hi {
            return Err(invalid(
                "conntrack.nat_port_range",
                &format!("[{lo}, {hi}]"),
                format!("must be [first, last] with {NAT_PORT_MIN} <= first <= last"),
            ));
        }
        if !MAX_ENTRIES.contains(&self.max_entries) {
            return Err(invalid(
                "conntrack.max_entries",
                &self.max_entries.to_string(),
                format!(
                    "must be between {} and {}",
                    MAX_ENTRIES.start(),
                    MAX_ENTRIES.end()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Plan};

    fn with(section: &str) -> Result<Plan, ConfigError> {
        Config::parse(&format!("[conntrack]\n{section}\n"), "test").and_then(|c| c.plan())
    }

    #[test]
    fn defaults_are_ciliums() {
        let ct = with("").unwrap().conntrack;
        assert_eq!(
            (
                ct.tcp_syn_timeout,
                ct.tcp_established_timeout,
                ct.tcp_closing_timeout
            ),
            (60, 21_600, 10)
        );
        assert_eq!(ct.nat_port_range, [32_768, 60_999]);
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set() {
        let plan = |text: &str| Config::parse(text, "test").and_then(|c| c.plan());
        assert_eq!(plan("").unwrap().metrics.listen, None);
        let metrics = plan("[metrics]\nlisten = \"127.0.0.1:9975\"\n")
            .unwrap()
            .metrics;
        assert_eq!(metrics.listen, Some("127.0.0.1:9975".parse().unwrap()));
        for bad in ["9975", "localhost:9975", "127.0.0.1:0", "127.0.0.1:99999"] {
            let e = plan(&format!("[metrics]\nlisten = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("metrics.listen = \"{bad}\": ")),
                "{e}"
            );
        }
        let e = Config::parse("[metrics]\nport = 1\n", "test").unwrap_err();
        assert!(
            e.to_string().contains("port"),
            "unknown keys are rejected: {e}"
        );
        assert_eq!(
            super::parse_listen("--metrics", super::DEFAULT_METRICS_LISTEN)
                .unwrap()
                .to_string(),
            "127.0.0.1:9975"
        );
    }

    #[test]
    fn a_plan_recorded_before_metrics_and_debug_logs_still_loads() {
        let plan = with("").unwrap();
        let mut json = serde_json::to_value(&plan).unwrap();
        let recorded = json.as_object_mut().unwrap();
        recorded.remove("metrics");
        recorded["ebpf"]
            .as_object_mut()
            .unwrap()
            .remove("debug_datapath");
        let loaded: Plan = serde_json::from_value(json).unwrap();
        assert_eq!(loaded, plan);
    }

    #[test]
    fn fast_forward_is_on_by_default() {
        assert!(with("").unwrap().ebpf.fast_forward);
        let plan = Config::parse("[ebpf]\nfast_forward = false\n", "test")
            .and_then(|c| c.plan())
            .unwrap();
        assert!(!plan.ebpf.fast_forward);
    }

    fn ebpf(text: &str) -> Result<super::EbpfConfig, ConfigError> {
        Config::parse(&format!("[ebpf]\n{text}\n"), "test")
            .and_then(|c| c.plan())
            .map(|p| p.ebpf)
    }

    #[test]
    fn from_container_is_on_and_into_container_is_veth_by_default() {
        use super::IntoContainer;
        let default = ebpf("").unwrap();
        assert!(default.from_container);
        assert_eq!(default.into_container, IntoContainer::Veth);
        assert!(!ebpf("from_container = false").unwrap().from_container);
        for (word, way) in [
            ("veth", IntoContainer::Veth),
            ("peer", IntoContainer::Peer),
            ("peer-all", IntoContainer::PeerAll),
        ] {
            let got = ebpf(&format!("into_container = \"{word}\"")).unwrap();
            assert_eq!(got.into_container, way);
            assert_eq!(way.to_string(), word);
        }
        for bad in ["redirect", "peer_all", "PEER"] {
            let e = ebpf(&format!("into_container = \"{bad}\""))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("into_container") && e.contains(bad) && e.contains("peer-all"),
                "{e}"
            );
        }
        let e = ebpf("from_container = \"yes\"").unwrap_err().to_string();
        assert!(e.contains("from_container"), "{e}");
    }

    #[test]
    fn the_short_way_s_switches_are_said_to_be_idle_without_it() {
        assert_eq!(super::EbpfConfig::default().idle_switches(), None);
        assert_eq!(
            ebpf("fast_forward = false").unwrap().idle_switches(),
            None,
            "defaults"
        );
        let idle = ebpf("fast_forward = false\ninto_container = \"peer-all\"")
            .unwrap()
            .idle_switches()
            .unwrap();
        for field in ["into_container = \"peer-all\"", "fast_forward = false"] {
            assert!(idle.contains(field), "{idle}");
        }
    }

    #[test]
    fn a_plan_recorded_before_from_container_loads_with_the_defaults() {
        let plan = with("").unwrap();
        let mut json = serde_json::to_value(&plan).unwrap();
        let ebpf = json["ebpf"].as_object_mut().unwrap();
        ebpf.remove("from_container");
        ebpf.remove("into_container");
        let loaded: Plan = serde_json::from_value(json).unwrap();
        assert_eq!(loaded, plan);
    }

    #[test]
    fn settings_are_validated_by_field() {
        assert_eq!(with("udp_timeout = 5").unwrap().conntrack.udp_timeout, 5);
        assert!(with("udp_timeout = 604801").is_err());
        for (section, field) in [
            ("udp_timeout = 0", "conntrack.udp_timeout"),
            (
                "nat_port_range = [40000, 30000]",
                "conntrack.nat_port_range",
            ),
            ("nat_port_range = [80, 90]", "conntrack.nat_port_range"),
            ("max_entries = 10", "conntrack.max_entries"),
        ] {
            let e = with(section).unwrap_err().to_string();
            assert!(e.contains(field), "{section}: {e}");
        }
        assert!(with("bogus = 1").is_err(), "unknown keys are rejected");
    }
}
