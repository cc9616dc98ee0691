//! The NAT data plane behind `up`, `down` and `status`: masquerade for container → outside
//! and DNAT for published ports, isolation between networks.
//!
//! One trait, one implementation per mode (as netavark's `FirewallDriver`): [`iptables`]
//! today; the eBPF data plane joins it. The topology (bridges, veths, namespaces) is not
//! the data plane's business: `instance` builds it first.

pub mod conntrack;
pub mod ebpf;
pub mod iptables;

use crate::config::{Mode, Plan};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{mode} mode needs `{tool}`, which is not installed (run `cargo xtask setup`, or apt-get install {package})"
    )]
    MissingTool {
        mode: Mode,
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("eBPF data plane: cannot {what}: {detail}")]
    Ebpf { what: String, detail: String },
    #[error("eBPF mode needs {what}; use mode = \"iptables\" on this host")]
    Unsupported { what: String },
}

/// What the data plane needs to know about the host beyond the plan.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// The interface towards the outside world.
    pub uplink: String,
    /// Its interface index.
    pub uplink_index: u32,
    /// Its (first) IPv4 address, which masquerade uses.
    pub uplink_addr: std::net::Ipv4Addr,
    /// Every IPv4 address of the host namespace (published ports answer on all of them).
    pub local_addrs: Vec<std::net::Ipv4Addr>,
}

/// A data plane's health, for `netplane status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataplaneStatus {
    pub mode: Mode,
    pub healthy: bool,
    pub details: Vec<String>,
}

pub trait Dataplane {
    fn mode(&self) -> Mode;

    /// Checks that this host can run the data plane. Called before anything changes.
    fn check(&self) -> Result<(), DataplaneError>;

    /// Sysctls the data plane needs (key, value), recorded and restored by `down`.
    fn sysctls(&self, plan: &Plan) -> Vec<(String, String)>;

    /// Programs `plan`, replacing what an earlier apply of `old` programmed. Returns a
    /// line per change; nothing when the host already matches.
    fn apply(
        &self,
        plan: &Plan,
        old: Option<&Plan>,
        host: &HostContext,
    ) -> Result<Vec<String>, DataplaneError>;

    /// Removes everything programmed for instance `name`, and only that. Finishes every
    /// step; returns what it removed.
    fn teardown(&self, name: &str) -> Result<Vec<String>, DataplaneError>;

    fn status(&self, plan: &Plan) -> DataplaneStatus;
}

/// The data plane of `mode`; `None` for `mode = "none"` (topology only).
pub fn for_mode(mode: Mode) -> Option<Box<dyn Dataplane>> {
    match mode {
        Mode::Iptables => Some(Box::new(iptables::Iptables)),
        Mode::Ebpf => Some(Box::new(ebpf::Ebpf)),
        Mode::None => None,
    }
}

/// Runs a command, feeding `stdin`, and returns stdout; a non-zero exit is an error that
/// carries stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, DataplaneError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DataplaneError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .map_err(|source| DataplaneError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| DataplaneError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DataplaneError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
