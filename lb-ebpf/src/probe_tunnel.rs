//! `lb_probe_tunnel`, a TC egress program: the daemon's health probes in DSR mode go to
//! VIP:port through the backend's tunnel, as client packets do, so a backend whose
//! decapsulation or VIP is missing fails its check instead of passing it while it
//! black-holes real traffic (Katran does the same with a TC program and marked probes).
//!
//! The prober marks each probe socket with `probe_mark(backend id)`; the program finds
//! the backend in `BACKENDS` (an IPv6 one's address in `BACKENDS6`) and the tunnel in the
//! listener the packet is addressed to (`LISTENERS`, `LISTENERS6`), puts the outer header
//! of the probe's family in front (the kernel keeps the inner offsets, so checksum
//! offload still applies to the probe), and redirects it to the backend's next hop.
//! Unmarked packets pass untouched; a marked one that cannot be tunnelled is dropped, so
//! the probe fails rather than reaching the VIP some other way.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibParams,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{
    EncapSource6, Encapsulation, FlowKey, ListenerKey, PROBE_MARK_MASK, PROBE_MARK_TAG, PROTO_TCP,
    PROTO_UDP, V6,
    encap::{Inner, Inner6, Outer, Outer6},
    family::{Family, addr6},
};
use network_types::{
    eth::EtherType,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    frame::ETH_LEN,
    maps::{BACKENDS, BACKENDS6, ENCAP_SOURCES6, LISTENERS, LISTENERS6},
    words::Cleared,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[classifier]
pub fn lb_probe_tunnel(ctx: TcContext) -> i32 {
    // SAFETY: the context's sk_buff is valid for the program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & PROBE_MARK_MASK != PROBE_MARK_TAG {
        return TC_ACT_OK;
    }
    let backend_id = mark & !PROBE_MARK_MASK;
    let ether_type: Option<u16> = ctx.load(12).ok();
    let tunnelled = match ether_type {
        Some(t) if t == EtherType::Ipv4 as u16 => tunnel(&ctx, backend_id),
        Some(t) if t == EtherType::Ipv6 as u16 => tunnel6(&ctx, backend_id),
        _ => None,
    };
    tunnelled.unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn tunnel(ctx: &TcContext, backend_id: u32) -> Option<i32> {
    let ip: Ipv4Hdr = ctx.load(ETH_LEN).ok()?;
    if ip.vihl != 0x45 || !(ip.proto == PROTO_TCP || ip.proto == PROTO_UDP) {
        return None;
    }
    let ports: [u16; 2] = ctx.load(ETH_LEN + Ipv4Hdr::LEN).ok()?;
    let (src, dst) = (
        u32::from_ne_bytes(ip.src_addr),
        u32::from_ne_bytes(ip.dst_addr),
    );
    let backend = BACKENDS.get(backend_id)?;
    let listener = LISTENERS.get_ptr(ListenerKey::new(dst, ports[1], ip.proto))?;
    // SAFETY: a map value pointer stays valid for the program run.
    let listener = unsafe { &*listener };
    let encapsulation = Encapsulation::from_u8(listener.encapsulation)?;
    if encapsulation == Encapsulation::None {
        return None;
    }
    let flow = FlowKey::new(src, dst, ports[0], ports[1], ip.proto);
    let inner = Inner {
        len: u16::from_be_bytes(ip.tot_len),
        tos: ip.tos,
        dont_fragment: u16::from_be_bytes(ip.frags) & 0x4000 != 0,
    };
    // The probe's own source (this host's address on the way to the VIP) where the
    // listener sets none.
    let outer = Outer::for_flow(encapsulation, listener, src, backend.addr, &flow, inner);
    let gue = encapsulation == Encapsulation::Gue;
    let flags = if gue {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    };
    ctx.adjust_room(
        i32::from(encapsulation.overhead()),
        BPF_ADJ_ROOM_MAC,
        u64::from(flags),
    )
    .ok()?;
    ctx.store(ETH_LEN, &outer.ipv4_header(), 0).ok()?;
    if gue {
        ctx.store(ETH_LEN + Ipv4Hdr::LEN, &outer.udp_header(), 0)
            .ok()?;
    }

    let mut room = Cleared::<FibParams>::uninit();
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let fib = unsafe { room.zero() };
    fib.family = AF_INET;
    fib.l4_protocol = if gue {
        PROTO_UDP
    } else {
        lb_common::PROTO_IPIP
    };
    fib.__bindgen_anon_3.ipv4_src = outer.src_addr;
    fib.__bindgen_anon_4.ipv4_dst = backend.addr;
    redirect(ctx, fib)
}

/// `tunnel` for an IPv6 probe: its IPv6 backend (`BACKENDS6`), its listener in
/// `LISTENERS6`, the outer IPv6 header of `Outer6`, from the listener's IPv6 `dsr.source`
/// (`ENCAP_SOURCES6`) or the probe's own source. The probe is the host's own TCP or UDP
/// packet: no extension headers.
#[inline(always)]
fn tunnel6(ctx: &TcContext, backend_id: u32) -> Option<i32> {
    let ip: Ipv6Hdr = ctx.load(ETH_LEN).ok()?;
    if ip.vcf[0] >> 4 != 6 || !(ip.next_hdr == PROTO_TCP || ip.next_hdr == PROTO_UDP) {
        return None;
    }
    let ports: [u16; 2] = ctx.load(ETH_LEN + Ipv6Hdr::LEN).ok()?;
    let (src, dst) = (addr6(ip.src_addr), addr6(ip.dst_addr));
    let backend = BACKENDS6.get(backend_id)?.addr;
    let listener = LISTENERS6.get_ptr(V6::listener_key(dst, ports[1], ip.next_hdr))?;
    // SAFETY: a map value pointer stays valid for the program run.
    let listener = unsafe { &*listener };
    let encapsulation = Encapsulation::from_u8(listener.encapsulation)?;
    if encapsulation == Encapsulation::None {
        return None;
    }
    let source = ENCAP_SOURCES6
        .get(listener.id)
        .copied()
        .unwrap_or(EncapSource6::default());
    let flow = V6::flow_key(src, dst, ports[0], ports[1], ip.next_hdr);
    let inner = Inner6::of(
        [ip.vcf[0], ip.vcf[1]],
        Ipv6Hdr::LEN as u16 + u16::from_be_bytes(ip.payload_len),
    );
    let outer = Outer6::for_flow(
        encapsulation,
        listener.encap_port,
        &source,
        src,
        backend,
        &flow,
        inner,
    );
    let gue = encapsulation == Encapsulation::Gue;
    let flags = if gue {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    };
    ctx.adjust_room(
        i32::from(encapsulation.overhead6()),
        BPF_ADJ_ROOM_MAC,
        u64::from(flags),
    )
    .ok()?;
    ctx.store(ETH_LEN, &outer.ipv6_header(), 0).ok()?;
    if gue {
        ctx.store(ETH_LEN + Ipv6Hdr::LEN, &outer.udp_header(), 0)
            .ok()?;
    }

    let mut room = Cleared::<FibParams>::uninit();
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let fib = unsafe { room.zero() };
    fib.family = AF_INET6;
    fib.l4_protocol = if gue {
        PROTO_UDP
    } else {
        lb_common::PROTO_IPV6
    };
    fib.__bindgen_anon_3.ipv6_src = outer.src_addr;
    fib.__bindgen_anon_4.ipv6_dst = backend;
    redirect(ctx, fib)
}

/// Out through the interface of the route `fib` asks for (the outer header's), unmarked;
/// the kernel fills in the MACs of its next hop, resolving it if need be.
#[inline(always)]
fn redirect(ctx: &TcContext, fib: &mut FibParams) -> Option<i32> {
    // The redirect sends the packet through this egress hook again: unmarked, it passes.
    // SAFETY: the context's sk_buff is valid for the program run, and `mark` is a field
    // TC programs may write.
    unsafe { (*ctx.skb.skb).mark = 0 };
    // SAFETY: as above.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the context and a valid, sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), fib, size_of::<FibParams>() as i32, 0) };
    if !(rc as u32 == BPF_FIB_LKUP_RET_SUCCESS || rc as u32 == BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    // SAFETY: no parameters: the kernel resolves the next hop of the packet's destination.
    Some(unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}
