//! The BPF conntrack tables from userspace, of both address families: the flows
//! `netplane conntrack` lists, the garbage collection the agent runs, what an entry costs
//! the kernel, and resizing them (`[conntrack] max_entries` changed, or a first
//! dual-stack network) with their live entries.
//!
//! The walks read the tables in batches (`batch`: one BPF_MAP_LOOKUP_BATCH per 4,096
//! entries, and one BPF_MAP_DELETE_BATCH for the expired ones among them), not with aya's
//! iterator (two syscalls per entry): at 100,000 entries a collection took 45 ms of CPU
//! instead of ~300 ms (tests/tests/conntrack_scale.rs prints both).
//!
//! The unreplied flows' table is an LRU of an eighth of the main table (at least 256,
//! `CtTables::unreplied_entries`): a burst of more new flows than that, none replied yet
//! (one-shot UDP, DNS from a busy container), evicts the oldest, whose replies then find
//! no entry. [`unreplied_evicted`] counts them (`ct-new-evicted` in `status`), from the
//! programs' counters of what enters and leaves the table. The share is a trade-off with
//! memory: an entry of the main table costs ~104 B of kernel memory, one of the unreplied
//! table as much, so a tracked flow costs 104 + 104/8 ≈ 117 B; an eighth is the largest
//! power-of-two share within the 128 B per flow issue 12 allows (a quarter is ~130 B, a
//! half ~156 B; a fifth, ~125 B, would still fit).

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapType, PerCpuArray, PerCpuValues};
use ipnet::IpNet;
use netplane_common::addr::Ip6;
use netplane_common::nat::{
    CtEntry, CtKey, CtTables, DpConfig, FragEntry, FragKey, Side, Tick, Timeouts, kind, maps,
    s_to_ticks, seen, tick, ticks_since, ticks_to_s,
};
use netplane_common::observe::{self, ct_stat};

use super::agent::record::Removed;
use super::batch;
use super::family::{Family, IpFamily, net};
use super::maps::{pinned_config, pinned_map, pinned_map_data};
use super::object::EbpfError;
use super::pin_dir;
use crate::config::Plan;

/// Family `A`'s conntrack tables: the main one and the unreplied flows' (see
/// netplane_common::nat::CtTables), in the order lookups take.
fn tables<A: Family>() -> [&'static str; 2] {
    [A::CT, A::CT_NEW]
}

/// Every conntrack table, of both families.
pub(super) const TABLES: [&str; 4] = [maps::CT, maps::CT_NEW, maps::CT6, maps::CT6_NEW];

/// Whether conntrack table `map` is a main table (not the unreplied flows').
fn is_main(map: &str) -> bool {
    map == maps::CT || map == maps::CT6
}

/// CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns()) in conntrack ticks.
fn now_tick() -> Tick {
    let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    tick(ns)
}

/// The entries of conntrack table `map` (one of [`tables`]) of instance `name`.
fn table_entries<A: Family>(name: &str, map: &str) -> Vec<(CtKey<A>, CtEntry<A>)>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let Some(data) = pinned_map_data(name, map) else {
        return Vec::new();
    };
    let mut all = Vec::new();
    walk::<A>(&data, Walk::Batch, |keys, entries| {
        all.extend(keys.iter().copied().zip(entries.iter().copied()));
    });
    all
}

/// How a walk reads a conntrack table: in batches (two syscalls per [`batch::CHUNK`]
/// entries), or as aya's iterator does (two per entry), which the batch walk falls back
/// to on a kernel without batch operations, and which a test compares it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    Batch,
    PerElement,
}

/// Walks conntrack table `data` with `how`, handing `f` the entries a chunk at a time
/// (`f` may delete them). Returns how many entries it handed over.
fn walk<A: Family>(
    data: &MapData,
    how: Walk,
    mut f: impl FnMut(&[CtKey<A>], &[CtEntry<A>]),
) -> usize
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let mut seen = 0;
    if how == Walk::Batch {
        match batch::for_each_chunk::<CtKey<A>, CtEntry<A>>(data, |k, e| {
            seen += k.len();
            f(k, e);
        }) {
            Ok(()) => return seen,
            // A failure part-way leaves the rest to the element walk below, which sees the
            // whole table: what `f` already had is handed over again (a delete of a key
            // gone is no harm; a count is then off for this one pass).
            Err(e) => tracing::debug!("batch walk of a conntrack table: {e}; walking by element"),
        }
    }
    let Ok(map) = Map::from_map_data(clone_data(data)) else {
        return seen;
    };
    let Ok(ct) = HashMap::<_, CtKey<A>, CtEntry<A>>::try_from(&map) else {
        return seen;
    };
    // All read before `f` sees any: BPF_MAP_GET_NEXT_KEY from a key that `f` deleted
    // starts over from the first bucket (htab_map_get_next_key()).
    let (keys, entries): (Vec<CtKey<A>>, Vec<CtEntry<A>>) =
        ct.iter().filter_map(Result::ok).unzip();
    for (k, e) in keys.chunks(batch::CHUNK).zip(entries.chunks(batch::CHUNK)) {
        seen += k.len();
        f(k, e);
    }
    seen
}

/// Another handle on the map of `data` (aya's typed maps take theirs by value).
fn clone_data(data: &MapData) -> MapData {
    use std::os::fd::AsFd;
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup of a map descriptor");
    MapData::from_fd(fd).expect("a map descriptor")
}

