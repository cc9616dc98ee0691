//! What the programs count and what the maps hold, read from the pins: drops by reason
//! and place, translated packets, masquerade's port allocations, fast-forwarded packets,
//! each program's cost, each bounded map's fill (of both address families), and `status`
//! built from them. [`observe`] is the one reader of the counters: `status --json` and
//! the agent's `/metrics` both show what it returns.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, IterableMap, LpmTrie, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use netplane_common::addr::{Ip6, octets6};
use netplane_common::counters::Counters;
use netplane_common::nat::{
    Backend, CtEntry, CtKey, DropReason, Endpoint, FragEntry, FragKey, NetInfo, PortKey,
    SockRevEntry, SockRevKey, Tick, forwarded, maps,
};
use netplane_common::observe::{self, Dir, Hook, PATH_SLOTS, ct_stat, nat_stat};

use super::conntrack::{self, CtCapacity, entries_of};
use super::family::Family;
use super::maps::{pinned_config, pinned_map, pinned_map_data};
use super::{agent, attach, pin_dir};
use crate::config::{Mode, Plan};
use crate::dataplane::{
    Counters as Counted, DataplaneStatus, DropCount, FastForwarded, HostContext, MapFill,
    NatPortCount, Observation, PathCount, UplinkStatus,
};
use crate::topology;

/// The status of instance `plan.name`'s eBPF data plane, checked against the host as it
/// is now. Healthy when every program runs on its device as it is now, masquerade
/// translates to the uplink's current addresses, the maps have the sizes of the plan, and
/// the agent runs and collected garbage recently; anything else is a named problem. The
/// IPv6 maps are shown when a network is dual-stack.
pub(super) fn status(plan: &Plan) -> DataplaneStatus {
    let name = &plan.name;
    let dir = pin_dir(name);
    let mut st = DataplaneStatus::new(Mode::Ebpf);
    st.problems = attach::problems(plan, &dir);
    let (uplink, problems) = uplink_status(plan);
    st.uplink = uplink;
    st.problems.extend(problems);
    let seen = observe(plan);
    st.attached = seen
        .attached
        .iter()
        .map(|(program, device)| format!("{program}_{device}"))
        .collect();
    st.conntrack = conntrack_fill::<u32>(name);
    if plan.dual_stack() {
        st.conntrack6 = conntrack_fill::<Ip6>(name);
    }
    // `observe` leaves the conntrack tables to the agent's count; `status` walks the
    // unreplied flows' table for its fill, once.
    st.maps = [
        hash_fill::<CtKey, CtEntry>(name, maps::CT_NEW),
        plan.dual_stack()
            .then(|| hash_fill::<CtKey<Ip6>, CtEntry<Ip6>>(name, maps::CT6_NEW))
            .flatten(),
    ]
    .into_iter()
    .flatten()
    .chain(seen.fills)
    .collect();
    st.drops = drop_counters(name)
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), n))
        .collect();
    st.fast_forwarded = seen.fast_forwarded;
    st.counters = seen.counters;
    // The sizes as the kernel has them, against the plan's.
    let wanted = CtCapacity::of(plan);
    for (family, main, unreplied) in [
        ("", maps::CT, maps::CT_NEW),
        ("IPv6 ", maps::CT6, maps::CT6_NEW),
    ] {
        if !(conntrack::sized_as(name, main, &wanted)
            && conntrack::sized_as(name, unreplied, &wanted))
        {
            st.problems.push(format!(
                "the {family}conntrack tables are not sized for {} entries (max_entries = {}; the main table has room for {})",
                wanted.of_table(main),
                plan.conntrack.max_entries,
                capacity(name, main).map_or("?".to_owned(), |n| n.to_string()),
            ));
        }
    }
    let (agent, problems) = agent::status(name, agent::report::Duty::Ebpf);
    st.agent_pid = agent.pid.filter(|_| agent.running);
    st.agent = Some(agent);
    st.problems.extend(problems);
    st.finish()
}

