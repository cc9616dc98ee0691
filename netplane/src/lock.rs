//! One netplane at a time per instance: `up` and `down` hold an exclusive `flock(2)` on
//! the instance's state directory (`/run/netplane/<name>/`) from start to finish, so that
//! a second `up` converges on what the first built instead of racing it, and never
//! rolls back objects the first one uses. The second waits, up to
//! [`DEFAULT_TIMEOUT`] (or `NETPLANE_LOCK_TIMEOUT` seconds), then fails naming the holder.
//!
//! [`DirLock`] is the mechanism, also used for the host-wide record of shared sysctls
//! (`sysctl::shared`). An flock belongs to the open file description, so it is released
//! when the holder exits, even by SIGKILL, and never leaks into the agent that `up`
//! spawns (std opens files with `O_CLOEXEC`).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::state;

/// How long `up` and `down` wait for another netplane working on the same instance.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Overrides [`DEFAULT_TIMEOUT`], in seconds.
pub const TIMEOUT_ENV: &str = "NETPLANE_LOCK_TIMEOUT";

/// Who holds a lock, for the message of whoever waits: written into the locked directory.
const HOLDER_FILE: &str = "lock.holder";

/// How often a waiter tries again (flock has no timeout of its own). Short: a CNI
/// runtime's concurrent ADDs each hold the lock for a few milliseconds, and a waiter
/// should not sleep through several of them.
const POLL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{what} is busy: {holder} holds the lock on {path}; gave up after {waited:?} (set {TIMEOUT_ENV}=SECONDS to wait longer)"
    )]
    Busy {
        what: String,
        path: String,
        holder: String,
        waited: Duration,
    },
    #[error("lock {path}: cannot {call}: {source}")]
    Io {
        path: String,
        call: &'static str,
        source: io::Error,
    },
}

/// An exclusive flock on a directory, created if missing. On drop, the holder file goes,
/// and so does the directory if nothing else is left in it (a failed first `up` leaves no
/// trace), before the lock is released.
pub struct DirLock {
    dir: PathBuf,
    lock: Flock<File>,
}

impl DirLock {
    /// Locks `dir` for `holder` (a few words: `netplane up`), waiting up to `timeout`.
    /// `what` names the object for the error (`instance demo`).
    pub fn acquire(
        dir: &Path,
        what: &str,
        holder: &str,
        timeout: Duration,
    ) -> Result<DirLock, LockError> {
        let io_err = |call: &'static str| {
            move |source: io::Error| LockError::Io {
                path: dir.display().to_string(),
                call,
                source,
            }
        };
        let start = Instant::now();
        let mut announced = false;
        loop {
            std::fs::create_dir_all(dir).map_err(io_err("create"))?;
            let file = match File::open(dir) {
                Ok(f) => f,
                // Removed by the holder between our create and open: try again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open")(e)),
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    // The holder before us may have removed the directory (`down` does, as
                    // its last step): our lock is then on an orphan, and whoever creates
                    // the directory anew would not see it. Only a lock on the directory
                    // that the path names now counts.
                    let locked = lock.metadata().map_err(io_err("fstat"))?;
                    let current = std::fs::metadata(dir);
                    if !current.is_ok_and(|m| m.dev() == locked.dev() && m.ino() == locked.ino()) {
                        continue;
                    }
                    let entry = format!("pid {} ({holder})", std::process::id());
                    std::fs::write(dir.join(HOLDER_FILE), entry).map_err(io_err("write holder"))?;
                    return Ok(DirLock {
                        dir: dir.to_owned(),
                        lock,
                    });
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    let holder = std::fs::read_to_string(dir.join(HOLDER_FILE))
                        .unwrap_or_else(|_| "another process".to_owned());
                    if start.elapsed() >= timeout {
                        return Err(LockError::Busy {
                            what: what.to_owned(),
                            path: dir.display().to_string(),
                            holder,
                            waited: timeout,
                        });
                    }
                    if !announced {
                        tracing::info!("{what} is busy, held by {holder}: waiting");
                        announced = true;
                    }
                    std::thread::sleep(POLL);
                }
                Err((_, errno)) => return Err(io_err("flock")(errno.into())),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Only while the path still names the directory we locked: once our holder
        // removed it (`down` does), a waiter may have created and locked a new one there,
        // whose holder file and directory are not ours to remove.
        let ours = self
            .lock
            .metadata()
            .ok()
            .zip(std::fs::metadata(&self.dir).ok());
        if !ours.is_some_and(|(l, c)| l.dev() == c.dev() && l.ino() == c.ino()) {
            return;
        }
        let _ = std::fs::remove_file(self.dir.join(HOLDER_FILE));
        // Fails, as it should, while anything else is in it.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The lock of one instance, held by `up` and `down` (and whatever else changes the
/// instance) for their whole run.
pub struct InstanceLock {
    _held: DirLock,
    name: String,
}

impl InstanceLock {
    /// Locks instance `name` for `verb` (`up`, `down`), waiting up to the timeout.
    pub fn acquire(name: &str, verb: &str) -> Result<InstanceLock, LockError> {
        DirLock::acquire(
            &state::dir(name),
            &format!("instance {name}"),
            &format!("netplane {verb}"),
            timeout(),
        )
        .map(|held| InstanceLock {
            _held: held,
            name: name.to_owned(),
        })
    }

    /// The instance it locks.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// [`DEFAULT_TIMEOUT`], or `NETPLANE_LOCK_TIMEOUT` when it is a number of seconds.
pub fn timeout() -> Duration {
    match std::env::var(TIMEOUT_ENV) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or_else(|| {
                tracing::warn!(
                    "{TIMEOUT_ENV}={v:?} is not a number of seconds; waiting {DEFAULT_TIMEOUT:?}"
                );
                DEFAULT_TIMEOUT
            }),
        Err(_) => DEFAULT_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("netplane-lock-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_second_locker_waits_then_names_the_holder() {
        let dir = scratch("busy");
        let held = DirLock::acquire(&dir, "instance t", "netplane up", DEFAULT_TIMEOUT).unwrap();
        let err = DirLock::acquire(
            &dir,
            "instance t",
            "netplane down",
            Duration::from_millis(50),
        )
        .err()
        .expect("the lock is held");
        let msg = err.to_string();
        assert!(
            msg.starts_with("instance t is busy: pid ") && msg.contains("(netplane up)"),
            "{msg}"
        );
        drop(held);
        assert!(!dir.exists(), "an empty lock directory goes with the lock");
        drop(DirLock::acquire(&dir, "instance t", "netplane down", Duration::ZERO).unwrap());
    }

    #[test]
    fn a_lock_on_a_removed_directory_does_not_count() {
        let dir = scratch("removed");
        let first = DirLock::acquire(&dir, "instance t", "first", DEFAULT_TIMEOUT).unwrap();
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                DirLock::acquire(&dir, "instance t", "second", DEFAULT_TIMEOUT).unwrap()
            })
        };
        // The waiter has opened the directory and polls; the holder removes it (as `down`
        // does) and releases.
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        drop(first);
        let second = waiter.join().unwrap();
        assert!(dir.exists(), "the waiter locked a directory of that path");
        // A third locker must wait for the second: they share the directory.
        assert!(DirLock::acquire(&dir, "instance t", "third", Duration::from_millis(50)).is_err());
        drop(second);
        assert!(!dir.exists());
    }
}