/// Deletes `keys` from conntrack table `data`, in batches (per key where the kernel has no
/// batch delete). Returns how many went.
fn delete_keys<A: Family>(data: &MapData, keys: &[CtKey<A>]) -> usize
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    if keys.is_empty() {
        return 0;
    }
    match batch::delete(data, keys) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("batch delete from a conntrack table: {e}; deleting by key");
            let Ok(mut map) = Map::from_map_data(clone_data(data)) else {
                return 0;
            };
            let Ok(mut ct) = HashMap::<_, CtKey<A>, CtEntry<A>>::try_from(&mut map) else {
                return 0;
            };
            keys.iter().filter(|k| ct.remove(k).is_ok()).count()
        }
    }
}

/// The IPv4 conntrack entries of instance `name`, of both tables.
pub fn conntrack_entries(name: &str) -> Vec<(CtKey, CtEntry)> {
    entries_of::<u32>(name)
}

/// Family `A`'s conntrack entries of instance `name`, of both tables; an entry caught
/// moving into the main table, in both, is listed once.
pub(super) fn entries_of<A: Family>(name: &str) -> Vec<(CtKey<A>, CtEntry<A>)>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let mut entries = table_entries::<A>(name, A::CT);
    let main: std::collections::HashSet<CtKey<A>> = entries.iter().map(|(k, _)| *k).collect();
    entries.extend(
        table_entries::<A>(name, A::CT_NEW)
            .into_iter()
            .filter(|(k, _)| !main.contains(k)),
    );
    entries
}

/// How many conntrack entries of `family` instance `name` holds, in both tables.
pub fn conntrack_entry_count(name: &str, family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => entries_of::<u32>(name).len(),
        IpFamily::V6 => entries_of::<Ip6>(name).len(),
    }
}

/// Kernel memory per tracked flow of `family` of instance `name`: what the kernel charges
/// for both of the family's conntrack tables (`memlock` in /proc/self/fdinfo) over the
/// main table's capacity.
pub fn ct_bytes_per_entry(name: &str, family: IpFamily) -> Option<f64> {
    use std::os::fd::{AsFd, AsRawFd};
    let [main, unreplied] = match family {
        IpFamily::V4 => tables::<u32>(),
        IpFamily::V6 => tables::<Ip6>(),
    };
    let field = |map: &str, k: &str| -> Option<f64> {
        let data = pinned_map_data(name, map)?;
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<f64>().ok())
    };
    let memlock = field(main, "memlock:")? + field(unreplied, "memlock:")?;
    Some(memlock / field(main, "max_entries:")?)
}

/// The capacity `up` gives the main conntrack table of each family (the unreplied flows'
/// follows from it, see [`CtCapacity::of_table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CtCapacity {
    pub v4: u32,
    /// `None`: no network is dual-stack, and IPv6's tables hold one entry each (they are
    /// preallocated: a host without IPv6 pays nothing for them).
    pub v6: Option<u32>,
}

impl CtCapacity {
    /// What `plan` wants: `[conntrack] max_entries` for IPv4, and for IPv6 when a network
    /// is dual-stack.
    pub(super) fn of(plan: &Plan) -> CtCapacity {
        let n = plan.conntrack.max_entries;
        CtCapacity {
            v4: n,
            v6: plan.dual_stack().then_some(n),
        }
    }

    /// The capacity of conntrack table `map` (one of [`TABLES`]).
    pub(super) fn of_table(&self, map: &str) -> u32 {
        let main = if map == maps::CT || map == maps::CT_NEW {
            Some(self.v4)
        } else {
            self.v6
        };
        match main {
            None => 1,
            Some(n) if is_main(map) => n,
            Some(n) => CtTables::unreplied_entries(n),
        }
    }
}

/// What a conntrack table is in the kernel: its type, capacity and flags.
#[derive(Debug, PartialEq)]
struct Shape {
    map_type: MapType,
    max_entries: u32,
    flags: u32,
}

/// The shape `up` wants conntrack table `map` to have for `capacity` (netplane-ebpf's
/// maps.rs defines them).
fn wanted_shape(map: &str, capacity: &CtCapacity) -> Shape {
    Shape {
        map_type: if is_main(map) {
            MapType::Hash
        } else {
            MapType::LruHash
        },
        max_entries: capacity.of_table(map),
        flags: 0,
    }
}

