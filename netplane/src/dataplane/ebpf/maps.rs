//! The maps the programs read their settings from, programmed from the plan: the config,
//! the subnets (with their gateway modes), the never-NAT prefixes (`[[routes]]`), the
//! host's local addresses, the containers' endpoints, the published ports and the
//! container ports that `routed` networks open. And the openers of the pinned maps, which
//! the rest of the module reads.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::Ebpf as AyaEbpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};
use netplane_common::nat::{
    Backend, DpConfig, Endpoint, NetInfo, PortKey, Timeouts, flags, gateway_mode, maps,
};

use super::object::EbpfError;
use super::pin_dir;
use crate::config::{Container, Driver, GatewayMode, Network, Plan, PortMapping};
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
    never_nat: Map,
    routed_ports: Map,
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
            never_nat: take(maps::NEVER_NAT)?,
            routed_ports: take(maps::ROUTED_PORTS)?,
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
            never_nat: pinned_map(name, maps::NEVER_NAT)?,
            routed_ports: pinned_map(name, maps::ROUTED_PORTS)?,
        })
    }

    /// Writes the plan into the maps: settings, subnets, never-NAT prefixes, local
    /// addresses, endpoints, published ports, routed networks' open ports. With the `old`
    /// plan those maps were last programmed with, only the published ports, open ports and
    /// prefixes that changed are written (one change costs a syscall or two, whatever N);
    /// without it, each map is synchronised entry by entry.
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
            flags: config_flags(plan),
            _pad: 0,
        };
        // The config's flags and network count only switch lookups on (netplane_common's
        // `flags`): one that is on with nothing to find costs a lookup, one that is off
        // while the entries it is for exist lets their packets through unchecked (an
        // isolated network open). So while the maps change, the config says the union of
        // what it said and what it will say, and what is no longer needed goes off last.
        let mut config: Array<_, DpConfig> =
            Array::try_from(&mut self.config).map_err(EbpfError::map(maps::CONFIG))?;
        let was = config.get(&0, 0).map_err(EbpfError::map(maps::CONFIG))?;
        let during = DpConfig {
            networks: cfg.networks.max(was.networks),
            flags: cfg.flags | (was.flags & !flags::FAST_FORWARD),
            ..cfg
        };
        config
            .set(0, during, 0)
            .map_err(EbpfError::map(maps::CONFIG))?;

        let mut subnets: LpmTrie<_, u32, NetInfo> =
            LpmTrie::try_from(&mut self.subnets).map_err(EbpfError::map(maps::SUBNETS))?;
        // The subnets change only with the networks. Written in place: every wanted key is
        // overwritten first (an update replaces its value atomically), then the keys no
        // longer wanted go, so that no lookup finds a network missing meanwhile. The ids
        // come from the subnets, not from the networks' order, so that two networks never
        // share one on the way either.
        let same_networks = old.is_some_and(|o| {
            o.networks
                .iter()
                .map(|n| (n.subnet, n.gateway, n.gateway_mode))
                .eq(plan
                    .networks
                    .iter()
                    .map(|n| (n.subnet, n.gateway, n.gateway_mode)))
        });
        if !same_networks {
            let want = subnet_entries(plan);
            let had: BTreeMap<(u32, u32), NetInfo> = subnets
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| ((k.prefix_len(), k.data()), v))
                .collect();
            for (&(prefix_len, addr), info) in &want {
                if had.get(&(prefix_len, addr)) != Some(info) {
                    subnets
                        .insert(&Key::new(prefix_len, addr), *info, 0)
                        .map_err(EbpfError::map(maps::SUBNETS))?;
                }
            }
            for &(prefix_len, addr) in had.keys().filter(|k| !want.contains_key(k)) {
                let _ = subnets.remove(&Key::new(prefix_len, addr));
            }
        }

        // [[routes]]: few, and written only when they changed.
        let mut never_nat: LpmTrie<_, u32, u32> =
            LpmTrie::try_from(&mut self.never_nat).map_err(EbpfError::map(maps::NEVER_NAT))?;
        let want: BTreeMap<(u32, u32), ()> = never_nat_entries(plan);
        let had: BTreeMap<(u32, u32), ()> = match old {
            Some(old) => never_nat_entries(old),
            None => never_nat
                .keys()
                .filter_map(Result::ok)
                .map(|k| ((k.prefix_len(), k.data()), ()))
                .collect(),
        };
        for (prefix_len, addr) in had.keys().filter(|k| !want.contains_key(k)) {
            let _ = never_nat.remove(&Key::new(*prefix_len, *addr));
        }
        for (prefix_len, addr) in want.keys().filter(|k| !had.contains_key(k)) {
            never_nat
                .insert(&Key::new(*prefix_len, *addr), 1, 0)
                .map_err(EbpfError::map(maps::NEVER_NAT))?;
        }

        sync_map(
            &mut self.local_addrs,
            maps::LOCAL_ADDRS,
            &local_addr_entries(host),
        )?;
        // The containers, for delivery straight into them. Their devices come from the
        // host's links as they are now: a recreated container has a new ifindex.
        let endpoint = |c: &Container| {
            let driver = plan.network(&c.network)?.driver;
            container_endpoint(c, driver, &host.links)
        };
        match (&host.touched, old) {
            // A scoped converge: the touched containers' entries, and those of the
            // containers that left the plan; the others are as the last `up` wrote them.
            (Some(touched), Some(old)) => {
                let mut m: HashMap<_, u32, Endpoint> = HashMap::try_from(&mut self.endpoints)
                    .map_err(EbpfError::map(maps::ENDPOINTS))?;
                for o in &old.containers {
                    if plan.container(&o.name).is_none_or(|c| c.ip != o.ip) {
                        let _ = m.remove(&ne_addr(o.ip));
                    }
                }
                for c in plan.containers.iter().filter(|c| touched.contains(&c.name)) {
                    match endpoint(c) {
                        Some(e) => m
                            .insert(ne_addr(c.ip), e, 0)
                            .map_err(EbpfError::map(maps::ENDPOINTS))?,
                        None => {
                            let _ = m.remove(&ne_addr(c.ip));
                        }
                    }
                }
            }
            _ => {
                let endpoints = plan
                    .containers
                    .iter()
                    .filter_map(|c| Some((ne_addr(c.ip), endpoint(c)?)))
                    .collect();
                sync_map(&mut self.endpoints, maps::ENDPOINTS, &endpoints)?;
            }
        }

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

        // The routed networks' open container ports: against the old plan's when there is
        // one (a map of thousands is not read back on every `up`), else against the map.
        let mut open: HashMap<_, PortKey, u32> = HashMap::try_from(&mut self.routed_ports)
            .map_err(EbpfError::map(maps::ROUTED_PORTS))?;
        let want = routed_port_entries(plan);
        let had: BTreeMap<PortKey, u32> = match old {
            Some(old) => routed_port_entries(old),
            None => open.iter().filter_map(Result::ok).collect(),
        };
        for k in had.keys().filter(|k| !want.contains_key(k)) {
            let _ = open.remove(k);
        }
        for (k, v) in want.iter().filter(|(k, _)| !had.contains_key(k)) {
            open.insert(k, v, 0)
                .map_err(EbpfError::map(maps::ROUTED_PORTS))?;
        }

        // Every map says the plan now: the switches it no longer needs go off.
        if during != cfg {
            let mut config: Array<_, DpConfig> =
                Array::try_from(&mut self.config).map_err(EbpfError::map(maps::CONFIG))?;
            config
                .set(0, cfg, 0)
                .map_err(EbpfError::map(maps::CONFIG))?;
        }
        Ok(())
    }
}

