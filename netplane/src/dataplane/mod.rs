//! The NAT data plane behind `up`, `down` and `status`: masquerade for container → outside,
//! DNAT for published ports, isolation between networks.
//!
//! One trait, one implementation per mode, as netavark's `FirewallDriver` has one per
//! firewall backend: [`ebpf`] (TC programs and BPF conntrack), [`iptables`] (netfilter
//! rules and nf_conntrack) and [`none`] (no NAT: the topology alone). The topology
//! (bridges, veths, namespaces) is not the data plane's business: `instance` builds it
//! first and never asks which mode it runs.

pub mod ebpf;
pub mod iptables;
pub mod none;

use std::collections::BTreeMap;

use serde::Serialize;

pub use self::ebpf::agent::report::AgentStatus;
use crate::config::{Container, Mode, Plan};
use crate::topology::Link;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{mode} mode needs `{tool}`, which is not installed (run `cargo xtask setup`, or apt-get install {package})"
    )]
    MissingTool {
        mode: Mode,
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error("eBPF mode needs {what}; use mode = \"iptables\" on this host")]
    Unsupported { what: String },
    #[error("{field} = {value:?}: {reason}")]
    NotInMode {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "networks[{index}].subnet6 = {subnet6:?}: {mode} mode masquerades network {network:?} \
         to the uplink's global IPv6 address, and uplink {uplink:?} has none; give it one, \
         or set the network's gateway_mode = \"routed\""
    )]
    UplinkWithoutAddress6 {
        mode: Mode,
        index: usize,
        network: String,
        subnet6: String,
        uplink: String,
    },
    /// A teardown that finished every step, some of which failed.
    #[error("{mode} teardown: {} step(s) failed: {}", failures.len(), failures.join("; "))]
    Teardown { mode: Mode, failures: Vec<String> },
}

/// What the data plane needs to know about the host beyond the plan.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// The interface towards the outside world.
    pub uplink: String,
    /// Its interface index.
    pub uplink_index: u32,
    /// Its (first) IPv4 address, which masquerade uses.
    pub uplink_addr: std::net::Ipv4Addr,
    /// Every IPv4 address of the host namespace (published ports answer on all of them).
    pub local_addrs: Vec<std::net::Ipv4Addr>,
    /// Its first global IPv6 address, which IPv6 masquerade uses; `None` when it has none
    /// (or the plan has no dual-stack network, which is then not asked).
    pub uplink_addr6: Option<std::net::Ipv6Addr>,
    /// Every global IPv6 address of the host namespace, and the dual-stack networks'
    /// gateways (link-local addresses are not: every veth has one).
    pub local_addrs6: Vec<std::net::Ipv6Addr>,
    /// The host namespace's links once the topology is built (the eBPF data plane
    /// delivers into a container by its host veth's index, MTU and MAC).
    pub links: Vec<Link>,
    /// `Some` when `links` holds only the uplink, the bridges and the host veths of these
    /// containers: a converge scoped to them (a CNI ADD or DEL), whose cost must not grow
    /// with the containers attached. Only their entries change.
    pub touched: Option<std::collections::BTreeSet<String>>,
}

impl HostContext {
    /// The host as `plan` sees it on uplink `uplink`, from the namespace's `links`, IPv4
    /// `addrs` and global IPv6 `addrs6` (per interface index): masquerade uses the
    /// uplink's first address of each family; published ports answer on every address
    /// and on the networks' gateways. `None` when the uplink is missing or has no IPv4
    /// address.
    pub fn from_host(
        plan: &Plan,
        uplink: &str,
        links: Vec<Link>,
        addrs: &[(u32, ipnet::Ipv4Net)],
        addrs6: &[(u32, ipnet::Ipv6Net)],
    ) -> Option<HostContext> {
        let uplink_index = links.iter().find(|l| l.name == uplink)?.index;
        let uplink_addr = addrs
            .iter()
            .find(|(i, _)| *i == uplink_index)
            .map(|(_, a)| a.addr())?;
        // An isolated network's gateway is not on the host.
        let gateways = plan.networks.iter().filter(|n| n.has_gateway());
        let local_addrs = addrs
            .iter()
            .map(|(_, a)| a.addr())
            .chain(gateways.clone().filter_map(|n| n.gateway))
            .collect();
        let local_addrs6 = addrs6
            .iter()
            .map(|(_, a)| a.addr())
            .chain(gateways.filter_map(|n| n.gateway6))
            .collect();
        Some(HostContext {
            uplink: uplink.to_owned(),
            uplink_index,
            uplink_addr,
            local_addrs,
            uplink_addr6: addrs6
                .iter()
                .find(|(i, _)| *i == uplink_index)
                .map(|(_, a)| a.addr()),
            local_addrs6,
            links,
            touched: None,
        })
    }
}

