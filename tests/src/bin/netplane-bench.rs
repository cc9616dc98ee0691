//! `netplane-bench`: eBPF mode against iptables mode, an nftables reference and a no-NAT
//! baseline, then netplane-cni against the reference CNI chain, side by side, in a sandbox
//! of its own (see `netplane_tests::bench`). Writes bench.json, bench.md and bench.svg
//! into --out. `cargo xtask bench` runs the release build of it; `--only cni` (or
//! `dataplane`) runs one section.
#![expect(
    unused_crate_dependencies,
    reason = "a binary sees every dependency of its package; the library target is where an unused one shows"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use netplane_tests::bench::{self, report};

#[derive(Parser)]
#[command(
    name = "netplane-bench",
    about = "Measure netplane's eBPF mode against iptables, nftables and no NAT, and netplane-cni \
             against the reference CNI plugins, side by side"
)]
struct Cli {
    /// About two and a half minutes: fewer rounds, shorter measurements.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// Only check that every part works (seconds; figures are meaningless).
    #[arg(long)]
    smoke: bool,
    /// Rounds (modes interleaved in a new order each round).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement.
    #[arg(long)]
    seconds: Option<f64>,
    /// Where to write the report.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Run one section only: `dataplane` (eBPF against iptables, nftables and no NAT) or
    /// `cni` (netplane-cni against the reference plugins bridge + host-local + portmap).
    #[arg(long, value_parser = ["dataplane", "cni"])]
    only: Option<String>,
    /// The eBPF variants to measure alongside the modes (E0 `from_container = false`,
    /// veth; E1 from_container, veth; E2 from_container, peer; E3 from_container,
    /// peer-all), comma-separated, or `none`. Default: all (or $NETPLANE_BENCH_VARIANTS).
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<String>>,
    /// In how many rounds (the first ones) the variants run.
    #[arg(long)]
    variant_rounds: Option<usize>,
    /// Live synthetic flows for the conntrack scale rows, comma-separated (`none`: no
    /// rows). Default: 100000,1000000 (--quick: 100000).
    #[arg(long, value_delimiter = ',')]
    ct_scale: Option<Vec<String>>,
}

fn main() -> ExitCode {
    // `up` in eBPF mode starts its agent by running its own executable (here, this one)
    // with `agent --name NAME …`; the bench measures with the agent running, as in
    // production.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((name, agent_args)) = netplane::dataplane::ebpf::agent::AgentArgs::parse(&args) {
        netplane::dataplane::ebpf::agent::run_with(&name, agent_args);
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut opts = if cli.smoke {
        bench::Options::smoke()
    } else if cli.quick {
        bench::Options::quick()
    } else {
        bench::Options::full()
    };
    opts.rounds = cli.rounds.unwrap_or(opts.rounds);
    opts.seconds = cli.seconds.unwrap_or(opts.seconds);
    let env_variants = std::env::var("NETPLANE_BENCH_VARIANTS")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    if let Some(v) = cli.variants.or(env_variants) {
        opts.variants = v
            .into_iter()
            .filter(|n| !n.is_empty() && n != "none")
            .collect();
        for n in &opts.variants {
            if bench::Variant::by_name(n).is_none() {
                anyhow::bail!("--variants: no variant {n} (E0, E1, E2, E3)");
            }
        }
    }
    opts.variant_rounds = cli.variant_rounds.unwrap_or(opts.variant_rounds);
    if let Some(v) = cli.ct_scale {
        opts.ct_scale = v
            .iter()
            .filter(|n| *n != "none")
            .map(|n| {
                n.parse()
                    .with_context(|| format!("--ct-scale: {n} is not a number"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    match cli.only.as_deref() {
        Some("dataplane") => opts.cni = None,
        Some("cni") => opts.dataplane = false,
        _ => {}
    }
    let results = bench::run(opts)?;
    let summary = report::summarize(&results);
    let out = &cli.out;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let doc = serde_json::json!({ "results": results, "summary": summary });
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&doc)?)?;
    std::fs::write(out.join("bench.md"), report::markdown(&results, &summary))?;
    let dataplane = !results.rounds.is_empty();
    if dataplane {
        std::fs::write(out.join("bench.svg"), report::svg(&results, &summary))?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        if dataplane {
            print!("{}", report::table(&results, &summary, false));
            print!("{}", report::profile(&results));
        }
        if let Some(c) = &summary.cni {
            print!("{}", bench::cni::table(c, false));
        }
        println!("report: {}", out.join("bench.md").display());
    }
    Ok(())
}