/// The subnet trie's entries for `plan`: (prefix length, network address) → its network.
/// A network's id is its network address (host order) with the lowest bit set: unique,
/// as subnets do not overlap and are /30 at most (two low bits of host part), never 0
/// (no network), and the same on every `up` while the subnet stays.
fn subnet_entries(plan: &Plan) -> BTreeMap<(u32, u32), NetInfo> {
    plan.networks
        .iter()
        .map(|n| {
            let key = (
                u32::from(n.subnet.prefix_len()),
                ne_addr(n.subnet.network()),
            );
            let info = NetInfo {
                id: u32::from(n.subnet.network()) | 1,
                gateway: ne_addr(n.gateway),
                mode: mode_of(n),
                _pad: [0; 3],
            };
            (key, info)
        })
        .collect()
}

/// The programs' switches for `plan` ([`flags`]): what the config makes worth a lookup.
fn config_flags(plan: &Plan) -> u32 {
    let mut f = 0;
    if plan.ebpf.fast_forward {
        f |= flags::FAST_FORWARD;
    }
    if plan.networks.iter().any(|n| !n.gateway_mode.nat()) {
        f |= flags::MODES;
    }
    if plan.networks.iter().any(|n| n.driver == Driver::Ptp) {
        f |= flags::PTP;
    }
    if !plan.routes.is_empty() {
        f |= flags::ROUTES;
    }
    if plan
        .networks
        .iter()
        .any(|n| n.gateway_mode == GatewayMode::Isolated)
    {
        f |= flags::ISOLATED;
    }
    f
}

