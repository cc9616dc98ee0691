//! The embedded eBPF object, the one place it is loaded, and the errors of the eBPF data
//! plane.
//!
//! `build.rs` compiles `netplane-ebpf` and this module embeds the result, so the `netplane`
//! binary needs no files next to it.

use std::path::{Path, PathBuf};

use aya::maps::{MapData, MapError};
use aya::pin::PinError;
use aya::programs::ProgramError;
use aya::programs::links::LinkError;
use aya::{Ebpf as AyaEbpf, EbpfLoader};
use netplane_common::addr::Ip6;
use netplane_common::counters::Counters;
use netplane_common::nat::{
    Backend, CtKey, DpConfig, Endpoint, FragEntry, FragKey, NetInfo, PortKey, SockRevEntry,
    SockRevKey, forwarded, maps,
};
use netplane_common::observe::{self, DROP_SLOTS, PATH_SLOTS, ct_stat, nat_stat};

use super::bpffs::{self, BpffsError};
use super::conntrack::{self, CtCapacity};
use super::family::Family;

/// The eBPF ELF object built from `netplane-ebpf` (see build.rs): no log code at all.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netplane-ebpf.o"));

/// The same programs built with `--features debug-log`: they log through aya-log's
/// `AYA_LOGS` ring buffer (`netplane up --debug-datapath`, read by `monitor --log`).
pub(super) static DEBUG_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netplane-ebpf-debug.o"));

/// The object to load: the debug one with `debug`.
pub(super) fn object(debug: bool) -> &'static [u8] {
    if debug { DEBUG_OBJECT } else { OBJECT }
}