fn shape(data: &MapData) -> Option<Shape> {
    let info = data.info().ok()?;
    Some(Shape {
        map_type: info.map_type().ok()?,
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Whether instance `name`'s pinned conntrack table `map` has the shape `capacity` wants.
pub(super) fn sized_as(name: &str, map: &str, capacity: &CtCapacity) -> bool {
    pinned_map_data(name, map).and_then(|d| shape(&d)) == Some(wanted_shape(map, capacity))
}

/// Whether instance `name`'s pinned conntrack tables have the shape `capacity` wants (a
/// map's size is fixed at creation: another size needs new maps, see [`set_aside`]).
pub(super) fn ct_sized_as(name: &str, capacity: &CtCapacity) -> bool {
    TABLES.iter().all(|m| sized_as(name, m, capacity))
}

/// What `up` will say of instance `name`'s conntrack tables for `capacity`: that a
/// family's are resized (with their entries), when pinned ones have another size or
/// shape.
pub(super) fn ct_resize(name: &str, capacity: &CtCapacity) -> Vec<String> {
    let resize = |family: &str, main: &str, unreplied: &str| {
        let had = shape(&pinned_map_data(name, main)?)?;
        let want = capacity.of_table(main);
        (!sized_as(name, main, capacity) || !sized_as(name, unreplied, capacity)).then(|| {
            if main == maps::CT6 && capacity.v6.is_none() {
                "IPv6 conntrack tables down to 1 entry each: no network is dual-stack".to_owned()
            } else if had.max_entries == want {
                // Same size, another map type or flags: the layout of an older netplane.
                format!(
                    "{family}conntrack tables rebuilt in this version's layout, their flows kept"
                )
            } else {
                format!(
                    "{family}conntrack table resized from {} to {want} entries, its flows kept",
                    had.max_entries
                )
            }
        })
    };
    [
        resize("", maps::CT, maps::CT_NEW),
        resize("IPv6 ", maps::CT6, maps::CT6_NEW),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Where a conntrack table set aside for a resize stays pinned until its entries moved
/// (`<map>_OLD`: bpffs refuses names with a dot, bpf_lookup()).
fn aside_path(dir: &Path, map: &str) -> PathBuf {
    dir.join(format!("{map}_OLD"))
}

/// Before a load with the pins of `dir`: moves aside (renames to `<map>_OLD`) each pinned
/// conntrack table whose shape is not what `capacity` wants, so that the load creates it
/// anew (aya reuses a pin without comparing its shape). The programs still attached keep
/// using the old tables until `up` swaps them; [`migrate`] then copies their entries.
/// Returns the tables set aside.
pub(super) fn set_aside(dir: &Path, capacity: &CtCapacity) -> Result<Vec<&'static str>, EbpfError> {
    let mut moved = Vec::new();
    for map in TABLES {
        let pin = dir.join(map);
        let Ok(data) = MapData::from_pin(&pin) else {
            continue;
        };
        if shape(&data) == Some(wanted_shape(map, capacity)) {
            continue;
        }
        // A table set aside earlier whose entries were not all moved yet gives way: the
        // newer one has the fresher entries.
        let aside = aside_path(dir, map);
        std::fs::rename(&pin, &aside).map_err(|source| EbpfError::Io {
            action: "rename",
            path: pin.clone(),
            source,
        })?;
        moved.push(map);
    }
    Ok(moved)
}

/// Undoes [`set_aside`] after a load that failed: the tables set aside, which the
/// attached programs still use, get their pins back (over any new table's pin).
pub(super) fn put_back(dir: &Path, moved: &[&str]) {
    for map in moved {
        let pin = dir.join(map);
        let _ = std::fs::remove_file(&pin);
        if let Err(e) = std::fs::rename(aside_path(dir, map), &pin) {
            tracing::warn!(
                "cannot pin conntrack table {map} back at {}: {e}",
                pin.display()
            );
        }
    }
}

/// Copies the entries of family `A`'s conntrack tables set aside in `dir` into `new` (the
/// new tables of any family, by name), each into the table it came from, or among
/// the unreplied flows when the main table is full; an entry already there is left as it
/// is (the programs keep it current). Returns (entries copied, entries lost for lack of
/// room).
fn copy_aside<A: Family>(dir: &Path, new: &mut [(&str, &mut Map)]) -> (usize, usize)
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    const NOEXIST: u64 = 1; // BPF_NOEXIST
    let (mut copied, mut lost) = (0, 0);
    for from in tables::<A>() {
        let Some(old) = MapData::from_pin(aside_path(dir, from))
            .ok()
            .and_then(|d| Map::from_map_data(d).ok())
        else {
            continue;
        };
        for (k, e) in old_entries::<A>(old) {
            let mut stored = false;
            // The main table's entries go back into it; when it is full, and for the
            // unreplied ones, into the unreplied table.
            for to in tables::<A>() {
                if (from == A::CT_NEW && to == A::CT) || stored {
                    continue;
                }
                let Some((_, map)) = new.iter_mut().find(|(name, _)| *name == to) else {
                    continue;
                };
                let Ok(mut table) = HashMap::<_, CtKey<A>, CtEntry<A>>::try_from(&mut **map) else {
                    continue;
                };
                match table.insert(k, e, NOEXIST) {
                    Ok(()) => {
                        copied += 1;
                        stored = true;
                    }
                    Err(aya::maps::MapError::SyscallError(err))
                        if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
                    {
                        stored = true;
                    }
                    Err(_) => {}
                }
            }
            lost += usize::from(!stored);
        }
    }
    (copied, lost)
}

/// The entries of a conntrack table set aside, also in an older netplane's layout (see
/// [`Family::legacy_entries`]): an upgrade keeps the flows too.
fn old_entries<A: Family>(old: Map) -> Vec<(CtKey<A>, CtEntry<A>)>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    if let Ok(ct) = HashMap::<_, CtKey<A>, CtEntry<A>>::try_from(&old) {
        return batch::entries::<CtKey<A>, CtEntry<A>>(ct.map())
            .unwrap_or_else(|_| ct.iter().filter_map(Result::ok).collect());
    }
    A::legacy_entries(&old)
}

/// The entries of an IPv4 conntrack table in the 16-byte layout of an instance started by
/// an earlier netplane (no [`CtEntry::seq`], which then starts unknown, as in a new
/// entry).
pub(super) fn legacy_entries(old: &Map) -> Vec<(CtKey, CtEntry)> {
    let Ok(ct) = HashMap::<_, CtKey, [u8; 16]>::try_from(old) else {
        return Vec::new();
    };
    let u32_at = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    ct.iter()
        .filter_map(Result::ok)
        .map(|(k, b)| {
            let e = CtEntry {
                addr: u32_at(&b, 0),
                port: u16::from_ne_bytes([b[4], b[5]]),
                seen: b[6],
                kind: b[7],
                created: u32_at(&b, 8),
                last_seen: u32_at(&b, 12),
                seq: [0; 2],
            };
            (k, e)
        })
        .collect()
}

/// Copies the live entries of the conntrack tables set aside in `dir` into the new ones
/// (`tables`, by name), right after they were created.
pub(super) fn migrate(dir: &Path, tables: &mut [(&str, &mut Map)]) -> (usize, usize) {
    let (c4, l4) = copy_aside::<u32>(dir, tables);
    let (c6, l6) = copy_aside::<Ip6>(dir, tables);
    (c4 + c6, l4 + l6)
}

/// Finishes a resize of instance `name`'s conntrack tables, from the agent: the entries
/// the old programs created in the tables set aside between `up`'s first copy and its
/// swap of the programs are copied too, and the old tables unpinned (freed once no
/// program uses them). Waits until the set-aside pins are 2 s old, long after the swap.
fn finish_migration(name: &str) -> usize {
    let dir = pin_dir(name);
    let aside: Vec<PathBuf> = TABLES
        .iter()
        .map(|m| aside_path(&dir, m))
        .filter(|p| p.exists())
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if aside.is_empty()
        || aside
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| now - m.ctime() < 2))
    {
        return 0;
    }
    let mut open: Vec<(&str, Map)> = TABLES
        .iter()
        .filter_map(|t| Some((*t, pinned_map(name, t)?)))
        .collect();
    if open.len() < TABLES.len() {
        return 0;
    }
    let mut tables: Vec<(&str, &mut Map)> = open.iter_mut().map(|(t, m)| (*t, m)).collect();
    let (copied, lost) = migrate(&dir, &mut tables);
    if lost > 0 {
        tracing::warn!(lost, "conntrack entries did not fit the resized tables");
    }
    for p in aside {
        let _ = std::fs::remove_file(p);
    }
    copied
}

