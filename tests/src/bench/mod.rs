//! The benchmark (`netplane-bench`): eBPF mode against iptables mode, an nftables
//! reference and a no-NAT baseline, measured side by side in one run.
//!
//! It runs in the harness's [`Host`]: the "outside" namespace (the client, on
//! TEST-NET-3) cabled to a "host" namespace where netplane runs, with one container on a
//! bridge network. Modes are interleaved in rounds, in a new random order each round;
//! ratios are computed within a round (the same minutes of the same machine) and reported
//! as the median with its spread. Client and server threads are pinned to different CPUs.
//! Every measurement has a warm-up.
//!
//! Each mode is also measured with its container on a ptp network (no bridge: a /32 route
//! to the container's host veth), for request/response and connect/request/close, right
//! after the bridge network in the same round: the rows ending in ", ptp", and the ratio
//! ptp/bridge per mode under the table.
//!
//! Last, the CNI section ([`cni`]): netplane-cni against the reference chain bridge +
//! host-local + portmap, ADD/DEL times and `podman run` until a published port answers.

pub mod cni;
mod load;
pub mod report;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netplane::config::{Config, Driver, Mode, Plan};
use netplane::dataplane::ebpf::{
    conntrack_entries, ct_bytes_per_entry, drop_counters, program_costs,
};
use netplane::instance;
use serde::Serialize;

use self::load::{Rate, Servers, spawn_in};
use crate::Netns;
use crate::host::{Host, OUTSIDE_IP, UPLINK, UPLINK_IP};

pub const MODES: [&str; 4] = ["baseline", "iptables", "nftables", "ebpf"];
/// The bench's names start with this (the tests' with `npt`).
const PREFIX: &str = "npbench";
const WEB: &str = "10.89.0.2";
const SUBNET: &str = "10.89.0.0/24";
/// The first published host port; N ports are 10000..10000+N-1, all to the web server.
const FIRST_PORT: u16 = 10_000;
const UDP_PORT: u16 = 5353;
const SERVER_PORT: u16 = 80;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub rounds: usize,
    pub seconds: f64,
    pub warmup: f64,
    /// Numbers of published ports for the scaling measurement (ascending; the first is
    /// where every other metric is measured).
    pub scale: Vec<u32>,
    /// Whether the data-plane comparison runs (everything but the CNI section).
    pub dataplane: bool,
    /// The CNI section's settings; `None`: it does not run.
    pub cni: Option<cni::CniOptions>,
}

impl Options {
    /// Seven rounds: on a shared 2-core VM a stream's rate varies by ±20 % from one
    /// measurement to the next, and the median of seven ratios is steadier than of five.
    pub fn full() -> Options {
        Options {
            rounds: 7,
            seconds: 2.0,
            warmup: 0.5,
            scale: vec![1, 1_000, 10_000],
            dataplane: true,
            cni: Some(cni::CniOptions::full()),
        }
    }
    /// Under two minutes on the reference machine.
    pub fn quick() -> Options {
        Options {
            rounds: 2,
            seconds: 0.5,
            warmup: 0.2,
            scale: vec![1, 1_000, 10_000],
            dataplane: true,
            cni: Some(cni::CniOptions::quick()),
        }
    }
    /// Enough to see that every part works (CI).
    pub fn smoke() -> Options {
        Options {
            rounds: 1,
            seconds: 0.2,
            warmup: 0.05,
            scale: vec![1, 100],
            dataplane: true,
            cni: Some(cni::CniOptions::smoke()),
        }
    }
    fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// One mode's figures in one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub stream_in_gbps: f64,
    pub stream_out_gbps: f64,
    pub tcp_rr: Rate,
    pub udp_rr: Rate,
    /// Connect/request/close through a published port, per number of published ports.
    pub tcp_crr: Vec<(u32, Rate)>,
    /// Programming the data plane from 1 to the largest N mappings, and one change with N
    /// present (ms): the rules or maps only (for nftables, the `nft` run).
    pub apply_ms: Option<f64>,
    pub change_ms: Option<f64>,
    /// The same, for the whole `netplane up` (config, netlink checks, state included).
    pub apply_up_ms: Option<f64>,
    pub change_up_ms: Option<f64>,
    /// The eBPF data plane's drop counters after the round (a diagnosis, not a figure).
    pub drops: Vec<(String, u64)>,
    /// TCP request/response with the container on a ptp network instead of a bridge.
    pub ptp_tcp_rr: Option<Rate>,
    /// TCP connect/request/close (N = the first of the scale) on a ptp network.
    pub ptp_tcp_crr: Option<Rate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub load_before: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// What one entry of the conntrack map costs.
    pub ebpf_bytes_per_entry: f64,
    /// Flows from outside to a published port (DNAT).
    pub published: FlowMemory,
    /// Flows from a container to the outside (masquerade).
    pub masquerade: FlowMemory,
}

