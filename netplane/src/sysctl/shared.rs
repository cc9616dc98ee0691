//! Sysctls that every instance in a network namespace shares (`net.ipv4.ip_forward`),
//! with the instances that rely on each: the value from before the first of them is
//! restored only when the last one goes. Each instance recording and restoring on its own
//! turned forwarding off under a second instance at the first `down`, and left it on
//! after both.
//!
//! One record per network namespace, `/run/netplane/.host/<netns cookie>.json`, changed
//! only under the flock of `/run/netplane/.host/` ([`DirLock`]). /run/netplane is
//! one directory for every namespace netplane runs in on this host, while sysctls under
//! `net.` are per namespace, so the record is keyed by the namespace's cookie (SO_NETNS_COOKIE): unlike
//! its inode number, a cookie is never reused while the machine runs (net_alloc_cookie()
//! counts up), so a record left by a namespace that died cannot be taken for a new one's.
//! The record is written before a value changes, so a `down` after a crashed `up` still
//! finds what to restore. An instance whose state is gone without a `down` (its
//! namespace deleted under it) is forgotten by the next `up` or `down` of any instance, so
//! records do not pile up. A leading dot keeps `.host` out of the instance names' space.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SysctlError;
use crate::lock::{self, DirLock, LockError};
use crate::state::{RUN_DIR, State};

/// Where the records of every namespace live, and the directory that is locked.
fn dir() -> PathBuf {
    PathBuf::from(RUN_DIR).join(".host")
}

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("cannot read this network namespace's cookie (SO_NETNS_COOKIE): {0}")]
    NetnsCookie(io::Error),
    #[error("shared sysctl record {path}: {source}")]
    Record { path: String, source: io::Error },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
}

