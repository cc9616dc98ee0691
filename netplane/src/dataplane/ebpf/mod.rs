//! The eBPF data plane: TC programs on the uplink and on every container network (its
//! bridge, or each host veth of a ptp network), attached as TCX links, with connection
//! tracking in BPF maps. No iptables rule, no nf_conntrack.
//!
//! Everything lives under `/sys/fs/bpf/netplane/<name>/`: the maps (`NP_*`), the TC
//! programs (`prog_<program>`) and one link per program and device
//! (`link_<program>_<device>`; a bridge network's containers' host veths carry
//! `netplane_from_container`, a link each). Pins keep the data plane running when the
//! agent exits or is killed; a new `up` reuses the pinned maps (so the conntrack table,
//! and every established connection, survives) and, when it brings a new build, swaps the
//! programs inside the pinned links atomically (BPF_LINK_UPDATE); otherwise it loads
//! nothing, and attaches what is missing (a new container's host veth) from the pinned
//! programs.
//! `down` removes the directory, which unpins, and so detaches, everything.
//!
//! Both address families go through the same programs, each with maps of its own (`NP_*`
//! and `NP6_*`, the same design over IPv4 and IPv6 addresses).
//!
//! One file per job: `object` loads the embedded object (the only place that does) and
//! defines [`EbpfError`]; `attach` puts the programs on their devices; `family` says what
//! differs between IPv4 and IPv6, for the rest to be written once; `maps` programs the
//! maps from the plan; `conntrack` lists and collects the conntrack tables; `stats` reads
//! the counters for `status`, checked against the devices and addresses as they are now;
//! [`agent`] runs the garbage collection and follows the host (an uplink address that
//! moves, a device deleted and created again); [`counter`] is the packet counter of
//! `netplane count`; [`testrun`] holds the NAT programs for BPF_PROG_TEST_RUN.

pub mod agent;
mod attach;
mod batch;
mod bpffs;
mod conntrack;
pub mod counter;
mod family;
mod maps;
pub mod monitor;
mod object;
mod stats;
pub mod testrun;

use std::path::{Path, PathBuf};

pub use conntrack::{
    Flow, GcError, conntrack_entries, conntrack_entry_count, ct_bytes_per_entry, flows, gc,
};
pub use family::IpFamily;
pub use object::EbpfError;
pub use stats::{drop_counters, program_costs};
pub use testrun::{TestRunMaps, TestRunPrograms};

use super::{Dataplane, DataplaneError, DataplaneStatus, HostContext};
use crate::config::{Container, Mode, Plan};
use maps::Maps;
use object::LoadOptions;

pub const PIN_ROOT: &str = "/sys/fs/bpf/netplane";

pub struct Ebpf;

/// Where instance `name` pins its maps and links.
pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(name)
}

impl Dataplane for Ebpf {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn check(&self) -> Result<(), DataplaneError> {
        let missing = |what: &str| DataplaneError::Unsupported {
            what: what.to_owned(),
        };
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut v = release
            .split(['.', '-'])
            .filter_map(|n| n.parse::<u32>().ok());
        if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 6) {
            return Err(missing(&format!(
                "Linux ≥ 6.6 for TCX links (this is {release})"
            )));
        }
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(missing("kernel BTF (/sys/kernel/btf/vmlinux)"));
        }
        bpffs::ensure_mounted(Path::new(bpffs::DEFAULT_PATH))
            .map_err(|e| missing(&format!("a BPF filesystem ({e})")))?;
        Ok(())
    }

    /// IPv6 masquerade translates to the uplink's global IPv6 address: a `nat` network
    /// with a subnet6 needs one (`routed` and `isolated` ones translate nothing).
    fn check_host(&self, plan: &Plan, host: &HostContext) -> Result<(), DataplaneError> {
        if host.uplink_addr6.is_some() {
            return Ok(());
        }
        match masquerading6(plan) {
            Some((index, n)) => Err(DataplaneError::UplinkWithoutAddress6 {
                mode: Mode::Ebpf,
                index,
                network: n.name.clone(),
                subnet6: n.subnet6.map(|s| s.to_string()).unwrap_or_default(),
                uplink: host.uplink.clone(),
            }),
            None => Ok(()),
        }
    }

    fn sysctls(&self, _plan: &Plan) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Attaches the programs and programs the maps, then starts the agent. When the same
    /// object's programs are already attached where the plan wants them, only the maps
    /// change (with the previous plan, only the entries that differ).
    fn apply(
        &self,
        plan: &Plan,
        old: Option<&Plan>,
        host: &HostContext,
    ) -> Result<Vec<String>, DataplaneError> {
        let mut changes = program(plan, old, host)?;
        if let Some(old) = old {
            let forgotten = conntrack::forget(&plan.name, &conntrack::stale_prefixes(plan, old));
            if forgotten > 0 {
                changes.push(format!(
                    "{forgotten} conntrack entries of changed networks or containers removed"
                ));
            }
        }
        // An agent that `up` started and that is gone crashed or was killed: say so.
        let dead = agent::started_pid(&plan.name).filter(|_| agent::running(&plan.name).is_none());
        match agent::ensure_running_with(&plan.name, agent::AgentArgs::of(plan)) {
            Ok(Some(pid)) => changes.push(match dead {
                Some(old) => format!("agent started (pid {pid}; the previous one, pid {old}, had exited)"),
                None => format!("agent started (pid {pid})"),
            }),
            Ok(None) => {}
            Err(e) => changes.push(format!("warning: the agent did not start ({e}); the data plane runs without garbage collection")),
        }
        Ok(changes)
    }

    /// Stops the agent, then removes the pin directory, which detaches every program and
    /// frees every map.
    fn teardown(&self, name: &str) -> Result<Vec<String>, DataplaneError> {
        let mut removed = Vec::new();
        if let Some(pid) = agent::stop(name) {
            removed.push(format!("agent (pid {pid})"));
        }
        let dir = pin_dir(name);
        if !dir.exists() {
            return Ok(removed);
        }
        removed.extend(
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| format!("unpinned {}", e.path().display())),
        );
        std::fs::remove_dir_all(&dir).map_err(|source| EbpfError::Io {
            action: "remove",
            path: dir.clone(),
            source,
        })?;
        // The per-host directory goes too once no instance uses it.
        let _ = std::fs::remove_dir(PIN_ROOT);
        Ok(removed)
    }

    fn describe(&self) -> &'static str {
        "ebpf (TC programs and BPF conntrack; masquerade, published ports, isolation)"
    }

    fn status(&self, plan: &Plan) -> DataplaneStatus {
        stats::status(plan)
    }

    fn flows(&self, name: &str) -> Vec<Flow> {
        flows(name)
    }

    fn verify_ports(&self, plan: &Plan, c: &Container) -> Vec<String> {
        maps::missing_ports(plan, c)
    }
}