/// Kernel memory per tracked connection of one kind (see [`memory`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowMemory {
    pub ebpf_bytes: f64,
    pub ebpf_entries: f64,
    pub nf_conntrack_bytes: f64,
    /// How many entries nf_conntrack gained for the flows measured.
    pub nf_conntrack_entries: f64,
}

impl FlowMemory {
    pub fn ratio(&self) -> f64 {
        self.ebpf_bytes / self.nf_conntrack_bytes
    }
}

impl Memory {
    fn kind(&mut self, kind: NatKind) -> &mut FlowMemory {
        match kind {
            NatKind::Published => &mut self.published,
            NatKind::Masquerade => &mut self.masquerade,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub options: Options,
    pub machine: Machine,
    /// `rounds[r]` holds (mode, sample) in the order the modes ran.
    pub rounds: Vec<Vec<(String, Sample)>>,
    pub memory: Memory,
    /// Where the eBPF data path's time goes: per attached program, runs and average ns
    /// per run during a separate connect/request/close run with BPF_ENABLE_STATS on (it
    /// costs a little per run, so it is kept out of the figures above).
    pub ebpf_program_costs: Vec<(String, u64, f64)>,
    /// The same with the container on a ptp network (the programs on its host veth).
    pub ebpf_program_costs_ptp: Vec<(String, u64, f64)>,
    /// The CNI section, if it ran.
    pub cni: Option<cni::CniResults>,
}

/// The bench's sandbox: the harness's [`Host`], whose outside namespace is the client.
/// Every measurement gets new namespaces ([`Bench::fresh`]): a mode must not inherit
/// another's leftovers. iptables leaves its (empty) `nat` base chains behind on `down`, as
/// it does for every tool, and while they exist the namespace runs nf_conntrack on every
/// packet, which would burden the modes measured after it (the baseline and eBPF
/// included). Ctrl-C, SIGTERM or SIGHUP mid-run remove it, as its drop does.
struct Bench {
    host: Host,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            host: Host::with_prefix(PREFIX),
        }
    }

    /// The host and client namespaces as new (the earlier ones retired, see
    /// [`Host::renew`]), cabled, and the container subnet routed from the client.
    fn fresh(&mut self) -> &Bench {
        self.host.renew();
        // For the baseline: the container subnet is routed, not NATed.
        self.client()
            .sh(&["ip", "route", "add", SUBNET, "via", UPLINK_IP]);
        self
    }

    fn name(&self) -> &str {
        self.host.name()
    }

    fn client(&self) -> &Netns {
        &self.host.outside
    }

    fn web(&self) -> Netns {
        self.host.container("web")
    }

    /// The plan of `mode` with `n` published TCP ports (and one UDP port), the container
    /// on a bridge network.
    fn plan(&self, mode: Mode, n: u32, shift_first: bool) -> anyhow::Result<Plan> {
        self.plan_on(Driver::Bridge, mode, n, shift_first)
    }

    /// [`Bench::plan`] with the container on a network of `driver`.
    fn plan_on(
        &self,
        driver: Driver,
        mode: Mode,
        n: u32,
        shift_first: bool,
    ) -> anyhow::Result<Plan> {
        let mut publish: Vec<String> = (0..n)
            .map(|i| format!("\"{}:{SERVER_PORT}\"", u32::from(FIRST_PORT) + i))
            .collect();
        if shift_first {
            publish[0] = format!("\"{}:{SERVER_PORT}\"", FIRST_PORT - 1);
        }
        publish.push(format!("\"{UDP_PORT}:{SERVER_PORT}/udp\""));
        let driver = match driver {
            Driver::Bridge => "bridge",
            Driver::Ptp => "ptp",
        };
        let text = format!(
            "name = \"{}\"\nmode = \"{mode}\"\nuplink = \"{UPLINK}\"\n[[networks]]\nname = \"npa\"\nsubnet = \"{SUBNET}\"\n\
             driver = \"{driver}\"\n\
             [[containers]]\nname = \"web\"\nnetwork = \"npa\"\nip = \"{WEB}\"\npublish = [{}]\n",
            self.name(),
            publish.join(", ")
        );
        Ok(Config::parse(&text, "bench")?.plan()?)
    }

