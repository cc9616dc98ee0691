//! The delegated IPAM plugin, run as the bridge plugin runs it (libcni's
//! `ipam.ExecAdd`/`ExecDel`): found by its `type` on `CNI_PATH`, given the same
//! environment with `CNI_COMMAND` set and the same config on stdin.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::{CniError, Env, code};

/// What netplane takes from an IPAM result: its address of each family (one or both) and
/// their gateways, and the routes and DNS to hand back to the runtime.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The IPv4 address; `None` in an IPv6-only lease.
    pub address: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 address and gateway: a dual-stack lease's (host-local with two ranges),
    /// or an IPv6-only one's.
    pub address6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub routes: Vec<serde_json::Value>,
    pub dns: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IpamResult {
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<serde_json::Value>,
    #[serde(default)]
    dns: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IpConfig {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
}

/// The plugin `ty` on `CNI_PATH`.
pub fn find(env: &Env, ty: &str) -> Result<PathBuf, CniError> {
    if ty.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("ipam.type = {ty:?}: not a plugin name"),
        ));
    }
    let path = env.path.as_deref().unwrap_or("");
    std::env::split_paths(path)
        .map(|d| d.join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("ipam.type = {ty:?}: no such plugin on CNI_PATH ({path})"),
            )
        })
}

/// Runs the IPAM plugin for `command`; its result's JSON on success. An error it reports
/// is passed on with its own code.
pub fn exec(
    env: &Env,
    ty: &str,
    command: &str,
    stdin: &[u8],
) -> Result<serde_json::Value, CniError> {
    match exec_once(env, ty, command, stdin) {
        // An IPAM plugin of the 1.0 era (host-local of the reference plugins 1.1 refuses a
        // 1.1.0 config): its ADD, DEL and CHECK did not change in 1.1, so it is asked in
        // 1.0.0, and its result read as such.
        Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
            let Ok(mut conf) = serde_json::from_slice::<serde_json::Value>(stdin) else {
                return Err(e);
            };
            if conf["cniVersion"] != "1.1.0" {
                return Err(e);
            }
            conf["cniVersion"] = "1.0.0".into();
            exec_once(env, ty, command, conf.to_string().as_bytes())
        }
        other => other,
    }
}

fn exec_once(
    env: &Env,
    ty: &str,
    command: &str,
    stdin: &[u8],
) -> Result<serde_json::Value, CniError> {
    let bin = find(env, ty)?;
    let mut cmd = Command::new(&bin);
    // The runtime's variables as `env` has them (GC names each attachment it releases).
    for (key, value) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        cmd.env(key, value.as_deref().unwrap_or(""));
    }
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Its diagnostics go where the runtime reads this plugin's.
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot run IPAM plugin {}", bin.display()),
            )
            .with_details(e.to_string())
        })?;
    // A plugin that exits without reading its stdin makes this write fail: its exit
    // status and output say why.
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(code::IO_FAILURE, format!("IPAM plugin {ty}")).with_details(e.to_string())
    })?;
    let value: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let reported = value.as_ref().and_then(|v| {
            Some(CniError {
                code: u32::try_from(v.get("code")?.as_u64()?).ok()?,
                msg: format!("IPAM plugin {ty} {command}: {}", v.get("msg")?.as_str()?),
                details: v.get("details").and_then(|d| d.as_str()).map(str::to_owned),
            })
        });
        return Err(reported.unwrap_or_else(|| {
            CniError::new(
                code::IO_FAILURE,
                format!("IPAM plugin {ty} {command} failed ({})", out.status),
            )
            .with_details("its stderr is above")
        }));
    }
    Ok(value.unwrap_or(serde_json::Value::Null))
}

/// Whether the IPAM plugin speaks CNI 1.1 (its VERSION lists 1.1.0), and so knows GC
/// and STATUS. host-local of the reference plugins 1.1 does not: asked for either, it
/// fails.
pub fn speaks_1_1(env: &Env, ty: &str) -> bool {
    exec_once(env, ty, "VERSION", br#"{"cniVersion":"1.1.0"}"#).is_ok_and(|v| {
        v["supportedVersions"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|x| x == "1.1.0"))
    })
}

/// The lease in an IPAM ADD result: at most one address of each family, at least one.
pub fn lease(result: &serde_json::Value, ty: &str) -> Result<Lease, CniError> {
    let r: IpamResult = serde_json::from_value(result.clone()).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("IPAM plugin {ty} returned a result netplane cannot read"),
        )
        .with_details(e.to_string())
    })?;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in &r.ips {
        if let Ok(a) = ip.address.parse::<Ipv4Net>() {
            v4.push((a, ip.gateway.as_deref().and_then(|g| g.parse().ok())));
        } else if let Ok(a) = ip.address.parse::<Ipv6Net>() {
            v6.push((a, ip.gateway.as_deref().and_then(|g| g.parse().ok())));
        } else {
            return Err(CniError::new(
                code::DECODE,
                format!("IPAM plugin {ty} returned address {:?}", ip.address),
            ));
        }
    }
    // At most one address per family: the plan has one per container.
    for (n, family) in [(v4.len(), "IPv4"), (v6.len(), "IPv6")] {
        if n > 1 {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "ipam: IPAM plugin {ty} gave {n} {family} addresses; netplane-cni takes one"
                ),
            ));
        }
    }
    let (address, gateway) = v4.first().map_or((None, None), |&(a, g)| (Some(a), g));
    let (address6, gateway6) = v6.first().map_or((None, None), |&(a, g)| (Some(a), g));
    if address.is_none() && address6.is_none() {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!(
                "ipam: IPAM plugin {ty} gave no address; netplane-cni needs an IPv4 or an \
                 IPv6 address, or one of each"
            ),
        ));
    }
    Ok(Lease {
        address,
        gateway,
        address6,
        gateway6,
        routes: r.routes,
        dns: r.dns,
    })
}