/// Why a garbage collection could not run.
#[derive(Debug, thiserror::Error)]
#[error(
    "no conntrack garbage collection: the config map of instance {name} is not pinned (its lifetimes are there)"
)]
pub struct GcError {
    pub name: String,
}

/// Removes the expired conntrack and fragment entries of instance `name`, of both
/// families (the data path already ignores them; this gives their memory back). Returns
/// how many went, per family.
///
/// # Errors
/// When the config map, which holds the lifetimes, is not pinned.
pub fn gc(name: &str) -> Result<Removed, GcError> {
    gc_and_count(name).map(|(removed, _)| removed)
}

/// What the conntrack tables held after a garbage collection, counted on its walk (the
/// agent's metrics: a scrape never walks the tables itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtCount {
    /// The entries left in each table (of [`TABLES`]) that is pinned.
    pub tables: Vec<CtTableCount>,
    /// Live flows, each once as `netplane conntrack` lists them, by (family, kind,
    /// protocol, state): the names `netplane conntrack` prints, lower-case.
    pub flows: std::collections::BTreeMap<FlowClass, u64>,
    /// Unreplied flows that the unreplied table's LRU evicted to make room for newer
    /// ones, since its counters were made, per family ("ipv4", "ipv6"): see
    /// [`unreplied_evicted`].
    pub unreplied_evicted: std::collections::BTreeMap<&'static str, u64>,
}

/// One conntrack table after a garbage collection: its entries and capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtTableCount {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: Option<u64>,
}

/// (family, kind, protocol, state) of a flow, for [`CtCount::flows`].
pub type FlowClass = (&'static str, &'static str, &'static str, &'static str);

/// [`gc`], counting what stays as it walks.
///
/// # Errors
/// When the config map, which holds the lifetimes, is not pinned.
pub(super) fn gc_and_count(name: &str) -> Result<(Removed, CtCount), GcError> {
    let moved = finish_migration(name);
    if moved > 0 {
        tracing::info!(moved, "conntrack entries moved into the resized tables");
    }
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return Err(GcError {
            name: name.to_owned(),
        });
    };
    let mut count = CtCount::default();
    let removed = Removed {
        ipv4: gc_of::<u32>(name, &timeouts, now, &mut count),
        ipv6: gc_of::<Ip6>(name, &timeouts, now, &mut count),
    };
    Ok((removed, count))
}

/// [`gc`] of family `A`'s tables, adding what stays to `count`.
fn gc_of<A: Family>(name: &str, timeouts: &Timeouts, now: Tick, count: &mut CtCount) -> usize
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
    FragKey<A>: aya::Pod,
    FragEntry<A>: aya::Pod,
{
    let mut pass = Pass::default();
    collect::<A>(name, timeouts, now, Walk::Batch, Some(count), &mut pass);
    let mut removed = pass.deleted;
    if let Some(map) = pinned_map(name, A::FRAGS)
        && let Ok(mut frags) = HashMap::<_, FragKey<A>, FragEntry<A>>::try_from(map)
    {
        // A datagram's fragments arrive within moments; the kernel's own reassembly gives
        // up after 30 s (ipfrag_time).
        let expired: Vec<FragKey<A>> = frags
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| ticks_since(now, e.last_seen) > s_to_ticks(30))
            .map(|(k, _)| k)
            .collect();
        removed += expired.iter().filter(|k| frags.remove(k).is_ok()).count();
    }
    removed
}