    /// `up` inside the host namespace, in-process; returns how long the whole `up` took
    /// and how long programming the data plane took.
    fn up(&self, plan: &Plan) -> anyhow::Result<(Duration, Duration)> {
        self.host
            .host
            .enter(|| {
                let t = Instant::now();
                instance::up(plan).map(|r| {
                    (
                        t.elapsed(),
                        Duration::from_secs_f64(r.dataplane_ms.unwrap_or(0.0) / 1e3),
                    )
                })
            })
            .context("netplane up in the bench sandbox")
    }
}

/// The nftables reference, as Docker's and netavark's nftables backends do it: DNAT
/// through verdict maps (one lookup whatever N), masquerade for the subnet.
fn nft_ruleset(n: u32, shift_first: bool) -> String {
    let mut elems: Vec<String> = (0..n)
        .map(|i| format!("{} : {WEB} . {SERVER_PORT}", u32::from(FIRST_PORT) + i))
        .collect();
    if shift_first {
        elems[0] = format!("{} : {WEB} . {SERVER_PORT}", FIRST_PORT - 1);
    }
    format!(
        "table ip npbench {{
  map tcp_ports {{ type inet_service : ipv4_addr . inet_service; elements = {{ {} }} }}
  map udp_ports {{ type inet_service : ipv4_addr . inet_service; elements = {{ {UDP_PORT} : {WEB} . {SERVER_PORT} }} }}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip addr . port to tcp dport map @tcp_ports
    fib daddr type local dnat ip addr . port to udp dport map @udp_ports
  }}
  chain out {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip addr . port to tcp dport map @tcp_ports
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {SUBNET} oifname != \"npa\" masquerade
  }}
}}
",
        elems.join(", ")
    )
}

fn nft(input: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run nft (apt-get install nftables)")?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn nft_clear() {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", "npbench"])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Applies the nftables reference in the host namespace; returns how long `nft` took.
fn nft_apply(sb: &Bench, n: u32, shift_first: bool) -> anyhow::Result<Duration> {
    sb.host.host.enter(|| {
        nft_clear();
        let t = Instant::now();
        nft(&nft_ruleset(n, shift_first)).map(|()| t.elapsed())
    })
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IPv4 address"), port)
}

/// Runs `f` from the client namespace (pinned to the client CPU).
fn from_client<R: Send + 'static>(sb: &Bench, f: impl FnOnce() -> R + Send + 'static) -> R {
    spawn_in(sb.client(), CLIENT_CPU, f)
        .join()
        .expect("bench client thread")
}

fn progress(round: usize, rounds: usize, mode: &str, what: &str) {
    eprintln!("[round {}/{rounds}] {mode:<9} {what}", round + 1);
}

