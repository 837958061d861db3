//! Building test frames byte by byte: Ethernet, IPv4 (options, fragments, any TTL) and
//! TCP or UDP ([`Frame`]), or IPv6 (extension headers, any hop limit, traffic class and
//! flow label) and TCP, UDP or ICMPv6 ([`Frame6`]), with checksums computed from scratch
//! (the full RFC 1071 sum, not the incremental updates the data plane uses), so an
//! expected packet is an independent statement of what the output must be.
//! [`verify6`] checks the checksums of an IPv6 frame, whoever wrote it.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::csum;

pub type Mac = [u8; 6];

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `checksum: false` sends a zero ("no checksum") UDP checksum.
    Udp {
        checksum: bool,
    },
    /// Any other IP protocol number, payload only.
    Other(u8),
}

/// A frame under construction. Every field is public so a test can state exactly what
/// differs between input and expected output.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ttl: u8,
    pub id: u16,
    /// The IPv4 don't-fragment flag.
    pub dont_fragment: bool,
    /// TCP window.
    pub window: u16,
    /// Raw IPv4 options (padded to a multiple of 4 by `build`).
    pub options: Vec<u8>,
    /// More-fragments flag and fragment offset (in 8-byte units).
    pub more_fragments: bool,
    pub fragment_offset: u16,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp {
                flags,
                seq: 1000,
                ack: if flags & ACK != 0 { 2000 } else { 0 },
            },
        )
    }

    /// Sets a TCP segment's sequence and acknowledgement numbers.
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        if let Transport::Tcp { flags, .. } = self.transport {
            self.transport = Transport::Tcp { flags, seq, ack };
        }
        self
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::new(src, dst, Transport::Udp { checksum: true })
    }

    fn new(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), transport: Transport) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            src: src.0,
            dst: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            ttl: 64,
            id: 0x1c46,
            dont_fragment: false,
            window: 64240,
            options: Vec::new(),
            more_fragments: false,
            fragment_offset: 0,
            transport,
            payload: b"lb-test".to_vec(),
        }
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn fragment(mut self, more: bool, offset: u16) -> Self {
        self.more_fragments = more;
        self.fragment_offset = offset;
        self
    }

    pub fn no_udp_checksum(mut self) -> Self {
        self.transport = Transport::Udp { checksum: false };
        self
    }

    pub fn protocol(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
            Transport::Other(p) => p,
        }
    }

    /// Offset of the L4 header in the built frame.
    pub fn l4_offset(&self) -> usize {
        14 + 20 + self.options.len().div_ceil(4) * 4
    }

    /// The L4 segment (header and payload) with its checksum filled in.
    fn segment(&self) -> Vec<u8> {
        let mut seg = Vec::new();
        match self.transport {
            Transport::Tcp { flags, seq, ack } => {
                seg.extend_from_slice(&self.src_port.to_be_bytes());
                seg.extend_from_slice(&self.dst_port.to_be_bytes());
                seg.extend_from_slice(&seq.to_be_bytes());
                seg.extend_from_slice(&ack.to_be_bytes());
                seg.push(5 << 4);
                seg.push(flags);
                seg.extend_from_slice(&self.window.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]);
                seg.extend_from_slice(&self.payload);
                let c = csum::l4_checksum(self.src.octets(), self.dst.octets(), 6, &seg);
                seg[16..18].copy_from_slice(&c.to_ne_bytes());
            }
            Transport::Udp { checksum } => {
                seg.extend_from_slice(&self.src_port.to_be_bytes());
                seg.extend_from_slice(&self.dst_port.to_be_bytes());
                seg.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&self.payload);
                if checksum {
                    let c = csum::udp_nonzero(csum::l4_checksum(
                        self.src.octets(),
                        self.dst.octets(),
                        17,
                        &seg,
                    ));
                    seg[6..8].copy_from_slice(&c.to_ne_bytes());
                }
            }
            Transport::Other(_) => seg.extend_from_slice(&self.payload),
        }
        seg
    }

    pub fn build(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let segment = self.segment();
        let ihl = 5 + options.len() / 4;
        let tot_len = (ihl * 4 + segment.len()) as u16;
        let mut ip = Vec::with_capacity(ihl * 4);
        ip.push(0x40 | ihl as u8);
        ip.push(0);
        ip.extend_from_slice(&tot_len.to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        let frag = (u16::from(self.dont_fragment) << 14)
            | (u16::from(self.more_fragments) << 13)
            | (self.fragment_offset & 0x1fff);
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.protocol());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&options);
        let c = csum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());

        let mut frame = Vec::with_capacity(14 + ip.len() + segment.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
        frame
    }
}

/// Recomputes the IPv4 header checksum of a frame in place (for hand-mutated headers).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let end = (14 + ihl.max(20)).min(frame.len());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum::checksum(&frame[14..end]);
    frame[24..26].copy_from_slice(&c.to_ne_bytes());
}

