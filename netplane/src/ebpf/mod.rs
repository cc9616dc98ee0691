//! The embedded eBPF object and the userspace side of its programs.
//!
//! `build.rs` compiles `netplane-ebpf` and this module embeds the result, so the `netplane`
//! binary needs no files next to it.

pub mod counter;

use aya::programs::ProgramError;
use aya::{Ebpf, EbpfLoader};

/// The eBPF ELF object built from `netplane-ebpf` (see build.rs).
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netplane-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("cannot load netplane's eBPF object into the kernel")]
    Object(#[source] aya::EbpfError),
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The source's Display carries the verifier log when the kernel rejected the program.
    #[error("the kernel rejected program `{program}`")]
    Load {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("cannot attach `{program}` to {iface} ({hook})")]
    Attach {
        program: &'static str,
        iface: String,
        hook: &'static str,
        source: Box<ProgramError>,
    },
    #[error("cannot detach `{program}` from {iface}")]
    Detach {
        program: &'static str,
        iface: String,
        source: Box<ProgramError>,
    },
    #[error("cannot run `{program}` with BPF_PROG_TEST_RUN")]
    TestRun {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("cannot read map `{map}`")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error(transparent)]
    Bpffs(#[from] crate::bpffs::BpffsError),
}

/// Parses the embedded object and creates its maps (programs are loaded on demand).
pub fn open() -> Result<Ebpf, EbpfError> {
    crate::bpffs::ensure_mounted(std::path::Path::new(crate::bpffs::DEFAULT_PATH))?;
    EbpfLoader::new().load(OBJECT).map_err(EbpfError::Object)
}

#[cfg(test)]
mod tests {
    use super::OBJECT;

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
