//! Entering a later stage of the program by tail call (`lb_common::STAGE_*`). Each stage is
//! a program of its own, verified on its own: what it costs the verifier does not multiply
//! with the paths of the program that enters it.

use aya_ebpf::{bindings::xdp_action::XDP_DROP, programs::XdpContext};
use lb_common::Reason;

use crate::maps::STAGES;

/// Continues the packet in the stage of `slot`; returns only if that stage could not be
/// entered (its slot is empty).
#[inline(always)]
pub fn enter(ctx: &XdpContext, slot: u32) -> (u32, Reason) {
    // SAFETY: ctx is the running program's own context; on success the call does not return.
    unsafe { STAGES.tail_call(ctx, slot) };
    (XDP_DROP, Reason::DropStageFailed)
}
