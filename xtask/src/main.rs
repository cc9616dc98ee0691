//! `cargo xtask`: everything that is more than one cargo command.
//!
//! - `setup`: installs what a fresh Debian/Ubuntu host lacks (see `setup.rs`).
//! - `build`: the eBPF object, then the userspace binary that embeds it.
//! - `test`:  setup, build, then unit, in-kernel and end-to-end tests.
//! - `demo`:  the README's first command: build, then run `netplane-demo`.
//! - `bench`: release build, then run `netplane-bench`.
//!
//! The demo and the bench live in the test harness (`tests/src/bin/`), next to the sandbox
//! they share with the tests. xtask builds and runs them with cargo instead of depending on
//! them: `setup` must run before netplane's build script can.

mod build;
mod setup;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netplane build automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and test tools that are missing (idempotent).
    Setup,
    /// Build the eBPF object and the netplane binary that embeds it.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build, then every test: unit, in-kernel and end-to-end.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then show netplane working inside a throwaway sandbox (`netplane-demo`).
    Demo,
    /// Build in release mode and run `netplane-bench`, writing its report to docs/bench/
    /// (with --quick, to target/bench-quick/).
    Bench {
        /// About two and a half minutes instead of the full run.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::install(),
        Cmd::Build { release } => build::build(release),
        Cmd::Test { args } => build::test(&args),
        Cmd::Demo => build::demo(),
        Cmd::Bench { quick } => build::bench(quick),
    }
}
