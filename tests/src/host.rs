//! The sandboxed host that tests, the bench and the demo run netplane in: a "host"
//! namespace with its uplink `up0` (203.0.113.1/24) cabled to an "outside" namespace
//! (203.0.113.2/24, TEST-NET-3) that is its default gateway. And what every netplane
//! instance of the harness shares ([`Instance`]): running `netplane` in its namespace with
//! its config, reading its status, and a [`Snapshot`] of what it may change on its host.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{Netns, Sandbox};

pub const UPLINK: &str = "up0";
pub const UPLINK_IP: &str = "203.0.113.1";
pub const OUTSIDE_IP: &str = "203.0.113.2";

/// A host namespace for one netplane instance, named after the sandbox, and the outside
/// world it is cabled to. On drop, and on SIGINT, SIGTERM or SIGHUP, the instance's `down`
/// runs and every namespace goes (see [`Sandbox`]).
///
/// It derefs to its [`Instance`] (`h.host`, `h.netplane_ok(…)`, `h.container(…)`): a
/// machine of the multi-host world ([`crate::multihost`]) is an `Instance` without an
/// outside namespace of its own, and both share one way of running netplane.
pub struct Host {
    pub sandbox: Sandbox,
    /// The uplink's peer: the default gateway, and the remote client of published ports.
    pub outside: Netns,
    instance: Instance,
    /// Whether the cable carries IPv6 too ([`Host::with_ipv6`]), also after a
    /// [`Host::renew`].
    ipv6: bool,
}

/// One netplane instance: its name, the namespace it runs in (its "root" namespace) and
/// its config file, which goes with the sandbox.
pub struct Instance {
    /// Where netplane runs.
    pub host: Netns,
    name: String,
    config: PathBuf,
}

/// Whether process `pid` runs (a zombie, reaped or not, does not: its cmdline is empty).
pub fn alive(pid: u64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// A binary of this build, in the running executable's target directory (`target/debug/`):
/// next to a binary, one level above a test's own `deps/` directory.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable's directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    dir.join(name)
}

