//! The maps the programs read their settings from, programmed from the plan: the config,
//! and per address family ([`Family`]) the subnets (with their gateway modes), the
//! never-NAT prefixes (`[[routes]]`), the host's local addresses, the containers'
//! endpoints, the published ports and the container ports that `routed` networks open.
//! And the openers of the pinned maps, which the rest of the module reads.

use std::collections::BTreeMap;

use aya::Ebpf as AyaEbpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};
use netplane_common::addr::{Addr, Ip6};
use netplane_common::nat::{
    Backend, DpConfig, Endpoint, NetInfo, PortKey, Timeouts, flags, gateway_mode, maps,
};

use super::family::{Family, Prefix, ne4, ne6};
use super::object::EbpfError;
use super::pin_dir;
use crate::config::{Container, Driver, GatewayMode, Network, Plan, PortMapping};
use crate::dataplane::HostContext;
use crate::topology::Link;

/// Ports as the programs see them: network byte order in memory.
fn ne_port(p: u16) -> u16 {
    p.to_be()
}

/// The maps `up` programs, from a freshly loaded object or from their pins.
pub(super) struct Maps {
    config: Map,
    v4: FamilyMaps,
    v6: FamilyMaps,
}

/// The maps of one address family that `up` programs.
struct FamilyMaps {
    subnets: Map,
    local_addrs: Map,
    published: Map,
    endpoints: Map,
    never_nat: Map,
    routed_ports: Map,
}

impl FamilyMaps {
    /// Family `A`'s maps, each opened by `open` from its name.
    fn open<A: Family, E>(mut open: impl FnMut(&'static str) -> Result<Map, E>) -> Result<Self, E> {
        Ok(FamilyMaps {
            subnets: open(A::SUBNETS)?,
            local_addrs: open(A::LOCAL_ADDRS)?,
            published: open(A::PUBLISHED)?,
            endpoints: open(A::ENDPOINTS)?,
            never_nat: open(A::NEVER_NAT)?,
            routed_ports: open(A::ROUTED_PORTS)?,
        })
    }
}

impl Maps {
    /// The maps of a loaded object, taken from it.
    pub(super) fn take(bpf: &mut AyaEbpf) -> Result<Maps, EbpfError> {
        let mut take = |name| bpf.take_map(name).ok_or(EbpfError::MissingMap(name));
        Ok(Maps {
            config: take(maps::CONFIG)?,
            v4: FamilyMaps::open::<u32, _>(&mut take)?,
            v6: FamilyMaps::open::<Ip6, _>(&mut take)?,
        })
    }

    /// The maps instance `name` pinned; `None` when one is not there.
    pub(super) fn pinned(name: &str) -> Option<Maps> {
        let open = |map| pinned_map(name, map).ok_or(());
        Some(Maps {
            config: open(maps::CONFIG).ok()?,
            v4: FamilyMaps::open::<u32, _>(open).ok()?,
            v6: FamilyMaps::open::<Ip6, _>(open).ok()?,
        })
    }

    /// Sets which events the programs write into the monitor's ring buffer
    /// (`observe::monitor` bits), the rest of the config as it is.
    pub(super) fn set_monitor(&mut self, mask: u32) -> Result<(), EbpfError> {
        set_monitor(&mut self.config, mask)
    }