/// Family `A`'s counters of its unreplied table, summed over CPUs: (inserted, left,
/// collected), see netplane_common::observe::ct_stat. `None` without the counter map.
fn unreplied_stats<A: Family>(name: &str) -> Option<[u64; 3]> {
    let map = pinned_map(name, observe::maps::CT_STATS)?;
    let stats = PerCpuArray::<_, u64>::try_from(map).ok()?;
    let v6 = if A::CT == maps::CT { 0 } else { ct_stat::V6 };
    let sum = |stat: u32| -> u64 {
        stats
            .get(&(stat + v6), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    };
    Some([
        sum(ct_stat::NEW_INSERTED),
        sum(ct_stat::NEW_LEFT),
        sum(ct_stat::NEW_COLLECTED),
    ])
}

/// Adds `n` entries deleted from family `A`'s unreplied table by userspace to its
/// NEW_COLLECTED counter. The programs never write that slot, so a read, modify and write
/// of the first CPU's value loses nothing to them; two collectors at once (the agent, and
/// `up` removing a changed network's flows) may lose one's count, which then shows as
/// evictions until the table's counters are made anew.
fn add_collected<A: Family>(name: &str, n: usize) {
    if n == 0 {
        return;
    }
    let Some(map) = pinned_map(name, observe::maps::CT_STATS) else {
        return;
    };
    let Ok(mut stats) = PerCpuArray::<_, u64>::try_from(map) else {
        return;
    };
    let slot = ct_stat::NEW_COLLECTED + if A::CT == maps::CT { 0 } else { ct_stat::V6 };
    let Ok(values) = stats.get(&slot, 0) else {
        return;
    };
    let mut values: Vec<u64> = values.iter().copied().collect();
    if let Some(first) = values.first_mut() {
        *first += n as u64;
    }
    if let Ok(values) = PerCpuValues::try_from(values) {
        let _ = stats.set(slot, values, 0);
    }
}

/// The unreplied flows that instance `name`'s unreplied conntrack tables evicted (their
/// LRU, full, made room for newer ones), per family ("ipv4", "ipv6"), since their
/// counters were made: what the data path put in, less what it took out (promoted,
/// expired, given up), what userspace deleted, and what is there now. An eviction drops
/// a flow whose reply may still be on its way: the reply then finds no entry.
///
/// The table changes while it is walked: the inserts are read before the walk, what left
/// after it, so that a flow that comes or goes meanwhile makes the count low for this
/// once, never high (a flow promoted mid-walk is in `left`, not taken for an eviction).
pub fn unreplied_evicted(name: &str) -> std::collections::BTreeMap<&'static str, u64> {
    fn of<A: Family>(name: &str) -> Option<u64>
    where
        CtKey<A>: aya::Pod,
        CtEntry<A>: aya::Pod,
    {
        let [inserted, ..] = unreplied_stats::<A>(name)?;
        let data = pinned_map_data(name, A::CT_NEW)?;
        let live = walk::<A>(&data, Walk::Batch, |_, _| {}) as u64;
        let [_, left, collected] = unreplied_stats::<A>(name)?;
        Some(ct_stat::evicted(inserted, left, collected, live))
    }
    [("ipv4", of::<u32>(name)), ("ipv6", of::<Ip6>(name))]
        .into_iter()
        .filter_map(|(f, n)| Some((f, n?)))
        .collect()
}

/// What one collection of conntrack tables saw and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pass {
    seen: usize,
    deleted: usize,
}

/// Removes the expired entries of both of family `A`'s conntrack tables of instance
/// `name`, walked with `how`, adding to `pass`, and what stays to `count`.
fn collect<A: Family>(
    name: &str,
    timeouts: &Timeouts,
    now: Tick,
    how: Walk,
    mut count: Option<&mut CtCount>,
    pass: &mut Pass,
) where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let family = if A::CT == maps::CT { "ipv4" } else { "ipv6" };
    // Inserts counted before the walk, the rest after (see unreplied_evicted).
    let stats = unreplied_stats::<A>(name);
    // The main table, walked first, kept open: a flow caught moving into it is in both
    // tables, and counted once, as `entries_of` lists it. Nothing of the live entries is
    // kept but their tally, and the expired keys of one chunk: the walk's memory does not
    // grow with the table.
    let mut main: Option<HashMap<MapData, CtKey<A>, CtEntry<A>>> = None;
    for map in tables::<A>() {
        let Some(data) = pinned_map_data(name, map) else {
            continue;
        };
        let (mut gone, mut kept, mut deleted) = (Vec::new(), 0, 0);
        pass.seen += walk::<A>(&data, how, |keys, entries| {
            gone.clear();
            for (k, e) in keys.iter().zip(entries) {
                if timeouts.expired(k.proto, e, now) {
                    gone.push(*k);
                    continue;
                }
                kept += 1;
                let Some(count) = count.as_deref_mut() else {
                    continue;
                };
                let moving = !is_main(map) && main.as_ref().is_some_and(|m| m.get(k, 0).is_ok());
                if listed(k, e) && !moving {
                    let class = (
                        family,
                        kind::name(e.kind),
                        proto_name(k.proto),
                        state_name(k.proto, e.seen),
                    );
                    *count.flows.entry(class).or_default() += 1;
                }
            }
            // Behind the walk's cursor: deleting them does not disturb it.
            deleted += delete_keys::<A>(&data, &gone);
        });
        pass.deleted += deleted;
        if !is_main(map) {
            add_collected::<A>(name, deleted);
            if let (Some(count), Some([inserted, ..]), Some([_, left, collected])) =
                (count.as_deref_mut(), stats, unreplied_stats::<A>(name))
            {
                let evicted = ct_stat::evicted(inserted, left, collected, kept);
                count.unreplied_evicted.insert(family, evicted);
            }
        }
        if let Some(count) = count.as_deref_mut() {
            count.tables.push(CtTableCount {
                name: map,
                entries: kept,
                max_entries: data.info().ok().map(|i| u64::from(i.max_entries())),
            });
        }
        if is_main(map) {
            main = Map::from_map_data(data)
                .ok()
                .and_then(|m| HashMap::try_from(m).ok());
        }
    }
}

