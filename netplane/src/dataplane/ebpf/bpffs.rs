//! The BPF filesystem, where netplane pins maps and links so the data plane outlives the
//! process that loaded it.

use std::path::Path;

use nix::mount::{MsFlags, mount};

pub(super) const DEFAULT_PATH: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot inspect {path}")]
    Stat { path: String, source: nix::Error },
    #[error("cannot mount bpffs at {path} (needs CAP_SYS_ADMIN)")]
    Mount { path: String, source: nix::Error },
}

/// Mounts bpffs at `path` unless a bpffs is already there (a fresh machine may not have it).
pub(super) fn ensure_mounted(path: &Path) -> Result<(), BpffsError> {
    let shown = || path.display().to_string();
    if is_bpffs(path).map_err(|source| BpffsError::Stat {
        path: shown(),
        source,
    })? {
        return Ok(());
    }
    mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpffsError::Mount {
        path: shown(),
        source,
    })
}

fn is_bpffs(path: &Path) -> Result<bool, nix::Error> {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => Ok(st.filesystem_type().0 == BPF_FS_MAGIC),
        Err(nix::Error::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
