//! Bounds-checked access to the frame, shared by the load balancer's program and the
//! backends' decapsulation program.

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;

pub const ETH_LEN: usize = EthHdr::LEN;

/// Pointer to a `T` at `offset` from the start of the frame, if it lies inside the frame.
/// The check is in the form the verifier tracks: right before the access, on the pointer
/// that is used.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