/// What one garbage collection of the conntrack tables of both families did, and what it
/// cost (the bench's "GC CPU per pass" at 100k and 1M flows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcReport {
    /// Entries walked, expired or not.
    pub seen: usize,
    /// Expired entries removed.
    pub deleted: usize,
    /// Wall-clock time of the pass.
    pub duration: std::time::Duration,
    /// CPU time of the calling thread during the pass (user and system: the batch
    /// syscalls' kernel work included).
    pub cpu: std::time::Duration,
}

/// One garbage collection of instance `name`'s conntrack tables (both families, both
/// tables), as the agent's runs it, walked with `how`: for the bench, which times it,
/// and for tests.
///
/// # Errors
/// When the config map, which holds the lifetimes, is not pinned.
pub fn gc_once(name: &str, how: Walk) -> Result<GcReport, GcError> {
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return Err(GcError {
            name: name.to_owned(),
        });
    };
    let (cpu, wall) = (thread_cpu(), std::time::Instant::now());
    let now = now_tick();
    let mut pass = Pass::default();
    collect::<u32>(name, &timeouts, now, how, None, &mut pass);
    collect::<Ip6>(name, &timeouts, now, how, None, &mut pass);
    Ok(GcReport {
        seen: pass.seen,
        deleted: pass.deleted,
        duration: wall.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu),
    })
}

/// How many entries instance `name`'s IPv4 conntrack tables hold (both tables; a flow
/// caught moving counts twice), walked with `how`: tests compare the two walks.
pub fn ct_walk_count(name: &str, how: Walk) -> usize {
    tables::<u32>()
        .iter()
        .filter_map(|m| pinned_map_data(name, m))
        .map(|data| walk::<u32>(&data, how, |_, _| {}))
        .sum()
}

/// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

/// Test support (the bench's 100k and 1M live flows, and tests/tests/conntrack_scale.rs):
/// writes `n` synthetic assured flows of the first published port into instance `name`'s
/// IPv4 main conntrack table, last seen at `now` (a conntrack tick, see [`now`]), keyed as
/// the data path keys a published flow (its replies' tuple: backend → peer, nat.rs's
/// published_reply_key). Their peers are 198.51.100.0/24 (TEST-NET-2, which no test or
/// bench flow uses) with every source port from 1024 on, so no real flow collides with
/// them; the published address is the uplink's in the pinned config (the backend
/// 0.0.0.0:80 when nothing is published). Written with BPF_MAP_UPDATE_BATCH, over
/// whatever is there. Returns how many were written (fewer when the table is full).
///
/// # Errors
/// When the instance's config or main conntrack table is not pinned.
pub fn fill_synthetic(name: &str, n: usize, now: Tick) -> Result<usize, GcError> {
    let missing = || GcError {
        name: name.to_owned(),
    };
    let cfg = pinned_config(name).ok_or_else(missing)?;
    let data = pinned_map_data(name, maps::CT).ok_or_else(missing)?;
    let (published, backend) = pinned_map(name, maps::PUBLISHED)
        .and_then(|m| {
            HashMap::<_, netplane_common::nat::PortKey, netplane_common::nat::Backend>::try_from(m)
                .ok()?
                .iter()
                .filter_map(Result::ok)
                .next()
        })
        .map_or((80u16.to_be(), (0, 80u16.to_be())), |(k, b)| {
            (k.port, (b.addr, b.port))
        });
    let per_peer = usize::from(u16::MAX - 1024);
    let (mut keys, mut entries) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let peer = std::net::Ipv4Addr::new(198, 51, 100, (1 + i / per_peer) as u8);
        let sport = 1024 + (i % per_peer) as u16;
        keys.push(CtKey::new(
            backend.0,
            u32::from_ne_bytes(peer.octets()),
            backend.1,
            sport.to_be(),
            libc::IPPROTO_TCP as u8,
            Side::Src,
        ));
        entries.push(CtEntry {
            addr: cfg.uplink_addr,
            port: published,
            seen: seen::SYN | seen::ACK | seen::REPLIED,
            kind: kind::PUBLISHED,
            created: now,
            last_seen: now,
            seq: [0; 2],
        });
    }
    let (written, err) = batch::update(&data, &keys, &entries, 0);
    if let Some(e) = err.filter(|e| e.raw_os_error() != Some(libc::E2BIG)) {
        tracing::warn!("filling conntrack table {}: {e}", maps::CT);
    }
    Ok(written)
}

/// The conntrack clock now (CLOCK_MONOTONIC in ticks), for [`fill_synthetic`].
pub fn now() -> Tick {
    now_tick()
}

/// Removes, from both of family `A`'s conntrack tables of instance `name`, the entries
/// `gone` says. Returns how many went.
fn remove_where<A: Family>(name: &str, gone: impl Fn(&CtKey<A>, &CtEntry<A>) -> bool) -> usize
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let mut removed = 0;
    for map in tables::<A>() {
        let Some(data) = pinned_map_data(name, map) else {
            continue;
        };
        let (mut keys, mut deleted) = (Vec::new(), 0);
        walk::<A>(&data, Walk::Batch, |k, e| {
            keys.clear();
            keys.extend(k.iter().zip(e).filter(|(k, e)| gone(k, e)).map(|(k, _)| *k));
            deleted += delete_keys::<A>(&data, &keys);
        });
        if !is_main(map) {
            add_collected::<A>(name, deleted);
        }
        removed += deleted;
    }
    removed
}

