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
//! Every measurement on the bridge network also records the kernel CPU it took per unit
//! of work ([`cpu`]: µs per connection or transaction, s per GB) and TCP's own counters
//! on both ends ([`netstat`]). Connect/request/close is measured out of the container too
//! (masquerade), and each mode's round starts with a cold `up` of the default-shaped
//! config ([`cold`]). The eBPF variants ([`Variant`]: the ways out of and into
//! containers) run as modes of their own in the first rounds; the conntrack scale rows
//! ([`ct_scale`]: 100,000 and 1,000,000 live flows, and what GC costs then) once, after
//! the rounds.
//!
//! Last, the CNI section ([`cni`]): netplane-cni against the reference chain bridge +
//! host-local + portmap, ADD/DEL times and `podman run` until a published port answers.

pub mod cni;
mod cold;
pub mod cpu;
mod load;
pub mod netstat;
pub mod report;
pub mod scale;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netplane::config::{Config, Driver, Mode, Plan};
use netplane::dataplane::ebpf::{
    IpFamily, conntrack_entry_count, ct_bytes_per_entry, drop_counters, program_costs,
};
use netplane::instance;
use serde::Serialize;

pub use self::load::Rate;
use self::load::{Servers, spawn_in};
use self::netstat::TcpDelta;
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
    /// The eBPF variants measured alongside the modes (names of [`VARIANTS`]; empty:
    /// none), and in how many of the rounds (the first ones): they cost a minute a round.
    pub variants: Vec<String>,
    pub variant_rounds: usize,
    /// Live synthetic flows in the conntrack table for the scale rows (eBPF, once per
    /// bench, after the rounds: see [`ct_scale`]); empty: none.
    pub ct_scale: Vec<u32>,
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
            variants: all_variants(),
            // The three variants that are not the default add ~40 s to a round's ~170
            // s: in three rounds of seven they keep the whole run within 25 minutes.
            variant_rounds: 3,
            ct_scale: vec![100_000, 1_000_000],
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
            variants: all_variants(),
            variant_rounds: 1,
            ct_scale: vec![100_000],
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
            variants: all_variants(),
            variant_rounds: 1,
            ct_scale: vec![10_000],
        }
    }
    fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// One setting of the eBPF data path's paths in and out of containers (`[ebpf]
/// from_container` and `into_container`), measured as a mode of its own: eBPF, bridge
/// network, stream in and out, request/response, connect/request/close at the first N
/// and out (masquerade), each with its CPU per unit and TCP counters. The one that is
/// eBPF mode's default is not measured twice: its figures are eBPF mode's in the round.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Variant {
    pub name: &'static str,
    /// A container's packets of known flows leave from its host veth's hook.
    pub from_container: bool,
    /// How known flows' packets enter containers: "veth" (bpf_redirect to the host
    /// veth), "peer" (bpf_redirect_peer, pure ACKs by the bridge), "peer-all".
    pub into_container: &'static str,
}

pub const VARIANTS: [Variant; 4] = [
    Variant {
        name: "E0",
        from_container: false,
        into_container: "veth",
    },
    Variant {
        name: "E1",
        from_container: true,
        into_container: "veth",
    },
    Variant {
        name: "E2",
        from_container: true,
        into_container: "peer",
    },
    Variant {
        name: "E3",
        from_container: true,
        into_container: "peer-all",
    },
];

fn all_variants() -> Vec<String> {
    VARIANTS.iter().map(|v| v.name.to_owned()).collect()
}

