//! The eBPF data plane: TC programs on the uplink and on every bridge (attached as TCX
//! links), with connection tracking in BPF maps. No iptables rule, no nf_conntrack.
//!
//! Everything lives under `/sys/fs/bpf/netplane/<name>/`: the maps (`NP_*`) and one link
//! per program and device (`link_<program>_<device>`). Pins keep the data plane running
//! when the agent exits or is killed; a new `up` reuses the pinned maps (so the
//! conntrack table, and every established connection, survives) and swaps the programs
//! inside the pinned links atomically (BPF_LINK_UPDATE). `down` removes the directory,
//! which unpins, and so detaches, everything.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
};
use aya::{Ebpf as AyaEbpf, EbpfLoader};
use netplane_common::nat::{
    Backend, CtEntry, CtKey, DpConfig, DropReason, Endpoint, FragEntry, FragKey, NetInfo, PortKey,
    Tick, Timeouts, flags, forwarded, maps, s_to_ticks, tick, ticks_since, ticks_to_s,
};

use super::{Dataplane, DataplaneError, DataplaneStatus, HostContext};
use crate::bpffs;
use crate::config::{Mode, Plan};
use crate::ebpf::OBJECT;

pub const PIN_ROOT: &str = "/sys/fs/bpf/netplane";

/// The NAT programs and where each is attached.
const PROGRAMS: [(&str, TcAttachType, Target); 4] = [
    (
        "netplane_uplink_ingress",
        TcAttachType::Ingress,
        Target::Uplink,
    ),
    (
        "netplane_uplink_egress",
        TcAttachType::Egress,
        Target::Uplink,
    ),
    (
        "netplane_bridge_ingress",
        TcAttachType::Ingress,
        Target::Bridges,
    ),
    (
        "netplane_bridge_egress",
        TcAttachType::Egress,
        Target::Bridges,
    ),
];

/// The socket-layer programs for host processes, attached to the root cgroup.
const SOCK_PROGRAMS: [&str; 3] = [
    "netplane_connect4",
    "netplane_sendmsg4",
    "netplane_recvmsg4",
];

#[derive(Clone, Copy)]
enum Target {
    Uplink,
    Bridges,
}

pub struct Ebpf;

pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(name)
}

fn link_pin(dir: &Path, program: &str, device: &str) -> PathBuf {
    dir.join(format!("link_{program}_{device}"))
}

/// Addresses and ports as the programs see them: network byte order in memory.
fn ne_addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn ne_port(p: u16) -> u16 {
    p.to_be()
}

fn err(what: impl Into<String>) -> impl FnOnce(String) -> DataplaneError {
    let what = what.into();
    move |detail| DataplaneError::Ebpf { what, detail }
}

/// `e` with its whole chain (aya's load errors carry the verifier log in their source).
fn chain(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The devices each program goes on, for `plan` on uplink `uplink`.
fn attachments<'a>(
    plan: &'a Plan,
    uplink: &'a str,
) -> impl Iterator<Item = (&'static str, TcAttachType, &'a str)> + 'a {
    PROGRAMS.iter().flat_map(move |&(prog, kind, target)| {
        let devices: Vec<&'a str> = match target {
            Target::Uplink => vec![uplink],
            Target::Bridges => plan.networks.iter().map(|n| n.name.as_str()).collect(),
        };
        devices.into_iter().map(move |d| (prog, kind, d))
    })
}

