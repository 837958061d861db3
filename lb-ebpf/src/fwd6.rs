//! Next hop and transmission of a translated (or to-be-encapsulated) IPv6 packet: `fwd`
//! for IPv6, with its own per-CPU cache of backends' next hops (`NEXT_HOPS6`) and the
//! same verdicts.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    Addr6, FlowKey6, NEXT_HOP_TTL_NS, NO_BACKEND, Reason, STAGE_TOO_BIG6, TOO_BIG_DESTINATION,
    TOO_BIG_SOURCE, mac_words,
};

use crate::{
    fwd::{Hop, send, set_macs},
    maps::{NEXT_HOPS6, TOO_BIG6, TX_PORTS},
    nat6::decrement_hop_limit,
    parse::ETH_LEN,
    parse6::{IPV6_LEN, Ipv6},
    stage,
    words::{self, Cleared},
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
    /// What the translation replaced (`TOO_BIG_DESTINATION` or `TOO_BIG_SOURCE`, with the
    /// address and port), so a packet too big for the egress is answered quoting it as its
    /// sender sent it; 0 for packets not answered (ICMPv6 errors).
    pub side: u8,
    pub original_addr: Addr6,
    pub original_port: u16,
    /// Bytes an encapsulation will add in front of the packet (0: translated in place);
    /// see `fwd::Route::overhead`.
    pub overhead: u16,
    /// Ask the FIB for the source address the route prefers (encapsulation without a
    /// configured IPv6 source).
    pub want_source: bool,
}

impl Route6 {
    /// The route of an ICMPv6 error the program translated: never cached, never answered
    /// when too big (an error about an error is never sent, RFC 4443 2.4).
    pub const fn icmp(src_addr: Addr6, dst_addr: Addr6) -> Self {
        Self {
            src_addr,
            dst_addr,
            src_port: 0,
            dst_port: 0,
            backend: NO_BACKEND,
            now: 0,
            side: 0,
            original_addr: [0; 4],
            original_port: 0,
            overhead: 0,
            want_source: false,
        }
    }
}

/// Looks up the next hop and sends the packet, with `fwd::transmit`'s verdicts. A
/// TCP/UDP packet too big for its egress goes to `lb_too_big6`, which answers its sender
/// with Packet Too Big (a router never fragments IPv6); an ICMPv6 error is passed.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, ip: &Ipv6, route: &Route6, sent: Reason) -> (u32, Reason) {
    let hop = match next_hop(ctx, ip, route, &mut [0; 4]) {
        Ok(hop) => hop,
        Err(verdict) => return verdict,
    };
    if hop.egress == 0 {
        cold_path();
        return (XDP_PASS, hop.kernel_reason);
    }
    if !set_macs(ctx, &hop) {
        cold_path();
        return (XDP_DROP, Reason::DropMalformedEthernet);
    }
    decrement_hop_limit(ctx);
    send(&hop, sent)
}