/// The prefixes whose tracked flows must go when `plan` replaces `old`, of both
/// families: every address of a network whose subnet, gateway mode or driver changed
/// (its flows were admitted, translated or not, under the old mode: a routed flow would
/// keep coming in after a switch to nat, a masqueraded one would keep reaching a now
/// isolated container), the old address of every container that went away or changed
/// address (a new container may take it), and every routed subnet added or removed. Its
/// flows go as nf_conntrack's would with `conntrack -D`: the next packet of such a flow
/// meets the new rules as a new one.
pub(super) fn stale_prefixes(plan: &Plan, old: &Plan) -> Vec<IpNet> {
    let mut stale = stale_of::<u32>(plan, old);
    stale.extend(stale_of::<Ip6>(plan, old));
    stale
}

/// [`stale_prefixes`] of family `A`.
fn stale_of<A: Family>(plan: &Plan, old: &Plan) -> Vec<IpNet> {
    let mut stale: Vec<IpNet> = old
        .networks
        .iter()
        .filter(|o| {
            plan.network(&o.name).is_none_or(|n| {
                A::subnet(n) != A::subnet(o)
                    || n.gateway_mode != o.gateway_mode
                    || n.driver != o.driver
            })
        })
        .filter_map(|o| Some(net(A::subnet(o)?)))
        .collect();
    stale.extend(
        old.containers
            .iter()
            .filter_map(|o| Some((o, A::container(o)?)))
            .filter(|(o, a)| {
                plan.container(&o.name)
                    .is_none_or(|c| A::container(c) != Some(*a))
            })
            .map(|(_, a)| IpNet::from(a.ip())),
    );
    // A routed subnet added or removed: flows with its hosts were masqueraded, or were
    // not, under the old plan.
    let (now, before) = (A::routes(plan), A::routes(old));
    stale.extend(now.iter().filter(|s| !before.contains(s)).map(|p| net(*p)));
    stale.extend(before.iter().filter(|s| !now.contains(s)).map(|p| net(*p)));
    stale
}

/// Removes, from the conntrack tables of instance `name`, every entry that involves an
/// address of `stale` (the key's addresses, or the address an entry writes). Returns how
/// many went.
pub(super) fn forget(name: &str, stale: &[IpNet]) -> usize {
    if stale.is_empty() {
        return 0;
    }
    forget_of::<u32>(name, stale) + forget_of::<Ip6>(name, stale)
}

/// [`forget`] in family `A`'s tables.
fn forget_of<A: Family>(name: &str, stale: &[IpNet]) -> usize
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    // Only this family's prefixes: a table is walked whole, and may be large.
    let v6 = A::UNSPECIFIED.ip().is_ipv6();
    let stale: Vec<&IpNet> = stale
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
        .collect();
    if stale.is_empty() {
        return 0;
    }
    let hit = |a: A| stale.iter().any(|n| n.contains(&a.ip()));
    remove_where::<A>(name, |k, e| hit(k.saddr) || hit(k.daddr) || hit(e.addr))
}

/// One tracked flow, as `netplane conntrack` shows it: the original tuple, what NAT makes
/// of it, its state and timing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flow {
    pub protocol: &'static str,
    pub kind: &'static str,
    pub original: String,
    pub translated: String,
    pub state: &'static str,
    pub age_s: u64,
    pub expires_in_s: u64,
}

/// Whether entry `e` at `k` is the one that stands for its flow: masquerade and published
/// flows by their only entry, their replies'; hairpin by its original direction's
/// dst-stage entry.
fn listed<A>(k: &CtKey<A>, e: &CtEntry<A>) -> bool {
    e.kind & kind::REPLY == 0 && (e.kind != kind::HAIRPIN || k.stage == Side::Dst as u8)
}

/// A flow's state as the metrics label it: TCP's from the flags seen, `none` for the
/// protocols without.
fn state_name(proto: u8, seen: u8) -> &'static str {
    match (proto, seen) {
        (6, s) if s & (seen::FIN | seen::RST) != 0 => "closing",
        (6, s) if s & seen::ACK != 0 => "established",
        (6, _) => "syn_sent",
        _ => "none",
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    }
}

/// `addr:port`, or `[addr]:port` for IPv6.
fn endpoint<A: Family>(addr: A, port: u16) -> String {
    SocketAddr::new(addr.ip(), u16::from_be(port)).to_string()
}

/// The live flows of instance `name`, of both families, one per original direction.
pub fn flows(name: &str) -> Vec<Flow> {
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return Vec::new();
    };
    let mut flows = flows_of::<u32>(name, &timeouts, now);
    flows.extend(flows_of::<Ip6>(name, &timeouts, now));
    flows.sort_by(|a, b| (a.protocol, &a.original).cmp(&(b.protocol, &b.original)));
    flows
}