/// What instance `plan.name`'s programs counted, the fill of its bounded maps and its
/// attached programs: cheap reads of per-CPU arrays and small maps, never a conntrack
/// walk (the agent's garbage collection counts the conntrack tables). A counter map that
/// the running object does not have (an older build) counts nothing.
pub(crate) fn observe(plan: &Plan) -> Observation {
    let name = &plan.name;
    let mut fills = family_fills::<u32>(name);
    if plan.dual_stack() {
        fills.extend(family_fills::<Ip6>(name));
    }
    Observation {
        counters: counters(name),
        fast_forwarded: plan.ebpf.fast_forward.then(|| forwarded_packets(name)),
        fills,
        attached: attach::pinned(&pin_dir(name))
            .iter()
            .filter_map(|l| split_link(l.strip_prefix("link_")?))
            .collect(),
    }
}

/// A link's pin name without `link_` as (program, device): the TC programs are named
/// `netplane_<uplink|bridge>_<direction>`, the socket programs `netplane_<hook>`, and a
/// device name may hold underscores.
fn split_link(link: &str) -> Option<(String, String)> {
    let words = match link.split('_').nth(1)? {
        "uplink" | "bridge" => 3,
        _ => 2,
    };
    let mut at = 0;
    for _ in 0..words {
        at += link[at..].find('_')? + 1;
    }
    Some((link[..at - 1].to_owned(), link[at..].to_owned()))
}

fn family_name(v6: bool) -> &'static str {
    if v6 { "ipv6" } else { "ipv4" }
}

/// Every counter of instance `name`'s programs, those that counted something.
fn counters(name: &str) -> Counted {
    let mut c = Counted::default();
    if let Some(drops) = pinned_map(name, maps::DROPS) {
        c.drops = drop_slots(&drops)
            .into_iter()
            .filter(|d| d.counters.packets > 0)
            .map(|d| DropCount {
                reason: d.reason.name(),
                family: family_name(d.v6),
                hook: d.hook.name(),
                direction: d.dir.name(),
                packets: d.counters.packets,
                bytes: d.counters.bytes,
            })
            .collect();
    }
    if let Some(m) = pinned_map(name, observe::maps::CT_STATS) {
        let sums = per_cpu_sums(&m, ct_stat::SLOTS);
        for v6 in [false, true] {
            let n = sums[(ct_stat::FULL + u32::from(v6) * ct_stat::V6) as usize];
            if n > 0 {
                c.conntrack_full.insert(family_name(v6).to_owned(), n);
            }
        }
    }
    if let Some(m) = pinned_map(name, observe::maps::TRANSLATED)
        && let Ok(map) = PerCpuArray::<_, Counters>::try_from(m)
    {
        c.translated = (0..PATH_SLOTS)
            .filter_map(|slot| {
                let n = Counters::sum(map.get(&slot, 0).ok()?.iter());
                let (v6, hook, dir) = observe::path_of(slot);
                (n.packets > 0).then(|| PathCount {
                    family: family_name(v6),
                    hook: hook.name(),
                    direction: dir.name(),
                    packets: n.packets,
                    bytes: n.bytes,
                })
            })
            .collect();
    }
    if let Some(m) = pinned_map(name, observe::maps::NAT_STATS) {
        let sums = per_cpu_sums(&m, nat_stat::SLOTS);
        c.nat_ports = [false, true]
            .into_iter()
            .map(|v6| {
                let at = |slot: u32| sums[(slot + u32::from(v6) * nat_stat::V6) as usize];
                NatPortCount {
                    family: family_name(v6),
                    own: at(nat_stat::OWN),
                    searched: at(nat_stat::SEARCHED),
                    retries: at(nat_stat::RETRIES),
                    failed: at(nat_stat::FAILED),
                }
            })
            .filter(|n| n.own + n.searched + n.retries + n.failed > 0)
            .collect();
    }
    c.monitor_events_lost =
        pinned_map(name, observe::maps::EVENTS_LOST).map(|m| per_cpu_sums(&m, 1)[0]);
    c
}

/// Family `A`'s tracked flows of instance `name`: the entries of both tables (the
/// unreplied flows' too), over the main table's capacity.
fn conntrack_fill<A: Family>(name: &str) -> Option<MapFill>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let max_entries = Some(capacity(name, A::CT)?);
    Some(MapFill {
        name: A::CT.to_owned(),
        entries: entries_of::<A>(name).len() as u64,
        max_entries,
    })
}

