//! Where the programs go: the TC programs on the uplink and on each container network (its
//! bridge, or each host veth of a `ptp` network) as TCX links, swapped in place by a later
//! `up`; the socket-layer programs on the root cgroup; and the pins that keep every link
//! and the TC programs.
//!
//! A ptp network's programs are attached per container, so attaching must not cost a
//! program load (a verifier run) per container: the TC programs are pinned
//! (`prog_<program>`) by the `up` that loads them, and a container that appears gets its
//! two links from those pins ([`attach_missing`]), as a recreated device gets its own
//! back from the agent ([`reattach`]); a container that goes takes its links' pins with
//! it ([`detach_stale`]).
//!
//! The same holds for a bridge network's containers: each host veth carries
//! `netplane_from_container` at its ingress (with `[ebpf] from_container`), a link per
//! container made from the pinned program when the container comes ([`attach_missing`],
//! scoped to the containers a CNI ADD touches) and unpinned when it goes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aya::Ebpf as AyaEbpf;
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};

use super::family::IpFamily;
use super::object::{self, EbpfError};
use crate::config::{Driver, Plan};
use crate::instance::phases;

/// The NAT programs and where each is attached: one per hook and family. The IPv6 ones
/// are loaded and attached only for a plan with a subnet6 (a host without IPv6 networks
/// pays neither their verifier run nor a call per packet), each after its IPv4
/// counterpart on the same hook (TCX runs them in order; each family's program passes
/// the other family's packets on).
pub(super) const PROGRAMS: [(&str, TcAttachType, Target, IpFamily); 10] = [
    (
        "netplane_uplink_ingress",
        TcAttachType::Ingress,
        Target::Uplink,
        IpFamily::V4,
    ),
    (
        "netplane_uplink_egress",
        TcAttachType::Egress,
        Target::Uplink,
        IpFamily::V4,
    ),
    (
        "netplane_bridge_ingress",
        TcAttachType::Ingress,
        Target::Networks,
        IpFamily::V4,
    ),
    (
        "netplane_bridge_egress",
        TcAttachType::Egress,
        Target::Networks,
        IpFamily::V4,
    ),
    (
        "netplane_from_container",
        TcAttachType::Ingress,
        Target::BridgePorts,
        IpFamily::V4,
    ),
    (
        "netplane_uplink_ingress6",
        TcAttachType::Ingress,
        Target::Uplink,
        IpFamily::V6,
    ),
    (
        "netplane_uplink_egress6",
        TcAttachType::Egress,
        Target::Uplink,
        IpFamily::V6,
    ),
    (
        "netplane_bridge_ingress6",
        TcAttachType::Ingress,
        Target::Networks,
        IpFamily::V6,
    ),
    (
        "netplane_bridge_egress6",
        TcAttachType::Egress,
        Target::Networks,
        IpFamily::V6,
    ),
    (
        "netplane_from_container6",
        TcAttachType::Ingress,
        Target::BridgePorts,
        IpFamily::V6,
    ),
];

/// The TC programs `plan` needs: the IPv6 ones only with a subnet6. Each is loaded and
/// pinned whether or not a device of the plan carries it, so that a later `up` (a new
/// container, `[ebpf] from_container` switched on) attaches it without a load.
pub(super) fn programs(
    plan: &Plan,
) -> impl Iterator<Item = (&'static str, TcAttachType, Target)> + '_ {
    PROGRAMS
        .iter()
        .filter(|p| p.3 == IpFamily::V4 || plan.dual_stack())
        .map(|&(prog, kind, target, _)| (prog, kind, target))
}

/// The socket-layer programs for host processes, attached to the root cgroup: one per
/// hook and family. (An IPv6 socket towards an IPv4-mapped address runs connect6, not
/// connect4: tcp_v6_pre_connect() runs it, and tcp_v6_connect() then hands the address
/// to tcp_v4_connect(); but an unconnected UDP one runs sendmsg4, as udpv6_sendmsg()
/// hands it to udp_sendmsg(), and recvmsg6 for the answers. The programs cover both.)
const SOCK_PROGRAMS: [&str; 6] = [
    "netplane_connect4",
    "netplane_sendmsg4",
    "netplane_recvmsg4",
    "netplane_connect6",
    "netplane_sendmsg6",
    "netplane_recvmsg6",
];

/// The device a link is pinned under for the root cgroup.
const CGROUP: &str = "cgroup";

#[derive(Clone, Copy)]
pub(super) enum Target {
    Uplink,
    /// Each container network's device on the host: a bridge network's bridge, each
    /// container's host veth on a ptp network.
    Networks,
    /// The host veth of each container of a bridge network (its bridge port), while
    /// `[ebpf] from_container` is on.
    BridgePorts,
}

/// The pin name of the link of `program` on `device`.
fn link_name(program: &str, device: &str) -> String {
    format!("link_{program}_{device}")
}

/// Where TC program `program` is pinned, for attaching it without a load.
fn program_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("prog_{program}"))
}

