//! Per-CPU counters. Plain increments: every CPU owns its copy, the controller sums them.

use aya_ebpf::programs::XdpContext;
use lb_common::{BackendCpu, Reason, TrafficCounters};

use crate::maps::{COUNTERS, LISTENER_STATS, backend_cpu};

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

/// Applies `f` to counters only this CPU writes (a per-CPU map value, or this CPU's
/// `BackendCpu` record), when the lookup found them.
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

/// A backend's counters, in this CPU's `BackendCpu` record.
#[inline(always)]
pub fn backend(id: u32, f: impl FnOnce(&mut BackendCpu)) {
    update(backend_cpu(id), f);
}

/// One packet of `bytes` (IP length) forwarded for a listener and backend, in the client →
/// backend direction or as a reply.
#[inline(always)]
pub fn forwarded(listener_id: u32, backend_id: u32, bytes: u64, reply: bool) {
    forwarded_with(listener_id, backend_cpu(backend_id), bytes, reply);
}

/// `forwarded` with the backend's record already looked up (`maps::backend_cpu`).
#[inline(always)]
pub fn forwarded_with(listener_id: u32, record: Option<*mut BackendCpu>, bytes: u64, reply: bool) {
    listener(listener_id, |c| c.forwarded(bytes, reply));
    update(record, |c| c.forwarded(bytes, reply));
}

/// The counts a listener's `TrafficCounters` and a backend's `BackendCpu` both keep, under
/// the same field names.
pub trait Counts {
    /// One packet of `bytes` forwarded, client → backend or as a reply.
    fn forwarded(&mut self, bytes: u64, reply: bool);
    /// A flow opened: by the scheduler or a pickup, and moved off an unusable backend.
    fn opened(&mut self, pickup: bool, reselected: bool);
}

macro_rules! counts {
    ($t:ty) => {
        impl Counts for $t {
            #[inline(always)]
            fn forwarded(&mut self, bytes: u64, reply: bool) {
                if reply {
                    self.reply_packets += 1;
                    self.reply_bytes += bytes;
                } else {
                    self.packets += 1;
                    self.bytes += bytes;
                }
            }

            #[inline(always)]
            fn opened(&mut self, pickup: bool, reselected: bool) {
                if pickup {
                    self.pickups += 1;
                } else {
                    self.new_flows += 1;
                }
                if reselected {
                    self.reselected += 1;
                }
            }
        }
    };
}
counts!(TrafficCounters);
counts!(BackendCpu);
