//! Per-CPU counters. Plain increments: every CPU owns its copy, the controller sums them.

use aya_ebpf::programs::XdpContext;
use lb_common::{Reason, TrafficCounters};

use crate::maps::{BACKEND_STATS, COUNTERS, LISTENER_STATS};

/// The end of every program: counts the verdict under its reason, returns the action.
#[inline(always)]
pub fn finish(ctx: &XdpContext, (action, reason): (u32, Reason)) -> u32 {
    count(reason);
    // Per-packet logging exists only in builds that ask for it (LB_EBPF_DEBUG_LOG=1 at
    // build time): it costs more than the rest of the program.
    #[cfg(feature = "debug-log")]
    aya_log_ebpf::debug!(ctx, "verdict {} reason {}", action, reason as u32);
    #[cfg(not(feature = "debug-log"))]
    let _ = ctx;
    action
}

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn update(ptr: Option<*mut TrafficCounters>, f: impl FnOnce(&mut TrafficCounters)) {
    if let Some(c) = ptr {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        f(unsafe { &mut *c });
    }
}

#[inline(always)]
pub fn listener(id: u32, f: impl FnOnce(&mut TrafficCounters)) {
    update(LISTENER_STATS.get_ptr_mut(id), f);
}

#[inline(always)]
pub fn backend(id: u32, f: impl FnOnce(&mut TrafficCounters)) {
    update(BACKEND_STATS.get_ptr_mut(id), f);
}

/// One packet of `bytes` (IP length) forwarded for a listener and backend, in the client →
/// backend direction or as a reply.
#[inline(always)]
pub fn forwarded(listener_id: u32, backend_id: u32, bytes: u64, reply: bool) {
    let add = |c: &mut TrafficCounters| {
        if reply {
            c.reply_packets += 1;
            c.reply_bytes += bytes;
        } else {
            c.packets += 1;
            c.bytes += bytes;
        }
    };
    listener(listener_id, add);
    backend(backend_id, add);
}