fn hook(kind: TcAttachType) -> &'static str {
    match kind {
        TcAttachType::Ingress => "tc ingress",
        TcAttachType::Egress => "tc egress",
        TcAttachType::Custom(_) => "tc",
    }
}

/// The devices each program goes on, for `plan` on uplink `uplink`.
fn attachments<'a>(
    plan: &'a Plan,
    uplink: &'a str,
) -> impl Iterator<Item = (&'static str, TcAttachType, &'a str)> + 'a {
    PROGRAMS
        .iter()
        .filter(|p| p.3 == IpFamily::V4 || plan.dual_stack())
        .flat_map(move |&(prog, kind, target, family)| {
            let devices: Vec<&'a str> = match target {
                Target::Uplink => vec![uplink],
                Target::Networks => network_devices(plan).collect(),
                Target::BridgePorts => bridge_port_devices(plan, family).collect(),
            };
            devices.into_iter().map(move |d| (prog, kind, d))
        })
}

/// The host devices of `plan`'s container networks: each bridge network's bridge, and the
/// host veth of each container of a ptp network (whose hooks do the bridge's job).
fn network_devices(plan: &Plan) -> impl Iterator<Item = &str> {
    let bridges = plan
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Bridge)
        .map(|n| n.name.as_str());
    let veths = plan
        .containers
        .iter()
        .filter(|c| {
            plan.network(&c.network)
                .is_some_and(|n| n.driver == Driver::Ptp)
        })
        .map(|c| c.host_veth.as_str());
    bridges.chain(veths)
}

/// The host veths of `plan`'s bridge networks' containers, where `netplane_from_container`
/// goes (its IPv6 program only on the networks with a subnet6: a container of an
/// IPv4-only network sends no IPv6 packet to translate): none while `[ebpf]
/// from_container` (or `fast_forward`) is off (the program stays pinned, unattached).
fn bridge_port_devices(plan: &Plan, family: IpFamily) -> impl Iterator<Item = &str> {
    plan.containers
        .iter()
        .filter(move |c| {
            plan.ebpf.from_container_hook()
                && plan.network(&c.network).is_some_and(|n| {
                    n.driver == Driver::Bridge && (family == IpFamily::V4 || n.subnet6.is_some())
                })
        })
        .map(|c| c.host_veth.as_str())
}

/// The pin names of every link `plan` wants on uplink `uplink`.
pub(super) fn wanted(plan: &Plan, uplink: &str) -> BTreeSet<String> {
    attachments(plan, uplink)
        .map(|(prog, _, device)| link_name(prog, device))
        .chain(SOCK_PROGRAMS.iter().map(|p| link_name(p, CGROUP)))
        .collect()
}

/// The names of the links pinned in `dir`.
pub(super) fn pinned(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // A `…_new` pin is a replacement that a killed `up` left half-way (see `pin_over`).
        .filter(|n| n.starts_with("link_") && !n.ends_with("_new"))
        .collect()
}