impl Ebpf {
    fn load(dir: &Path, plan: &Plan) -> Result<AyaEbpf, DataplaneError> {
        let paths: Vec<(&str, PathBuf)> = maps::PINNED.iter().map(|m| (*m, dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::CT, plan.conntrack.max_entries);
        for (m, p) in &paths {
            loader.map_pin_path(m, p.as_path());
        }
        loader
            .load(OBJECT)
            .map_err(|e| err("load netplane's eBPF object")(chain(e)))
    }

    /// Attaches `program` to `device`, or swaps it into the link pinned from an earlier
    /// `up`, and leaves the link pinned.
    fn attach(
        bpf: &mut AyaEbpf,
        program: &str,
        kind: TcAttachType,
        device: &str,
        pin: &Path,
    ) -> Result<bool, DataplaneError> {
        let what = format!("attach {program} to {device}");
        let prog: &mut SchedClassifier = bpf
            .program_mut(program)
            .ok_or_else(|| err(what.clone())("missing from the object".into()))?
            .try_into()
            .map_err(|e| err(what.clone())(chain(e)))?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| err(format!("load {program}"))(chain(e)))?;
        }
        let (id, fresh) = match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| err(what.clone())(chain(e)))?;
                (
                    prog.attach_to_link(link)
                        .map_err(|e| err(what.clone())(chain(e)))?,
                    false,
                )
            }
            Err(_) => (
                prog.attach(device, kind)
                    .map_err(|e| err(what.clone())(chain(e)))?,
                true,
            ),
        };
        // The pin, not this process, keeps the link: take it from aya so that dropping
        // the Ebpf object does not detach it.
        let link = prog
            .take_link(id)
            .map_err(|e| err(what.clone())(chain(e)))?;
        if fresh {
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| err(what.clone())(chain(e)))?;
            fd.pin(pin)
                .map_err(|e| err(format!("pin {}", pin.display()))(chain(e)))?;
        }
        Ok(fresh)
    }

    /// Attaches a socket-layer program to the root cgroup v2 and pins the link, replacing
    /// the link an earlier `up` pinned (rename over it: the old link's last reference goes,
    /// which detaches it).
    fn attach_cgroup(bpf: &mut AyaEbpf, program: &str, pin: &Path) -> Result<(), DataplaneError> {
        let what = format!("attach {program} to the root cgroup");
        let root = cgroup2_root().ok_or_else(|| {
            err(what.clone())("no cgroup v2 mount in /proc/self/mountinfo".into())
        })?;
        let cgroup =
            std::fs::File::open(&root).map_err(|e| err(what.clone())(format!("{root}: {e}")))?;
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(program)
            .ok_or_else(|| err(what.clone())("missing from the object".into()))?
            .try_into()
            .map_err(|e| err(what.clone())(chain(e)))?;
        prog.load()
            .map_err(|e| err(format!("load {program}"))(chain(e)))?;
        // A BPF link on a cgroup always coexists with other programs; BPF_LINK_CREATE rejects
        // the BPF_F_ALLOW_MULTI flag that AllowMultiple would pass (cgroup_bpf_link_attach()
        // takes no flags), so Single (no flag) is what yields a multi attachment here.
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| err(what.clone())(chain(e)))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|e| err(what.clone())(chain(e)))?
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| err(what.clone())(chain(e)))?;
        // bpffs refuses names with a dot (bpf_mkobj_ops: EPERM), hence no ".new".
        let tmp = PathBuf::from(format!("{}_new", pin.display()));
        let _ = std::fs::remove_file(&tmp);
        link.pin(&tmp)
            .map_err(|e| err(format!("pin {}", tmp.display()))(chain(e)))?;
        std::fs::rename(&tmp, pin).map_err(|e| err(format!("pin {}", pin.display()))(e.to_string()))
    }

    /// Writes the plan into the maps: settings, subnets, local addresses, published ports.
    /// With the `old` plan those maps were last programmed with, only the published ports
    /// that changed are written (one change costs a syscall or two, whatever N); without
    /// it, the map is synchronised entry by entry.
    fn program_maps(
        maps: &mut Maps,
        plan: &Plan,
        host: &HostContext,
        old: Option<&Plan>,
    ) -> Result<(), DataplaneError> {
        let map_err = |m: &str| err(format!("program map {m}"));
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
            netns_cookie: netns_cookie()
                .map_err(|e| err("read this namespace's cookie")(e.to_string()))?,
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
            Array::try_from(&mut maps.config).map_err(|e| map_err(maps::CONFIG)(chain(e)))?;
        config
            .set(0, cfg, 0)
            .map_err(|e| map_err(maps::CONFIG)(chain(e)))?;

        let mut subnets: LpmTrie<_, u32, NetInfo> =
            LpmTrie::try_from(&mut maps.subnets).map_err(|e| map_err(maps::SUBNETS)(chain(e)))?;
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
                .map_err(|e| map_err(maps::SUBNETS)(chain(e)))?;
        }

        let local_addrs = host
            .local_addrs
            .iter()
            .copied()
            .chain([Ipv4Addr::LOCALHOST])
            .map(|a| (ne_addr(a), 1u32))
            .collect();
        sync_map(&mut maps.local_addrs, maps::LOCAL_ADDRS, &local_addrs)?;
        // The containers, for delivery straight into them. Their devices are read from the
        // kernel each time: a recreated container has a new ifindex.
        let endpoints = plan
            .containers
            .iter()
            .filter_map(|c| Some((ne_addr(c.ip), container_endpoint(c)?)))
            .collect();
        sync_map(&mut maps.endpoints, maps::ENDPOINTS, &endpoints)?;

        let mut published: HashMap<_, PortKey, Backend> = HashMap::try_from(&mut maps.published)
            .map_err(|e| map_err(maps::PUBLISHED)(chain(e)))?;
        let (remove, write) = match old.and_then(|old| published_edits(old, plan)) {
            Some(edits) => edits,
            None => {
                let want = published_entries(plan);
                let had: std::collections::BTreeMap<PortKey, Backend> = match old {
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
                .map_err(|e| map_err(maps::PUBLISHED)(chain(e)))?;
        }
        Ok(())
    }
}

