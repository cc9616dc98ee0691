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
//! And over IPv6, in the same round: the container on a dual-stack network (a subnet6,
//! the ports published on both families), reached at the uplink's IPv6 address; TCP
//! stream in, request/response, and connect/request/close at the first and the last N of
//! the scale: the rows ending in ", IPv6". The nftables reference's IPv6 counterpart is
//! the same ruleset in an `ip6` table; iptables mode's is ip6tables. The memory per
//! tracked connection is measured for both families.
//!
//! In eBPF mode, connect/request/close at the first N of the scale is measured twice
//! more, right after its row: with a `netplane monitor` attached, and after it left (the
//! events flag back to 0): see [`monitor_crr`]; [`monitor_row`] measures that alone.
//!
//! Last, the CNI section ([`cni`]): netplane-cni against the reference chain bridge +
//! host-local + portmap, ADD/DEL times and `podman run` until a published port answers.

pub mod cni;
mod load;
pub mod report;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netplane::config::{Config, Driver, Mode, Plan};
use netplane::dataplane::ebpf::{
    IpFamily, conntrack_entry_count, ct_bytes_per_entry, drop_counters, program_costs,
};
use netplane::instance;
use serde::Serialize;

use self::load::{Rate, Servers, spawn_in};
use crate::Netns;
use crate::host::{Host, OUTSIDE_IP, OUTSIDE_IP6, UPLINK, UPLINK_IP, UPLINK_IP6};

pub const MODES: [&str; 4] = ["baseline", "iptables", "nftables", "ebpf"];
/// The bench's names start with this (the tests' with `npt`).
const PREFIX: &str = "npbench";
/// The addresses of one family that the bench uses.
#[derive(Debug, Clone, Copy)]
struct Family {
    version: IpFamily,
    /// The container's address, and its network's subnet.
    web: &'static str,
    subnet: &'static str,
    /// Where the ports are published, and the outside's address (the client's).
    uplink: &'static str,
    outside: &'static str,
    /// What the servers bind.
    any: IpAddr,
    /// nftables' name of the family, and of its addresses' type.
    nft: &'static str,
    nft_addr: &'static str,
}

const IPV4: Family = Family {
    version: IpFamily::V4,
    web: "10.89.0.2",
    subnet: "10.89.0.0/24",
    uplink: UPLINK_IP,
    outside: OUTSIDE_IP,
    any: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    nft: "ip",
    nft_addr: "ipv4_addr",
};

const IPV6: Family = Family {
    version: IpFamily::V6,
    web: "2001:db8:89::2",
    subnet: "2001:db8:89::/64",
    uplink: UPLINK_IP6,
    outside: OUTSIDE_IP6,
    any: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    nft: "ip6",
    nft_addr: "ipv6_addr",
};

/// Where a measurement puts the container, and how the client reaches it.
#[derive(Debug, Clone, Copy)]
struct Net {
    /// For messages.
    name: &'static str,
    driver: Driver,
    /// The family the client reaches the container over; an IPv6 one makes the network
    /// dual-stack.
    family: Family,
}

const BRIDGE: Net = Net {
    name: "bridge network",
    driver: Driver::Bridge,
    family: IPV4,
};
const PTP: Net = Net {
    name: "ptp network",
    driver: Driver::Ptp,
    family: IPV4,
};
const BRIDGE6: Net = Net {
    name: "IPv6",
    driver: Driver::Bridge,
    family: IPV6,
};

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
    /// UDP flows of each kind that the memory per tracked connection is measured over,
    /// per family (see [`memory`]).
    pub memory_flows: u16,
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
            memory_flows: 10_000,
            dataplane: true,
            cni: Some(cni::CniOptions::full()),
        }
    }
    /// About two and a half minutes on the reference machine.
    pub fn quick() -> Options {
        Options {
            rounds: 2,
            seconds: 0.5,
            warmup: 0.2,
            scale: vec![1, 1_000, 10_000],
            memory_flows: 10_000,
            dataplane: true,
            cni: Some(cni::CniOptions::quick()),
        }
    }
    /// Enough to see that every part works (CI).
    pub fn smoke() -> Options {
        Options {
            rounds: 1,
            seconds: 0.1,
            warmup: 0.05,
            scale: vec![1, 100],
            memory_flows: 1_000,
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
    /// Over IPv6, on a dual-stack bridge network: TCP stream in, request/response, and
    /// connect/request/close at the first and last N of the scale.
    pub ipv6: Option<Figures>,
    /// eBPF only: TCP connect/request/close (N = the first of the scale) with a monitor
    /// attached, and right after it left (see [`monitor_crr`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorCrr>,
}

/// Connect/request/close of the eBPF data plane with and without a `netplane monitor`,
/// measured right after the row without one ([`Sample::tcp_crr`]'s first), where the
/// events flag was never set.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MonitorCrr {
    /// With `netplane monitor --json --type all > /dev/null` running: every drop and flow
    /// is an event, written, read and printed.
    pub attached: Rate,
    /// After the monitor left: the flag is 0 again, nobody listens.
    pub detached: Rate,
}

