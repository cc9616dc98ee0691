use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces owned by one test, deleted on drop (panics included).
///
/// Names are `npt<pid>x<n>-<role>`, so tests running in parallel, in one process or in
/// several, never collide.
pub struct Sandbox {
    prefix: String,
    namespaces: Vec<String>,
}

/// One namespace of a sandbox.
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
}

impl Sandbox {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("npt{}x{n}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// The prefix every name in this sandbox starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates the namespace `<prefix>-<role>` with `lo` up and IPv6 off, so that only the
    /// packets a test sends cross its links (no router solicitations, MLD or DAD).
    pub fn netns(&mut self, role: &str) -> Netns {
        let name = format!("{}-{role}", self.prefix);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
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
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Also any namespace with our prefix that something under test created (netplane
        // names container namespaces <instance>-<container>, and tests use the prefix as
        // the instance name), in case the test failed before its own cleanup.
        let mut names = std::mem::take(&mut self.namespaces);
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}-", self.prefix)) && !names.contains(&n) {
                    names.insert(0, n);
                }
            }
        }
        // Deleting a namespace destroys the veths in it (and so their peers).
        for name in names.into_iter().rev() {
            let out = Command::new("ip").args(["netns", "del", &name]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("sandbox: could not delete netns {name}: {out:?}");
            }
        }
        let _ = std::fs::remove_dir_all(format!("/run/netplane/{}", self.prefix));
    }
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
        format!("/run/netns/{}", self.name)
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
        let file = File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
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