/// One mode in one round.
fn measure(bench: &mut Bench, mode: &str, opts: &Options, round: usize) -> anyhow::Result<Sample> {
    let p = |what: &str| progress(round, opts.rounds, mode, what);
    let n_min = opts.scale[0];
    let n_max = *opts.scale.last().expect("scale is not empty");
    let netplane_mode = match mode {
        "iptables" => Mode::Iptables,
        "ebpf" => Mode::Ebpf,
        _ => Mode::NoNat,
    };
    p("setting up");
    let sb = bench.fresh();
    sb.up(&sb.plan(netplane_mode, n_min, false)?)?;
    if mode == "nftables" {
        nft_apply(sb, n_min, false)?;
    }
    let (secs, warm) = (opts.secs(), Duration::from_secs_f64(opts.warmup));
    let web_servers = Servers::start(&sb.web(), SERVER_PORT, SERVER_CPU);
    let outside_servers = Servers::start(sb.client(), SERVER_PORT, SERVER_CPU);
    // The baseline reaches the container by its address, through a route.
    let target = |port: u16| {
        if mode == "baseline" {
            sock(WEB, SERVER_PORT)
        } else {
            sock(UPLINK_IP, port)
        }
    };
    let udp_target = if mode == "baseline" {
        sock(WEB, SERVER_PORT)
    } else {
        sock(UPLINK_IP, UDP_PORT)
    };

    let mut s = Sample::default();
    let t = target(FIRST_PORT);
    p("TCP stream in (published port)");
    from_client(sb, move || load::stream(t, warm));
    s.stream_in_gbps = from_client(sb, move || load::stream(t, secs));
    p("TCP stream out (masquerade)");
    let out = sock(OUTSIDE_IP, SERVER_PORT);
    spawn_in(&sb.web(), CLIENT_CPU, move || load::stream(out, warm))
        .join()
        .ok();
    s.stream_out_gbps = spawn_in(&sb.web(), CLIENT_CPU, move || load::stream(out, secs))
        .join()
        .unwrap_or(0.0);
    p("TCP request/response");
    from_client(sb, move || load::tcp_rr(t, warm));
    s.tcp_rr = from_client(sb, move || load::tcp_rr(t, secs));
    p("UDP request/response");
    from_client(sb, move || load::udp_rr(udp_target, warm));
    s.udp_rr = from_client(sb, move || load::udp_rr(udp_target, secs));

    let crr = |n: u32| -> Rate {
        let t = target(FIRST_PORT + (n - 1) as u16);
        from_client(sb, move || load::tcp_crr(t, warm));
        from_client(sb, move || load::tcp_crr(t, secs))
    };
    p(&format!("TCP connect/request/close, N = {n_min}"));
    s.tcp_crr.push((n_min, crr(n_min)));
    if mode != "baseline" {
        p(&format!("programming {n_max} mappings"));
        let (up, apply) = if mode == "nftables" {
            let t = nft_apply(sb, n_max, false)?;
            (t, t)
        } else {
            sb.up(&sb.plan(netplane_mode, n_max, false)?)?
        };
        s.apply_ms = Some(apply.as_secs_f64() * 1e3);
        s.apply_up_ms = Some(up.as_secs_f64() * 1e3);
    }
    p(&format!("TCP connect/request/close, N = {n_max}"));
    let top = crr(n_max);
    if mode != "baseline" {
        p(&format!("one change with {n_max} mappings"));
        let (up, change) = if mode == "nftables" {
            let t = sb.host.host.enter(|| {
                let t = Instant::now();
                nft(&format!(
                    "add element ip npbench tcp_ports {{ {} : {WEB} . {SERVER_PORT} }}\n",
                    FIRST_PORT - 1
                ))
                .map(|()| t.elapsed())
            })?;
            (t, t)
        } else {
            sb.up(&sb.plan(netplane_mode, n_max, true)?)?
        };
        s.change_ms = Some(change.as_secs_f64() * 1e3);
        s.change_up_ms = Some(up.as_secs_f64() * 1e3);
    }
    for &n in &opts.scale[1..opts.scale.len() - 1] {
        if mode != "baseline" {
            if mode == "nftables" {
                nft_apply(sb, n, false)?;
            } else {
                sb.up(&sb.plan(netplane_mode, n, false)?)?;
            }
        }
        p(&format!("TCP connect/request/close, N = {n}"));
        s.tcp_crr.push((n, crr(n)));
    }
    s.tcp_crr.push((n_max, top));
    s.tcp_crr.sort_by_key(|(n, _)| *n);
    if mode == "ebpf" {
        s.drops = drop_counters(sb.name())
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.to_owned(), n))
            .collect();
        if !s.drops.is_empty() {
            p(&format!("drops: {:?}", s.drops));
        }
    }
    drop(web_servers);
    drop(outside_servers);
    (s.ptp_tcp_rr, s.ptp_tcp_crr) = measure_ptp(bench, mode, netplane_mode, opts, round)?;
    Ok(s)
}

