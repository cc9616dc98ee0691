//! The maps the programs read their settings from, programmed from the plan: the config,
//! the subnets, the host's local addresses, the containers' endpoints and the published
//! ports. And the openers of the pinned maps, which the rest of the module reads.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::Ebpf as AyaEbpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};
use netplane_common::nat::{Backend, DpConfig, Endpoint, NetInfo, PortKey, Timeouts, flags, maps};

use super::object::EbpfError;
use super::pin_dir;
use crate::config::{Container, Plan, PortMapping};
use crate::dataplane::HostContext;
use crate::topology::Link;

/// Addresses and ports as the programs see them: network byte order in memory.
fn ne_addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn ne_port(p: u16) -> u16 {
    p.to_be()
}

/// The maps `up` programs, from a freshly loaded object or from their pins.
pub(super) struct Maps {
    config: Map,
    subnets: Map,
    local_addrs: Map,
    published: Map,
    endpoints: Map,
}

impl Maps {
    /// The maps of a loaded object, taken from it.
    pub(super) fn take(bpf: &mut AyaEbpf) -> Result<Maps, EbpfError> {
        let mut take = |name| bpf.take_map(name).ok_or(EbpfError::MissingMap(name));
        Ok(Maps {
            config: take(maps::CONFIG)?,
            subnets: take(maps::SUBNETS)?,
            local_addrs: take(maps::LOCAL_ADDRS)?,
            published: take(maps::PUBLISHED)?,
            endpoints: take(maps::ENDPOINTS)?,
        })
    }

    /// The maps instance `name` pinned; `None` when one is not there.
    pub(super) fn pinned(name: &str) -> Option<Maps> {
        Some(Maps {
            config: pinned_map(name, maps::CONFIG)?,
            subnets: pinned_map(name, maps::SUBNETS)?,
            local_addrs: pinned_map(name, maps::LOCAL_ADDRS)?,
            published: pinned_map(name, maps::PUBLISHED)?,
            endpoints: pinned_map(name, maps::ENDPOINTS)?,
        })
    }

    /// Writes the plan into the maps: settings, subnets, local addresses, endpoints,
    /// published ports. With the `old` plan those maps were last programmed with, only the
    /// published ports that changed are written (one change costs a syscall or two,
    /// whatever N); without it, the map is synchronised entry by entry.
    pub(super) fn program(
        &mut self,
        plan: &Plan,
        host: &HostContext,
        old: Option<&Plan>,
    ) -> Result<(), EbpfError> {
        let ct = &plan.conntrack;
        let cfg = DpConfig {
            uplink_addr: ne_addr(host.uplink_addr),
            nat_port_min: ct.nat_port_range[0],
            nat_port_max: ct.nat_port_range[1],
            timeouts: Timeouts {
                tcp_syn: ct.tcp_syn_timeout,
                tcp_established: ct.tcp_established_timeout,
                tcp_closing: ct.tcp_closing_timeout,
                udp: ct.udp_timeout,
                icmp: ct.icmp_timeout,
                _pad: 0,
            },
            netns_cookie: crate::netns::cookie().map_err(EbpfError::NetnsCookie)?,
            networks: plan.networks.len() as u32,
            uplink_ifindex: host.uplink_index,
            flags: if plan.ebpf.fast_forward {
                flags::FAST_FORWARD
            } else {
                0
            },
            _pad: 0,
        };
        let mut config: Array<_, DpConfig> =
            Array::try_from(&mut self.config).map_err(EbpfError::map(maps::CONFIG))?;
        config
            .set(0, cfg, 0)
            .map_err(EbpfError::map(maps::CONFIG))?;

        let mut subnets: LpmTrie<_, u32, NetInfo> =
            LpmTrie::try_from(&mut self.subnets).map_err(EbpfError::map(maps::SUBNETS))?;
        // The subnets change only with the networks.
        let same_networks = old.is_some_and(|o| {
            o.networks
                .iter()
                .map(|n| (n.subnet, n.gateway))
                .eq(plan.networks.iter().map(|n| (n.subnet, n.gateway)))
        });
        let old_keys: Vec<Key<u32>> = if same_networks {
            Vec::new()
        } else {
            subnets.keys().filter_map(Result::ok).collect()
        };
        for k in &old_keys {
            let _ = subnets.remove(k);
        }
        for (i, n) in plan.networks.iter().enumerate().filter(|_| !same_networks) {
            let key = Key::new(
                u32::from(n.subnet.prefix_len()),
                ne_addr(n.subnet.network()),
            );
            let info = NetInfo {
                id: i as u32 + 1,
                gateway: ne_addr(n.gateway),
            };
            subnets
                .insert(&key, info, 0)
                .map_err(EbpfError::map(maps::SUBNETS))?;
        }

        sync_map(
            &mut self.local_addrs,
            maps::LOCAL_ADDRS,
            &local_addr_entries(host),
        )?;
        // The containers, for delivery straight into them. Their devices come from the
        // host's links as they are now: a recreated container has a new ifindex.
        let endpoints = plan
            .containers
            .iter()
            .filter_map(|c| Some((ne_addr(c.ip), container_endpoint(c, &host.links)?)))
            .collect();
        sync_map(&mut self.endpoints, maps::ENDPOINTS, &endpoints)?;

        let mut published: HashMap<_, PortKey, Backend> =
            HashMap::try_from(&mut self.published).map_err(EbpfError::map(maps::PUBLISHED))?;
        let (remove, write) = match old.and_then(|old| published_edits(old, plan)) {
            Some(edits) => edits,
            None => {
                let want = published_entries(plan);
                let had: BTreeMap<PortKey, Backend> = match old {
                    Some(old) => published_entries(old),
                    None => published.iter().filter_map(Result::ok).collect(),
                };
                let remove = had
                    .keys()
                    .filter(|k| !want.contains_key(k))
                    .copied()
                    .collect();
                let write = want
                    .into_iter()
                    .filter(|(k, b)| had.get(k) != Some(b))
                    .collect();
                (remove, write)
            }
        };
        for k in &remove {
            let _ = published.remove(k);
        }
        for (k, b) in &write {
            published
                .insert(k, b, 0)
                .map_err(EbpfError::map(maps::PUBLISHED))?;
        }
        Ok(())
    }
}