/// The fill of family `A`'s bounded maps of instance `name`, those that are pinned, but
/// the conntrack tables, which the agent's garbage collection counts (see `observe`).
fn family_fills<A: Family>(name: &str) -> Vec<MapFill>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
    FragKey<A>: aya::Pod,
    FragEntry<A>: aya::Pod,
    PortKey<A>: aya::Pod,
    Backend<A>: aya::Pod,
    NetInfo<A>: aya::Pod,
    SockRevKey<A>: aya::Pod,
    SockRevEntry<A>: aya::Pod,
{
    [
        hash_fill::<FragKey<A>, FragEntry<A>>(name, A::FRAGS),
        hash_fill::<FragKey<A>, Tick>(name, A::FRAGS_EARLY),
        hash_fill::<CtKey<A>, u32>(name, A::MASQ_PORTS),
        hash_fill::<PortKey<A>, Backend<A>>(name, A::PUBLISHED),
        trie_fill::<A, NetInfo<A>>(name, A::SUBNETS),
        trie_fill::<A, u32>(name, A::NEVER_NAT),
        hash_fill::<PortKey<A>, u32>(name, A::ROUTED_PORTS),
        hash_fill::<A, u32>(name, A::LOCAL_ADDRS),
        hash_fill::<A, Endpoint>(name, A::ENDPOINTS),
        hash_fill::<SockRevKey<A>, SockRevEntry<A>>(name, A::SOCK_REV),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The uplink as the host has it now against what the programs use: the masquerade
/// addresses and the uplink's index in the config map, and the local addresses that
/// published ports answer on. Returns the uplink's status and the problems.
fn uplink_status(plan: &Plan) -> (Option<UplinkStatus>, Vec<String>) {
    let name = &plan.name;
    let mut problems = Vec::new();
    let Some(uplink) = attach::pinned_uplink(plan, &pin_dir(name)) else {
        return (None, problems);
    };
    let config = pinned_config(name);
    let translation = config.map(|c| Ipv4Addr::from(c.uplink_addr.to_ne_bytes()));
    let translation6 = config
        .map(|c| Ipv6Addr::from(octets6(c.uplink_addr6)))
        .filter(|a| !a.is_unspecified());
    let host = match topology::host_now(plan.dual_stack()) {
        Ok((links, addrs, addrs6)) => HostContext::from_host(plan, &uplink, links, &addrs, &addrs6),
        Err(e) => {
            problems.push(format!("cannot read the host's links and addresses: {e}"));
            None
        }
    };
    let status = UplinkStatus {
        name: uplink.clone(),
        address: host.as_ref().map(|h| h.uplink_addr),
        translation_address: translation,
        address6: host.as_ref().and_then(|h| h.uplink_addr6),
        translation_address6: translation6,
    };
    let (Some(host), Some(config)) = (host, config) else {
        if config.is_none() {
            problems.push(format!("the config map ({}) is not pinned", maps::CONFIG));
        } else {
            problems.push(format!(
                "uplink {uplink} is missing or has no IPv4 address: masquerade has nothing to translate to"
            ));
        }
        return (Some(status), problems);
    };
    if Some(host.uplink_addr) != translation {
        problems.push(format!(
            "masquerade translates to {} but uplink {uplink} has {} (the agent follows address changes: is it running?)",
            translation.map_or("nothing".to_owned(), |a| a.to_string()),
            host.uplink_addr
        ));
    }
    if plan.dual_stack() && host.uplink_addr6 != translation6 {
        let addr6 = |a: Option<Ipv6Addr>| a.map_or("none".to_owned(), |a| a.to_string());
        problems.push(format!(
            "IPv6 masquerade translates to {} but uplink {uplink} has {} (the agent follows address changes: is it running?)",
            addr6(translation6),
            addr6(host.uplink_addr6)
        ));
    }
    if let (None, Some((_, n))) = (host.uplink_addr6, super::masquerading6(plan)) {
        problems.push(format!(
            "uplink {uplink} has no global IPv6 address: the IPv6 flows of network {} cannot be masqueraded",
            n.name
        ));
    }
    if config.uplink_ifindex != host.uplink_index {
        problems.push(format!(
            "the programs know uplink {uplink} as index {}, it is index {} now",
            config.uplink_ifindex, host.uplink_index
        ));
    }
    problems.extend(missing_local_addrs::<u32>(name, &host));
    if plan.dual_stack() {
        problems.extend(missing_local_addrs::<Ip6>(name, &host));
    }
    (Some(status), problems)
}

/// The host's addresses of family `A` that published ports do not answer on, as they are
/// not in instance `name`'s local-addresses map: one problem each.
fn missing_local_addrs<A: Family>(name: &str, host: &HostContext) -> Vec<String> {
    let local: Vec<A> = pinned_map(name, A::LOCAL_ADDRS)
        .and_then(|m| HashMap::<_, A, u32>::try_from(m).ok())
        .map(|m| m.keys().filter_map(Result::ok).collect())
        .unwrap_or_default();
    A::local_addrs(host)
        .into_iter()
        .filter(|a| !local.contains(a))
        .map(|a| {
            format!(
                "published ports do not answer on {}: it is not in the local-addresses map",
                a.ip()
            )
        })
        .collect()
}

/// The capacity the kernel reports for map `map` of instance `name`.
fn capacity(name: &str, map: &str) -> Option<u64> {
    let info = pinned_map_data(name, map)?.info().ok()?;
    Some(u64::from(info.max_entries()))
}

/// `map`'s fill: `entries`, over the capacity the kernel reports for it.
fn fill(map: &'static str, data: &MapData, entries: usize) -> MapFill {
    MapFill {
        name: map.to_owned(),
        entries: entries as u64,
        max_entries: data.info().ok().map(|i| u64::from(i.max_entries())),
    }
}

/// The fill of hash map `map` of instance `name`, whose keys are `K` and values `V`.
/// `None` when it is not pinned.
fn hash_fill<K: aya::Pod, V: aya::Pod>(name: &str, map: &'static str) -> Option<MapFill> {
    let m = HashMap::<_, K, V>::try_from(pinned_map(name, map)?).ok()?;
    let entries = m.keys().filter(Result::is_ok).count();
    Some(fill(map, m.map(), entries))
}

/// The fill of LPM trie `map` of instance `name`, whose addresses are `K` and values `V`.
fn trie_fill<K: aya::Pod, V: aya::Pod>(name: &str, map: &'static str) -> Option<MapFill> {
    let m = LpmTrie::<_, K, V>::try_from(pinned_map(name, map)?).ok()?;
    let entries = m.keys().filter(Result::is_ok).count();
    Some(fill(map, m.map(), entries))
}

/// Drops per reason of instance `name`, and, as `ct-new-evicted`, the unreplied flows
/// whose conntrack entry the unreplied table's LRU evicted (conntrack::unreplied_evicted):
/// not a packet dropped, but a flow whose reply, if it comes, finds no entry (shown among
/// the drops, as `ct-full` is).
pub fn drop_counters(name: &str) -> Vec<(&'static str, u64)> {
    let drops = pinned_map(name, maps::DROPS);
    let ct_stats = pinned_map(name, observe::maps::CT_STATS);
    let mut counts: Vec<(&'static str, u64)> = drops
        .as_ref()
        .map(|d| sum_drops(d, ct_stats.as_ref()))
        .unwrap_or_default();
    if !counts.is_empty() {
        let evicted = super::conntrack::unreplied_evicted(name).values().sum();
        counts.push((CT_NEW_EVICTED, evicted));
    }
    counts
}

/// The name [`drop_counters`] gives to evictions from the unreplied conntrack table.
const CT_NEW_EVICTED: &str = "ct-new-evicted";

/// The drop counters of a NP_DROPS map, summed over CPUs and over where they happened,
/// per reason. `ct-full` is not a drop, and is counted in NP_CT_STATS: it is shown among
/// the drops, as before.
pub(super) fn sum_drops(drops: &Map, ct_stats: Option<&Map>) -> Vec<(&'static str, u64)> {
    let slots = drop_slots(drops);
    let ct_full = ct_stats.map(|m| {
        let sums = per_cpu_sums(m, ct_stat::SLOTS);
        [ct_stat::FULL, ct_stat::FULL + ct_stat::V6]
            .iter()
            .map(|slot| sums[*slot as usize])
            .sum::<u64>()
    });
    DropReason::ALL
        .iter()
        .map(|r| {
            let mut n: u64 = slots
                .iter()
                .filter(|d| d.reason == *r)
                .map(|d| d.counters.packets)
                .sum();
            if *r == DropReason::CtFull {
                n += ct_full.unwrap_or(0);
            }
            (r.name(), n)
        })
        .collect()
}

/// One drop counter of NP_DROPS: where, why, and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DropSlot {
    pub v6: bool,
    pub hook: Hook,
    pub dir: Dir,
    pub reason: DropReason,
    pub counters: Counters,
}

/// Every drop counter of a NP_DROPS map, summed over CPUs, zeros included.
pub(super) fn drop_slots(drops: &Map) -> Vec<DropSlot> {
    let Ok(map) = PerCpuArray::<_, Counters>::try_from(drops) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in 0..PATH_SLOTS {
        let (v6, hook, dir) = observe::path_of(path);
        for reason in DropReason::ALL {
            let counters = map
                .get(&observe::drop_slot(path, reason as u32), 0)
                .map(|v| Counters::sum(v.iter()))
                .unwrap_or_default();
            out.push(DropSlot {
                v6,
                hook,
                dir,
                reason,
                counters,
            });
        }
    }
    out
}

/// The per-CPU `u64` counters of array `map`, summed over CPUs, one per slot in `0..n`.
pub(super) fn per_cpu_sums(map: &Map, n: u32) -> Vec<u64> {
    let Ok(counts) = PerCpuArray::<_, u64>::try_from(map) else {
        return vec![0; n as usize];
    };
    (0..n)
        .map(|i| counts.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
        .collect()
}

/// How many packets of instance `name` took the short way (netplane-ebpf's `forward`),
/// into containers and out of them, each way, summed over CPUs.
fn forwarded_packets(name: &str) -> FastForwarded {
    let n = pinned_map(name, maps::FORWARDED).map_or_else(
        || vec![0; forwarded::SLOTS as usize],
        |m| per_cpu_sums(&m, forwarded::SLOTS),
    );
    let at = |slot: u32| n[slot as usize];
    FastForwarded {
        into_containers: at(forwarded::INTO_CONTAINER) + at(forwarded::INTO_CONTAINER_PEER),
        into_containers_peer: at(forwarded::INTO_CONTAINER_PEER),
        out_of_containers: at(forwarded::OUT_OF_CONTAINER) + at(forwarded::FROM_CONTAINER),
        out_of_containers_at_hook: at(forwarded::FROM_CONTAINER),
    }
}

/// What each attached program of instance `name` has cost so far: (link, runs, average
/// ns per run). The kernel counts only while BPF_ENABLE_STATS is held by someone
/// (`aya::sys::enable_stats`); without it the runs read 0.
pub fn program_costs(name: &str) -> Vec<(String, u64, f64)> {
    let dir = pin_dir(name);
    let programs: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .collect();
    let mut costs: Vec<(String, u64, f64)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let link = FdLink::from(PinnedLink::from_pin(e.path()).ok()?);
            let id = link.info().ok()?.program_id();
            let p = programs.iter().find(|p| p.id() == id)?;
            let runs = p.run_count();
            let ns = if runs == 0 {
                0.0
            } else {
                p.run_time().as_nanos() as f64 / runs as f64
            };
            Some((
                file.strip_prefix("link_").unwrap_or(&file).to_owned(),
                runs,
                ns,
            ))
        })
        .collect();
    costs.sort_by(|a, b| a.0.cmp(&b.0));
    costs
}

#[cfg(test)]
mod tests {
    use super::split_link;

    #[test]
    fn a_link_name_splits_into_program_and_device() {
        let split = |l: &str| split_link(l).map(|(p, d)| format!("{p} {d}"));
        assert_eq!(
            split("netplane_uplink_ingress_up0").as_deref(),
            Some("netplane_uplink_ingress up0")
        );
        assert_eq!(
            split("netplane_bridge_egress6_my_br").as_deref(),
            Some("netplane_bridge_egress6 my_br"),
            "a device name with an underscore"
        );
        assert_eq!(
            split("netplane_connect4_cgroup").as_deref(),
            Some("netplane_connect4 cgroup")
        );
        assert_eq!(split("stray"), None);
    }
}