/// The uplink whose links are pinned in `dir`: the plan's, or, when the plan names none
/// (the default route's interface is then only known to `up`), the one device that the
/// uplink programs' pins name.
pub(super) fn pinned_uplink(plan: &Plan, dir: &Path) -> Option<String> {
    if let Some(u) = &plan.uplink {
        return Some(u.clone());
    }
    let pinned = pinned(dir);
    let mut on = BTreeSet::new();
    for (prog, _, target, _) in PROGRAMS {
        if matches!(target, Target::Uplink) {
            let prefix = link_name(prog, "");
            on.extend(pinned.iter().filter_map(|l| l.strip_prefix(&prefix)));
        }
    }
    match on.into_iter().collect::<Vec<&str>>()[..] {
        [one] => Some(one.to_owned()),
        _ => None,
    }
}

/// Where a program stands on its device.
#[derive(Debug, PartialEq, Eq)]
enum Attachment {
    /// Its pinned link runs on the device as it is now.
    Live,
    /// The device does not exist.
    NoDevice,
    /// No link is pinned for it.
    NotPinned,
    /// A link is pinned, but the device's hook does not run it: the device was deleted
    /// (tcx_uninstall() detaches its links, which the pin keeps alive, attached to
    /// nothing) and maybe created again under the same name, with a new index.
    Detached,
}

/// Whether the link pinned at `pin` runs on `device`'s TCX hook `kind`: the device's
/// hook lists the link's program (BPF_PROG_QUERY). The pin alone proves nothing.
fn attachment(pin: &Path, device: &str, kind: TcAttachType) -> Attachment {
    let Ok((_, on_device)) = SchedClassifier::query_tcx(device, kind) else {
        return Attachment::NoDevice;
    };
    let Some(program) = link_program(pin) else {
        return Attachment::NotPinned;
    };
    if on_device.iter().any(|p| p.id() == program) {
        Attachment::Live
    } else {
        Attachment::Detached
    }
}

/// The id of the program that the link pinned at `pin` carries (a detached link still
/// holds its program).
fn link_program(pin: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(pin).ok()?);
    Some(link.info().ok()?.program_id())
}

/// What is wrong with the attachments of `plan` pinned in `dir`, checked against the
/// devices as they are now: one line per program not running where it should, and per
/// link left over.
pub(super) fn problems(plan: &Plan, dir: &Path) -> Vec<String> {
    let pinned = pinned(dir);
    let mut problems = Vec::new();
    let uplink = pinned_uplink(plan, dir);
    let mut expected: BTreeSet<String> =
        SOCK_PROGRAMS.iter().map(|p| link_name(p, CGROUP)).collect();
    if uplink.is_none() {
        problems.push(format!(
            "{} is not attached to any uplink: no link of it is pinned",
            PROGRAMS[0].0
        ));
    }
    for (prog, kind, device) in attachments(plan, uplink.as_deref().unwrap_or("")) {
        if device.is_empty() {
            continue;
        }
        let name = link_name(prog, device);
        let why = match attachment(&dir.join(&name), device, kind) {
            Attachment::Live => None,
            Attachment::NoDevice => Some(format!(
                "{prog} is not attached to {device} ({}): the device is missing",
                hook(kind)
            )),
            Attachment::NotPinned => Some(format!(
                "{prog} is not attached to {device} ({}): no link is pinned",
                hook(kind)
            )),
            Attachment::Detached => Some(format!(
                "{prog} is not attached to {device} ({}): its pinned link is detached (the device was deleted, or deleted and created again)",
                hook(kind)
            )),
        };
        problems.extend(why);
        expected.insert(name);
    }
    problems.extend(
        SOCK_PROGRAMS
            .iter()
            .filter(|p| !pinned.contains(&link_name(p, CGROUP)))
            .map(|p| format!("{p} is not attached to the root cgroup: no link is pinned")),
    );
    problems.extend(
        pinned
            .difference(&expected)
            .map(|l| format!("link {l} is pinned but not in the plan")),
    );
    problems
}

