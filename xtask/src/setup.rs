//! `cargo xtask setup`: automates ../shared/TOOLCHAIN.md on Debian/Ubuntu.
//!
//! The eBPF crate targets `bpfel-unknown-none`, which rustup ships no `core` for, and
//! `-Z build-std` needs `rust-src`, which may not be downloadable. Debian's `rustc-web`
//! (≥ 1.96) ships a prebuilt BPF `core` instead; bpf-linker must then be built against the
//! same LLVM major as that rustc (22). Everything is checked first and only what is
//! missing is installed, so a second run does nothing.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::util::{self, is_root, output};

/// Debian packages, and why netplane needs each.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "rustc ≥ 1.96 whose sysroot has a prebuilt core for bpfel-unknown-none",
    ),
    (
        "libstd-rust-web-dev-bpf",
        "that prebuilt core/alloc for the BPF targets",
    ),
    (
        "llvm-22-dev",
        "LLVM 22, which bpf-linker must link against (rustc-web's LLVM major)",
    ),
    (
        "libpolly-22-dev",
        "linked by bpf-linker together with LLVM 22",
    ),
    ("libzstd-dev", "linked by bpf-linker together with LLVM 22"),
    ("zlib1g-dev", "linked by bpf-linker together with LLVM 22"),
    (
        "iproute2",
        "ip and tc, used by tests to inspect what netplane built",
    ),
    (
        "iptables",
        "netplane's iptables mode and the NAT tests' baseline",
    ),
    (
        "conntrack",
        "iptables mode flushes stale UDP conntrack entries of (un)published ports",
    ),
    (
        "nftables",
        "the nftables reference mode of the benchmark (`netplane-bench`)",
    ),
    ("iputils-ping", "tests and the demo send ICMP echo"),
    (
        "ethtool",
        "tests switch TX checksum offload off to see checksums on the wire",
    ),
    ("iperf3", "a cross-check for the benchmark's throughput"),
    (
        "podman",
        "the CNI tests run real Podman containers on netplane-cni (CNI backend)",
    ),
    (
        "containernetworking-plugins",
        "host-local IPAM that netplane-cni delegates to, and the reference chain the bench compares with",
    ),
    ("containerd", "the CNI tests run `ctr run --cni` containers"),
    (
        "runc",
        "the OCI runtime of the CNI tests' Podman and containerd",
    ),
    ("conmon", "Podman's container monitor"),
    ("catatonit", "Podman's init for pods"),
    (
        "busybox-static",
        "the CNI tests build their container image offline from it",
    ),
];

/// The oldest rustc-web whose sysroot ships a BPF `core` that aya-ebpf 0.2 compiles with.
const RUSTC_WEB_MIN: (u32, u32) = (1, 96);
pub(crate) const BPF_LINKER_VERSION: &str = "0.13";
pub(crate) const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// Where setup puts `promtool`, which validates the agent's `/metrics` in the tests.
const PROMTOOL: &str = "/usr/local/bin/promtool";

pub(crate) fn install() -> anyhow::Result<()> {
    let missing_pkgs = missing_apt_packages();
    let linker_ok = bpf_linker_version().is_some();
    let promtool_ok = promtool_version().is_some();
    if missing_pkgs.is_empty() && linker_ok && promtool_ok {
        eprintln!(
            "setup: everything is installed (apt packages, bpf-linker {BPF_LINKER_VERSION}, promtool)"
        );
        return Ok(());
    }
    let debian =
        Path::new("/etc/debian_version").exists() && Path::new("/usr/bin/apt-get").exists();
    if !debian || !is_root() {
        manual_steps(&missing_pkgs, linker_ok, promtool_ok);
        if !debian {
            bail!("automatic setup supports Debian/Ubuntu (apt-get) only; follow the steps above");
        }
        bail!(
            "automatic setup needs root (apt-get install); rerun as root or follow the steps above"
        );
    }
    if !missing_pkgs.is_empty() {
        for (pkg, why) in APT_PACKAGES
            .iter()
            .filter(|(p, _)| missing_pkgs.contains(p))
        {
            eprintln!("setup: installing {pkg}: {why}");
        }
        util::run(Command::new("apt-get").arg("update").arg("-q"))?;
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing_pkgs),
        )?;
        let still = missing_apt_packages();
        if !still.is_empty() {
            bail!(
                "apt-get finished but these are still missing or too old: {}",
                still.join(", ")
            );
        }
    }
    if !linker_ok {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 \
             (it links the eBPF object; takes a few minutes)"
        );
        util::run(
            Command::new("cargo")
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .args(["install", "bpf-linker", "--locked", "--no-default-features"])
                .args(["--features", "llvm-22", "--version"])
                .arg(format!("~{BPF_LINKER_VERSION}")),
        )?;
        if bpf_linker_version().is_none() {
            bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
        }
    }
    if !promtool_ok {
        install_promtool(!missing_pkgs.is_empty())?;
    }
    eprintln!("setup: done");
    Ok(())
}

