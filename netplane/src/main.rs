//! The `netplane` command line.
#![expect(
    unused_crate_dependencies,
    reason = "a binary sees every dependency of its package; the library target is where an unused one shows"
)]

use std::ffi::CString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use netplane::config::{Config, Plan};
use netplane::instance;
use netplane::state::State;

const LONG_ABOUT: &str = "\
Container networking with an eBPF data plane.

netplane builds the Docker \"bridge\" model from one TOML config: network namespaces named
<name>-<container>, veth pairs to a Linux bridge per network, the gateway address on the
bridge, and default routes, all through netlink. State lives under /run/netplane/<name>/.

Named namespaces are created the way `ip netns add` creates them, in the caller's mount
namespace, so they are visible to `ip netns`. To run netplane inside another network
namespace, switch only the network namespace: `nsenter --net=/run/netns/HOST netplane up`.
Under `ip netns exec`, which gives its child a private mount namespace, the namespaces
netplane names would be invisible to everyone else.";

#[derive(Parser)]
#[command(name = "netplane", version, about = "Container networking with an eBPF data plane", long_about = LONG_ABOUT)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct ConfigArg {
    /// The config file (TOML). Without it, the embedded default: one network, two
    /// containers, one published port.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The instance by name instead of by its config: `cni-<network>` for a CNI network
    /// of netplane-cni. (Not for `up`, which needs the config.)
    #[arg(long, value_name = "INSTANCE", conflicts_with = "config")]
    name: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build, or converge on, what the config describes. Idempotent.
    Up {
        #[command(flatten)]
        config: ConfigArg,
        /// Override the config's `mode` ("ebpf" or "iptables").
        #[arg(long, value_name = "MODE")]
        mode: Option<netplane::config::Mode>,
        /// Serve Prometheus metrics at http://ADDR/metrics (the agent does, in this
        /// network namespace); without ADDR on 127.0.0.1:9975. Overrides the config's
        /// `[metrics] listen`; without either, no metrics are served.
        #[arg(
            long,
            value_name = "ADDR",
            num_args = 0..=1,
            default_missing_value = netplane::config::DEFAULT_METRICS_LISTEN,
            value_parser = parse_metrics_listen,
        )]
        metrics: Option<std::net::SocketAddr>,
        /// Load the programs built with debug logs, at debug level (`netplane monitor
        /// --log` prints them); as `[ebpf] debug_datapath = true`.
        #[arg(long)]
        debug_datapath: bool,
        /// Machine-readable output: the instance, the changes, and where the time went
        /// (`phases`, in ms, one after the other; `total_ms`).
        #[arg(long)]
        json: bool,
    },
    /// Remove everything `up` made: namespaces, links, state, changed sysctls.
    Down(ConfigArg),
    /// Show the networks, containers, published ports and the data plane's health. Exits
    /// non-zero when anything is wrong, each problem named.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the instances on this host: `up` ones and CNI networks (`cni-<network>`), with
    /// their mode, networks and containers.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run CMD in a container's network namespace (replaces netplane, like `ip netns exec`).
    Exec {
        #[command(flatten)]
        config: ConfigArg,
        /// The container's name, as in the config.
        container: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// List the NAT sessions of the eBPF data plane, as `conntrack -L` does.
    Conntrack {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the data plane's drop and flow events as they happen, one line each (as
    /// `cilium monitor`), until interrupted. eBPF mode.
    Monitor {
        #[command(flatten)]
        config: ConfigArg,
        /// Which events: drops, flows (one per new flow and per TCP state change), or both.
        #[arg(long = "type", value_name = "TYPE", value_enum, default_value_t = EventType::All)]
        kind: EventType,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The programs' debug logs instead of events (needs `up --debug-datapath`).
        #[arg(long)]
        log: bool,
    },
    /// Run the agent of an instance (started by `up`; in eBPF mode it garbage-collects
    /// conntrack entries and follows the host, in every mode it serves the metrics asked
    /// for, until the instance is gone).
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        name: String,
        /// Serve Prometheus metrics on ADDR.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// The instance's mode: another than eBPF serves the metrics alone.
        #[arg(long, value_name = "MODE", default_value = "ebpf")]
        mode: netplane::config::Mode,
    },
    /// Count packets and bytes on an interface with the TC counter program, then print them.
    Count {
        /// The interface (in netplane's own network namespace).
        iface: String,
        /// How long to count.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

/// `monitor --type`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EventType {
    Drop,
    Flow,
    All,
}

impl EventType {
    /// The programs' events flag (`DpConfig.monitor`) for these events.
    fn mask(self) -> u32 {
        use netplane_common::observe::monitor;
        match self {
            EventType::Drop => monitor::DROP,
            EventType::Flow => monitor::FLOW,
            EventType::All => monitor::ALL,
        }
    }
}

/// `--metrics ADDR`, checked as `[metrics] listen` is.
fn parse_metrics_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    netplane::config::parse_listen("--metrics", text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Log records go to stderr: warnings by default, more with `-v`, only errors with `-q`;
/// `RUST_LOG` (tracing-subscriber's `EnvFilter` syntax) overrides both. The agent, which
/// has no terminal, inherits the level and writes to its log file (see `agent`).
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::format::FmtSpan;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // At -vv, each phase of `up` (instance::phases, a span each) says how long it took.
    let spans = if verbose >= 2 && !quiet {
        FmtSpan::CLOSE
    } else {
        FmtSpan::NONE
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    match &arg.config {
        None => Ok(Config::embedded_default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            Ok(Config::parse(&text, &path.display().to_string())?)
        }
    }
}

/// The plan of the config.
fn load_plan(arg: &ConfigArg) -> anyhow::Result<Plan> {
    if arg.name.is_some() {
        bail!("--name: `up` builds from a config; give it with -c FILE");
    }
    Ok(load_config(arg)?.plan()?)
}

/// The instance `--name` names, or the config's.
fn instance_name(arg: &ConfigArg) -> anyhow::Result<String> {
    match &arg.name {
        Some(name) => Ok(name.clone()),
        None => Ok(load_config(arg)?.name),
    }
}

/// Runs one command; its exit status is `status`'s verdict, or success.
fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Up {
            config,
            mode,
            metrics,
            debug_datapath,
            json,
        } => {
            let mut plan = load_plan(&config)?;
            plan.mode = mode.unwrap_or(plan.mode);
            // Per invocation, as `--mode`: the config keeps its own.
            plan.metrics.listen = metrics.or(plan.metrics.listen);
            plan.ebpf.debug_datapath |= debug_datapath;
            let report = instance::up(&plan)?;
            if json {
                let mut out = serde_json::to_value(&report)?;
                out["name"] = plan.name.clone().into();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if report.changes.is_empty() {
                println!(
                    "{}: up to date (uplink {}); nothing to change",
                    plan.name, report.uplink
                );
            } else {
                println!("{}: up (uplink {})", plan.name, report.uplink);
                for change in &report.changes {
                    println!("  {change}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down(c) => {
            // `down` must work even when the config no longer validates; by name, the
            // state alone says what to remove.
            let (name, plan) = match &c.name {
                Some(name) => (name.clone(), None),
                None => {
                    let config = load_config(&c)?;
                    let plan = config.plan().ok();
                    (config.name, plan)
                }
            };
            let removed = instance::down(&name, plan.as_ref())?;
            println!("{name}: down ({} objects removed)", removed.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { config, json } => {
            let name = instance_name(&config)?;
            let status = instance::status(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            // Scripts and monitors read the verdict from the exit status: any problem,
            // the data plane's included, fails.
            Ok(if status.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::List { json } => {
            let rows: Vec<serde_json::Value> = State::instances()
                .into_iter()
                .map(|name| {
                    let plan = State::load(&name).ok().flatten().and_then(|s| s.plan);
                    serde_json::json!({
                        "name": name,
                        "up": plan.is_some(),
                        "mode": plan.as_ref().map(|p| p.mode.to_string()),
                        "networks": plan.as_ref().map_or(Vec::new(), |p| {
                            p.networks.iter().map(|n| format!("{} {}", n.name, n.describe_subnets())).collect()
                        }),
                        "containers": plan.as_ref().map_or(0, |p| p.containers.len()),
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<32} {:<9} {:>10}  NETWORKS",
                    "INSTANCE", "MODE", "CONTAINERS"
                );
                for r in &rows {
                    let mode = r["mode"].as_str().unwrap_or("(not up)");
                    let nets: Vec<&str> = r["networks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str())
                        .collect();
                    println!(
                        "{:<32} {mode:<9} {:>10}  {}",
                        r["name"].as_str().unwrap_or_default(),
                        r["containers"],
                        nets.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec {
            config,
            container,
            cmd,
        } => exec(&config, &container, &cmd).map(|()| ExitCode::SUCCESS),
        Cmd::Conntrack { config, json } => {
            let name = instance_name(&config)?;
            let flows = instance::flows(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                for f in &flows {
                    println!(
                        "{:<5} {:<11} {:<12} {} ⇒ {}  age {}s, expires in {}s",
                        f.protocol,
                        f.state,
                        f.kind,
                        f.original,
                        f.translated,
                        f.age_s,
                        f.expires_in_s
                    );
                }
                println!("{} flows", flows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Monitor {
            config,
            kind,
            json,
            log,
        } => {
            let name = instance_name(&config)?;
            netplane::monitor::run(
                &name,
                netplane::monitor::MonitorOptions {
                    mask: kind.mask(),
                    json,
                    log,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agent {
            name,
            metrics,
            mode,
        } => {
            use netplane::dataplane::ebpf::agent;
            agent::run_with(&name, agent::AgentArgs { metrics, mode });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Count { iface, seconds } => {
            let mut counter = netplane::dataplane::ebpf::counter::PacketCounter::load()?;
            counter
                .attach(&iface)
                .with_context(|| format!("counting on {iface}"))?;
            std::thread::sleep(Duration::from_secs(seconds));
            let t = counter.read()?;
            counter.detach()?;
            println!("direction  packets  bytes");
            println!("ingress    {:>7}  {}", t.ingress.packets, t.ingress.bytes);
            println!("egress     {:>7}  {}", t.egress.packets, t.egress.bytes);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Joins the container's namespace and execs CMD. Runs before any thread exists: setns
/// of the mount namespace requires a single-threaded process.
fn exec(config: &ConfigArg, container: &str, cmd: &[String]) -> anyhow::Result<()> {
    let name = instance_name(config)?;
    // The applied plan is the truth; the config may have been edited since.
    let plan = match State::load(&name)?.and_then(|s| s.plan) {
        Some(p) => p,
        None => load_plan(config)?,
    };
    let Some(c) = plan.container(container) else {
        let known: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "container {container:?} is not in instance {name} (containers: {})",
            known.join(", ")
        );
    };
    netplane::netns::enter_for_exec(&c.netns)?;
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("CMD contains a NUL byte")?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    bail!("cannot execute {:?}: {err}", cmd[0])
}

fn print_status(s: &instance::Status) {
    if !s.up {
        println!("{}: not up", s.name);
    } else {
        let mode = s.mode.map(|m| m.to_string()).unwrap_or_default();
        println!("{}: up, mode {mode}, data plane: {}", s.name, s.dataplane);
        println!(
            "\nNETWORK          SUBNET              GATEWAY          DRIVER  GATEWAY MODE     BRIDGE"
        );
        for n in &s.networks {
            let state = match (n.driver, n.bridge_up) {
                (netplane::config::Driver::Ptp, _) => "-",
                (_, true) => "up",
                (_, false) => "MISSING",
            };
            let driver = match n.driver {
                netplane::config::Driver::Bridge => "bridge",
                netplane::config::Driver::Ptp => "ptp",
            };
            // An IPv6-only network's subnet6 takes the IPv4 subnet's place.
            let (subnet, gateway, subnet6) = match &n.subnet {
                Some(s) => (Some(s), &n.gateway, n.subnet6.as_ref()),
                None => (n.subnet6.as_ref(), &n.gateway6, None),
            };
            println!(
                "{:<16} {:<19} {:<16} {driver:<7} {:<16} {state}",
                n.name,
                subnet.map_or("-", String::as_str),
                gateway.as_deref().unwrap_or("none"),
                n.gateway_mode.to_string(),
            );
            if let Some(s6) = subnet6 {
                println!(
                    "{:<16} {s6:<19} {}",
                    "",
                    n.gateway6.as_deref().unwrap_or("none")
                );
            }
        }
        println!(
            "\nCONTAINER        NETWORK          IP               MAC                NETNS / VETH (host)      PUBLISH"
        );
        for c in &s.containers {
            // An IPv6-only container's IPv6 address takes the IPv4 one's place.
            let (ip, ip6) = match &c.ip {
                Some(ip) => (Some(ip), c.ip6.as_ref()),
                None => (c.ip6.as_ref(), None),
            };
            println!(
                "{:<16} {:<16} {:<16} {:<18} {} / {}{}   {}",
                c.name,
                c.network,
                ip.map_or("-", String::as_str),
                c.mac,
                c.netns,
                c.host_veth,
                if c.present { "" } else { " (MISSING)" },
                c.publish.join(", ")
            );
            if let Some(ip6) = ip6 {
                println!("{:<16} {:<16} {ip6}", "", "");
            }
        }
    }
    if let Some(dp) = &s.dataplane_health {
        print_dataplane(dp);
    }
    for p in &s.problems {
        println!("problem: {p}");
    }
}

fn print_dataplane(dp: &netplane::dataplane::DataplaneStatus) {
    println!(
        "\nDATA PLANE ({}, {})",
        dp.mode,
        if dp.healthy { "healthy" } else { "UNHEALTHY" }
    );
    for p in &dp.problems {
        println!("  problem: {p}");
    }
    for a in &dp.attached {
        println!("  attached: {a}");
    }
    match &dp.agent {
        Some(a) => {
            let now = netplane::dataplane::ebpf::agent::record::unix_now();
            for line in a.lines(now) {
                println!("  {line}");
            }
        }
        None => println!("  agent: none ({} mode has no agent)", dp.mode),
    }
    if let Some(u) = &dp.uplink {
        fn addr<A: std::fmt::Display>(a: Option<A>) -> String {
            a.map_or("none".to_owned(), |a| a.to_string())
        }
        println!(
            "  uplink: {} ({}), masquerade to {}",
            u.name,
            addr(u.address),
            addr(u.translation_address)
        );
        if u.address6.is_some() || u.translation_address6.is_some() {
            println!(
                "  uplink IPv6: {}, masquerade to {}",
                addr(u.address6),
                addr(u.translation_address6)
            );
        }
    }
    if let Some(rules) = dp.dnat_rules {
        println!("  DNAT rules: {rules}");
    }
    let fill = |m: &netplane::dataplane::MapFill| match m.max_entries {
        Some(max) => format!("{} of {max}", m.entries),
        None => m.entries.to_string(),
    };
    if let Some(ct) = &dp.conntrack {
        println!("  conntrack entries: {}", fill(ct));
    }
    if let Some(ct) = &dp.conntrack6 {
        println!("  conntrack entries (IPv6): {}", fill(ct));
    }
    for m in &dp.maps {
        println!("  map {}: {}", m.name, fill(m));
    }
    for (reason, n) in &dp.drops {
        println!("  drops {reason}: {n}");
    }
    let c = &dp.counters;
    for d in &c.drops {
        println!(
            "  drops {} at {} {} ({}): {} packets, {} bytes",
            d.reason, d.hook, d.direction, d.family, d.packets, d.bytes
        );
    }
    for t in &c.translated {
        println!(
            "  translated at {} {} ({}): {} packets, {} bytes",
            t.hook, t.direction, t.family, t.packets, t.bytes
        );
    }
    for n in &c.nat_ports {
        println!(
            "  masquerade ports ({}): {} own, {} searched, {} taken ports tried, {} searches failed",
            n.family, n.own, n.searched, n.retries, n.failed
        );
    }
    for d in &c.dnat {
        println!(
            "  DNAT {}/{} → {} ({}): {} packets, {} bytes",
            d.host_port, d.protocol, d.destination, d.family, d.packets, d.bytes
        );
    }
    if let Some(n) = c.monitor_events_lost.filter(|n| *n > 0) {
        println!("  monitor events lost: {n}");
    }
    if let Some(f) = dp.fast_forwarded {
        println!(
            "  fast-forwarded into containers: {} ({} into the container's end)",
            f.into_containers, f.into_containers_peer
        );
        println!(
            "  fast-forwarded out of containers: {} ({} at the container's own hook)",
            f.out_of_containers, f.out_of_containers_at_hook
        );
    }
}