/// [`flows`] of family `A`.
fn flows_of<A: Family>(name: &str, timeouts: &Timeouts, now: Tick) -> Vec<Flow>
where
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
{
    let src_stage = Side::Src as u8;
    let entries = entries_of::<A>(name);
    entries
        .iter()
        .filter(|(k, e)| listed(k, e) && !timeouts.expired(k.proto, e, now))
        .map(|(k, e)| {
            let (mut src, mut dst) = (endpoint(k.saddr, k.sport), endpoint(k.daddr, k.dport));
            let translated = if e.kind == kind::PUBLISHED || e.kind == kind::DIRECT {
                // Key: backend → client; entry: the published address (a direct flow's:
                // the container itself).
                (src, dst) = (dst, endpoint(e.addr, e.port));
                format!("{src} → {}", endpoint(k.saddr, k.sport))
            } else if e.kind == kind::MASQUERADE {
                // Key: peer → uplink:port; entry: the container.
                let nat = dst;
                (src, dst) = (endpoint(e.addr, e.port), src);
                format!("{nat} → {dst}")
            } else if e.kind == kind::ROUTED {
                // Key: peer → container (its replies); nothing is translated.
                (src, dst) = (dst, src);
                format!("{src} → {dst}")
            } else {
                // For hairpin, the src-stage entry tells the source the backend sees.
                let nat_src = entries
                    .iter()
                    .find(|(k2, e2)| {
                        k2.stage == src_stage
                            && e2.kind == kind::HAIRPIN
                            && k2.saddr == k.saddr
                            && k2.sport == k.sport
                            && k2.daddr == e.addr
                            && k2.dport == e.port
                            && k2.proto == k.proto
                    })
                    .map(|(_, e2)| endpoint(e2.addr, e2.port))
                    .unwrap_or_else(|| src.clone());
                format!("{nat_src} → {}", endpoint(e.addr, e.port))
            };
            let life = u64::from(timeouts.lifetime_s(k.proto, e.seen));
            Flow {
                protocol: proto_name(k.proto),
                kind: kind::name(e.kind),
                original: format!("{src} → {dst}"),
                translated,
                state: match state_name(k.proto, e.seen) {
                    "syn_sent" => "SYN_SENT",
                    "established" => "ESTABLISHED",
                    "closing" => "CLOSING",
                    _ => "-",
                },
                age_s: ticks_to_s(ticks_since(now, e.created)),
                expires_in_s: life.saturating_sub(ticks_to_s(ticks_since(now, e.last_seen))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::Config;

    fn plan(mode: &str, web_ip: &str) -> Plan {
        Config::parse(
            &format!(
                "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
                 gateway_mode = \"{mode}\"\n[[networks]]\nname = \"npb\"\n\
                 subnet = \"10.89.1.0/24\"\n[[containers]]\nname = \"web\"\n\
                 network = \"npb\"\nip = \"{web_ip}\"\n"
            ),
            "test.toml",
        )
        .and_then(|c| c.plan())
        .expect("plans")
    }

    #[test]
    fn stale_flows_are_those_of_changed_networks_and_containers() {
        let old = plan("nat", "10.89.1.5");
        assert!(stale_prefixes(&old, &old).is_empty(), "nothing changed");
        assert_eq!(
            stale_prefixes(&plan("routed", "10.89.1.5"), &old),
            ["10.89.0.0/24".parse::<IpNet>().expect("net")]
        );
        assert_eq!(
            stale_prefixes(&plan("nat", "10.89.1.6"), &old),
            ["10.89.1.5/32".parse::<IpNet>().expect("net")]
        );
        let mut routed = old.clone();
        routed.routes.push(crate::config::Route {
            subnet: "10.0.2.0/24".parse().expect("net"),
            via: Ipv4Addr::new(192, 0, 2, 12).into(),
        });
        let subnet = ["10.0.2.0/24".parse::<IpNet>().expect("net")];
        assert_eq!(stale_prefixes(&routed, &old), subnet, "a route added");
        assert_eq!(stale_prefixes(&old, &routed), subnet, "a route removed");
        // An IPv6 route's subnet, in the IPv6 tables' prefixes.
        let mut routed6 = old.clone();
        routed6.routes.push(crate::config::Route {
            subnet: "2001:db8:2::/64".parse().expect("net"),
            via: "2001:db8:c0::12".parse().expect("addr"),
        });
        assert_eq!(
            stale_prefixes(&routed6, &old),
            ["2001:db8:2::/64".parse::<IpNet>().expect("net")]
        );
    }

    #[test]
    fn stale_ipv6_flows_are_those_of_changed_ipv6_addresses_and_subnets() {
        let dual = |web_ip6: &str, subnet6: &str| {
            let mut p = plan("nat", "10.89.1.5");
            p.networks[1].subnet6 = Some(subnet6.parse().expect("net"));
            p.containers[0].ip6 = Some(web_ip6.parse().expect("addr"));
            p
        };
        let old = dual("2001:db8:1::5", "2001:db8:1::/64");
        assert!(stale_prefixes(&old, &old).is_empty(), "nothing changed");
        assert_eq!(
            stale_prefixes(&dual("2001:db8:1::6", "2001:db8:1::/64"), &old),
            ["2001:db8:1::5/128".parse::<IpNet>().expect("net")],
            "its IPv6 address alone: its IPv4 flows stay"
        );
        assert_eq!(
            stale_prefixes(&plan("nat", "10.89.1.5"), &old),
            [
                "2001:db8:1::/64".parse::<IpNet>().expect("net"),
                "2001:db8:1::5/128".parse().expect("net")
            ],
            "no longer dual-stack"
        );
    }

    #[test]
    fn ipv6_tables_hold_one_entry_until_a_network_is_dual_stack() {
        let mut p = plan("nat", "10.89.1.5");
        p.conntrack.max_entries = 65_536;
        let v4 = CtCapacity::of(&p);
        assert_eq!(
            TABLES.map(|t| v4.of_table(t)),
            [65_536, 8_192, 1, 1],
            "CT, CT_NEW, CT6, CT6_NEW"
        );
        p.networks[0].subnet6 = Some("2001:db8:1::/64".parse().expect("net"));
        assert_eq!(
            TABLES.map(|t| CtCapacity::of(&p).of_table(t)),
            [65_536, 8_192, 65_536, 8_192]
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let a = super::super::family::ne6("2001:db8::5".parse().expect("addr"));
        assert_eq!(endpoint(a, 80u16.to_be()), "[2001:db8::5]:80");
        assert_eq!(
            endpoint(u32::from_ne_bytes([10, 0, 0, 1]), 80u16.to_be()),
            "10.0.0.1:80"
        );
    }
}