/// What is missing for building the eBPF object, as one actionable sentence, or `None`.
pub(crate) fn build_prerequisites_missing() -> Option<String> {
    let mut missing: Vec<String> = Vec::new();
    if !bpf_core_present() {
        missing.push(format!(
            "Debian's rustc-web ≥ 1.96 with a BPF core in {BPF_CORE_DIR}"
        ));
    }
    if bpf_linker_version().is_none() {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"));
    }
    (!missing.is_empty())
        .then(|| format!("missing {}: run `cargo xtask setup`", missing.join(" and ")))
}

fn missing_apt_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| match *p {
            "rustc-web" => !rustc_web_recent() || !bpf_core_present(),
            p => !dpkg_installed(p),
        })
        .collect()
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.ends_with("install ok installed"))
}

fn rustc_web_recent() -> bool {
    let Some(v) = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "rustc-web"]))
    else {
        return false;
    };
    let mut it = v
        .split(['.', '+', '-'])
        .filter_map(|n| n.parse::<u32>().ok());
    matches!((it.next(), it.next()), (Some(a), Some(b)) if (a, b) >= RUSTC_WEB_MIN)
}

fn bpf_core_present() -> bool {
    std::fs::read_dir(BPF_CORE_DIR).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    })
}

/// `bpf-linker --version`, when it runs and is the series netplane is tested with.
pub(crate) fn bpf_linker_version() -> Option<String> {
    let v = output(Command::new("bpf-linker").arg("--version"))?;
    v.split_whitespace()
        .any(|w| w.starts_with(&format!("{BPF_LINKER_VERSION}.")))
        .then(|| v.trim().to_owned())
}

/// `promtool --version`'s first line, when it runs.
fn promtool_version() -> Option<String> {
    let v = output(Command::new("promtool").arg("--version"))?;
    Some(v.lines().next().unwrap_or_default().to_owned())
}

/// Installs `promtool` alone from Debian's `prometheus` package: the package itself pulls
/// ~320 MB of JavaScript for the server's web UI and a service that its postinst may
/// start, while the tests need only this one binary (statically linked Go). So the .deb
/// is downloaded, not installed, and only `./usr/bin/promtool` is taken out of it.
/// `updated`: whether `apt-get update` ran already in this setup.
fn install_promtool(updated: bool) -> anyhow::Result<()> {
    eprintln!(
        "setup: installing promtool (from Debian's prometheus package): the tests validate /metrics with `promtool check metrics`"
    );
    if !updated {
        util::run(Command::new("apt-get").arg("update").arg("-q"))?;
    }
    let tmp = std::env::temp_dir().join(format!("netplane-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        // `apt-get download` writes into the current directory, as the unprivileged `_apt`
        // user when it can; root's temp directory is not theirs to write: download as root,
        // without the warning.
        util::run(Command::new("apt-get").current_dir(&tmp).args([
            "download",
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "prometheus",
        ]))?;
        let deb = std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| anyhow::anyhow!("apt-get download prometheus left no .deb"))?;
        let listing = output(Command::new("dpkg-deb").arg("-c").arg(&deb)).unwrap_or_default();
        if !listing.lines().any(|l| l.ends_with("./usr/bin/promtool")) {
            bail!("{} has no ./usr/bin/promtool", deb.display());
        }
        util::run(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' ./usr/bin/promtool",
            deb.display(),
            tmp.display()
        )))?;
        util::run(
            Command::new("install")
                .args(["-m", "0755"])
                .arg(tmp.join("usr/bin/promtool"))
                .arg(PROMTOOL),
        )?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    match promtool_version() {
        Some(v) => {
            eprintln!("setup: {v}");
            Ok(())
        }
        None => bail!(
            "{PROMTOOL} was installed but `promtool --version` fails; is /usr/local/bin on PATH?"
        ),
    }
}

fn manual_steps(missing_pkgs: &[&str], linker_ok: bool, promtool_ok: bool) {
    eprintln!(
        "netplane needs a few things this host does not have. As root, on Debian 12 / Ubuntu:"
    );
    if !missing_pkgs.is_empty() {
        eprintln!(
            "  apt-get update && apt-get install -y {}",
            missing_pkgs.join(" ")
        );
        eprintln!("  (rustc-web must be ≥ 1.96: on Debian 12 it comes from bookworm-security)");
    }
    if !linker_ok {
        eprintln!(
            "  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked \
             --no-default-features --features llvm-22 --version ~{BPF_LINKER_VERSION}"
        );
    }
    if !promtool_ok {
        eprintln!(
            "  cd $(mktemp -d) && apt-get download prometheus && \\\n    dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool && \\\n    install -m 0755 usr/bin/promtool {PROMTOOL}"
        );
    }
    eprintln!(
        "Elsewhere: a nightly toolchain with rust-src and bpf-linker also builds netplane-ebpf."
    );
}
