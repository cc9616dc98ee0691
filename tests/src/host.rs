//! The sandboxed host that tests, the bench and the demo run netplane in: a "host"
//! namespace with its uplink `up0` (203.0.113.1/24) cabled to an "outside" namespace
//! (203.0.113.2/24, TEST-NET-3) that is its default gateway.

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
pub struct Host {
    pub sandbox: Sandbox,
    /// Where netplane runs (its "root" namespace).
    pub host: Netns,
    /// The uplink's peer: the default gateway, and the remote client of published ports.
    pub outside: Netns,
    config: PathBuf,
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
        let config = std::env::temp_dir().join(format!("{}.toml", sandbox.prefix()));
        sandbox.owns_file(config.clone());
        Host {
            sandbox,
            host,
            outside,
            config,
        }
    }

    /// Replaces every namespace with a new one of the same name, after the instance's
    /// `down`: nothing one run leaves behind (iptables' empty `nat` chains keep
    /// nf_conntrack running, for instance) reaches the next. The old namespaces stay alive,
    /// unnamed, until the host drops (see [`Sandbox::retire`]).
    pub fn renew(&mut self) {
        self.sandbox.retire();
        (self.host, self.outside) = cable(&mut self.sandbox);
    }

    /// The instance name to run netplane under: unique, and the sandbox's prefix, so that
    /// the container namespaces (`<name>-<container>`) are swept by the sandbox's removal.
    pub fn name(&self) -> &str {
        self.sandbox.prefix()
    }

    /// The config file that [`Host::netplane`] passes with `-c`.
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
            "netplane {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A drop counter of the eBPF data plane (`status --json`), by reason name.
    pub fn drops(&self, reason: &str) -> u64 {
        let status: serde_json::Value =
            serde_json::from_str(&self.netplane_ok(&["status", "--json"])).unwrap();
        status["dataplane_health"]["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop counter {reason} in {status}"))
    }

    /// The namespace of container `c`.
    pub fn container(&self, c: &str) -> Netns {
        Netns::named(format!("{}-{c}", self.name()))
    }
}

/// The host and outside namespaces, cabled; the instance's `down` goes with them.
fn cable(sandbox: &mut Sandbox) -> (Netns, Netns) {
    let host = sandbox.netns("host");
    let outside = sandbox.netns("out");
    sandbox.runs_netplane_in(&host);
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
