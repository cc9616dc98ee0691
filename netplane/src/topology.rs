//! The network topology through rtnetlink: bridges, veth pairs, addresses and routes.
//!
//! A `bridge` network is a Linux bridge with the gateway address, each container's veth
//! a port of it. A `ptp` network has no bridge (CNI's ptp plugin, Calico, seed 004): each
//! container's eth0 holds its address as a /32 with `default via GATEWAY onlink`, and the
//! host end of its veth holds the gateway address as a /32 (the same on every host veth
//! of the network, as CNI's ptp plugin does) and a /32 route to the container. The host
//! answers the container's ARP for the gateway because the address is on that veth: no
//! proxy ARP, which would depend on the host having a route to the gateway elsewhere
//! (arp_process(): arp_fwd_proxy() wants the route out of another device).
//!
//! Every `ensure_*` compares what exists with what the plan wants and changes only the
//! difference, so `up` converges and a second `up` changes nothing. `-EEXIST` and `-ENODEV`
//! are normal answers here, not failures (as in iproute2 and netavark).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::config::{Container, Network, Route};
use crate::netns;

/// The name of every container's end of its veth pair, as in Docker.
pub const CONTAINER_IF: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot {action} {object}: {source}")]
    Netlink {
        action: &'static str,
        object: String,
        source: rtnetlink::Error,
    },
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("{object} is missing after it was created")]
    Vanished { object: String },
    #[error("{0}")]
    Sysctl(String),
}

fn nl_err(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> TopologyError {
    let object = object.into();
    move |source| TopologyError::Netlink {
        action,
        object,
        source,
    }
}

/// The negative errno of a netlink error, if that is what it is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Opens an rtnetlink connection in namespace `ns` (or the caller's when `None`) and
/// drives it on the current tokio runtime. A netlink socket belongs to the namespace of
/// the thread that created it, so it is created on a thread that joined `ns`.
pub fn connect(ns: Option<&str>) -> Result<Handle, TopologyError> {
    let rt = tokio::runtime::Handle::current();
    let open = || {
        let _guard = rt.enter();
        rtnetlink::new_connection().map_err(TopologyError::Socket)
    };
    let (conn, handle, _) = match ns {
        Some(ns) => netns::run_in(ns, open)??,
        None => open()?,
    };
    tokio::spawn(conn);
    Ok(handle)
}

/// A link as netplane looks at it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

impl From<LinkMessage> for Link {
    fn from(m: LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            up: m.header.flags.contains(LinkFlags::Up),
            master: None,
            mac: None,
            mtu: None,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Controller(i) => l.master = Some(i),
                LinkAttribute::Address(a) => l.mac = a.try_into().ok(),
                LinkAttribute::Mtu(m) => l.mtu = Some(m),
                _ => {}
            }
        }
        l
    }
}

pub async fn link(h: &Handle, name: &str) -> Result<Option<Link>, TopologyError> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.map(Link::from)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err("look up link", name)(e)),
    }
}

pub async fn links(h: &Handle) -> Result<Vec<Link>, TopologyError> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list", "links"))?;
    Ok(msgs.into_iter().map(Link::from).collect())
}

/// Deletes link `name`; `Ok(false)` when it was already gone.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, TopologyError> {
    let Some(l) = link(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl_err("delete link", name)(e)),
    }
}

async fn set_up(h: &Handle, l: &Link) -> Result<bool, TopologyError> {
    if l.up {
        return Ok(false);
    }
    h.link()
        .set(LinkUnspec::new_with_index(l.index).up().build())
        .execute()
        .await
        .map_err(nl_err("bring up", l.name.clone()))?;
    Ok(true)
}

