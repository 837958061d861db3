//! The backends' decapsulation program, `lb_decap` (`lb-ctl decap attach IFACE`). With
//! `forwarding: dsr` the load balancer sends each client packet to its backend inside an
//! outer header of the packet's family: IPv4 (IPIP) or IPv4 + UDP (GUE) around an IPv4
//! packet, IPv6 (next header 41) or IPv6 + UDP (GUE) around an IPv6 one; many kernels
//! have no `ipip`, `ip6_tunnel` or `fou` module to strip it, so this XDP program does, and
//! passes the client's packet, to the VIP the backend holds on its loopback, to the
//! kernel, which answers the client directly.
//!
//! Every IPIP and ip6ip6 packet, and every UDP packet to the GUE port, arriving on the
//! interface is taken as a tunnel to this host (as Katran's decapsulation does: the XDP
//! FIB lookup cannot tell a local address on a host that does not forward). With
//! `--allow-source`, only the LB hosts' prefixes may send them: anyone else could hand
//! the backend a packet from any "client". Outer fragments, outer IP options and IPv6
//! extension headers before the inner header go to the kernel as they are. GUE's UDP
//! checksum is not checked: the LB sends none (RFC 6935/6936 allow that over IPv6 for a
//! tunnel), and the inner packet carries its own. Every packet is counted under one
//! `DecapReason` (`lb-ctl decap status`).

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
#[path = "../frame.rs"]
mod frame;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{
            BPF_F_NO_PREALLOC,
            xdp_action::{XDP_DROP, XDP_PASS},
        },
        helpers::generated::bpf_xdp_adjust_head,
        macros::{map, xdp},
        maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use lb_common::{
        IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, UDP_HEADER_LEN,
        decap::{DECAP_REASON_COUNT, DecapReason, DecapSettings, MAX_DECAP_SOURCES},
    };
    use network_types::{
        eth::{EthHdr, EtherType},
        ip::{Ipv4Hdr, Ipv6Hdr},
        udp::UdpHdr,
    };

    use crate::frame::{ETH_LEN, ptr_at};

    /// The license the kernel checks helpers against.
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    #[map(name = "DECAP_SETTINGS")]
    static DECAP_SETTINGS: Array<DecapSettings> = Array::with_max_entries(1, 0);

    #[map(name = "DECAP_COUNTERS")]
    static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_REASON_COUNT, 0);

    /// Outer source prefixes allowed to tunnel (key: the address, network byte order).
    #[map(name = "DECAP_SOURCES")]
    static DECAP_SOURCES: LpmTrie<u32, u8> =
        LpmTrie::with_max_entries(MAX_DECAP_SOURCES, BPF_F_NO_PREALLOC);

    /// The same for IPv6 outer sources (key: the address's 16 bytes).
    #[map(name = "DECAP_SOURCES6")]
    static DECAP_SOURCES6: LpmTrie<[u8; 16], u8> =
        LpmTrie::with_max_entries(MAX_DECAP_SOURCES, BPF_F_NO_PREALLOC);

    const OUTER_LEN: usize = IPV4_HEADER_LEN as usize;
    const OUTER6_LEN: usize = IPV6_HEADER_LEN as usize;
    /// Extension headers that may stand between an outer IPv6 header and a tunnel's inner
    /// header (hop-by-hop, destination options: RFC 2473's encapsulation limit; fragment).
    const NEXT_HOP_BY_HOP: u8 = 0;
    const NEXT_FRAGMENT: u8 = 44;
    const NEXT_DESTINATION_OPTIONS: u8 = 60;
    const UDP_LEN: usize = UDP_HEADER_LEN as usize;
    /// More-fragments flag and fragment offset of the 16-bit `frags` field (host order).
    const FRAGMENT_BITS: u16 = 0x3fff;

    #[xdp]
    pub fn lb_decap(ctx: XdpContext) -> u32 {
        let (action, reason) = decapsulate(&ctx);
        if let Some(c) = DECAP_COUNTERS.get_ptr_mut(reason as u32) {
            // SAFETY: per-CPU value, only this CPU writes it while the program runs.
            unsafe { *c += 1 };
        }
        action
    }

    #[inline(always)]
    fn decapsulate(ctx: &XdpContext) -> (u32, DecapReason) {
        let pass = (XDP_PASS, DecapReason::PassNotEncapsulated);
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return pass;
        };
        // SAFETY: bounds checked by ptr_at; EthHdr has alignment 1.
        let eth = unsafe { *eth };
        if eth.ether_type == EtherType::Ipv6 as u16 {
            return decapsulate6(ctx, eth);
        }
        if eth.ether_type != EtherType::Ipv4 as u16 {
            return pass;
        }
        let Some(outer) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return pass;
        };
        // SAFETY: as above.
        let outer = unsafe { &*outer };
        let overhead = match outer.proto {
            PROTO_IPIP => OUTER_LEN,
            PROTO_UDP => {
                let Some(udp) = ptr_at::<UdpHdr>(ctx, ETH_LEN + OUTER_LEN) else {
                    return pass;
                };
                let gue_port = DECAP_SETTINGS.get(0).map_or(0, |s| s.gue_port);
                // SAFETY: as above.
                if gue_port == 0 || unsafe { u16::from_ne_bytes((*udp).dst) } != gue_port {
                    return pass;
                }
                OUTER_LEN + UDP_LEN
            }
            _ => return pass,
        };
        if outer.vihl != 0x45 || u16::from_be_bytes(outer.frags) & FRAGMENT_BITS != 0 {
            return (XDP_PASS, DecapReason::PassOuterUnusual);
        }
        let outer_len = u16::from_be_bytes(outer.tot_len) as usize;
        let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN + overhead) else {
            return (XDP_DROP, DecapReason::DropMalformedInner);
        };
        // SAFETY: as above.
        let inner = unsafe { &*inner };
        let inner_len = u16::from_be_bytes(inner.tot_len) as usize;
        if inner.vihl >> 4 != 4 || inner.vihl & 0x0f < 5 || inner_len + overhead != outer_len {
            return (XDP_DROP, DecapReason::DropMalformedInner);
        }
        let restricted = DECAP_SETTINGS
            .get(0)
            .is_some_and(|s| s.restrict_sources != 0);
        let src = u32::from_ne_bytes(outer.src_addr);
        if restricted && DECAP_SOURCES.get(Key::new(32, src)).is_none() {
            return (XDP_DROP, DecapReason::DropSourceRefused);
        }
        let reason = if outer.proto == PROTO_IPIP {
            DecapReason::DecapsulatedIpip
        } else {
            DecapReason::DecapsulatedGue
        };
        strip(ctx, eth, overhead, reason)
    }

    /// `decapsulate` for an IPv6 frame: ip6ip6, or GUE over IPv6 to the GUE port, whose
    /// inner IPv6 packet fills the outer payload exactly.
    #[inline(always)]
    fn decapsulate6(ctx: &XdpContext, eth: EthHdr) -> (u32, DecapReason) {
        let pass = (XDP_PASS, DecapReason::PassNotEncapsulated);
        let Some(outer) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return pass;
        };
        // SAFETY: bounds checked by ptr_at; Ipv6Hdr has alignment 1.
        let outer = unsafe { &*outer };
        let overhead = match outer.next_hdr {
            PROTO_IPV6 => OUTER6_LEN,
            PROTO_UDP => {
                let Some(udp) = ptr_at::<UdpHdr>(ctx, ETH_LEN + OUTER6_LEN) else {
                    return pass;
                };
                let gue_port = DECAP_SETTINGS.get(0).map_or(0, |s| s.gue_port);
                // SAFETY: as above.
                if gue_port == 0 || unsafe { u16::from_ne_bytes((*udp).dst) } != gue_port {
                    return pass;
                }
                OUTER6_LEN + UDP_LEN
            }
            // One extension header, then the inner IPv6 header: a tunnel, but not one
            // this program strips.
            NEXT_HOP_BY_HOP | NEXT_DESTINATION_OPTIONS | NEXT_FRAGMENT => {
                return match ptr_at::<u8>(ctx, ETH_LEN + OUTER6_LEN) {
                    // SAFETY: bounds checked by ptr_at.
                    Some(next) if unsafe { *next } == PROTO_IPV6 => {
                        (XDP_PASS, DecapReason::PassOuterUnusual)
                    }
                    _ => pass,
                };
            }
            _ => return pass,
        };
        if outer.vcf[0] >> 4 != 6 {
            return (XDP_PASS, DecapReason::PassOuterUnusual);
        }
        let outer_payload = u16::from_be_bytes(outer.payload_len) as usize;
        let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN + overhead) else {
            return (XDP_DROP, DecapReason::DropMalformedInner);
        };
        // SAFETY: as above.
        let inner = unsafe { &*inner };
        let inner_len = OUTER6_LEN + u16::from_be_bytes(inner.payload_len) as usize;
        if inner.vcf[0] >> 4 != 6 || inner_len + overhead != OUTER6_LEN + outer_payload {
            return (XDP_DROP, DecapReason::DropMalformedInner);
        }
        let restricted = DECAP_SETTINGS
            .get(0)
            .is_some_and(|s| s.restrict_sources != 0);
        if restricted && DECAP_SOURCES6.get(Key::new(128, outer.src_addr)).is_none() {
            return (XDP_DROP, DecapReason::DropSourceRefused);
        }
        let reason = if outer.next_hdr == PROTO_IPV6 {
            DecapReason::DecapsulatedIp6ip6
        } else {
            DecapReason::DecapsulatedGue6
        };
        strip(ctx, eth, overhead, reason)
    }

    /// Removes the `overhead` bytes of outer headers after the Ethernet header, which
    /// keeps the frame's own addresses (the kernel takes frames addressed to the
    /// interface), and passes the inner packet.
    #[inline(always)]
    fn strip(
        ctx: &XdpContext,
        eth: EthHdr,
        overhead: usize,
        reason: DecapReason,
    ) -> (u32, DecapReason) {
        // SAFETY: ctx is the program's context; the kernel checks the new start lies in
        // the frame (it does: the inner header was read past it).
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, overhead as i32) } != 0 {
            return (XDP_DROP, DecapReason::DropMalformedInner);
        }
        let Some(front) = ptr_at::<EthHdr>(ctx, 0) else {
            return (XDP_DROP, DecapReason::DropMalformedInner);
        };
        // SAFETY: bounds checked by ptr_at.
        unsafe { *front = eth };
        (XDP_PASS, reason)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any program with a reachable panic path, so this
        // handler is never reached in a loaded program.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

/// On the host the crate's binaries are empty: the programs exist for the BPF target only.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