/// Makes hash map `map` (named `name`) hold exactly `want`: what it has and `want` has not
/// goes, the rest is written.
fn sync_map<K: aya::Pod + Ord, V: aya::Pod>(
    map: &mut aya::maps::Map,
    name: &str,
    want: &std::collections::BTreeMap<K, V>,
) -> Result<(), DataplaneError> {
    let map_err = || err(format!("program map {name}"));
    let mut m: HashMap<_, K, V> = HashMap::try_from(map).map_err(|e| map_err()(chain(e)))?;
    let stale: Vec<K> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    for (k, v) in want {
        m.insert(k, v, 0).map_err(|e| map_err()(chain(e)))?;
    }
    Ok(())
}

/// Container `c` as the programs deliver to it, from its devices in this namespace. None
/// when they cannot be read: its packets then take the kernel's path.
fn container_endpoint(c: &crate::config::Container) -> Option<Endpoint> {
    let ifindex = nix::net::if_::if_nametoindex(c.host_veth.as_str()).ok()?;
    let (mtu, _) = link_info(&c.host_veth)?;
    let (_, gateway_mac) = link_info(&c.network)?;
    Some(Endpoint {
        ifindex,
        mtu,
        mac: c.mac,
        gateway_mac,
    })
}

/// The MTU and MAC address of device `name` in this namespace (SIOCGIFMTU, SIOCGIFHWADDR;
/// sysfs would show the namespace it was mounted in, not necessarily ours).
fn link_info(name: &str) -> Option<(u32, [u8; 6])> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscalls on a socket we own; `ifr` is a zeroed C struct whose name
    // field gets at most IFNAMSIZ - 1 bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        if name.len() >= ifr.ifr_name.len() {
            return None;
        }
        for (d, b) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) < 0 {
            return None;
        }
        let mtu = ifr.ifr_ifru.ifru_mtu as u32;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) < 0 {
            return None;
        }
        let data = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        Some((mtu, std::array::from_fn(|i| data[i] as u8)))
    }
}

/// The maps the agent programs, from a freshly loaded object or from their pins.
struct Maps {
    config: aya::maps::Map,
    subnets: aya::maps::Map,
    local_addrs: aya::maps::Map,
    published: aya::maps::Map,
    endpoints: aya::maps::Map,
}