/// What [`measure_on`] measures of one mode with its container on one network.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// TCP stream in through a published port, when measured.
    pub stream_in_gbps: Option<f64>,
    pub tcp_rr: Rate,
    /// Connect/request/close through a published port, per number of published ports.
    pub tcp_crr: Vec<(u32, Rate)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub load_before: f64,
}

/// Kernel memory per tracked connection of one address family (see [`memory`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// What one entry of the family's conntrack map costs.
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
    /// eBPF over nf_conntrack, the worse of the two kinds.
    pub fn worse_ratio(&self) -> f64 {
        self.published.ratio().max(self.masquerade.ratio())
    }

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
    /// IPv4's.
    pub memory: Memory,
    pub memory_ipv6: Memory,
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
            host: Host::with_prefix(PREFIX).with_ipv6(),
        }
    }

    /// The host and client namespaces as new (the earlier ones retired, see
    /// [`Host::renew`]), cabled for both families, and the container subnets routed from
    /// the client.
    fn fresh(&mut self) -> &Bench {
        self.host.renew();
        // For the baseline: the container subnets are routed, not NATed.
        for f in [IPV4, IPV6] {
            self.client()
                .sh(&["ip", "route", "add", f.subnet, "via", f.uplink]);
        }
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
    /// on `net` (dual-stack for an IPv6 one; the ports are then published on both
    /// families).
    fn plan(&self, net: Net, mode: Mode, n: u32, shift_first: bool) -> anyhow::Result<Plan> {
        let text = format!(
            "name = \"{}\"\n{}",
            self.name(),
            config_body(net, mode, n, shift_first)
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

/// The config of the bench's instance, without its name: `mode` with `n` published TCP
/// ports (and one UDP port), the container on `net` (see [`Bench::plan`]).
fn config_body(net: Net, mode: Mode, n: u32, shift_first: bool) -> String {
    let mut publish: Vec<String> = (0..n)
        .map(|i| format!("\"{}:{SERVER_PORT}\"", u32::from(FIRST_PORT) + i))
        .collect();
    if shift_first {
        publish[0] = format!("\"{}:{SERVER_PORT}\"", FIRST_PORT - 1);
    }
    publish.push(format!("\"{UDP_PORT}:{SERVER_PORT}/udp\""));
    let driver = match net.driver {
        Driver::Bridge => "bridge",
        Driver::Ptp => "ptp",
    };
    let (subnet6, ip6) = match net.family.version {
        IpFamily::V4 => (String::new(), String::new()),
        IpFamily::V6 => (
            format!("subnet6 = \"{}\"\n", IPV6.subnet),
            format!("ip6 = \"{}\"\n", IPV6.web),
        ),
    };
    format!(
        "mode = \"{mode}\"\nuplink = \"{UPLINK}\"\n[[networks]]\nname = \"npa\"\nsubnet = \"{}\"\n\
         {subnet6}driver = \"{driver}\"\n\
         [[containers]]\nname = \"web\"\nnetwork = \"npa\"\nip = \"{}\"\n{ip6}publish = [{}]\n",
        IPV4.subnet,
        IPV4.web,
        publish.join(", ")
    )
}

/// The nftables reference, as Docker's and netavark's nftables backends do it: DNAT
/// through verdict maps (one lookup whatever N), masquerade for the subnet; in a table of
/// `f`'s.
fn nft_ruleset(n: u32, shift_first: bool, f: Family) -> String {
    let (web, addr) = (f.web, f.nft_addr);
    let mut elems: Vec<String> = (0..n)
        .map(|i| format!("{} : {web} . {SERVER_PORT}", u32::from(FIRST_PORT) + i))
        .collect();
    if shift_first {
        elems[0] = format!("{} : {web} . {SERVER_PORT}", FIRST_PORT - 1);
    }
    format!(
        "table {nft} npbench {{
  map tcp_ports {{ type inet_service : {addr} . inet_service; elements = {{ {} }} }}
  map udp_ports {{ type inet_service : {addr} . inet_service; elements = {{ {UDP_PORT} : {web} . {SERVER_PORT} }} }}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat {nft} addr . port to tcp dport map @tcp_ports
    fib daddr type local dnat {nft} addr . port to udp dport map @udp_ports
  }}
  chain out {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat {nft} addr . port to tcp dport map @tcp_ports
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    {nft} saddr {subnet} oifname != \"npa\" masquerade
  }}
}}
",
        elems.join(", "),
        nft = f.nft,
        subnet = f.subnet,
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