/// Sets the IPv4 total length field (and fixes the header checksum).
pub fn set_total_length(frame: &mut [u8], len: u16) {
    frame[16..18].copy_from_slice(&len.to_be_bytes());
    fix_ip_checksum(frame);
}

/// A MAC as `ip link` prints and takes it (`aa:bb:cc:dd:ee:ff`).
pub fn mac_string(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a MAC as printed by `ip link` (`aa:bb:cc:dd:ee:ff`).
pub fn parse_mac(s: &str) -> Mac {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC address: {s:?}");
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).unwrap_or_else(|e| panic!("not a MAC address: {s:?}: {e}"));
    }
    mac
}

/// A readable diff of two frames: the offsets that differ, with both bytes.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let mut out = String::new();
    if got.len() != want.len() {
        out.push_str(&format!(
            "length {} != expected {}\n",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            out.push_str(&format!("  byte {i:3}: got {g:#04x} want {w:#04x}\n"));
        }
    }
    out
}

/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IPv6 next-header numbers: extension headers and the upper layers the builders make.
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_TCP: u8 = 6;
pub const NH_UDP: u8 = 17;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_AH: u8 = 51;
pub const NH_ICMPV6: u8 = 58;
pub const NH_NO_NEXT: u8 = 59;
pub const NH_DEST_OPTS: u8 = 60;

/// ICMPv6 message types (RFC 4443, RFC 4861).
pub const ICMP6_DEST_UNREACHABLE: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_PARAM_PROBLEM: u8 = 4;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
pub const ICMP6_ROUTER_SOLICIT: u8 = 133;
pub const ICMP6_ROUTER_ADVERT: u8 = 134;
pub const ICMP6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMP6_NEIGHBOR_ADVERT: u8 = 136;

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// An IPv6 extension header of a [`Frame6`], encoded in the order given, each one's next
/// header pointing at the one after it (the last at the upper layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop options (next header 0): the options' bytes, padded with Pad1 or PadN to
    /// the header's multiple of 8 bytes.
    HopByHop(Vec<u8>),
    /// Destination options (next header 60), padded as [`ExtHeader::HopByHop`].
    DestOpts(Vec<u8>),
    /// A routing header (next header 43): its type, segments left, and the type-specific
    /// data after those 4 bytes (zero-padded to the header's multiple of 8). With
    /// `segments_left > 0` the upper-layer checksum is over the final destination
    /// (RFC 8200 §8.1), for types 0, 2 and 4. See [`ExtHeader::srh`] and
    /// [`ExtHeader::routing0`].
    Routing {
        routing_type: u8,
        segments_left: u8,
        data: Vec<u8>,
    },
    /// A fragment header (next header 44): offset in 8-byte units, the M (more fragments)
    /// flag and the identification.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Any header number `kind` in the common layout (next header, length in 8-byte units
    /// beyond the first 8): `body` is what follows those two bytes, zero-padded.
    Other { kind: u8, body: Vec<u8> },
    /// Exactly `bytes` after the next-header byte, length byte included and unchecked: a
    /// malformed header (a length running past the packet, say).
    Raw { kind: u8, bytes: Vec<u8> },
}

impl ExtHeader {
    /// A segment routing header (routing type 4, RFC 8754) with segment list `segments`
    /// (in the header's order: `segments[0]` is the final destination).
    pub fn srh(segments_left: u8, segments: &[Ipv6Addr]) -> Self {
        let mut data = vec![segments.len().saturating_sub(1) as u8, 0, 0, 0];
        for s in segments {
            data.extend_from_slice(&s.octets());
        }
        ExtHeader::Routing {
            routing_type: 4,
            segments_left,
            data,
        }
    }

    /// A type-0 routing header (deprecated by RFC 5095) through `addresses` (the last is
    /// the final destination).
    pub fn routing0(segments_left: u8, addresses: &[Ipv6Addr]) -> Self {
        let mut data = vec![0; 4];
        for a in addresses {
            data.extend_from_slice(&a.octets());
        }
        ExtHeader::Routing {
            routing_type: 0,
            segments_left,
            data,
        }
    }

    /// The next-header number announcing this header.
    pub fn kind(&self) -> u8 {
        match self {
            ExtHeader::HopByHop(_) => NH_HOP_BY_HOP,
            ExtHeader::DestOpts(_) => NH_DEST_OPTS,
            ExtHeader::Routing { .. } => NH_ROUTING,
            ExtHeader::Fragment { .. } => NH_FRAGMENT,
            ExtHeader::Other { kind, .. } | ExtHeader::Raw { kind, .. } => *kind,
        }
    }

