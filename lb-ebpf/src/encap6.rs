//! Direct server return over IPv6: the stage `lb_encap6`, which `lb_ipv6` and
//! `lb_new_flow6` enter for a client packet of a `forwarding: dsr` listener (and `lb_icmp6`
//! for an ICMPv6 error about a reply of such a flow), with what to send in `ENCAP6`. It
//! puts the packet whole (hop limit untouched) inside an outer IPv6 header (next header 41)
//! or IPv6 + UDP header (GUE), built by `lb_common::encap::Outer6`, and sends it to the
//! backend, which strips it (`lb-ctl decap`) and answers the client itself.
//!
//! A stage of its own, as `lb_too_big6` is: the stages that decide where a packet goes
//! were near the stack budget, and the tunnel's next-hop lookup, outer header and
//! transmission would have added to each of them. As over IPv4 (`encap`):
//!
//! - the outer source is the listener's IPv6 `dsr.source` (`ENCAP_SOURCES6`) or the address
//!   the route to the backend prefers (`BPF_FIB_LOOKUP_SRC`, cached per backend with the
//!   next hop in `NEXT_HOPS6`); the flow label, a source prefix's host bits and GUE's
//!   source port come from the flow's hash;
//! - the neighbour unknown, or an egress the program is not attached to: encapsulated all
//!   the same and passed, with the frame's own Ethernet addresses, for the kernel to
//!   forward;
//! - too big once encapsulated: the client gets Packet Too Big with the MTU left inside
//!   the tunnel (`lb_too_big6`; IPv6 is never fragmented on the way, and a backend
//!   decapsulating in XDP could not reassemble); an ICMPv6 error is dropped;
//! - no route, or no source to send from: dropped.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_xdp_adjust_head,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    ENCAP6_ICMP, EncapSource6, Encapsulation, Mac, Reason, TOO_BIG_DESTINATION,
    encap::{Inner6, Outer6},
};
use network_types::eth::EtherType;

use crate::{
    fwd,
    fwd6::{self, Route6},
    maps::{BACKENDS6, ENCAP_SOURCES6, ENCAP6},
    parse::{ETH_LEN, ptr_at},
    parse6::{self, MAX_L4_OFFSET, PROTO_ICMPV6},
    stats,
};

const IPV6_LEN: usize = lb_common::IPV6_HEADER_LEN as usize;
const UDP_LEN: usize = lb_common::UDP_HEADER_LEN as usize;

/// The front of an ip6ip6 frame, as it is laid out, in 16-bit words (see `encap`'s
/// `IpipFront`).
#[repr(C)]
struct Ip6ip6Front {
    dst_mac: Mac,
    src_mac: Mac,
    ether_type: u16,
    ip: [u16; IPV6_LEN / 2],
}

/// The front of a GUE-over-IPv6 frame.
#[repr(C)]
struct Gue6Front {
    dst_mac: Mac,
    src_mac: Mac,
    ether_type: u16,
    ip: [u16; IPV6_LEN / 2],
    udp: [u16; UDP_LEN / 2],
}

#[xdp]
pub fn lb_encap6(ctx: XdpContext) -> u32 {
    let verdict = run(&ctx);
    stats::finish(&ctx, verdict)
}