/// Network `n`'s gateway mode, as the programs know it.
fn mode_of(n: &Network) -> u8 {
    match n.gateway_mode {
        GatewayMode::Nat => gateway_mode::NAT,
        GatewayMode::NatUnprotected => gateway_mode::NAT_UNPROTECTED,
        GatewayMode::Routed => gateway_mode::ROUTED,
        GatewayMode::Isolated => gateway_mode::ISOLATED,
    }
}

/// The never-NAT trie's keys for `plan` (prefix length, network address), its routes'
/// subnets.
fn never_nat_entries(plan: &Plan) -> BTreeMap<(u32, u32), ()> {
    plan.routes
        .iter()
        .map(|r| {
            (
                (
                    u32::from(r.subnet.prefix_len()),
                    ne_addr(r.subnet.network()),
                ),
                (),
            )
        })
        .collect()
}

/// The open-ports map's entries for `plan`: every container port that the publish entries
/// of a `routed` network's containers name (ranges expanded; the host ports are ignored,
/// as Docker ignores them).
fn routed_port_entries(plan: &Plan) -> BTreeMap<PortKey, u32> {
    plan.containers
        .iter()
        .filter(|c| {
            plan.network(&c.network)
                .is_some_and(|n| n.gateway_mode == GatewayMode::Routed)
        })
        .flat_map(|c| {
            c.publish.iter().flat_map(move |m| {
                (0..m.count).map(move |i| {
                    let key = PortKey {
                        addr: ne_addr(c.ip),
                        port: ne_port(m.container_port + i),
                        proto: m.proto.number(),
                        _pad: 0,
                    };
                    (key, 1u32)
                })
            })
        })
        .collect()
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

/// Container `c` (on a network of driver `driver`) as the programs deliver to it, from its
/// host veth and its bridge among the host's `links`. None when they are not there or lack
/// an MTU or a MAC: its packets then take the kernel's path.
fn container_endpoint(c: &Container, driver: Driver, links: &[Link]) -> Option<Endpoint> {
    let link = |name: &str| links.iter().find(|l| l.name == name);
    let veth = link(&c.host_veth)?;
    // What the host sends a container comes from its gateway's MAC: the bridge's, or on
    // ptp the host veth's own (where the gateway address is, and what the container's
    // ARP for the gateway learned).
    let gateway = match driver {
        Driver::Bridge => link(&c.network)?,
        Driver::Ptp => veth,
    };
    Some(Endpoint {
        ifindex: veth.index,
        mtu: veth.mtu?,
        mac: c.mac,
        gateway_mac: gateway.mac?,
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
    // The IPv4 published-ports map: a mapping on IPv6 host addresses only has no entry.
    m.pairs().filter(|_| m.on_v4()).map(move |(hp, cp)| {
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

/// Whether container `c`'s publish entries are DNATed host ports: on a `nat` network.
/// (A `routed` network's name container ports open to direct routing instead, see
/// [`routed_port_entries`]; an `isolated` one has none.)
fn publishes_host_ports(plan: &Plan, c: &Container) -> bool {
    plan.network(&c.network)
        .is_some_and(|n| n.gateway_mode.nat())
}

/// The published-ports map's entries for `plan`.
fn published_entries(plan: &Plan) -> BTreeMap<PortKey, Backend> {
    plan.containers
        .iter()
        .filter(|c| publishes_host_ports(plan, c))
        .flat_map(|c| {
            c.publish
                .iter()
                .flat_map(move |m| mapping_entries(plan, c, m))
        })
        .collect()
}

/// The published ports of container `c` that the pinned published-ports map does not
/// send to it, one line each (CNI's CHECK).
pub(super) fn missing_ports(plan: &Plan, c: &Container) -> Vec<String> {
    if !publishes_host_ports(plan, c) || c.publish.is_empty() {
        return Vec::new();
    }
    let map = pinned_map(&plan.name, maps::PUBLISHED).map(HashMap::<_, PortKey, Backend>::try_from);
    let Some(Ok(map)) = map else {
        return vec![format!(
            "the published-ports map of {} is not pinned",
            plan.name
        )];
    };
    c.publish
        .iter()
        .filter(|m| mapping_entries(plan, c, m).any(|(k, b)| map.get(&k, 0).ok() != Some(b)))
        .map(|m| {
            format!(
                "published port {}: not in the eBPF published-ports map",
                m.spec
            )
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
            || old.network(&o.network).map(|n| (n.gateway, n.gateway_mode))
                != plan
                    .network(&c.network)
                    .map(|n| (n.gateway, n.gateway_mode))
        {
            return None;
        }
        if !publishes_host_ports(plan, c) {
            continue;
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
    local_addrs(host)
        .chain([Ipv4Addr::LOCALHOST])
        .map(|a| (ne_addr(a), 1u32))
        .collect()
}

/// The host's addresses as the programs know them (`HostContext::from_host` leaves out an
/// isolated network's gateway, which the host does not carry).
pub(super) fn local_addrs(host: &HostContext) -> impl Iterator<Item = Ipv4Addr> + '_ {
    host.local_addrs.iter().copied()
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

    /// A routed ptp network and an isolated one beside the nat network of [`plan`], and a
    /// route.
    fn modes(mode: &str) -> Plan {
        let text = format!(
            r#"
            [[networks]]
            name = "npa"
            subnet = "10.89.0.0/24"
            [[networks]]
            name = "npr"
            subnet = "10.89.2.0/24"
            driver = "ptp"
            gateway_mode = "{mode}"
            [[networks]]
            name = "npi"
            subnet = "10.89.3.0/24"
            gateway_mode = "isolated"
            [[containers]]
            name = "web"
            network = "npa"
            publish = ["8080:80"]
            [[containers]]
            name = "srv"
            network = "npr"
            publish = ["8081:80", "9000-9002:7000-7002/udp"]
            [[routes]]
            subnet = "10.90.0.0/24"
            via = "203.0.113.12"
            "#
        );
        Config::parse(&text, "test").unwrap().plan().unwrap()
    }

    #[test]
    fn routed_mappings_open_container_ports_and_publish_no_host_port() {
        let plan = modes("routed");
        let open: Vec<(Ipv4Addr, u16, u8)> = routed_port_entries(&plan)
            .keys()
            .map(|k| {
                (
                    Ipv4Addr::from(k.addr.to_ne_bytes()),
                    u16::from_be(k.port),
                    k.proto,
                )
            })
            .collect();
        let srv = Ipv4Addr::new(10, 89, 2, 2);
        assert_eq!(
            open,
            [
                (srv, 80, 6),
                (srv, 7000, 17),
                (srv, 7001, 17),
                (srv, 7002, 17)
            ],
            "the container ports, ranges expanded; host ports ignored"
        );
        let published: Vec<u16> = published_entries(&plan)
            .keys()
            .map(|k| u16::from_be(k.port))
            .collect();
        assert_eq!(published, [8080], "only the nat network's host port");
        // The network turning nat: its mappings become host ports, its open ports go.
        let nat = modes("nat-unprotected");
        assert!(routed_port_entries(&nat).is_empty());
        assert!(published_edits(&plan, &nat).is_none(), "compared whole");
        assert_eq!(published_entries(&nat).len(), 1 + 1 + 3);
    }

    #[test]
    fn the_programs_flags_follow_the_plan() {
        let plan = modes("routed");
        let f = config_flags(&plan);
        for flag in [
            flags::FAST_FORWARD,
            flags::MODES,
            flags::PTP,
            flags::ROUTES,
            flags::ISOLATED,
        ] {
            assert_ne!(f & flag, 0, "flag {flag}");
        }
        // One plain nat bridge network: no lookup is paid for what it does not have.
        assert_eq!(config_flags(&plan_default()), flags::FAST_FORWARD);
        let prefixes: Vec<(u32, Ipv4Addr)> = never_nat_entries(&plan)
            .keys()
            .map(|(len, a)| (*len, Ipv4Addr::from(a.to_ne_bytes())))
            .collect();
        assert_eq!(prefixes, [(24, Ipv4Addr::new(10, 90, 0, 0))]);
        assert_eq!(
            mode_of(plan.network("npi").unwrap()),
            gateway_mode::ISOLATED
        );
    }

    fn plan_default() -> Plan {
        plan("\"8080:80\"")
    }

    #[test]
    fn an_isolated_network_s_gateway_is_no_local_address() {
        let plan = modes("routed");
        let up0 = Link {
            index: 2,
            name: "up0".to_owned(),
            up: true,
            master: None,
            mac: None,
            mtu: None,
        };
        let uplink_addr = "203.0.113.1/24".parse().expect("net");
        let host = HostContext::from_host(&plan, "up0", vec![up0], &[(2, uplink_addr)])
            .expect("the uplink has an address");
        let local: Vec<Ipv4Addr> = local_addrs(&host).collect();
        assert!(
            local.contains(&Ipv4Addr::new(10, 89, 2, 1)),
            "a ptp gateway is"
        );
        assert!(!local.contains(&Ipv4Addr::new(10, 89, 3, 1)), "{local:?}");
    }

    #[test]
    fn a_ptp_container_is_reached_from_its_host_veth_s_mac() {
        let plan = modes("routed");
        let link = |index, name: &str, mac: u8| Link {
            index,
            name: name.to_owned(),
            up: true,
            master: None,
            mac: Some([2, 0, 0, 0, 0, mac]),
            mtu: Some(1500),
        };
        let (web, srv) = (
            plan.container("web").unwrap(),
            plan.container("srv").unwrap(),
        );
        let links = [
            link(3, "npa", 0xaa),
            link(4, &web.host_veth, 0x04),
            link(5, &srv.host_veth, 0x05),
        ];
        let bridged = container_endpoint(web, Driver::Bridge, &links).unwrap();
        assert_eq!(
            (bridged.ifindex, bridged.gateway_mac[5]),
            (4, 0xaa),
            "the bridge's"
        );
        let ptp = container_endpoint(srv, Driver::Ptp, &links).unwrap();
        assert_eq!(
            (ptp.ifindex, ptp.gateway_mac[5]),
            (5, 0x05),
            "its host veth's own"
        );
        assert_eq!(ptp.mac, srv.mac);
    }
}