/// What went wrong in the eBPF data plane. Each variant keeps aya's error as its source:
/// when the kernel rejects a program, [`ProgramError`]'s message carries the verifier log,
/// so printing the chain (as `main` does) shows it.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("cannot load netplane's eBPF object into the kernel")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(String),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cannot load program `{program}` into the kernel")]
    Load {
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot attach `{program}` to {device} ({hook})")]
    Attach {
        program: String,
        device: String,
        hook: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Taking over the link an earlier `up` pinned, or handing a new one to its pin.
    #[error("cannot keep the link of `{program}` on {device}")]
    Link {
        program: String,
        device: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error("cannot detach `{program}` from {device}")]
    Detach {
        program: String,
        device: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot pin {}", .path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<PinError>,
    },
    #[error("cannot run `{program}` with BPF_PROG_TEST_RUN")]
    TestRun {
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot access map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("no cgroup v2 mount in /proc/self/mountinfo")]
    NoCgroup2,
    #[error("cannot {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read this network namespace's cookie (SO_NETNS_COOKIE)")]
    NetnsCookie(#[source] std::io::Error),
}

impl EbpfError {
    /// The error of loading program `program`, for `map_err`.
    pub(super) fn load(program: &str) -> impl FnOnce(ProgramError) -> EbpfError {
        let program = program.to_owned();
        move |source| EbpfError::Load {
            program,
            source: source.into(),
        }
    }

    /// The error of map `map`, for `map_err`.
    pub(super) fn map(map: &'static str) -> impl Fn(MapError) -> EbpfError + Copy {
        move |source| EbpfError::Map {
            map,
            source: source.into(),
        }
    }
}

/// How to load the object.
#[derive(Default)]
pub(super) struct LoadOptions<'a> {
    /// Where the maps are pinned: existing pins are reused (the conntrack table survives),
    /// missing ones are created. `None`: private maps, gone with the object.
    pub pins: Option<&'a Path>,
    /// The capacity of each family's conntrack tables; `None`: the object's own. Pinned
    /// tables of another size are replaced, their entries copied (see
    /// conntrack::set_aside).
    pub conntrack: Option<CtCapacity>,
    /// Load [`DEBUG_OBJECT`], with aya-log at debug level.
    pub debug: bool,
}

/// Parses the embedded object and creates (or opens the pins of) its maps; the programs
/// are loaded into the kernel on demand, by their users. Mounts bpffs first if this host
/// has none.
pub(super) fn load(opts: &LoadOptions) -> Result<AyaEbpf, EbpfError> {
    crate::instance::phases::time("ebpf.object", || load_object(opts))
}

/// [`load`]'s work: the phase `ebpf.object` of `up --json` (parsing the object, loading
/// its BTF, creating or opening every map; aya's `EbpfLoader::load` does all three).
fn load_object(opts: &LoadOptions) -> Result<AyaEbpf, EbpfError> {
    bpffs::ensure_mounted(Path::new(bpffs::DEFAULT_PATH))?;
    let mut loader = EbpfLoader::new();
    let mut resized = Vec::new();
    if let Some(capacity) = &opts.conntrack {
        for table in conntrack::TABLES {
            loader.map_max_entries(table, capacity.of_table(table));
        }
        if let Some(dir) = opts.pins {
            resized = conntrack::set_aside(dir, capacity)?;
        }
    }
    if let Some(dir) = opts.pins {
        replace_stale_layouts(dir);
    }
    let paths: Vec<(&str, PathBuf)> = opts
        .pins
        .map(|dir| maps::PINNED.iter().map(|m| (*m, dir.join(m))).collect())
        .unwrap_or_default();
    for (m, p) in &paths {
        loader.map_pin_path(m, p.as_path());
    }
    if opts.debug {
        // The level is read-only data (aya freezes .rodata), so the verifier sees it as a
        // constant and keeps only the sites at or above it. Not required: a prebuilt
        // default object may stand for the debug one (see build.rs).
        loader.override_global(aya_log::LEVEL, &(aya_log::Level::Debug as u8), false);
    }
    let mut bpf = match loader.load(object(opts.debug)) {
        Ok(bpf) => bpf,
        Err(e) => {
            // The programs attached now keep the tables set aside: pin them back.
            if let Some(dir) = opts.pins {
                conntrack::put_back(dir, &resized);
            }
            return Err(EbpfError::Object(e.into()));
        }
    };
    if let (Some(dir), false) = (opts.pins, resized.is_empty()) {
        // Borrowed, not taken: the programs, loaded later, refer to the maps' descriptors.
        let mut tables: Vec<(&str, &mut aya::maps::Map)> = bpf
            .maps_mut()
            .filter(|(name, _)| conntrack::TABLES.contains(name))
            .collect();
        let (copied, lost) = conntrack::migrate(dir, &mut tables);
        tracing::info!(?resized, copied, lost, "conntrack tables resized");
        if lost > 0 {
            tracing::warn!(lost, "conntrack entries did not fit the resized tables");
        }
    }
    Ok(bpf)
}

/// The layout of every pinned map but the conntrack tables (which conntrack::set_aside
/// resizes with their entries), as this build's programs define it (netplane-ebpf's
/// maps.rs): (name, key size, value size, and for the arrays their number of entries).
fn layouts() -> Vec<(&'static str, u32, u32, Option<u32>)> {
    let mut all = vec![
        (maps::CONFIG, 4, size::<DpConfig>(), Some(1)),
        (maps::DROPS, 4, size::<Counters>(), Some(DROP_SLOTS)),
        (maps::FORWARDED, 4, 8, Some(forwarded::SLOTS)),
        (
            observe::maps::TRANSLATED,
            4,
            size::<Counters>(),
            Some(PATH_SLOTS),
        ),
        (observe::maps::NAT_STATS, 4, 8, Some(nat_stat::SLOTS)),
        (observe::maps::CT_STATS, 4, 8, Some(ct_stat::SLOTS)),
        // A ring buffer has no key or value; its max_entries is its size in bytes.
        (observe::maps::EVENTS, 0, 0, Some(EVENTS_BYTES)),
        (observe::maps::EVENTS_LOST, 4, 8, Some(1)),
    ];
    all.extend(family_layouts::<u32>());
    all.extend(family_layouts::<Ip6>());
    all
}

/// The size of the monitor's ring buffer, as netplane-ebpf's maps.rs defines it.
const EVENTS_BYTES: u32 = 256 * 1024;

fn size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// [`layouts`] of family `A`'s maps. An LPM trie's key is its 4-byte prefix length and
/// the address.
fn family_layouts<A: Family>() -> [(&'static str, u32, u32, Option<u32>); 10] {
    [
        (A::SUBNETS, 4 + size::<A>(), size::<NetInfo<A>>(), None),
        (A::NEVER_NAT, 4 + size::<A>(), 4, None),
        (A::LOCAL_ADDRS, size::<A>(), 4, None),
        (
            A::PUBLISHED,
            size::<PortKey<A>>(),
            size::<Backend<A>>(),
            None,
        ),
        (A::ROUTED_PORTS, size::<PortKey<A>>(), 4, None),
        (A::ENDPOINTS, size::<A>(), size::<Endpoint>(), None),
        (
            A::SOCK_REV,
            size::<SockRevKey<A>>(),
            size::<SockRevEntry<A>>(),
            None,
        ),
        (A::FRAGS, size::<FragKey<A>>(), size::<FragEntry<A>>(), None),
        (A::FRAGS_EARLY, size::<FragKey<A>>(), 4, None),
        (A::MASQ_PORTS, size::<CtKey<A>>(), 4, None),
    ]
}

/// Before a load with the pins of `dir`: unpins each map pinned by another build whose
/// layout is not this build's (a value that grew, a drop reason more), so that the load
/// creates it anew; aya reuses a pin without comparing its shape, and the verifier would
/// refuse the new programs on the old map (or a counter would count nowhere). These maps
/// hold settings that `up` writes whole after such a load, or caches and counters: nothing
/// is lost that matters. The programs still attached keep the old map until `up` swaps
/// them.
fn replace_stale_layouts(dir: &Path) {
    for (map, key, value, entries) in layouts() {
        let pin = dir.join(map);
        let Ok(info) = MapData::from_pin(&pin).and_then(|d| d.info()) else {
            continue;
        };
        let fits = info.key_size() == key
            && info.value_size() == value
            && entries.is_none_or(|n| info.max_entries() == n);
        if !fits {
            tracing::info!(
                map,
                "pinned by another build with another layout: made anew"
            );
            let _ = std::fs::remove_file(&pin);
        }
    }
}

/// The program `name` of `bpf`, as type `P`.
pub(super) fn program<'a, P>(bpf: &'a mut AyaEbpf, name: &str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    bpf.program_mut(name)
        .ok_or_else(|| EbpfError::MissingProgram(name.to_owned()))?
        .try_into()
        .map_err(EbpfError::load(name))
}

/// What identifies this build's object (the debug one with `debug`): recorded by `up`, so
/// that a later `up` of the same binary and flag knows the attached programs are current,
/// and one with the other flag loads the other object. The build script hashes each (FNV-1a
/// of the bytes, and the length), once per build.
pub(super) fn stamp(debug: bool) -> &'static str {
    if debug {
        env!("NETPLANE_EBPF_DEBUG_STAMP")
    } else {
        env!("NETPLANE_EBPF_STAMP")
    }
}