/// Makes hash map `map` (named `name`) hold exactly `want`: what it has and `want` has not
/// goes, the rest is written.
fn sync_map<K: aya::Pod + Ord, V: aya::Pod>(
    map: &mut Map,
    name: &'static str,
    want: &BTreeMap<K, V>,
) -> Result<(), EbpfError> {
    let mut m: HashMap<_, K, V> = HashMap::try_from(map).map_err(EbpfError::map(name))?;
    let stale: Vec<K> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    for (k, v) in want {
        m.insert(k, v, 0).map_err(EbpfError::map(name))?;
    }
    Ok(())
}

/// Container `c` as the programs deliver to it, from its host veth and its bridge among
/// the host's `links`. None when they are not there or lack an MTU or a MAC: its packets
/// then take the kernel's path.
fn container_endpoint(c: &Container, links: &[Link]) -> Option<Endpoint> {
    let link = |name: &str| links.iter().find(|l| l.name == name);
    let veth = link(&c.host_veth)?;
    Some(Endpoint {
        ifindex: veth.index,
        mtu: veth.mtu?,
        mac: c.mac,
        gateway_mac: link(&c.network)?.mac?,
    })
}

/// The map entries of one publish mapping of container `c`.
fn mapping_entries<'a>(
    plan: &'a Plan,
    c: &'a Container,
    m: &'a PortMapping,
) -> impl Iterator<Item = (PortKey, Backend)> + 'a {
    let gateway = plan
        .network(&c.network)
        .map(|n| ne_addr(n.gateway))
        .unwrap_or_default();
    m.pairs().map(move |(hp, cp)| {
        let key = PortKey {
            addr: m.host_ip.map(ne_addr).unwrap_or(0),
            port: ne_port(hp),
            proto: m.proto.number(),
            _pad: 0,
        };
        (
            key,
            Backend {
                addr: ne_addr(c.ip),
                port: ne_port(cp),
                _pad: 0,
                gateway,
            },
        )
    })
}

/// The published-ports map's entries for `plan`.
fn published_entries(plan: &Plan) -> BTreeMap<PortKey, Backend> {
    plan.containers
        .iter()
        .flat_map(|c| {
            c.publish
                .iter()
                .flat_map(move |m| mapping_entries(plan, c, m))
        })
        .collect()
}

/// Keys to remove from the published-ports map, and entries to write.
type Edits = (Vec<PortKey>, Vec<(PortKey, Backend)>);

/// The edits that turn `old`'s published ports into `plan`'s, found by comparing the
/// mappings in place (a change among thousands costs a comparison each, not an
/// expansion). `None` when the containers or the number of mappings changed: the caller
/// then compares whole maps.
fn published_edits(old: &Plan, plan: &Plan) -> Option<Edits> {
    if old.containers.len() != plan.containers.len() {
        return None;
    }
    let (mut remove, mut write) = (Vec::new(), Vec::new());
    for (o, c) in old.containers.iter().zip(&plan.containers) {
        if (&o.name, o.ip, &o.network, o.publish.len())
            != (&c.name, c.ip, &c.network, c.publish.len())
            || old.network(&o.network).map(|n| n.gateway)
                != plan.network(&c.network).map(|n| n.gateway)
        {
            return None;
        }
        for (a, b) in o.publish.iter().zip(&c.publish).filter(|(a, b)| a != b) {
            remove.extend(mapping_entries(old, o, a).map(|(k, _)| k));
            write.extend(mapping_entries(plan, c, b));
        }
    }
    remove.retain(|k| !write.iter().any(|(w, _)| w == k));
    Some((remove, write))
}

