//! Real container runtimes on a sandboxed host, for the CNI end-to-end tests: Podman 4 with
//! its CNI backend ([`Podman`]) and containerd 1.6's `ctr run --cni` ([`Containerd`]), run
//! the way ../shared/CNI-RUNTIMES.md found that they work on these machines.
//!
//! Each runtime runs in the sandbox's host namespace (`nsenter --net`, never `ip netns
//! exec`, whose remounted /sys breaks runc) with a private everything under a temp dir of
//! its own (`/tmp/<sandbox prefix>-…`): config, storage, CNI config dir, plugin dir, IPAM
//! leases. The image is busybox, built offline once per test process ([`IMAGE`]). On drop
//! a runtime removes every container (so the plugin's DEL runs while the host namespace
//! still exists), stops whatever it started and removes its dirs, unmounting anything that
//! was left mounted there first. When the sandbox's signal handler ends the process
//! instead, an exit handler does the same for every runtime that did not drop (Podman's
//! `rm -af` in the host namespace, which it holds open for that; containerd's leftover
//! container inits and shims killed).
//!
//! A CNI network ([`CniNetwork`]) is named after the sandbox, so its netplane instance
//! `cni-<network>` is registered with the sandbox ([`Sandbox::runs_cni_network_in`]) and
//! its `down` runs when the sandbox goes, panics included. Declare the runtime after the
//! [`crate::host::Host`], so that it drops first.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::host::{netplane_bin, nptest_bin, target_bin};
use crate::{Netns, Sandbox};

/// The image both runtimes run: static busybox (`sh`, `ip`, `ping`, `nc`…), with mount
/// points for [`NPTEST`] and the host's `/usr`, and `lib`/`lib64` linked into `usr`.
pub const IMAGE: &str = "localhost/npbusybox:latest";

/// Where a container finds the harness's connection tester (tests/src/bin/nptest.rs):
/// bind-mounted read-only, with the host's `/usr` (its shared libraries) next to it.
pub const NPTEST: &str = "/nptest";

/// A container script: nptest's TCP server on port 80 and UDP server on port 53, each
/// answering `<what> from <client address it saw>` (as `tcp_exchange` and `udp_exchange`
/// read them) until the container is removed. [`Podman::run_servers`] waits for both.
pub const SERVERS: &str =
    "/nptest serve-udp 0.0.0.0:53 1000000 & exec /nptest serve-tcp 0.0.0.0:80 1000000";

/// The plugins of `/usr/lib/cni` (Debian's containernetworking-plugins): host-local, and
/// the reference chain.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// How long one runtime command may take before the test fails instead of hanging.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// How long a container or daemon may take to become ready (generous: CI machines are
/// slow, and no test asserts on time).
const READY_LIMIT: Duration = Duration::from_secs(60);

/// Names the runtimes' temp dirs apart within one sandbox.
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Which plugin serves a [`CniNetwork`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// `netplane-cni` (target/debug), in the network's mode.
    Netplane,
    /// The reference chain netplane-cni replaces: `bridge` (with host-local) + `portmap`,
    /// from [`REFERENCE_PLUGINS`], for comparison.
    Reference,
}

/// One CNI network: the conflist's `name`, and with netplane-cni the netplane instance
/// `cni-<name>` in the host namespace.
#[derive(Clone, Debug)]
pub struct CniNetwork {
    /// `<sandbox prefix>-<role>`, at most 28 characters.
    pub name: String,
    pub bridge: String,
    /// `10.89.<n>.0/24`.
    pub subnet: String,
    /// `10.89.<n>.1`, on the bridge (host-local's default gateway).
    pub gateway: String,
    /// netplane's `mode` (`ebpf` or `iptables`).
    pub mode: String,
    pub plugin: Plugin,
    /// Where the instance runs.
    pub host: Netns,
}

impl CniNetwork {
    /// Network `<prefix>-<role>` of netplane-cni in `mode`, on subnet 10.89.`n`.0/24 and
    /// bridge `npc<n>`, in `host`; its instance's `down` goes with `sandbox`.
    pub fn new(sandbox: &Sandbox, host: &Netns, role: &str, n: u8, mode: &str) -> CniNetwork {
        let name = sandbox.instance_name(role);
        assert!(
            name.len() <= 28,
            "CNI network name {name} is longer than 28 characters"
        );
        sandbox.runs_cni_network_in(&name, host);
        CniNetwork {
            name,
            bridge: format!("npc{n}"),
            subnet: format!("10.89.{n}.0/24"),
            gateway: format!("10.89.{n}.1"),
            mode: mode.to_owned(),
            plugin: Plugin::Netplane,
            host: host.clone(),
        }
    }

