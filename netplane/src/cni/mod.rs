//! `netplane-cni`: netplane as a CNI plugin, a drop-in for the reference chain
//! bridge + host-local + portmap (CNI spec 1.1.0, and the results of 0.3.0 to 1.0.0).
//!
//! A CNI network `N` (the conflist's `name`) is the netplane instance `cni-N`, with the
//! same state (/run/netplane/cni-N/), pins, agent, `status`, `conntrack` and `down` as a
//! `netplane up` instance. An attachment is one container of its plan, the runtime's
//! namespace and interface name recorded in [`crate::config::Attachment`]: ADD plans the
//! instance again with one container more and converges it with
//! [`instance::converge`] scoped to that container, so the first ADD builds the bridge,
//! the gateway and the data plane, and the next ones add a veth and map entries (or
//! rewrite netplane's own iptables chains in one batch) without a program load. DEL and
//! GC plan it with containers fewer. Everything runs under the instance's lock: the
//! runtime's parallel ADDs and DELs serialize on it.
//!
//! - [`conf`]: the network configuration and the runtime's arguments, as the spec and
//!   the bridge plugin define them;
//! - [`ipam`]: the delegated IPAM plugin (host-local, static…), exec'd from `CNI_PATH`;
//! - [`commands`]: ADD, DEL, CHECK, GC, STATUS and VERSION;
//! - [`result`]: the result in the version the runtime asked for.

pub mod commands;
pub mod conf;
pub mod ipam;
pub mod result;

use serde::Serialize;

use crate::instance;

/// The versions this plugin speaks (its results for 0.3.x and 0.4.0 carry the
/// per-address `version` those require).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The CNI spec's well-known error codes (SPEC.md, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific codes start at 100: this one is "the host refused the change"
    /// (a netlink, BPF or iptables failure, rolled back).
    pub const HOST: u32 = 100;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit status.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }
}

impl From<instance::Error> for CniError {
    fn from(e: instance::Error) -> CniError {
        let code = match &e {
            instance::Error::Lock(_) => code::TRY_AGAIN,
            instance::Error::State(_) => code::IO_FAILURE,
            _ => code::HOST,
        };
        // The whole chain in one line: runtimes show `msg` alone.
        CniError::new(code, e.to_string().replace('\n', "; "))
    }
}

impl From<crate::config::ConfigError> for CniError {
    fn from(e: crate::config::ConfigError) -> CniError {
        CniError::new(code::INVALID_CONFIG, e.to_string())
    }
}

/// The runtime's side of an invocation: the `CNI_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    /// Empty is `None`: containerd's `ctr run --rm` sends DEL without one.
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    /// From this process's environment.
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
        v.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set; the runtime must set it"),
            )
        })
    }

    pub fn container_id(&self) -> Result<&str, CniError> {
        Self::required(&self.container_id, "CNI_CONTAINERID")
    }

    pub fn ifname(&self) -> Result<&str, CniError> {
        Self::required(&self.ifname, "CNI_IFNAME")
    }

    pub fn netns(&self) -> Result<&str, CniError> {
        Self::required(&self.netns, "CNI_NETNS")
    }
}

/// Runs one invocation: `Ok(Some(json))` is the result to print, `Ok(None)` success with
/// nothing to print (DEL, GC, STATUS).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    commands::dispatch(env, stdin)
}

/// The error as the runtime reads it: `{"cniVersion", "code", "msg", "details"}`.
pub fn error_json(version: &str, e: &CniError) -> serde_json::Value {
    let mut v = serde_json::to_value(e).expect("an error serializes");
    v["cniVersion"] = version.into();
    v
}