/// Request/response and connect/request/close (N = the first of the scale) of one mode,
/// with the container on a ptp network: no bridge, the host routes to the container's
/// veth. In fresh namespaces, as every measurement.
fn measure_ptp(
    bench: &mut Bench,
    mode: &str,
    netplane_mode: Mode,
    opts: &Options,
    round: usize,
) -> anyhow::Result<(Option<Rate>, Option<Rate>)> {
    let p = |what: &str| progress(round, opts.rounds, mode, &format!("ptp network: {what}"));
    let n = opts.scale[0];
    p("setting up");
    let sb = bench.fresh();
    sb.up(&sb.plan_on(Driver::Ptp, netplane_mode, n, false)?)?;
    if mode == "nftables" {
        nft_apply(sb, n, false)?;
    }
    let (secs, warm) = (opts.secs(), Duration::from_secs_f64(opts.warmup));
    let _web_servers = Servers::start(&sb.web(), SERVER_PORT, SERVER_CPU);
    // The same targets as on the bridge network (see `measure`).
    let target = |port: u16| {
        if mode == "baseline" {
            sock(WEB, SERVER_PORT)
        } else {
            sock(UPLINK_IP, port)
        }
    };
    let t = target(FIRST_PORT);
    p("TCP request/response");
    from_client(sb, move || load::tcp_rr(t, warm));
    let rr = from_client(sb, move || load::tcp_rr(t, secs));
    p(&format!("TCP connect/request/close, N = {n}"));
    let t = target(FIRST_PORT + (n - 1) as u16);
    from_client(sb, move || load::tcp_crr(t, warm));
    let crr = from_client(sb, move || load::tcp_crr(t, secs));
    Ok((Some(rr), Some(crr)))
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let load_before = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_before,
    }
}

/// Kernel memory per tracked connection, measured on the same flows in both modes, for
/// both kinds of NAT: MEMORY_FLOWS UDP datagrams from distinct source ports, from outside
/// to the published UDP port, and from the container to the outside (masquerade), each a
/// flow of its own.
///
/// - eBPF: the conntrack map's `memlock` per entry (elements are preallocated: key,
///   value, the kernel's per-element header, and one hash bucket per entry), times the
///   entries the map gained per flow.
/// - nf_conntrack: in iptables mode, the growth of the slabs an entry takes per entry the
///   table gained: `nf_conntrack` (struct nf_conn) and `kmalloc-128`, where a masqueraded
///   entry's extension area goes (NF_CT_EXT_PREALLOC = 128 bytes,
///   net/netfilter/nf_conntrack_extend.c; MASQUERADE needs the NAT extension, DNAT does
///   not), plus its hash bucket (8 bytes × nf_conntrack_buckets / nf_conntrack_max), the
///   counterpart of the map's.
fn memory(bench: &mut Bench) -> anyhow::Result<Memory> {
    eprintln!("[memory] {MEMORY_FLOWS} UDP flows of each kind, ebpf and iptables");
    let flows = |sb: &Bench, kind: NatKind| {
        let send = move || {
            let target = match kind {
                NatKind::Published => sock(UPLINK_IP, UDP_PORT),
                NatKind::Masquerade => sock(OUTSIDE_IP, SERVER_PORT),
            };
            for i in 0..MEMORY_FLOWS {
                if let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", MEMORY_FIRST_SPORT + i)) {
                    let _ = s.send_to(b"m", target);
                }
            }
        };
        match kind {
            NatKind::Published => from_client(sb, send),
            NatKind::Masquerade => spawn_in(&sb.web(), CLIENT_CPU, send)
                .join()
                .expect("bench sender thread"),
        }
        // The last datagrams cross the host after send_to() returns.
        std::thread::sleep(Duration::from_millis(200));
    };
    let kinds = [NatKind::Published, NatKind::Masquerade];
    let mut m = Memory::default();

    let sb = bench.fresh();
    let plan = sb.plan(Mode::Ebpf, 1, false)?;
    sb.up(&plan)?;
    let servers = [
        Servers::start(&sb.web(), SERVER_PORT, SERVER_CPU),
        Servers::start(sb.client(), SERVER_PORT, SERVER_CPU),
    ];
    let entries = || conntrack_entries(&plan.name).len() as f64;
    m.ebpf_bytes_per_entry = ct_bytes_per_entry(&plan.name).unwrap_or(f64::NAN);
    for kind in kinds {
        let before = entries();
        flows(sb, kind);
        let per_flow = (entries() - before) / f64::from(MEMORY_FLOWS);
        let per_entry = m.ebpf_bytes_per_entry;
        let k = m.kind(kind);
        k.ebpf_entries = per_flow;
        k.ebpf_bytes = per_flow * per_entry;
    }
    drop(servers);

    let sb = bench.fresh();
    sb.up(&sb.plan(Mode::Iptables, 1, false)?)?;
    let servers = [
        Servers::start(&sb.web(), SERVER_PORT, SERVER_CPU),
        Servers::start(sb.client(), SERVER_PORT, SERVER_CPU),
    ];
    let sysctl = |name: &str| {
        sb.host
            .host
            .enter(|| {
                std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                    .ok()
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(f64::NAN)
    };
    let bucket = 8.0 * sysctl("nf_conntrack_buckets") / sysctl("nf_conntrack_max");
    for kind in kinds {
        let (count_before, slabs_before) = (sysctl("nf_conntrack_count"), slab_bytes());
        flows(sb, kind);
        let (count_after, slabs_after) = (sysctl("nf_conntrack_count"), slab_bytes());
        let k = m.kind(kind);
        k.nf_conntrack_entries = count_after - count_before;
        k.nf_conntrack_bytes = (slabs_after - slabs_before) / k.nf_conntrack_entries + bucket;
    }
    drop(servers);
    Ok(m)
}

#[derive(Clone, Copy)]
enum NatKind {
    Published,
    Masquerade,
}

const MEMORY_FLOWS: u16 = 10_000;
const MEMORY_FIRST_SPORT: u16 = 20_000;

/// Bytes in use in the slabs of a NATed nf_conntrack entry (/proc/slabinfo: name,
/// active_objs, num_objs, objsize, ...).
fn slab_bytes() -> f64 {
    std::fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let wanted = matches!(f.first(), Some(&"nf_conntrack" | &"kmalloc-128"));
            let bytes = f.get(1)?.parse::<f64>().ok()? * f.get(3)?.parse::<f64>().ok()?;
            wanted.then_some(bytes)
        })
        .sum()
}

