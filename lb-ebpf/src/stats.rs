//! Per-CPU counters. Plain increments: every CPU owns its copy, the controller sums them.

use aya_ebpf::programs::XdpContext;
use lb_common::{BackendCpu, Opened, Reason, TrafficCounters};

use crate::maps::{COUNTERS, LISTENER_STATS, backend_cpu, backend_cpu_reply};

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

/// Takes back a `count` of `reason` on this CPU (an event the packet turned out not to
/// be).
#[inline(always)]
pub fn uncount(reason: Reason) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *c = (*c).wrapping_sub(1) };
    }
}

/// Applies `f` to counters only this CPU writes (a per-CPU map value, or this CPU's
/// record of a backend), when the lookup found them.
#[inline(always)]
fn update<T>(ptr: Option<*mut T>, f: impl FnOnce(&mut T)) {
    if let Some(c) = ptr {
        // SAFETY: this CPU's value; only this CPU writes it while the program runs.
        f(unsafe { &mut *c });
    }
}

#[inline(always)]
pub fn listener(id: u32, f: impl FnOnce(&mut TrafficCounters)) {
    update(LISTENER_STATS.get_ptr_mut(id), f);
}

/// One client → backend packet of `bytes` (IP length) forwarded for a listener and
/// backend.
#[inline(always)]
pub fn forwarded(listener_id: u32, backend_id: u32, bytes: u64) {
    forwarded_with(listener_id, backend_cpu(backend_id), bytes);
}

/// `forwarded` with the backend's record already looked up (`maps::backend_cpu`).
#[inline(always)]
pub fn forwarded_with(listener_id: u32, record: Option<*mut BackendCpu>, bytes: u64) {
    listener(listener_id, |c| {
        c.packets += 1;
        c.bytes += bytes;
    });
    update(record, |c| {
        c.packets += 1;
        c.bytes += bytes;
    });
}

/// One backend → client packet of `bytes` (IP length) forwarded for a listener and
/// backend: counted in the backend's other record, which client packets do not touch.
#[inline(always)]
pub fn replied(listener_id: u32, backend_id: u32, bytes: u64) {
    listener(listener_id, |c| {
        c.reply_packets += 1;
        c.reply_bytes += bytes;
    });
    update(backend_cpu_reply(backend_id), |c| {
        c.reply_packets += 1;
        c.reply_bytes += bytes;
    });
}

/// A flow opened on a backend of a listener. Each of the backend's records is written
/// only if the opening counts something there.
#[inline(always)]
pub fn opened(listener_id: u32, backend_id: u32, how: Opened) {
    listener(listener_id, |c| c.opened(how));
    let (new_flows, pickups, reselected) = how.counts();
    if pickups + reselected != 0 {
        update(backend_cpu_reply(backend_id), |c| c.opened(how));
    }
    if new_flows != 0 {
        update(backend_cpu(backend_id), |c| c.opened(how));
    }
}