/// Attaches again, on the device as it is now, every TC program of `plan` (on uplink
/// `uplink`) whose pinned link no longer runs there, with the program pinned by the `up`
/// that loaded it (or, without that pin, the very program that the link carried, or
/// that another device's link of the same program carries): the agent's answer to a
/// device deleted and created again, a ptp network's host veths included. It loads
/// nothing, so it never mixes programs of another build with the maps. Missing devices
/// are left alone. Returns a line per attachment, and the failures.
pub(super) fn reattach(dir: &Path, plan: &Plan, uplink: &str) -> (Vec<String>, Vec<EbpfError>) {
    let (mut changes, mut failures) = (Vec::new(), Vec::new());
    let all: Vec<(&str, TcAttachType, &str)> = attachments(plan, uplink).collect();
    for &(prog, kind, device) in &all {
        let pin = dir.join(link_name(prog, device));
        if matches!(
            attachment(&pin, device, kind),
            Attachment::Live | Attachment::NoDevice
        ) {
            continue;
        }
        let attached = if program_pin(dir, prog).exists() {
            attach_pinned(dir, prog, kind, device, &pin)
        } else {
            let program = link_program(&pin).or_else(|| {
                all.iter()
                    .filter(|(p, _, d)| *p == prog && *d != device)
                    .find_map(|(_, _, d)| link_program(&dir.join(link_name(prog, d))))
            });
            let Some(program) = program else {
                failures.push(EbpfError::MissingProgram(format!(
                    "{prog} (no pinned link carries it any more: re-run `netplane up`)"
                )));
                continue;
            };
            attach_loaded(program, prog, kind, device, &pin)
        };
        match attached {
            Ok(()) => changes.push(format!("ebpf: {prog} attached again to {device}")),
            Err(e) => failures.push(e),
        }
    }
    (changes, failures)
}

/// Whether every TC program `plan` needs is pinned in `dir`, and every socket-layer link:
/// then `up`
/// can attach what is missing without loading anything ([`attach_missing`]).
pub(super) fn programs_pinned(dir: &Path, plan: &Plan) -> bool {
    programs(plan).all(|(prog, _, _)| program_pin(dir, prog).exists())
        && SOCK_PROGRAMS
            .iter()
            .all(|prog| dir.join(link_name(prog, CGROUP)).exists())
}

/// Attaches every TC program of `plan` (on uplink `uplink`) that does not run on its
/// device, from the programs pinned in `dir` (see [`programs_pinned`]): no load, no
/// verifier run, whatever the number of devices. A new container costs a TCX link per
/// program of its host veth (two on ptp, one or two on a bridge network). With `touched`
/// (a converge scoped to these containers: a CNI ADD or DEL), the other containers' host
/// veths are not asked: they are as the last `up` left them, and asking costs a few
/// syscalls per container on every ADD (the agent attaches again to a device created
/// again). Returns a line per attachment.
pub(super) fn attach_missing(
    dir: &Path,
    plan: &Plan,
    uplink: &str,
    touched: Option<&BTreeSet<String>>,
) -> Result<Vec<String>, EbpfError> {
    let untouched: BTreeSet<&str> = touched.map_or_else(BTreeSet::new, |names| {
        plan.containers
            .iter()
            .filter(|c| !names.contains(&c.name))
            .map(|c| c.host_veth.as_str())
            .collect()
    });
    let mut changes = Vec::new();
    for (prog, kind, device) in attachments(plan, uplink) {
        if untouched.contains(device) {
            continue;
        }
        let pin = dir.join(link_name(prog, device));
        if attachment(&pin, device, kind) == Attachment::Live {
            continue;
        }
        attach_pinned(dir, prog, kind, device, &pin)?;
        changes.push(format!("ebpf: {prog} attached to {device}"));
    }
    Ok(changes)
}

/// Attaches TC program `program`, as pinned in `dir`, to `device`'s hook `kind` as a new
/// TCX link pinned at `pin` (over whatever was pinned there).
fn attach_pinned(
    dir: &Path,
    program: &str,
    kind: TcAttachType,
    device: &str,
    pin: &Path,
) -> Result<(), EbpfError> {
    let prog =
        SchedClassifier::from_pin(program_pin(dir, program)).map_err(EbpfError::load(program))?;
    attach_as_link(prog, program, kind, device, pin)
}