impl Variant {
    pub fn by_name(name: &str) -> Option<Variant> {
        VARIANTS
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(name))
            .copied()
    }

    /// Its name as a mode of the rounds ("ebpf E2").
    pub fn mode(&self) -> String {
        format!("ebpf {}", self.name)
    }

    /// Its `[ebpf]` section.
    fn config(&self) -> String {
        format!(
            "[ebpf]\nfrom_container = {}\ninto_container = \"{}\"\n",
            self.from_container, self.into_container
        )
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
    /// TCP connect/request/close from the container to the outside (masquerade; the
    /// baseline routes it untranslated).
    pub tcp_crr_out: Option<Rate>,
    /// Kernel CPU per unit of work (see [`cpu`]), per metric key of the report
    /// (`stream_in`, `tcp_rr`, `tcp_crr_<N>`, `tcp_crr_out`…): µs per connection or
    /// transaction, s per GB for streams.
    pub cpu: Vec<(String, f64)>,
    /// The same from the bench process's own CPU time (see [`cpu::own_seconds`]):
    /// other tenants' time left out.
    pub cpu_own: Vec<(String, f64)>,
    /// TCP's counters on the sender and the receiver (see [`netstat`]), per metric key.
    pub tcpext: Vec<(String, TcpDelta)>,
    /// A cold `up` of the default-shaped config (see [`cold`]), in ms, and its phases
    /// when `up` reports them.
    pub cold_up_ms: Option<f64>,
    pub cold_up_phases: Vec<(String, f64)>,
}

impl Sample {
    /// Records a measurement's kernel CPU per unit (the machine's, the bench's own) and
    /// TCP counters under `key`.
    fn record(&mut self, key: &str, (per_unit, own): (f64, f64), tcp: TcpDelta) {
        self.cpu.push((key.to_owned(), per_unit));
        self.cpu_own.push((key.to_owned(), own));
        self.tcpext.push((key.to_owned(), tcp));
    }