/// The first network of `plan` whose containers' IPv6 flows are masqueraded (to the
/// uplink's global IPv6 address), and its index.
fn masquerading6(plan: &Plan) -> Option<(usize, &crate::config::Network)> {
    plan.networks
        .iter()
        .enumerate()
        .find(|(_, n)| n.subnet6.is_some() && n.gateway_mode.nat())
}

/// `apply` without the agent: attaches and programs. Returns a line per change.
fn program(
    plan: &Plan,
    old: Option<&Plan>,
    host: &HostContext,
) -> Result<Vec<String>, DataplaneError> {
    let dir = pin_dir(&plan.name);
    std::fs::create_dir_all(&dir).map_err(|source| EbpfError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let wanted = attach::wanted(plan, &host.uplink);
    let pinned = attach::pinned(&dir);
    let stamp_file = crate::state::dir(&plan.name).join("ebpf.object");
    let stamp = object::stamp(plan.ebpf.debug_datapath);
    // Fast path: this build's programs are loaded and pinned, and the maps fit, so only
    // the maps change (with the previous plan, only the entries that differ), and a
    // program that does not run where the plan wants it (a new bridge or uplink, a new
    // ptp container's host veth, a device created again: "attached" is asked of the
    // devices, not of the pins) is attached from its pin, with no load and no verifier
    // run; links of devices that left the plan are unpinned, which detaches them.
    let capacity = conntrack::CtCapacity::of(plan);
    if old.is_some()
        && attach::programs_pinned(&dir, plan)
        && conntrack::ct_sized_as(&plan.name, &capacity)
        && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
        && let Some(mut maps) = Maps::pinned(&plan.name)
    {
        // The maps first, as on the slow path: a program attached to a new device (a new
        // network's bridge) runs at once, and must find that network in them.
        maps.program(plan, host, old)?;
        let mut changes = attach::attach_missing(&dir, plan, &host.uplink, host.touched.as_ref())?;
        changes.extend(attach::detach_stale(&dir, &pinned, &wanted));
        return Ok(changes);
    }
    // The slow path writes every map whole: a scoped converge's host knows only its own
    // devices, so the endpoints of the other containers would go. Every link, then.
    let full;
    let host = match &host.touched {
        Some(_) => {
            let (links, ..) = crate::topology::host_now(false).map_err(|e| DataplaneError::Io {
                path: "netlink".to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
            full = HostContext {
                links,
                touched: None,
                ..host.clone()
            };
            &full
        }
        None => host,
    };
    let resize = conntrack::ct_resize(&plan.name, &capacity);
    let mut bpf = object::load(&LoadOptions {
        pins: Some(&dir),
        conntrack: Some(capacity),
        debug: plan.ebpf.debug_datapath,
    })?;
    // The maps hold the plan before the new programs run on them (a map made anew, for
    // another build's layout, starts empty). Taken from the object, they stay open until
    // the programs, which refer to them, are loaded.
    let mut maps = Maps::take(&mut bpf)?;
    maps.program(plan, host, None)?;
    let mut changes = attach::attach_all(&mut bpf, &dir, plan, &host.uplink)?;
    drop(maps);
    changes.extend(resize);
    changes.extend(attach::detach_stale(&dir, &pinned, &wanted));
    // Links replaced in place are no change of attachment: say that the code changed (a
    // new build of netplane, or `debug_datapath` switched).
    if std::fs::read_to_string(&stamp_file).is_ok_and(|was| was != stamp) {
        changes.push(format!(
            "ebpf: programs replaced by object {stamp} ({})",
            if plan.ebpf.debug_datapath {
                "with debug logs: netplane monitor --log"
            } else {
                "without debug logs"
            }
        ));
    }
    std::fs::write(&stamp_file, stamp).map_err(|source| DataplaneError::Io {
        path: stamp_file.display().to_string(),
        source,
    })?;
    Ok(changes)
}
