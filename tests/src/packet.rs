//! Building test frames byte by byte: Ethernet, IPv4 (options, fragments, any TTL) and
//! TCP or UDP, with checksums computed from scratch (the full RFC 1071 sum, not the
//! incremental updates the data plane uses), so an expected packet is an independent
//! statement of what the output must be.

use std::net::Ipv4Addr;

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