/// Per-program run time of the eBPF data plane under connect/request/close, with the
/// container on a network of `driver`.
fn profile(
    bench: &mut Bench,
    opts: &Options,
    driver: Driver,
) -> anyhow::Result<Vec<(String, u64, f64)>> {
    eprintln!(
        "[profile] ebpf, {driver:?} network: per-program run time under connect/request/close"
    );
    let sb = bench.fresh();
    sb.up(&sb.plan_on(driver, Mode::Ebpf, opts.scale[0], false)?)?;
    let servers = Servers::start(&sb.web(), SERVER_PORT, SERVER_CPU);
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let t = sock(UPLINK_IP, FIRST_PORT);
    let secs = opts.secs();
    from_client(sb, move || load::tcp_crr(t, secs));
    let costs = program_costs(sb.name());
    drop(stats);
    drop(servers);
    Ok(costs)
}

/// A small, seeded shuffle: the order of modes changes every round.
fn shuffled(seed: u64) -> Vec<&'static str> {
    let mut v = MODES.to_vec();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

pub fn run(opts: Options) -> anyhow::Result<Results> {
    if !netplane::privilege::is_root() {
        bail!("the benchmark creates network namespaces and loads BPF programs: run it as root");
    }
    let machine = machine();
    if machine.load_before > 0.5 {
        eprintln!(
            "warning: the load average is {:.2} before the benchmark starts: other work on this machine will \
             add noise (ratios within a round are still comparable)",
            machine.load_before
        );
    }
    if machine.cores < 2 {
        eprintln!("warning: 1 CPU: client and server cannot be pinned apart");
    }
    let mut rounds = Vec::new();
    let (mut memory, mut ebpf_program_costs, mut ebpf_program_costs_ptp) = Default::default();
    if opts.dataplane {
        let mut bench = Bench::new();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        for r in 0..opts.rounds {
            let mut samples = Vec::new();
            for mode in shuffled(seed.wrapping_add(r as u64 * 0x9e37_79b9)) {
                samples.push((mode.to_owned(), measure(&mut bench, mode, &opts, r)?));
            }
            rounds.push(samples);
        }
        memory = self::memory(&mut bench)?;
        ebpf_program_costs = profile(&mut bench, &opts, Driver::Bridge)?;
        ebpf_program_costs_ptp = profile(&mut bench, &opts, Driver::Ptp)?;
    }
    // Last: its hundreds of namespaces are torn down (by the kernel, in a worker) after it.
    let cni = opts.cni.as_ref().map(cni::run).transpose()?;
    Ok(Results {
        options: opts,
        machine,
        rounds,
        memory,
        ebpf_program_costs,
        ebpf_program_costs_ptp,
        cni,
    })
}
