//! netplane-cni driven directly through the CNI protocol, as a runtime drives it: the
//! `CNI_*` environment and the network configuration on stdin, in a test host's
//! namespace. For the cases real runtimes cannot be made to produce on demand (a DEL with
//! the namespace gone, a broken route for CHECK, eight ADDs at once, GC and STATUS).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::cni::{
    CniNetwork, REFERENCE_PLUGINS, host_local_leases, netplane_cni_bin, output_within,
};

/// How long one plugin invocation may take (a first ADD loads the programs: about a
/// second in a debug build).
const PLUGIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
use crate::sandbox::{Netns, Sandbox};

/// A CNI network and the leases of its host-local IPAM, in a temp dir of its own.
pub struct Direct {
    pub net: CniNetwork,
    data_dir: PathBuf,
}

/// What the plugin answered: its exit status and its JSON (a result or an error).
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl Reply {
    /// The error's code; panics on a success.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.json);
        self.json["code"].as_u64().expect("an error has a code")
    }

    /// The result; panics on an error.
    pub fn result(&self) -> &Value {
        assert!(
            self.ok,
            "expected success, got {} ({})",
            self.json, self.stderr
        );
        &self.json
    }
}

impl Direct {
    pub fn new(sandbox: &Sandbox, host: &Netns, role: &str, n: u8, mode: &str) -> Direct {
        let net = CniNetwork::new(sandbox, host, role, n, mode);
        let data_dir = std::env::temp_dir().join(format!("{}-ipam", net.name));
        let _ = std::fs::remove_dir_all(&data_dir);
        Direct { net, data_dir }
    }

    /// The network configuration of one plugin invocation, as libcni makes it from the
    /// conflist: the plugin's entry with the list's `name` and `cniVersion`, and the
    /// runtime's `runtimeConfig.portMappings` (`[host, container, proto, hostIP]`).
    pub fn conf(&self, version: &str, ports: &[(u16, u16, &str, &str)]) -> Value {
        let list = self.net.conflist(version, &self.data_dir);
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = version.into();
        let mappings: Vec<Value> = ports
            .iter()
            .map(|(h, c, p, ip)| {
                json!({"hostPort": h, "containerPort": c, "protocol": p, "hostIP": ip})
            })
            .collect();
        conf["runtimeConfig"] = json!({"portMappings": mappings});
        conf
    }

    /// Runs the plugin with `CNI_COMMAND=command` in the host namespace. `netns` empty
    /// leaves `CNI_NETNS` empty, as containerd's `ctr run --rm` does on DEL.
    pub fn invoke(
        &self,
        command: &str,
        id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
    ) -> Reply {
        self.invoke_with_path(command, id, netns, ifname, conf, REFERENCE_PLUGINS)
    }

    /// [`Direct::invoke`] with `CNI_PATH` = `cni_path`.
    pub fn invoke_with_path(
        &self,
        command: &str,
        id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
        cni_path: &str,
    ) -> Reply {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.net.host.path()))
            .arg(netplane_cni_bin())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", cni_path)
            .env("CNI_ARGS", "IgnoreUnknown=1");
        // A plugin that hangs fails the test rather than CI.
        let out = output_within(&mut cmd, Some(conf.to_string().as_bytes()), PLUGIN_LIMIT)
            .unwrap_or_else(|e| panic!("netplane-cni {command}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {stdout}"))
        };
        Reply {
            ok: out.status.success(),
            json,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The addresses host-local has handed out on this network.
    pub fn leases(&self) -> Vec<String> {
        host_local_leases(&self.data_dir, &self.net)
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