/// A data plane's health and counters, for `netplane status` (and its `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct DataplaneStatus {
    pub mode: Mode,
    /// True when nothing is in `problems`.
    pub healthy: bool,
    /// What is wrong, one named problem each.
    pub problems: Vec<String>,
    /// What is installed: BPF links by program and device, or iptables chains.
    pub attached: Vec<String>,
    /// Tracked connections, with the table's capacity when it has one.
    pub conntrack: Option<MapFill>,
    /// Tracked IPv6 connections, for modes that keep them apart (eBPF, with a dual-stack
    /// network).
    pub conntrack6: Option<MapFill>,
    /// Packets dropped, by reason (the names of `netplane_common::nat::DropReason`).
    pub drops: BTreeMap<String, u64>,
    /// What the data plane counts, where and why: the numbers `/metrics` serves.
    pub counters: Counters,
    /// How full each bounded map is.
    pub maps: Vec<MapFill>,
    /// Packets that took the eBPF short way; `None` when it is off or not this mode's.
    pub fast_forwarded: Option<FastForwarded>,
    /// iptables mode: the DNAT rules of its published ports.
    pub dnat_rules: Option<usize>,
    /// The eBPF mode's agent's pid (conntrack garbage collection), when it runs.
    pub agent_pid: Option<u32>,
    /// The agent of modes that have one (eBPF); `None` in the others.
    pub agent: Option<AgentStatus>,
    /// The uplink now, and the address the data plane translates to, for modes that
    /// program it (eBPF); iptables' MASQUERADE takes the device's address by itself.
    pub uplink: Option<UplinkStatus>,
}

/// The uplink as the host has it and as the data plane uses it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UplinkStatus {
    pub name: String,
    /// Its (first) IPv4 address now; `None` when it is missing or has none.
    pub address: Option<std::net::Ipv4Addr>,
    /// The address masquerade translates to, as the data plane has it.
    pub translation_address: Option<std::net::Ipv4Addr>,
    /// Its first global IPv6 address now, and the one IPv6 masquerade translates to: both
    /// `None` without a dual-stack network.
    pub address6: Option<std::net::Ipv6Addr>,
    pub translation_address6: Option<std::net::Ipv6Addr>,
}

impl DataplaneStatus {
    /// An empty status of `mode`; `healthy` follows `problems` in [`Self::finish`].
    pub fn new(mode: Mode) -> DataplaneStatus {
        DataplaneStatus {
            mode,
            healthy: true,
            problems: Vec::new(),
            attached: Vec::new(),
            conntrack: None,
            conntrack6: None,
            drops: BTreeMap::new(),
            counters: Counters::default(),
            maps: Vec::new(),
            fast_forwarded: None,
            dnat_rules: None,
            agent_pid: None,
            agent: None,
            uplink: None,
        }
    }

    /// Sets `healthy` from `problems`.
    pub fn finish(mut self) -> DataplaneStatus {
        self.healthy = self.problems.is_empty();
        self
    }
}

/// The fill of one bounded table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    /// The capacity, as the kernel reports it; `None` when unbounded or unknown.
    pub max_entries: Option<u64>,
}

/// What a data plane counts, read from where it counts it (the eBPF programs' per-CPU
/// maps, iptables' rule counters) by one reader that feeds both `status --json` and the
/// agent's `/metrics`. Only what counted something is listed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Drops by reason, and where they happened.
    pub drops: Vec<DropCount>,
    /// Assured flows that found the main conntrack table full (`ct-full`, not a drop: the
    /// flow goes on from the unreplied flows' table), per family.
    pub conntrack_full: BTreeMap<String, u64>,
    /// Packets and bytes translated, per family, hook and direction.
    pub translated: Vec<PathCount>,
    /// Masquerade's source port allocations, per family.
    pub nat_ports: Vec<NatPortCount>,
    /// Events of `netplane monitor` lost to a full ring buffer (the packets were not).
    pub monitor_events_lost: Option<u64>,
    /// iptables mode: each DNAT rule's packets and bytes, per published port.
    pub dnat: Vec<DnatCount>,
}

