//! Builds `netplane-ebpf` for `bpfel-unknown-none`, twice (without and with aya-log's
//! debug logs, see [`OBJECTS`]), and hands the objects to the library, which embeds them
//! (`include_bytes_aligned!`), so the `netplane` binary is self-contained.
//!
//! The recipe is ../shared/TOOLCHAIN.md's: Debian's rustc-web (which ships a prebuilt BPF
//! `core`, so no `-Z build-std`), `RUSTC_BOOTSTRAP=aya_ebpf` for aya-ebpf's one unstable
//! feature, and bpf-linker built against the same LLVM. `cargo xtask setup` installs both.
//! Set `NETPLANE_EBPF_OBJECT=/path/to/object` (and `NETPLANE_EBPF_DEBUG_OBJECT`, the one
//! built with `--features debug-log`) to embed prebuilt objects instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// The two objects: the default one, with no log code at all, and the one of
/// `netplane up --debug-datapath`, built with `--features debug-log` (aya-log). Each in
/// a target directory of its own, so that building one never invalidates the other.
const OBJECTS: [Object; 2] = [
    Object {
        file: "netplane-ebpf.o",
        stamp: "NETPLANE_EBPF_STAMP",
        prebuilt: "NETPLANE_EBPF_OBJECT",
        features: &[],
        target_dir: "target/bpf",
    },
    Object {
        file: "netplane-ebpf-debug.o",
        stamp: "NETPLANE_EBPF_DEBUG_STAMP",
        prebuilt: "NETPLANE_EBPF_DEBUG_OBJECT",
        features: &["--features", "debug-log"],
        target_dir: "target/bpf-debug",
    },
];

struct Object {
    /// Its name in OUT_DIR, which the library embeds.
    file: &'static str,
    /// The environment variable of its stamp (`object::stamp()`).
    stamp: &'static str,
    /// The environment variable that names a prebuilt object to embed instead.
    prebuilt: &'static str,
    features: &'static [&'static str],
    target_dir: &'static str,
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for dir in [
        "netplane-ebpf/src",
        "netplane-ebpf/Cargo.toml",
        "netplane-common/src",
        "Cargo.lock",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }
    // Both builds at once: each is mostly one single-threaded LLVM run (bpf-linker), so
    // together they take little more than one.
    let mut builds = Vec::new();
    for object in &OBJECTS {
        println!("cargo::rerun-if-env-changed={}", object.prebuilt);
        // A prebuilt default object without a debug one stands for both (the programs
        // then run without logs under `--debug-datapath` too).
        let prebuilt = env::var_os(object.prebuilt).or_else(|| {
            env::var_os(OBJECTS[0].prebuilt).filter(|_| object.file != OBJECTS[0].file)
        });
        match prebuilt {
            Some(prebuilt) => {
                println!("cargo::rerun-if-changed={}", Path::new(&prebuilt).display());
                install(Path::new(&prebuilt), &out_dir, object);
            }
            None => builds.push((object, build(root, object))),
        }
    }
    // Every build waited for, before a failure ends this script.
    let results: Vec<_> = builds
        .into_iter()
        .map(|(object, (mut child, built))| (object, child.wait(), built))
        .collect();
    for (object, status, built) in results {
        match status {
            Ok(s) if s.success() => install(&built, &out_dir, object),
            Ok(_) => fail(&format!(
                "building netplane-ebpf into {} failed (see the errors above)",
                object.target_dir
            )),
            Err(e) => fail(&format!("cannot run cargo: {e}")),
        }
    }
}

/// Copies `object`, built or prebuilt at `from`, where the library embeds it, without its
/// DWARF, and stamps it.
fn install(from: &Path, out_dir: &Path, object: &Object) {
    let out = out_dir.join(object.file);
    if !strip_debug(from, &out) {
        std::fs::copy(from, &out).unwrap_or_else(|e| fail(&format!("{}: {e}", from.display())));
    }
    stamp(&out, object.stamp);
}

/// llvm-objcopy of LLVM 22 (`cargo xtask setup` installs llvm-22-dev, which brings it),
/// or any on PATH.
const OBJCOPY: [&str; 3] = [
    "/usr/lib/llvm-22/bin/llvm-objcopy",
    "llvm-objcopy-22",
    "llvm-objcopy",
];

/// Writes `from` to `to` without its DWARF sections (`--strip-debug`), keeping `.BTF` and
/// `.BTF.ext`, which the kernel and aya need (the maps' types, the programs' function
/// and line info). The DWARF is ~3.4 MB of the 4.4 MB object: each `netplane` binary
/// carries the object twice, and aya parses it on every load (3.3 ms → 0.9 ms stripped).
/// False when no llvm-objcopy ran: the object is then embedded as it is.
fn strip_debug(from: &Path, to: &Path) -> bool {
    for objcopy in OBJCOPY {
        match Command::new(objcopy)
            .arg("--strip-debug")
            .arg(from)
            .arg(to)
            .status()
        {
            Ok(s) if s.success() => return true,
            Ok(_) => fail(&format!(
                "{objcopy} --strip-debug {} failed",
                from.display()
            )),
            Err(_) => continue,
        }
    }
    println!(
        "cargo::warning=no llvm-objcopy found: the eBPF object is embedded with its DWARF (run `cargo xtask setup`)"
    );
    false
}

/// Starts cargo on `object`; returns the build and where its result will be.
fn build(root: &Path, object: &Object) -> (Child, PathBuf) {
    if !Path::new(DEBIAN_RUSTC).exists() {
        fail("Debian's rustc-web (/usr/bin/rustc) is missing");
    }
    let target_dir = root.join(object.target_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("netplane-ebpf"))
        .args(["build", "--release", "--target", BPF_TARGET])
        .args(object.features)
        .arg("--target-dir")
        .arg(&target_dir)
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
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    (child, target_dir.join(BPF_TARGET).join("release/netplane"))
}

/// What identifies the object (`object::stamp()`): FNV-1a of its bytes and its length,
/// computed here once rather than by every run of netplane and netplane-cni (2 MB
/// hashed byte by byte cost each CNI ADD and DEL about 3 ms).
fn stamp(object: &Path, var: &str) {
    let bytes =
        std::fs::read(object).unwrap_or_else(|e| fail(&format!("{}: {e}", object.display())));
    let hash = bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    println!("cargo::rustc-env={var}={hash:08x}-{}", bytes.len());
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