#[cfg(test)]
mod tests {
    use super::{OBJECT, layouts};
    use netplane_common::nat::maps;

    #[test]
    fn the_stamp_is_the_objects_hash() {
        for debug in [false, true] {
            let object = super::object(debug);
            let want = format!("{:08x}-{}", crate::config::fnv1a_32(object), object.len());
            assert_eq!(super::stamp(debug), want);
        }
    }

    /// The default object has no log code: no aya-log ring buffer, no level (issue 16:
    /// without `--debug-datapath` the programs are today's, instruction for instruction).
    #[test]
    fn only_the_debug_object_logs() {
        let has = |object: &[u8], needle: &[u8]| object.windows(needle.len()).any(|w| w == needle);
        assert!(!has(OBJECT, b"AYA_LOGS"));
        assert!(!has(OBJECT, b"AYA_LOG_LEVEL"));
        if super::DEBUG_OBJECT == OBJECT {
            eprintln!("skipped the debug object: NETPLANE_EBPF_OBJECT stands for both");
            return;
        }
        assert!(has(super::DEBUG_OBJECT, b"AYA_LOGS"));
        assert!(has(super::DEBUG_OBJECT, b"AYA_LOG_LEVEL"));
    }

    #[test]
    fn every_pinned_map_has_a_known_layout() {
        let known: Vec<&str> = layouts().iter().map(|l| l.0).collect();
        for map in maps::PINNED {
            assert!(
                known.contains(&map) || super::conntrack::TABLES.contains(&map),
                "{map}: no layout (see object::replace_stale_layouts)"
            );
        }
    }

    /// netplane does no CO-RE: the programs read `__sk_buff` context fields, never a kernel
    /// struct. That is what lets the patched aya (vendor/VENDOR.md) skip parsing the
    /// kernel's BTF (~6 MB of /sys/kernel/btf/vmlinux) on every load; with a BTF relocation
    /// in the object, that parse, and its cost on each cold `up`, would come back.
    #[test]
    fn the_object_has_no_btf_relocations() {
        for debug in [false, true] {
            let obj = aya_obj::Object::parse(super::object(debug)).expect("the object parses");
            assert!(
                !obj.has_btf_relocations(),
                "the {} object has BTF (CO-RE) relocations",
                if debug { "debug" } else { "default" }
            );
        }
    }

    #[test]
    fn embedded_object_is_a_bpf_elf_with_classifiers() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        assert_eq!(OBJECT[4], 2, "ELFCLASS64");
        assert_eq!(OBJECT[5], 1, "little-endian (bpfel)");
        // e_machine, at offset 18: EM_BPF = 247 (include/uapi/linux/elf-em.h).
        assert_eq!(u16::from_le_bytes([OBJECT[18], OBJECT[19]]), 247);
        let has = |needle: &[u8]| OBJECT.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"classifier\0"), "a TC classifier section");
        assert!(has(b"netplane_count_ingress\0") && has(b"netplane_count_egress\0"));
        assert!(has(b".BTF\0"), "BTF, which aya needs for the maps' types");
    }
}
