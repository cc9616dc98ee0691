//! Batch operations on hash maps, which aya 0.14 does not have: BPF_MAP_LOOKUP_BATCH,
//! BPF_MAP_DELETE_BATCH and BPF_MAP_UPDATE_BATCH (Linux 5.6, htab_map_lookup_batch() and
//! generic_map_{delete,update}_batch() in kernel/bpf/{hashtab,syscall}.c).
//!
//! aya's map iterator costs two syscalls per entry (BPF_MAP_GET_NEXT_KEY, then
//! BPF_MAP_LOOKUP_ELEM), and a delete one more: a garbage collection of a million-entry
//! conntrack table was millions of syscalls every 5 s. A batch reads [`CHUNK`] entries per
//! syscall and returns to user space after each, so a long walk still yields the CPU
//! between chunks (this kernel is PREEMPT_NONE: one syscall is not preempted).

use std::io;
use std::mem::{self, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::Pod;
use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Entries per batch: 4096 × (16 + 24) B of IPv4 conntrack entries, 160 KB of buffers.
pub(super) const CHUNK: usize = 4096;

/// bpf(2) with `attr`, whose `batch` member the caller filled.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`; the buffers it points at outlive the
    // call and have the sizes its `count` and the map's key and value sizes say.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A `bpf_attr` for a batch call on map `fd` over `count` elements.
fn batch_attr(fd: BorrowedFd<'_>, count: usize) -> bpf_attr {
    // SAFETY: bpf_attr is plain data, for which all zeroes is the kernel's "unset".
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.batch.map_fd = fd.as_raw_fd() as u32;
    attr.batch.count = count as u32;
    attr
}

/// The key and value sizes of `map`, which must be those of `K` and `V`: the kernel packs
/// the elements `key_size` / `value_size` bytes apart.
fn check_layout<K, V>(map: &MapData) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map of {}-byte keys and {}-byte values, read as {} and {}",
                info.key_size(),
                info.value_size(),
                size_of::<K>(),
                size_of::<V>()
            ),
        ));
    }
    Ok(())
}

/// Where a walk of a hash map stands: the kernel's cursor (a bucket index), or done.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    Start,
    At(u32),
    Done,
}

/// Reads up to `keys.len()` entries of hash map `fd` from `cursor` with
/// BPF_MAP_LOOKUP_BATCH. Returns how many it read and where the walk goes on.
fn lookup_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    cursor: Cursor,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, Cursor)> {
    // The hash map's cursor is a u32 bucket index (htab_map_lookup_batch()).
    let mut in_batch = match cursor {
        Cursor::Start => 0,
        Cursor::At(at) => at,
        Cursor::Done => return Ok((0, Cursor::Done)),
    };
    let mut out_batch = 0u32;
    let mut attr = batch_attr(fd, keys.len().min(values.len()));
    // A null in_batch starts the walk.
    if matches!(cursor, Cursor::At(_)) {
        attr.batch.in_batch = &mut in_batch as *mut u32 as u64;
    }
    attr.batch.out_batch = &mut out_batch as *mut u32 as u64;
    attr.batch.keys = keys.as_mut_ptr() as u64;
    attr.batch.values = values.as_mut_ptr() as u64;
    let result = sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
    // SAFETY: as in batch_attr; the kernel wrote back how many it copied.
    let count = unsafe { attr.batch.count } as usize;
    match result {
        Ok(()) => Ok((count, Cursor::At(out_batch))),
        // The last batch: ENOENT, with what it read (htab_map_lookup_batch()).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((count, Cursor::Done)),
        Err(e) => Err(e),
    }
}

/// Walks every entry of hash map `map`, [`CHUNK`] at a time, handing each chunk to `f`
/// (which may delete what it was handed: the walk's cursor is past it). An entry added or
/// deleted during the walk may be seen or not, as with aya's iterator.
///
/// # Errors
/// When the map's layout is not `K`/`V`, or a batch call fails (EINVAL before Linux 5.6).
pub(super) fn for_each_chunk<K: Pod, V: Pod>(
    map: &MapData,
    mut f: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    check_layout::<K, V>(map)?;
    let fd = map.fd().as_fd();
    let mut size = CHUNK;
    // SAFETY: K and V are Pod: all zeroes is a value of each.
    let (mut keys, mut values) = unsafe {
        (
            vec![mem::zeroed::<K>(); size],
            vec![mem::zeroed::<V>(); size],
        )
    };
    let mut cursor = Cursor::Start;
    while !matches!(cursor, Cursor::Done) {
        match lookup_batch(fd, cursor, &mut keys, &mut values) {
            Ok((n, next)) => {
                if n > 0 {
                    f(&keys[..n], &values[..n]);
                }
                cursor = next;
            }
            // One bucket holds more than the buffers: bigger ones, from the same cursor.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < 1 << 20 => {
                size *= 2;
                // SAFETY: as above.
                unsafe {
                    keys.resize(size, mem::zeroed());
                    values.resize(size, mem::zeroed());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Every entry of hash map `map`, read in batches.
///
/// # Errors
/// As [`for_each_chunk`].
pub(super) fn entries<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let mut all = Vec::new();
    for_each_chunk::<K, V>(map, |keys, values| {
        all.extend(keys.iter().copied().zip(values.iter().copied()));
    })?;
    Ok(all)
}

/// Deletes `keys` from map `map` with BPF_MAP_DELETE_BATCH. A key already gone (the data
/// path or another collector took it) stops a batch with ENOENT after the ones before it
/// (generic_map_delete_batch()): it is skipped, and the rest go on. Returns how many went.
///
/// # Errors
/// When a batch fails otherwise.
pub(super) fn delete<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<usize> {
    let fd = map.fd().as_fd();
    let (mut deleted, mut at) = (0, 0);
    while at < keys.len() {
        let rest = &keys[at..];
        let mut attr = batch_attr(fd, rest.len());
        attr.batch.keys = rest.as_ptr() as u64;
        let result = sys_bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr);
        // SAFETY: as in batch_attr.
        let done = unsafe { attr.batch.count } as usize;
        deleted += done;
        at += done;
        match result {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Writes `keys` with `values` into map `map` with BPF_MAP_UPDATE_BATCH, with `flags` for
/// each element (0, or BPF_F_LOCK: generic_map_update_batch() refuses the others). Stops
/// at the first element the kernel refuses (E2BIG: the map is full). Returns how many
/// were written, and the error that stopped it, if any.
pub(super) fn update<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    flags: u64,
) -> (usize, Option<io::Error>) {
    if let Err(e) = check_layout::<K, V>(map) {
        return (0, Some(e));
    }
    let fd = map.fd().as_fd();
    let mut written = 0;
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = batch_attr(fd, keys.len().min(values.len()));
        attr.batch.keys = keys.as_ptr() as u64;
        attr.batch.values = values.as_ptr() as u64;
        attr.batch.elem_flags = flags;
        let result = sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr);
        // SAFETY: as in batch_attr.
        written += unsafe { attr.batch.count } as usize;
        if let Err(e) = result {
            return (written, Some(e));
        }
    }
    (written, None)
}