/// Attaches the loaded program `id` (named `program`) to `device`'s hook `kind` as a new
/// TCX link, and pins it at `pin` in place of whatever was pinned there (rename over it:
/// the old link's last reference goes with it).
fn attach_loaded(
    id: u32,
    program: &str,
    kind: TcAttachType,
    device: &str,
    pin: &Path,
) -> Result<(), EbpfError> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| EbpfError::MissingProgram(format!("{program} (id {id})")))?;
    let prog = SchedClassifier::from_program_info(info, program.to_owned().into())
        .map_err(EbpfError::load(program))?;
    attach_as_link(prog, program, kind, device, pin)
}

/// Attaches `prog` (a loaded program, named `program`) to `device`'s hook `kind` as a new
/// TCX link, and pins it at `pin` in place of whatever was pinned there.
fn attach_as_link(
    mut prog: SchedClassifier,
    program: &str,
    kind: TcAttachType,
    device: &str,
    pin: &Path,
) -> Result<(), EbpfError> {
    let attach_err = |source: aya::programs::ProgramError| EbpfError::Attach {
        program: program.to_owned(),
        device: device.to_owned(),
        hook: hook(kind),
        source: source.into(),
    };
    let link_id = prog.attach(device, kind).map_err(attach_err)?;
    let link: FdLink = prog
        .take_link(link_id)
        .map_err(attach_err)?
        .try_into()
        .map_err(|source: LinkError| EbpfError::Link {
            program: program.to_owned(),
            device: device.to_owned(),
            source: source.into(),
        })?;
    pin_over(link, pin)
}

/// Pins `link` at `pin`, replacing what is pinned there: pinned beside it first, then
/// renamed over it, so that the path never lacks a link.
fn pin_over(link: FdLink, pin: &Path) -> Result<(), EbpfError> {
    // bpffs refuses names with a dot (bpf_mkobj_ops: EPERM), hence no ".new".
    let tmp = PathBuf::from(format!("{}_new", pin.display()));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp).map_err(|source| EbpfError::Pin {
        path: tmp.clone(),
        source: source.into(),
    })?;
    std::fs::rename(&tmp, pin).map_err(|source| EbpfError::Io {
        action: "pin",
        path: pin.to_owned(),
        source,
    })
}

/// Attaches every program where `plan` wants it on uplink `uplink`, swapping it into the
/// link an earlier `up` pinned under `dir` where there is one. Returns a line per new
/// attachment.
pub(super) fn attach_all(
    bpf: &mut AyaEbpf,
    dir: &Path,
    plan: &Plan,
    uplink: &str,
) -> Result<Vec<String>, EbpfError> {
    let mut changes = Vec::new();
    // Every TC program is loaded and pinned, even one with no device yet (a ptp network
    // without containers): later containers attach it from its pin.
    let names: Vec<&str> = programs(plan).map(|(prog, _, _)| prog).collect();
    phases::time("ebpf.verify", || load_in_parallel(bpf, &names))?;
    // One link after the other: creating them on parallel threads gains nothing, as
    // tcx_link_attach() holds the RTNL across its RCU grace period (tcx_entry_sync():
    // synchronize_rcu(), 7–25 ms per link), so the kernel runs them one at a time anyway
    // (measured on 6.18: six TCX BPF_LINK_CREATEs begun within 4 ms of each other ended
    // 11–24 ms apart, 104 ms in all, against 83 ms one after the other).
    phases::time("ebpf.attach", || {
        for prog in names {
            load_and_pin(bpf, prog, &program_pin(dir, prog))?;
        }
        for (prog, kind, device) in attachments(plan, uplink) {
            if attach_tc(bpf, prog, kind, device, &dir.join(link_name(prog, device)))? {
                changes.push(format!("ebpf: {prog} attached to {device}"));
            }
        }
        for prog in SOCK_PROGRAMS {
            let pin = dir.join(link_name(prog, CGROUP));
            if !pin.exists() {
                changes.push(format!("ebpf: {prog} attached to the root cgroup"));
            }
            attach_cgroup(bpf, prog, &pin)?;
        }
        Ok(changes)
    })
}

