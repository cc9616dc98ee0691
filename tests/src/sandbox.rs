//! Uniquely named network namespaces, removed when their [`Sandbox`] drops (a panic
//! included) and when the process gets SIGINT, SIGTERM or SIGHUP.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The sandboxes of this process that still exist, for the signal handler.
static LIVE: Mutex<Vec<Arc<Owned>>> = Mutex::new(Vec::new());
static SIGNAL_HANDLER: Once = Once::new();

/// The prefix of the tests' sandboxes (`cargo xtask test` looks for leftovers with it).
pub const TEST_PREFIX: &str = "npt";

/// A set of network namespaces, deleted on drop (panics included) and on SIGINT, SIGTERM
/// or SIGHUP.
///
/// Names are `<kind><pid>x<n>-<role>` (`npt…` for tests, `npbench…`, `npdemo…`), so
/// sandboxes in one process or in several never collide.
pub struct Sandbox {
    owned: Arc<Owned>,
    /// Namespaces unnamed by [`Sandbox::retire`], alive until the sandbox drops.
    retired: Vec<File>,
}

/// What a sandbox must remove, shared with the signal handler.
struct Owned {
    prefix: String,
    namespaces: Mutex<Vec<String>>,
    /// The netplane instances that may run in the sandbox, as (instance name, namespace it
    /// runs in): each removed with its `down` before the namespaces go (see
    /// [`Sandbox::runs_instance_in`]).
    instances: Mutex<Vec<(String, String)>>,
    /// Files that go with the sandbox (see [`Sandbox::owns_file`]).
    files: Mutex<Vec<PathBuf>>,
}

/// One namespace of a sandbox.
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
}

impl Sandbox {
    /// A test's sandbox: names start with [`TEST_PREFIX`].
    pub fn new() -> Self {
        Self::with_prefix(TEST_PREFIX)
    }

    /// A sandbox whose names start with `kind` (the bench's and the demo's, so that a
    /// leftover says whose it is).
    pub fn with_prefix(kind: &str) -> Self {
        SIGNAL_HANDLER.call_once(install_signal_handler);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let owned = Arc::new(Owned {
            prefix: format!("{kind}{}x{n}", std::process::id()),
            namespaces: Mutex::default(),
            instances: Mutex::default(),
            files: Mutex::default(),
        });
        lock(&LIVE).push(owned.clone());
        Self {
            owned,
            retired: Vec::new(),
        }
    }

    /// The prefix every name in this sandbox starts with.
    pub fn prefix(&self) -> &str {
        &self.owned.prefix
    }

    /// Creates the namespace `<prefix>-<role>` with `lo` up and IPv6 off, so that only the
    /// packets a test sends cross its links (no router solicitations, MLD or DAD).
    pub fn netns(&mut self, role: &str) -> Netns {
        let name = format!("{}-{role}", self.prefix());
        // Listed before it exists: a signal during the creation still removes it.
        lock(&self.owned.namespaces).push(name.clone());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        ns
    }

