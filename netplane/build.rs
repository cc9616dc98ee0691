//! Builds `netplane-ebpf` for `bpfel-unknown-none` and hands the object to the library,
//! which embeds it (`include_bytes_aligned!`), so the `netplane` binary is self-contained.
//!
//! The recipe is ../shared/TOOLCHAIN.md's: Debian's rustc-web (which ships a prebuilt BPF
//! `core`, so no `-Z build-std`), `RUSTC_BOOTSTRAP=aya_ebpf` for aya-ebpf's one unstable
//! feature, and bpf-linker built against the same LLVM. `cargo xtask setup` installs both.
//! Set `NETPLANE_EBPF_OBJECT=/path/to/object` to embed a prebuilt object instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("netplane-ebpf.o");

    println!("cargo::rerun-if-env-changed=NETPLANE_EBPF_OBJECT");
    if let Some(prebuilt) = env::var_os("NETPLANE_EBPF_OBJECT") {
        println!("cargo::rerun-if-changed={}", Path::new(&prebuilt).display());
        std::fs::copy(&prebuilt, &out).expect("copy NETPLANE_EBPF_OBJECT");
        stamp(&out);
        return;
    }
    for dir in [
        "netplane-ebpf/src",
        "netplane-ebpf/Cargo.toml",
        "netplane-common/src",
        "Cargo.lock",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }

    if !Path::new(DEBIAN_RUSTC).exists() {
        fail("Debian's rustc-web (/usr/bin/rustc) is missing");
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("netplane-ebpf"))
        .args(["build", "--release", "--target", BPF_TARGET, "--target-dir"])
        .arg(root.join("target/bpf"))
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf uses #![feature(asm_experimental_arch)] on BPF; allow it for that crate
        // alone (RUSTC_BOOTSTRAP=1 would make tools assume nightly and add -Z build-std).
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
                // bpf-linker asks LLVM to expand memcpy "in order" by default, and LLVM 22's
                // expansion has no case for copies aligned to 16 bytes (which it infers
                // for the IPv6 programs' 16-byte locals): it crashes (SIGSEGV in the
                // post-RA pseudo expansion). LLVM's own expansion handles them.
                "-Clink-arg=--disable-expand-memcpy-in-order",
            ]
            .join("\x1f"),
        )
        .env("PATH", path_with_cargo_bin());
    // The outer cargo's settings (clippy's wrapper, rustflags, target dir) must not leak
    // into the BPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail("building netplane-ebpf failed (see the errors above)");
    }
    let obj = root
        .join("target/bpf")
        .join(BPF_TARGET)
        .join("release/netplane");
    std::fs::copy(&obj, &out).unwrap_or_else(|e| fail(&format!("{}: {e}", obj.display())));
    stamp(&out);
}

/// What identifies the object (`object::stamp()`): FNV-1a of its bytes and its length,
/// computed here once rather than by every run of netplane and netplane-cni (2 MB
/// hashed byte by byte cost each CNI ADD and DEL about 3 ms).
fn stamp(object: &Path) {
    let bytes =
        std::fs::read(object).unwrap_or_else(|e| fail(&format!("{}: {e}", object.display())));
    let hash = bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    println!(
        "cargo::rustc-env=NETPLANE_EBPF_STAMP={hash:08x}-{}",
        bytes.len()
    );
}

/// bpf-linker is installed by `cargo install`, into $CARGO_HOME/bin, which a CI shell may
/// not have on PATH.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut paths: Vec<PathBuf> = home.into_iter().map(|h| h.join("bin")).collect();
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).expect("PATH entries are valid")
}

fn fail(msg: &str) -> ! {
    eprintln!(
        "error: cannot build the eBPF object: {msg}.\nRun `cargo xtask setup` first (see README.md)."
    );
    std::process::exit(1);
}
