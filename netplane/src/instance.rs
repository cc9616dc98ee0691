//! `up`, `down` and `status` of one netplane instance: the plan applied to the host through
//! [`topology`], with ownership recorded in [`State`].

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use crate::config::{Container, Driver, GatewayMode, Mode, Plan, format_mac};
use crate::dataplane::{self, Dataplane, DataplaneError, DataplaneStatus, HostContext};
use crate::lock::{InstanceLock, LockError};
use crate::netns;
use crate::state::{State, StateError};
use crate::sysctl::shared::{self, Released, SharedError};
use crate::sysctl::{self, SysctlError};
use crate::topology::{self, TopologyError};

/// Sysctls `up` needs in netplane's namespace, shared with every other instance there
/// (see [`shared`]): the last `down` restores them.
const SYSCTLS: &[(&str, &str)] = &[("net.ipv4.ip_forward", "1")];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netplane must run as root: it creates network namespaces, links and BPF programs")]
    NotRoot,
    #[error("uplink = {0:?}: no such interface in this network namespace")]
    UplinkMissing(String),
    #[error("uplink = {0:?}: it has no IPv4 address to masquerade to")]
    UplinkWithoutAddress(String),
    #[error("uplink: not set, and there is no default route to take it from; set `uplink`")]
    NoDefaultRoute,
    #[error("{field} = {value:?}: {what} already exists and netplane does not own it")]
    Foreign {
        field: String,
        value: String,
        what: &'static str,
    },
    #[error("{field} = {value:?}: {what}")]
    NotYet {
        field: String,
        value: String,
        what: &'static str,
    },
    #[error("injected failure before container {0} (NETPLANE_FAIL_BEFORE_CONTAINER)")]
    Injected(String),
    #[error("networks[{index}].subnet = \"{subnet}\": collides with {addr} on {iface}")]
    SubnetCollision {
        index: usize,
        subnet: Ipv4Net,
        addr: Ipv4Net,
        iface: String,
    },
    #[error(
        "networks[{index}].subnet = \"{subnet}\": the host already routes {route} ({iface}), \
         which netplane does not own"
    )]
    SubnetRoute {
        index: usize,
        subnet: Ipv4Net,
        route: String,
        iface: String,
    },
    #[error(
        "networks[{index}].subnet6 = \"{subnet6}\": the host already routes {route} ({iface}), \
         which netplane does not own"
    )]
    Subnet6Route {
        index: usize,
        subnet6: String,
        route: String,
        iface: String,
    },
    #[error("routes[{index}].{field} = \"{value}\": {reason}")]
    Route {
        index: usize,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    SharedSysctl(#[from] SharedError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{cause}\nrolled back what this run had created{}", rollback_report(.rollback))]
    RolledBack {
        cause: Box<Error>,
        rollback: Vec<String>,
    },
    #[error("down finished with {} failure(s):\n  {}", .0.len(), .0.join("\n  "))]
    Teardown(Vec<String>),
}

fn rollback_report(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(", except:\n  {}", failures.join("\n  "))
    }
}

/// What `up` did.
#[derive(Debug, Default, Serialize)]
pub struct UpReport {
    pub uplink: String,
    pub changes: Vec<String>,
    /// How long programming the data plane took (the NAT rules or maps), in ms.
    pub dataplane_ms: Option<f64>,
    /// How long the whole `up` took, from taking the lock to saving the state, in ms.
    pub total_ms: f64,
    /// Where that time went, one after the other (so they add up to at most
    /// [`total_ms`](Self::total_ms)): see [`phases`].
    pub phases: Vec<phases::Phase>,
}

/// The phases of an `up`, for `up --json` and the bench's cold-start row (issue 17):
/// what a cold `up` spends its time on. Each phase is also a tracing span (`-vv` prints
/// its time). The phases of the data plane are timed where they run, deep in
/// `dataplane::ebpf`, so they are collected per process rather than passed down through
/// the `Dataplane` trait; [`take`] hands them to the report that `up` returns.
pub mod phases {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use serde::Serialize;

    /// One phase: its name and its wall-clock time.
    #[derive(Debug, Clone, Serialize, PartialEq)]
    pub struct Phase {
        pub name: String,
        pub ms: f64,
    }

    static PHASES: Mutex<Vec<Phase>> = Mutex::new(Vec::new());

    /// Runs `f` as phase `name` (a tracing span of that name, and a [`Phase`]).
    pub fn time<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
        let _span = tracing::info_span!("phase", name).entered();
        let start = Instant::now();
        let out = f();
        record(name, start.elapsed());
        out
    }

    /// Records phase `name`, timed by the caller.
    pub fn record(name: &str, took: Duration) {
        tracing::debug!(phase = name, ms = took.as_secs_f64() * 1e3, "phase done");
        phases().push(Phase {
            name: name.to_owned(),
            ms: took.as_secs_f64() * 1e3,
        });
    }

    /// The phases recorded since the last call, in the order they ended.
    pub fn take() -> Vec<Phase> {
        std::mem::take(&mut *phases())
    }

    /// The sum of the phases recorded so far, in ms.
    pub(crate) fn recorded_ms() -> f64 {
        phases().iter().map(|p| p.ms).sum()
    }

    fn phases() -> std::sync::MutexGuard<'static, Vec<Phase>> {
        PHASES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one `up` run did so far: what it created (for rollback), and the values from
/// before of sysctls of devices it created (known only once they exist; kept in the
/// state on success, so that a later `up` that no longer wants one restores it).
#[derive(Default)]
struct Progress {
    created: Vec<Created>,
    fresh_priors: BTreeMap<String, String>,
}

/// An object `up` created in this run, for rollback.
enum Created {
    Netns(String),
    Link(String),
    /// A host route (`[[routes]]`, a ptp cover), by destination.
    Route(IpNet),
    /// A shared sysctl this instance did not hold before.
    SharedSysctl(String),
}