/// The IPv4 address of an address message (IFA_LOCAL: on point-to-point links IFA_ADDRESS
/// is the peer's).
fn local_ipv4(m: &AddressMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

/// IPv4 addresses per interface index.
pub async fn ipv4_addresses(h: &Handle) -> Result<Vec<(u32, Ipv4Net)>, TopologyError> {
    Ok(addresses(h, None, false)
        .await?
        .into_iter()
        .filter_map(|(m, net)| match net {
            IpNet::V4(net) => Some((m.header.index, net)),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// Global IPv6 addresses per interface index (not the link-local one every device has),
/// the stable ones first: a temporary (privacy) address, a deprecated one and one that
/// duplicate address detection has not passed are what masquerade, which takes the
/// uplink's first, should not prefer (the kernel lists the newest first).
pub async fn ipv6_addresses(h: &Handle) -> Result<Vec<(u32, Ipv6Net)>, TopologyError> {
    let unstable = AddressHeaderFlags::Secondary
        | AddressHeaderFlags::Deprecated
        | AddressHeaderFlags::Tentative
        | AddressHeaderFlags::Dadfailed;
    let mut addrs = addresses(h, None, true).await?;
    addrs.sort_by_key(|(m, _)| m.header.flags.intersects(unstable));
    Ok(addrs
        .into_iter()
        .filter_map(|(m, net)| match net {
            IpNet::V6(net) => Some((m.header.index, net)),
            IpNet::V4(_) => None,
        })
        .collect())
}

/// The addresses of one family of `link` (name, index), or of every device, as
/// [`address_net`] reads them. Asked of the kernel per family: every veth has an IPv6
/// link-local address, and an IPv4 question must not pay for them.
async fn addresses(
    h: &Handle,
    link: Option<(&str, u32)>,
    v6: bool,
) -> Result<Vec<(AddressMessage, IpNet)>, TopologyError> {
    let mut req = h.address().get();
    if let Some((_, index)) = link {
        req = req.set_link_index_filter(index);
    }
    req.message_mut().header.family = family(v6);
    let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(match link {
        Some((name, _)) => nl_err("list addresses of", name),
        None => nl_err("list", "addresses"),
    })?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| {
            let net = address_net(&m, v6)?;
            Some((m, net))
        })
        .collect())
}

fn family(v6: bool) -> rtnetlink::packet_route::AddressFamily {
    if v6 {
        rtnetlink::packet_route::AddressFamily::Inet6
    } else {
        rtnetlink::packet_route::AddressFamily::Inet
    }
}

/// An address message's prefix in one family: IPv4's local address, or a global IPv6
/// one (link-local ones are the kernel's, and stay).
fn address_net(m: &AddressMessage, v6: bool) -> Option<IpNet> {
    if !v6 {
        return Some(IpNet::V4(
            Ipv4Net::new(local_ipv4(m)?, m.header.prefix_len).ok()?,
        ));
    }
    if m.header.scope != AddressScope::Universe {
        return None;
    }
    let ip = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
        _ => None,
    })?;
    Some(IpNet::V6(Ipv6Net::new(ip, m.header.prefix_len).ok()?))
}

/// Makes `ifindex` carry exactly `want` as its IPv4 address, or none (others are
/// removed).
async fn ensure_only_address(
    h: &Handle,
    ifname: &str,
    ifindex: u32,
    want: Option<Ipv4Net>,
) -> Result<bool, TopologyError> {
    ensure_only(h, ifname, ifindex, false, want.map(IpNet::V4)).await
}

/// Makes `ifindex` carry exactly `want` as its global IPv6 address, or none. Added
/// without duplicate address detection (IFA_F_NODAD, as netavark does): the address is
/// netplane's to give, and DAD would hold it "tentative", unusable, for a second or more.
async fn ensure_only_address6(
    h: &Handle,
    ifname: &str,
    ifindex: u32,
    want: Option<Ipv6Net>,
) -> Result<bool, TopologyError> {
    ensure_only(h, ifname, ifindex, true, want.map(IpNet::V6)).await
}

/// [`ensure_only_address`] and [`ensure_only_address6`]: the addresses of one family on
/// `ifindex` become exactly `want`.
async fn ensure_only(
    h: &Handle,
    ifname: &str,
    ifindex: u32,
    v6: bool,
    want: Option<IpNet>,
) -> Result<bool, TopologyError> {
    let mut present = false;
    let mut changed = false;
    for (m, net) in addresses(h, Some((ifname, ifindex)), v6).await? {
        if Some(net) == want {
            present = true;
        } else {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(nl_err("remove an old address from", ifname))?;
            changed = true;
        }
    }
    if let Some(want) = want
        && !present
    {
        let mut req = h.address().add(ifindex, want.addr(), want.prefix_len());
        if v6 {
            let msg = req.message_mut();
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(nl_err("add address to", format!("{ifname} ({want})")))?;
        changed = true;
    }
    Ok(changed)
}

/// The bridge of `net`, up, with the gateway address (none on an isolated network).
/// Returns whether anything changed, and whether the bridge itself was created by this
/// call.
///
/// `had_v6`: the network was dual-stack when last applied, so an IPv6 address it no longer
/// wants may be there to remove (an IPv4-only network's bridge is not asked for its
/// IPv6 addresses: see below).
pub async fn ensure_bridge(
    h: &Handle,
    net: &Network,
    had_v6: bool,
) -> Result<(bool, bool), TopologyError> {
    let (bridge, created) = match link(h, &net.name).await? {
        Some(l) => (l, false),
        None => {
            let mut msg = LinkBridge::new(&net.name);
            if let Some(mtu) = net.mtu {
                msg = msg.mtu(mtu);
            }
            h.link()
                .add(msg.build())
                .execute()
                .await
                .map_err(nl_err("create bridge", net.name.clone()))?;
            let l = link(h, &net.name)
                .await?
                .ok_or_else(|| TopologyError::Vanished {
                    object: net.name.clone(),
                })?;
            (l, true)
        }
    };
    let want = net
        .subnet
        .zip(net.gateway)
        .filter(|_| net.has_gateway())
        .map(|(s, g)| Ipv4Net::new(g, s.prefix_len()).expect("validated prefix"));
    let addr_changed = ensure_only_address(h, &net.name, bridge.index, want).await?;
    let want6 = match (net.has_gateway(), net.subnet6, net.gateway6) {
        (true, Some(s6), Some(gw6)) => Some(Ipv6Net::new(gw6, s6.prefix_len()).expect("/64–/120")),
        _ => None,
    };
    if want6.is_some() {
        enable_ipv6(&net.name)?;
    }
    // Only on a network with a subnet6: the kernel answers an IPv6 address dump with every
    // interface's (a link-local one per veth), and an IPv4-only ADD must not pay for it.
    let addr_changed = addr_changed
        | if want6.is_some() || net.subnet6.is_some() || had_v6 {
            ensure_only_address6(h, &net.name, bridge.index, want6).await?
        } else {
            false
        };
    let mtu_changed = ensure_mtu(h, &bridge, net.mtu).await?;
    let up_changed = set_up(h, &bridge).await?;
    Ok((
        created || addr_changed || mtu_changed || up_changed,
        created,
    ))
}

/// Sets `l`'s MTU to `mtu` when one is asked for and it differs. Returns whether it did.
async fn ensure_mtu(h: &Handle, l: &Link, mtu: Option<u32>) -> Result<bool, TopologyError> {
    match mtu {
        Some(m) if l.mtu != Some(m) => {
            h.link()
                .set(LinkUnspec::new_with_index(l.index).mtu(m).build())
                .execute()
                .await
                .map_err(nl_err("set the MTU of", l.name.clone()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Creates the veth pair `name` ↔ `peer`, the peer inside namespace `peer_ns` (with
/// `peer_mac` if given), and returns the local end.
pub async fn create_veth(
    h: &Handle,
    name: &str,
    peer: &str,
    peer_ns: &str,
    peer_mac: Option<[u8; 6]>,
    mtu: Option<u32>,
) -> Result<Link, TopologyError> {
    let ns = netns::open(peer_ns)?;
    // One RTM_NEWLINK creates both ends, the peer directly in its namespace under its final
    // name: no temporary name ever exists here.
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer)
        .setns_by_fd(ns.as_raw_fd());
    if let Some(mac) = peer_mac {
        peer_msg = peer_msg.address(mac.to_vec());
    }
    let mut msg = LinkVeth::new(name, peer);
    if let Some(mtu) = mtu {
        peer_msg = peer_msg.mtu(mtu);
        msg = msg.mtu(mtu);
    }
    let msg = msg
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl_err("create veth", name))?;
    link(h, name).await?.ok_or_else(|| TopologyError::Vanished {
        object: name.to_owned(),
    })
}

/// The host end of container `c`'s veth pair, created with its container end (eth0
/// inside its netns, with the container's MAC) if missing; and whether it was.
async fn host_end(h: &Handle, c: &Container, net: &Network) -> Result<(Link, bool), TopologyError> {
    match link(h, &c.host_veth).await? {
        Some(l) => Ok((l, false)),
        None => Ok((
            create_veth(h, &c.host_veth, c.ifname(), &c.netns, Some(c.mac), net.mtu).await?,
            true,
        )),
    }
}

/// The container's veth pair: the host end attached to `bridge` and up; the container end
/// named eth0 inside its netns, with the container's MAC; with `static_fdb` (where the
/// container's own hook runs), a static FDB entry for that MAC ([`ensure_fdb_entry`]).
/// Returns (changed, created).
pub async fn ensure_veth(
    h: &Handle,
    c: &Container,
    net: &Network,
    bridge: &Link,
    static_fdb: bool,
) -> Result<(bool, bool), TopologyError> {
    let (host, created) = host_end(h, c, net).await?;
    let mut changed = created | ensure_mtu(h, &host, net.mtu).await?;
    if host.master != Some(bridge.index) {
        h.link()
            .set(
                LinkUnspec::new_with_index(host.index)
                    .controller(bridge.index)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err("attach to its bridge", c.host_veth.clone()))?;
        changed = true;
    }
    changed |= set_up(h, &host).await?;
    // Hairpin: a container reaching its own published port through the host address gets
    // its packets back out of the port they came in on, which a bridge refuses otherwise
    // (br_forward.c: should_deliver()). Setting it is idempotent, so it is not a change.
    h.link()
        .set_port(LinkBridgePort::new(host.index).hairpin(true).build())
        .execute()
        .await
        .map_err(nl_err("set hairpin mode on", c.host_veth.clone()))?;
    if static_fdb {
        ensure_fdb_entry(h, c, &host).await?;
    }
    Ok((changed, created))
}

/// A static FDB entry on the bridge for the container's MAC, through its port `host`.
///
/// The eBPF data plane sends a container's packets of known flows on from its host veth
/// (`netplane_from_container`), before the bridge, which then stops seeing that MAC as a
/// source: a learned entry would age out (300 s) while the flow lives, and the packets
/// that still cross the bridge towards the container (the pure ACKs of a bulk download,
/// say) would then flood every port of the network. A static entry never ages. It goes
/// with the port (br_fdb_delete_by_port() when the veth leaves the bridge).
///
/// Static, as `bridge fdb replace MAC dev VETH master static` (NUD_NOARP), not
/// `permanent` (NUD_PERMANENT), which the bridge takes for one of its own addresses
/// (BR_FDB_LOCAL: frames to it go up to the host, fdb_add_entry()). The request replaces
/// rather than adds exclusively: an entry the bridge learned already (an older netplane,
/// or packets before this `up`) answers an exclusive add with EEXIST and would stay a
/// learned one; a replace makes it static, and changes nothing when it is (idempotent, so
/// not counted as a change). With no NTF_SELF or NTF_MASTER flag, rtnl_fdb_add() hands it
/// to the port's master, the bridge. Without the hook the bridge sees every packet and
/// learns the MAC, so none is made; one made before the hook was switched off stays (it
/// is right, and goes with the port).
async fn ensure_fdb_entry(h: &Handle, c: &Container, host: &Link) -> Result<(), TopologyError> {
    h.neighbours()
        .add_bridge(host.index, &c.mac)
        .state(NeighbourState::Noarp)
        .replace()
        .execute()
        .await
        .map_err(nl_err("add the static FDB entry of", c.host_veth.clone()))
}

/// The host end of a ptp container's veth pair: created if missing (the container end
/// named eth0 inside its netns, with the container's MAC), on no bridge, up, with the
/// network's gateway as a /32, and the host's /32 route to the container through it.
/// Returns (changed, created).
pub async fn ensure_ptp_veth(
    h: &Handle,
    c: &Container,
    net: &Network,
) -> Result<(bool, bool), TopologyError> {
    let (host, created) = host_end(h, c, net).await?;
    let mut changed = created | ensure_mtu(h, &host, net.mtu).await?;
    if host.master.is_some() {
        h.link()
            .set(
                LinkUnspec::new_with_index(host.index)
                    .nocontroller()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err("take off its bridge", c.host_veth.clone()))?;
        changed = true;
    }
    let gw = net.gateway.map(|g| Ipv4Net::new(g, 32).expect("a /32"));
    changed |= ensure_only_address(h, &c.host_veth, host.index, gw).await?;
    if c.ip6.is_some() && net.gateway6.is_some() {
        // Before the device comes up: its link-local address is made then.
        enable_ipv6(&c.host_veth)?;
    }
    changed |= set_up(h, &host).await?;
    // The route needs the device up (a route through a down device is refused).
    if let (Some(ip), Some(gw)) = (c.ip, net.gateway) {
        let to_container = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(host.index)
            .scope(RouteScope::Link)
            .pref_source(gw)
            .protocol(RouteProtocol::Static)
            .build();
        changed |= ensure_route(h, to_container, &format!("{ip}/32 dev {}", c.host_veth)).await?;
    }
    // A network with a subnet6: the same with gateway6 and the container's /128.
    if let (Some(ip6), Some(gw6)) = (c.ip6, net.gateway6) {
        let gw = Ipv6Net::new(gw6, 128).expect("a /128");
        changed |= ensure_only_address6(h, &c.host_veth, host.index, Some(gw)).await?;
        let to_container = route_to(IpNet::V6(Ipv6Net::new(ip6, 128).expect("a /128")))
            .output_interface(host.index)
            .build();
        changed |= ensure_route(h, to_container, &format!("{ip6}/128 dev {}", c.host_veth)).await?;
    }
    Ok((changed, created))
}

/// Readies netplane's own device `dev` for IPv6, before it comes up:
/// - no duplicate address detection: the host forwards into containers with neighbour
///   solicitations sent from the device's link-local address, and the kernel sends none
///   while that address is tentative (ndisc_send_ns() returns without a usable
///   link-local), which for a second or two would drop forwarded packets;
/// - IPv6 on, where the host has it off by default (`default.disable_ipv6 = 1` gives new
///   devices none, and the kernel then refuses their addresses: EACCES in
///   addrconf_add_dev()), as netavark does.
fn enable_ipv6(dev: &str) -> Result<(), TopologyError> {
    for (key, want) in [
        (format!("net.ipv6.conf.{dev}.accept_dad"), "0"),
        (format!("net.ipv6.conf.{dev}.disable_ipv6"), "0"),
    ] {
        if crate::sysctl::read(&key).is_ok_and(|v| v != want) {
            crate::sysctl::write(&key, want).map_err(|e| TopologyError::Sysctl(e.to_string()))?;
        }
    }
    Ok(())
}

/// Adds or replaces `route` (of either family) in the main table unless a route of the
/// same destination with the same gateway and device is there. Returns whether it
/// changed anything.
async fn ensure_route(h: &Handle, route: RouteMessage, what: &str) -> Result<bool, TopologyError> {
    let key = |r: &RouteMessage| {
        let mut dst = None;
        let mut gw = None;
        let mut oif = None;
        let mut src = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => gw = ip_of(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(s) => src = ip_of(s),
                _ => {}
            }
        }
        (
            dst,
            r.header.destination_prefix_length,
            gw,
            oif,
            src,
            r.header.kind,
        )
    };
    let want = key(&route);
    let v6 = route.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
    let present: Vec<RouteMessage> = routes_of(h, v6, "list routes for", what)
        .await?
        .into_iter()
        .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN)
        .collect();
    // Without a device in the wish (a route via a gateway), any device matches.
    if present.iter().any(|r| {
        let k = key(r);
        k.0 == want.0
            && k.1 == want.1
            && k.2 == want.2
            && (want.3.is_none() || k.3 == want.3)
            && (want.4.is_none() || k.4 == want.4)
            && k.5 == want.5
    }) {
        return Ok(false);
    }
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl_err("add route", what))?;
    Ok(true)
}

/// `[[routes]]`: the host's route to another host's container subnet, IPv4 or IPv6.
/// Returns whether it changed anything.
pub async fn ensure_host_route(h: &Handle, r: &Route) -> Result<bool, TopologyError> {
    let route = route_to(r.subnet)
        .gateway(r.via)
        .expect("a planned route's subnet and via are of one family")
        .build();
    ensure_route(h, route, &format!("{} via {}", r.subnet, r.via)).await
}

/// A `proto static` route of the main table to `dst`, of its family.
fn route_to(dst: IpNet) -> RouteMessageBuilder<IpAddr> {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .expect("a prefix's length fits its family")
}

/// The main table's routes to exactly `subnet`.
pub async fn routes_to(h: &Handle, subnet: IpNet) -> Result<Vec<RouteMessage>, TopologyError> {
    let v6 = matches!(subnet, IpNet::V6(_));
    let routes = routes_of(h, v6, "list routes to", subnet.to_string()).await?;
    Ok(routes
        .into_iter()
        .filter(|r| {
            r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.destination_prefix_length == subnet.prefix_len()
                && destination_of(r, v6) == subnet.addr()
        })
        .collect())
}

/// An address of a route attribute, of either family.
fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The destination of a route: the family's unspecified address when it has none (the
/// default route's).
fn destination_of(r: &RouteMessage, v6: bool) -> IpAddr {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => ip_of(d),
            _ => None,
        })
        .unwrap_or(if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        })
}