    /// The header's bytes, with `next` as its next header.
    pub fn encode(&self, next: u8) -> Vec<u8> {
        let mut h = vec![next];
        match self {
            ExtHeader::HopByHop(options) | ExtHeader::DestOpts(options) => {
                h.push(0);
                h.extend_from_slice(options);
                match (8 - h.len() % 8) % 8 {
                    0 => {}
                    1 => h.push(0), // Pad1
                    n => {
                        h.extend_from_slice(&[1, n as u8 - 2]); // PadN
                        h.resize(h.len() + n - 2, 0);
                    }
                }
            }
            ExtHeader::Routing {
                routing_type,
                segments_left,
                data,
            } => {
                h.extend_from_slice(&[0, *routing_type, *segments_left]);
                h.extend_from_slice(data);
                h.resize(h.len().div_ceil(8).max(1) * 8, 0);
            }
            ExtHeader::Fragment { offset, more, id } => {
                h.push(0);
                h.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
            }
            ExtHeader::Other { body, .. } => {
                h.push(0);
                h.extend_from_slice(body);
                h.resize(h.len().div_ceil(8).max(1) * 8, 0);
            }
            ExtHeader::Raw { bytes, .. } => {
                h.extend_from_slice(bytes);
                return h;
            }
        }
        h[1] = (h.len() / 8 - 1) as u8;
        h
    }
}

#[derive(Clone, Debug)]
pub enum Transport6 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `checksum: false` sends a zero UDP checksum, which IPv6 forbids (for tests of
    /// what is done with one).
    Udp {
        checksum: bool,
    },
    /// ICMPv6: type, code and the 4 bytes after the checksum (the MTU of a Packet Too Big,
    /// the pointer of a Parameter Problem, identifier and sequence of an echo); the body
    /// (a quoted packet, echo data) is the frame's payload.
    Icmp6 {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
    /// Any other upper-layer number, payload only.
    Other(u8),
}

/// An IPv6 frame under construction, the counterpart of [`Frame`]. Every field is public
/// so a test can state exactly what differs between input and expected output.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub hop_limit: u8,
    pub traffic_class: u8,
    /// The 20-bit flow label (higher bits are ignored).
    pub flow_label: u32,
    /// TCP window.
    pub window: u16,
    /// Extension headers, in order, between the IPv6 header and the upper layer.
    pub ext: Vec<ExtHeader>,
    pub transport: Transport6,
    pub payload: Vec<u8>,
}

impl Frame6 {
    pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Self {
        Self::new(
            src,
            dst,
            Transport6::Tcp {
                flags,
                seq: 1000,
                ack: if flags & ACK != 0 { 2000 } else { 0 },
            },
        )
    }

    pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Self {
        Self::new(src, dst, Transport6::Udp { checksum: true })
    }