pub fn require_root() -> Result<(), Error> {
    if crate::privilege::is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Which containers an `up` builds, or checks and repairs.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every one: `netplane up`, which converges the whole host on the plan.
    All,
    /// Only these (by name), the others being trusted as the last `up` left them: the CNI
    /// plugin's ADD and DEL, whose cost must not grow with the containers attached.
    /// Everything else (networks, routes, sysctls, the data plane, what left the plan)
    /// converges as with [`Scope::All`].
    Only(BTreeSet<String>),
}

impl Scope {
    fn covers(&self, container: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.contains(container),
        }
    }
}

/// Builds or converges the topology of `plan`. Validation that needs the host happens
/// before any change; a failure part-way rolls back what this run created. Holds the
/// instance's lock throughout: a concurrent `up` or `down` waits.
pub fn up(plan: &Plan) -> Result<UpReport, Error> {
    require_root()?;
    let start = std::time::Instant::now();
    let lock = InstanceLock::acquire(&plan.name, "up")?;
    let locked = start.elapsed();
    let mut report = converge(&lock, plan, &Scope::All)?;
    report.phases.insert(
        0,
        phases::Phase {
            name: "lock".to_owned(),
            ms: locked.as_secs_f64() * 1e3,
        },
    );
    report.total_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}

/// `up` for a caller that holds the instance's lock already, having read the state under
/// it to make `plan` (the CNI plugin, which adds or removes one container).
pub fn converge(lock: &InstanceLock, plan: &Plan, scope: &Scope) -> Result<UpReport, Error> {
    debug_assert_eq!(lock.name(), plan.name);
    require_root()?;
    let start = std::time::Instant::now();
    // A failed run's leftovers are not this run's.
    phases::take();
    let result = runtime().block_on(up_async(plan, scope));
    let recorded = phases::take();
    let mut report = result?;
    report.total_ms = start.elapsed().as_secs_f64() * 1e3;
    report.phases = recorded;
    Ok(report)
}

