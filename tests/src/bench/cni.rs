//! The bench's CNI section: netplane-cni (eBPF mode, host-local IPAM) against the
//! reference chain it replaces, bridge + host-local + portmap from /usr/lib/cni, side by
//! side in one run.
//!
//! Each plugin has a sandboxed host of its own ([`Host`]: its "host" namespace, where the
//! plugin runs and where the reference chain's iptables rules go, and its "outside"
//! namespace), so that neither sees the other's veths or rules; the two are driven
//! alternately (one sample of one, then of the other, the order swapped every sample), so
//! both see the same minutes of the same machine. Every container is a fresh namespace
//! of the sandbox with one port mapping (a host port of its own, to port 80).
//!
//! - ADD and DEL, driven as libcni drives a conflist (what Podman and containerd do): each
//!   plugin of the list in turn with the list's `name` and `cniVersion`, the runtime's
//!   `portMappings` for the plugins whose capabilities ask for them; the bridge's result
//!   as the `prevResult` of portmap's ADD; DEL in reverse order, each plugin with the
//!   ADD's final result as `prevResult`. A chain's time is the sum of its plugins' (each
//!   from spawn to exit, as the runtime waits for it). Measured with one container
//!   attached (the one measured), then with `attached` (`attached - 1` attached first).
//!   The first ADD of each network, which creates the bridge (and for netplane-cni loads
//!   and attaches the eBPF programs and starts the agent), is reported on its own.
//! - `podman run -d -p PORT:80` until the published port answers from the outside
//!   namespace (Podman 4 with its CNI backend, private to the sandbox: see
//!   [`crate::cni::Podman`]), in new hosts.
//!
//! netplane-cni is the one next to the bench's executable (target/release with `cargo
//! xtask bench`, target/debug in the smoke test). Host-local's leases go to a temp dir
//! (`ipam.dataDir`); everything else lives in the sandbox's namespaces and goes with
//! them, the netplane instance's `down` first (the sandbox runs it, on drop and on
//! SIGINT/SIGTERM/SIGHUP).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::PREFIX;
use crate::Netns;
use crate::cni::{CniNetwork, Plugin, Podman, REFERENCE_PLUGINS};
use crate::host::{Host, UPLINK_IP, target_bin};

/// What the runtimes on these machines speak (Podman 4.3's libcni, the reference
/// plugins 1.1.1).
const CNI_VERSION: &str = "1.0.0";
const CONTAINER_PORT: u16 = 80;
/// Container `k` of a network publishes host port FIRST_HOST_PORT + k.
const FIRST_HOST_PORT: u16 = 20_000;
/// How long one plugin run may take before the bench fails instead of hanging.
const PLUGIN_LIMIT: Duration = Duration::from_secs(120);
/// How long a `podman run` may take to answer on its published port.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);
/// What a Podman container runs: the harness's TCP server on port 80, which answers a
/// line with `<line> from <peer>`.
const SERVER: &str = "exec /nptest serve-tcp 0.0.0.0:80 1000000";
/// The reference chain, as CniNetwork's conflist names it.
const REFERENCE_CHAIN: [&str; 3] = ["bridge", "host-local", "portmap"];

#[derive(Debug, Clone, Serialize)]
pub struct CniOptions {
    /// Containers attached when the "many" figures are taken, the measured one included.
    pub attached: u32,
    /// ADD/DEL samples per plugin, with 1 and with `attached` containers.
    pub samples: u32,
    /// `podman run` samples per plugin (0: none).
    pub podman_samples: u32,
}

impl CniOptions {
    pub fn full() -> CniOptions {
        CniOptions {
            attached: 200,
            samples: 20,
            podman_samples: 5,
        }
    }
    pub fn quick() -> CniOptions {
        CniOptions {
            attached: 200,
            samples: 10,
            podman_samples: 3,
        }
    }
    pub fn smoke() -> CniOptions {
        CniOptions {
            attached: 3,
            samples: 2,
            podman_samples: 1,
        }
    }
}

/// One plugin's times (ms), every sample kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PluginTimes {
    /// The first ADD of the network.
    pub first_add_ms: f64,
    /// ADD and DEL with one container attached (the one measured).
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    /// ADD (to `attached`) and DEL (back to `attached - 1`).
    pub add_many_ms: Vec<f64>,
    pub del_many_ms: Vec<f64>,
    /// The ADDs that attached the `attached - 1` others, in order (the growth curve).
    pub fill_add_ms: Vec<f64>,
    /// `podman run -d` until the port answers: the first container of the network, then
    /// the samples (each removed before the next).
    pub podman_first_ms: Option<f64>,
    pub podman_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CniResults {
    pub options: CniOptions,
    /// The netplane-cni binary measured.
    pub netplane_cni: String,
    pub netplane: PluginTimes,
    pub reference: PluginTimes,
    /// Why the Podman measurement did not run, if it did not.
    pub podman_skipped: Option<String>,
}

