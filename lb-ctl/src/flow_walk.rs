//! Reading the whole flow table in batches (`BPF_MAP_LOOKUP_BATCH`).
//!
//! The controller walks the flow table to count active flows (for `wlc`, drains and
//! `status`). Key-by-key iteration costs two syscalls per entry (next key, then lookup):
//! seconds of CPU for a table of millions, while the data plane shares the table's cache
//! lines. A batch lookup returns thousands of entries per syscall. It also walks the hash
//! buckets in order, so an entry evicted or added during the walk cannot make the walk
//! start over (next-key iteration restarts from the first key when the key it stands on
//! has gone, and then sees entries twice).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData},
};
use lb_common::Flow;

/// Entries asked for per syscall: 4096 keys and values (48 bytes each for IPv4, 72 for
/// IPv6).
const BATCH: usize = 4096;

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// What the kernel answers for a map type without batch operations (`ENOTSUPP`, a
/// kernel-internal errno that libc does not name).
const KERNEL_ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`, as linux/bpf.h lays it out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Where the walk resumes: the `out_batch` of the previous call; 0 to start.
    in_batch: u64,
    /// Where the kernel writes the resume position.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room in `keys` and `values`; out: entries written.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// Calls `visit` with every entry of a flow table of either family (`FlowKey` or
/// `FlowKey6` keys). An entry present for the whole walk is seen exactly once; one added
/// or evicted meanwhile may or may not be. On a kernel without batch lookups for this map
/// type it falls back to key-by-key iteration.
pub fn for_each_flow<K: Pod + Default>(
    flows: &HashMap<MapData, K, Flow>,
    mut visit: impl FnMut(K, Flow),
) -> io::Result<()> {
    let fd = flows.map().fd().as_fd().as_raw_fd();
    let mut keys = vec![K::default(); BATCH];
    let mut values = vec![Flow::default(); BATCH];
    // The kernel's resume position for a hash map is a bucket index (4 bytes); 8 aligned
    // bytes leave room for any map type's.
    let mut position = [0u64; 1];
    let mut next_position = [0u64; 1];
    let mut started = false;
    loop {
        let mut attr = BatchAttr {
            in_batch: if started { position.as_ptr() as u64 } else { 0 },
            out_batch: next_position.as_mut_ptr() as u64,
            map_fd: fd as u32,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: keys.len() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` describes buffers that live across the call and hold `count`
        // keys and values of the map's key and value sizes (`K`, `Flow`); the
        // kernel writes at most that many, plus `count` and the resume position.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let got = (attr.count as usize).min(keys.len());
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            // The end of the table; the last entries came with it.
            Some(libc::ENOENT) => {
                keys[..got]
                    .iter()
                    .zip(&values[..got])
                    .for_each(|(k, v)| visit(*k, *v));
                return Ok(());
            }
            // One hash bucket holds more entries than the buffers: grow them and ask again.
            Some(libc::ENOSPC) if keys.len() < BATCH * 64 => {
                keys.resize(keys.len() * 2, K::default());
                values.resize(values.len() * 2, Flow::default());
                continue;
            }
            // No batch lookups here (kernels before 5.6): walk key by key.
            Some(libc::EINVAL | libc::EOPNOTSUPP | KERNEL_ENOTSUPP) if !started => {
                for (key, value) in flows.iter().filter_map(Result::ok) {
                    visit(key, value);
                }
                return Ok(());
            }
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        keys[..got]
            .iter()
            .zip(&values[..got])
            .for_each(|(k, v)| visit(*k, *v));
        position = next_position;
        started = true;
    }
}