/// The next hop of `route` from the per-backend cache or the FIB (see `fwd::next_hop`);
/// with `route.want_source`, the source the route prefers goes to `source` (all zero when
/// the route has none).
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    ip: &Ipv6,
    route: &Route6,
    source: &mut Addr6,
) -> Result<Hop, (u32, Reason)> {
    let ingress = ctx.ingress_ifindex() as u32;
    let cacheable = route.backend != NO_BACKEND;
    let len = ip.ip_len.saturating_add(route.overhead);
    if cacheable
        && let Some(hop) = NEXT_HOPS6.get(route.backend)
        && hop.stamp_ns != 0
        && route.now.saturating_sub(hop.stamp_ns) < NEXT_HOP_TTL_NS
        && hop.ingress == ingress
        && hop.addr == route.dst_addr
        && len <= hop.mtu
        && (!route.want_source || hop.src_addr != [0; 4])
    {
        if route.want_source {
            *source = hop.src_addr;
        }
        return Ok(Hop {
            egress: hop.egress,
            ingress,
            dst_mac: hop.dst_mac,
            src_mac: hop.src_mac,
            src_addr: 0,
            kernel_reason: Reason::Forwarded,
        });
    }

    let mut room = Cleared::<FibParams>::uninit();
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let fib = unsafe { room.zero() };
    fib.family = AF_INET6;
    fib.l4_protocol = ip.protocol;
    fib.sport = route.src_port;
    fib.dport = route.dst_port;
    fib.__bindgen_anon_1.tot_len = len;
    fib.ifindex = ingress;
    fib.__bindgen_anon_3.ipv6_src = route.src_addr;
    fib.__bindgen_anon_4.ipv6_dst = route.dst_addr;
    let flags = if route.want_source {
        BPF_FIB_LOOKUP_SRC
    } else {
        0
    };
    // SAFETY: ctx is the program's context and fib a valid, sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, size_of::<FibParams>() as i32, flags) };
    if route.want_source {
        // SAFETY: with BPF_FIB_LOOKUP_SRC the kernel sets the source before it looks for
        // the neighbour, so a NO_NEIGH answer has it too.
        *source = unsafe { fib.__bindgen_anon_3.ipv6_src };
    }
    let kernel = |reason| Hop {
        egress: 0,
        ingress,
        dst_mac: [0; 3],
        src_mac: [0; 3],
        src_addr: 0,
        kernel_reason: reason,
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Ok(kernel(Reason::PassNeighUnknown)),
        // SAFETY: on FRAG_NEEDED the kernel leaves the egress MTU here.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Err(too_big(ctx, ip, route, unsafe {
                fib.__bindgen_anon_1.mtu_result
            }));
        }
        BPF_FIB_LKUP_RET_NO_SRC_ADDR => return Err((XDP_DROP, Reason::DropNoSourceAddress)),
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
        hop.dst_mac = mac_words(fib.dmac);
        hop.src_mac = mac_words(fib.smac);
        // SAFETY: two addresses, 4-byte aligned.
        unsafe { words::copy(&raw mut hop.src_addr, source) };
    }
    Ok(Hop {
        egress: fib.ifindex,
        ingress,
        dst_mac: mac_words(fib.dmac),
        src_mac: mac_words(fib.smac),
        src_addr: 0,
        kernel_reason: Reason::Forwarded,
    })
}

/// A translated TCP/UDP packet larger than the egress MTU: its sender is told, by
/// `lb_too_big6`, from the hand-off in `TOO_BIG6`. A client's packet for a tunnel is
/// still the client's as it came, and its sender learns the egress MTU less the outer
/// headers; an ICMPv6 error for a tunnel is dropped (it cannot be fragmented for the
/// tunnel, and an error about an error is never sent).
#[inline(always)]
fn too_big(ctx: &XdpContext, ip: &Ipv6, route: &Route6, mtu: u16) -> (u32, Reason) {
    let encapsulated = route.overhead != 0;
    if encapsulated && route.side != TOO_BIG_DESTINATION {
        return (XDP_DROP, Reason::DropTooBigForTunnel);
    }
    if !(route.side == TOO_BIG_DESTINATION || route.side == TOO_BIG_SOURCE) {
        return (XDP_PASS, Reason::PassFragNeeded);
    }
    let Some(handoff) = TOO_BIG6.get_ptr_mut(0) else {
        return (XDP_PASS, Reason::PassFragNeeded);
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    let h = unsafe { &mut *handoff };
    // Field by field, for the stack (see `ipv6::forward`). An encapsulated packet is the
    // client's, to the VIP: the address it was for is the one it carries.
    h.key = FlowKey6::new(
        route.src_addr,
        if encapsulated {
            ip.dst_addr
        } else {
            route.dst_addr
        },
        route.src_port,
        route.dst_port,
        ip.protocol,
    );
    h.addr = route.original_addr;
    h.port = route.original_port;
    h.mtu = mtu.saturating_sub(route.overhead);
    h.side = route.side;
    h.encapsulated = u8::from(encapsulated);
    h.extension_len = ip.l4_offset.saturating_sub(ETH_LEN + IPV6_LEN) as u16;
    stage::enter(ctx, STAGE_TOO_BIG6)
}