/// The gateway of a route, if it has one.
pub fn gateway_of(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => ip_of(g),
        _ => None,
    })
}

/// Every route of one family (IPv6 when `v6`) of the namespace of `h` (all tables);
/// `action` and `object` name the listing in an error.
async fn routes_of(
    h: &Handle,
    v6: bool,
    action: &'static str,
    object: impl Into<String>,
) -> Result<Vec<RouteMessage>, TopologyError> {
    let all = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    h.route()
        .get(all)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(action, object))
}

/// A ptp network's subnet (or subnet6) as `blackhole` (`proto static`): its containers'
/// /32 (/128) routes are more specific, and a packet to an address of the subnet that no
/// container has ends here instead of following the default route back out. A
/// blackhole, not an `unreachable`: that would answer with an ICMP error before the
/// firewall's FORWARD drop, and so tell a prober which addresses have no container, where
/// a nat bridge network stays silent about both. Returns whether it changed anything.
pub async fn ensure_cover(h: &Handle, subnet: IpNet) -> Result<bool, TopologyError> {
    let route = route_to(subnet).kind(RouteType::BlackHole).build();
    ensure_route(h, route, &format!("blackhole {subnet}")).await
}

/// The IPv6 routes of the main table: destination and device (`None`: a blackhole, or
/// via a gateway without one).
pub async fn main_routes6(h: &Handle) -> Result<Vec<(Ipv6Net, Option<u32>)>, TopologyError> {
    let routes = routes_of(h, true, "list", "IPv6 routes").await?;
    Ok(routes
        .iter()
        .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN)
        .filter_map(|r| {
            let IpAddr::V6(dst) = destination_of(r, true) else {
                return None;
            };
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            Some((
                Ipv6Net::new(dst, r.header.destination_prefix_length).ok()?,
                oif,
            ))
        })
        .collect())
}