fn nft_clear(f: Family) {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", f.nft, "npbench"])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Applies the nftables reference for `f` in the host namespace; returns how long `nft`
/// took.
fn nft_apply(sb: &Bench, n: u32, shift_first: bool, f: Family) -> anyhow::Result<Duration> {
    sb.host.host.enter(|| {
        nft_clear(f);
        let t = Instant::now();
        nft(&nft_ruleset(n, shift_first, f)).map(|()| t.elapsed())
    })
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP address"), port)
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

/// One mode set up in fresh namespaces with its container on one network: where the
/// client reaches it, and how it is measured and reprogrammed.
struct Run<'a> {
    sb: &'a Bench,
    mode: &'a str,
    netplane_mode: Mode,
    net: Net,
    warm: Duration,
    secs: Duration,
}

impl<'a> Run<'a> {
    /// New namespaces, `mode` up with `n` published ports (the nftables reference: the
    /// topology, and its rules).
    fn start(
        bench: &'a mut Bench,
        mode: &'a str,
        net: Net,
        n: u32,
        opts: &Options,
    ) -> anyhow::Result<Run<'a>> {
        let netplane_mode = match mode {
            "iptables" => Mode::Iptables,
            "ebpf" => Mode::Ebpf,
            _ => Mode::NoNat,
        };
        let sb = bench.fresh();
        sb.up(&sb.plan(net, netplane_mode, n, false)?)?;
        if mode == "nftables" {
            nft_apply(sb, n, false, net.family)?;
        }
        Ok(Run {
            sb,
            mode,
            netplane_mode,
            net,
            warm: Duration::from_secs_f64(opts.warmup),
            secs: opts.secs(),
        })
    }

    /// The bench's servers in `ns`, on the family's addresses.
    fn servers(&self, ns: &Netns) -> Servers {
        Servers::start(ns, self.net.family.any, SERVER_PORT, SERVER_CPU)
    }

    /// Where the client goes for host port `port`. The baseline reaches the container by
    /// its address, through a route.
    fn target(&self, port: u16) -> SocketAddr {
        let f = self.net.family;
        if self.mode == "baseline" {
            sock(f.web, SERVER_PORT)
        } else {
            sock(f.uplink, port)
        }
    }

    /// `load` from namespace `from` to `target`, after a warm-up of the same.
    fn timed<R: Send + 'static>(
        &self,
        from: &Netns,
        load: fn(SocketAddr, Duration) -> R,
        target: SocketAddr,
    ) -> R {
        let (warm, secs) = (self.warm, self.secs);
        spawn_in(from, CLIENT_CPU, move || load(target, warm))
            .join()
            .expect("bench load thread");
        spawn_in(from, CLIENT_CPU, move || load(target, secs))
            .join()
            .expect("bench load thread")
    }

    /// Connect/request/close from the client to the last of `n` published ports.
    fn crr(&self, n: u32) -> Rate {
        let t = self.target(FIRST_PORT + (n - 1) as u16);
        self.timed(self.sb.client(), load::tcp_crr, t)
    }

    /// Programs `n` published ports (the first one moved down by one with
    /// `shift_first`) over what runs; returns how long the whole `up` took and how long
    /// programming the data plane did (for nftables, the `nft` run, both).
    fn program(&self, n: u32, shift_first: bool) -> anyhow::Result<(Duration, Duration)> {
        if self.mode == "nftables" {
            let t = nft_apply(self.sb, n, shift_first, self.net.family)?;
            return Ok((t, t));
        }
        self.sb
            .up(&self.sb.plan(self.net, self.netplane_mode, n, shift_first)?)
    }
}

