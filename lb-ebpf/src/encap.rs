//! Direct server return (`forwarding: dsr`): the client's packet goes to its backend whole,
//! inside an outer IPv4 header (IPIP) or IPv4 + UDP header (GUE), and the backend, which
//! holds the VIP on a loopback interface and strips the outer header (`lb-ctl decap`),
//! answers the client itself. The LB sees only the client's half of each connection.
//!
//! The inner packet is not touched, TTL included: the LB is a tunnel entry here, not a
//! router hop. The outer header is built by `lb_common::encap`, the same code the packet
//! tests check against. Its source is the configured one or the address the route to the
//! backend prefers (`bpf_fib_lookup` with `BPF_FIB_LOOKUP_SRC`, cached per backend with
//! the next hop), with low bits (IPIP) or the UDP source port (GUE) from the flow's hash
//! so a backend's NIC spreads flows over its receive queues.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_xdp_adjust_head,
    programs::XdpContext,
};
use lb_common::{
    Backend, BackendCpu, Encapsulation, FlowKey, Listener, Mac, Reason,
    encap::{Inner, Outer},
};
use network_types::eth::EtherType;

use crate::{
    fwd,
    parse::{Ipv4, ptr_at},
};

const IPV4_LEN: usize = lb_common::IPV4_HEADER_LEN as usize;
const UDP_LEN: usize = lb_common::UDP_HEADER_LEN as usize;

/// The front of an IPIP frame, as it is laid out. The headers are 16-bit words: frames
/// start at an even address (the Ethernet header's own `ether_type` already counts on it),
/// so each word is one store.
#[repr(C)]
struct IpipFront {
    dst_mac: Mac,
    src_mac: Mac,
    ether_type: u16,
    ip: [u16; IPV4_LEN / 2],
}

/// The front of a GUE frame.
#[repr(C)]
struct GueFront {
    dst_mac: Mac,
    src_mac: Mac,
    ether_type: u16,
    ip: [u16; IPV4_LEN / 2],
    udp: [u16; UDP_LEN / 2],
}

/// What to encapsulate a packet for, and how to count it.
pub struct Delivery<'a> {
    pub listener: &'a Listener,
    pub backend_id: u32,
    pub backend: &'a Backend,
    /// This CPU's record of the backend (`fwd::Route::record`).
    pub record: Option<*mut BackendCpu>,
    /// Current coarse time (the next-hop cache).
    pub now: u64,
    /// The packet's ports (the FIB's and the flow hash's input): the client's for its
    /// own packets, the flow's for an ICMP error about it.
    pub src_port: u16,
    pub dst_port: u16,
    /// A client's TCP/UDP packet (`TOO_BIG_DESTINATION`): answered with "fragmentation
    /// needed" when too big. 0: an ICMP error, which is never answered (RFC 1122 3.2.2).
    pub side: u8,
    /// The reason a packet sent is counted under.
    pub sent: Reason,
}

/// Encapsulates the packet for `d.backend` and sends it.
///
/// - next hop known: out through it (XDP_TX or redirect), counted under `d.sent`;
/// - neighbour unknown, or an egress the program is not attached to: encapsulated all
///   the same and passed, so the kernel forwards the outer packet (resolving the
///   neighbour); the Ethernet header keeps the addresses the frame came with, which the
///   kernel checks on the way in;
/// - too big once encapsulated: with DF, the client gets "fragmentation needed" with the
///   MTU left inside the tunnel (`lb_too_big`); otherwise dropped, since passed
///   unencapsulated the kernel would route it to the VIP;
/// - no route, or no source address to send from: dropped.
#[inline(always)]
pub fn send(ctx: &XdpContext, ip: &Ipv4, d: &Delivery) -> (u32, Reason) {
    let listener = d.listener;
    let backend = d.backend;
    let gue = listener.encapsulation == Encapsulation::Gue as u8;
    let encapsulation = if gue {
        Encapsulation::Gue
    } else {
        Encapsulation::Ipip
    };
    let route = fwd::Route {
        src_addr: ip.src_addr,
        dst_addr: backend.addr,
        src_port: d.src_port,
        dst_port: d.dst_port,
        backend: d.backend_id,
        record: d.record,
        now: d.now,
        side: d.side,
        original_addr: ip.dst_addr,
        original_port: d.dst_port,
        overhead: encapsulation.overhead(),
        want_source: listener.encap_source == 0,
    };
    let hop = match fwd::next_hop(ctx, ip, &route) {
        Ok(hop) => hop,
        Err(verdict) => return verdict,
    };
    if listener.encap_source == 0 && hop.src_addr == 0 {
        cold_path();
        return (XDP_DROP, Reason::DropNoSourceAddress);
    }
    let flow = FlowKey::new(
        ip.src_addr,
        ip.dst_addr,
        d.src_port,
        d.dst_port,
        ip.protocol,
    );
    let inner = Inner {
        len: ip.tot_len,
        tos: ip.tos,
        dont_fragment: ip.dont_fragment,
    };
    let outer = Outer::for_flow(
        encapsulation,
        listener,
        hop.src_addr,
        backend.addr,
        &flow,
        inner,
    );

    // The kernel path needs the frame's own Ethernet addresses (it drops a frame not
    // addressed to the interface); read them before the header moves.
    let (dst_mac, src_mac) = if hop.egress == 0 {
        cold_path();
        let Some(macs) = fwd::frame_macs(ctx) else {
            return (XDP_DROP, Reason::DropMalformedEthernet);
        };
        macs
    } else {
        (hop.dst_mac, hop.src_mac)
    };
    let grow = -(i32::from(encapsulation.overhead()));
    // SAFETY: ctx is the program's context; the kernel checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, grow) } != 0 {
        cold_path();
        return (XDP_DROP, Reason::DropNoHeadroom);
    }
    let ether_type = EtherType::Ipv4 as u16;
    if gue {
        let Some(f) = ptr_at::<GueFront>(ctx, 0) else {
            cold_path();
            return (XDP_DROP, Reason::DropNoHeadroom);
        };
        // SAFETY: bounds checked by ptr_at; the frame starts at an even address.
        unsafe {
            (*f).dst_mac = dst_mac;
            (*f).src_mac = src_mac;
            (*f).ether_type = ether_type;
            (*f).ip = outer.ipv4_words();
            (*f).udp = outer.udp_words();
        }
    } else {
        let Some(f) = ptr_at::<IpipFront>(ctx, 0) else {
            cold_path();
            return (XDP_DROP, Reason::DropNoHeadroom);
        };
        // SAFETY: as above.
        unsafe {
            (*f).dst_mac = dst_mac;
            (*f).src_mac = src_mac;
            (*f).ether_type = ether_type;
            (*f).ip = outer.ipv4_words();
        }
    }
    if hop.egress == 0 {
        cold_path();
        return (XDP_PASS, hop.kernel_reason);
    }
    fwd::send(&hop, d.sent)
}
