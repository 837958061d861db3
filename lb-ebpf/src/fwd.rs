//! Next hop and transmission. The kernel's FIB answers where a translated packet goes
//! (so `ip_forward` must be on and routes and neighbours are the host's own); the program
//! sends it itself when it can and hands it to the kernel when the neighbour is unknown.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::Reason;
use network_types::eth::EthHdr;

use crate::{
    maps::TX_PORTS,
    nat::decrement_ttl,
    parse::{Ipv4, ptr_at},
};

const AF_INET: u8 = 2;

/// Looks up the next hop for the (already translated) packet and sends it.
///
/// - found, with a neighbour: TTL − 1, MACs rewritten, out by XDP_TX (same interface) or a
///   devmap redirect; an egress interface the program is not attached to: XDP_PASS, and
///   the kernel forwards it.
/// - neighbour unknown: XDP_PASS untouched otherwise; the kernel resolves it and forwards
///   the packet (and decrements the TTL itself).
/// - larger than the egress MTU: XDP_PASS, the kernel fragments or answers ICMP.
/// - no route (blackhole, unreachable, prohibited, forwarding off): XDP_DROP.
#[inline(always)]
pub fn transmit(
    ctx: &XdpContext,
    ip: &Ipv4,
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    sent: Reason,
) -> (u32, Reason) {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.protocol;
    fib.sport = src_port;
    fib.dport = dst_port;
    fib.__bindgen_anon_1.tot_len = ip.tot_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_3.ipv4_src = src_addr;
    fib.__bindgen_anon_4.ipv4_dst = dst_addr;

    // SAFETY: ctx is the program's context and fib a valid, sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return (XDP_PASS, Reason::PassNeighUnknown),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return (XDP_PASS, Reason::PassFragNeeded),
        _ => return (XDP_DROP, Reason::DropNoRoute),
    }

    let ingress = ctx.ingress_ifindex() as u32;
    let same_port = fib.ifindex == ingress;
    if !same_port && TX_PORTS.get_ifindex(fib.ifindex).is_none() {
        // Not an interface of ours: the kernel forwards the translated packet.
        return (XDP_PASS, Reason::PassNoTxPort);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (XDP_DROP, Reason::DropMalformedEthernet);
    };
    decrement_ttl(ctx);
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if same_port {
        return (XDP_TX, sent);
    }
    match TX_PORTS.redirect(fib.ifindex, u64::from(XDP_PASS)) {
        Ok(action) => (action, sent),
        Err(action) => (action, Reason::PassNoTxPort),
    }
}