/// A route of the main table, as the checks look at it.
#[derive(Debug, Clone)]
pub struct MainRoute {
    pub dst: Ipv4Net,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub kind: RouteType,
}

impl MainRoute {
    /// As `ip route` would show it, briefly.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            RouteType::Unicast => String::new(),
            other => format!("{} ", format!("{other:?}").to_lowercase()),
        };
        let via = self
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        format!("{kind}{}{via}", self.dst)
    }
}

/// The IPv4 routes of the main table.
pub async fn main_routes(h: &Handle) -> Result<Vec<MainRoute>, TopologyError> {
    Ok(routes_of(h, false, "list", "routes")
        .await?
        .into_iter()
        .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN)
        .map(|r| {
            let prefix_len = r.header.destination_prefix_length;
            let v4 = |a: Option<IpAddr>| match a {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            };
            MainRoute {
                dst: v4(Some(destination_of(&r, false)))
                    .and_then(|d| Ipv4Net::new(d, prefix_len).ok())
                    .unwrap_or_default(),
                prefix_len,
                gateway: v4(gateway_of(&r)),
                oif: r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }),
                kind: r.header.kind,
            }
        })
        .collect())
}

/// Deletes the main table's `proto static` routes to exactly `subnet` (a `[[routes]]`
/// entry, a ptp network's cover route, a container's default route); `Ok(false)` when
/// there was none.
pub async fn delete_host_route(h: &Handle, subnet: IpNet) -> Result<bool, TopologyError> {
    delete_static(h, routes_to(h, subnet).await?, subnet.to_string()).await
}