/// One mode in one round: on the bridge network over IPv4, then on a ptp network
/// ([`measure_on`]), then over IPv6.
fn measure(bench: &mut Bench, mode: &str, opts: &Options, round: usize) -> anyhow::Result<Sample> {
    let p = |what: &str| progress(round, opts.rounds, mode, what);
    let n_min = opts.scale[0];
    let n_max = *opts.scale.last().expect("scale is not empty");
    p("setting up");
    let run = Run::start(bench, mode, BRIDGE, n_min, opts)?;
    let sb = run.sb;
    let web_servers = run.servers(&sb.web());
    let outside_servers = run.servers(sb.client());

    let mut s = Sample::default();
    let t = run.target(FIRST_PORT);
    p("TCP stream in (published port)");
    s.stream_in_gbps = run.timed(sb.client(), load::stream, t);
    p("TCP stream out (masquerade)");
    s.stream_out_gbps = run.timed(&sb.web(), load::stream, sock(IPV4.outside, SERVER_PORT));
    p("TCP request/response");
    s.tcp_rr = run.timed(sb.client(), load::tcp_rr, t);
    p("UDP request/response");
    s.udp_rr = run.timed(sb.client(), load::udp_rr, run.target(UDP_PORT));

    p(&format!("TCP connect/request/close, N = {n_min}"));
    s.tcp_crr.push((n_min, run.crr(n_min)));
    if mode == "ebpf" {
        s.monitor = Some(monitor_crr(&run, n_min, &p)?);
    }
    if mode != "baseline" {
        p(&format!("programming {n_max} mappings"));
        let (up, apply) = run.program(n_max, false)?;
        s.apply_ms = Some(apply.as_secs_f64() * 1e3);
        s.apply_up_ms = Some(up.as_secs_f64() * 1e3);
    }
    p(&format!("TCP connect/request/close, N = {n_max}"));
    let top = run.crr(n_max);
    if mode != "baseline" {
        p(&format!("one change with {n_max} mappings"));
        let (up, change) = if mode == "nftables" {
            let t = sb.host.host.enter(|| {
                let t = Instant::now();
                nft(&format!(
                    "add element ip npbench tcp_ports {{ {} : {} . {SERVER_PORT} }}\n",
                    FIRST_PORT - 1,
                    IPV4.web
                ))
                .map(|()| t.elapsed())
            })?;
            (t, t)
        } else {
            run.program(n_max, true)?
        };
        s.change_ms = Some(change.as_secs_f64() * 1e3);
        s.change_up_ms = Some(up.as_secs_f64() * 1e3);
    }
    for &n in &opts.scale[1..opts.scale.len() - 1] {
        if mode != "baseline" {
            run.program(n, false)?;
        }
        p(&format!("TCP connect/request/close, N = {n}"));
        s.tcp_crr.push((n, run.crr(n)));
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
    let ptp = measure_on(bench, mode, PTP, &[n_min], false, opts, round)?;
    s.ptp_tcp_rr = Some(ptp.tcp_rr);
    s.ptp_tcp_crr = ptp.tcp_crr.first().map(|(_, r)| *r);
    let ns = ipv6_scale(&opts.scale);
    s.ipv6 = Some(measure_on(bench, mode, BRIDGE6, &ns, true, opts, round)?);
    Ok(s)
}

/// The numbers of published ports IPv6 is measured at: the first and the last of `scale`.
pub fn ipv6_scale(scale: &[u32]) -> Vec<u32> {
    let mut ns: Vec<u32> = scale
        .first()
        .into_iter()
        .chain(scale.last())
        .copied()
        .collect();
    ns.dedup();
    ns
}

/// A `netplane monitor` of the bench's instance, attached for as long as it lives: its
/// events are read and printed as JSON into /dev/null, as a monitor piped into a file
/// would. Interrupted (SIGINT, which clears the events flag) on drop.
struct AttachedMonitor(std::process::Child);

impl AttachedMonitor {
    /// Starts it in the host namespace and waits until its events flag is set (its
    /// ready line on stderr).
    fn start(sb: &Bench) -> anyhow::Result<AttachedMonitor> {
        use std::io::BufRead;
        let bin = crate::host::netplane_bin();
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", sb.host.host.path()))
            .arg(&bin)
            .args(["monitor", "--name", sb.name(), "--json", "--type", "all"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("start {} monitor", bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let monitor = AttachedMonitor(child);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("monitoring instance ") => break,
                Some(Ok(l)) => said.push(l),
                _ => bail!("netplane monitor did not start: {}", said.join("; ")),
            }
        }
        // Its stderr is read until it exits, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(monitor)
    }
}

impl Drop for AttachedMonitor {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connect/request/close to the first of `n` published ports of the eBPF data plane
/// with a monitor attached, then again after it left (the events flag back to 0).
fn monitor_crr(run: &Run, n: u32, p: &dyn Fn(&str)) -> anyhow::Result<MonitorCrr> {
    p(&format!(
        "TCP connect/request/close, N = {n}, monitor attached"
    ));
    let monitor = AttachedMonitor::start(run.sb)?;
    let attached = run.crr(n);
    drop(monitor);
    p(&format!(
        "TCP connect/request/close, N = {n}, monitor detached"
    ));
    let detached = run.crr(n);
    Ok(MonitorCrr { attached, detached })
}

/// The monitor's row alone (`opts.rounds` rounds of eBPF mode on the bridge network at the first N of the scale): per round, connect/request/close with the flag
/// never set, with a monitor attached, and after it left. Much shorter than the whole
/// bench, for checking this one figure (see tests/tests/monitor.rs).
pub fn monitor_row(opts: &Options) -> anyhow::Result<Vec<(Rate, MonitorCrr)>> {
    if !netplane::privilege::is_root() {
        bail!("the benchmark creates network namespaces and loads BPF programs: run it as root");
    }
    let mut bench = Bench::new();
    let n = opts.scale[0];
    let mut out = Vec::new();
    for round in 0..opts.rounds {
        let p = |what: &str| progress(round, opts.rounds, "ebpf", what);
        // `up` by the netplane binary, not in-process: the agent that `up` starts runs
        // `up`'s own executable, which here may be a test's.
        let sb = bench.fresh();
        sb.host
            .write_config(&config_body(BRIDGE, Mode::Ebpf, n, false));
        let up = sb.host.netplane(&["up"]);
        if !up.status.success() {
            bail!("netplane up: {}", String::from_utf8_lossy(&up.stderr));
        }
        let run = Run {
            sb,
            mode: "ebpf",
            netplane_mode: Mode::Ebpf,
            net: BRIDGE,
            warm: Duration::from_secs_f64(opts.warmup),
            secs: opts.secs(),
        };
        let _servers = run.servers(&run.sb.web());
        p(&format!("TCP connect/request/close, N = {n}"));
        let never = run.crr(n);
        out.push((never, monitor_crr(&run, n, &p)?));
    }
    Ok(out)
}

/// Request/response, then connect/request/close at each N of `ns` (ascending), of one
/// mode with its container on `net`; first a TCP stream in through a published port with
/// `stream`. In fresh namespaces, as every measurement.
fn measure_on(
    bench: &mut Bench,
    mode: &str,
    net: Net,
    ns: &[u32],
    stream: bool,
    opts: &Options,
    round: usize,
) -> anyhow::Result<Figures> {
    let p = |what: &str| progress(round, opts.rounds, mode, &format!("{}: {what}", net.name));
    p("setting up");
    let run = Run::start(bench, mode, net, ns[0], opts)?;
    let client = run.sb.client();
    let _web_servers = run.servers(&run.sb.web());
    let t = run.target(FIRST_PORT);
    let mut f = Figures::default();
    if stream {
        p("TCP stream in (published port)");
        f.stream_in_gbps = Some(run.timed(client, load::stream, t));
    }
    p("TCP request/response");
    f.tcp_rr = run.timed(client, load::tcp_rr, t);
    for (i, &n) in ns.iter().enumerate() {
        if i > 0 && mode != "baseline" {
            p(&format!("programming {n} mappings"));
            run.program(n, false)?;
        }
        p(&format!("TCP connect/request/close, N = {n}"));
        f.tcp_crr.push((n, run.crr(n)));
    }
    Ok(f)
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

/// Kernel memory per tracked connection of each family (IPv4's, IPv6's), measured on the
/// same flows in both modes, for both kinds of NAT: `opts.memory_flows` UDP datagrams from
/// distinct source ports, from outside to the published UDP port, and from the container
/// to the outside (masquerade), each a flow of its own. The network is dual-stack: one
/// setup per mode serves both families (each family's tables are its own).
///
/// - eBPF: the family's conntrack map's `memlock` per entry (elements are preallocated:
///   key, value, the kernel's per-element header, and one hash bucket per entry), times
///   the entries the map gained per flow.
/// - nf_conntrack: in iptables mode, the growth of the slabs an entry takes per entry the
///   table gained: `nf_conntrack` (struct nf_conn, one size for both families) and
///   `kmalloc-128`, where a masqueraded entry's extension area goes (NF_CT_EXT_PREALLOC =
///   128 bytes, net/netfilter/nf_conntrack_extend.c; MASQUERADE needs the NAT extension,
///   DNAT does not), plus its hash bucket (8 bytes × nf_conntrack_buckets /
///   nf_conntrack_max), the counterpart of the map's.
fn memory(bench: &mut Bench, opts: &Options) -> anyhow::Result<[Memory; 2]> {
    let n = opts.memory_flows;
    eprintln!("[memory] {n} UDP flows of each kind and family, ebpf and iptables");
    let flows = |sb: &Bench, f: Family, kind: NatKind| {
        let send = move || {
            let target = match kind {
                NatKind::Published => sock(f.uplink, UDP_PORT),
                NatKind::Masquerade => sock(f.outside, SERVER_PORT),
            };
            for i in 0..n {
                if let Ok(s) = std::net::UdpSocket::bind((f.any, MEMORY_FIRST_SPORT + i)) {
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
    let families = [IPV4, IPV6];
    let mut per_family = [Memory::default(), Memory::default()];

    // The servers bind [::], which takes IPv4 too (as IPv4-mapped addresses).
    let run = Run::start(bench, "ebpf", BRIDGE6, 1, opts)?;
    let (sb, name) = (run.sb, run.sb.name());
    let servers = [run.servers(&sb.web()), run.servers(sb.client())];
    for (f, m) in families.into_iter().zip(&mut per_family) {
        let entries = || conntrack_entry_count(name, f.version) as f64;
        m.ebpf_bytes_per_entry = ct_bytes_per_entry(name, f.version).unwrap_or(f64::NAN);
        for kind in kinds {
            let before = entries();
            flows(sb, f, kind);
            let per_flow = (entries() - before) / f64::from(n);
            let per_entry = m.ebpf_bytes_per_entry;
            let k = m.kind(kind);
            k.ebpf_entries = per_flow;
            k.ebpf_bytes = per_flow * per_entry;
        }
    }
    drop(servers);

    let run = Run::start(bench, "iptables", BRIDGE6, 1, opts)?;
    let sb = run.sb;
    let servers = [run.servers(&sb.web()), run.servers(sb.client())];
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
    for (f, m) in families.into_iter().zip(&mut per_family) {
        for kind in kinds {
            let (count_before, slabs_before) = (sysctl("nf_conntrack_count"), slab_bytes());
            flows(sb, f, kind);
            let (count_after, slabs_after) = (sysctl("nf_conntrack_count"), slab_bytes());
            let k = m.kind(kind);
            k.nf_conntrack_entries = count_after - count_before;
            k.nf_conntrack_bytes = (slabs_after - slabs_before) / k.nf_conntrack_entries + bucket;
        }
    }
    drop(servers);
    Ok(per_family)
}

#[derive(Clone, Copy)]
enum NatKind {
    Published,
    Masquerade,
}

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
/// container on `net`.
fn profile(bench: &mut Bench, opts: &Options, net: Net) -> anyhow::Result<Vec<(String, u64, f64)>> {
    eprintln!(
        "[profile] ebpf, {}: per-program run time under connect/request/close",
        net.name
    );
    let run = Run::start(bench, "ebpf", net, opts.scale[0], opts)?;
    let servers = run.servers(&run.sb.web());
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let (t, secs) = (run.target(FIRST_PORT), opts.secs());
    from_client(run.sb, move || load::tcp_crr(t, secs));
    let costs = program_costs(run.sb.name());
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
    let (mut memory, mut memory_ipv6) = Default::default();
    let (mut ebpf_program_costs, mut ebpf_program_costs_ptp) = Default::default();
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
        [memory, memory_ipv6] = self::memory(&mut bench, &opts)?;
        ebpf_program_costs = profile(&mut bench, &opts, BRIDGE)?;
        ebpf_program_costs_ptp = profile(&mut bench, &opts, PTP)?;
    }
    // Last: its hundreds of namespaces are torn down (by the kernel, in a worker) after it.
    let cni = opts.cni.as_ref().map(cni::run).transpose()?;
    Ok(Results {
        options: opts,
        machine,
        rounds,
        memory,
        memory_ipv6,
        ebpf_program_costs,
        ebpf_program_costs_ptp,
        cni,
    })
}
