use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netplane",
    version,
    about = "Container networking with an eBPF data plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Count packets and bytes on an interface with the TC counter program, then print them.
    Count {
        /// The interface (in netplane's own network namespace).
        iface: String,
        /// How long to count.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Count { iface, seconds } => {
            let mut counter = netplane::ebpf::counter::PacketCounter::load()?;
            counter
                .attach(&iface)
                .with_context(|| format!("counting on {iface}"))?;
            std::thread::sleep(Duration::from_secs(seconds));
            let t = counter.read()?;
            counter.detach()?;
            println!("direction  packets  bytes");
            println!("ingress    {:>7}  {}", t.ingress.packets, t.ingress.bytes);
            println!("egress     {:>7}  {}", t.egress.packets, t.egress.bytes);
            Ok(())
        }
    }
}
