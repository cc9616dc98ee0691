//! `netplane-cni`: the CNI plugin (see `netplane::cni`). Install it next to the
//! reference plugins (/opt/cni/bin or /usr/lib/cni) and name it in a conflist as
//! `"type": "netplane-cni"`.
//!
//! The runtime runs it with `CNI_COMMAND` and the other `CNI_*` variables set and the
//! network configuration on stdin; it prints the result (or the error) as JSON on
//! stdout. Run as `netplane-cni agent --name <instance> [--metrics ADDR] [--mode MODE]`, it is the eBPF data plane's
//! agent, which an ADD starts from this same executable.
#![expect(
    unused_crate_dependencies,
    reason = "a binary sees every dependency of its package; the library target is where an unused one shows"
)]

use std::io::Read;
use std::process::ExitCode;

use netplane::cni::{self, CniError, Env, code};

fn main() -> ExitCode {
    // Warnings on stderr, which runtimes log; `RUST_LOG` overrides. The agent that an ADD
    // starts inherits the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((name, agent_args)) = netplane::dataplane::ebpf::agent::AgentArgs::parse(&args) {
        netplane::dataplane::ebpf::agent::run_with(&name, agent_args);
        return ExitCode::SUCCESS;
    }
    let env = Env::from_process();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return reply_error(
            "1.1.0",
            &CniError::new(code::IO_FAILURE, format!("cannot read stdin: {e}")),
        );
    }
    let version = cni::conf::version_of(&stdin).unwrap_or_else(|| "1.1.0".to_owned());
    match cni::run(&env, &stdin) {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => reply_error(&version, &e),
    }
}

fn reply_error(version: &str, e: &CniError) -> ExitCode {
    println!("{}", cni::error_json(version, e));
    ExitCode::FAILURE
}
