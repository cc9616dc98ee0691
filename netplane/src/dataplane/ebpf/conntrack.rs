//! The BPF conntrack tables from userspace: the flows `netplane conntrack` lists, the
//! garbage collection the agent runs, what an entry costs the kernel, and resizing them
//! (`[conntrack] max_entries` changed) with their live entries.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapType};
use ipnet::Ipv4Net;
use netplane_common::nat::{
    CtEntry, CtKey, CtTables, DpConfig, FragEntry, FragKey, Side, Tick, kind, maps, s_to_ticks,
    seen, tick, ticks_since, ticks_to_s,
};

use super::maps::{pinned_config, pinned_map, pinned_map_data};
use super::object::EbpfError;
use super::pin_dir;
use crate::config::Plan;

/// The conntrack tables: the main one and the unreplied flows' (see
/// netplane_common::nat::CtTables), in the order lookups take.
const TABLES: [&str; 2] = [maps::CT, maps::CT_NEW];

/// CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns()) in conntrack ticks.
fn now_tick() -> Tick {
    let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    tick(ns)
}

/// The entries of conntrack table `map` (one of [`TABLES`]) of instance `name`.
fn table_entries(name: &str, map: &str) -> Vec<(CtKey, CtEntry)> {
    pinned_map(name, map)
        .and_then(|m| HashMap::<_, CtKey, CtEntry>::try_from(m).ok())
        .map(|ct| ct.iter().filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// The conntrack entries of instance `name`, of both tables; an entry caught moving into
/// the main table, in both, is listed once.
pub fn conntrack_entries(name: &str) -> Vec<(CtKey, CtEntry)> {
    let mut entries = table_entries(name, maps::CT);
    let main: std::collections::HashSet<CtKey> = entries.iter().map(|(k, _)| *k).collect();
    entries.extend(
        table_entries(name, maps::CT_NEW)
            .into_iter()
            .filter(|(k, _)| !main.contains(k)),
    );
    entries
}

/// Kernel memory per tracked flow of instance `name`: what the kernel charges for both
/// conntrack tables (`memlock` in /proc/self/fdinfo) over the main table's capacity.
pub fn ct_bytes_per_entry(name: &str) -> Option<f64> {
    use std::os::fd::{AsFd, AsRawFd};
    let field = |map: &str, k: &str| -> Option<f64> {
        let data = pinned_map_data(name, map)?;
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<f64>().ok())
    };
    let memlock = field(maps::CT, "memlock:")? + field(maps::CT_NEW, "memlock:")?;
    Some(memlock / field(maps::CT, "max_entries:")?)
}

/// What a conntrack table is in the kernel: its type, capacity and flags.
#[derive(Debug, PartialEq)]
struct Shape {
    map_type: MapType,
    max_entries: u32,
    flags: u32,
}

/// The shape `up` wants conntrack table `map` to have for `[conntrack] max_entries`
/// (netplane-ebpf's maps.rs defines them).
fn wanted_shape(map: &str, max_entries: u32) -> Shape {
    if map == maps::CT {
        Shape {
            map_type: MapType::Hash,
            max_entries,
            flags: 0,
        }
    } else {
        Shape {
            map_type: MapType::LruHash,
            max_entries: CtTables::unreplied_entries(max_entries),
            flags: 0,
        }
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

/// Whether instance `name`'s pinned conntrack tables have the shape `max_entries` wants
/// (a map's size is fixed at creation: another size needs new maps, see [`set_aside`]).
pub(super) fn ct_sized_as(name: &str, max_entries: u32) -> bool {
    TABLES.iter().all(|m| {
        pinned_map_data(name, m).and_then(|d| shape(&d)) == Some(wanted_shape(m, max_entries))
    })
}

/// What `up` will say of instance `name`'s conntrack tables for `max_entries`: that they
/// are resized (with their entries), when pinned ones have another size or shape.
pub(super) fn ct_resize(name: &str, max_entries: u32) -> Option<String> {
    let had = shape(&pinned_map_data(name, maps::CT)?)?;
    (!ct_sized_as(name, max_entries)).then(|| {
        if had.max_entries == max_entries {
            // Same size, another map type or flags: the layout of an older netplane.
            "conntrack tables rebuilt in this version's layout, their flows kept".to_owned()
        } else {
            format!(
                "conntrack table resized from {} to {max_entries} entries, its flows kept",
                had.max_entries
            )
        }
    })
}

/// Where a conntrack table set aside for a resize stays pinned until its entries moved
/// (`<map>_OLD`: bpffs refuses names with a dot, bpf_lookup()).
fn aside_path(dir: &Path, map: &str) -> PathBuf {
    dir.join(format!("{map}_OLD"))
}

/// Before a load with the pins of `dir`: moves aside (renames to `<map>_OLD`) each pinned
/// conntrack table whose shape is not what `max_entries` wants, so that the load creates
/// it anew (aya reuses a pin without comparing its shape). The programs still attached
/// keep using the old tables until `up` swaps them; [`migrate`] then copies their entries.
/// Returns the tables set aside.
pub(super) fn set_aside(dir: &Path, max_entries: u32) -> Result<Vec<&'static str>, EbpfError> {
    let mut moved = Vec::new();
    for map in TABLES {
        let pin = dir.join(map);
        let Ok(data) = MapData::from_pin(&pin) else {
            continue;
        };
        if shape(&data) == Some(wanted_shape(map, max_entries)) {
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

/// Copies the entries of the conntrack tables set aside in `dir` into `tables` (the new
/// main and unreplied tables, by name), each into the table it came from, or among the
/// unreplied flows when the main table is full; an entry already there is left as it is
/// (the programs keep it current). Returns (entries copied, entries lost for lack of room).
fn copy_aside(dir: &Path, tables: &mut [(&str, &mut Map)]) -> (usize, usize) {
    const NOEXIST: u64 = 1; // BPF_NOEXIST
    let (mut copied, mut lost) = (0, 0);
    for from in TABLES {
        let Some(old) = MapData::from_pin(aside_path(dir, from))
            .ok()
            .and_then(|d| Map::from_map_data(d).ok())
        else {
            continue;
        };
        for (k, e) in old_entries(old) {
            let mut stored = false;
            // The main table's entries go back into it; when it is full, and for the
            // unreplied ones, into the unreplied table.
            for (to, map) in tables.iter_mut() {
                if (from == maps::CT_NEW && *to == maps::CT) || stored {
                    continue;
                }
                let Ok(mut new) = HashMap::<_, CtKey, CtEntry>::try_from(&mut **map) else {
                    continue;
                };
                match new.insert(k, e, NOEXIST) {
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

/// The entries of a conntrack table set aside, also in the 16-byte layout of an instance
/// started by an earlier netplane (no [`CtEntry::seq`], which then starts unknown, as in a
/// new entry): an upgrade keeps the flows too.
fn old_entries(old: Map) -> Vec<(CtKey, CtEntry)> {
    if let Ok(ct) = HashMap::<_, CtKey, CtEntry>::try_from(&old) {
        return ct.iter().filter_map(Result::ok).collect();
    }
    let Ok(ct) = HashMap::<_, CtKey, [u8; 16]>::try_from(&old) else {
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
/// (`tables`, by name, the main table first), right after they were created.
pub(super) fn migrate(dir: &Path, tables: &mut [(&str, &mut Map)]) -> (usize, usize) {
    tables.sort_by_key(|(name, _)| *name != maps::CT);
    copy_aside(dir, tables)
}

/// Finishes a resize of instance `name`'s conntrack tables, from the agent: the entries
/// the old programs created in the tables set aside between `up`'s first copy and its
/// swap of the programs are copied too, and the old tables unpinned (freed once no
/// program uses them). Waits until the set-aside pin is 2 s old, long after the swap.
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
    let (Some(mut ct), Some(mut ct_new)) =
        (pinned_map(name, maps::CT), pinned_map(name, maps::CT_NEW))
    else {
        return 0;
    };
    let (copied, lost) = migrate(
        &dir,
        &mut [(maps::CT, &mut ct), (maps::CT_NEW, &mut ct_new)],
    );
    if lost > 0 {
        tracing::warn!(lost, "conntrack entries did not fit the resized tables");
    }
    for p in aside {
        let _ = std::fs::remove_file(p);
    }
    copied
}

/// Removes the expired conntrack and fragment entries of instance `name` (the data path
/// already ignores them; this gives their memory back). Returns how many went.
pub fn gc(name: &str) -> usize {
    let moved = finish_migration(name);
    if moved > 0 {
        tracing::info!(moved, "conntrack entries moved into the resized tables");
    }
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return 0;
    };
    let mut removed = 0;
    for map in TABLES {
        let Some(Ok(mut ct)) = pinned_map(name, map).map(HashMap::<_, CtKey, CtEntry>::try_from)
        else {
            continue;
        };
        let expired: Vec<CtKey> = ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| timeouts.expired(k.proto, e, now))
            .map(|(k, _)| k)
            .collect();
        removed += expired.iter().filter(|k| ct.remove(k).is_ok()).count();
    }
    if let Some(map) = pinned_map(name, maps::FRAGS)
        && let Ok(mut frags) = HashMap::<_, FragKey, FragEntry>::try_from(map)
    {
        // A datagram's fragments arrive within moments; the kernel's own reassembly gives
        // up after 30 s (ipfrag_time).
        let expired: Vec<FragKey> = frags
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| ticks_since(now, e.last_seen) > s_to_ticks(30))
            .map(|(k, _)| k)
            .collect();
        removed += expired.iter().filter(|k| frags.remove(k).is_ok()).count();
    }
    removed
}

/// The container addresses whose tracked flows must go when `plan` replaces `old`: every
/// address of a network whose gateway mode or driver changed (its flows were admitted,
/// translated or not, under the old mode: a routed flow would keep coming in after a
/// switch to nat, a masqueraded one would keep reaching a now isolated container), and
/// the old address of every container that went away or changed address (a new container
/// may take it), and every routed subnet added or removed. Its flows go as nf_conntrack's would with `conntrack -D`: the next packet
/// of such a flow meets the new rules as a new one.
pub(super) fn stale_prefixes(plan: &Plan, old: &Plan) -> Vec<Ipv4Net> {
    let mut stale: Vec<Ipv4Net> = old
        .networks
        .iter()
        .filter(|o| {
            plan.network(&o.name).is_none_or(|n| {
                n.subnet != o.subnet || n.gateway_mode != o.gateway_mode || n.driver != o.driver
            })
        })
        .map(|o| o.subnet)
        .collect();
    stale.extend(
        old.containers
            .iter()
            .filter(|o| plan.container(&o.name).is_none_or(|c| c.ip != o.ip))
            .map(|o| Ipv4Net::from(o.ip)),
    );
    // A routed subnet added or removed: flows with its hosts were masqueraded, or were
    // not, under the old plan.
    let routed = |p: &Plan| p.routes.iter().map(|r| r.subnet).collect::<Vec<_>>();
    let (now, before) = (routed(plan), routed(old));
    stale.extend(now.iter().filter(|s| !before.contains(s)));
    stale.extend(before.iter().filter(|s| !now.contains(s)));
    stale
}

/// Removes, from both conntrack tables of instance `name`, every entry that involves an
/// address of `stale` (the key's addresses, or the address an entry writes). Returns how
/// many went.
pub(super) fn forget(name: &str, stale: &[Ipv4Net]) -> usize {
    if stale.is_empty() {
        return 0;
    }
    let hit = |a: u32| {
        let ip = Ipv4Addr::from(a.to_ne_bytes());
        stale.iter().any(|n| n.contains(&ip))
    };
    let mut removed = 0;
    for map in TABLES {
        let Some(Ok(mut ct)) = pinned_map(name, map).map(HashMap::<_, CtKey, CtEntry>::try_from)
        else {
            continue;
        };
        let gone: Vec<CtKey> = ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| hit(k.saddr) || hit(k.daddr) || hit(e.addr))
            .map(|(k, _)| k)
            .collect();
        removed += gone.iter().filter(|k| ct.remove(k).is_ok()).count();
    }
    removed
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

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    }
}

fn endpoint(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(addr.to_ne_bytes()),
        u16::from_be(port)
    )
}

/// The live flows of instance `name`, one per original direction.
pub fn flows(name: &str) -> Vec<Flow> {
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return Vec::new();
    };
    let (dst_stage, src_stage) = (Side::Dst as u8, Side::Src as u8);
    let entries = conntrack_entries(name);
    let mut flows: Vec<Flow> = entries
        .iter()
        .filter(|(k, e)| e.kind & kind::REPLY == 0 && !timeouts.expired(k.proto, e, now))
        // Each flow once: masquerade and published flows by their only entry, their
        // replies'; hairpin by its original direction's dst-stage entry.
        .filter(|(k, e)| e.kind != kind::HAIRPIN || k.stage == dst_stage)
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
            let state = match (k.proto, e.seen) {
                (6, s) if s & (seen::FIN | seen::RST) != 0 => "CLOSING",
                (6, s) if s & seen::ACK != 0 => "ESTABLISHED",
                (6, _) => "SYN_SENT",
                _ => "-",
            };
            let life = u64::from(timeouts.lifetime_s(k.proto, e.seen));
            Flow {
                protocol: proto_name(k.proto),
                kind: match e.kind {
                    kind::MASQUERADE => "masquerade",
                    kind::PUBLISHED => "published",
                    kind::ROUTED => "routed",
                    kind::DIRECT => "direct",
                    _ => "hairpin",
                },
                original: format!("{src} → {dst}"),
                translated,
                state,
                age_s: ticks_to_s(ticks_since(now, e.created)),
                expires_in_s: life.saturating_sub(ticks_to_s(ticks_since(now, e.last_seen))),
            }
        })
        .collect();
    flows.sort_by(|a, b| (a.protocol, &a.original).cmp(&(b.protocol, &b.original)));
    flows
}

#[cfg(test)]
mod tests {
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
            ["10.89.0.0/24".parse::<Ipv4Net>().expect("net")]
        );
        assert_eq!(
            stale_prefixes(&plan("nat", "10.89.1.6"), &old),
            ["10.89.1.5/32".parse::<Ipv4Net>().expect("net")]
        );
        let mut routed = old.clone();
        routed.routes.push(crate::config::Route {
            subnet: "10.0.2.0/24".parse().expect("net"),
            via: Ipv4Addr::new(192, 0, 2, 12),
        });
        let subnet = ["10.0.2.0/24".parse::<Ipv4Net>().expect("net")];
        assert_eq!(stale_prefixes(&routed, &old), subnet, "a route added");
        assert_eq!(stale_prefixes(&old, &routed), subnet, "a route removed");
    }
}
