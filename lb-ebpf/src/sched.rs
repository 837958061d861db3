//! Backend selection for new flows and pickups, from the tables the controller built.
//! Each scheduler is O(1) in the number of backends except `wlc`, which scans a bounded
//! window of `WLC_SCAN_MAX` backends in a stage of its own, `lb_wlc`: the scan's loop is
//! the costliest thing to verify, and as its own program it is verified once, from one
//! starting state, whatever the paths that lead to a new flow.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP, helpers::generated::bpf_loop, macros::xdp, programs::XdpContext,
};

use lb_common::{
    Backend, IdPair, Listener, NO_BACKEND, PENDING_F_SCANNED, Reason, STAGE_NEW_FLOW, Scheduler,
    TableMeta, WLC_SCAN_MAX,
    select::{maglev_index_source, maglev_index_tuple, sequence_index, wlc_prefers},
};

use crate::{
    maps::{ACTIVE_FLOWS, BACKENDS, CURSORS, MAGLEV, PENDING, SEQUENCE, TABLE_META},
    stage, stats,
};

/// The 4-tuple, network byte order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Backend id number `index` of a selection table (see `IdPair`).
#[inline(always)]
fn table_entry(map: &aya_ebpf::maps::Array<IdPair>, index: u32) -> u32 {
    match map.get(index / 2) {
        Some(pair) => pair[(index & 1) as usize],
        None => NO_BACKEND,
    }
}

/// The Maglev pick on the 4-tuple: `tch`, and every pickup whatever the scheduler.
#[inline(always)]
pub fn maglev_tuple(listener: &Listener, t: &Tuple) -> u32 {
    table_entry(
        &MAGLEV,
        maglev_index_tuple(
            listener.table,
            t.src_addr,
            t.dst_addr,
            t.src_port,
            t.dst_port,
        ),
    )
}

/// Advances this CPU's cursor of the listener and returns its previous value.
#[inline(always)]
fn next_cursor(listener: &Listener) -> u32 {
    match CURSORS.get_ptr_mut(listener.id) {
        Some(c) => {
            // SAFETY: per-CPU value, only this CPU touches it while the program runs.
            let v = unsafe { *c };
            unsafe { *c = v.wrapping_add(1) };
            v
        }
        None => 0,
    }
}

/// State of one `wlc` scan, passed to each `bpf_loop` step.
#[repr(C)]
struct WlcScan {
    table: u32,
    len: u32,
    position: u32,
    best: u32,
    best_active: u32,
    best_weight: u32,
}

/// One candidate of a `wlc` scan. A `bpf_loop` callback, so the verifier checks the body
/// once instead of once per iteration of every path that reaches it.
extern "C" fn wlc_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `wlc` gave it, to a live stack value.
    let scan = unsafe { &mut *ctx.cast::<WlcScan>() };
    let id = table_entry(
        &SEQUENCE,
        sequence_index(scan.table, scan.position, scan.len),
    );
    scan.position += 1;
    if scan.position >= scan.len {
        scan.position = 0;
    }
    let Some(b) = BACKENDS.get(id) else {
        return 0;
    };
    let active = ACTIVE_FLOWS.get(id).copied().unwrap_or(0);
    // The first candidate with a weight wins against "none yet".
    if b.weight > 0
        && (scan.best == NO_BACKEND
            || wlc_prefers(active, b.weight, scan.best_active, scan.best_weight))
    {
        scan.best = id;
        scan.best_active = active;
        scan.best_weight = b.weight;
    }
    0
}

/// Weighted least connections over a window of at most `WLC_SCAN_MAX` backends starting at
/// a rotating position, so ties spread and listeners with many backends stay bounded.
#[inline(always)]
fn wlc(listener: &Listener, meta: &TableMeta) -> u32 {
    let len = meta.sequence_len;
    if len == 0 {
        return NO_BACKEND;
    }
    let mut scan = WlcScan {
        table: listener.table,
        len,
        position: next_cursor(listener) % len,
        best: NO_BACKEND,
        best_active: 0,
        best_weight: 0,
    };
    let window = if len < WLC_SCAN_MAX {
        len
    } else {
        WLC_SCAN_MAX
    };
    // SAFETY: the callback and its context follow bpf_loop's contract (kernel ≥ 5.17).
    unsafe {
        bpf_loop(
            window,
            wlc_step as *mut c_void,
            (&raw mut scan).cast::<c_void>(),
            0,
        )
    };
    scan.best
}

/// The `wlc` stage: scans for the backend with the fewest active flows per weight, leaves
/// its pick in the hand-off and goes back to the new-flow stage.
#[xdp]
pub fn lb_wlc(ctx: XdpContext) -> u32 {
    let verdict = scan_stage(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn scan_stage(ctx: &XdpContext) -> (u32, Reason) {
    let Some(pending) = PENDING.get_ptr_mut(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let pending = unsafe { &mut *pending };
    let Some(meta) = TABLE_META.get(pending.listener.table) else {
        return (XDP_DROP, Reason::DropNoBackend);
    };
    pending.picked = wlc(&pending.listener, meta);
    pending.flags |= PENDING_F_SCANNED;
    stage::enter(ctx, STAGE_NEW_FLOW)
}

/// The listener's scheduler's pick for a new flow, for every scheduler but `wlc` (the
/// `lb_wlc` stage).
#[inline(always)]
pub fn schedule(listener: &Listener, meta: &TableMeta, t: &Tuple) -> u32 {
    match Scheduler::from_u8(listener.scheduler) {
        Some(Scheduler::Sch) => {
            table_entry(&MAGLEV, maglev_index_source(listener.table, t.src_addr))
        }
        Some(Scheduler::Tch) => maglev_tuple(listener, t),
        Some(Scheduler::Wlc) | None => NO_BACKEND,
        Some(Scheduler::Wrr) | Some(Scheduler::Rr) => {
            let cursor = next_cursor(listener);
            table_entry(
                &SEQUENCE,
                sequence_index(listener.table, cursor, meta.sequence_len),
            )
        }
    }
}

/// The backend entry of `id` if it may take a new flow right now.
#[inline(always)]
pub fn usable_backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id).filter(|b| b.is_usable())
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