    /// The same network served by `plugin`.
    pub fn with_plugin(mut self, plugin: Plugin) -> CniNetwork {
        self.plugin = plugin;
        self
    }

    /// The netplane instance of the network.
    pub fn instance(&self) -> String {
        format!("cni-{}", self.name)
    }

    /// The conflist, at `cni_version`, with host-local leases under `data_dir`.
    pub fn conflist(&self, cni_version: &str, data_dir: &Path) -> Value {
        let ipam = json!({
            "type": "host-local",
            "ranges": [[{"subnet": self.subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir,
        });
        let mut main = json!({
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": ipam,
        });
        let plugins = match self.plugin {
            Plugin::Netplane => {
                main["type"] = json!("netplane-cni");
                main["mode"] = json!(self.mode);
                main["capabilities"] = json!({"portMappings": true});
                vec![main]
            }
            Plugin::Reference => {
                main["type"] = json!("bridge");
                let portmap = json!({
                    "type": "portmap",
                    "snat": true,
                    "capabilities": {"portMappings": true},
                });
                vec![main, portmap]
            }
        };
        json!({"cniVersion": cni_version, "name": self.name, "plugins": plugins})
    }

    /// The plugin binaries the conflist names, IPAM included, and where each comes from.
    pub fn plugin_binaries(&self) -> Vec<PathBuf> {
        let reference = |t: &str| Path::new(REFERENCE_PLUGINS).join(t);
        match self.plugin {
            Plugin::Netplane => vec![netplane_cni_bin(), reference("host-local")],
            Plugin::Reference => ["bridge", "host-local", "portmap"].map(reference).to_vec(),
        }
    }

    /// `netplane SUBCOMMAND --name cni-<network> REST…` in the host namespace.
    pub fn netplane(&self, args: &[&str]) -> Output {
        let bin = netplane_bin();
        let instance = self.instance();
        let mut all = vec![bin.to_str().unwrap(), args[0], "--name", &instance];
        all.extend_from_slice(&args[1..]);
        self.host.run(&all)
    }

    /// `netplane ARGS` that must succeed; returns stdout.
    pub fn netplane_ok(&self, args: &[&str]) -> String {
        let what = format!("netplane {args:?} of {}", self.instance());
        checked(&what, &self.netplane(args))
    }

    /// `netplane status --name cni-<network> --json`.
    pub fn status(&self) -> Value {
        let out = self.netplane_ok(&["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// The host namespace's links whose names start with `vnp` (netplane's host veths).
    pub fn host_veths(&self) -> Vec<String> {
        self.host
            .links()
            .iter()
            .map(|l| l.ifname().to_owned())
            .filter(|n| n.starts_with("vnp"))
            .collect()
    }
}

/// `netplane-cni` of this build.
pub fn netplane_cni_bin() -> PathBuf {
    let bin = target_bin("netplane-cni");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p netplane`",
        bin.display()
    );
    bin
}

/// The leases host-local holds for `net` with its `dataDir` at `data_dir`: the addresses
/// it has handed out (one file each, named after the address), sorted.
pub fn host_local_leases(data_dir: &Path, net: &CniNetwork) -> Vec<String> {
    let mut ips: Vec<String> = std::fs::read_dir(data_dir.join(&net.name))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    ips.sort();
    ips
}

/// A runtime's temp dir: its own files, and for its CNI networks the config dir, copies
/// of the plugin binaries and the host-local leases. Removed on drop, after the runtime's
/// own drop has stopped everything that used it.
struct CniDirs {
    /// The runtime's temp dir.
    root: PathBuf,
    /// The sandbox's prefix, which starts the name of each of its CNI networks.
    prefix: String,
}

impl CniDirs {
    fn new(sandbox: &Sandbox, what: &str) -> CniDirs {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("{}-{what}{n}", sandbox.prefix()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["net.d", "bin", "ipam"] {
            std::fs::create_dir_all(root.join(d)).expect("create the runtime's dirs");
        }
        CniDirs {
            root,
            prefix: sandbox.prefix().to_owned(),
        }
    }

    fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    fn net_d(&self) -> PathBuf {
        self.root.join("net.d")
    }

    /// Copies (not links: containerd's plugin dir is bind-mounted over /usr/lib/cni, which
    /// a link may point into) of the network's plugins into the plugin dir, and the
    /// conflist into `net.d/<file>`.
    fn add_network(&self, net: &CniNetwork, cni_version: &str, file: &str) {
        for bin in net.plugin_binaries() {
            let to = self.bin().join(bin.file_name().unwrap());
            std::fs::copy(&bin, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), to.display()));
        }
        let conflist = net.conflist(cni_version, &self.root.join("ipam"));
        std::fs::write(
            self.net_d().join(file),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .expect("write the conflist");
    }

    fn leases(&self, net: &CniNetwork) -> Vec<String> {
        host_local_leases(&self.root.join("ipam"), net)
    }
}

impl Drop for CniDirs {
    fn drop(&mut self) {
        remove_dir_unmounting(&self.root);
        // libcni's result cache (`<network>-<container>-<ifname>`) is not configurable in
        // Podman 4.3 or ctr 1.6: what a DEL that never came left there goes with the
        // sandbox's networks.
        let cache = Path::new(LIBCNI_CACHE);
        for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}-", self.prefix))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Where libcni caches ADD results (Podman and ctr use its default).
const LIBCNI_CACHE: &str = "/var/lib/cni/results";

/// Unmounts whatever is still mounted under `root` (deepest first), then removes it.
fn remove_dir_unmounting(root: &Path) {
    let prefix = format!("{}/", root.display());
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        eprintln!("cni: unmounting leftover {m}");
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    if let Err(e) = std::fs::remove_dir_all(root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("cni: cannot remove {}: {e}", root.display());
    }
}

/// A container that a runtime started, as the runtime reports it.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    /// The runtime's full ID: `CNI_CONTAINERID`.
    pub id: String,
    /// Its address on the network (no prefix length).
    pub ip: String,
    /// Its network namespace (`netns-<uuid>` for Podman).
    pub netns: Netns,
}

/// Podman under `nsenter --net` into a host namespace, with its own containers.conf,
/// storage.conf (vfs, so no overlay mount stays behind), CNI config and plugin dirs, all
/// under a temp dir. Drop removes every container (the plugin's DEL runs), then the dir.
pub struct Podman {
    host: Netns,
    dirs: CniDirs,
}

/// Podman's command line, with the config of the Podman in `root`, in the network
/// namespace at `netns` (a path).
fn podman_in(root: &Path, netns: &str, args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={netns}"))
        .arg("podman")
        .args(args)
        .env("CONTAINERS_CONF", root.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"));
    output_within(&mut cmd, None, COMMAND_LIMIT)
}

/// Removes every container of the Podman in `root` (their DELs run in the namespace at
/// `netns`), then its cgroup.
fn podman_remove_all(root: &Path, netns: &str) {
    match podman_in(root, netns, &["rm", "-a", "-f", "-t", "0"]) {
        Ok(o) if o.status.success() => {}
        other => eprintln!("cni: podman rm -af of {}: {other:?}", root.display()),
    }
    remove_cgroup(&podman_cgroup_parent(root));
}

/// The cgroup (in every hierarchy) that holds the containers of the Podman in `root` and
/// their conmons (`<parent>/conmon`): named after the dir, and removed with it (Podman's
/// default, `/libpod_parent`, would stay on the machine).
fn podman_cgroup_parent(root: &Path) -> String {
    format!("/{}", root.file_name().unwrap().to_string_lossy())
}

impl Podman {
    /// A private Podman in `host`, with [`IMAGE`] imported.
    pub fn new(sandbox: &Sandbox, host: &Netns) -> Podman {
        let dirs = CniDirs::new(sandbox, "podman");
        let root = &dirs.root;
        let containers_conf = format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "{REFERENCE_PLUGINS}"]
network_config_dir = "{net_d}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/tmp"
runtime = "runc"
"#,
            bin = dirs.bin().display(),
            net_d = dirs.net_d().display(),
            root = root.display(),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{root}/graph\"\nrunroot = \"{root}/run\"\n",
            root = root.display()
        );
        std::fs::write(root.join("containers.conf"), containers_conf).unwrap();
        std::fs::write(root.join("storage.conf"), storage_conf).unwrap();
        let host_ns = std::fs::File::open(host.path()).expect("open the host namespace");
        live().push(Leftover::Podman {
            root: dirs.root.clone(),
            host: host_ns,
        });
        let podman = Podman {
            host: host.clone(),
            dirs,
        };
        let rootfs = images().rootfs.to_str().unwrap().to_owned();
        podman.ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            "--change",
            "ENV PATH=/bin:/usr/bin",
            &rootfs,
            IMAGE,
        ]);
        podman
    }

    /// The temp dir everything of this Podman lives in.
    pub fn dir(&self) -> &Path {
        &self.dirs.root
    }

    /// Makes `net` known to Podman: its conflist (cniVersion 1.0.0, the newest that
    /// Podman 4.3's libcni speaks) and copies of its plugins.
    pub fn add_network(&self, net: &CniNetwork) {
        self.dirs
            .add_network(net, "1.0.0", &format!("{}.conflist", net.name));
    }

    /// The addresses host-local has leased on `net`.
    pub fn leases(&self, net: &CniNetwork) -> Vec<String> {
        self.dirs.leases(net)
    }

    /// `podman ARGS` in the host namespace, whatever its status.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.try_podman(args)
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    fn try_podman(&self, args: &[&str]) -> Result<Output, String> {
        podman_in(&self.dirs.root, &self.host.path(), args)
    }

    /// `podman ARGS` that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        checked(&format!("podman {args:?}"), &self.podman(args))
    }

    /// `podman run -d` of container `name` on `net`, publishing `publish` (`-p` specs),
    /// running `script` with `sh -c`: nptest and the host's /usr are mounted read-only.
    /// Does not wait for the script to be ready.
    pub fn run(&self, name: &str, net: &CniNetwork, publish: &[&str], script: &str) -> Container {
        let nptest = format!("{}:{NPTEST}:ro", nptest_bin().display());
        let cgroup_parent = podman_cgroup_parent(&self.dirs.root);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &net.name,
            "--cgroup-parent",
            &cgroup_parent,
        ];
        for p in publish {
            args.extend(["-p", p]);
        }
        args.extend(["-v", &nptest, "-v", "/usr:/usr:ro", IMAGE, "/bin/sh", "-c"]);
        args.push(script);
        self.ok(&args);
        self.inspect(name, net)
    }

    /// [`Podman::run`] with [`SERVERS`], once both listen.
    pub fn run_servers(&self, name: &str, net: &CniNetwork, publish: &[&str]) -> Container {
        let c = self.run(name, net, publish, SERVERS);
        wait_for(&format!("the servers of container {name}"), || {
            let logs = self.podman(&["logs", name]);
            String::from_utf8_lossy(&logs.stdout)
                .matches("listening")
                .count()
                >= 2
        });
        c
    }

    /// What Podman knows of container `name` on `net`.
    pub fn inspect(&self, name: &str, net: &CniNetwork) -> Container {
        let out = self.ok(&["inspect", name]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let settings = &v[0]["NetworkSettings"];
        let sandbox_key = settings["SandboxKey"].as_str().unwrap_or_default();
        let netns = Path::new(sandbox_key)
            .file_name()
            .unwrap_or_else(|| panic!("container {name} has no netns: {out}"))
            .to_string_lossy()
            .into_owned();
        Container {
            name: name.to_owned(),
            id: v[0]["Id"].as_str().unwrap().to_owned(),
            ip: settings["Networks"][&net.name]["IPAddress"]
                .as_str()
                .unwrap_or_else(|| panic!("container {name} has no address on {}", net.name))
                .to_owned(),
            netns: Netns::named(netns),
        }
    }

    /// `podman exec NAME ARGS`, whatever its status.
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", name];
        all.extend_from_slice(args);
        self.podman(&all)
    }

    /// `nptest ARGS` inside container `name`: its stdout when it succeeded, its stderr
    /// otherwise (as [`crate::host::client`]).
    pub fn nptest(&self, name: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec![NPTEST];
        all.extend_from_slice(args);
        result(&self.exec(name, &all))
    }

    /// `podman rm -f -t 0 NAME` (PID 1 of a container may ignore SIGTERM).
    pub fn rm(&self, name: &str) {
        self.ok(&["rm", "-f", "-t", "0", name]);
    }

    /// Runs the network's plugins straight, as the runtime would, with `CNI_COMMAND=DEL`
    /// for container `id` and `netns` (`""`: none), in reverse order; the first failure's
    /// output, or the last success's.
    pub fn cni_del(&self, net: &CniNetwork, id: &str, netns: &str) -> Output {
        let conflist = net.conflist("1.0.0", &self.dirs.root.join("ipam"));
        let plugins = conflist["plugins"].as_array().unwrap().clone();
        let path = format!("{}:{REFERENCE_PLUGINS}", self.dirs.bin().display());
        let mut last = None;
        for mut conf in plugins.into_iter().rev() {
            conf["name"] = conflist["name"].clone();
            conf["cniVersion"] = conflist["cniVersion"].clone();
            let plugin = self.dirs.bin().join(conf["type"].as_str().unwrap());
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", self.host.path()))
                .arg(&plugin)
                .env("CNI_COMMAND", "DEL")
                .env("CNI_CONTAINERID", id)
                .env("CNI_NETNS", netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", &path);
            let out = output_within(&mut cmd, Some(conf.to_string().as_bytes()), COMMAND_LIMIT)
                .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
            if !out.status.success() {
                return out;
            }
            last = Some(out);
        }
        last.expect("a conflist with plugins")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Through the namespace held open: it is there even if the sandbox went first.
        let host = unregister(&self.dirs.root);
        let netns = match &host {
            Some(Leftover::Podman { host, .. }) => fd_path(host),
            _ => self.host.path(),
        };
        podman_remove_all(&self.dirs.root, &netns);
    }
}

/// A private containerd in a host namespace (own root, state, socket; CRI off), and `ctr`
/// run against it: plainly, or with `--cni` in a private mount namespace whose
/// `/etc/cni/net.d` and `/usr/lib/cni` are this instance's dirs (ctr 1.6 reads only the
/// first conflist there, and plugins only from /opt/cni/bin and /usr/lib/cni). Drop kills
/// every task, stops the daemon and removes its dirs.
pub struct Containerd {
    host: Netns,
    dirs: CniDirs,
    /// The containerd namespace of the containers (the sandbox's prefix).
    namespace: String,
    daemon: Option<Child>,
}

impl Containerd {
    /// Starts the daemon in `host` and imports [`IMAGE`].
    pub fn start(sandbox: &Sandbox, host: &Netns) -> Containerd {
        let dirs = CniDirs::new(sandbox, "ctrd");
        let root = dirs.root.display().to_string();
        // The opt plugin would otherwise make /opt/containerd on the machine.
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#
        );
        std::fs::write(dirs.root.join("config.toml"), config).unwrap();
        for d in ["fifo", "runc", "ctl"] {
            std::fs::create_dir_all(dirs.root.join(d)).unwrap();
        }
        let log = std::fs::File::create(dirs.root.join("containerd.log")).unwrap();
        let daemon = Command::new("nsenter")
            .arg(format!("--net={}", host.path()))
            .arg("containerd")
            .arg("--config")
            .arg(dirs.root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        live().push(Leftover::Containerd {
            root: dirs.root.clone(),
        });
        let containerd = Containerd {
            host: host.clone(),
            dirs,
            namespace: sandbox.prefix().to_owned(),
            daemon: Some(daemon),
        };
        let answers = wait_until(|| {
            containerd
                .try_ctr(&["version"])
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            answers,
            "containerd did not answer within {READY_LIMIT:?}; its log:\n{}",
            std::fs::read_to_string(containerd.dirs.root.join("containerd.log"))
                .unwrap_or_default()
        );
        let archive = images().oci.to_str().unwrap().to_owned();
        containerd.ctr_ok(&["image", "import", "--base-name", IMAGE_NAME, &archive]);
        containerd
    }

    /// The temp dir everything of this containerd lives in.
    pub fn dir(&self) -> &Path {
        &self.dirs.root
    }

    fn socket(&self) -> PathBuf {
        self.dirs.root.join("containerd.sock")
    }

    /// Makes `net` the network of `ctr run --cni` (the only conflist in its config dir;
    /// cniVersion 1.0.0: containerd 1.6's libcni is 1.1 as Podman's), with its plugins.
    pub fn add_network(&self, net: &CniNetwork) {
        for old in std::fs::read_dir(self.dirs.net_d()).unwrap().flatten() {
            std::fs::remove_file(old.path()).unwrap();
        }
        self.dirs.add_network(net, "1.0.0", "10-netplane.conflist");
    }

    /// The addresses host-local has leased on `net`.
    pub fn leases(&self, net: &CniNetwork) -> Vec<String> {
        self.dirs.leases(net)
    }

    /// `ctr ARGS` against this daemon (in the host namespace), whatever its status.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.try_ctr(args)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
    }

    /// `ctr ARGS` that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        checked(&format!("ctr {args:?}"), &self.ctr(args))
    }

    fn try_ctr(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.path()));
        self.ctr_args(&mut cmd, args);
        output_within(&mut cmd, None, COMMAND_LIMIT)
    }

    fn ctr_args(&self, cmd: &mut Command, args: &[&str]) {
        cmd.arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.namespace])
            .args(args)
            .env("CONTAINERD_SNAPSHOTTER", "native");
    }

    /// Starts `ctr run --rm --cni` of container `id` running `script` with `sh -c`, with
    /// nptest and the host's /usr mounted read-only and a control dir at `/ctl` (see
    /// [`CtrRun::release`]). ctr calls ADD once the task exists, and DEL (with an empty
    /// `CNI_NETNS`) after it exits.
    pub fn run_cni(&self, id: &str, script: &str) -> CtrRun<'_> {
        let ctl = self.dirs.root.join("ctl").join(id);
        std::fs::create_dir_all(&ctl).unwrap();
        let mounts = [
            format!(
                "type=bind,src={},dst={NPTEST},options=rbind:ro",
                nptest_bin().display()
            ),
            "type=bind,src=/usr,dst=/usr,options=rbind:ro".to_owned(),
            format!("type=bind,src={},dst=/ctl,options=rbind:rw", ctl.display()),
        ];
        let root = self.dirs.root.display();
        let mut run = vec![
            "run".to_owned(),
            "--rm".to_owned(),
            "--cni".to_owned(),
            format!("--fifo-dir={root}/fifo"),
            format!("--runc-root={root}/runc"),
            // No cgroup named after the namespace stays behind (runc names one after
            // the container and removes it).
            "--cgroup=".to_owned(),
        ];
        for m in mounts {
            run.extend(["--mount".to_owned(), m]);
        }
        run.extend([IMAGE, id, "/bin/sh", "-c", script].map(str::to_owned));
        let mut ctr = Command::new("nsenter");
        ctr.arg(format!("--net={}", self.host.path()));
        self.ctr_args(
            &mut ctr,
            &run.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let inner = shell_words(&ctr);
        let script = format!(
            "mount --bind {} /etc/cni/net.d && mount --bind {} /usr/lib/cni && exec {inner}",
            self.dirs.net_d().display(),
            self.dirs.bin().display()
        );
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("CONTAINERD_SNAPSHOTTER", "native")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctr run");
        let lines = lines_of(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        CtrRun {
            containerd: self,
            id: id.to_owned(),
            ctl,
            child: Some(child),
            lines,
            stderr: Some(stderr),
            seen: String::new(),
        }
    }

    /// The IDs of this namespace's tasks.
    fn tasks(&self) -> Vec<String> {
        self.try_ctr(&["tasks", "ls", "-q"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The image name without its tag, for `ctr image import --base-name`.
const IMAGE_NAME: &str = "localhost/npbusybox";

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.tasks() {
            let _ = self.try_ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
            let _ = self.try_ctr(&["tasks", "rm", "-f", &id]);
        }
        if let Ok(o) = self.try_ctr(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&o.stdout).lines() {
                let _ = self.try_ctr(&["containers", "rm", id]);
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            // nsenter exec'd containerd: the child is the daemon itself.
            let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        unregister(&self.dirs.root);
        containerd_kill_leftovers(&self.dirs.root);
    }
}

/// Kills what a containerd in `root` may leave running when it could not delete its tasks
/// (or was killed): each container's init (its PID namespace dies with it), from runc's
/// state under `<root>/runc/<namespace>/<id>/`, then the shims and the daemon (their
/// command lines name `root`).
fn containerd_kill_leftovers(root: &Path) {
    let states = std::fs::read_dir(root.join("runc"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten());
    let mut shim_sockets = Vec::new();
    for container in states {
        // The shim's socket, which a killed shim leaves behind: containerd 1.6 names it
        // after the daemon's address, the namespace and the container ID
        // (runtime/v2/shim/util_unix.go, SocketAddress).
        let (id, ns) = (container.file_name(), container.path());
        let ns = ns.parent().and_then(Path::file_name).unwrap_or_default();
        let key = format!(
            "{}/containerd.sock/{}/{}",
            root.display(),
            ns.to_string_lossy(),
            id.to_string_lossy()
        );
        shim_sockets.push(key);
        let state =
            std::fs::read_to_string(container.path().join("state.json")).unwrap_or_default();
        let pid = serde_json::from_str::<Value>(&state)
            .ok()
            .and_then(|v| v["init_process_pid"].as_i64());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            eprintln!("cni: killing leftover container init {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    kill_processes_naming(root);
    for key in shim_sockets {
        // (No panic here: this runs at exit too.)
        if let Ok(hash) = sha256(key.as_bytes()) {
            let _ = std::fs::remove_file(Path::new(SHIM_SOCKETS).join(hash));
        }
    }
}

/// Where containerd 1.6's shims put their sockets, whatever the daemon's state dir.
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// One `ctr run --rm --cni` under way. Drop kills its task and waits for ctr (and so for
/// its DEL).
pub struct CtrRun<'a> {
    containerd: &'a Containerd,
    id: String,
    ctl: PathBuf,
    child: Option<Child>,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// What the container printed so far.
    seen: String,
}

impl CtrRun<'_> {
    /// A script line that waits until [`CtrRun::release`].
    pub const HOLD: &'static str = "while [ ! -e /ctl/release ]; do sleep 0.05; done";

    /// The container's output up to and including the line `marker`, once it came.
    pub fn read_until(&mut self, marker: &str) -> String {
        let end = Instant::now() + READY_LIMIT;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line == marker {
                        return std::mem::take(&mut self.seen);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "ctr run {}: no line {marker:?}; so far:\n{}",
                        self.id, self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let out = self.wait_output();
                    panic!(
                        "ctr run {} ended before {marker:?}: {}\nstdout:\n{}\nstderr:\n{}",
                        self.id,
                        out.status,
                        self.seen,
                        String::from_utf8_lossy(&out.stderr)
                    )
                }
            }
        }
    }

    /// Lets a container that runs [`CtrRun::HOLD`] go on.
    pub fn release(&self) {
        std::fs::write(self.ctl.join("release"), "").unwrap();
    }

    /// Waits for ctr to end (the container exited, ctr called DEL and removed it);
    /// returns its status, the rest of the container's output and ctr's stderr.
    pub fn wait(mut self) -> Output {
        let out = self.wait_output();
        let mut rest = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv() {
            rest.push_str(&line);
            rest.push('\n');
        }
        Output {
            stdout: rest.into_bytes(),
            ..out
        }
    }

    fn wait_output(&mut self) -> Output {
        let Some(mut child) = self.child.take() else {
            return Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(0),
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
        };
        let end = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Output {
            status,
            stdout: Vec::new(),
            stderr,
        }
    }
}

impl Drop for CtrRun<'_> {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self
                .containerd
                .try_ctr(&["tasks", "kill", "-s", "SIGKILL", &self.id]);
            self.wait_output();
        }
    }
}

/// The two images, built once per process in a temp dir that goes when the process exits.
struct Images {
    dir: PathBuf,
    /// The root file system, for `podman import`.
    rootfs: PathBuf,
    /// The same as an OCI image archive, for `ctr image import`.
    oci: PathBuf,
}

static IMAGES: OnceLock<Images> = OnceLock::new();

/// A runtime alive, as the process's exit removes it if it cannot drop: the sandbox's
/// signal handler (SIGINT, SIGTERM, SIGHUP) removes the sandboxes, then calls `exit`,
/// which runs [`at_exit`].
enum Leftover {
    /// Podman's dir, and its host namespace held open (the sandbox has deleted its name
    /// by then): `podman rm -af` runs there, so that no plugin runs elsewhere.
    Podman { root: PathBuf, host: std::fs::File },
    /// containerd's dir (its daemon is the test's child: the signal handler killed it).
    Containerd { root: PathBuf },
}

static LIVE: Mutex<Vec<Leftover>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// The live runtimes, with [`at_exit`] registered.
fn live() -> MutexGuard<'static, Vec<Leftover>> {
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function with no preconditions.
        unsafe { libc::atexit(at_exit) };
    });
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forgets the runtime in `root` (it is dropping); returns what was registered.
fn unregister(root: &Path) -> Option<Leftover> {
    let mut live = live();
    let i = live.iter().position(|l| match l {
        Leftover::Podman { root: r, .. } | Leftover::Containerd { root: r } => r == root,
    })?;
    Some(live.remove(i))
}

/// `/proc/<pid>/fd/<n>` of an open file of this process: a path that `nsenter` can open.
fn fd_path(f: &std::fs::File) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd())
}

/// When the process exits: removes every runtime that did not drop, and the images.
extern "C" fn at_exit() {
    // Never waits: a thread that holds the lock while the process exits would hang it.
    let leftovers = match LIVE.try_lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(std::sync::TryLockError::Poisoned(p)) => std::mem::take(&mut *p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
    };
    for l in leftovers {
        match l {
            Leftover::Podman { root, host } => {
                podman_remove_all(&root, &fd_path(&host));
                remove_dir_unmounting(&root);
            }
            Leftover::Containerd { root } => {
                containerd_kill_leftovers(&root);
                remove_dir_unmounting(&root);
            }
        }
    }
    if let Some(images) = IMAGES.get() {
        let _ = std::fs::remove_dir_all(&images.dir);
    }
}

fn images() -> &'static Images {
    IMAGES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "{}{}-image",
            crate::sandbox::TEST_PREFIX,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        drop(live());
        let rootfs = dir.join("rootfs.tar");
        build_rootfs(&dir.join("rootfs"), &rootfs);
        let oci = dir.join("oci.tar");
        build_oci_archive(&rootfs, &dir.join("oci"), &oci);
        Images { dir, rootfs, oci }
    })
}

/// busybox's applets that the tests' scripts use.
const APPLETS: &[&str] = &[
    "sh", "ip", "ping", "sleep", "cat", "nc", "httpd", "ls", "touch", "mkdir", "ps",
];

/// `rootfs.tar` of the image (see [`IMAGE`]), staged in `stage`.
fn build_rootfs(stage: &Path, tar: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "usr", "ctl"] {
        std::fs::create_dir_all(stage.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static; `cargo xtask setup` installs it)");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", stage.join("bin").join(a)).unwrap();
    }
    // nptest is dynamically linked: its loader and libraries come with the host's /usr.
    std::os::unix::fs::symlink("usr/lib", stage.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", stage.join("lib64")).unwrap();
    std::fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(stage.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(stage.join(NPTEST.trim_start_matches('/')), "").unwrap();
    tar_dir(stage, tar);
    std::fs::remove_dir_all(stage).unwrap();
}

/// An OCI image layout archive (`oci-layout`, `index.json` naming [`IMAGE`], and the
/// uncompressed layer, the config and the manifest as blobs), staged in `stage`.
fn build_oci_archive(rootfs: &Path, stage: &Path, archive: &Path) {
    let blobs = stage.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let add_blob = |bytes: &[u8]| -> (String, usize) {
        let digest = sha256(bytes).unwrap_or_else(|e| panic!("sha256sum: {e}"));
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let (layer, layer_size) = add_blob(&std::fs::read(rootfs).unwrap());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let (config, config_size) = add_blob(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer,
            "size": layer_size,
        }],
    });
    let (manifest, manifest_size) = add_blob(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": IMAGE},
        }],
    });
    std::fs::write(stage.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        stage.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    tar_dir(stage, archive);
    std::fs::remove_dir_all(stage).unwrap();
}

fn tar_dir(dir: &Path, tar: &Path) {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .output()
        .expect("run tar");
    checked("tar", &out);
}

/// The hex SHA-256 of `bytes` (coreutils' sha256sum: the harness has no hash crate).
fn sha256(bytes: &[u8]) -> Result<String, String> {
    let out = output_within(
        Command::new("sha256sum").arg("-"),
        Some(bytes),
        COMMAND_LIMIT,
    )
    .and_then(|o| result(&o))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// Runs `cmd` (with `stdin` fed in, or none) to its end; kills it past `limit`, so that a
/// hung runtime fails its test instead of hanging CI.
pub(crate) fn output_within(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<Output, String> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs (a conf, a blob): the pipe takes them, or the child reads them.
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let end = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not end within {limit:?}"));
            }
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn collect(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// stdout of a command that must have succeeded; panics with both streams otherwise.
fn checked(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout (trimmed) when the command succeeded, stderr (trimmed) otherwise.
fn result(out: &Output) -> Result<String, String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// Polls `ready` until it holds; panics, naming `what`, after [`READY_LIMIT`].
pub fn wait_for(what: &str, ready: impl FnMut() -> bool) {
    assert!(wait_until(ready), "waited {READY_LIMIT:?} for {what}");
}

/// Polls `ready` until it holds (`true`), or [`READY_LIMIT`] passed (`false`).
fn wait_until(mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + READY_LIMIT;
    while !ready() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// `cmd`'s program and arguments as one `sh` command line, each word single-quoted.
fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes cgroup `path` (and the cgroups under it) from every cgroup v1 hierarchy and
/// the v2 one; waits a little for processes that are still leaving (a conmon ends just
/// after its container).
fn remove_cgroup(path: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let top = h.path().join(path.trim_start_matches('/'));
        if top.is_dir() {
            collect_dirs(&top, &mut dirs);
        }
    }
    // Deepest first: a cgroup goes only once it has no children.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let end = Instant::now() + Duration::from_secs(10);
        while let Err(e) = std::fs::remove_dir(&d) {
            if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > end {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("cni: cannot remove cgroup {}: {e}", d.display());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// SIGKILLs every process whose command line names something under `dir` (the daemon
/// and shims of a containerd whose files are there).
fn kill_processes_naming(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(&needle)
        {
            eprintln!("cni: killing leftover process {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