    /// An ICMPv6 message without body (add one with [`Frame6::payload`]).
    pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, rest: [u8; 4]) -> Self {
        Self::new((src, 0), (dst, 0), Transport6::Icmp6 { kind, code, rest }).payload(&[])
    }

    /// An echo request with identifier `id`, sequence `seq` and body `lb-test`.
    pub fn echo_request(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Self {
        Self::echo(ICMP6_ECHO_REQUEST, src, dst, id, seq)
    }

    /// An echo reply with identifier `id`, sequence `seq` and body `lb-test`.
    pub fn echo_reply(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Self {
        Self::echo(ICMP6_ECHO_REPLY, src, dst, id, seq)
    }

    fn echo(kind: u8, src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Self {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        Self::icmp6(src, dst, kind, 0, [a, b, c, d]).payload(b"lb-test")
    }

    /// An ICMPv6 error of `kind` and `code` (the 4 bytes after the checksum: `rest`)
    /// quoting `quoted`, an IPv6 packet without its Ethernet header ([`Frame6::packet`],
    /// or `&frame[14..]`; cut it to quote less).
    pub fn icmp6_error(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        kind: u8,
        code: u8,
        rest: [u8; 4],
        quoted: &[u8],
    ) -> Self {
        Self::icmp6(src, dst, kind, code, rest).payload(quoted)
    }

    /// Packet Too Big with `mtu`, quoting the IPv6 packet `quoted`.
    pub fn packet_too_big(src: Ipv6Addr, dst: Ipv6Addr, mtu: u32, quoted: &[u8]) -> Self {
        Self::icmp6_error(src, dst, ICMP6_PACKET_TOO_BIG, 0, mtu.to_be_bytes(), quoted)
    }

    fn new(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), transport: Transport6) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            src: src.0,
            dst: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
            window: 64240,
            ext: Vec::new(),
            transport,
            payload: b"lb-test".to_vec(),
        }
    }

    /// Sets a TCP segment's sequence and acknowledgement numbers.
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        if let Transport6::Tcp { flags, .. } = self.transport {
            self.transport = Transport6::Tcp { flags, seq, ack };
        }
        self
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    pub fn traffic_class(mut self, traffic_class: u8) -> Self {
        self.traffic_class = traffic_class;
        self
    }

    pub fn flow_label(mut self, flow_label: u32) -> Self {
        self.flow_label = flow_label & 0xf_ffff;
        self
    }

    /// Appends an extension header (after those added before).
    pub fn ext(mut self, header: ExtHeader) -> Self {
        self.ext.push(header);
        self
    }

    /// Appends a fragment header: offset in 8-byte units, M flag, identification.
    pub fn fragment(self, offset: u16, more: bool, id: u32) -> Self {
        self.ext(ExtHeader::Fragment { offset, more, id })
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn no_udp_checksum(mut self) -> Self {
        self.transport = Transport6::Udp { checksum: false };
        self
    }

    /// The upper-layer protocol (the last next header).
    pub fn protocol(&self) -> u8 {
        match self.transport {
            Transport6::Tcp { .. } => NH_TCP,
            Transport6::Udp { .. } => NH_UDP,
            Transport6::Icmp6 { .. } => NH_ICMPV6,
            Transport6::Other(p) => p,
        }
    }

    /// The encoded extension headers, chained to the upper layer.
    fn ext_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (i, header) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.protocol(), ExtHeader::kind);
            bytes.extend(header.encode(next));
        }
        bytes
    }

    /// Offset of the upper-layer header in the built frame.
    pub fn l4_offset(&self) -> usize {
        14 + IPV6_HEADER_LEN + self.ext_bytes().len()
    }

    /// The upper-layer segment (header and payload) with its checksum filled in, summed
    /// over the pseudo-header with `pseudo_dst` (the final destination).
    fn segment(&self, pseudo_dst: Ipv6Addr) -> Vec<u8> {
        let mut seg = Vec::new();
        let sum = |seg: &[u8]| pseudo_checksum6(self.src, pseudo_dst, self.protocol(), seg);
        match self.transport {
            Transport6::Tcp { flags, seq, ack } => {
                seg.extend_from_slice(&self.src_port.to_be_bytes());
                seg.extend_from_slice(&self.dst_port.to_be_bytes());
                seg.extend_from_slice(&seq.to_be_bytes());
                seg.extend_from_slice(&ack.to_be_bytes());
                seg.push(5 << 4);
                seg.push(flags);
                seg.extend_from_slice(&self.window.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]);
                seg.extend_from_slice(&self.payload);
                let c = sum(&seg);
                seg[16..18].copy_from_slice(&c.to_be_bytes());
            }
            Transport6::Udp { checksum } => {
                seg.extend_from_slice(&self.src_port.to_be_bytes());
                seg.extend_from_slice(&self.dst_port.to_be_bytes());
                seg.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&self.payload);
                if checksum {
                    // Mandatory in IPv6, so a computed 0 goes out as its other form.
                    let c = match sum(&seg) {
                        0 => 0xffff,
                        c => c,
                    };
                    seg[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            Transport6::Icmp6 { kind, code, rest } => {
                seg.extend_from_slice(&[kind, code, 0, 0]);
                seg.extend_from_slice(&rest);
                seg.extend_from_slice(&self.payload);
                let c = sum(&seg);
                seg[2..4].copy_from_slice(&c.to_be_bytes());
            }
            Transport6::Other(_) => seg.extend_from_slice(&self.payload),
        }
        seg
    }

    /// The IPv6 packet (header, extension headers, upper layer) without Ethernet: what an
    /// ICMPv6 error quotes.
    pub fn packet(&self) -> Vec<u8> {
        let ext = self.ext_bytes();
        let first = self.ext.first().map_or(self.protocol(), ExtHeader::kind);
        // The pseudo-header's destination is the final one when a routing header has
        // segments left; a malformed chain sums over `dst`.
        let pseudo_dst = walk_ext(first, &ext, self.dst).map_or(self.dst, |w| w.final_dst);
        let segment = self.segment(pseudo_dst);
        let payload_len = (ext.len() + segment.len()) as u16;
        let tc = self.traffic_class;
        let fl = self.flow_label & 0xf_ffff;
        let mut p = Vec::with_capacity(IPV6_HEADER_LEN + usize::from(payload_len));
        p.push(0x60 | tc >> 4);
        p.push((tc << 4) | (fl >> 16) as u8);
        p.extend_from_slice(&(fl as u16).to_be_bytes());
        p.extend_from_slice(&payload_len.to_be_bytes());
        p.push(first);
        p.push(self.hop_limit);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&ext);
        p.extend_from_slice(&segment);
        p
    }

    pub fn build(&self) -> Vec<u8> {
        let packet = self.packet();
        let mut frame = Vec::with_capacity(14 + packet.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        frame.extend_from_slice(&packet);
        frame
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded), added to
/// `acc` (not folded).
fn sum_be(data: &[u8], acc: u64) -> u64 {
    data.chunks(2).fold(acc, |acc, w| {
        acc + u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))
    })
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP/UDP/ICMPv6 checksum (as a number, to be written big-endian) of `segment`
/// (checksum field zero) over the IPv6 pseudo-header (RFC 8200 §8.1): source,
/// destination, upper-layer length, next header. 0 is returned as is; UDP sends it as
/// 0xffff.
pub fn pseudo_checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    !fold(pseudo_sum6(src, dst, next_header, segment))
}