/// Deletes the `proto static` routes among `routes` (those netplane adds); `Ok(false)`
/// when there was none. `what` names them in an error.
async fn delete_static(
    h: &Handle,
    routes: Vec<RouteMessage>,
    what: String,
) -> Result<bool, TopologyError> {
    let mut deleted = false;
    for r in routes {
        if r.header.protocol != RouteProtocol::Static {
            continue;
        }
        match h.route().del(r).execute().await {
            Ok(()) => deleted = true,
            Err(e) if errno(&e) == Some(libc::ESRCH) => {}
            Err(e) => return Err(nl_err("delete route to", what)(e)),
        }
    }
    Ok(deleted)
}

/// Inside the container's namespace (handle `ch`): lo and eth0 up, eth0 with the MAC and
/// address of the plan, and the default route via the gateway (on a ptp network an onlink
/// one, the gateway being outside the container's /32; none on an isolated network).
pub async fn ensure_container_inside(
    ch: &Handle,
    c: &Container,
    net: &Network,
) -> Result<bool, TopologyError> {
    let lo = link(ch, "lo")
        .await?
        .ok_or_else(|| TopologyError::Vanished {
            object: format!("{}: lo", c.netns),
        })?;
    let mut changed = set_up(ch, &lo).await?;
    let eth = link(ch, c.ifname())
        .await?
        .ok_or_else(|| TopologyError::Vanished {
            object: format!("{}: {}", c.netns, c.ifname()),
        })?;
    if eth.mac != Some(c.mac) {
        ch.link()
            .set(
                LinkUnspec::new_with_index(eth.index)
                    .address(c.mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(
                "set the MAC of",
                format!("{}: {}", c.netns, c.ifname()),
            ))?;
        changed = true;
    }
    // A runtime's namespace may hold another plugin's addresses: only netplane's own
    // containers lose those it did not give.
    let want = c.net4();
    if want.is_some() || c.attachment.is_none() {
        changed |=
            ensure_only_address(ch, &format!("{}: {}", c.netns, c.ifname()), eth.index, want)
                .await?;
    }
    // IPv6 on a network with a subnet6.
    // The subnet6's prefix on a bridge, a /128 on ptp (as the IPv4 /32).
    let want6 = c.ip6.zip(net.subnet6).map(|(ip6, s6)| {
        let prefix = match net.driver {
            crate::config::Driver::Bridge => s6.prefix_len(),
            crate::config::Driver::Ptp => 128,
        };
        Ipv6Net::new(ip6, prefix).expect("/64–/128")
    });
    if want6.is_some() {
        // A runtime's namespace may have IPv6 off (`default.disable_ipv6 = 1` where it
        // was made): the interface netplane gives an IPv6 address gets it on. (In the
        // container's namespace: /proc/sys/net is the reading thread's namespace's.)
        let key = format!("net.ipv6.conf.{}.disable_ipv6", c.ifname());
        let on = crate::netns::run_in(&c.netns, || match crate::sysctl::read(&key) {
            Ok(v) if v != "0" => crate::sysctl::write(&key, "0").map(|()| true),
            _ => Ok(false),
        })?
        .map_err(|e| TopologyError::Sysctl(e.to_string()))?;
        changed |= on;
    }
    if want6.is_some() || c.attachment.is_none() {
        changed |= ensure_only_address6(
            ch,
            &format!("{}: {}", c.netns, c.ifname()),
            eth.index,
            want6,
        )
        .await?;
    }
    changed |= ensure_mtu(ch, &eth, net.mtu).await?;
    changed |= set_up(ch, &eth).await?;
    if net.has_gateway()
        && let (Some(_), Some(gw6)) = (want6, net.gateway6)
    {
        let onlink = net.driver == crate::config::Driver::Ptp;
        changed |= ensure_default_route6(ch, &c.netns, eth.index, gw6, onlink).await?;
    }
    // A runtime's namespace may have other interfaces, whose default route is not
    // netplane's to replace or delete (the bridge plugin's ipam.ConfigureIface adds its
    // routes beside others, too).
    let shared = c.attachment.is_some();
    if net.has_gateway() {
        if let Some(gw) = c.gateway {
            let onlink = net.driver == crate::config::Driver::Ptp;
            changed |= ensure_default_route(ch, &c.netns, eth.index, gw, onlink, shared).await?;
        }
    } else if !shared {
        // A network that became isolated: its containers lose their way out, in both
        // families.
        changed |= delete_host_route(ch, IpNet::V4(Ipv4Net::default())).await?;
        changed |= delete_host_route(ch, IpNet::V6(Ipv6Net::default())).await?;
    }
    Ok(changed)
}

async fn ensure_default_route(
    ch: &Handle,
    ns: &str,
    oif: u32,
    gw: Ipv4Addr,
    onlink: bool,
    keep_others: bool,
) -> Result<bool, TopologyError> {
    let routes = routes_of(ch, false, "list routes of", ns).await?;
    let current = routes
        .iter()
        .find(|r| r.header.destination_prefix_length == 0)
        .map(|r| {
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            let dev = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            (gw, dev)
        });
    if current == Some((Some(gw), Some(oif))) {
        return Ok(false);
    }
    // Another interface's default route, kept: this one gets none.
    if keep_others && current.is_some_and(|(_, dev)| dev != Some(oif)) {
        return Ok(false);
    }
    replace_default_route(ch, ns, oif, IpAddr::V4(gw), onlink).await
}

/// Sets the default route of namespace `ns` (handle `ch`) via `gw` on `oif` (onlink on a
/// ptp network, where the gateway is outside the container's /32 or /128), in place of
/// the one there. Returns `true`: it changed.
async fn replace_default_route(
    ch: &Handle,
    ns: &str,
    oif: u32,
    gw: IpAddr,
    onlink: bool,
) -> Result<bool, TopologyError> {
    // rtnetlink's builders are typed per family.
    let route = match gw {
        IpAddr::V4(g) => {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(oif);
            if onlink { r.onlink() } else { r }.build()
        }
        IpAddr::V6(g) => {
            let r = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(oif);
            if onlink { r.onlink() } else { r }.build()
        }
    };
    ch.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl_err(
            "set the default route of",
            format!("{ns} (via {gw})"),
        ))?;
    Ok(true)
}