/// One plugin's side: its host, its network and what it has attached.
struct Side {
    label: &'static str,
    /// The leases' dir; removed on drop.
    data_dir: PathBuf,
    net: CniNetwork,
    netplane_cni: PathBuf,
    /// Containers made so far: container `k`'s namespace, ID and host port derive from k.
    made: u32,
    times: PluginTimes,
    /// Last: the namespaces (and the instance's `down`) go after the rest.
    host: Host,
}

/// A container attached by [`Side::add`], as the runtime keeps it for DEL.
struct Attached {
    id: String,
    netns: String,
    port: u16,
    result: Value,
}

impl Side {
    fn new(plugin: Plugin, netplane_cni: &Path) -> Side {
        let host = Host::with_prefix(PREFIX);
        let net = CniNetwork::new(&host.sandbox, &host.host, "cni", 1, "ebpf").with_plugin(plugin);
        let data_dir = std::env::temp_dir().join(format!("{}-ipam", net.name));
        let _ = std::fs::remove_dir_all(&data_dir);
        Side {
            label: label(plugin),
            data_dir,
            net,
            netplane_cni: netplane_cni.to_owned(),
            made: 0,
            times: PluginTimes::default(),
            host,
        }
    }

    /// Each plugin of the conflist with what libcni adds to its entry for a container
    /// publishing `port`, and the binary to run.
    fn confs(&self, port: u16) -> Vec<(PathBuf, Value)> {
        let list = self.net.conflist(CNI_VERSION, &self.data_dir);
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        plugins
            .into_iter()
            .map(|mut conf| {
                conf["name"] = list["name"].clone();
                conf["cniVersion"] = CNI_VERSION.into();
                if conf["capabilities"]["portMappings"] == json!(true) {
                    conf["runtimeConfig"] = json!({"portMappings": [{
                        "hostPort": port,
                        "containerPort": CONTAINER_PORT,
                        "protocol": "tcp",
                    }]});
                }
                let bin = match conf["type"].as_str().unwrap_or_default() {
                    "netplane-cni" => self.netplane_cni.clone(),
                    other => Path::new(REFERENCE_PLUGINS).join(other),
                };
                (bin, conf)
            })
            .collect()
    }

    /// A new container (namespace, ID, host port) attached by the chain; the chain's time.
    fn add(&mut self) -> anyhow::Result<(Attached, Duration)> {
        let k = self.made;
        self.made += 1;
        let ns = self.host.sandbox.netns(&format!("c{k}"));
        let port = FIRST_HOST_PORT + u16::try_from(k).context("too many containers")?;
        let id = container_id(self.label, k);
        let mut prev: Option<Value> = None;
        let mut total = Duration::ZERO;
        for (bin, mut conf) in self.confs(port) {
            if let Some(p) = prev.take() {
                conf["prevResult"] = p;
            }
            let (result, t) = invoke(&self.host.host, &bin, "ADD", &id, &ns.path(), &conf)?;
            total += t;
            prev = Some(result);
        }
        let result = prev.context("a conflist without plugins")?;
        if result["ips"].as_array().is_none_or(|ips| ips.is_empty()) {
            bail!(
                "{} ADD of container {k}: a result without an address: {result}",
                self.label
            );
        }
        let c = Attached {
            id,
            netns: ns.path(),
            port,
            result,
        };
        Ok((c, total))
    }

    /// DEL of `c` by the chain, in reverse order; the chain's time.
    fn del(&self, c: &Attached) -> anyhow::Result<Duration> {
        let mut total = Duration::ZERO;
        for (bin, mut conf) in self.confs(c.port).into_iter().rev() {
            conf["prevResult"] = c.result.clone();
            let (_, t) = invoke(&self.host.host, &bin, "DEL", &c.id, &c.netns, &conf)?;
            total += t;
        }
        Ok(total)
    }