#[inline(always)]
fn run(ctx: &XdpContext) -> (u32, Reason) {
    let mut ip = match parse6::header(ctx) {
        Ok(ip) => ip,
        Err(reason) => return (XDP_DROP, reason),
    };
    let Some(h) = ENCAP6.get(0) else {
        return (XDP_DROP, Reason::DropStageFailed);
    };
    // The hand-off must be this packet's (a stage run on its own finds another's): a
    // client's packet is the flow's, to the VIP; an ICMPv6 error is addressed to the VIP.
    // Read from the hand-off where used, for the stack.
    let key = &h.key;
    let client = h.side == TOO_BIG_DESTINATION;
    if key.dst_addr != ip.dst_addr {
        return (XDP_DROP, Reason::DropStageFailed);
    }
    if client {
        let off = usize::from(h.l4_offset);
        if off > MAX_L4_OFFSET {
            return (XDP_DROP, Reason::DropStageFailed);
        }
        let Some(ports) = ptr_at::<[u16; 2]>(ctx, off) else {
            return (XDP_DROP, Reason::DropStageFailed);
        };
        // SAFETY: bounds checked by ptr_at; read as bytes are (2-byte aligned at worst).
        let [sport, dport] = unsafe { core::ptr::read_unaligned(ports) };
        if key.src_addr != ip.src_addr || key.src_port != sport || key.dst_port != dport {
            return (XDP_DROP, Reason::DropStageFailed);
        }
        // Where the extension headers end: a packet too big for the tunnel is answered
        // with its headers quoted (`lb_too_big6`).
        ip.l4_offset = off;
        ip.protocol = key.protocol;
    } else if !(h.side == ENCAP6_ICMP && ip.protocol == PROTO_ICMPV6) {
        return (XDP_DROP, Reason::DropStageFailed);
    }
    let (listener, backend) = (h.listener, h.backend);
    let Some(backend_addr) = BACKENDS6.get(backend) else {
        return (XDP_DROP, Reason::DropNoBackend);
    };
    let backend_addr = backend_addr.addr;
    let source = ENCAP_SOURCES6
        .get(listener)
        .copied()
        .unwrap_or(EncapSource6::default());
    let encapsulation = if h.encapsulation == Encapsulation::Gue as u8 {
        Encapsulation::Gue
    } else {
        Encapsulation::Ipip
    };
    let overhead = encapsulation.overhead6();
    let want_source = source.addr == [0; 4];
    let route = Route6 {
        src_addr: ip.src_addr,
        dst_addr: backend_addr,
        src_port: key.src_port,
        dst_port: key.dst_port,
        backend,
        now: h.now_ns,
        side: h.side,
        original_addr: ip.dst_addr,
        original_port: key.dst_port,
        overhead,
        want_source,
    };
    let mut route_source = [0; 4];
    let hop = match fwd6::next_hop(ctx, &ip, &route, &mut route_source) {
        Ok(hop) => hop,
        Err(verdict) => return verdict,
    };
    if want_source && route_source == [0; 4] {
        return (XDP_DROP, Reason::DropNoSourceAddress);
    }
    let Some(first) = ptr_at::<[u8; 2]>(ctx, ETH_LEN) else {
        return (XDP_DROP, Reason::DropMalformedIpv6);
    };
    // SAFETY: bounds checked by ptr_at.
    let inner = Inner6::of(unsafe { *first }, ip.ip_len);
    let outer = Outer6::for_flow(
        encapsulation,
        h.encap_port,
        &source,
        route_source,
        backend_addr,
        key,
        inner,
    );

    // The kernel path needs the frame's own Ethernet addresses (see `encap::send`).
    let (dst_mac, src_mac) = if hop.egress == 0 {
        let Some(macs) = fwd::frame_macs(ctx) else {
            return (XDP_DROP, Reason::DropMalformedEthernet);
        };
        macs
    } else {
        (hop.dst_mac, hop.src_mac)
    };
    let grow = -(i32::from(overhead));
    // SAFETY: ctx is the program's context; the kernel checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, grow) } != 0 {
        return (XDP_DROP, Reason::DropNoHeadroom);
    }
    let ether_type = EtherType::Ipv6 as u16;
    if encapsulation == Encapsulation::Gue {
        let Some(f) = ptr_at::<Gue6Front>(ctx, 0) else {
            return (XDP_DROP, Reason::DropNoHeadroom);
        };
        // SAFETY: bounds checked by ptr_at; the frame starts at an even address.
        unsafe {
            (*f).dst_mac = dst_mac;
            (*f).src_mac = src_mac;
            (*f).ether_type = ether_type;
            (*f).ip = outer.ipv6_words();
            (*f).udp = outer.udp_words();
        }
    } else {
        let Some(f) = ptr_at::<Ip6ip6Front>(ctx, 0) else {
            return (XDP_DROP, Reason::DropNoHeadroom);
        };
        // SAFETY: as above.
        unsafe {
            (*f).dst_mac = dst_mac;
            (*f).src_mac = src_mac;
            (*f).ether_type = ether_type;
            (*f).ip = outer.ipv6_words();
        }
    }
    let out = if hop.egress == 0 {
        (XDP_PASS, hop.kernel_reason)
    } else if client {
        fwd::send(&hop, Reason::Encapsulated)
    } else {
        fwd::send(&hop, Reason::IcmpToBackend)
    };
    if client && out.0 != XDP_DROP {
        stats::forwarded(listener, backend, u64::from(ip.ip_len));
    }
    out
}