impl Maps {
    fn take(bpf: &mut AyaEbpf) -> Maps {
        let mut take = |name| bpf.take_map(name).expect("the object has its maps");
        Maps {
            config: take(maps::CONFIG),
            subnets: take(maps::SUBNETS),
            local_addrs: take(maps::LOCAL_ADDRS),
            published: take(maps::PUBLISHED),
            endpoints: take(maps::ENDPOINTS),
        }
    }

    fn pinned(name: &str) -> Option<Maps> {
        Some(Maps {
            config: pinned_map(name, maps::CONFIG)?,
            subnets: pinned_map(name, maps::SUBNETS)?,
            local_addrs: pinned_map(name, maps::LOCAL_ADDRS)?,
            published: pinned_map(name, maps::PUBLISHED)?,
            endpoints: pinned_map(name, maps::ENDPOINTS)?,
        })
    }
}

/// The map entries of one publish mapping of container `c`.
fn mapping_entries<'a>(
    plan: &'a Plan,
    c: &'a crate::config::Container,
    m: &'a crate::config::PortMapping,
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
fn published_entries(plan: &Plan) -> std::collections::BTreeMap<PortKey, Backend> {
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

/// The NAT programs loaded with private (unpinned) maps programmed for a plan, attached
/// nowhere: for running them on crafted packets with BPF_PROG_TEST_RUN.
pub struct Detached {
    bpf: AyaEbpf,
}

impl Detached {
    pub fn load(plan: &Plan, host: &HostContext) -> Result<Detached, DataplaneError> {
        let mut bpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| err("load netplane's eBPF object")(chain(e)))?;
        for (prog, _, _) in PROGRAMS {
            let p: &mut SchedClassifier = bpf
                .program_mut(prog)
                .ok_or_else(|| err(format!("load {prog}"))("missing from the object".into()))?
                .try_into()
                .map_err(|e| err(format!("load {prog}"))(chain(e)))?;
            p.load()
                .map_err(|e| err(format!("load {prog}"))(chain(e)))?;
        }
        Ebpf::program_maps(&mut Maps::take(&mut bpf), plan, host, None)?;
        Ok(Detached { bpf })
    }

    /// Runs `program` once on `frame`; returns its verdict and the frame as it left.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> Result<(i32, Vec<u8>), DataplaneError> {
        let mut out = vec![0u8; frame.len() + 256];
        let what = format!("test-run {program}");
        let p: &mut SchedClassifier = self
            .bpf
            .program_mut(program)
            .ok_or_else(|| err(what.clone())("missing from the object".into()))?
            .try_into()
            .map_err(|e| err(what.clone())(chain(e)))?;
        let res = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|e| err(what.clone())(chain(e)))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value as i32, out))
    }

    /// Drops per reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        self.bpf.map(maps::DROPS).map(sum_drops).unwrap_or_default()
    }
}

/// The cookie of the caller's network namespace (SO_NETNS_COOKIE, Linux 5.14), which the
/// socket-layer programs compare with bpf_get_netns_cookie().
fn netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The root of the cgroup v2 hierarchy (not always /sys/fs/cgroup: hybrid systems mount it
/// at /sys/fs/cgroup/unified).
fn cgroup2_root() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
    })
}

/// Opens a map pinned by instance `name`.
fn pinned_map(name: &str, map: &str) -> Option<aya::maps::Map> {
    let data = MapData::from_pin(pin_dir(name).join(map)).ok()?;
    aya::maps::Map::from_map_data(data).ok()
}

/// The settings the programs of instance `name` run with (its pinned config map).
fn pinned_config(name: &str) -> Option<DpConfig> {
    let map = pinned_map(name, maps::CONFIG)?;
    Array::<_, DpConfig>::try_from(map).ok()?.get(&0, 0).ok()
}

/// Kernel memory per entry of instance `name`'s conntrack map: the map's `memlock` (in
/// /proc/self/fdinfo, what the kernel charges for it) over its capacity.
pub fn ct_bytes_per_entry(name: &str) -> Option<f64> {
    use std::os::fd::{AsFd, AsRawFd};
    let data = MapData::from_pin(pin_dir(name).join(maps::CT)).ok()?;
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<f64>().ok())
    };
    Some(field("memlock:")? / field("max_entries:")?)
}