    /// ADD then DEL of a new container; both times.
    fn add_del(&mut self) -> anyhow::Result<(f64, f64)> {
        let (c, add) = self.add()?;
        let del = self.del(&c)?;
        Ok((ms(add), ms(del)))
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn label(plugin: Plugin) -> &'static str {
    match plugin {
        Plugin::Netplane => "netplane",
        Plugin::Reference => "reference",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A runtime-like container ID (64 hex digits), distinct per plugin and container.
fn container_id(label: &str, k: u32) -> String {
    let mut x = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ u64::from(k);
    (0..4)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

/// Runs `bin` with `CNI_COMMAND=command` in namespace `host`, as a runtime does: the
/// `CNI_*` environment, the configuration on stdin. Returns its result (null for an
/// empty stdout) and how long it took from spawn to exit; a failure is an error.
fn invoke(
    host: &Netns,
    bin: &Path,
    command: &str,
    id: &str,
    netns: &str,
    conf: &Value,
) -> anyhow::Result<(Value, Duration)> {
    let input = conf.to_string();
    let what = format!(
        "{} {command} of {id:.12}",
        bin.file_name().unwrap_or_default().to_string_lossy()
    );
    // A thread in `host` spawns the plugin, which starts there (no nsenter in between).
    let (out, took) = host.enter(|| -> anyhow::Result<_> {
        let t = Instant::now();
        let mut child = Command::new(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REFERENCE_PLUGINS)
            .env("CNI_ARGS", "IgnoreUnknown=1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        // A configuration fits in the pipe: this does not wait for the plugin.
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .with_context(|| format!("{what}: write its configuration"))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (done, watch) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(PLUGIN_LIMIT) == Err(RecvTimeoutError::Timeout) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
        let out = child.wait_with_output();
        let took = t.elapsed();
        drop(done);
        let _ = watchdog.join();
        Ok((out.with_context(|| format!("{what}: wait for it"))?, took))
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let result = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).with_context(|| format!("{what}: not JSON: {stdout}"))?
    };
    Ok((result, took))
}

fn progress(what: &str) {
    eprintln!("[cni] {what}");
}

/// Sample `i`'s order of the two sides: alternately netplane first and reference first.
fn order(i: u32) -> [usize; 2] {
    if i.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

/// The CNI section, on new sandboxed hosts that go when it returns (or fails).
pub fn run(opts: &CniOptions) -> anyhow::Result<CniResults> {
    let netplane_cni = target_bin("netplane-cni");
    if !netplane_cni.exists() {
        bail!(
            "{} is missing: build it with the bench (`cargo build -p netplane`, with --release \
             for a release bench)",
            netplane_cni.display()
        );
    }
    for p in REFERENCE_CHAIN {
        let bin = Path::new(REFERENCE_PLUGINS).join(p);
        if !bin.exists() {
            bail!(
                "{} is missing: the reference chain comes with containernetworking-plugins \
                 (`cargo xtask setup`)",
                bin.display()
            );
        }
    }
    if opts.attached == 0 || opts.attached > 250 {
        bail!(
            "attached = {}: between 1 and 250 (a /24 of host-local)",
            opts.attached
        );
    }
    let mut sides = [
        Side::new(Plugin::Netplane, &netplane_cni),
        Side::new(Plugin::Reference, &netplane_cni),
    ];
    // Every binary read once, so that neither first ADD pays for the disk.
    for side in &sides {
        for (bin, conf) in side.confs(FIRST_HOST_PORT) {
            invoke(&side.host.host, &bin, "VERSION", "", "", &conf)?;
        }
    }
    for side in &mut sides {
        progress(&format!("{}: first ADD of the network", side.label));
        let (c, t) = side.add()?;
        side.times.first_add_ms = ms(t);
        side.del(&c)?;
    }
    progress(&format!(
        "ADD and DEL with 1 container attached, {} samples each",
        opts.samples
    ));
    for i in 0..opts.samples {
        for s in order(i) {
            let (add, del) = sides[s].add_del()?;
            sides[s].times.add_ms.push(add);
            sides[s].times.del_ms.push(del);
        }
    }
    progress(&format!("attaching {} containers", opts.attached - 1));
    let mut kept = Vec::new();
    for i in 0..opts.attached - 1 {
        for s in order(i) {
            let (c, t) = sides[s].add()?;
            sides[s].times.fill_add_ms.push(ms(t));
            kept.push(c);
        }
    }
    progress(&format!(
        "ADD and DEL with {} containers attached, {} samples each",
        opts.attached, opts.samples
    ));
    for i in 0..opts.samples {
        for s in order(i) {
            let (add, del) = sides[s].add_del()?;
            sides[s].times.add_many_ms.push(add);
            sides[s].times.del_many_ms.push(del);
        }
    }
    // The hosts stay until the end: tearing 400 namespaces down now would burden the
    // Podman measurement (the kernel does it in a worker).
    let [mut netplane, mut reference] = [0, 1].map(|s| std::mem::take(&mut sides[s].times));
    let podman_skipped = podman_available().err();
    match &podman_skipped {
        Some(why) => eprintln!("[cni] podman: skipped ({why})"),
        None => {
            let [(np_first, np), (ref_first, rf)] = podman(opts.podman_samples)?;
            (netplane.podman_first_ms, netplane.podman_ms) = (Some(np_first), np);
            (reference.podman_first_ms, reference.podman_ms) = (Some(ref_first), rf);
        }
    }
    drop(kept);
    drop(sides);
    Ok(CniResults {
        options: opts.clone(),
        netplane_cni: netplane_cni.display().to_string(),
        netplane,
        reference,
        podman_skipped,
    })
}

fn podman_available() -> Result<(), String> {
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "podman --version: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("podman: {e} (`cargo xtask setup` installs it)")),
    }
}

/// A private Podman on a new host, with one network of `plugin`.
struct PodmanSide {
    label: &'static str,
    /// Before the host: its drop removes the containers (DEL) while the host exists.
    podman: Podman,
    net: CniNetwork,
    host: Host,
}

impl PodmanSide {
    fn new(plugin: Plugin) -> PodmanSide {
        let host = Host::with_prefix(PREFIX);
        let net = CniNetwork::new(&host.sandbox, &host.host, "pod", 2, "ebpf").with_plugin(plugin);
        let podman = Podman::new(&host.sandbox, &host.host);
        podman.add_network(&net);
        PodmanSide {
            label: label(plugin),
            podman,
            net,
            host,
        }
    }

    /// `podman run -d -p PORT:80` of container `k` until its port answers from outside;
    /// then the container goes.
    fn run(&self, k: u16) -> anyhow::Result<f64> {
        let port = FIRST_HOST_PORT + k;
        let name = format!("p{k}");
        let target = SocketAddr::new(UPLINK_IP.parse().expect("an address"), port);
        let publish = format!("{port}:{CONTAINER_PORT}");
        let t0 = Instant::now();
        let answered = self
            .host
            .outside
            .spawn_thread(move || first_answer(target, t0));
        self.podman.run(&name, &self.net, &[&publish], SERVER);
        let took = answered.join().expect("the prober thread");
        self.podman.rm(&name);
        match took {
            Some(t) => Ok(ms(t)),
            None => bail!(
                "{}: podman container {name}: port {port} did not answer within {ANSWER_LIMIT:?}",
                self.label
            ),
        }
    }
}

/// Connects to `target` from the calling thread's namespace until a request gets the
/// container's answer; how long after `t0` that was.
fn first_answer(target: SocketAddr, t0: Instant) -> Option<Duration> {
    while t0.elapsed() < ANSWER_LIMIT {
        if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut line = String::new();
            if writeln!(s, "probe").is_ok()
                && BufReader::new(&s).read_line(&mut line).is_ok()
                && line.starts_with("probe")
            {
                return Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Per plugin, the first container's time and the samples', alternating the plugins.
fn podman(samples: u32) -> anyhow::Result<[(f64, Vec<f64>); 2]> {
    progress("podman: two private Podmans (image import)");
    let sides = [
        PodmanSide::new(Plugin::Netplane),
        PodmanSide::new(Plugin::Reference),
    ];
    let mut out = [(0.0, Vec::new()), (0.0, Vec::new())];
    for (s, side) in sides.iter().enumerate() {
        progress(&format!(
            "podman: {}: the first container of the network",
            side.label
        ));
        out[s].0 = side.run(0)?;
    }
    progress(&format!(
        "podman run -d until the published port answers, {samples} samples each"
    ));
    for i in 0..samples {
        for s in order(i) {
            let t = sides[s].run(1 + u16::try_from(i).context("too many samples")?)?;
            out[s].1.push(t);
        }
    }
    Ok(out)
}

// ---- Summary and report ----

/// Median (the mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// Nearest rank for p ≠ 50; the usual median for p = 50.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    if p == 50.0 && v.len().is_multiple_of(2) {
        let mid = v.len() / 2;
        return Some((v[mid - 1] + v[mid]) / 2.0);
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[derive(Debug, Clone, Serialize)]
pub struct CniRow {
    pub metric: String,
    pub label: String,
    pub netplane_ms: Option<f64>,
    pub reference_ms: Option<f64>,
    /// netplane over reference, from this run.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CniSummary {
    pub attached: u32,
    pub samples: u32,
    pub podman_samples: u32,
    pub rows: Vec<CniRow>,
    /// Per plugin: the median with `attached` containers over the median with 1, for
    /// ADD and for DEL.
    pub growth: BTreeMap<String, Growth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub add: Option<f64>,
    pub del: Option<f64>,
}

pub fn summarize(r: &CniResults) -> CniSummary {
    let n = r.options.attached;
    let mut rows = Vec::new();
    let mut row = |metric: &str, label: String, get: &dyn Fn(&PluginTimes) -> Option<f64>| {
        let (np, rf) = (get(&r.netplane), get(&r.reference));
        rows.push(CniRow {
            metric: metric.to_owned(),
            label,
            netplane_ms: np,
            reference_ms: rf,
            ratio: np.zip(rf).map(|(a, b)| a / b),
        });
    };
    row(
        "first_add",
        "first ADD of a network (bridge, programs, agent)".into(),
        &|t| Some(t.first_add_ms),
    );
    type Samples = fn(&PluginTimes) -> &Vec<f64>;
    let sets: [(&str, String, Samples); 4] = [
        ("add_1", "ADD, 1 attached".into(), |t| &t.add_ms),
        ("del_1", "DEL, 1 attached".into(), |t| &t.del_ms),
        ("add_n", format!("ADD, {n} attached"), |t| &t.add_many_ms),
        ("del_n", format!("DEL, {n} attached"), |t| &t.del_many_ms),
    ];
    for (key, label, samples) in sets {
        row(&format!("{key}_p50"), format!("{label}, median"), &|t| {
            median(samples(t))
        });
        row(&format!("{key}_p90"), format!("{label}, p90"), &|t| {
            percentile(samples(t), 90.0)
        });
    }
    if r.podman_skipped.is_none() {
        row(
            "podman_run_p50",
            "podman run -d until the port answers, median".into(),
            &|t| median(&t.podman_ms),
        );
        row(
            "podman_run_first",
            "podman run -d, first container of the network".into(),
            &|t| t.podman_first_ms,
        );
    }
    let growth = [("netplane", &r.netplane), ("reference", &r.reference)]
        .into_iter()
        .map(|(label, t)| {
            let over = |many: &[f64], one: &[f64]| Some(median(many)? / median(one)?);
            (
                label.to_owned(),
                Growth {
                    add: over(&t.add_many_ms, &t.add_ms),
                    del: over(&t.del_many_ms, &t.del_ms),
                },
            )
        })
        .collect();
    CniSummary {
        attached: n,
        samples: r.options.samples,
        podman_samples: r.options.podman_samples,
        rows,
        growth,
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

/// The CNI table: a terminal table, or Markdown.
pub fn table(s: &CniSummary, markdown: bool) -> String {
    let mut out = String::new();
    let intro = format!(
        "netplane-cni (eBPF mode, host-local IPAM) against bridge + host-local + portmap, \
         driven as libcni drives a conflist, each container in a new namespace with one port \
         mapping; {} ADD/DEL samples per plugin and figure, {} `podman run`s per plugin after \
         the network's first, the plugins alternated. Ratios are netplane-cni over the \
         reference chain in this run (below 1: netplane-cni is faster); ms alongside.",
        s.samples, s.podman_samples
    );
    let header = [
        "metric",
        "netplane-cni ms",
        "reference ms",
        "netplane/reference",
    ];
    if markdown {
        writeln!(out, "{intro}\n").unwrap();
        writeln!(out, "| {} |", header.join(" | ")).unwrap();
        writeln!(out, "|---|---|---|---|").unwrap();
    } else {
        writeln!(out, "CNI: {intro}").unwrap();
        writeln!(
            out,
            "{:<50} {:>16} {:>13} {:>19}",
            header[0], header[1], header[2], header[3]
        )
        .unwrap();
    }
    for r in &s.rows {
        let cells = [
            r.label.clone(),
            fmt(r.netplane_ms, 1),
            fmt(r.reference_ms, 1),
            fmt(r.ratio, 2),
        ];
        if markdown {
            writeln!(out, "| {} |", cells.join(" | ")).unwrap();
        } else {
            writeln!(
                out,
                "{:<50} {:>16} {:>13} {:>19}",
                cells[0], cells[1], cells[2], cells[3]
            )
            .unwrap();
        }
    }
    if markdown {
        out.push('\n');
    }
    let growth: Vec<String> = s
        .growth
        .iter()
        .map(|(plugin, g)| format!("{plugin} ADD {}×, DEL {}×", fmt(g.add, 2), fmt(g.del, 2)))
        .collect();
    writeln!(
        out,
        "with {} attached over with 1 (medians): {}{}",
        s.attached,
        growth.join("; "),
        if markdown { "  " } else { "" }
    )
    .unwrap();
    out
}
