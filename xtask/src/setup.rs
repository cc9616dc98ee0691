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

pub(crate) fn install() -> anyhow::Result<()> {
    let missing_pkgs = missing_apt_packages();
    let linker_ok = bpf_linker_version().is_some();
    if missing_pkgs.is_empty() && linker_ok {
        eprintln!("setup: everything is installed (apt packages, bpf-linker {BPF_LINKER_VERSION})");
        return Ok(());
    }
    let debian =
        Path::new("/etc/debian_version").exists() && Path::new("/usr/bin/apt-get").exists();
    if !debian || !is_root() {
        manual_steps(&missing_pkgs, linker_ok);
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

fn manual_steps(missing_pkgs: &[&str], linker_ok: bool) {
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
    eprintln!(
        "Elsewhere: a nightly toolchain with rust-src and bpf-linker also builds netplane-ebpf."
    );
}
