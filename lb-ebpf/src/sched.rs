//! The `wlc` stage, `lb_wlc`, and the active-flow counts `wlc` reads. Every other
//! scheduler is a table lookup inside the new-flow stage (`lb_common::decide::pick`).
//!
//! `wlc` scans a bounded window of `WLC_SCAN_MAX` backends. The scan is a loop, the
//! costliest thing to verify; as a program of its own it is verified once, from one
//! starting state, whatever the paths that lead to a new flow.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP, helpers::generated::bpf_loop, macros::xdp, programs::XdpContext,
};
use lb_common::{
    Listener, PENDING_F_SCANNED, Reason, STAGE_NEW_FLOW, STAGE_NEW_FLOW6,
    decide::{Tables as _, WlcScan},
};

use crate::{
    maps::{ACTIVE_FLOWS, PENDING, PENDING6},
    parse, stage, stats,
    tables::Maps,
};

/// The `wlc` stage: runs the scan, leaves its pick in the hand-off and goes back to the
/// new-flow stage.
#[xdp]
pub fn lb_wlc(ctx: XdpContext) -> u32 {
    let verdict = scan_stage(&ctx);
    stats::finish(&ctx, verdict)
}

/// Either family's hand-off names the listener and takes the pick; the frame tells which.
#[inline(always)]
fn scan_stage(ctx: &XdpContext) -> (u32, Reason) {
    // The hand-off's listener, its pick and flags, and the stage to go back to.
    let (listener, picked, flags, next) = if parse::is_ipv6(ctx) {
        let Some(p) = PENDING6.get_ptr_mut(0) else {
            return (XDP_DROP, Reason::DropStageFailed);
        };
        // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
        let p = unsafe { &mut *p };
        (&p.listener, &mut p.picked, &mut p.flags, STAGE_NEW_FLOW6)
    } else {
        let Some(p) = PENDING.get_ptr_mut(0) else {
            return (XDP_DROP, Reason::DropStageFailed);
        };
        // SAFETY: as above.
        let p = unsafe { &mut *p };
        (&p.listener, &mut p.picked, &mut p.flags, STAGE_NEW_FLOW)
    };
    let Some(best) = scan(listener) else {
        return (XDP_DROP, Reason::DropNoBackend);
    };
    *picked = best;
    *flags |= PENDING_F_SCANNED;
    stage::enter(ctx, next)
}

/// The scan of `listener`'s backends: its pick (`NO_BACKEND`: none has a weight), or
/// `None` when the listener has no table.
#[inline(always)]
fn scan(listener: &Listener) -> Option<u32> {
    let meta = Maps::new().table_meta(listener.table)?;
    let mut scan = WlcScan::new(listener, &meta, Maps::new().take_cursor(listener.id));
    // SAFETY: the callback and its context follow bpf_loop's contract (kernel ≥ 5.17).
    unsafe {
        bpf_loop(
            scan.window(),
            wlc_step as *mut c_void,
            (&raw mut scan).cast::<c_void>(),
            0,
        )
    };
    Some(scan.best)
}

/// One candidate of the scan: the body of the `bpf_loop`, verified once.
extern "C" fn wlc_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `scan_stage` gave it, to a live stack value.
    let scan = unsafe { &mut *ctx.cast::<WlcScan>() };
    scan.consider(&Maps::new(), &mut ());
    0
}

/// Adds `delta` (±1) to a backend's active-flow count for `wlc`.
#[inline(always)]
pub fn active_add(id: u32, delta: i32) {
    if let Some(p) = ACTIVE_FLOWS.get_ptr_mut(id) {
        // SAFETY: p points into an array map value, which lives as long as the map. The
        // add is atomic because every CPU updates these counters; its result is unused, so
        // LLVM emits the plain `lock add` every BPF CPU version has (core's Atomic* types
        // are not available on the BPF target).
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, delta as u32) };
    }
}
