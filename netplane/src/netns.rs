//! Named network namespaces, made the way `ip netns add` makes them: a namespace file under
//! /run/netns bind-mounted from the creating thread's /proc/thread-self/ns/net.
//!
//! The bind mount is made in the caller's mount namespace, so a namespace created by
//! `nsenter --net=… netplane up` is visible to everyone. (Under `ip netns exec`, which gives
//! its child a private mount namespace, it would not be: see `netplane --help`.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub const RUN_DIR: &str = "/run/netns";
/// `NSFS_MAGIC` from include/uapi/linux/magic.h: what a live namespace file is mounted as.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot prepare {RUN_DIR}: {source}")]
    RunDir { source: nix::Error },
    #[error("netns {name}: cannot {step}: {source}")]
    Step {
        name: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("netns {name} does not exist")]
    Missing { name: String },
}

/// The file of namespace `name`: under /run/netns, or `name` itself when it is a path
/// (a container runtime's namespace, as CNI's `CNI_NETNS` gives it).
pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// Whether `name` is a live named namespace (the file exists and is an nsfs mount).
pub fn exists(name: &str) -> bool {
    nix::sys::statfs::statfs(&path(name)).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Creates the named namespace with `lo` down (callers bring it up over netlink).
/// Returns `Ok(false)` when it already existed.
pub fn create(name: &str) -> Result<bool, NetnsError> {
    if exists(name) {
        return Ok(false);
    }
    let step = |step: &'static str| {
        move |source| NetnsError::Step {
            name: name.into(),
            step,
            source,
        }
    };
    prepare_run_dir()?;
    let file = path(name);
    // A stale file (left by a crash between create and bind mount) is reused.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o000)
        .open(&file)
        .map_err(step("create its file"))?;
    // unshare(CLONE_NEWNET) moves only the calling thread, so a scoped thread makes the
    // namespace and pins it with the bind mount; this thread's namespace never changes.
    let res = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &file,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .expect("netns thread does not panic")
    });
    if let Err(e) = res {
        let _ = std::fs::remove_file(&file);
        return Err(step("bind-mount it")(e));
    }
    Ok(true)
}

/// Deletes the named namespace. Returns `Ok(false)` when it was already gone. Processes
/// still inside keep the namespace alive; its interfaces go when the last one leaves.
pub fn delete(name: &str) -> Result<bool, NetnsError> {
    let file = path(name);
    if !file.exists() {
        return Ok(false);
    }
    match umount2(&file, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {} // EINVAL: not mounted (stale file)
        Err(e) => {
            return Err(NetnsError::Step {
                name: name.into(),
                step: "unmount it",
                source: e.into(),
            });
        }
    }
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(NetnsError::Step {
            name: name.into(),
            step: "remove its file",
            source,
        }),
    }
}

/// Opens the namespace file, for `setns` or for netlink's `IFLA_NET_NS_FD`.
pub fn open(name: &str) -> Result<File, NetnsError> {
    if !exists(name) {
        return Err(NetnsError::Missing { name: name.into() });
    }
    File::open(path(name)).map_err(|source| NetnsError::Step {
        name: name.into(),
        step: "open it",
        source,
    })
}

/// Runs `f` on a thread that has joined namespace `name`; the caller's thread stays put.
pub fn run_in<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
    let file = open(name)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            join(name, &file)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Like [`run_in`], without waiting: runs `f` on a new thread that has joined namespace
/// `name`, for work that outlives the caller's scope (servers, load generators). Returns
/// once that thread is inside, so the name may be deleted from then on: the thread keeps
/// the namespace alive.
pub fn spawn_in<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<JoinHandle<R>, NetnsError> {
    let file = open(name)?;
    let (joined_tx, joined_rx) = std::sync::mpsc::sync_channel(1);
    let owned = name.to_owned();
    let thread = std::thread::spawn(move || {
        let joined = join(&owned, &file);
        let failed = joined.is_err();
        let _ = joined_tx.send(joined);
        if failed {
            // The error went to the caller; end without running `f` (and, unlike
            // panic!, without printing anything).
            std::panic::resume_unwind(Box::new(()));
        }
        f()
    });
    match joined_rx
        .recv()
        .expect("the thread reports before anything else")
    {
        Ok(()) => Ok(thread),
        Err(e) => {
            let _ = thread.join();
            Err(e)
        }
    }
}

/// Moves the calling thread, and only it (setns(2) acts per thread), into the namespace.
fn join(name: &str, file: &File) -> Result<(), NetnsError> {
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Step {
        name: name.into(),
        step: "enter it",
        source: e.into(),
    })
}

/// Moves the whole (single-threaded) process into namespace `name` for `exec`, with a
/// private mount namespace whose /sys shows that namespace's devices, as `ip netns exec`
/// does (sysfs shows the netns of whoever mounted it).
pub fn enter_for_exec(name: &str) -> Result<(), NetnsError> {
    let file = open(name)?;
    let step = |step: &'static str| {
        move |e: nix::Error| NetnsError::Step {
            name: name.into(),
            step,
            source: e.into(),
        }
    };
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(step("enter it"))?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare the mount namespace"))?;
    // Keep our remount of /sys from propagating back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("make / a slave mount"))?;
    umount2("/sys", MntFlags::MNT_DETACH).map_err(step("unmount /sys"))?;
    mount(
        Some(name),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(step("mount its sysfs"))?;
    Ok(())
}

/// /run/netns must be a shared mount so that namespace bind mounts made here propagate to
/// other mount namespaces (what iproute2's netns_add() ensures too).
fn prepare_run_dir() -> Result<(), NetnsError> {
    let err = |source| NetnsError::RunDir { source };
    std::fs::create_dir_all(RUN_DIR)
        .map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    let share = || {
        mount(
            Some("none"),
            RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself first.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(RUN_DIR),
                RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(err)?;
            share().map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14):
/// unlike the namespace's inode, never reused while the system runs. The socket-layer
/// programs compare it with bpf_get_netns_cookie(); host-wide records are keyed by it.
/// A socket is created in the creating task's namespace (sock_create() uses
/// current->nsproxy->net_ns), so this is right on a thread that entered another
/// namespace with setns too, where /proc/self/ns/net would name the main thread's.
pub fn cookie() -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; the fd is owned at once, and getsockopt writes at most
    // `len` bytes into `cookie`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        if libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(cookie)
    }
}
