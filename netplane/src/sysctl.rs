//! The few sysctls netplane changes, in the network namespace it runs in. `/proc/sys/net`
//! resolves to the reading process's own netns, so a sandboxed netplane never touches the
//! root namespace's values.
//!
//! [`shared`]: the ones every instance in a namespace relies on (`ip_forward`), restored
//! only when the last of them goes.

pub mod shared;

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}: {source}")]
pub struct SysctlError {
    pub key: String,
    pub source: io::Error,
}

fn file(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(file(key))
        .map(|v| v.trim().to_owned())
        .map_err(|source| SysctlError {
            key: key.into(),
            source,
        })
}

pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(file(key), value).map_err(|source| SysctlError {
        key: key.into(),
        source,
    })
}
