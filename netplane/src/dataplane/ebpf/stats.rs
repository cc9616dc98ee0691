//! What the programs count and what the maps hold, read from the pins: drops by reason,
//! fast-forwarded packets, each program's cost, each bounded map's fill, and `status`
//! built from them.

use aya::maps::{HashMap, IterableMap, LpmTrie, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use netplane_common::nat::{
    Backend, CtEntry, CtKey, DropReason, Endpoint, FragEntry, FragKey, NetInfo, PortKey,
    SockRevEntry, SockRevKey, forwarded, maps,
};

use super::maps::pinned_map;
use super::{agent, attach, pin_dir};
use crate::config::{Mode, Plan};
use crate::dataplane::{DataplaneStatus, FastForwarded, MapFill};

/// The status of instance `plan.name`'s eBPF data plane. Healthy when the links pinned
/// are the ones the plan wants.
pub(super) fn status(plan: &Plan) -> DataplaneStatus {
    let name = &plan.name;
    let dir = pin_dir(name);
    let mut st = DataplaneStatus::new(Mode::Ebpf);
    st.problems = attach::problems(plan, &dir);
    st.attached = attach::pinned(&dir)
        .iter()
        .map(|l| l.strip_prefix("link_").unwrap_or(l).to_owned())
        .collect();
    st.conntrack = hash_fill::<CtKey, CtEntry>(name, maps::CT);
    st.drops = drop_counters(name)
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), n))
        .collect();
    st.maps = [
        hash_fill::<FragKey, FragEntry>(name, maps::FRAGS),
        hash_fill::<PortKey, Backend>(name, maps::PUBLISHED),
        subnets_fill(name),
        hash_fill::<u32, u32>(name, maps::LOCAL_ADDRS),
        hash_fill::<u32, Endpoint>(name, maps::ENDPOINTS),
        hash_fill::<SockRevKey, SockRevEntry>(name, maps::SOCK_REV),
    ]
    .into_iter()
    .flatten()
    .collect();
    st.fast_forwarded = plan.ebpf.fast_forward.then(|| {
        let (into_containers, out_of_containers) = forwarded_packets(name);
        FastForwarded {
            into_containers,
            out_of_containers,
        }
    });
    st.agent_pid = agent::running(name);
    st.finish()
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

/// The fill of the subnets map (an LPM trie) of instance `name`.
fn subnets_fill(name: &str) -> Option<MapFill> {
    let m = LpmTrie::<_, u32, NetInfo>::try_from(pinned_map(name, maps::SUBNETS)?).ok()?;
    let entries = m.keys().filter(Result::is_ok).count();
    Some(fill(maps::SUBNETS, m.map(), entries))
}

/// Drops per reason of instance `name`.
pub fn drop_counters(name: &str) -> Vec<(&'static str, u64)> {
    pinned_map(name, maps::DROPS)
        .as_ref()
        .map(sum_drops)
        .unwrap_or_default()
}

/// The drop counters of a NP_DROPS map, summed over CPUs.
pub(super) fn sum_drops(map: &Map) -> Vec<(&'static str, u64)> {
    let Ok(drops) = PerCpuArray::<_, u64>::try_from(map) else {
        return Vec::new();
    };
    DropReason::ALL
        .iter()
        .map(|r| {
            (
                r.name(),
                drops
                    .get(&(*r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0),
            )
        })
        .collect()
}

/// How many packets of instance `name` took the short way (netplane-ebpf's `forward`),
/// into containers and out of them, summed over CPUs.
fn forwarded_packets(name: &str) -> (u64, u64) {
    let Some(map) = pinned_map(name, maps::FORWARDED) else {
        return (0, 0);
    };
    let Ok(counts) = PerCpuArray::<_, u64>::try_from(map) else {
        return (0, 0);
    };
    let sum = |slot| counts.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0);
    (
        sum(forwarded::INTO_CONTAINER),
        sum(forwarded::OUT_OF_CONTAINER),
    )
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