    /// A veth pair `a_if` (in `a`) ↔ `b_if` (in `b`), both up, with the given addresses
    /// (CIDR notation). Created inside `a`, so no name ever exists in the root namespace.
    pub fn veth(&self, a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
        a.sh(&[
            "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
        ]);
        for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            ns.sh(&["ip", "addr", "add", addr, "dev", ifname]);
            ns.sh(&["ip", "link", "set", ifname, "up"]);
        }
    }

    /// A veth pair `ifname` (in `ns`, up, with address `addr`) ↔ `port` (in `bridge_ns`,
    /// up, no address), `port` enslaved to the bridge `bridge` there: a machine's cable to
    /// an L2 segment. Created inside `ns`, so no name ever exists in the root namespace.
    pub fn bridge_port(
        &self,
        bridge_ns: &Netns,
        bridge: &str,
        port: &str,
        ns: &Netns,
        ifname: &str,
        addr: &str,
    ) {
        ns.sh(&[
            "ip",
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &bridge_ns.name,
        ]);
        ns.sh(&["ip", "addr", "add", addr, "dev", ifname]);
        ns.sh(&["ip", "link", "set", ifname, "up"]);
        bridge_ns.sh(&["ip", "link", "set", port, "master", bridge, "up"]);
    }

    /// The name of a further netplane instance of this sandbox, `<prefix>-<role>`: its
    /// container namespaces (`<instance>-<container>`) then start with the prefix too, so
    /// the sandbox's sweep finds them whatever happened.
    pub fn instance_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix())
    }

    /// Declares that the netplane instance `name` (the prefix, or an
    /// [`Sandbox::instance_name`]) may run in `ns`: every removal (drop, signal,
    /// [`Sandbox::retire`]) runs its `down` first, which also removes what `up` made outside
    /// the namespaces (routes and pins in bpffs, the agent, the state), and then its state
    /// directory if `down` could not. Declaring a name again moves it to `ns`.
    pub fn runs_instance_in(&self, name: &str, ns: &Netns) {
        assert!(
            name == self.prefix() || name.starts_with(&format!("{}-", self.prefix())),
            "instance {name} is not named after sandbox {}: the sweep would miss its namespaces",
            self.prefix()
        );
        let mut instances = lock(&self.owned.instances);
        instances.retain(|(n, _)| n != name);
        instances.push((name.to_owned(), ns.name.clone()));
    }

    /// Declares that the CNI network `net` (a conflist's `name`, which must be one of this
    /// sandbox's [`Sandbox::instance_name`]s) may have its netplane instance, `cni-<net>`,
    /// in `ns`: as for [`Sandbox::runs_instance_in`], every removal runs its `down` first.
    pub fn runs_cni_network_in(&self, net: &str, ns: &Netns) {
        assert!(
            net.starts_with(&format!("{}-", self.prefix())),
            "CNI network {net} is not named after sandbox {}: a sweep would miss it",
            self.prefix()
        );
        let name = format!("cni-{net}");
        let mut instances = lock(&self.owned.instances);
        instances.retain(|(n, _)| *n != name);
        instances.push((name, ns.name.clone()));
    }

    /// Makes `path` go with the sandbox, on drop or signal (a config file, say).
    pub fn owns_file(&self, path: PathBuf) {
        lock(&self.owned.files).push(path);
    }

    /// Runs every instance's `down` (see [`Sandbox::runs_instance_in`]), then unnames every
    /// namespace of the sandbox but keeps each alive by an open file until the sandbox
    /// drops: its names are free for new namespaces at once. The kernel tears a namespace
    /// down in a worker (cleanup_net()), which would compete for the CPUs with what runs
    /// next (the bench's measurements: thousands of rules and conntrack entries).
    pub fn retire(&mut self) {
        let Self { owned, retired } = self;
        owned.remove(|name| {
            if let Ok(f) = netplane::netns::open(name) {
                retired.push(f);
            }
        });
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.owned.remove_all();
        lock(&LIVE).retain(|o| !Arc::ptr_eq(o, &self.owned));
    }
}

impl Owned {
    /// Everything: the instances, the namespaces, the files, and netplane's state
    /// directory of each instance in case `down` could not run.
    fn remove_all(&self) {
        self.remove(|_| {});
        for f in lock(&self.files).drain(..) {
            let _ = std::fs::remove_file(f);
        }
        let mut names: Vec<String> = lock(&self.instances)
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        names.push(self.prefix.clone());
        for name in names {
            let _ = std::fs::remove_dir_all(format!("/run/netplane/{name}"));
        }
    }

    /// `down` of every instance, then every namespace of the sandbox is deleted, also
    /// any with the sandbox's prefix that something under test created (netplane names
    /// container namespaces `<instance>-<container>`, and instances are named after the
    /// sandbox's prefix). `before_delete` sees each name while it still exists.
    fn remove(&self, mut before_delete: impl FnMut(&str)) {
        // Held throughout: the signal handler and a drop never remove at the same time.
        let mut names = lock(&self.namespaces);
        for (instance, host) in lock(&self.instances).clone() {
            down_in(&instance, &host);
        }
        if let Ok(dir) = std::fs::read_dir(netplane::netns::RUN_DIR) {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}-", self.prefix)) && !names.contains(&n) {
                    names.insert(0, n);
                }
            }
        }
        // Deleting a namespace destroys the veths in it (and so their peers).
        for name in names.drain(..).rev() {
            // Listed but never made (a signal during `ip netns add`).
            if !netplane::netns::path(&name).exists() {
                continue;
            }
            if netplane::netns::exists(&name) {
                before_delete(&name);
            }
            let out = Command::new("ip").args(["netns", "del", &name]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("sandbox: could not delete netns {name}: {out:?}");
            }
        }
    }
}

