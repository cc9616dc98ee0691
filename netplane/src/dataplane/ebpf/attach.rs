//! Where the programs go: the TC programs on the uplink and the bridges (TCX links, swapped
//! in place by a later `up`), the socket-layer programs on the root cgroup, and the pins
//! that keep every link.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aya::Ebpf as AyaEbpf;
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};

use super::object::{self, EbpfError};
use crate::config::Plan;

/// The NAT programs and where each is attached.
pub(super) const PROGRAMS: [(&str, TcAttachType, Target); 4] = [
    (
        "netplane_uplink_ingress",
        TcAttachType::Ingress,
        Target::Uplink,
    ),
    (
        "netplane_uplink_egress",
        TcAttachType::Egress,
        Target::Uplink,
    ),
    (
        "netplane_bridge_ingress",
        TcAttachType::Ingress,
        Target::Bridges,
    ),
    (
        "netplane_bridge_egress",
        TcAttachType::Egress,
        Target::Bridges,
    ),
];

/// The socket-layer programs for host processes, attached to the root cgroup.
const SOCK_PROGRAMS: [&str; 3] = [
    "netplane_connect4",
    "netplane_sendmsg4",
    "netplane_recvmsg4",
];

/// The device a link is pinned under for the root cgroup.
const CGROUP: &str = "cgroup";

#[derive(Clone, Copy)]
pub(super) enum Target {
    Uplink,
    Bridges,
}

/// The pin name of the link of `program` on `device`.
fn link_name(program: &str, device: &str) -> String {
    format!("link_{program}_{device}")
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
    PROGRAMS.iter().flat_map(move |&(prog, kind, target)| {
        let devices: Vec<&'a str> = match target {
            Target::Uplink => vec![uplink],
            Target::Bridges => plan.networks.iter().map(|n| n.name.as_str()).collect(),
        };
        devices.into_iter().map(move |d| (prog, kind, d))
    })
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
        .filter(|n| n.starts_with("link_"))
        .collect()
}

/// What is wrong with the links pinned in `dir` for `plan`: one line per link missing or
/// left over. When the plan names no uplink (the default route's interface is then only
/// known to `up`), the uplink programs' links may be on any one device.
pub(super) fn problems(plan: &Plan, dir: &Path) -> Vec<String> {
    let pinned = pinned(dir);
    let mut expected: BTreeSet<String> =
        SOCK_PROGRAMS.iter().map(|p| link_name(p, CGROUP)).collect();
    for (prog, _, target) in PROGRAMS {
        match (target, &plan.uplink) {
            (Target::Bridges, _) => {
                expected.extend(plan.networks.iter().map(|n| link_name(prog, &n.name)));
            }
            (Target::Uplink, Some(u)) => {
                expected.insert(link_name(prog, u));
            }
            (Target::Uplink, None) => {
                let on: Vec<&String> = pinned
                    .iter()
                    .filter(|l| l.starts_with(&link_name(prog, "")))
                    .collect();
                expected.insert(match on[..] {
                    [one] => one.clone(),
                    _ => link_name(prog, "<uplink>"),
                });
            }
        }
    }
    let missing = expected
        .difference(&pinned)
        .map(|l| format!("link {l} is not pinned"));
    let extra = pinned
        .difference(&expected)
        .map(|l| format!("link {l} is pinned but not in the plan"));
    missing.chain(extra).collect()
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
    let (id, fresh) = match PinnedLink::from_pin(pin) {
        Ok(old) => {
            let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(link_err)?;
            (prog.attach_to_link(link).map_err(attach_err)?, false)
        }
        Err(_) => (prog.attach(device, kind).map_err(attach_err)?, true),
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

/// Unpins the links of `dir` in `pinned` that are not `wanted` (of devices that left the
/// plan), which detaches them. Returns a line per link.
pub(super) fn detach_stale(
    dir: &Path,
    pinned: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
) -> Vec<String> {
    pinned
        .difference(wanted)
        .map(|l| {
            let p = dir.join(l);
            let _ = std::fs::remove_file(&p);
            format!("ebpf: detached {}", p.display())
        })
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