/// Loads the TC programs `names` of `bpf` that are not loaded yet, on as many threads as
/// there are CPUs. The verifier is most of a cold `up` (each NAT program takes 20–250 ms),
/// and a privileged BPF_PROG_LOAD takes no global lock (kernel/bpf/verifier.c takes
/// `bpf_verifier_lock` only for unprivileged loads), so loads on two CPUs verify at once.
/// The threads take the programs from one queue, the costliest to verify first.
fn load_in_parallel(bpf: &mut AyaEbpf, names: &[&str]) -> Result<(), EbpfError> {
    let mut todo: Vec<(&str, &mut SchedClassifier)> = bpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .filter_map(|(name, p)| <&mut SchedClassifier>::try_from(p).ok().map(|p| (name, p)))
        .filter(|(_, p)| p.fd().is_err())
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(todo.len());
    if threads < 2 {
        return Ok(());
    }
    // Popped from the end: the cheapest first in the vector.
    todo.sort_by_key(|(name, _)| std::cmp::Reverse(verify_rank(name)));
    let queue = std::sync::Mutex::new(todo);
    let next = || {
        queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    };
    std::thread::scope(|s| {
        let loads: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), EbpfError> {
                    while let Some((name, prog)) = next() {
                        prog.load().map_err(EbpfError::load(name))?;
                    }
                    Ok(())
                })
            })
            .collect();
        loads.into_iter().try_for_each(|l| {
            l.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// How costly TC program `name` is to verify, lowest first: what the stages do (the
/// verified instruction counts in docs/bench/monitor.md: the uplink's egress and the
/// networks' ingress, where new flows are made, are the largest; a network's egress, the
/// smallest).
fn verify_rank(name: &str) -> u8 {
    let name = name.trim_end_matches('6');
    match name {
        "netplane_uplink_egress" | "netplane_bridge_ingress" => 0,
        "netplane_uplink_ingress" | "netplane_from_container" => 1,
        _ => 2,
    }
}

/// Loads TC program `program` of `bpf` and pins it at `pin`, over the pin of an earlier
/// load (pinned beside it, then renamed over it).
fn load_and_pin(bpf: &mut AyaEbpf, program: &str, pin: &Path) -> Result<(), EbpfError> {
    let prog: &mut SchedClassifier = object::program(bpf, program)?;
    if prog.fd().is_err() {
        prog.load().map_err(EbpfError::load(program))?;
    }
    let tmp = PathBuf::from(format!("{}_new", pin.display()));
    let _ = std::fs::remove_file(&tmp);
    let pinned = |source: aya::pin::PinError| EbpfError::Pin {
        path: tmp.clone(),
        source: source.into(),
    };
    prog.pin(&tmp).map_err(pinned)?;
    std::fs::rename(&tmp, pin).map_err(|source| EbpfError::Io {
        action: "pin",
        path: pin.to_owned(),
        source,
    })
}

/// Attaches `program` to `device`, or swaps it into the link pinned at `pin` by an earlier
/// `up` (BPF_LINK_UPDATE), and leaves the link pinned. True when the link is new.
fn attach_tc(
    bpf: &mut AyaEbpf,
    program: &str,
    kind: TcAttachType,
    device: &str,
    pin: &Path,
) -> Result<bool, EbpfError> {
    let prog: &mut SchedClassifier = object::program(bpf, program)?;
    if prog.fd().is_err() {
        prog.load().map_err(EbpfError::load(program))?;
    }
    let attach_err = |source: aya::programs::ProgramError| EbpfError::Attach {
        program: program.to_owned(),
        device: device.to_owned(),
        hook: hook(kind),
        source: source.into(),
    };
    let link_err = |source: LinkError| EbpfError::Link {
        program: program.to_owned(),
        device: device.to_owned(),
        source: source.into(),
    };
    // A pinned link is swapped in place only while it runs on the device as it is now: a
    // link whose device was deleted refuses updates (tcx_link_update(): -ENOLINK), and
    // one whose device was created again would run nowhere. Its pin then goes, which
    // releases it, and a new link takes its place.
    let live = attachment(pin, device, kind) == Attachment::Live;
    let (id, fresh) = match PinnedLink::from_pin(pin) {
        Ok(old) if live => {
            let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(link_err)?;
            (prog.attach_to_link(link).map_err(attach_err)?, false)
        }
        _ => {
            let _ = std::fs::remove_file(pin);
            (prog.attach(device, kind).map_err(attach_err)?, true)
        }
    };
    // The pin, not this process, keeps the link: take it from aya so that dropping the
    // Ebpf object does not detach it.
    let link = prog.take_link(id).map_err(attach_err)?;
    if fresh {
        let fd: FdLink = link.try_into().map_err(link_err)?;
        fd.pin(pin).map_err(|source| EbpfError::Pin {
            path: pin.to_owned(),
            source: source.into(),
        })?;
    }
    Ok(fresh)
}

/// Attaches a socket-layer program to the root cgroup v2 and pins the link, replacing the
/// link an earlier `up` pinned (rename over it: the old link's last reference goes, which
/// detaches it).
fn attach_cgroup(bpf: &mut AyaEbpf, program: &str, pin: &Path) -> Result<(), EbpfError> {
    let root = cgroup2_root().ok_or(EbpfError::NoCgroup2)?;
    let cgroup = std::fs::File::open(&root).map_err(|source| EbpfError::Io {
        action: "open the root cgroup",
        path: root.clone().into(),
        source,
    })?;
    let prog: &mut CgroupSockAddr = object::program(bpf, program)?;
    prog.load().map_err(EbpfError::load(program))?;
    let attach_err = |source: aya::programs::ProgramError| EbpfError::Attach {
        program: program.to_owned(),
        device: format!("the root cgroup {root}"),
        hook: "cgroup sock_addr",
        source: source.into(),
    };
    // A BPF link on a cgroup always coexists with other programs; BPF_LINK_CREATE rejects
    // the BPF_F_ALLOW_MULTI flag that AllowMultiple would pass (cgroup_bpf_link_attach()
    // takes no flags), so Single (no flag) is what yields a multi attachment here.
    let id = prog
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(attach_err)?;
    let link: FdLink =
        prog.take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source: LinkError| EbpfError::Link {
                program: program.to_owned(),
                device: format!("the root cgroup {root}"),
                source: source.into(),
            })?;
    pin_over(link, pin)
}

/// Unpins the links of `dir` in `pinned` that are not `wanted` (of devices that left the
/// plan), which detaches them, and every `…_new` pin (a link or program that a killed
/// `up` pinned beside its place, see [`pin_over`], and never renamed: a link of it runs
/// on its device for as long as the pin holds it). The caller holds the instance's lock,
/// so no other `up` (nor the agent) is pinning one now. Returns a line per pin.
pub(super) fn detach_stale(
    dir: &Path,
    pinned: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
) -> Vec<String> {
    let left: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_new"))
        .collect();
    pinned
        .difference(wanted)
        .map(|l| {
            let p = dir.join(l);
            let _ = std::fs::remove_file(&p);
            format!("ebpf: detached {}", p.display())
        })
        .chain(left.iter().filter_map(|n| {
            let p = dir.join(n);
            std::fs::remove_file(&p)
                .is_ok()
                .then(|| format!("ebpf: unpinned {}, left by an interrupted up", p.display()))
        }))
        .collect()
}

/// The root of the cgroup v2 hierarchy (not always /sys/fs/cgroup: hybrid systems mount it
/// at /sys/fs/cgroup/unified).
fn cgroup2_root() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_ptp_network_s_programs_go_on_its_containers_host_veths() {
        let plan = Config::parse(
            r#"
            [[networks]]
            name = "npa"
            subnet = "10.89.0.0/24"
            [[networks]]
            name = "npp"
            subnet = "10.89.1.0/24"
            driver = "ptp"
            [[containers]]
            name = "a"
            network = "npa"
            [[containers]]
            name = "b"
            network = "npp"
            [[containers]]
            name = "c"
            network = "npp"
            "#,
            "test",
        )
        .unwrap()
        .plan()
        .unwrap();
        let veth = |c: &str| plan.container(c).unwrap().host_veth.clone();
        let devices: Vec<&str> = network_devices(&plan).collect();
        assert_eq!(devices, ["npa", veth("b").as_str(), veth("c").as_str()]);
        let wanted = wanted(&plan, "up0");
        for device in ["npa", &veth("b"), &veth("c")] {
            for prog in ["netplane_bridge_ingress", "netplane_bridge_egress"] {
                assert!(
                    wanted.contains(&link_name(prog, device)),
                    "{prog} on {device}"
                );
            }
        }
        assert!(!wanted.iter().any(|l| l.ends_with("_npp")), "no device npp");
        // a is bridged: only its own hook's program, on its host veth.
        let on_a: Vec<&String> = wanted.iter().filter(|l| l.ends_with(&veth("a"))).collect();
        assert_eq!(
            on_a,
            [&link_name("netplane_from_container", &veth("a"))],
            "a is bridged"
        );
        // No ptp veth gets it: their netplane_bridge_ingress does its job.
        for c in ["b", "c"] {
            assert!(!wanted.contains(&link_name("netplane_from_container", &veth(c))));
        }
        assert_eq!(wanted.len(), 2 + 3 * 2 + 1 + SOCK_PROGRAMS.len());
    }

    #[test]
    fn the_ipv6_hook_goes_only_on_ports_of_networks_with_a_subnet6() {
        let plan = Config::parse(
            r#"
            [[networks]]
            name = "npa"
            subnet = "10.89.0.0/24"
            subnet6 = "2001:db8:89::/64"
            [[networks]]
            name = "npb"
            subnet = "10.89.1.0/24"
            [[containers]]
            name = "a"
            network = "npa"
            [[containers]]
            name = "b"
            network = "npb"
            "#,
            "test",
        )
        .unwrap()
        .plan()
        .unwrap();
        let veth = |c: &str| plan.container(c).unwrap().host_veth.clone();
        let wanted = wanted(&plan, "up0");
        for c in ["a", "b"] {
            assert!(wanted.contains(&link_name("netplane_from_container", &veth(c))));
        }
        assert!(wanted.contains(&link_name("netplane_from_container6", &veth("a"))));
        assert!(!wanted.contains(&link_name("netplane_from_container6", &veth("b"))));
    }

    fn bridged(ebpf: &str, dual_stack: bool) -> Plan {
        let subnet6 = if dual_stack {
            "subnet6 = \"2001:db8:89::/64\"\n"
        } else {
            ""
        };
        let text = format!(
            "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n{subnet6}\
             [[containers]]\nname = \"a\"\nnetwork = \"npa\"\n\
             [[containers]]\nname = \"b\"\nnetwork = \"npa\"\n[ebpf]\n{ebpf}\n"
        );
        Config::parse(&text, "test").unwrap().plan().unwrap()
    }

    #[test]
    fn a_bridge_network_s_containers_get_their_own_hook_while_from_container_is_on() {
        let plan = bridged("", true);
        let veth = |c: &str| plan.container(c).unwrap().host_veth.clone();
        let wanted = wanted(&plan, "up0");
        for c in ["a", "b"] {
            for prog in ["netplane_from_container", "netplane_from_container6"] {
                assert!(wanted.contains(&link_name(prog, &veth(c))), "{prog} on {c}");
            }
        }
        // Each family's program after the other's on the same hook, IPv4 first.
        let on_a: Vec<&str> = attachments(&plan, "up0")
            .filter(|(_, _, d)| *d == veth("a"))
            .map(|(p, _, _)| p)
            .collect();
        assert_eq!(
            on_a,
            ["netplane_from_container", "netplane_from_container6"]
        );

        // Off: no link, but the program is still loaded and pinned by `up` (programs()),
        // so that switching it on attaches without a load.
        let off = bridged("from_container = false", false);
        assert!(!wanted_has(&off, "netplane_from_container"));
        assert!(programs(&off).any(|(p, _, _)| p == "netplane_from_container"));
        assert!(!programs(&off).any(|(p, _, _)| p == "netplane_from_container6"));
    }

    fn wanted_has(plan: &Plan, prog: &str) -> bool {
        wanted(plan, "up0")
            .iter()
            .any(|l| l.starts_with(&link_name(prog, "")))
    }
}