async fn up_async(plan: &Plan, scope: &Scope) -> Result<UpReport, Error> {
    let started = std::time::Instant::now();
    let h = topology::connect(None)?;
    let old = State::load(&plan.name)?.unwrap_or_default();
    let narrow = match scope {
        Scope::Only(names) => narrow_host(&h, plan, &old, names).await?,
        Scope::All => None,
    };
    let mut host = match narrow {
        Some(host) => host,
        None => check_host(&h, plan, &old).await?,
    };
    if let Some((i, n)) = plan
        .networks
        .iter()
        .enumerate()
        .find(|(_, n)| n.subnet6.is_some())
    {
        let field = format!("networks[{i}].subnet6");
        let value = n.subnet6.map(|s| s.to_string()).unwrap_or_default();
        // A kernel booted with ipv6.disable=1 has no IPv6 at all.
        if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            return Err(Error::NotYet {
                field,
                value,
                what: "this host has IPv6 disabled (ipv6.disable=1): remove subnet6, or \
                       boot with IPv6",
            });
        }
    }
    let dp = dataplane::for_mode(plan.mode);
    dp.check()?;
    dp.check_plan(plan)?;
    dp.check_host(plan, &host)?;

    // Journal first: everything this run may create is recorded before it exists.
    // Only namespaces netplane makes: a CNI runtime's are the runtime's.
    let desired_netns: BTreeSet<String> = plan
        .containers
        .iter()
        .filter(|c| c.owns_netns())
        .map(|c| c.netns.clone())
        .collect();
    // A ptp network has no bridge.
    let desired_links: BTreeSet<String> = plan
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Bridge)
        .map(|n| n.name.clone())
        .chain(plan.containers.iter().map(|c| c.host_veth.clone()))
        .collect();
    // [[routes]], and each ptp network's blackhole cover (see topology), of its subnet6
    // too.
    let desired_routes: BTreeSet<IpNet> = plan
        .routes
        .iter()
        .map(|r| r.subnet)
        .chain(
            plan.networks
                .iter()
                .filter(|n| n.driver == Driver::Ptp)
                .flat_map(|n| [false, true].map(|v6| n.subnet_of(v6)))
                .flatten(),
        )
        .collect();
    let mut journal = old.clone();
    journal.netns.extend(desired_netns.iter().cloned());
    journal.links.extend(desired_links.iter().cloned());
    journal.routes.extend(desired_routes.iter().copied());
    // Prior values of the sysctls that exist already; those of bridges this run creates
    // go away with the bridges. Shared ones are journaled in their own record.
    for (key, _) in wanted_sysctls(plan, &*dp, Some(&host.uplink)) {
        if !held_shared(&key, Some(&host.uplink))
            && !journal.sysctls.contains_key(&key)
            && let Ok(prior) = sysctl::read(&key)
        {
            journal.sysctls.insert(key, prior);
        }
    }
    journal.dataplanes.insert(dp.mode());
    journal.save(&plan.name)?;

    let mut report = UpReport {
        uplink: host.uplink.clone(),
        changes: Vec::new(),
        ..UpReport::default()
    };
    let mut progress = Progress::default();
    phases::record("check", started.elapsed());

    if let Err(cause) = apply(
        &h,
        plan,
        &old,
        &*dp,
        &mut host,
        scope,
        &mut progress,
        &mut report,
    )
    .await
    {
        let mut rollback = rollback(&h, &plan.name, progress.created, &old, &journal).await;
        match &old.plan {
            _ if !old.dataplanes.contains(&dp.mode()) => {
                rollback.extend(dp.teardown(&plan.name).err().map(|e| e.to_string()));
            }
            // The data plane may hold part of the new plan (entries of a container that
            // is gone again): it goes back to the old one, as the topology did.
            Some(old_plan) if old_plan.mode == dp.mode() => {
                if let Ok(host_now) = check_host(&h, old_plan, &old).await {
                    rollback.extend(
                        dp.apply(old_plan, Some(plan), &host_now)
                            .err()
                            .map(|e| format!("the data plane, back to the old plan: {e}")),
                    );
                }
            }
            _ => {}
        }
        // After a clean rollback the host is as before; otherwise keep the journal, which
        // still lists what is left, so that `down` removes it.
        match (&old, rollback.is_empty()) {
            (_, false) => journal.save(&plan.name)?,
            (o, true) if *o == State::default() => State::remove(&plan.name)?,
            (o, true) => o.save(&plan.name)?,
        }
        return Err(Error::RolledBack {
            cause: Box::new(cause),
            rollback,
        });
    }

    let finishing = std::time::Instant::now();
    // Converged: what the old plan had and the new one has not goes away.
    let mut failures = Vec::new();
    for ns in old.netns.difference(&desired_netns) {
        match netns::delete(ns) {
            Ok(true) => report.changes.push(format!("removed netns {ns}")),
            Ok(false) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    for l in old.links.difference(&desired_links) {
        match topology::delete_link(&h, l).await {
            Ok(true) => report.changes.push(format!("removed link {l}")),
            Ok(false) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    for r in old.routes.difference(&desired_routes) {
        match topology::delete_host_route(&h, *r).await {
            Ok(true) => report.changes.push(format!("removed route {r}")),
            Ok(false) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    // A device sysctl no longer wanted (a network that stopped publishing no longer needs
    // route_localnet) gets its value from before back; one of a device that is gone went
    // with it.
    let wanted: BTreeSet<String> = wanted_sysctls(plan, &*dp, Some(&host.uplink))
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    // Those shared sysctls this instance held for a dual-stack network it no longer has
    // go back (when no other instance holds them), now that the new plan is in place.
    let unwanted: Vec<String> = [
        "net.ipv6.conf.all.forwarding".to_owned(),
        uplink_ra(&host.uplink),
    ]
    .into_iter()
    .filter(|k| !wanted.contains(k))
    .collect();
    match shared::release(&plan.name, Some(&unwanted)) {
        Ok(released) => {
            for r in released {
                if let Released::Restored { key, value } = r {
                    report
                        .changes
                        .push(format!("sysctl {key} restored to {value}"));
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    let mut sysctls = journal.sysctls;
    for (key, prior) in progress.fresh_priors {
        sysctls.entry(key).or_insert(prior);
    }
    sysctls.retain(|key, prior| {
        if wanted.contains(key) || shared::is_shared(key) {
            return true;
        }
        match sysctl::write(key, prior) {
            Ok(()) => {
                report
                    .changes
                    .push(format!("sysctl {key} restored to {prior}"));
                false
            }
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                failures.push(e.to_string());
                true
            }
        }
    });
    let state = State {
        plan: Some(plan.clone()),
        netns: desired_netns,
        links: desired_links,
        sysctls,
        dataplanes: [dp.mode()].into(),
        routes: desired_routes,
    };
    state.save(&plan.name)?;
    phases::record("finish", finishing.elapsed());
    if !failures.is_empty() {
        return Err(Error::Teardown(failures));
    }
    Ok(report)
}

/// The uplink `up` would use: `configured`, or the default route's device; it must have
/// an IPv4 address to masquerade to. (CNI's STATUS asks before any ADD.)
pub fn uplink_of(configured: Option<&str>) -> Result<String, Error> {
    runtime().block_on(async {
        let h = topology::connect(None)?;
        let uplink = match configured {
            Some(u) => u.to_owned(),
            None => topology::default_route_interface(&h)
                .await?
                .ok_or(Error::NoDefaultRoute)?,
        };
        let link = topology::link(&h, &uplink)
            .await?
            .ok_or_else(|| Error::UplinkMissing(uplink.clone()))?;
        if topology::ipv4_addresses(&h)
            .await?
            .iter()
            .any(|(i, _)| *i == link.index)
        {
            Ok(uplink)
        } else {
            Err(Error::UplinkWithoutAddress(uplink))
        }
    })
}

/// [`check_host`] for a converge scoped to containers `names` of a plan whose networks,
/// routes, uplink and mode are those already applied (a CNI ADD or DEL): those were
/// checked when they were applied, so only the scoped containers' devices are looked up,
/// by name, with the uplink and the bridges, instead of every link of the namespace.
/// `None` when the plan changed more than its containers: the full check then runs.
async fn narrow_host(
    h: &rtnetlink::Handle,
    plan: &Plan,
    old: &State,
    names: &BTreeSet<String>,
) -> Result<Option<HostContext>, Error> {
    let Some(prev) = &old.plan else {
        return Ok(None);
    };
    if (&prev.networks, &prev.routes, &prev.uplink, prev.mode)
        != (&plan.networks, &plan.routes, &plan.uplink, plan.mode)
    {
        return Ok(None);
    }
    let uplink = match &plan.uplink {
        Some(u) => u.clone(),
        None => topology::default_route_interface(h)
            .await?
            .ok_or(Error::NoDefaultRoute)?,
    };
    let mut links = Vec::new();
    let bridges = plan
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Bridge)
        .map(|n| n.name.as_str());
    for name in std::iter::once(uplink.as_str()).chain(bridges) {
        links.extend(topology::link(h, name).await?);
    }
    if !links.iter().any(|l| l.name == uplink) {
        return Err(Error::UplinkMissing(uplink));
    }
    for (i, c) in plan.containers.iter().enumerate() {
        if !names.contains(&c.name) {
            continue;
        }
        if let Some(l) = topology::link(h, &c.host_veth).await? {
            if !old.links.contains(&c.host_veth) {
                return Err(Error::Foreign {
                    field: format!("containers[{i}].name"),
                    value: c.name.clone(),
                    what: "its host veth name",
                });
            }
            links.push(l);
        }
    }
    let addrs = topology::ipv4_addresses(h).await?;
    let addrs6 = ipv6_addresses_for(h, plan).await?;
    let mut host = HostContext::from_host(plan, &uplink, links, &addrs, &addrs6)
        .ok_or_else(|| Error::UplinkWithoutAddress(uplink.clone()))?;
    host.touched = Some(names.clone());
    Ok(Some(host))
}

/// The checks that need the host: the uplink exists and has an address, and no subnet
/// collides with an address already configured here (other than on netplane's own
/// bridges). Returns what the data plane needs to know about the host.
async fn check_host(h: &rtnetlink::Handle, plan: &Plan, old: &State) -> Result<HostContext, Error> {
    let links = topology::links(h).await?;
    let uplink = match &plan.uplink {
        Some(u) if links.iter().any(|l| &l.name == u) => u.clone(),
        Some(u) => return Err(Error::UplinkMissing(u.clone())),
        None => topology::default_route_interface(h)
            .await?
            .ok_or(Error::NoDefaultRoute)?,
    };
    // Never adopt what someone else made: an existing link or namespace of one of our
    // names is ours only when our state says so.
    for (i, n) in plan.networks.iter().enumerate() {
        if !old.links.contains(&n.name) && links.iter().any(|l| l.name == n.name) {
            return Err(Error::Foreign {
                field: format!("networks[{i}].name"),
                value: n.name.clone(),
                what: "an interface of that name",
            });
        }
    }
    for (i, c) in plan.containers.iter().enumerate() {
        if c.owns_netns() && !old.netns.contains(&c.netns) && netns::exists(&c.netns) {
            return Err(Error::Foreign {
                field: format!("containers[{i}].name"),
                value: c.name.clone(),
                what: "its network namespace",
            });
        }
        if !old.links.contains(&c.host_veth) && links.iter().any(|l| l.name == c.host_veth) {
            return Err(Error::Foreign {
                field: format!("containers[{i}].name"),
                value: c.name.clone(),
                what: "its host veth name",
            });
        }
    }
    let addrs = topology::ipv4_addresses(h).await?;
    for &(ifindex, addr) in &addrs {
        let iface = links
            .iter()
            .find(|l| l.index == ifindex)
            .map_or_else(|| ifindex.to_string(), |l| l.name.clone());
        if old.links.contains(&iface) {
            continue;
        }
        if let Some((index, subnet)) = plan.networks.iter().enumerate().find_map(|(i, n)| {
            let s = n.subnet?;
            (s.contains(&addr.addr()) || addr.contains(&s.network())).then_some((i, s))
        }) {
            return Err(Error::SubnetCollision {
                index,
                subnet,
                addr,
                iface,
            });
        }
    }
    check_network_routes(h, plan, old, &links).await?;
    check_network_routes6(h, plan, old, &links).await?;
    let addrs6 = ipv6_addresses_for(h, plan).await?;
    let all: Vec<(u32, IpNet)> = addrs
        .iter()
        .map(|&(i, a)| (i, IpNet::V4(a)))
        .chain(addrs6.iter().map(|&(i, a)| (i, IpNet::V6(a))))
        .collect();
    check_routes(h, plan, old, &links, &all).await?;
    HostContext::from_host(plan, &uplink, links, &addrs, &addrs6)
        .ok_or_else(|| Error::UplinkWithoutAddress(uplink.clone()))
}

/// The host's global IPv6 addresses, when `plan` has a network with a subnet6 or an IPv6
/// route (otherwise none is asked for: a dump of them grows with the veths).
async fn ipv6_addresses_for(
    h: &rtnetlink::Handle,
    plan: &Plan,
) -> Result<Vec<(u32, ipnet::Ipv6Net)>, Error> {
    if plan.dual_stack() || plan.routes.iter().any(|r| r.via.is_ipv6()) {
        Ok(topology::ipv6_addresses(h).await?)
    } else {
        Ok(Vec::new())
    }
}

/// A network's subnet against the host's main routing table: a route inside it (or
/// equal to it) that netplane does not own would take its traffic, or be replaced by a
/// ptp network's cover route and then deleted with it. That is how a subnet that another
/// instance in this namespace holds shows, even without an address on the host (a ptp
/// network's cover route). Wider routes (a 10.0.0.0/8 via a router) are fine: the
/// network's are more specific.
async fn check_network_routes(
    h: &rtnetlink::Handle,
    plan: &Plan,
    old: &State,
    links: &[topology::Link],
) -> Result<(), Error> {
    let ours: BTreeSet<u32> = links
        .iter()
        .filter(|l| old.links.contains(&l.name))
        .map(|l| l.index)
        .collect();
    for r in topology::main_routes(h).await? {
        if r.prefix_len == 0
            || old.routes.contains(&IpNet::V4(r.dst))
            || r.oif.is_some_and(|i| ours.contains(&i))
        {
            continue;
        }
        if let Some((index, subnet)) = plan
            .networks
            .iter()
            .enumerate()
            .find_map(|(i, n)| Some((i, n.subnet.filter(|s| s.contains(&r.dst))?)))
        {
            let iface = r
                .oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map_or_else(|| "no device".to_owned(), |l| l.name.clone());
            return Err(Error::SubnetRoute {
                index,
                subnet,
                route: r.describe(),
                iface,
            });
        }
    }
    Ok(())
}

/// [`check_network_routes`] for the subnet6 of dual-stack networks: a route inside it
/// that netplane does not own (another instance's ptp cover, another tool's network, an
/// address of the host) would take its traffic, or be taken over and deleted with it.
async fn check_network_routes6(
    h: &rtnetlink::Handle,
    plan: &Plan,
    old: &State,
    links: &[topology::Link],
) -> Result<(), Error> {
    if plan.networks.iter().all(|n| n.subnet6.is_none()) {
        return Ok(());
    }
    let ours: BTreeSet<u32> = links
        .iter()
        .filter(|l| old.links.contains(&l.name))
        .map(|l| l.index)
        .collect();
    for (dst, oif) in topology::main_routes6(h).await? {
        if dst.prefix_len() == 0
            || old.routes.contains(&IpNet::V6(dst))
            || oif.is_some_and(|i| ours.contains(&i))
        {
            continue;
        }
        if let Some((index, n)) = plan
            .networks
            .iter()
            .enumerate()
            // Wider routes (a 2001:db8::/32 via a router) are fine: the network's are
            // more specific.
            .find(|(_, n)| n.subnet6.is_some_and(|s6| s6.contains(&dst)))
        {
            let iface = oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map_or_else(|| "no device".to_owned(), |l| l.name.clone());
            return Err(Error::Subnet6Route {
                index,
                subnet6: n.subnet6.expect("found by it").to_string(),
                route: dst.to_string(),
                iface,
            });
        }
    }
    Ok(())
}

/// `[[routes]]` against the host: each `via` is on a link of the host (a connected prefix
/// of one of its addresses of that family, netplane's own links aside), no host address
/// lies in a routed subnet, and a route to that subnet that netplane does not own is not
/// taken over. `addrs`: the host's IPv4 and global IPv6 addresses.
async fn check_routes(
    h: &rtnetlink::Handle,
    plan: &Plan,
    old: &State,
    links: &[topology::Link],
    addrs: &[(u32, IpNet)],
) -> Result<(), Error> {
    let iface = |ifindex: u32| {
        links
            .iter()
            .find(|l| l.index == ifindex)
            .map_or_else(|| ifindex.to_string(), |l| l.name.clone())
    };
    let foreign: Vec<(String, IpNet)> = addrs
        .iter()
        .map(|&(i, a)| (iface(i), a))
        .filter(|(name, _)| !old.links.contains(name))
        .collect();
    for (index, r) in plan.routes.iter().enumerate() {
        if let Some((name, a)) = foreign.iter().find(|(_, a)| r.subnet.contains(&a.addr())) {
            return Err(Error::Route {
                index,
                field: "subnet",
                value: r.subnet.to_string(),
                reason: format!("collides with {a} on {name}: a routed subnet is another host's"),
            });
        }
        if let Some((name, _)) = addrs
            .iter()
            .map(|&(i, a)| (iface(i), a))
            .find(|(_, a)| a.addr() == r.via)
        {
            return Err(Error::Route {
                index,
                field: "via",
                value: r.via.to_string(),
                reason: format!("an address of this host (on {name}), not another host's"),
            });
        }
        // A connected prefix, not a host route (/32, /128).
        if !foreign
            .iter()
            .any(|(_, a)| a.contains(&r.via) && a.prefix_len() < a.max_prefix_len())
        {
            let connected: Vec<String> = foreign
                .iter()
                .filter(|(_, a)| !a.addr().is_loopback() && a.addr().is_ipv6() == r.via.is_ipv6())
                .map(|(name, a)| format!("{} on {name}", a.trunc()))
                .collect();
            return Err(Error::Route {
                index,
                field: "via",
                value: r.via.to_string(),
                reason: format!(
                    "not on any local link (connected: {})",
                    if connected.is_empty() {
                        "none".to_owned()
                    } else {
                        connected.join(", ")
                    }
                ),
            });
        }
        if !old.routes.contains(&r.subnet) {
            let present = topology::routes_to(h, r.subnet).await?;
            if let Some(gw) = present.first().map(topology::gateway_of) {
                return Err(Error::Route {
                    index,
                    field: "subnet",
                    value: r.subnet.to_string(),
                    reason: format!(
                        "the host already has a route to it{} that netplane does not own",
                        gw.map(|g| format!(" (via {g})")).unwrap_or_default()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The uplink's `accept_ra` key.
fn uplink_ra(uplink: &str) -> String {
    format!("net.ipv6.conf.{uplink}.accept_ra")
}

/// Whether `key` is held in the per-namespace shared record (restored when the last
/// instance that needs it goes) rather than by this instance alone: the namespace-wide
/// ones, and the uplink's `accept_ra`, which every instance on that uplink relies on.
fn held_shared(key: &str, uplink: Option<&str>) -> bool {
    shared::is_shared(key) || uplink.is_some_and(|u| key == uplink_ra(u))
}

/// A dual-stack network's sysctls: IPv6 forwarding; no router advertisements taken on
/// netplane's bridges (its gateway is static); and `accept_ra = 2` on an uplink that
/// takes them (1), because forwarding makes the kernel ignore them at 1, and the host
/// would lose the default route it learned from them when it expires (moby#43466).
fn ipv6_sysctls(plan: &Plan, uplink: Option<&str>) -> Vec<(String, String)> {
    let dual: Vec<&crate::config::Network> = plan
        .networks
        .iter()
        .filter(|n| n.subnet6.is_some())
        .collect();
    if dual.is_empty() {
        return Vec::new();
    }
    // The uplink's first: turning forwarding on purges the routes learned from RAs on
    // every interface not at 2 (addrconf_fixup_forwarding() → rt6_purge_dflt_routers()).
    // Only an uplink that takes RAs and does not forward yet (a router's RAs at 1 are
    // off by its own choice).
    let mut all = Vec::new();
    if let Some(u) = uplink {
        let (ra, fwd) = (
            sysctl::read(&uplink_ra(u)),
            sysctl::read(&format!("net.ipv6.conf.{u}.forwarding")),
        );
        let takes_ras = matches!(
            (ra.as_deref(), fwd.as_deref()),
            (Ok("2"), _) | (Ok("1"), Ok("0"))
        );
        if takes_ras {
            all.push((uplink_ra(u), "2".to_owned()));
        }
    }
    all.push(("net.ipv6.conf.all.forwarding".to_owned(), "1".to_owned()));
    all.extend(dual.iter().filter(|n| n.driver == Driver::Bridge).map(|n| {
        (
            format!("net.ipv6.conf.{}.accept_ra", n.name),
            "0".to_owned(),
        )
    }));
    all
}

/// The sysctls `up` sets: IPv4 forwarding, strict reverse-path filtering on ptp host
/// veths, and what the data plane asks for.
///
/// A ptp container's packets are routed by the host, and its veth's only route is the /32
/// to it: with `rp_filter = 1` (strict, RFC 3704) the kernel drops what a container sends
/// with any other source address, so that it cannot pass as another network's container
/// or as a routed peer (on a bridge, the device says where a packet came from).
fn wanted_sysctls(plan: &Plan, dp: &dyn Dataplane, uplink: Option<&str>) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = SYSCTLS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.extend(ipv6_sysctls(plan, uplink));
    all.extend(
        plan.containers
            .iter()
            .filter(|c| {
                plan.network(&c.network)
                    .is_some_and(|n| n.driver == Driver::Ptp)
            })
            .map(|c| {
                (
                    format!("net.ipv4.conf.{}.rp_filter", c.host_veth),
                    "1".to_owned(),
                )
            }),
    );
    all.extend(dp.sysctls(plan));
    all
}

#[expect(
    clippy::too_many_arguments,
    reason = "the one step of `up` that changes the host: it needs all of up's context"
)]
async fn apply(
    h: &rtnetlink::Handle,
    plan: &Plan,
    old: &State,
    dp: &dyn Dataplane,
    host: &mut HostContext,
    scope: &Scope,
    progress: &mut Progress,
    report: &mut UpReport,
) -> Result<(), Error> {
    let topology_started = std::time::Instant::now();
    let Progress {
        created,
        fresh_priors,
    } = progress;
    for net in plan.networks.iter().filter(|n| n.driver == Driver::Bridge) {
        // A network that was dual-stack may hold an IPv6 address to remove.
        let had_v6 = old
            .plan
            .as_ref()
            .and_then(|p| p.network(&net.name))
            .is_some_and(|n| n.subnet6.is_some());
        let (changed, made) = topology::ensure_bridge(h, net, had_v6).await?;
        if made {
            created.push(Created::Link(net.name.clone()));
        }
        if changed {
            let via = match (net.has_gateway(), net.gateway) {
                (false, _) => "isolated".to_owned(),
                (true, Some(gw)) => format!("via {gw}"),
                (true, None) => format!(
                    "via {}",
                    net.gateway6.map(|g| g.to_string()).unwrap_or_default()
                ),
            };
            report.changes.push(format!(
                "bridge {} ({} {via})",
                net.name,
                net.describe_subnets()
            ));
        }
    }
    // A failpoint for the rollback tests: failures part-way are otherwise hard to cause
    // on purpose once validation has passed.
    let fail_before = std::env::var("NETPLANE_FAIL_BEFORE_CONTAINER").ok();
    for c in plan.containers.iter().filter(|c| scope.covers(&c.name)) {
        if fail_before.as_deref() == Some(c.name.as_str()) {
            return Err(Error::Injected(c.name.clone()));
        }
        let net = plan
            .network(&c.network)
            .expect("a planned container's network");
        // A container whose network, address or attachment changed is rebuilt from
        // scratch, as a runtime would recreate it.
        let old_driver = |p: &Plan, prev: &Container| p.network(&prev.network).map(|n| n.driver);
        if let Some((old_plan, prev)) = old
            .plan
            .as_ref()
            .and_then(|p| p.container(&c.name).map(|prev| (p, prev)))
            && (prev.network != c.network
                || prev.ip != c.ip
                || prev.ip6 != c.ip6
                || prev.mac != c.mac
                || old_driver(old_plan, prev) != Some(net.driver))
        {
            topology::delete_link(h, &prev.host_veth).await?;
            if prev.owns_netns() {
                netns::delete(&prev.netns)?;
            }
        }
        if c.owns_netns() && netns::create(&c.netns)? {
            created.push(Created::Netns(c.netns.clone()));
        }
        let (mut changed, made) = match net.driver {
            Driver::Bridge => {
                let bridge = topology::link(h, &c.network).await?.ok_or_else(|| {
                    TopologyError::Vanished {
                        object: c.network.clone(),
                    }
                })?;
                // The container's own hook hides its MAC from the bridge: only there
                // does the bridge need a static FDB entry for it.
                let static_fdb = plan.mode == Mode::Ebpf && plan.ebpf.from_container_hook();
                topology::ensure_veth(h, c, net, &bridge, static_fdb).await?
            }
            Driver::Ptp => topology::ensure_ptp_veth(h, c, net).await?,
        };
        if made {
            created.push(Created::Link(c.host_veth.clone()));
        }
        let ch = topology::connect(Some(&c.netns))?;
        changed |= topology::ensure_container_inside(&ch, c, net).await?;
        if changed {
            report.changes.push(format!(
                "container {} ({} on {})",
                c.name,
                c.describe_addresses(),
                c.network
            ));
        }
    }
    for net in plan.networks.iter().filter(|n| n.driver == Driver::Ptp) {
        for subnet in [false, true].into_iter().filter_map(|v6| net.subnet_of(v6)) {
            let existed = !topology::routes_to(h, subnet).await?.is_empty();
            if topology::ensure_cover(h, subnet).await? && !existed {
                created.push(Created::Route(subnet));
            }
        }
    }
    for r in &plan.routes {
        let existed = !topology::routes_to(h, r.subnet).await?.is_empty();
        if topology::ensure_host_route(h, r).await? {
            if !existed {
                created.push(Created::Route(r.subnet));
            }
            report
                .changes
                .push(format!("route {} via {}", r.subnet, r.via));
        }
    }
    // Sysctls after the topology: some are per bridge.
    let (common, own): (Vec<_>, Vec<_>) = wanted_sysctls(plan, dp, Some(&host.uplink))
        .into_iter()
        .partition(|(key, _)| held_shared(key, Some(&host.uplink)));
    for held in shared::hold(&plan.name, &common)? {
        if held.newly {
            created.push(Created::SharedSysctl(held.key.clone()));
        }
        if held.changed {
            report
                .changes
                .push(format!("sysctl {} = {}", held.key, held.value));
        }
    }
    for (key, value) in own {
        let current = sysctl::read(&key)?;
        if current != value {
            if !old.sysctls.contains_key(&key) {
                fresh_priors.insert(key.clone(), current);
            }
            sysctl::write(&key, &value)?;
            report.changes.push(format!("sysctl {key} = {value}"));
        }
    }
    // A mode switch: the data plane that programmed the old plan goes first.
    for mode in old.dataplanes.iter().filter(|m| **m != dp.mode()) {
        if !dataplane::for_mode(*mode).teardown(&plan.name)?.is_empty() {
            report.changes.push(format!("{mode} data plane removed"));
        }
    }
    // The devices as the topology left them: the data plane may deliver to them. A
    // scoped run touched only its containers' host veths and the bridges: those are
    // looked up by name (a dump of every link costs milliseconds with hundreds of
    // containers); the rest are as check_host found them.
    match scope {
        Scope::All => host.links = topology::links(h).await?,
        Scope::Only(names) => {
            let touched = plan
                .networks
                .iter()
                .filter(|n| n.driver == Driver::Bridge)
                .map(|n| n.name.as_str())
                .chain(
                    plan.containers
                        .iter()
                        .filter(|c| names.contains(&c.name))
                        .map(|c| c.host_veth.as_str()),
                );
            for name in touched {
                host.links.retain(|l| l.name != name);
                host.links.extend(topology::link(h, name).await?);
            }
        }
    }
    phases::record("topology", topology_started.elapsed());
    let t = std::time::Instant::now();
    let inner = phases::recorded_ms();
    report
        .changes
        .extend(dp.apply(plan, old.plan.as_ref(), host)?);
    let took = t.elapsed();
    report.dataplane_ms = Some(took.as_secs_f64() * 1e3);
    // What the data plane timed as phases of its own (eBPF: loading the object, the
    // verifier, pins and links, starting the agent) is already recorded; the rest is this
    // one (eBPF: the maps' contents).
    let timed = std::time::Duration::from_secs_f64((phases::recorded_ms() - inner).max(0.0) / 1e3);
    phases::record("dataplane", took.saturating_sub(timed));
    if plan.mode == Mode::Ebpf {
        report.changes.extend(plan.ebpf.idle_switches());
    }
    // Metrics asked for and not served (a port that another process holds is the
    // agent's error; a mode without an agent) are said here, to whoever asked.
    if let Some(addr) = plan.metrics.listen {
        let problem = match plan.mode {
            Mode::NoNat => Some(format!("mode {} has no agent to serve them", plan.mode)),
            _ => dataplane::ebpf::agent::metrics_problem(
                &plan.name,
                addr,
                std::time::Duration::from_secs(1),
            ),
        };
        if let Some(e) = problem {
            report
                .changes
                .push(format!("warning: the agent serves no metrics: {e}"));
        }
    }
    Ok(())
}

/// Undoes what one `up` run created, newest first, and the sysctls it changed. Returns
/// the failures.
async fn rollback(
    h: &rtnetlink::Handle,
    name: &str,
    created: Vec<Created>,
    old: &State,
    journal: &State,
) -> Vec<String> {
    let mut failures = Vec::new();
    for obj in created.into_iter().rev() {
        let res = match obj {
            Created::Netns(ns) => netns::delete(&ns).map(drop).map_err(|e| e.to_string()),
            Created::Link(l) => topology::delete_link(h, &l)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Created::Route(r) => topology::delete_host_route(h, r)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Created::SharedSysctl(key) => shared::release(name, Some(&[key]))
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        failures.extend(res.err());
    }
    for (key, prior) in &journal.sysctls {
        if !old.sysctls.contains_key(key) {
            failures.extend(sysctl::write(key, prior).err().map(|e| e.to_string()));
        }
    }
    failures
}

/// Removes everything instance `name` owns. Finishes every step, then reports every
/// failure. Succeeds when things are already gone. Holds the instance's lock throughout.
pub fn down(name: &str, plan: Option<&Plan>) -> Result<Vec<String>, Error> {
    require_root()?;
    let lock = InstanceLock::acquire(name, "down")?;
    down_locked(&lock, plan)
}

/// `down` for a caller that holds the instance's lock already (the CNI plugin, finding
/// the state of a first ADD that did not finish).
pub fn down_locked(lock: &InstanceLock, plan: Option<&Plan>) -> Result<Vec<String>, Error> {
    let name = lock.name();
    runtime().block_on(async {
        let state = State::load(name)?.unwrap_or_default();
        let mut netns_names = state.netns.clone();
        let mut links = state.links.clone();
        // Without state (deleted by hand), the plan's netplane-specific names still find
        // the namespaces and veths; bridges are only removed when the state owns them.
        if let Some(p) = plan {
            netns_names.extend(
                p.containers
                    .iter()
                    .filter(|c| c.owns_netns())
                    .map(|c| c.netns.clone()),
            );
            links.extend(p.containers.iter().map(|c| c.host_veth.clone()));
        }
        let mut removed = Vec::new();
        let mut failures = Vec::new();
        let mut modes = state.dataplanes.clone();
        modes.extend(plan.map(|p| p.mode));
        for dp in modes.into_iter().map(dataplane::for_mode) {
            match dp.teardown(name) {
                Ok(r) => removed.extend(r),
                Err(e) => failures.push(e.to_string()),
            }
        }
        for ns in &netns_names {
            match netns::delete(ns) {
                Ok(true) => removed.push(format!("netns {ns}")),
                Ok(false) => {}
                Err(e) => failures.push(e.to_string()),
            }
        }
        match topology::connect(None) {
            Ok(h) => {
                for l in &links {
                    match topology::delete_link(&h, l).await {
                        Ok(true) => removed.push(format!("link {l}")),
                        Ok(false) => {}
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                for r in &state.routes {
                    match topology::delete_host_route(&h, *r).await {
                        Ok(true) => removed.push(format!("route {r}")),
                        Ok(false) => {}
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
        match shared::release(name, None) {
            Ok(released) => {
                for r in released {
                    match r {
                        Released::Restored { key, value } => {
                            removed.push(format!("sysctl {key} restored to {value}"));
                        }
                        Released::StillHeld { key, by } => tracing::info!(
                            "sysctl {key} left as it is: instance(s) {} rely on it",
                            by.join(", ")
                        ),
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
        // The instance's own (per-device) sysctls. A shared one here comes from a state
        // written by an earlier netplane, before the shared record: it is left as it is
        // (forwarding left on, as Docker leaves it), since another instance may rely on it.
        for (key, value) in &state.sysctls {
            if shared::is_shared(key) {
                tracing::warn!("sysctl {key} left as it is: shared with other instances");
                continue;
            }
            match sysctl::write(key, value) {
                Ok(()) => removed.push(format!("sysctl {key} restored to {value}")),
                // A per-device sysctl of a device that is gone: nothing to restore.
                Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failures.push(e.to_string()),
            }
        }
        if failures.is_empty() {
            State::remove(name)?;
            Ok(removed)
        } else {
            Err(Error::Teardown(failures))
        }
    })
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub up: bool,
    pub mode: Option<Mode>,
    /// What the data plane does, in a line.
    pub dataplane: String,
    pub dataplane_health: Option<DataplaneStatus>,
    pub networks: Vec<NetworkStatus>,
    pub containers: Vec<ContainerStatus>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NetworkStatus {
    pub name: String,
    /// Absent on an IPv6-only network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// None on an isolated network, and on an IPv6-only one.
    pub gateway: Option<String>,
    /// A dual-stack or IPv6-only network's IPv6 subnet and gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    pub driver: Driver,
    pub gateway_mode: GatewayMode,
    /// Whether the bridge is there and up (a ptp network has none: always true).
    pub bridge_up: bool,
}

#[derive(Debug, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub network: String,
    /// Absent on an IPv6-only network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    pub mac: String,
    pub netns: String,
    pub host_veth: String,
    pub container_veth: String,
    pub publish: Vec<String>,
    pub present: bool,
    /// A CNI runtime's container: its ID, interface and namespace path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<crate::config::Attachment>,
}

/// The instance as recorded, checked against what exists.
pub fn status(name: &str) -> Result<Status, Error> {
    let state = State::load(name)?;
    let Some(plan) = state.as_ref().and_then(|s| s.plan.clone()) else {
        return Ok(Status {
            name: name.to_owned(),
            up: false,
            mode: None,
            dataplane: "none".into(),
            dataplane_health: None,
            networks: vec![],
            containers: vec![],
            problems: state
                .map(|_| vec!["an `up` did not finish: run `netplane down`".to_owned()])
                .unwrap_or_default(),
        });
    };
    let dp = dataplane::for_mode(plan.mode);
    let health = dp.status(&plan);
    runtime().block_on(async {
        let h = topology::connect(None)?;
        let links = topology::links(&h).await?;
        let mut problems = Vec::new();
        let networks = plan
            .networks
            .iter()
            .map(|n| {
                let bridge_up =
                    n.driver == Driver::Ptp || links.iter().any(|l| l.name == n.name && l.up);
                if !bridge_up {
                    problems.push(format!("bridge {} is missing or down", n.name));
                }
                NetworkStatus {
                    name: n.name.clone(),
                    subnet: n.subnet.map(|s| s.to_string()),
                    gateway: n.gateway.filter(|_| n.has_gateway()).map(|g| g.to_string()),
                    subnet6: n.subnet6.map(|s| s.to_string()),
                    gateway6: n
                        .gateway6
                        .filter(|_| n.has_gateway())
                        .map(|g| g.to_string()),
                    driver: n.driver,
                    gateway_mode: n.gateway_mode,
                    bridge_up,
                }
            })
            .collect();
        let containers = plan
            .containers
            .iter()
            .map(|c: &Container| {
                let present =
                    netns::exists(&c.netns) && links.iter().any(|l| l.name == c.host_veth);
                if !present {
                    problems.push(format!(
                        "container {}: netns {} or veth {} is missing",
                        c.name, c.netns, c.host_veth
                    ));
                }
                ContainerStatus {
                    name: c.name.clone(),
                    network: c.network.clone(),
                    ip: c.ip.map(|a| a.to_string()),
                    ip6: c.ip6.map(|a| a.to_string()),
                    mac: format_mac(c.mac),
                    netns: c.netns.clone(),
                    host_veth: c.host_veth.clone(),
                    container_veth: c.ifname().to_owned(),
                    publish: c.publish.iter().map(|p| p.to_string()).collect(),
                    present,
                    attachment: c.attachment.clone(),
                }
            })
            .collect();
        // Forwarding turned off under a running instance (by hand, or by another tool's
        // teardown) stops every container's traffic without a trace elsewhere.
        // (A per-device one of a missing bridge cannot be read: reported as the bridge.)
        for (key, value) in wanted_sysctls(&plan, &*dp, None) {
            if let Ok(v) = sysctl::read(&key)
                && v != value
            {
                problems.push(format!("sysctl {key} is {v}; netplane needs {value}"));
            }
        }
        if !health.healthy {
            problems.push(format!(
                "{} data plane unhealthy: {}",
                health.mode,
                health.problems.join("; ")
            ));
        }
        Ok(Status {
            name: name.to_owned(),
            up: true,
            mode: Some(plan.mode),
            dataplane: dp.describe().to_owned(),
            dataplane_health: Some(health),
            networks,
            containers,
            problems,
        })
    })
}

/// The NAT sessions of instance `name` that its data plane tracks itself
/// (`netplane conntrack`); none when it is not up.
pub fn flows(name: &str) -> Result<Vec<dataplane::ebpf::Flow>, Error> {
    let mode = State::load(name)?.and_then(|s| s.plan).map(|p| p.mode);
    Ok(mode
        .map(|m| dataplane::for_mode(m).flows(name))
        .unwrap_or_default())
}