/// The `netplane` binary of this build, or `$NETPLANE_BIN`.
pub fn netplane_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPLANE_BIN") {
        return p.into();
    }
    let bin = target_bin("netplane");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build` (or `cargo xtask build`)",
        bin.display()
    );
    bin
}

/// The connection tester (tests/src/bin/nptest.rs) of this build.
pub fn nptest_bin() -> PathBuf {
    target_bin("nptest")
}

impl Host {
    /// A test's host (namespaces `npt…`).
    pub fn new() -> Host {
        Host::in_sandbox(Sandbox::new())
    }

    /// A tool's host, its names starting with `kind` (`npbench`, `npdemo`).
    pub fn with_prefix(kind: &str) -> Host {
        Host::in_sandbox(Sandbox::with_prefix(kind))
    }

    fn in_sandbox(mut sandbox: Sandbox) -> Host {
        let (host, outside) = cable(&mut sandbox);
        // The instance is named after the sandbox (see [`Instance::name`]).
        let name = sandbox.prefix().to_owned();
        let instance = Instance::new(&sandbox, name, host);
        Host {
            sandbox,
            outside,
            instance,
            ipv6: false,
        }
    }

    /// Replaces every namespace with a new one of the same name, after the instance's
    /// `down`: nothing one run leaves behind (iptables' empty `nat` chains keep
    /// nf_conntrack running, for instance) reaches the next. The old namespaces stay alive,
    /// unnamed, until the host drops (see [`Sandbox::retire`]).
    pub fn renew(&mut self) {
        self.sandbox.retire();
        (self.instance.host, self.outside) = cable(&mut self.sandbox);
        if self.ipv6 {
            self.cable_ipv6();
        }
    }
}

impl std::ops::Deref for Host {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.instance
    }
}

impl Instance {
    /// Instance `name` running in `host`, registered with `sandbox`: its `down` runs on
    /// every removal of the sandbox, and its config file goes with it. `name` is the
    /// sandbox's prefix or one of its [`Sandbox::instance_name`]s.
    pub fn new(sandbox: &Sandbox, name: String, host: Netns) -> Instance {
        sandbox.runs_instance_in(&name, &host);
        let config = std::env::temp_dir().join(format!("{name}.toml"));
        sandbox.owns_file(config.clone());
        Instance { host, name, config }
    }

    /// The instance name to run netplane under: unique, and starting with the sandbox's
    /// prefix, so that the container namespaces (`<name>-<container>`) are swept by the
    /// sandbox's removal.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config file that [`Instance::netplane`] passes with `-c`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Writes the config file; `body` is TOML without the `name` line.
    pub fn write_config(&self, body: &str) {
        std::fs::write(&self.config, format!("name = \"{}\"\n{body}", self.name()))
            .expect("write config");
    }

    /// Runs `netplane SUBCOMMAND -c <config> REST…` inside the host namespace.
    pub fn netplane(&self, args: &[&str]) -> Output {
        let bin = netplane_bin();
        let mut all = vec![
            bin.to_str().unwrap(),
            args[0],
            "-c",
            self.config.to_str().unwrap(),
        ];
        all.extend_from_slice(&args[1..]);
        self.host.run(&all)
    }

    /// `netplane ARGS` that must succeed; returns stdout.
    pub fn netplane_ok(&self, args: &[&str]) -> String {
        let out = self.netplane(args);
        assert!(
            out.status.success(),
            "netplane {args:?} of {} failed:\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.netplane_ok(&["status", "--json"])).unwrap()
    }

    /// A drop counter of the eBPF data plane (`status --json`), by reason name.
    pub fn drops(&self, reason: &str) -> u64 {
        let status = self.status();
        status["dataplane_health"]["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop counter {reason} in {status}"))
    }

    /// Every drop counter of the eBPF data plane that is not zero, by reason name.
    pub fn all_drops(&self) -> std::collections::BTreeMap<String, u64> {
        let status = self.status();
        status["dataplane_health"]["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64().filter(|n| *n > 0)?)))
            .collect()
    }

    /// The namespace of container `c`.
    pub fn container(&self, c: &str) -> Netns {
        Netns::named(format!("{}-{c}", self.name()))
    }

    /// The host end of container `c`'s veth pair (`vnp…`), as `status` reports it.
    pub fn host_veth(&self, c: &str) -> String {
        let status = self.status();
        status["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["name"] == c)
            .and_then(|x| x["host_veth"].as_str())
            .unwrap_or_else(|| panic!("no container {c} in {status}"))
            .to_owned()
    }

    /// What the host namespace holds that `up` may change, for comparing before and after.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(self)
    }
}

/// What a netplane instance may change on its host, read from the outside (`ip`,
/// `iptables-save`, `nft`, bpffs, /run): equal before `up` and after `down`, and after an
/// `up` that was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `ip -o link`: name, flags and master of every link (no counters, no state that
    /// traffic changes).
    pub links: Vec<String>,
    pub addresses: String,
    /// Every IPv4 route of every table (`ip -4 route show table all`).
    pub routes: String,
    /// Policy routing rules (`ip rule`).
    pub rules: String,
    /// iptables-save and nft lines that name netplane (its chains, `NETPLANE-…`).
    pub firewall: Vec<String>,
    pub ip_forward: String,
    /// Named namespaces whose names start with the instance's.
    pub namespaces: Vec<String>,
    /// Whether the instance's bpffs pin directory and state directory exist.
    pub pins: bool,
    pub state: bool,
}

impl Snapshot {
    /// What differs from `other`, field by field (`field: before -> after`): empty when
    /// they are equal.
    pub fn diff(&self, other: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            let (a, b) = (format!("{a:?}"), format!("{b:?}"));
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        field("links", &self.links, &other.links);
        field("addresses", &self.addresses, &other.addresses);
        field("routes", &self.routes, &other.routes);
        field("rules", &self.rules, &other.rules);
        field("firewall", &self.firewall, &other.firewall);
        field("ip_forward", &self.ip_forward, &other.ip_forward);
        field("namespaces", &self.namespaces, &other.namespaces);
        field("pins", &self.pins, &other.pins);
        field("state", &self.state, &other.state);
        out
    }

    fn of(i: &Instance) -> Snapshot {
        let ns = &i.host;
        // The flags show up/down, not the carrier.
        let links = ns
            .links()
            .iter()
            .map(|l| format!("{} {} {}", l.name, l.flags, l.master))
            .collect();
        let firewall = [
            ns.sh(&["iptables-save"]),
            String::from_utf8_lossy(&ns.run(&["nft", "list", "ruleset"]).stdout).into_owned(),
        ]
        .iter()
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.to_ascii_lowercase().contains("netplane"))
        .collect();
        let mut namespaces: Vec<String> = std::fs::read_dir(netplane::netns::RUN_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{}-", i.name())))
            .collect();
        namespaces.sort();
        Snapshot {
            links,
            addresses: ns.sh(&["ip", "-o", "-4", "addr", "show"]),
            routes: ns.sh(&["ip", "-4", "route", "show", "table", "all"]),
            rules: ns.sh(&["ip", "-4", "rule", "show"]),
            firewall,
            ip_forward: ns.sh(&["sysctl", "-n", "net.ipv4.ip_forward"]),
            namespaces,
            pins: Path::new(&format!("/sys/fs/bpf/netplane/{}", i.name())).exists(),
            state: Path::new(&format!("/run/netplane/{}", i.name())).exists(),
        }
    }
}

/// The host and outside namespaces, cabled; the instance's `down` goes with them.
fn cable(sandbox: &mut Sandbox) -> (Netns, Netns) {
    let host = sandbox.netns("host");
    let outside = sandbox.netns("out");
    sandbox.veth(
        &host,
        UPLINK,
        &format!("{UPLINK_IP}/24"),
        &outside,
        "eth0",
        &format!("{OUTSIDE_IP}/24"),
    );
    host.sh(&["ip", "route", "add", "default", "via", OUTSIDE_IP]);
    (host, outside)
}

/// The uplink's IPv6 address, and the outside's, for dual-stack tests (RFC 3849).
pub const UPLINK_IP6: &str = "2001:db8:113::1";
pub const OUTSIDE_IP6: &str = "2001:db8:113::2";

impl Host {
    /// Turns IPv6 on for the cable between the host and the outside (the sandbox makes
    /// namespaces with it off): the uplink [`UPLINK_IP6`]/64, the outside
    /// [`OUTSIDE_IP6`]/64 (no DAD: usable at once), and the host's IPv6 default route
    /// via the outside. The outside has no route to the container subnets. A
    /// [`Host::renew`] cables the new namespaces the same way.
    pub fn with_ipv6(mut self) -> Host {
        self.ipv6 = true;
        self.cable_ipv6();
        self
    }

    fn cable_ipv6(&self) {
        for (ns, dev, addr) in [
            (&self.instance.host, UPLINK, UPLINK_IP6),
            (&self.outside, "eth0", OUTSIDE_IP6),
        ] {
            add_ip6(ns, dev, &format!("{addr}/64"));
        }
        // ::1 on the host's loopback, as on any host with IPv6.
        self.instance
            .host
            .sysctl("net.ipv6.conf.lo.disable_ipv6", "0");
        self.instance
            .host
            .sh(&["ip", "-6", "route", "add", "default", "via", OUTSIDE_IP6]);
    }
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

/// A server started in a namespace; killed and reaped on drop, so that no process outlives
/// its test (deleting a namespace does not end the processes inside it).
pub struct Server(std::process::Child);

impl Server {
    /// Starts `nptest ARGS` in `ns` and waits until it is listening.
    pub fn start(ns: &Netns, args: &[&str]) -> Server {
        let bin = nptest_bin();
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut child = ns.spawn(&all);
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let server = Server(child);
        assert_eq!(
            line.trim(),
            "listening",
            "server {args:?} in {} did not start",
            ns.name
        );
        server
    }

    /// Waits for the server to finish on its own (after its COUNT requests).
    pub fn finish(mut self) -> bool {
        self.0.wait().is_ok_and(|s| s.success())
    }

    /// Waits for it to finish and returns what else it printed.
    pub fn output(mut self) -> String {
        let mut rest = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut rest).unwrap();
        let _ = self.0.wait();
        rest
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `nptest ARGS` in `ns`: its stdout when it succeeded, its stderr otherwise.
pub fn client(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let bin = nptest_bin();
    let mut all = vec![bin.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = ns.run(&all);
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// One TCP exchange: a server in `server` on `listen`, a client in `client` connecting to
/// `target`. Returns what the server answered: `<message> from <client address it saw>`.
pub fn tcp_exchange(
    server: &Netns,
    listen: &str,
    from: &Netns,
    target: &str,
    message: &str,
) -> String {
    let _server = Server::start(server, &["serve-tcp", listen]);
    client(from, &["send-tcp", target, message])
        .unwrap_or_else(|e| panic!("client in {}: {e}", from.name))
}

/// One UDP datagram of `size` bytes (from source port `sport` if given) and its answer,
/// `<size> bytes from <client address the server saw>`.
pub fn udp_exchange(
    server: &Netns,
    listen: &str,
    from: &Netns,
    target: &str,
    size: usize,
    sport: Option<u16>,
) -> Result<String, String> {
    let _server = Server::start(server, &["serve-udp", listen]);
    let (size, sport) = (size.to_string(), sport.map(|p| p.to_string()));
    let mut args = vec!["send-udp", target, &size];
    args.extend(sport.as_deref());
    client(from, &args)
}

/// Whether `from` can ping `ip` (one echo, 1 s timeout).
pub fn pings(from: &Netns, ip: &str) -> bool {
    from.run(&["ping", "-c", "1", "-W", "1", "-q", ip])
        .status
        .success()
}

/// Turns IPv6 on for `dev` in `ns` and gives it `addr` (with its prefix), without
/// duplicate address detection (a test's addresses are its own).
pub fn add_ip6(ns: &Netns, dev: &str, addr: &str) {
    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0");
    ns.sh(&["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
}