/// Drops of one reason at one place: the family, the hook (`uplink` or `network`) and
/// its direction (`ingress` or `egress`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DropCount {
    pub reason: &'static str,
    pub family: &'static str,
    pub hook: &'static str,
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Packets and bytes at one place: the family, the hook and its direction.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathCount {
    pub family: &'static str,
    pub hook: &'static str,
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Masquerade's source port allocations of one family: flows that kept their own port,
/// flows that got one from the search, ports the search found taken, and searches that
/// found none (dropped as `nat-port-exhausted`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NatPortCount {
    pub family: &'static str,
    pub own: u64,
    pub searched: u64,
    pub retries: u64,
    pub failed: u64,
}

/// The counters of one iptables DNAT rule: a published host port and where it goes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DnatCount {
    pub family: &'static str,
    pub protocol: String,
    /// The host port, or `first:last` for a range.
    pub host_port: String,
    /// `--to-destination`, as iptables-save prints it.
    pub destination: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What the agent's `/metrics` serves of the data plane, read at each scrape (cheap
/// reads only: counters, the bounded maps' fills, the pins; never a conntrack walk).
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub counters: Counters,
    /// Packets that took the eBPF short way, when it is on.
    pub fast_forwarded: Option<FastForwarded>,
    /// The bounded maps' fills (eBPF), the kernel's conntrack table (iptables).
    pub fills: Vec<MapFill>,
    /// Programs attached, as (program, device).
    pub attached: Vec<(String, String)>,
}

/// The [`Observation`] of instance `plan.name`'s data plane, in its mode.
pub fn observe(plan: &Plan) -> Observation {
    match plan.mode {
        Mode::Ebpf => ebpf::agent::observe(plan),
        Mode::Iptables => iptables::observe(plan),
        Mode::NoNat => Observation::default(),
    }
}

/// Packets that the eBPF programs forwarded themselves, past the kernel's forwarding path.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct FastForwarded {
    /// From the uplink into containers, either way (`into_containers_peer` of them by
    /// bpf_redirect_peer).
    pub into_containers: u64,
    pub into_containers_peer: u64,
    /// Out of containers to the uplink, either place (`out_of_containers_at_hook` of them
    /// at the container's own hook, before the bridge).
    pub out_of_containers: u64,
    pub out_of_containers_at_hook: u64,
}

pub trait Dataplane {
    fn mode(&self) -> Mode;

    /// Checks that this host can run the data plane. Called before anything changes.
    fn check(&self) -> Result<(), DataplaneError>;

