//! Next hop and transmission. The kernel's FIB answers where a translated packet goes
//! (so `ip_forward` must be on and routes and neighbours are the host's own); the program
//! sends it itself when it can and hands it to the kernel when the neighbour is unknown.
//!
//! Packets to a backend use a per-CPU cache of the backend's next hop (`BackendCpu::hop`),
//! refreshed from the FIB at least once a second: `bpf_fib_lookup` is a third of the cost
//! of an established packet.
//!
//! A translated packet with DF that is too big for its egress is answered with ICMP
//! "fragmentation needed" by the `lb_too_big` stage: the kernel's own answer would quote
//! the translated packet, which its sender cannot match to a connection, and would go to
//! the VIP when the packet is a reply.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    BackendCpu, FlowKey, Mac, NEXT_HOP_TTL_NS, NO_BACKEND, NextHop, Reason, STAGE_TOO_BIG,
    TOO_BIG_DESTINATION, TOO_BIG_SOURCE, TooBig, mac_words,
};

use crate::{
    maps::{TOO_BIG, TX_PORTS},
    nat::decrement_ttl,
    parse::{Ipv4, ptr_at},
    stage,
    words::Cleared,
};

const AF_INET: u8 = 2;

/// Where a translated packet goes, and whether the cache may keep the answer.
pub struct Route {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Backend id whose next hop this is (client → backend: cacheable), or `NO_BACKEND`.
    /// A plain value, not an `Option`, like every field here: the verifier follows plain
    /// integers more cheaply than enum tags.
    pub backend: u32,
    /// This CPU's `BACKEND_CPU` record of `backend` (`maps::backend_cpu`), which holds the
    /// cached next hop; looked up once by the caller, which counts the packet in it too.
    /// `None` (a null pointer, no tag) for no cache.
    pub record: Option<*mut BackendCpu>,
    /// Current coarse time (for the cache).
    pub now: u64,
    /// What the translation replaced: `TOO_BIG_DESTINATION` (client → VIP) or
    /// `TOO_BIG_SOURCE` (backend → client) with the address and port it replaced, so a
    /// packet too big for the egress can be answered quoting it as its sender sent it; 0
    /// for packets the program does not answer (ICMP errors).
    pub side: u8,
    pub original_addr: u32,
    pub original_port: u16,
    /// Bytes an encapsulation will add in front of the packet (0: translated in place).
    /// The MTU check counts them; the packet itself is still the client's, untranslated.
    pub overhead: u16,
    /// Ask the FIB for the source address the route prefers (encapsulation without a
    /// configured outer source).
    pub want_source: bool,
}

/// The FIB's answer for a packet the program goes on with.
pub struct Hop {
    /// Egress ifindex; 0 when the kernel must forward the packet (`kernel_reason`).
    pub egress: u32,
    /// The ifindex the packet came in on. Kept here because reading it from the context
    /// is three dependent loads (the frame's receive queue, its device, the index).
    pub ingress: u32,
    pub dst_mac: Mac,
    pub src_mac: Mac,
    /// The route's preferred source when `Route::want_source`, else 0. Network order.
    pub src_addr: u32,
    /// Why the kernel gets the packet when `egress` is 0: the neighbour is unknown (the
    /// kernel resolves it), or the egress is not an interface of ours.
    pub kernel_reason: Reason,
}

/// Looks up the next hop for the (already translated) packet and sends it.
///
/// - found, with a neighbour: TTL − 1, MACs rewritten, out by XDP_TX (same interface) or a
///   devmap redirect; an egress interface the program is not attached to: XDP_PASS, and
///   the kernel forwards it.
/// - neighbour unknown: XDP_PASS untouched otherwise; the kernel resolves it and forwards
///   the packet (and decrements the TTL itself).
/// - larger than the egress MTU: with DF, a TCP/UDP packet goes to `lb_too_big`, which
///   answers its sender; otherwise XDP_PASS, and the kernel fragments it.
/// - no route (blackhole, unreachable, prohibited, forwarding off): XDP_DROP.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, ip: &Ipv4, route: &Route, sent: Reason) -> (u32, Reason) {
    let hop = match next_hop(ctx, ip, route) {
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
    decrement_ttl(ctx);
    send(&hop, sent)
}