fn pseudo_sum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u64 {
    let len = segment.len() as u32;
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    sum_be(segment, sum_be(&pseudo, 0))
}

/// What [`parse6`] found between the IPv6 header and the upper layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The destination the upper-layer checksum covers: `dst`, or the final one of a
    /// routing header (types 0, 2, 4) with segments left.
    pub final_dst: Ipv6Addr,
    pub hop_limit: u8,
    /// The next-header numbers of the extension headers, in order.
    pub ext: Vec<u8>,
    /// The upper-layer protocol (the first next header that is no extension header).
    pub protocol: u8,
    /// Offset of the upper-layer header in the frame given to [`parse6`] (or in the
    /// packet given to [`parse6_packet`]).
    pub l4_offset: usize,
    /// Offset (8-byte units) and M flag of a fragment header.
    pub fragment: Option<(u16, bool)>,
}

struct Walk {
    ext: Vec<u8>,
    protocol: u8,
    offset: usize,
    final_dst: Ipv6Addr,
    fragment: Option<(u16, bool)>,
}

/// Whether next header `n` is an extension header in the common layout.
fn is_extension(n: u8) -> bool {
    // Hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6 and
    // the two experimental numbers (RFC 7045's list).
    matches!(n, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Walks the extension headers in `data` (what follows the fixed header) from `first`.
fn walk_ext(first: u8, data: &[u8], dst: Ipv6Addr) -> Result<Walk, String> {
    let mut walk = Walk {
        ext: Vec::new(),
        protocol: first,
        offset: 0,
        final_dst: dst,
        fragment: None,
    };
    while is_extension(walk.protocol) {
        let at = walk.offset;
        let kind = walk.protocol;
        let header = data.get(at..at + 8).ok_or_else(|| {
            format!("extension header {kind} at payload offset {at} runs past the packet")
        })?;
        let len = match kind {
            NH_FRAGMENT => 8,
            NH_AH => (usize::from(header[1]) + 2) * 4,
            _ => (usize::from(header[1]) + 1) * 8,
        };
        let header = data.get(at..at + len).ok_or_else(|| {
            format!(
                "extension header {kind} at payload offset {at} ({len} bytes) runs past the packet"
            )
        })?;
        match kind {
            NH_FRAGMENT => {
                let off_m = u16::from_be_bytes([header[2], header[3]]);
                walk.fragment = Some((off_m >> 3, off_m & 1 != 0));
            }
            NH_ROUTING if header[3] > 0 => {
                let final_at = match header[2] {
                    0 => Some(len - 16).filter(|&at| at >= 8),
                    2 | 4 => Some(8).filter(|_| len >= 24),
                    _ => None,
                };
                if let Some(f) = final_at {
                    let octets: [u8; 16] = header[f..f + 16].try_into().expect("16 bytes");
                    walk.final_dst = Ipv6Addr::from(octets);
                }
            }
            _ => {}
        }
        walk.ext.push(kind);
        walk.protocol = header[0];
        walk.offset += len;
    }
    Ok(walk)
}

/// Parses an Ethernet + IPv6 frame's headers up to the upper layer.
pub fn parse6(frame: &[u8]) -> Result<Headers6, String> {
    let ethertype = frame
        .get(12..14)
        .map(|t| u16::from_be_bytes([t[0], t[1]]))
        .ok_or_else(|| format!("a frame of {} bytes has no Ethernet header", frame.len()))?;
    if ethertype != ETH_P_IPV6 {
        return Err(format!("EtherType {ethertype:#06x}, not IPv6"));
    }
    let mut headers = parse6_packet(&frame[14..])?;
    headers.l4_offset += 14;
    Ok(headers)
}

/// [`parse6`] of an IPv6 packet without Ethernet header (a quoted one, say).
pub fn parse6_packet(packet: &[u8]) -> Result<Headers6, String> {
    if packet.len() < IPV6_HEADER_LEN {
        return Err(format!("{} bytes: no IPv6 header", packet.len()));
    }
    if packet[0] >> 4 != 6 {
        return Err(format!("IP version {}, not 6", packet[0] >> 4));
    }
    let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let follows = packet.len() - IPV6_HEADER_LEN;
    if payload_len != follows {
        return Err(format!(
            "payload length {payload_len}, but {follows} bytes follow the IPv6 header"
        ));
    }
    let address = |at: usize| -> Ipv6Addr {
        let octets: [u8; 16] = packet[at..at + 16].try_into().expect("16 bytes");
        Ipv6Addr::from(octets)
    };
    let (src, dst) = (address(8), address(24));
    let walk = walk_ext(packet[6], &packet[IPV6_HEADER_LEN..], dst)?;
    Ok(Headers6 {
        src,
        dst,
        final_dst: walk.final_dst,
        hop_limit: packet[7],
        ext: walk.ext,
        protocol: walk.protocol,
        l4_offset: IPV6_HEADER_LEN + walk.offset,
        fragment: walk.fragment,
    })
}

/// Checks an Ethernet + IPv6 frame: its payload length matches the frame, its extension
/// headers chain up, and the TCP, UDP or ICMPv6 checksum is right over the pseudo-header
/// (to the final destination when a routing header has segments left). A zero UDP
/// checksum is an error (mandatory in IPv6). `Err` says what is wrong, for an assertion
/// message: `verify6(&out).unwrap_or_else(|e| panic!("{e}\n{}", diff(&out, &want)))`.
///
/// A non-first fragment (no upper-layer header) and other upper layers are errors too:
/// there is no checksum to verify. A first fragment's checksum is checked over what it
/// carries (how [`Frame6`] builds one). The checksums of a packet quoted inside an
/// ICMPv6 error are not looked at; [`verify6_packet`] checks them when it is whole.
pub fn verify6(frame: &[u8]) -> Result<(), String> {
    let headers = parse6(frame)?;
    verify_l4(&headers, &frame[headers.l4_offset..])
}

/// [`verify6`] of an IPv6 packet without Ethernet header, e.g. one quoted in an ICMPv6
/// error: `verify6_packet(&frame[Frame6::l4_offset() + 8..])`.
pub fn verify6_packet(packet: &[u8]) -> Result<(), String> {
    let headers = parse6_packet(packet)?;
    verify_l4(&headers, &packet[headers.l4_offset..])
}

fn verify_l4(h: &Headers6, segment: &[u8]) -> Result<(), String> {
    if let Some((offset @ 1.., _)) = h.fragment {
        return Err(format!(
            "a fragment at offset {offset} (8-byte units) has no upper-layer header to verify"
        ));
    }
    let (name, min, at) = match h.protocol {
        NH_TCP => ("TCP", 20, 16),
        NH_UDP => ("UDP", 8, 6),
        NH_ICMPV6 => ("ICMPv6", 8, 2),
        other => return Err(format!("next header {other}: no checksum to verify")),
    };
    if segment.len() < min {
        return Err(format!(
            "{name} segment of {} bytes, under {min}",
            segment.len()
        ));
    }
    let stored = u16::from_be_bytes([segment[at], segment[at + 1]]);
    if h.protocol == NH_UDP {
        let len = usize::from(u16::from_be_bytes([segment[4], segment[5]]));
        if len != segment.len() {
            return Err(format!(
                "UDP length {len}, but the segment is {} bytes",
                segment.len()
            ));
        }
        if stored == 0 {
            return Err("UDP checksum 0 (\"none\"), which IPv6 does not allow".into());
        }
    }
    let sum = fold(pseudo_sum6(h.src, h.final_dst, h.protocol, segment));
    if sum != 0xffff {
        let mut zeroed = segment.to_vec();
        zeroed[at..at + 2].fill(0);
        let want = pseudo_checksum6(h.src, h.final_dst, h.protocol, &zeroed);
        return Err(format!(
            "{name} checksum {stored:#06x}, should be {want:#06x} (pseudo-header {} → {})",
            h.src, h.final_dst
        ));
    }
    Ok(())
}

/// Sets the IPv6 payload length field of a frame (for hand-made malformed lengths).
pub fn set_payload_length6(frame: &mut [u8], len: u16) {
    frame[18..20].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_headers_verify() {
        let f = Frame::tcp(
            ("198.18.0.2".parse().unwrap(), 40000),
            ("198.19.0.100".parse().unwrap(), 80),
            SYN,
        )
        .options(&[1, 1, 1, 0]);
        let b = f.build();
        assert_eq!(b[14], 0x46);
        assert_eq!(csum::checksum(&b[14..38]), 0, "IP header sums to zero");
        let seg = &b[38..];
        let mut pseudo_sum = Vec::new();
        pseudo_sum.extend_from_slice(&b[26..34]);
        pseudo_sum.extend_from_slice(&[0, 6]);
        pseudo_sum.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        pseudo_sum.extend_from_slice(seg);
        assert_eq!(csum::checksum(&pseudo_sum), 0, "TCP segment sums to zero");
    }
}

#[cfg(test)]
mod tests6 {
    use super::*;

    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x100);
    const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 0x11);
    const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0xfe);

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// The checksums of known frames, computed separately (a plain RFC 1071 sum over
    /// the RFC 8200 pseudo-header in Python): UDP, TCP and ICMPv6.
    #[test]
    fn known_frames_have_known_checksums() {
        let udp = Frame6::udp((CLIENT6, 40000), (VIP6, 53))
            .payload(b"query")
            .build();
        assert_eq!(udp.len(), 14 + 40 + 8 + 5);
        assert_eq!(&udp[12..14], &[0x86, 0xdd]);
        assert_eq!(be16(&udp, 18), 13, "payload length");
        assert_eq!((udp[20], udp[21]), (NH_UDP, 64), "next header, hop limit");
        assert_eq!(&udp[22..38], &CLIENT6.octets());
        assert_eq!(&udp[38..54], &VIP6.octets());
        assert_eq!(be16(&udp, 54 + 6), 0xb6d1);
        verify6(&udp).unwrap();

        let tcp = Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN).build();
        assert_eq!(be16(&tcp, 54 + 16), 0x4483);
        verify6(&tcp).unwrap();

        let echo = Frame6::echo_request(CLIENT6, VIP6, 0x1234, 1).build();
        assert_eq!(&echo[54..58], &[ICMP6_ECHO_REQUEST, 0, 0x9d, 0x91]);
        verify6(&echo).unwrap();
    }

    #[test]
    fn traffic_class_flow_label_and_hop_limit_land_in_their_bits() {
        let f = Frame6::udp((CLIENT6, 1), (VIP6, 2))
            .traffic_class(0xb8)
            .flow_label(0x1_2345)
            .hop_limit(1)
            .build();
        assert_eq!(&f[14..18], &[0x6b, 0x81, 0x23, 0x45]);
        assert_eq!(f[21], 1);
        verify6(&f).unwrap();
    }

    /// Every byte the checksum covers (addresses, upper-layer header and payload): one
    /// flipped bit and `verify6` says no. Traffic class, flow label and hop limit are not
    /// covered (IPv6 has no header checksum), so they change nothing.
    #[test]
    fn verify_rejects_any_corrupted_covered_byte() {
        for frame in [
            Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN | ACK).build(),
            Frame6::udp((CLIENT6, 40000), (VIP6, 53)).build(),
            Frame6::echo_reply(VIP6, CLIENT6, 7, 9).build(),
        ] {
            verify6(&frame).unwrap();
            for at in 22..frame.len() {
                let mut bad = frame.clone();
                bad[at] ^= 0x10;
                assert!(
                    verify6(&bad).is_err(),
                    "byte {at} flipped and still verified"
                );
            }
            for at in [14, 15, 16, 17, 21] {
                let mut same = frame.clone();
                same[at] ^= 0x01;
                verify6(&same).unwrap_or_else(|e| panic!("byte {at}: {e}"));
            }
        }
        let mut short = Frame6::udp((CLIENT6, 1), (VIP6, 2)).build();
        set_payload_length6(&mut short, 200);
        let e = verify6(&short).unwrap_err();
        assert!(e.contains("payload length 200"), "{e}");
    }

    /// UDP's checksum is mandatory in IPv6: a computed 0 is sent as 0xffff, which
    /// verifies, and a 0 in the field is refused.
    #[test]
    fn udp_checksum_zero_is_sent_as_ffff_and_zero_is_refused() {
        let base = Frame6::udp((CLIENT6, 5000), (VIP6, 53)).payload(&[0, 0]);
        let c = be16(&base.build(), 54 + 6);
        // A payload word equal to the checksum makes the sum 0xffff: checksum 0.
        let zero = base.payload(&c.to_be_bytes()).build();
        assert_eq!(be16(&zero, 54 + 6), 0xffff);
        verify6(&zero).unwrap();

        let none = Frame6::udp((CLIENT6, 5000), (VIP6, 53))
            .no_udp_checksum()
            .build();
        assert_eq!(be16(&none, 54 + 6), 0);
        let e = verify6(&none).unwrap_err();
        assert!(e.contains("UDP checksum 0"), "{e}");
    }

    #[test]
    fn extension_headers_chain_to_the_upper_layer() {
        let f = Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN)
            .ext(ExtHeader::HopByHop(vec![5, 2, 0, 0])) // router alert: 6 bytes → 8
            .ext(ExtHeader::DestOpts(vec![]))
            .fragment(0, true, 0xdead_beef);
        let b = f.build();
        assert_eq!(f.l4_offset(), 14 + 40 + 8 + 8 + 8);
        assert_eq!(b[20], NH_HOP_BY_HOP);
        // Hop-by-hop: next, length 0, router alert, PadN of 0 bytes.
        assert_eq!(&b[54..62], &[NH_DEST_OPTS, 0, 5, 2, 0, 0, 1, 0]);
        // Destination options: next, length 0, PadN of 4 bytes.
        assert_eq!(&b[62..70], &[NH_FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(&b[70..78], &[NH_TCP, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(usize::from(be16(&b, 18)), b.len() - 54);
        let h = parse6(&b).unwrap();
        assert_eq!(h.ext, [NH_HOP_BY_HOP, NH_DEST_OPTS, NH_FRAGMENT]);
        assert_eq!((h.protocol, h.l4_offset), (NH_TCP, f.l4_offset()));
        assert_eq!(h.fragment, Some((0, true)));
        verify6(&b).unwrap();

        // Pad1 for one byte of padding; a later fragment has no header to verify.
        let pad1 = ExtHeader::DestOpts(vec![1, 3, 0, 0, 0]).encode(NH_UDP);
        assert_eq!(pad1, [NH_UDP, 0, 1, 3, 0, 0, 0, 0]);
        let later = Frame6::udp((CLIENT6, 1), (VIP6, 2))
            .fragment(185, false, 7)
            .build();
        assert_eq!(&later[54..58], &[NH_UDP, 0, 0x05, 0xc8]);
        let e = verify6(&later).unwrap_err();
        assert!(e.contains("offset 185"), "{e}");

        // A header whose length runs past the packet.
        let raw = Frame6::udp((CLIENT6, 1), (VIP6, 2))
            .ext(ExtHeader::Raw {
                kind: NH_DEST_OPTS,
                bytes: vec![200, 1, 4, 0, 0, 0, 0],
            })
            .build();
        assert!(verify6(&raw).unwrap_err().contains("runs past"));
    }

    /// With segments left, the checksum covers the routing header's final destination;
    /// with none left, the IPv6 destination.
    #[test]
    fn routing_header_final_destination_is_in_the_pseudo_header() {
        let final_dst = BACKEND6;
        let via = |left: u8| {
            Frame6::udp((CLIENT6, 1000), (VIP6, 53))
                .ext(ExtHeader::srh(left, &[final_dst, VIP6]))
                .build()
        };
        let (pending, done) = (via(1), via(0));
        assert_eq!(&pending[54..62], &[NH_UDP, 4, 4, 1, 1, 0, 0, 0]);
        assert_eq!(parse6(&pending).unwrap().final_dst, final_dst);
        assert_eq!(parse6(&done).unwrap().final_dst, VIP6);
        verify6(&pending).unwrap();
        verify6(&done).unwrap();
        let udp_check = |f: &[u8]| parse6(f).unwrap().l4_offset + 6;
        let (at_p, at_d) = (udp_check(&pending), udp_check(&done));
        assert_ne!(be16(&pending, at_p), be16(&done, at_d));
        let plain = Frame6::udp((CLIENT6, 1000), (final_dst, 53)).build();
        assert_eq!(be16(&pending, at_p), be16(&plain, 54 + 6));

        let type0 = Frame6::udp((CLIENT6, 1000), (VIP6, 53))
            .ext(ExtHeader::routing0(2, &[ROUTER6, final_dst]))
            .build();
        assert_eq!(parse6(&type0).unwrap().final_dst, final_dst);
        verify6(&type0).unwrap();
    }

    /// Packet Too Big: type, code, MTU, the quoted packet whole, and a checksum over all
    /// of it.
    #[test]
    fn packet_too_big_quotes_a_packet() {
        let inner = Frame6::tcp((VIP6, 80), (CLIENT6, 40000), ACK)
            .payload(&[0x55; 100])
            .packet();
        let ptb = Frame6::packet_too_big(ROUTER6, VIP6, 1280, &inner).build();
        let at = 14 + 40;
        assert_eq!(ptb[20], NH_ICMPV6);
        assert_eq!(&ptb[at..at + 2], &[ICMP6_PACKET_TOO_BIG, 0]);
        assert_eq!(&ptb[at + 4..at + 8], &1280u32.to_be_bytes());
        assert_eq!(&ptb[at + 8..], &inner[..]);
        verify6(&ptb).unwrap();
        verify6_packet(&ptb[at + 8..]).unwrap();
        let mut bad = ptb.clone();
        bad[at + 8 + 24] ^= 1; // the quoted packet's destination
        assert!(verify6(&bad).is_err());

        let cut = Frame6::icmp6_error(
            BACKEND6,
            CLIENT6,
            ICMP6_DEST_UNREACHABLE,
            4,
            [0; 4],
            &inner[..48],
        )
        .build();
        verify6(&cut).unwrap();
        assert!(
            verify6_packet(&cut[at + 8..]).is_err(),
            "a cut quote is not whole"
        );
    }
}
