//! What an instance owns, kept under /run/netplane/<name>/ so that `down`, `status` and
//! `exec` work from a new process, and after a crash.
//!
//! `up` writes the state *before* it creates anything (every object it may create is
//! listed), so `down` after `up` was killed half-way still finds everything. /run is a
//! tmpfs: after a reboot the kernel objects are gone too. `up` and `down` change it only
//! under the instance's lock (`lock::InstanceLock`, an flock of the same directory).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{Mode, Plan};

pub const RUN_DIR: &str = "/run/netplane";

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {source}")]
pub struct StateError {
    pub path: String,
    pub source: io::Error,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The plan last applied completely; `None` while the first `up` is under way.
    pub plan: Option<Plan>,
    /// Named network namespaces netplane created or may have created.
    pub netns: BTreeSet<String>,
    /// Links in netplane's own namespace (bridges, host veth ends) it created or may have.
    pub links: BTreeSet<String>,
    /// Sysctls of this instance's own devices that netplane changed, with the value each
    /// had before. (Shared ones, such as `ip_forward`, are in `sysctl::shared`'s record.)
    pub sysctls: BTreeMap<String, String>,
    /// Data planes that programmed, or may have programmed, NAT for this instance.
    #[serde(default)]
    pub dataplanes: BTreeSet<Mode>,
    /// Destinations of the host routes netplane created or may have: `[[routes]]`, and
    /// each ptp network's blackhole cover (of its subnet6 too). Written as CIDR strings,
    /// so a state of IPv4 routes only, from before IPv6, loads as it is.
    #[serde(default)]
    pub routes: BTreeSet<IpNet>,
}

pub fn dir(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(name)
}

fn file(name: &str) -> PathBuf {
    dir(name).join("state.json")
}

fn err(path: PathBuf) -> impl FnOnce(io::Error) -> StateError {
    move |source| StateError {
        path: path.display().to_string(),
        source,
    }
}

/// The JSON file at `path`, or `None` when there is none; one that is not a `T` is
/// `InvalidData`.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as JSON at `path` atomically (temp file + rename): a reader never sees
/// half a file, nor does a crash leave one.
pub(crate) fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl State {
    /// The state of instance `name`, or `None` when it is not up.
    pub fn load(name: &str) -> Result<Option<State>, StateError> {
        let path = file(name);
        read_json(&path).map_err(err(path))
    }

    /// Whether instance `name` has a state: it is up, or an `up` of it is under way.
    pub fn exists(name: &str) -> bool {
        file(name).exists()
    }

    /// Writes atomically, so a crash never leaves half a file.
    pub fn save(&self, name: &str) -> Result<(), StateError> {
        let path = file(name);
        std::fs::create_dir_all(dir(name)).map_err(err(dir(name)))?;
        write_json_atomically(&path, self).map_err(err(path))
    }

    /// The names of the instances that have a state in this mount namespace's /run:
    /// `up` ones and CNI networks (`cni-<network>`) alike.
    pub fn instances() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(RUN_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn remove(name: &str) -> Result<(), StateError> {
        match std::fs::remove_dir_all(dir(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(dir(name))(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_ipv4_routes_from_before_ipv6_still_loads() {
        let old = r#"{"plan": null, "netns": [], "links": ["npa"], "sysctls": {},
                      "dataplanes": ["iptables"], "routes": ["10.0.2.0/24", "10.89.1.0/24"]}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert!(s.routes.contains(&"10.0.2.0/24".parse::<IpNet>().unwrap()));
        // And with an IPv6 cover, written and read back.
        let mut s = s;
        s.routes.insert("2001:db8:89::/64".parse().unwrap());
        let again: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn a_state_of_ipv4_networks_from_before_ipv6_only_ones_still_loads() {
        // As netplane wrote it when subnet, gateway and a container's ip were required.
        let old = r#"{"plan": {"name": "t", "mode": "ebpf", "uplink": null,
            "networks": [{"name": "npa", "subnet": "10.89.0.0/24", "gateway": "10.89.0.1",
                          "driver": "bridge", "gateway_mode": "nat"}],
            "containers": [{"name": "web", "network": "npa", "ip": "10.89.0.2",
                            "prefix_len": 24, "gateway": "10.89.0.1",
                            "mac": [2, 66, 10, 89, 0, 2], "netns": "t-web",
                            "host_veth": "vnp12345678", "publish": []}],
            "routes": [{"subnet": "10.0.2.0/24", "via": "192.0.2.12"}]},
            "netns": ["t-web"], "links": ["npa"], "sysctls": {}}"#;
        let s: State = serde_json::from_str(old).unwrap();
        let plan = s.plan.as_ref().unwrap();
        let (net, web) = (&plan.networks[0], &plan.containers[0]);
        assert_eq!(net.subnet, Some("10.89.0.0/24".parse().unwrap()));
        assert_eq!(net.gateway, Some("10.89.0.1".parse().unwrap()));
        assert_eq!(
            (web.ip, web.gateway),
            (
                Some("10.89.0.2".parse().unwrap()),
                Some("10.89.0.1".parse().unwrap())
            )
        );
        assert_eq!(
            plan.routes[0].via,
            "192.0.2.12".parse::<std::net::IpAddr>().unwrap()
        );
        // What this netplane writes reads back the same.
        let again: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }
}