/// The next hop of `route` from the per-backend cache or the FIB. `Err` is a verdict
/// already reached: no route, or too big (answered by `lb_too_big`, or passed).
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, ip: &Ipv4, route: &Route) -> Result<Hop, (u32, Reason)> {
    let ingress = ctx.ingress_ifindex() as u32;
    let cacheable = route.backend != NO_BACKEND;
    let len = ip.tot_len.saturating_add(route.overhead);
    // SAFETY: this CPU's record; only this CPU writes it while the program runs.
    if cacheable
        && let Some(record) = route.record
        && let hop = unsafe { &(*record).hop }
        && hop.stamp_ns != 0
        && route.now.saturating_sub(hop.stamp_ns) < NEXT_HOP_TTL_NS
        && hop.ingress == ingress
        && hop.addr == route.dst_addr
        && len <= hop.mtu
        && (!route.want_source || hop.src_addr != 0)
    {
        return Ok(Hop {
            egress: hop.egress,
            ingress,
            dst_mac: hop.dst_mac,
            src_mac: hop.src_mac,
            src_addr: hop.src_addr,
            kernel_reason: Reason::Forwarded,
        });
    }

    let mut room = Cleared::<FibParams>::uninit();
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let fib = unsafe { room.zero() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.protocol;
    fib.sport = route.src_port;
    fib.dport = route.dst_port;
    fib.__bindgen_anon_1.tot_len = len;
    fib.ifindex = ingress;
    fib.__bindgen_anon_3.ipv4_src = route.src_addr;
    fib.__bindgen_anon_4.ipv4_dst = route.dst_addr;
    let flags = if route.want_source {
        BPF_FIB_LOOKUP_SRC
    } else {
        0
    };

    // SAFETY: ctx is the program's context and fib a valid, sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, size_of::<FibParams>() as i32, flags) };
    // SAFETY: with BPF_FIB_LOOKUP_SRC the kernel sets the source before it looks for the
    // neighbour, so a NO_NEIGH answer has it too.
    let src_addr = if route.want_source {
        unsafe { fib.__bindgen_anon_3.ipv4_src }
    } else {
        0
    };
    let kernel = |reason| Hop {
        egress: 0,
        ingress,
        dst_mac: [0; 3],
        src_mac: [0; 3],
        src_addr,
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
        // Not an interface of ours: the kernel forwards the packet.
        return Ok(kernel(Reason::PassNoTxPort));
    }
    if cacheable && let Some(record) = route.record {
        // SAFETY: this CPU's record; only this CPU writes it while the program runs.
        unsafe {
            (*record).hop = NextHop {
                stamp_ns: route.now,
                ingress,
                egress: fib.ifindex,
                addr: route.dst_addr,
                // On success the kernel leaves the egress MTU here.
                mtu: fib.__bindgen_anon_1.mtu_result,
                dst_mac: mac_words(fib.dmac),
                src_mac: mac_words(fib.smac),
                _pad: [0; 2],
                src_addr,
            };
        }
    }
    Ok(Hop {
        egress: fib.ifindex,
        ingress,
        dst_mac: mac_words(fib.dmac),
        src_mac: mac_words(fib.smac),
        src_addr,
        kernel_reason: Reason::Forwarded,
    })
}

/// A translated packet larger than the egress MTU. Without DF the sender allows fragments
/// and the kernel makes them.
#[inline(always)]
fn too_big(ctx: &XdpContext, ip: &Ipv4, route: &Route, mtu: u16) -> (u32, Reason) {
    if route.overhead != 0 && (!ip.dont_fragment || route.side != TOO_BIG_DESTINATION) {
        return (XDP_DROP, Reason::DropTooBigForTunnel);
    }
    if !ip.dont_fragment || !(route.side == TOO_BIG_DESTINATION || route.side == TOO_BIG_SOURCE) {
        return (XDP_PASS, Reason::PassFragNeeded);
    }
    let Some(handoff) = TOO_BIG.get_ptr_mut(0) else {
        return (XDP_PASS, Reason::PassFragNeeded);
    };
    // An encapsulated packet is still the client's (to the VIP), and has the egress MTU
    // less the outer headers.
    let (dst_addr, mtu) = if route.overhead == 0 {
        (route.dst_addr, mtu)
    } else {
        (ip.dst_addr, mtu.saturating_sub(route.overhead))
    };
    // SAFETY: per-CPU value, only this CPU touches it while the packet runs.
    unsafe {
        *handoff = TooBig {
            key: FlowKey::new(
                route.src_addr,
                dst_addr,
                route.src_port,
                route.dst_port,
                ip.protocol,
            ),
            addr: route.original_addr,
            port: route.original_port,
            mtu,
            side: route.side,
            encapsulated: u8::from(route.overhead != 0),
            _pad0: 0,
            _pad1: 0,
        };
    }
    stage::enter(ctx, STAGE_TOO_BIG)
}

/// The next hop's MACs into the frame's Ethernet header. False: no Ethernet header (the
/// verifier's bound; parsing already checked it).
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, hop: &Hop) -> bool {
    let Some(eth) = ptr_at::<EthAddrs>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; the frame starts at an even address.
    unsafe {
        (*eth).dst = hop.dst_mac;
        (*eth).src = hop.src_mac;
    }
    true
}

/// The addresses at the start of an Ethernet header, as `Mac` words.
#[repr(C)]
pub struct EthAddrs {
    pub dst: Mac,
    pub src: Mac,
}

/// The frame's own Ethernet addresses (destination, source), or `None` without a header.
#[inline(always)]
pub fn frame_macs(ctx: &XdpContext) -> Option<(Mac, Mac)> {
    let eth = ptr_at::<EthAddrs>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { ((*eth).dst, (*eth).src) })
}

/// Out through `hop.egress`: XDP_TX when it is the interface the packet came in on,
/// otherwise a devmap redirect.
#[inline(always)]
pub fn send(hop: &Hop, sent: Reason) -> (u32, Reason) {
    if hop.egress == hop.ingress {
        return (XDP_TX, sent);
    }
    match TX_PORTS.redirect(hop.egress, u64::from(XDP_PASS)) {
        Ok(action) => (action, sent),
        Err(action) => (action, Reason::PassNoTxPort),
    }
}