    /// Writes the plan into the maps: settings, and for each family subnets, never-NAT
    /// prefixes, local addresses, endpoints, published ports, routed networks' open
    /// ports. With the `old` plan those maps were last programmed with, only what changed
    /// is written (one change costs a syscall or two, whatever N); without it, each map
    /// is synchronised entry by entry.
    pub(super) fn program(
        &mut self,
        plan: &Plan,
        host: &HostContext,
        old: Option<&Plan>,
    ) -> Result<(), EbpfError> {
        let ct = &plan.conntrack;
        let cfg = DpConfig {
            uplink_addr: ne4(host.uplink_addr),
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
            uplink_addr6: uplink_addr6(host),
            monitor: 0,
        };
        // The config's flags and network count only switch lookups on (netplane_common's
        // `flags`): one that is on with nothing to find costs a lookup, one that is off
        // while the entries it is for exist lets their packets through unchecked (an
        // isolated network open). So while the maps change, the config says the union of
        // what it said and what it will say, and what is no longer needed goes off last.
        let mut config: Array<_, DpConfig> =
            Array::try_from(&mut self.config).map_err(EbpfError::map(maps::CONFIG))?;
        let was = config.get(&0, 0).map_err(EbpfError::map(maps::CONFIG))?;
        // A running `netplane monitor` keeps its events through an `up`.
        let cfg = DpConfig {
            monitor: was.monitor,
            ..cfg
        };
        let during = DpConfig {
            networks: cfg.networks.max(was.networks),
            flags: cfg.flags | (was.flags & !WAYS),
            ..cfg
        };
        config
            .set(0, during, 0)
            .map_err(EbpfError::map(maps::CONFIG))?;

        self.v4.program::<u32>(plan, host, old)?;
        self.v6.program::<Ip6>(plan, host, old)?;

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

impl FamilyMaps {
    /// [`Maps::program`] for family `A`'s maps.
    fn program<A: Family>(
        &mut self,
        plan: &Plan,
        host: &HostContext,
        old: Option<&Plan>,
    ) -> Result<(), EbpfError>
    where
        NetInfo<A>: aya::Pod,
        PortKey<A>: aya::Pod,
        Backend<A>: aya::Pod,
    {
        // The subnets change only with the networks, the never-NAT prefixes only with
        // [[routes]]: few, and written only when they changed. The ids come from the
        // subnets, not from the networks' order, so that two networks never share one on
        // the way.
        let subnets = subnet_entries::<A>(plan);
        if old.is_none_or(|o| subnet_entries::<A>(o) != subnets) {
            sync_trie(&mut self.subnets, A::SUBNETS, &subnets)?;
        }
        let never_nat = never_nat_entries::<A>(plan);
        if old.is_none_or(|o| never_nat_entries::<A>(o) != never_nat) {
            sync_trie(&mut self.never_nat, A::NEVER_NAT, &never_nat)?;
        }
        sync_map(
            &mut self.local_addrs,
            A::LOCAL_ADDRS,
            &local_addr_entries::<A>(host),
        )?;
        self.program_endpoints::<A>(plan, host, old)?;

        // The published ports, and the routed networks' open container ports: against
        // the old plan's when there is one (a map of thousands is not read back on every
        // `up`), else against the map.
        let edits = match old {
            Some(old) => published_edits::<A>(old, plan).unwrap_or_else(|| {
                diff(&published_entries::<A>(old), published_entries::<A>(plan))
            }),
            None => diff(
                &read_map(&self.published, A::PUBLISHED)?,
                published_entries::<A>(plan),
            ),
        };
        edit_map(&mut self.published, A::PUBLISHED, edits)?;
        let had = match old {
            Some(old) => routed_port_entries::<A>(old),
            None => read_map(&self.routed_ports, A::ROUTED_PORTS)?,
        };
        edit_map(
            &mut self.routed_ports,
            A::ROUTED_PORTS,
            diff(&had, routed_port_entries::<A>(plan)),
        )
    }

    /// The containers, for delivery straight into them. Their devices come from the
    /// host's links as they are now: a recreated container has a new ifindex.
    fn program_endpoints<A: Family>(
        &mut self,
        plan: &Plan,
        host: &HostContext,
        old: Option<&Plan>,
    ) -> Result<(), EbpfError> {
        let endpoint = |c: &Container| {
            let driver = plan.network(&c.network)?.driver;
            container_endpoint(c, driver, &host.links)
        };
        let (Some(touched), Some(old)) = (&host.touched, old) else {
            let endpoints = plan
                .containers
                .iter()
                .filter_map(|c| Some((A::container(c)?, endpoint(c)?)))
                .collect();
            return sync_map(&mut self.endpoints, A::ENDPOINTS, &endpoints);
        };
        // A scoped converge: the touched containers' entries, and those of the containers
        // that left the plan or their address; the others are as the last `up` wrote them.
        let mut m: HashMap<_, A, Endpoint> =
            HashMap::try_from(&mut self.endpoints).map_err(EbpfError::map(A::ENDPOINTS))?;
        for o in &old.containers {
            if let Some(a) = A::container(o)
                && plan
                    .container(&o.name)
                    .is_none_or(|c| A::container(c) != Some(a))
            {
                let _ = m.remove(&a);
            }
        }
        for c in plan.containers.iter().filter(|c| touched.contains(&c.name)) {
            let Some(a) = A::container(c) else {
                continue;
            };
            match endpoint(c) {
                Some(e) => m.insert(a, e, 0).map_err(EbpfError::map(A::ENDPOINTS))?,
                None => {
                    let _ = m.remove(&a);
                }
            }
        }
        Ok(())
    }
}

/// The uplink's IPv6 address as the config holds it: :: when it has none.
fn uplink_addr6(host: &HostContext) -> Ip6 {
    host.uplink_addr6.map_or(Ip6::UNSPECIFIED, ne6)
}

/// The subnet trie's entries of family `A` for `plan`: (prefix length, network address)
/// → its network (see [`network_id`]).
fn subnet_entries<A: Family>(plan: &Plan) -> BTreeMap<Prefix<A>, NetInfo<A>> {
    plan.networks
        .iter()
        .filter_map(|n| {
            let info = NetInfo {
                id: network_id(n),
                gateway: A::gateway(n).unwrap_or_default(),
                mode: mode_of(n),
                _pad: [0; 3],
            };
            Some((A::subnet(n)?, info))
        })
        .collect()
}

/// The id by which the programs tell networks apart (they only compare ids, and 0 is no
/// network): the same on every `up` while the subnets stay, and for both of a dual-stack
/// network's subnets. A network with IPv4 has its IPv4 network address (host order) with
/// the lowest bit set: unique, as subnets do not overlap and are /30 at most (two low
/// bits of host part). An IPv6-only one has a hash of its subnet6 ending in binary 10,
/// which no IPv4 id does (two such ids meet with a chance of 2^-30 per pair).
fn network_id(n: &Network) -> u32 {
    match n.subnet {
        Some(s) => u32::from(s.network()) | 1,
        None => {
            let key = n.subnet6.map(|s| s.to_string()).unwrap_or_default();
            (crate::config::fnv1a_32(key.as_bytes()) & !0b11) | 0b10
        }
    }
}

/// The [`flags`] that choose a way for packets rather than switch a lookup on: they take
/// effect at once, not kept on while the maps change.
const WAYS: u32 =
    flags::FAST_FORWARD | flags::FROM_CONTAINER | flags::PEER_DELIVERY | flags::PEER_ACKS;

/// The programs' switches for `plan` ([`flags`]): what the config makes worth a lookup,
/// and the ways `[ebpf]` chooses (runtime switches: the programs read them per packet,
/// so a change needs no program loaded again).
fn config_flags(plan: &Plan) -> u32 {
    let mut f = 0;
    let e = &plan.ebpf;
    if e.fast_forward {
        f |= flags::FAST_FORWARD;
    }
    if e.from_container_hook() {
        f |= flags::FROM_CONTAINER;
    }
    if e.peer_delivery() {
        f |= flags::PEER_DELIVERY;
    }
    if e.peer_acks() {
        f |= flags::PEER_ACKS;
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

/// The never-NAT trie's entries of family `A` for `plan`: its routes' subnets (the value
/// is unused).
fn never_nat_entries<A: Family>(plan: &Plan) -> BTreeMap<Prefix<A>, u32> {
    A::routes(plan).into_iter().map(|p| (p, 1)).collect()
}

/// The open-ports map's entries of family `A` for `plan`: every container port that the
/// publish entries of a `routed` network's containers name in that family (ranges
/// expanded; the host ports are ignored, as Docker ignores them).
fn routed_port_entries<A: Family>(plan: &Plan) -> BTreeMap<PortKey<A>, u32> {
    plan.containers
        .iter()
        .filter(|c| {
            plan.network(&c.network)
                .is_some_and(|n| n.gateway_mode == GatewayMode::Routed)
        })
        .filter_map(|c| Some((c, A::container(c)?)))
        .flat_map(|(c, addr)| {
            c.publish
                .iter()
                .filter(|m| A::publishes(m))
                .flat_map(move |m| {
                    (0..m.count).map(move |i| {
                        let key = PortKey {
                            addr,
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

/// Makes LPM trie `map` (named `name`) hold exactly `want`: each entry that differs is
/// written first (an update replaces its value atomically), then the keys no longer
/// wanted go, so that no lookup finds one missing meanwhile.
fn sync_trie<A: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut Map,
    name: &'static str,
    want: &BTreeMap<Prefix<A>, V>,
) -> Result<(), EbpfError> {
    let mut trie: LpmTrie<_, A, V> = LpmTrie::try_from(map).map_err(EbpfError::map(name))?;
    let had: BTreeMap<Prefix<A>, V> = trie
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| ((k.prefix_len(), k.data()), v))
        .collect();
    for (&(len, addr), v) in want {
        if had.get(&(len, addr)) != Some(v) {
            trie.insert(&Key::new(len, addr), *v, 0)
                .map_err(EbpfError::map(name))?;
        }
    }
    for &(len, addr) in had.keys().filter(|k| !want.contains_key(k)) {
        let _ = trie.remove(&Key::new(len, addr));
    }
    Ok(())
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

/// The entries of hash map `map` (named `name`).
fn read_map<K: aya::Pod + Ord, V: aya::Pod>(
    map: &Map,
    name: &'static str,
) -> Result<BTreeMap<K, V>, EbpfError> {
    let m: HashMap<_, K, V> = HashMap::try_from(map).map_err(EbpfError::map(name))?;
    Ok(m.iter().filter_map(Result::ok).collect())
}

/// Keys to remove from a hash map, and entries to write.
type Edits<K, V> = (Vec<K>, Vec<(K, V)>);

/// The edits that turn a map holding `had` into one holding `want`.
fn diff<K: Ord + Copy, V: PartialEq>(had: &BTreeMap<K, V>, want: BTreeMap<K, V>) -> Edits<K, V> {
    let remove = had
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    let write = want
        .into_iter()
        .filter(|(k, v)| had.get(k) != Some(v))
        .collect();
    (remove, write)
}

/// Applies `edits` to hash map `map` (named `name`): the removals, then the writes.
fn edit_map<K: aya::Pod, V: aya::Pod>(
    map: &mut Map,
    name: &'static str,
    (remove, write): Edits<K, V>,
) -> Result<(), EbpfError> {
    let mut m: HashMap<_, K, V> = HashMap::try_from(map).map_err(EbpfError::map(name))?;
    for k in &remove {
        let _ = m.remove(k);
    }
    for (k, v) in &write {
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
        gateway_ifindex: gateway.index,
        mac: c.mac,
        gateway_mac: gateway.mac?,
    })
}

/// The entries of family `A`'s published-ports map of one publish mapping of container
/// `c`: none when the mapping is not on that family, or the container has no address in
/// it.
fn mapping_entries<'a, A: Family>(
    plan: &'a Plan,
    c: &'a Container,
    m: &'a PortMapping,
) -> impl Iterator<Item = (PortKey<A>, Backend<A>)> + 'a {
    let gateway = plan
        .network(&c.network)
        .and_then(A::gateway)
        .unwrap_or_default();
    let addr = A::container(c).filter(|_| A::publishes(m));
    addr.into_iter().flat_map(move |addr| {
        m.pairs().map(move |(hp, cp)| {
            let key = PortKey {
                addr: A::host_addr(m),
                port: ne_port(hp),
                proto: m.proto.number(),
                _pad: 0,
            };
            (
                key,
                Backend {
                    addr,
                    port: ne_port(cp),
                    _pad: 0,
                    gateway,
                },
            )
        })
    })
}

/// Whether container `c`'s publish entries are DNATed host ports: on a `nat` network.
/// (A `routed` network's name container ports open to direct routing instead, see
/// [`routed_port_entries`]; an `isolated` one has none.)
fn publishes_host_ports(plan: &Plan, c: &Container) -> bool {
    plan.network(&c.network)
        .is_some_and(|n| n.gateway_mode.nat())
}

/// Family `A`'s published-ports map's entries for `plan`.
fn published_entries<A: Family>(plan: &Plan) -> BTreeMap<PortKey<A>, Backend<A>> {
    plan.containers
        .iter()
        .filter(|c| publishes_host_ports(plan, c))
        .flat_map(|c| {
            c.publish
                .iter()
                .flat_map(move |m| mapping_entries::<A>(plan, c, m))
        })
        .collect()
}

/// The published ports of container `c` that the pinned published-ports maps do not
/// send to it, one line each (CNI's CHECK).
pub(super) fn missing_ports(plan: &Plan, c: &Container) -> Vec<String> {
    if !publishes_host_ports(plan, c) || c.publish.is_empty() {
        return Vec::new();
    }
    let mut missing = missing_ports_of::<u32>(plan, c);
    missing.extend(missing_ports_of::<Ip6>(plan, c));
    missing
}

/// [`missing_ports`] in family `A`'s map.
fn missing_ports_of<A: Family>(plan: &Plan, c: &Container) -> Vec<String>
where
    PortKey<A>: aya::Pod,
    Backend<A>: aya::Pod,
{
    let map =
        pinned_map(&plan.name, A::PUBLISHED).map(HashMap::<_, PortKey<A>, Backend<A>>::try_from);
    let Some(Ok(map)) = map else {
        return vec![format!(
            "the {} published-ports map of {} is not pinned",
            A::NAME,
            plan.name
        )];
    };
    c.publish
        .iter()
        .filter(|m| mapping_entries::<A>(plan, c, m).any(|(k, b)| map.get(&k, 0).ok() != Some(b)))
        .map(|m| {
            format!(
                "published port {}: not in the eBPF {} published-ports map",
                m.spec,
                A::NAME
            )
        })
        .collect()
}

/// The edits that turn `old`'s published ports into `plan`'s in family `A`, found by
/// comparing the mappings in place (a change among thousands costs a comparison each, not
/// an expansion). `None` when the containers or the number of mappings changed: the
/// caller then compares whole maps.
fn published_edits<A: Family>(old: &Plan, plan: &Plan) -> Option<Edits<PortKey<A>, Backend<A>>> {
    if old.containers.len() != plan.containers.len() {
        return None;
    }
    let (mut remove, mut write) = (Vec::new(), Vec::new());
    let net = |p: &Plan, c: &Container| {
        p.network(&c.network)
            .map(|n| (A::gateway(n), n.gateway_mode))
    };
    for (o, c) in old.containers.iter().zip(&plan.containers) {
        if (&o.name, A::container(o), &o.network, o.publish.len())
            != (&c.name, A::container(c), &c.network, c.publish.len())
            || net(old, o) != net(plan, c)
        {
            return None;
        }
        if !publishes_host_ports(plan, c) {
            continue;
        }
        for (a, b) in o.publish.iter().zip(&c.publish).filter(|(a, b)| a != b) {
            remove.extend(mapping_entries::<A>(old, o, a).map(|(k, _)| k));
            write.extend(mapping_entries::<A>(plan, c, b));
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

/// Sets `DpConfig::monitor` of config map `config` to `mask` (read, modify, write: the
/// other fields stay as `up` wrote them).
pub(super) fn set_monitor(config: &mut Map, mask: u32) -> Result<(), EbpfError> {
    let mut config: Array<_, DpConfig> =
        Array::try_from(config).map_err(EbpfError::map(maps::CONFIG))?;
    let was = config.get(&0, 0).map_err(EbpfError::map(maps::CONFIG))?;
    if was.monitor != mask {
        let now = DpConfig {
            monitor: mask,
            ..was
        };
        config
            .set(0, now, 0)
            .map_err(EbpfError::map(maps::CONFIG))?;
    }
    Ok(())
}

/// The settings the programs of instance `name` run with (its pinned config map).
pub(super) fn pinned_config(name: &str) -> Option<DpConfig> {
    let map = pinned_map(name, maps::CONFIG)?;
    Array::<_, DpConfig>::try_from(map).ok()?.get(&0, 0).ok()
}

/// Points instance `name`'s programs at the uplink as the host has it now (the agent's job
/// when an address or a link changes under the data plane): the masquerade addresses and
/// the uplink's index in the config, and the local addresses that published ports answer
/// on. Only what differs is written; the rest of the config stays as `up` wrote it.
/// Returns a line per change.
pub(super) fn follow_uplink(name: &str, host: &HostContext) -> Result<Vec<String>, EbpfError> {
    let mut changes = Vec::new();
    let mut map = pinned_map(name, maps::CONFIG).ok_or(EbpfError::MissingMap(maps::CONFIG))?;
    let mut config: Array<_, DpConfig> =
        Array::try_from(&mut map).map_err(EbpfError::map(maps::CONFIG))?;
    let mut cfg = config.get(&0, 0).map_err(EbpfError::map(maps::CONFIG))?;
    let now = (ne4(host.uplink_addr), host.uplink_index, uplink_addr6(host));
    if (cfg.uplink_addr, cfg.uplink_ifindex, cfg.uplink_addr6) != now {
        changes.push(format!(
            "masquerade to {}{} on {} (index {})",
            host.uplink_addr,
            host.uplink_addr6
                .map(|a| format!(" and {a}"))
                .unwrap_or_default(),
            host.uplink,
            host.uplink_index
        ));
        (cfg.uplink_addr, cfg.uplink_ifindex, cfg.uplink_addr6) = now;
        config
            .set(0, cfg, 0)
            .map_err(EbpfError::map(maps::CONFIG))?;
    }
    changes.extend(follow_local_addrs::<u32>(name, host)?);
    changes.extend(follow_local_addrs::<Ip6>(name, host)?);
    Ok(changes)
}

/// Makes instance `name`'s local-addresses map of family `A` hold the host's addresses
/// now, when it does not. Returns a line when it changed.
fn follow_local_addrs<A: Family>(
    name: &str,
    host: &HostContext,
) -> Result<Option<String>, EbpfError> {
    let want = local_addr_entries::<A>(host);
    let mut local =
        pinned_map(name, A::LOCAL_ADDRS).ok_or(EbpfError::MissingMap(A::LOCAL_ADDRS))?;
    let had: BTreeMap<A, u32> = read_map(&local, A::LOCAL_ADDRS)?;
    if had.keys().eq(want.keys()) {
        return Ok(None);
    }
    sync_map(&mut local, A::LOCAL_ADDRS, &want)?;
    Ok(Some(format!("local {} addresses", A::NAME)))
}

/// Family `A`'s local-addresses map's entries for `host`: every host address, the
/// gateways and loopback (published ports answer on all of them; the value is unused).
fn local_addr_entries<A: Family>(host: &HostContext) -> BTreeMap<A, u32> {
    A::local_addrs(host).into_iter().map(|a| (a, 1)).collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

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
        let (remove, write) = published_edits::<u32>(&old, &new).expect("same containers");
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
        let (a, b) = (
            published_entries::<u32>(&old),
            published_entries::<u32>(&new),
        );
        assert!(a.keys().filter(|k| !b.contains_key(k)).eq(remove.iter()));
    }

    #[test]
    fn a_new_backend_port_rewrites_without_removing() {
        let (remove, write) =
            published_edits::<u32>(&plan("\"8080:80\""), &plan("\"8080:90\"")).unwrap();
        assert!(remove.is_empty(), "the key stays; its value changes");
        assert_eq!(u16::from_be(write[0].1.port), 90);
        assert!(
            published_edits::<u32>(&plan("\"8080:80\""), &plan("\"8080:80\", \"8081:81\""))
                .is_none()
        );
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
        let open: Vec<(Ipv4Addr, u16, u8)> = routed_port_entries::<u32>(&plan)
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
        let published: Vec<u16> = published_entries::<u32>(&plan)
            .keys()
            .map(|k| u16::from_be(k.port))
            .collect();
        assert_eq!(published, [8080], "only the nat network's host port");
        // The network turning nat: its mappings become host ports, its open ports go.
        let nat = modes("nat-unprotected");
        assert!(routed_port_entries::<u32>(&nat).is_empty());
        assert!(
            published_edits::<u32>(&plan, &nat).is_none(),
            "compared whole"
        );
        assert_eq!(published_entries::<u32>(&nat).len(), 1 + 1 + 3);
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
        assert_eq!(
            config_flags(&plan_default()),
            flags::FAST_FORWARD | flags::FROM_CONTAINER
        );
        let prefixes: Vec<(u32, Ipv4Addr)> = never_nat_entries::<u32>(&plan)
            .keys()
            .map(|(len, a)| (*len, Ipv4Addr::from(a.to_ne_bytes())))
            .collect();
        assert_eq!(prefixes, [(24, Ipv4Addr::new(10, 90, 0, 0))]);
        assert_eq!(
            mode_of(plan.network("npi").unwrap()),
            gateway_mode::ISOLATED
        );
    }

    #[test]
    fn the_ways_into_and_out_of_containers_are_flags() {
        let ways = |ebpf: &str| {
            let text = format!(
                "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n[ebpf]\n{ebpf}\n"
            );
            config_flags(&Config::parse(&text, "test").unwrap().plan().unwrap()) & WAYS
        };
        let (ff, fc, peer, acks) = (
            flags::FAST_FORWARD,
            flags::FROM_CONTAINER,
            flags::PEER_DELIVERY,
            flags::PEER_ACKS,
        );
        assert_eq!(ways(""), ff | fc);
        assert_eq!(ways("from_container = false"), ff);
        assert_eq!(ways("into_container = \"veth\""), ff | fc);
        assert_eq!(ways("into_container = \"peer\""), ff | fc | peer);
        assert_eq!(ways("into_container = \"peer-all\""), ff | fc | peer | acks);
        // Without the short way there is nothing to choose.
        assert_eq!(
            ways("fast_forward = false\ninto_container = \"peer-all\""),
            0
        );
    }

    fn plan_default() -> Plan {
        plan("\"8080:80\"")
    }

    /// The uplink, index 2.
    fn up0() -> Link {
        Link {
            index: 2,
            name: "up0".to_owned(),
            up: true,
            master: None,
            mac: None,
            mtu: None,
        }
    }

    #[test]
    fn an_isolated_network_s_gateway_is_no_local_address() {
        let plan = modes("routed");
        let uplink_addr = "203.0.113.1/24".parse().expect("net");
        let host = HostContext::from_host(&plan, "up0", vec![up0()], &[(2, uplink_addr)], &[])
            .expect("the uplink has an address");
        let local: Vec<Ipv4Addr> = local_addr_entries::<u32>(&host)
            .keys()
            .map(|a| Ipv4Addr::from(a.to_ne_bytes()))
            .collect();
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

    /// A dual-stack network whose container publishes on both families, on IPv4 only, on
    /// IPv6 only and on [::1], and an IPv4-only network.
    fn dual_stack() -> Plan {
        crate::config::testutil::dual_stack(&[
            "8080:80",
            "0.0.0.0:8081:81",
            "[::]:8082:82",
            "[::1]:8083:83/udp",
        ])
    }

    #[test]
    fn ipv6_mappings_of_dual_stack_containers_go_into_the_ipv6_map() {
        let plan = dual_stack();
        let v6 = |a: Ip6| Ipv6Addr::from(netplane_common::addr::octets6(a)).to_string();
        let published: Vec<(String, u16, String, String)> = published_entries::<Ip6>(&plan)
            .iter()
            .map(|(k, b)| {
                (
                    v6(k.addr),
                    u16::from_be(k.port),
                    format!("[{}]:{}", v6(b.addr), u16::from_be(b.port)),
                    v6(b.gateway),
                )
            })
            .collect();
        let (web, gw) = ("[2001:db8:89::2]", "2001:db8:89::1");
        assert_eq!(
            published,
            [
                ("::".into(), 8080, format!("{web}:80"), gw.into()),
                ("::".into(), 8082, format!("{web}:82"), gw.into()),
                ("::1".into(), 8083, format!("{web}:83"), gw.into()),
            ],
            "both families' and IPv6's; not 0.0.0.0's, nor the IPv4-only container's"
        );
        let mut ports4: Vec<u16> = published_entries::<u32>(&plan)
            .keys()
            .map(|k| u16::from_be(k.port))
            .collect();
        ports4.sort_unstable();
        assert_eq!(ports4, [8080, 8081, 9090]);
        // One network, one id, in both tries.
        let (s4, s6) = (subnet_entries::<u32>(&plan), subnet_entries::<Ip6>(&plan));
        assert_eq!(s6.len(), 1, "only the dual-stack network");
        let (&(len, _), info6) = s6.iter().next().unwrap();
        assert_eq!((len, v6(info6.gateway)), (64, gw.into()));
        assert!(
            s4.values()
                .any(|i| i.id == info6.id && i.mode == info6.mode)
        );
        assert!(
            never_nat_entries::<Ip6>(&plan).is_empty(),
            "routes are IPv4"
        );
        // A change of the IPv6 address alone is compared whole in the IPv6 map, and in
        // place in the IPv4 one.
        let mut moved = plan.clone();
        moved.containers[0].ip6 = Some("2001:db8:89::9".parse().unwrap());
        assert!(published_edits::<Ip6>(&plan, &moved).is_none());
        assert_eq!(
            published_edits::<u32>(&plan, &moved),
            Some((Vec::new(), Vec::new()))
        );
    }

    #[test]
    fn an_ipv6_only_network_and_ipv6_routes_go_into_the_ipv6_maps_only() {
        let plan = crate::config::testutil::ipv6_only_and_routes();
        let (s4, s6) = (subnet_entries::<u32>(&plan), subnet_entries::<Ip6>(&plan));
        assert_eq!((s4.len(), s6.len()), (1, 2));
        // Ids apart from each other and from every IPv4 network's (those end in 01).
        let ids: Vec<u32> = s6.values().map(|i| i.id).collect();
        assert!(
            ids[0] != ids[1] && ids.iter().all(|id| id & 0b11 == 0b10),
            "{ids:?}"
        );
        assert_eq!(s4.values().next().unwrap().id & 0b11, 0b01);
        // The IPv6 route is a never-NAT prefix of IPv6, and switches the lookup on.
        let v6 = |a: Ip6| Ipv6Addr::from(netplane_common::addr::octets6(a)).to_string();
        let never: Vec<(u32, String)> = never_nat_entries::<Ip6>(&plan)
            .keys()
            .map(|&(len, a)| (len, v6(a)))
            .collect();
        assert_eq!(never, [(64, "2001:db8:2::".to_owned())]);
        assert_eq!(never_nat_entries::<u32>(&plan).len(), 1, "the IPv4 route's");
        assert_ne!(config_flags(&plan) & flags::ROUTES, 0);
        // web has no IPv4 address: its port is IPv6's only; v4's is IPv4's only.
        let port = |k: &PortKey<u32>| u16::from_be(k.port);
        assert_eq!(
            published_entries::<u32>(&plan)
                .keys()
                .map(port)
                .collect::<Vec<_>>(),
            [9090]
        );
        assert_eq!(published_entries::<Ip6>(&plan).len(), 1);
    }

    #[test]
    fn ipv6_local_addresses_are_the_host_s_the_gateways_and_loopback() {
        let plan = dual_stack();
        let host = HostContext::from_host(
            &plan,
            "up0",
            vec![up0()],
            &[(2, "203.0.113.1/24".parse().unwrap())],
            &[(2, "2001:db8:113::1/64".parse().unwrap())],
        )
        .unwrap();
        assert_eq!(
            Ipv6Addr::from(netplane_common::addr::octets6(uplink_addr6(&host))).to_string(),
            "2001:db8:113::1"
        );
        let mut local: Vec<String> = local_addr_entries::<Ip6>(&host)
            .keys()
            .map(|a| Ipv6Addr::from(netplane_common::addr::octets6(*a)).to_string())
            .collect();
        local.sort();
        assert_eq!(local, ["2001:db8:113::1", "2001:db8:89::1", "::1"]);
    }
}