    /// Checks that the data plane can program `plan` (a feature that this mode does not
    /// have), naming the field. Called before anything changes.
    fn check_plan(&self, _plan: &Plan) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Checks that the host, as `up` found it, can carry `plan` in this mode (an address
    /// the data plane needs), naming the field. Called before anything changes.
    fn check_host(&self, _plan: &Plan, _host: &HostContext) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Sysctls the data plane needs (key, value), recorded and restored by `down`.
    fn sysctls(&self, plan: &Plan) -> Vec<(String, String)>;

    /// Programs `plan`, replacing what an earlier apply of `old` programmed, and starts
    /// whatever the mode runs beside it (eBPF: the agent). Returns a line per change;
    /// nothing when the host already matches.
    fn apply(
        &self,
        plan: &Plan,
        old: Option<&Plan>,
        host: &HostContext,
    ) -> Result<Vec<String>, DataplaneError>;

    /// Removes everything programmed for instance `name`, and only that, and stops what
    /// `apply` started. Finishes every step; returns what it removed.
    fn teardown(&self, name: &str) -> Result<Vec<String>, DataplaneError>;

    /// One line for `status`: what this mode does.
    fn describe(&self) -> &'static str;

    fn status(&self, plan: &Plan) -> DataplaneStatus;

    /// What is missing of container `c`'s published ports in what this data plane
    /// programmed (CNI's CHECK), one line per port; nothing when all are in place.
    fn verify_ports(&self, _plan: &Plan, _c: &Container) -> Vec<String> {
        Vec::new()
    }

    /// The NAT sessions it tracks itself, as `netplane conntrack` lists them. Only the
    /// eBPF data plane has its own table; the others have none to show.
    fn flows(&self, _name: &str) -> Vec<ebpf::Flow> {
        Vec::new()
    }
}

/// The data plane of `mode`.
pub fn for_mode(mode: Mode) -> Box<dyn Dataplane> {
    match mode {
        Mode::Iptables => Box::new(iptables::Iptables),
        Mode::Ebpf => Box::new(ebpf::Ebpf),
        Mode::NoNat => Box::new(none::NoNat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.to_owned(),
            up: true,
            master: None,
            mac: None,
            mtu: None,
        }
    }

    #[test]
    fn the_host_context_follows_the_uplink_first_address() {
        let plan = Config::embedded_default().plan().unwrap();
        let links = vec![link(1, "lo"), link(7, "up0")];
        let net = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap();
        let addrs = [
            (1, net("127.0.0.1/8")),
            (7, net("203.0.113.5/24")),
            (7, net("203.0.113.3/24")),
        ];
        let host = HostContext::from_host(&plan, "up0", links.clone(), &addrs, &[]).unwrap();
        assert_eq!(
            (host.uplink_index, host.uplink_addr.to_string()),
            (7, "203.0.113.5".into())
        );
        // Every address is local, and so is each network's gateway.
        assert!(host.local_addrs.contains(&"203.0.113.3".parse().unwrap()));
        assert!(
            host.local_addrs
                .contains(&plan.networks[0].gateway.unwrap())
        );
        // An IPv6-only network has no IPv4 gateway to answer on.
        let v6only = Config::parse(
            "[[networks]]\nname = \"np6\"\nsubnet6 = \"2001:db8:6::/64\"\n",
            "test",
        )
        .and_then(|c| c.plan())
        .unwrap();
        let host = HostContext::from_host(&v6only, "up0", links.clone(), &addrs, &[]).unwrap();
        assert_eq!(
            host.local_addrs.len(),
            addrs.len(),
            "{:?}",
            host.local_addrs
        );
        assert_eq!(
            host.uplink_addr6, None,
            "no IPv6 address: nothing to translate to"
        );
        // An uplink without an address, or missing, gives nothing to translate to.
        assert!(HostContext::from_host(&plan, "up0", links.clone(), &addrs[..1], &[]).is_none());
        assert!(HostContext::from_host(&plan, "eth9", links, &addrs, &[]).is_none());
    }

    #[test]
    fn ipv6_follows_the_uplink_first_global_address_and_the_gateways() {
        let plan = Config::parse(
            "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
             subnet6 = \"2001:db8:89::/64\"\n[[networks]]\nname = \"npi\"\n\
             subnet = \"10.89.1.0/24\"\nsubnet6 = \"2001:db8:8a::/64\"\n\
             gateway_mode = \"isolated\"\n",
            "test",
        )
        .and_then(|c| c.plan())
        .unwrap();
        let net6 = |s: &str| s.parse::<ipnet::Ipv6Net>().unwrap();
        let addrs6 = [
            (3, net6("2001:db8:ff::9/64")),
            (7, net6("2001:db8:113::5/64")),
            (7, net6("2001:db8:113::3/64")),
        ];
        let v4 = [(7, "203.0.113.5/24".parse().unwrap())];
        let links = vec![link(3, "eth1"), link(7, "up0")];
        let host = HostContext::from_host(&plan, "up0", links, &v4, &addrs6).unwrap();
        assert_eq!(host.uplink_addr6, Some("2001:db8:113::5".parse().unwrap()));
        let local: Vec<String> = host.local_addrs6.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            local,
            [
                "2001:db8:ff::9",
                "2001:db8:113::5",
                "2001:db8:113::3",
                "2001:db8:89::1"
            ],
            "every address, and the gateway6 of the network that has a gateway"
        );
    }
}