/// Whether `key` is shared by the whole namespace: the namespace-wide settings
/// (`net.ipv4.ip_forward`, `….conf.all.…`, `….conf.default.…`). Anything else (a
/// device's settings, `net.ipv4.conf.<device>.…`) belongs to the instance owning the
/// device, and goes with it.
pub fn is_shared(key: &str) -> bool {
    const NAMESPACE_WIDE: &[&str] = &["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];
    NAMESPACE_WIDE.contains(&key)
        || ["net.ipv4.conf.", "net.ipv6.conf."].iter().any(|p| {
            key.strip_prefix(p)
                .is_some_and(|rest| rest.starts_with("all.") || rest.starts_with("default."))
        })
}

/// Writes a prior value back; a setting that is gone (its device went) needs nothing.
fn restore(key: &str, prior: &str) -> Result<(), SysctlError> {
    match super::write(key, prior) {
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// One shared sysctl in one namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Entry {
    /// Its value before the first instance that holds it.
    prior: String,
    /// The instances that rely on it.
    instances: BTreeSet<String>,
}

/// The record of one network namespace.
struct Record {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl Record {
    fn load(path: PathBuf) -> Result<Record, SharedError> {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        };
        match entries {
            Ok(entries) => Ok(Record { path, entries }),
            // An unreadable record must not block every `up` and `down` here: set it
            // aside for whoever investigates, and start anew.
            Err(source) if source.kind() == io::ErrorKind::InvalidData => {
                let aside = path.with_extension("json.unreadable");
                tracing::warn!(
                    "shared sysctl record {} is unreadable ({source}); moved to {}",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(&path, &aside);
                Ok(Record {
                    path,
                    entries: BTreeMap::new(),
                })
            }
            Err(source) => Err(SharedError::Record {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes atomically; an empty record is removed.
    fn save(&self) -> Result<(), SharedError> {
        let record_err = |source| SharedError::Record {
            path: self.path.display().to_string(),
            source,
        };
        if self.entries.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(record_err(e)),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.entries).expect("record serializes");
        std::fs::write(&tmp, bytes).map_err(record_err)?;
        std::fs::rename(&tmp, &self.path).map_err(record_err)
    }

    /// Forgets the instances that went without a `down`: their state is gone (removed by
    /// hand, or with a namespace deleted under them). An instance holds a setting only
    /// while it has a state: `up` writes the state before [`hold`], `down` calls
    /// [`release`] before it removes the state. Returns the settings nobody holds now,
    /// with their prior values, and drops them.
    fn forget_vanished(&mut self) -> Vec<(String, String)> {
        for e in self.entries.values_mut() {
            e.instances.retain(|i| State::exists(i));
        }
        let orphans = self
            .entries
            .iter()
            .filter(|(_, e)| e.instances.is_empty())
            .map(|(k, e)| (k.clone(), e.prior.clone()))
            .collect();
        self.entries.retain(|_, e| !e.instances.is_empty());
        orphans
    }
}

/// Locks the records, for `instance` (named to whoever waits), and returns this
/// namespace's. On the way, every record forgets the instances that vanished (see
/// [`Record::forget_vanished`]): another namespace's forgotten settings are left as they
/// are (that namespace is most likely gone), this one's are restored, as the vanished
/// instance's `down` would have.
fn open(instance: &str) -> Result<(Record, DirLock), SharedError> {
    let own = dir().join(format!(
        "{}.json",
        crate::netns::cookie().map_err(SharedError::NetnsCookie)?
    ));
    let lock = DirLock::acquire(
        &dir(),
        "the shared sysctl record",
        &format!("netplane, instance {instance}"),
        lock::timeout(),
    )?;
    let others = std::fs::read_dir(dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| *p != own && p.extension().is_some_and(|x| x == "json"));
    // Best effort: another namespace's bookkeeping must never block this one's `down`.
    for path in others {
        if let Ok(mut record) = Record::load(path) {
            let before = record.entries.clone();
            record.forget_vanished();
            if record.entries != before
                && let Err(e) = record.save()
            {
                tracing::warn!("{e}");
            }
        }
    }
    // This namespace's record is saved by the caller.
    let mut record = Record::load(own)?;
    for (key, prior) in record.forget_vanished() {
        if let Err(e) = restore(&key, &prior) {
            tracing::warn!("restoring {key} for a vanished instance: {e}");
        }
    }
    Ok((record, lock))
}

/// A shared sysctl that [`hold`] set for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    pub value: String,
    /// The instance did not hold it before this call (a rollback releases only these).
    pub newly: bool,
    /// The value was written (it differed).
    pub changed: bool,
}

/// Records that `instance` relies on each (key, value), with the prior value when it is
/// the first, then sets the values that differ.
pub fn hold(instance: &str, wanted: &[(String, String)]) -> Result<Vec<Held>, SharedError> {
    let (mut record, _lock) = open(instance)?;
    let mut held = Vec::new();
    for (key, value) in wanted {
        if !record.entries.contains_key(key) {
            let prior = super::read(key)?;
            record.entries.insert(
                key.clone(),
                Entry {
                    prior,
                    instances: BTreeSet::new(),
                },
            );
        }
        let entry = record.entries.get_mut(key).expect("inserted above");
        let newly = entry.instances.insert(instance.to_owned());
        held.push(Held {
            key: key.clone(),
            value: value.clone(),
            newly,
            changed: false,
        });
    }
    // Journal first: a crash after this line leaves a record that `down` restores from.
    record.save()?;
    for h in &mut held {
        if super::read(&h.key)? != h.value {
            super::write(&h.key, &h.value)?;
            h.changed = true;
        }
    }
    Ok(held)
}

/// What [`release`] did with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// `instance` was the last: the prior value is back.
    Restored { key: String, value: String },
    /// Other instances still rely on it: left as it is.
    StillHeld { key: String, by: Vec<String> },
}

/// Lets go of the shared sysctls `instance` holds (only `keys`, when given); restores
/// each that no other instance holds. Keys it does not hold are ignored.
pub fn release(instance: &str, keys: Option<&[String]>) -> Result<Vec<Released>, SharedError> {
    let (mut record, _lock) = open(instance)?;
    let mut released = Vec::new();
    let mut restore = Vec::new();
    for (key, entry) in &mut record.entries {
        if keys.is_some_and(|k| !k.contains(key)) || !entry.instances.remove(instance) {
            continue;
        }
        if entry.instances.is_empty() {
            restore.push((key.clone(), entry.prior.clone()));
        } else {
            released.push(Released::StillHeld {
                key: key.clone(),
                by: entry.instances.iter().cloned().collect(),
            });
        }
    }
    // Every key is let go and the record saved whatever fails, so that `down` finishes;
    // the first failure is reported after.
    let mut failed = None;
    for (key, prior) in restore {
        record.entries.remove(&key);
        match self::restore(&key, &prior) {
            Ok(()) => released.push(Released::Restored { key, value: prior }),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    record.save()?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(released),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_settings_are_not_shared() {
        assert!(is_shared("net.ipv4.ip_forward"));
        assert!(is_shared("net.ipv4.conf.all.route_localnet"));
        assert!(is_shared("net.ipv4.conf.default.rp_filter"));
        assert!(!is_shared("net.ipv4.conf.npa.route_localnet"));
        assert!(!is_shared("net.ipv4.neigh.npa.gc_stale_time"));
        assert!(!is_shared("net.ipv6.conf.npa.accept_ra"));
    }
}