/// The live conntrack entries of instance `name`.
pub fn conntrack_entries(name: &str) -> Vec<(CtKey, CtEntry)> {
    let Some(map) = pinned_map(name, maps::CT) else {
        return Vec::new();
    };
    let Ok(ct) = HashMap::<_, CtKey, CtEntry>::try_from(map) else {
        return Vec::new();
    };
    ct.iter().filter_map(Result::ok).collect()
}

/// Drops per reason of instance `name`.
pub fn drop_counters(name: &str) -> Vec<(&'static str, u64)> {
    pinned_map(name, maps::DROPS)
        .as_ref()
        .map(sum_drops)
        .unwrap_or_default()
}

/// How many packets of instance `name` took the short way (netplane-ebpf's `forward`),
/// into containers and out of them, summed over CPUs.
pub fn forwarded_packets(name: &str) -> (u64, u64) {
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

/// The drop counters of a NP_DROPS map, summed over CPUs.
fn sum_drops(map: &aya::maps::Map) -> Vec<(&'static str, u64)> {
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

impl Dataplane for Ebpf {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn check(&self) -> Result<(), DataplaneError> {
        let missing = |what: &str| DataplaneError::Unsupported {
            what: what.to_owned(),
        };
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut v = release
            .split(['.', '-'])
            .filter_map(|n| n.parse::<u32>().ok());
        if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 6) {
            return Err(missing(&format!(
                "Linux ≥ 6.6 for TCX links (this is {release})"
            )));
        }
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(missing("kernel BTF (/sys/kernel/btf/vmlinux)"));
        }
        bpffs::ensure_mounted(Path::new(bpffs::DEFAULT_PATH))
            .map_err(|e| missing(&format!("a BPF filesystem ({e})")))?;
        Ok(())
    }

    fn sysctls(&self, _plan: &Plan) -> Vec<(String, String)> {
        Vec::new()
    }

    fn apply(
        &self,
        plan: &Plan,
        old: Option<&Plan>,
        host: &HostContext,
    ) -> Result<Vec<String>, DataplaneError> {
        let dir = pin_dir(&plan.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(format!("create {}", dir.display()))(e.to_string()))?;
        let wanted: BTreeSet<PathBuf> = attachments(plan, &host.uplink)
            .map(|(prog, _, device)| link_pin(&dir, prog, device))
            .chain(
                SOCK_PROGRAMS
                    .iter()
                    .map(|prog| dir.join(format!("link_{prog}_cgroup"))),
            )
            .collect();
        let pinned: BTreeSet<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
            .map(|e| e.path())
            .collect();
        let stamp_file = crate::state::dir(&plan.name).join("ebpf.object");
        // Hashing the object costs about a millisecond: once per process.
        static STAMP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let stamp = STAMP
            .get_or_init(|| format!("{:08x}-{}", crate::config::fnv1a_32(OBJECT), OBJECT.len()));
        // Fast path: the same programs are attached where the plan wants them, so only the
        // maps change; with the previous plan, only the entries that differ.
        if pinned == wanted
            && old.is_some()
            && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == *stamp)
            && let Some(mut maps) = Maps::pinned(&plan.name)
        {
            Self::program_maps(&mut maps, plan, host, old)?;
            return Ok(Vec::new());
        }
        let mut bpf = Self::load(&dir, plan)?;
        let mut changes = Vec::new();
        for (prog, kind, device) in attachments(plan, &host.uplink) {
            if Self::attach(&mut bpf, prog, kind, device, &link_pin(&dir, prog, device))? {
                changes.push(format!("ebpf: {prog} attached to {device}"));
            }
        }
        for prog in SOCK_PROGRAMS {
            let pin = dir.join(format!("link_{prog}_cgroup"));
            if !pin.exists() {
                changes.push(format!("ebpf: {prog} attached to the root cgroup"));
            }
            Self::attach_cgroup(&mut bpf, prog, &pin)?;
        }
        // Links of devices that left the plan.
        for p in pinned.difference(&wanted) {
            let _ = std::fs::remove_file(p);
            changes.push(format!("ebpf: detached {}", p.display()));
        }
        Self::program_maps(&mut Maps::take(&mut bpf), plan, host, None)?;
        std::fs::write(&stamp_file, stamp).map_err(|source| DataplaneError::Io {
            path: stamp_file.display().to_string(),
            source,
        })?;
        Ok(changes)
    }

    fn teardown(&self, name: &str) -> Result<Vec<String>, DataplaneError> {
        let dir = pin_dir(name);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let removed: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("unpinned {}", e.path().display()))
            .collect();
        std::fs::remove_dir_all(&dir)
            .map_err(|e| err(format!("remove {}", dir.display()))(e.to_string()))?;
        // The per-host directory goes too once no instance uses it.
        let _ = std::fs::remove_dir(PIN_ROOT);
        Ok(removed)
    }

    fn status(&self, plan: &Plan) -> DataplaneStatus {
        let dir = pin_dir(&plan.name);
        let links: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("link_"))
            .collect();
        let mut details: Vec<String> = links
            .iter()
            .map(|l| format!("attached: {}", &l[5..]))
            .collect();
        let expected = SOCK_PROGRAMS.len()
            + PROGRAMS
                .iter()
                .filter(|p| matches!(p.2, Target::Uplink))
                .count()
            + 2 * plan.networks.len();
        details.push(format!(
            "conntrack entries: {} of {}",
            conntrack_entries(&plan.name).len(),
            plan.conntrack.max_entries
        ));
        for (reason, n) in drop_counters(&plan.name) {
            details.push(format!("drops {reason}: {n}"));
        }
        if plan.ebpf.fast_forward {
            let (into, out) = forwarded_packets(&plan.name);
            details.push(format!("fast-forwarded into containers: {into}"));
            details.push(format!("fast-forwarded out of containers: {out}"));
        } else {
            details.push("fast forwarding: off".to_owned());
        }
        DataplaneStatus {
            mode: Mode::Ebpf,
            healthy: links.len() == expected,
            details,
        }
    }
}

/// CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns()) in conntrack ticks.
fn now_tick() -> Tick {
    let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    tick(ns)
}

/// Removes the expired conntrack and fragment entries of instance `name` (the data path
/// already ignores them; this gives their memory back). Returns how many went.
pub fn gc(name: &str) -> usize {
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return 0;
    };
    let mut removed = 0;
    if let Some(map) = pinned_map(name, maps::CT)
        && let Ok(mut ct) = HashMap::<_, CtKey, CtEntry>::try_from(map)
    {
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
    use netplane_common::nat::{kind, seen};
    let now = now_tick();
    let Some(DpConfig { timeouts, .. }) = pinned_config(name) else {
        return Vec::new();
    };
    let entries = conntrack_entries(name);
    let mut flows: Vec<Flow> = entries
        .iter()
        .filter(|(k, e)| e.kind & kind::REPLY == 0 && !timeouts.expired(k.proto, e, now))
        // Each flow once: masquerade and published flows by their only entry, their
        // replies'; hairpin by its original direction's dst-stage entry.
        .filter(|(k, e)| e.kind != kind::HAIRPIN || k.stage == 0)
        .map(|(k, e)| {
            let (mut src, mut dst) = (endpoint(k.saddr, k.sport), endpoint(k.daddr, k.dport));
            let translated = if e.kind == kind::PUBLISHED {
                // Key: backend → client; entry: the published address.
                (src, dst) = (dst, endpoint(e.addr, e.port));
                format!("{src} → {}", endpoint(k.saddr, k.sport))
            } else if e.kind == kind::MASQUERADE {
                // Key: peer → uplink:port; entry: the container.
                let nat = dst;
                (src, dst) = (endpoint(e.addr, e.port), src);
                format!("{nat} → {dst}")
            } else {
                // For hairpin, the src-stage entry tells the source the backend sees.
                let nat_src = entries
                    .iter()
                    .find(|(k2, e2)| {
                        k2.stage == 1
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
