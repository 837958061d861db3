//! Next hop and transmission of a translated IPv6 packet: `fwd` for IPv6, with its own
//! per-CPU cache of backends' next hops (`NEXT_HOPS6`) and the same verdicts.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{Addr6, NEXT_HOP_TTL_NS, NO_BACKEND, Reason};

use crate::{
    fwd::{Hop, send, set_macs},
    maps::{NEXT_HOPS6, TX_PORTS},
    nat6::decrement_hop_limit,
    parse6::Ipv6,
};

const AF_INET6: u8 = 10;

/// Where a translated IPv6 packet goes (see `fwd::Route`).
pub struct Route6 {
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    pub src_port: u16,
    pub dst_port: u16,
    /// Backend id whose next hop this is (client → backend: cacheable), or `NO_BACKEND`.
    pub backend: u32,
    pub now: u64,
}

/// Looks up the next hop and sends the packet, with `fwd::transmit`'s verdicts. A packet
/// too big for its egress is passed: the ICMPv6 Packet Too Big the program should send in
/// its place is not built yet (docs/packet-policy.md).
#[inline(always)]
pub fn transmit(ctx: &XdpContext, ip: &Ipv6, route: &Route6, sent: Reason) -> (u32, Reason) {
    let hop = match next_hop(ctx, ip, route) {
        Ok(hop) => hop,
        Err(verdict) => return verdict,
    };
    if hop.egress == 0 {
        return (XDP_PASS, hop.kernel_reason);
    }
    if !set_macs(ctx, &hop) {
        return (XDP_DROP, Reason::DropMalformedEthernet);
    }
    decrement_hop_limit(ctx);
    send(&hop, sent)
}

#[inline(always)]
fn next_hop(ctx: &XdpContext, ip: &Ipv6, route: &Route6) -> Result<Hop, (u32, Reason)> {
    let ingress = ctx.ingress_ifindex() as u32;
    let cacheable = route.backend != NO_BACKEND;
    let len = ip.ip_len;
    if cacheable
        && let Some(hop) = NEXT_HOPS6.get(route.backend)
        && hop.stamp_ns != 0
        && route.now.saturating_sub(hop.stamp_ns) < NEXT_HOP_TTL_NS
        && hop.ingress == ingress
        && hop.addr == route.dst_addr
        && len <= hop.mtu
    {
        return Ok(Hop {
            egress: hop.egress,
            ingress,
            dst_mac: hop.dst_mac,
            src_mac: hop.src_mac,
            src_addr: 0,
            kernel_reason: Reason::Forwarded,
        });
    }

    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET6;
    fib.l4_protocol = ip.protocol;
    fib.sport = route.src_port;
    fib.dport = route.dst_port;
    fib.__bindgen_anon_1.tot_len = len;
    fib.ifindex = ingress;
    fib.__bindgen_anon_3.ipv6_src = route.src_addr;
    fib.__bindgen_anon_4.ipv6_dst = route.dst_addr;
    // SAFETY: ctx is the program's context and fib a valid, sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0) };
    let kernel = |reason| Hop {
        egress: 0,
        ingress,
        dst_mac: [0; 6],
        src_mac: [0; 6],
        src_addr: 0,
        kernel_reason: reason,
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Ok(kernel(Reason::PassNeighUnknown)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err((XDP_PASS, Reason::PassFragNeeded)),
        _ => return Err((XDP_DROP, Reason::DropNoRoute)),
    }
    if fib.ifindex != ingress && TX_PORTS.get_ifindex(fib.ifindex).is_none() {
        return Ok(kernel(Reason::PassNoTxPort));
    }
    if cacheable && let Some(hop) = NEXT_HOPS6.get_ptr_mut(route.backend) {
        // SAFETY: per-CPU value, only this CPU touches it while the program runs.
        let hop = unsafe { &mut *hop };
        // Field by field: a whole `NextHop6` built first would take 48 bytes of stack.
        hop.stamp_ns = route.now;
        hop.ingress = ingress;
        hop.egress = fib.ifindex;
        hop.addr = route.dst_addr;
        // On success the kernel leaves the egress MTU here.
        // SAFETY: a plain integer either way.
        hop.mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        hop.dst_mac = fib.dmac;
        hop.src_mac = fib.smac;
    }
    Ok(Hop {
        egress: fib.ifindex,
        ingress,
        dst_mac: fib.dmac,
        src_mac: fib.smac,
        src_addr: 0,
        kernel_reason: Reason::Forwarded,
    })
}