/// The map `map` that instance `name` pinned.
pub(super) fn pinned_map_data(name: &str, map: &str) -> Option<MapData> {
    MapData::from_pin(pin_dir(name).join(map)).ok()
}

/// Opens a map pinned by instance `name`.
pub(super) fn pinned_map(name: &str, map: &str) -> Option<Map> {
    Map::from_map_data(pinned_map_data(name, map)?).ok()
}

/// The settings the programs of instance `name` run with (its pinned config map).
pub(super) fn pinned_config(name: &str) -> Option<DpConfig> {
    let map = pinned_map(name, maps::CONFIG)?;
    Array::<_, DpConfig>::try_from(map).ok()?.get(&0, 0).ok()
}

/// Points instance `name`'s programs at the uplink as the host has it now (the agent's job
/// when an address or a link changes under the data plane): the masquerade address and the
/// uplink's index in the config, and the local addresses that published ports answer on.
/// Only what differs is written; the rest of the config stays as `up` wrote it. Returns a
/// line per change.
pub(super) fn follow_uplink(name: &str, host: &HostContext) -> Result<Vec<String>, EbpfError> {
    let mut changes = Vec::new();
    let mut map = pinned_map(name, maps::CONFIG).ok_or(EbpfError::MissingMap(maps::CONFIG))?;
    let mut config: Array<_, DpConfig> =
        Array::try_from(&mut map).map_err(EbpfError::map(maps::CONFIG))?;
    let mut cfg = config.get(&0, 0).map_err(EbpfError::map(maps::CONFIG))?;
    let (addr, index) = (ne_addr(host.uplink_addr), host.uplink_index);
    if (cfg.uplink_addr, cfg.uplink_ifindex) != (addr, index) {
        changes.push(format!(
            "masquerade to {} on {} (index {index})",
            host.uplink_addr, host.uplink
        ));
        (cfg.uplink_addr, cfg.uplink_ifindex) = (addr, index);
        config
            .set(0, cfg, 0)
            .map_err(EbpfError::map(maps::CONFIG))?;
    }
    let want = local_addr_entries(host);
    let mut local =
        pinned_map(name, maps::LOCAL_ADDRS).ok_or(EbpfError::MissingMap(maps::LOCAL_ADDRS))?;
    let mut had: Vec<u32> = HashMap::<_, u32, u32>::try_from(&local)
        .map_err(EbpfError::map(maps::LOCAL_ADDRS))?
        .keys()
        .filter_map(Result::ok)
        .collect();
    had.sort_unstable();
    if !had.iter().eq(want.keys()) {
        changes.push("local addresses".to_owned());
        sync_map(&mut local, maps::LOCAL_ADDRS, &want)?;
    }
    Ok(changes)
}

/// The local-addresses map's entries for `host`: every host address, the gateways and
/// 127.0.0.1 (published ports answer on all of them).
fn local_addr_entries(host: &HostContext) -> BTreeMap<u32, u32> {
    host.local_addrs
        .iter()
        .copied()
        .chain([Ipv4Addr::LOCALHOST])
        .map(|a| (ne_addr(a), 1u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn plan(publish: &str) -> Plan {
        let text = format!(
            "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n[[containers]]\nname = \"web\"\nnetwork = \"npa\"\npublish = [{publish}]\n"
        );
        Config::parse(&text, "test").unwrap().plan().unwrap()
    }

    #[test]
    fn one_changed_mapping_is_one_edit() {
        let old = plan("\"8080:80\", \"8081:81\", \"9000-9001:7000-7001\"");
        let new = plan("\"8080:80\", \"8082:81\", \"9000-9001:7000-7001\"");
        let (remove, write) = published_edits(&old, &new).expect("same containers");
        assert_eq!(
            remove
                .iter()
                .map(|k| u16::from_be(k.port))
                .collect::<Vec<_>>(),
            [8081]
        );
        assert_eq!(
            write
                .iter()
                .map(|(k, _)| u16::from_be(k.port))
                .collect::<Vec<_>>(),
            [8082]
        );
        // The edits agree with comparing whole maps.
        let (a, b) = (published_entries(&old), published_entries(&new));
        assert!(a.keys().filter(|k| !b.contains_key(k)).eq(remove.iter()));
    }

    #[test]
    fn a_new_backend_port_rewrites_without_removing() {
        let (remove, write) = published_edits(&plan("\"8080:80\""), &plan("\"8080:90\"")).unwrap();
        assert!(remove.is_empty(), "the key stays; its value changes");
        assert_eq!(u16::from_be(write[0].1.port), 90);
        assert!(published_edits(&plan("\"8080:80\""), &plan("\"8080:80\", \"8081:81\"")).is_none());
    }
}