/// The interface of the default route in the caller's namespace, if there is one.
pub async fn default_route_interface(h: &Handle) -> Result<Option<String>, TopologyError> {
    let routes = routes_of(h, false, "list", "routes").await?;
    let oif = routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .flat_map(|r| r.attributes.iter())
        .find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
    let Some(index) = oif else { return Ok(None) };
    Ok(link_by_index(h, index).await?.map(|l| l.name))
}

/// The link of index `index`, if it exists.
pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<Link>, TopologyError> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(m) => Ok(m.map(Link::from)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err("look up link", index.to_string())(e)),
    }
}

/// A namespace's links, its IPv4 addresses and its global IPv6 addresses, per interface
/// index.
pub type HostNow = (Vec<Link>, Vec<(u32, Ipv4Net)>, Vec<(u32, Ipv6Net)>);

/// The links and addresses of the caller's namespace as they are now (the IPv6 ones only
/// when `v6` is asked for: a dump of them grows with the veths), read on a thread of its
/// own with a runtime of its own, so that callers inside a runtime (the agent's event
/// loop) and outside one (`status`) can ask alike.
pub fn host_now(v6: bool) -> Result<HostNow, TopologyError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(TopologyError::Socket)?;
            rt.block_on(async {
                let h = connect(None)?;
                let addrs6 = if v6 {
                    ipv6_addresses(&h).await?
                } else {
                    Vec::new()
                };
                Ok((links(&h).await?, ipv4_addresses(&h).await?, addrs6))
            })
        })
        .join()
        .expect("netlink thread does not panic")
    })
}