/// `netplane down` of instance `name`, in namespace `host` (in-process: it needs only the
/// instance name, the state has the rest).
fn down_in(name: &str, host: &str) {
    if !netplane::netns::exists(host) {
        return;
    }
    match netplane::netns::run_in(host, || netplane::instance::down(name, None)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("sandbox: netplane down {name}: {e}"),
        Err(e) => eprintln!("sandbox: netplane down {name}: {e}"),
    }
}

/// On SIGINT, SIGTERM or SIGHUP (ctrlc's `termination` feature): ends the child processes
/// (servers, a `netplane up` under way), removes every live sandbox of the process, then
/// exits as the shell reports an interrupted command. ctrlc runs this on a thread of its
/// own, not in signal context, so it may do anything.
fn install_signal_handler() {
    let handler = || {
        eprintln!("\ninterrupted: removing the sandbox");
        kill_children();
        // Held through `exit`: a test thread that would make a new sandbox waits on it,
        // and never makes one that nobody removes.
        let live = lock(&LIVE);
        for owned in live.iter() {
            owned.remove_all();
        }
        std::process::exit(130);
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("sandbox: no cleanup on signals ({e}): sandboxes go only on drop");
    }
}

/// SIGKILLs this process's children: deleting a namespace does not end the processes in
/// it, and a `netplane up` finishing after the `down` would leave its objects behind.
fn kill_children() {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(me) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A poisoned lock (a test panicked while holding it) still guards valid data here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Netns {
    /// A namespace that something else created (a netplane container), by name.
    pub fn named(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    /// Starts a command inside the namespace with stdout piped, without waiting.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {}: {e}", self.name))
    }

    pub fn path(&self) -> String {
        netplane::netns::path(&self.name).display().to_string()
    }

    /// Runs a command inside the namespace (network namespace only, like `nsenter --net`)
    /// and returns its output, whatever its status.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {}: {e}", self.name))
    }

    /// Runs a command inside the namespace and panics with its stderr if it fails.
    pub fn sh(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "in netns {}: {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets a sysctl of this namespace (net.* sysctls are per network namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.sh(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Every link of the namespace, from `ip -o link show`: its words as printed
    /// (`index` "N:", `name` "name@peer:", `flags` "<…>") and its bridge, if any.
    pub fn links(&self) -> Vec<LinkLine> {
        self.sh(&["ip", "-o", "link", "show"])
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let master = w
                    .iter()
                    .position(|x| *x == "master")
                    .map_or("", |i| w[i + 1]);
                LinkLine {
                    index: w[0].to_owned(),
                    name: w[1].to_owned(),
                    flags: w[2].to_owned(),
                    master: master.to_owned(),
                }
            })
            .collect()
    }

    /// The MAC address of `ifname`. (Not from /sys/class/net: `nsenter --net` keeps the
    /// caller's sysfs mount, which shows the root namespace's devices.)
    pub fn mac(&self, ifname: &str) -> String {
        let out = self.sh(&["ip", "-o", "link", "show", "dev", ifname]);
        let mut words = out.split_whitespace();
        words.find(|w| *w == "link/ether");
        words
            .next()
            .unwrap_or_else(|| panic!("no MAC in {out}"))
            .to_owned()
    }

    /// Runs `f` on a thread that has joined this namespace, so that in-process netlink,
    /// socket and BPF attach calls resolve interface names here.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        netplane::netns::run_in(&self.name, f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Netns::enter`], without waiting: `f` runs on a new thread in this namespace
    /// (servers and load generators that outlive the caller's scope).
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        netplane::netns::spawn_in(&self.name, f).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One line of `ip -o link show`, as [`Netns::links`] reads it.
#[derive(Debug, Clone)]
pub struct LinkLine {
    pub index: String,
    pub name: String,
    pub flags: String,
    pub master: String,
}

impl LinkLine {
    /// The device's name alone (no `@peer`, no colon).
    pub fn ifname(&self) -> &str {
        self.name
            .split('@')
            .next()
            .unwrap_or_default()
            .trim_end_matches(':')
    }
}