    /// Kernel CPU per unit of metric `key`, if measured.
    pub fn cpu_of(&self, key: &str) -> Option<f64> {
        self.cpu.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// [`Sample::cpu_of`], the bench's own (see [`Sample::cpu_own`]).
    pub fn cpu_own_of(&self, key: &str) -> Option<f64> {
        self.cpu_own.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
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
    /// The load average before and after each round (the CPU figures are the whole
    /// machine's).
    pub round_load: Vec<(f64, f64)>,
    /// The variants that ran (see [`Options::variants`]), and why none did if so.
    pub variants: Vec<String>,
    /// The one that is eBPF mode's default config, if any: its figures are eBPF mode's.
    pub variant_default: Option<String>,
    pub variants_skipped: Option<String>,
    /// The conntrack scale rows (see [`ct_scale`]).
    pub ct_scale: Vec<scale::ScaleSample>,
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
    /// families), and the config's `extra` sections (a variant's).
    fn plan(
        &self,
        net: Net,
        mode: Mode,
        n: u32,
        shift_first: bool,
        extra: &str,
    ) -> anyhow::Result<Plan> {
        let text = format!(
            "name = \"{}\"\n{}{extra}",
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
    /// Config sections added to the plan (a variant's `[ebpf]`, `[conntrack]`).
    extra: String,
    warm: Duration,
    secs: Duration,
}

/// A measurement: its figure, the kernel CPU seconds of the machine while it ran (not
/// during its warm-up), and TCP's counters on both ends.
struct Measured<R> {
    value: R,
    kernel_s: f64,
    /// The cross-check that leaves other tenants out (see [`cpu::own_seconds`]).
    own_s: f64,
    tcp: TcpDelta,
}

impl Measured<Rate> {
    /// µs of kernel CPU per connection or transaction: the machine's, the bench's own.
    /// Divided by the count, not rate × seconds: a load that ends past its deadline (a
    /// connection waiting out its timeout) ran longer than `secs`.
    fn per_unit(&self) -> (f64, f64) {
        let units = self.value.count as f64;
        (self.kernel_s * 1e6 / units, self.own_s * 1e6 / units)
    }
}

impl Measured<f64> {
    /// Seconds of kernel CPU per GB streamed (the value in Gbit/s): the machine's, the
    /// bench's own.
    fn per_gb(&self, secs: Duration) -> (f64, f64) {
        let gb = self.value * secs.as_secs_f64() / 8.0;
        (self.kernel_s / gb, self.own_s / gb)
    }
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
        Run::start_with(bench, mode, net, n, opts, String::new())
    }

    /// [`Run::start`] with `extra` config sections; a mode named "ebpf …" (a variant) is
    /// eBPF mode.
    fn start_with(
        bench: &'a mut Bench,
        mode: &'a str,
        net: Net,
        n: u32,
        opts: &Options,
        extra: String,
    ) -> anyhow::Result<Run<'a>> {
        let netplane_mode = match mode {
            "iptables" => Mode::Iptables,
            m if m.starts_with("ebpf") => Mode::Ebpf,
            _ => Mode::NoNat,
        };
        let sb = bench.fresh();
        sb.up(&sb.plan(net, netplane_mode, n, false, &extra)?)?;
        if mode == "nftables" {
            nft_apply(sb, n, false, net.family)?;
        }
        Ok(Run {
            sb,
            mode,
            netplane_mode,
            net,
            extra,
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

    /// [`Run::timed`] from `from` to a server in `to`, with the kernel CPU time of the
    /// timed part and TCP's counters on both ends (read outside the CPU window).
    fn measured<R: Send + 'static>(
        &self,
        from: &Netns,
        to: &Netns,
        load: fn(SocketAddr, Duration) -> R,
        target: SocketAddr,
    ) -> Measured<R> {
        let (warm, secs) = (self.warm, self.secs);
        spawn_in(from, CLIENT_CPU, move || load(target, warm))
            .join()
            .expect("bench load thread");
        let tcp = netstat::Before::read(from, to);
        let before = cpu::kernel_cpu();
        let value = spawn_in(from, CLIENT_CPU, move || load(target, secs))
            .join()
            .expect("bench load thread");
        let after = cpu::kernel_cpu();
        Measured {
            value,
            kernel_s: cpu::seconds(&before, &after),
            own_s: cpu::own_seconds(&before, &after),
            tcp: tcp.delta(),
        }
    }

    /// Connect/request/close from the client to the last of `n` published ports.
    fn crr(&self, n: u32) -> Rate {
        let t = self.target(FIRST_PORT + (n - 1) as u16);
        self.timed(self.sb.client(), load::tcp_crr, t)
    }

    /// [`Run::crr`], measured: recorded in `s` as `tcp_crr_<n>`.
    fn crr_into(&self, n: u32, s: &mut Sample) -> Rate {
        let t = self.target(FIRST_PORT + (n - 1) as u16);
        let m = self.measured(self.sb.client(), &self.sb.web(), load::tcp_crr, t);
        s.record(&format!("tcp_crr_{n}"), m.per_unit(), m.tcp);
        m.value
    }

    /// The measurements that every mode and variant makes on the bridge network:
    /// streams in and out, TCP request/response, connect/request/close at `n` and out
    /// (masquerade), each with its CPU per unit and TCP counters.
    fn core(&self, n: u32, s: &mut Sample, p: &dyn Fn(&str)) {
        let (client, web) = (self.sb.client(), &self.sb.web());
        let t = self.target(FIRST_PORT);
        let outside = sock(IPV4.outside, SERVER_PORT);
        p("TCP stream in (published port)");
        let m = self.measured(client, web, load::stream, t);
        s.record("stream_in", m.per_gb(self.secs), m.tcp);
        s.stream_in_gbps = m.value;
        p("TCP stream out (masquerade)");
        let m = self.measured(web, client, load::stream, outside);
        s.record("stream_out", m.per_gb(self.secs), m.tcp);
        s.stream_out_gbps = m.value;
        p("TCP request/response");
        let m = self.measured(client, web, load::tcp_rr, t);
        s.record("tcp_rr", m.per_unit(), m.tcp);
        s.tcp_rr = m.value;
        p(&format!("TCP connect/request/close, N = {n}"));
        let r = self.crr_into(n, s);
        s.tcp_crr.push((n, r));
        p("TCP connect/request/close out (masquerade)");
        let m = self.measured(web, client, load::tcp_crr, outside);
        s.record("tcp_crr_out", m.per_unit(), m.tcp);
        s.tcp_crr_out = Some(m.value);
    }

    /// Programs `n` published ports (the first one moved down by one with
    /// `shift_first`) over what runs; returns how long the whole `up` took and how long
    /// programming the data plane did (for nftables, the `nft` run, both).
    fn program(&self, n: u32, shift_first: bool) -> anyhow::Result<(Duration, Duration)> {
        if self.mode == "nftables" {
            let t = nft_apply(self.sb, n, shift_first, self.net.family)?;
            return Ok((t, t));
        }
        self.sb.up(&self
            .sb
            .plan(self.net, self.netplane_mode, n, shift_first, &self.extra)?)
    }
}

/// One mode in one round: on the bridge network over IPv4, then on a ptp network
/// ([`measure_on`]), then over IPv6.
fn measure(bench: &mut Bench, mode: &str, opts: &Options, round: usize) -> anyhow::Result<Sample> {
    let p = |what: &str| progress(round, opts.rounds, mode, what);
    let n_min = opts.scale[0];
    let n_max = *opts.scale.last().expect("scale is not empty");
    p("cold up");
    let cold = cold::cold_up(bench, mode)?;
    p("setting up");
    let run = Run::start(bench, mode, BRIDGE, n_min, opts)?;
    let sb = run.sb;
    let web_servers = run.servers(&sb.web());
    let outside_servers = run.servers(sb.client());

    let mut s = Sample {
        cold_up_ms: Some(cold.ms),
        cold_up_phases: cold.phases,
        ..Sample::default()
    };
    run.core(n_min, &mut s, &p);
    p("UDP request/response");
    s.udp_rr = run.timed(sb.client(), load::udp_rr, run.target(UDP_PORT));
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
    let top = run.crr_into(n_max, &mut s);
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
        let r = run.crr_into(n, &mut s);
        s.tcp_crr.push((n, r));
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
            extra: String::new(),
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
    // `ports` source ports from `first` on: n flows, or one before them whose way through
    // resolves the neighbours (the host's of the outside over IPv6, where a burst into an
    // unresolved neighbour would mostly be dropped in its queue, before any hook).
    let flows = |sb: &Bench, f: Family, kind: NatKind, first: u16, ports: u16| {
        let send = move || {
            let target = match kind {
                NatKind::Published => sock(f.uplink, UDP_PORT),
                NatKind::Masquerade => sock(f.outside, SERVER_PORT),
            };
            for i in 0..ports {
                if let Ok(s) = std::net::UdpSocket::bind((f.any, first + i)) {
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

    // Each kind in an instance of its own: n one-datagram flows of one kind stay
    // unreplied (never assured), so two kinds in one instance (2n in an unreplied table of
    // max_entries/8 = 16,384) made the LRU evict the first kind's flows and showed 0.63
    // entries per flow. The servers bind [::], which takes IPv4 too (as IPv4-mapped
    // addresses).
    for kind in kinds {
        let run = Run::start(bench, "ebpf", BRIDGE6, 1, opts)?;
        let (sb, name) = (run.sb, run.sb.name());
        let servers = [run.servers(&sb.web()), run.servers(sb.client())];
        for (f, m) in families.into_iter().zip(&mut per_family) {
            let entries = || conntrack_entry_count(name, f.version) as f64;
            m.ebpf_bytes_per_entry = ct_bytes_per_entry(name, f.version).unwrap_or(f64::NAN);
            flows(sb, f, kind, MEMORY_FIRST_SPORT - 1, 1);
            let before = entries();
            flows(sb, f, kind, MEMORY_FIRST_SPORT, n);
            let per_flow = (entries() - before) / f64::from(n);
            let per_entry = m.ebpf_bytes_per_entry;
            let k = m.kind(kind);
            k.ebpf_entries = per_flow;
            k.ebpf_bytes = per_flow * per_entry;
        }
        drop(servers);
    }

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
            flows(sb, f, kind, MEMORY_FIRST_SPORT - 1, 1);
            let (count_before, slabs_before) = (sysctl("nf_conntrack_count"), slab_bytes());
            flows(sb, f, kind, MEMORY_FIRST_SPORT, n);
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

/// A variant of eBPF mode in one round (see [`Variant`]): the bridge network's
/// measurements that the variants change.
fn measure_variant(
    bench: &mut Bench,
    v: Variant,
    opts: &Options,
    round: usize,
) -> anyhow::Result<Sample> {
    let mode = v.mode();
    let p = |what: &str| progress(round, opts.rounds, &mode, what);
    p("setting up");
    let run = Run::start_with(bench, &mode, BRIDGE, opts.scale[0], opts, v.config())?;
    let _servers = [run.servers(&run.sb.web()), run.servers(run.sb.client())];
    let mut s = Sample::default();
    run.core(opts.scale[0], &mut s, &p);
    Ok(s)
}

/// The eBPF plan of the bench's bridge network with `extra` config sections.
fn ebpf_plan(extra: &str) -> Result<Plan, netplane::config::ConfigError> {
    let text = format!(
        "name = \"{PREFIX}check\"\n{}{extra}",
        config_body(BRIDGE, Mode::Ebpf, 1, false),
    );
    Config::parse(&text, "bench")?.plan()
}

/// Why this build cannot run variant `v`, if it cannot: its config has no `[ebpf]
/// from_container` / `into_container` (yet).
fn variant_unsupported(v: &Variant) -> Option<String> {
    ebpf_plan(&v.config()).err().map(|e| e.to_string())
}

/// Whether variant `v` is how eBPF mode is configured by default: its figures are then
/// eBPF mode's own, measured in the same round, and it is not measured again.
fn is_default(v: &Variant) -> bool {
    match (ebpf_plan(&v.config()), ebpf_plan("")) {
        (Ok(a), Ok(b)) => a.ebpf == b.ebpf,
        _ => false,
    }
}

/// The conntrack scale rows (eBPF, bridge network, connect/request/close at N = 1), once
/// per bench, after the rounds: for each size in `opts.ct_scale`, [`scale_pairs`] pairs
/// of measurements, each in a new instance whose main table has room for it
/// ([`scale::max_entries_for`]): empty, then full of synthetic flows. During the last
/// full measurement, the agent's CPU time (over at least two GC intervals, so that it
/// holds a GC pass over the full table); last, one GC pass timed in this process.
fn ct_scale(bench: &mut Bench, opts: &Options) -> anyhow::Result<Vec<scale::ScaleSample>> {
    let mut out = Vec::new();
    let gc_interval = netplane::dataplane::ebpf::agent::GC_INTERVAL;
    for &flows in &opts.ct_scale {
        let max_entries = scale::max_entries_for(flows);
        let mut s = scale::ScaleSample {
            flows,
            max_entries,
            ..Default::default()
        };
        let pairs = scale_pairs(opts);
        for pair in 1..=pairs {
            let p = |what: &str| {
                eprintln!("[conntrack scale] ebpf, {flows} live flows, pair {pair}/{pairs}: {what}")
            };
            p(&format!("setting up, max_entries = {max_entries}"));
            let extra = format!("[conntrack]\nmax_entries = {max_entries}\n");
            let run = Run::start_with(bench, "ebpf", BRIDGE, 1, opts, extra)?;
            let name = run.sb.name();
            let _servers = run.servers(&run.sb.web());
            let mut sample = Sample::default();
            p("TCP connect/request/close, N = 1, empty table");
            let empty = run.crr_into(1, &mut sample);
            let (empty_cpu_us, empty_cpu_own_us) = cpu_of(&sample);
            p("filling the table");
            let t = Instant::now();
            let filled = scale::fill(name, flows)?;
            s.fill_s = t.elapsed().as_secs_f64();
            if filled < flows {
                bail!(
                    "conntrack scale: only {filled} of {flows} synthetic flows went into the table"
                );
            }
            let last = pair == pairs;
            let agent = if last { scale::agent(name) } else { None };
            if last && agent.is_none() {
                let log = netplane::dataplane::ebpf::agent::log_file(name);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                p(&format!(
                    "no agent runs: its CPU time is not measured ({}: {})",
                    log.display(),
                    tail.join(" / ")
                ));
            }
            let agent_before = agent.and_then(cpu::process_cpu_s);
            let t = Instant::now();
            p("TCP connect/request/close, N = 1, full table");
            let mut sample = Sample::default();
            let full = run.crr_into(1, &mut sample);
            let (full_cpu_us, full_cpu_own_us) = cpu_of(&sample);
            s.pairs.push(scale::ScalePair {
                empty,
                full,
                empty_cpu_us,
                full_cpu_us,
                empty_cpu_own_us,
                full_cpu_own_us,
            });
            if !last {
                continue;
            }
            if let Some(rest) = (gc_interval * 2).checked_sub(t.elapsed()) {
                std::thread::sleep(rest);
            }
            s.agent_cpu_s_per_min = agent
                .and_then(cpu::process_cpu_s)
                .zip(agent_before)
                .map(|(after, before)| (after - before) * 60.0 / t.elapsed().as_secs_f64());
            p("one GC pass");
            let (wall, cpu) = scale::gc_pass(name);
            (s.gc_pass_s, s.gc_pass_cpu_s) = (wall.as_secs_f64(), cpu);
        }
        out.push(s);
    }
    Ok(out)
}

/// Pairs of empty and full measurements per size of the scale rows: as many as rounds, at
/// most three (a pair at 1M flows takes ~10 s: a 200 MB table, its fill, two
/// measurements).
fn scale_pairs(opts: &Options) -> usize {
    opts.rounds.clamp(1, 3)
}

/// The kernel CPU per connection (the machine's, the bench's own) of a sample that
/// measured connect/request/close at N = 1 alone.
fn cpu_of(s: &Sample) -> (f64, f64) {
    (
        s.cpu_of("tcp_crr_1").unwrap_or(f64::NAN),
        s.cpu_own_of("tcp_crr_1").unwrap_or(f64::NAN),
    )
}

/// A small, seeded shuffle: the order of modes changes every round.
fn shuffled<T>(seed: u64, mut v: Vec<T>) -> Vec<T> {
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
    let mut round_load = Vec::new();
    let (mut memory, mut memory_ipv6) = Default::default();
    let (mut ebpf_program_costs, mut ebpf_program_costs_ptp) = Default::default();
    let mut variants: Vec<Variant> = opts
        .variants
        .iter()
        .map(|n| Variant::by_name(n).with_context(|| format!("no eBPF variant {n}")))
        .collect::<anyhow::Result<_>>()?;
    let variants_skipped = variants.first().and_then(variant_unsupported);
    if let Some(why) = &variants_skipped {
        eprintln!(
            "warning: the eBPF variants are not measured: this build's config does not take them: {why}"
        );
        variants.clear();
    }
    let mut ct_scale_rows = Vec::new();
    if opts.dataplane {
        let mut bench = Bench::new();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        for r in 0..opts.rounds {
            let load_before = cpu::load_average();
            if load_before > cpu::LOAD_WARNING {
                eprintln!(
                    "warning: round {}: the load average is {load_before:.2}: the CPU per unit figures \
                     (the whole machine's kernel time) carry other work too",
                    r + 1
                );
            }
            let mut order: Vec<(String, Option<Variant>)> =
                MODES.iter().map(|m| ((*m).to_owned(), None)).collect();
            let (default, others): (Vec<Variant>, Vec<Variant>) = if r < opts.variant_rounds {
                variants.iter().partition(|v| is_default(v))
            } else {
                Default::default()
            };
            order.extend(others.iter().map(|v| (v.mode(), Some(*v))));
            let mut samples = Vec::new();
            for (mode, variant) in shuffled(seed.wrapping_add(r as u64 * 0x9e37_79b9), order) {
                let sample = match variant {
                    Some(v) => measure_variant(&mut bench, v, &opts, r)?,
                    None => measure(&mut bench, &mode, &opts, r)?,
                };
                samples.push((mode, sample));
            }
            if let Some((_, ebpf)) = samples.iter().find(|(m, _)| m == "ebpf") {
                let ebpf = ebpf.clone();
                samples.extend(default.iter().map(|v| (v.mode(), ebpf.clone())));
            }
            rounds.push(samples);
            round_load.push((load_before, cpu::load_average()));
        }
        [memory, memory_ipv6] = self::memory(&mut bench, &opts)?;
        ebpf_program_costs = profile(&mut bench, &opts, BRIDGE)?;
        ebpf_program_costs_ptp = profile(&mut bench, &opts, PTP)?;
        ct_scale_rows = ct_scale(&mut bench, &opts)?;
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
        round_load,
        variants: variants.iter().map(|v| v.name.to_owned()).collect(),
        variant_default: variants
            .iter()
            .find(|v| is_default(v))
            .map(|v| v.name.to_owned()),
        variants_skipped,
        ct_scale: ct_scale_rows,
    })
}