/// The changes of links and addresses in the caller's namespace, one item per
/// notification (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR, what `ip
/// monitor link address` shows): a device created, deleted or changed, an address added
/// or removed. The items say only that something changed; the caller looks again with
/// [`host_now`]. The stream ends if the socket fails (an overrun: ENOBUFS), and the
/// connection is driven on the current tokio runtime.
pub fn watch_links_and_addresses() -> Result<impl futures::Stream<Item = ()> + Unpin, TopologyError>
{
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])
    .map_err(TopologyError::Socket)?;
    tokio::spawn(conn);
    Ok(messages.map(|_| ()))
}

/// A container's interface as CNI's CHECK looks at it, from inside its namespace.
#[derive(Debug, Clone)]
pub struct Inside {
    /// The interface, when it exists.
    pub link: Option<Link>,
    /// Its IPv4 addresses.
    pub addrs: Vec<Ipv4Net>,
    /// Its global IPv6 addresses.
    pub addrs6: Vec<Ipv6Net>,
    /// The namespace's main-table routes.
    pub routes: Vec<MainRoute>,
}

/// Interface `ifname` of namespace `ns` (a name or a path), its addresses, and the
/// namespace's routes.
pub async fn inside(ns: &str, ifname: &str) -> Result<Inside, TopologyError> {
    let ch = connect(Some(ns))?;
    let link = link(&ch, ifname).await?;
    let addrs = match &link {
        Some(l) => ipv4_addresses(&ch)
            .await?
            .into_iter()
            .filter(|(i, _)| *i == l.index)
            .map(|(_, a)| a)
            .collect(),
        None => Vec::new(),
    };
    let addrs6 = match &link {
        Some(l) => addresses(&ch, Some((ifname, l.index)), true)
            .await?
            .into_iter()
            .filter_map(|(_, a)| match a {
                IpNet::V6(a) => Some(a),
                IpNet::V4(_) => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Inside {
        link,
        addrs,
        addrs6,
        routes: main_routes(&ch).await?,
    })
}

/// A route inside a container's namespace (`ns`) to `dst` through its interface `oif`,
/// via `gw` when given: the routes an IPAM result names beyond the default one.
pub async fn ensure_container_route(
    ns: &str,
    oif: u32,
    dst: Ipv4Net,
    gw: Option<Ipv4Addr>,
) -> Result<bool, TopologyError> {
    let ch = connect(Some(ns))?;
    let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .output_interface(oif);
    if let Some(gw) = gw {
        route = route.gateway(gw);
    }
    ensure_route(&ch, route.build(), &format!("{ns}: {dst}")).await
}

/// The IPv6 default route of a container (handle `ch`, namespace `ns`): via `gw` on `oif`.
/// One through another interface is left alone (see `ensure_default_route`).
async fn ensure_default_route6(
    ch: &Handle,
    ns: &str,
    oif: u32,
    gw: Ipv6Addr,
    onlink: bool,
) -> Result<bool, TopologyError> {
    let defaults = default_routes6(ch, ns).await?;
    if defaults.contains(&(Some(gw), Some(oif))) || defaults.iter().any(|(_, d)| *d != Some(oif)) {
        return Ok(false);
    }
    replace_default_route(ch, ns, oif, IpAddr::V6(gw), onlink).await
}

/// The IPv6 default routes of the namespace of `ch` (`ns` names it in errors): gateway and
/// device of each.
async fn default_routes6(
    ch: &Handle,
    ns: &str,
) -> Result<Vec<(Option<Ipv6Addr>, Option<u32>)>, TopologyError> {
    let routes = routes_of(ch, true, "list IPv6 routes of", ns).await?;
    Ok(routes
        .iter()
        .filter(|r| {
            r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
        })
        .map(|r| {
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(*g),
                _ => None,
            });
            let dev = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            (gw, dev)
        })
        .collect())
}

/// The gateway of the IPv6 default route through interface `oif` of namespace `ns`.
pub async fn default_route6_via(ns: &str, oif: u32) -> Result<Option<Ipv6Addr>, TopologyError> {
    let ch = connect(Some(ns))?;
    Ok(default_routes6(&ch, ns)
        .await?
        .into_iter()
        .find(|(_, d)| *d == Some(oif))
        .and_then(|(g, _)| g))
}
