//! Forged traffic for the tests: SYNs from a raw socket, with any source address.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use crate::Netns;

/// A minimal TCP header with the SYN flag, checksummed for `src` → `dst`.
pub fn syn_segment(src: Ipv4Addr, dst: SocketAddrV4, sport: u16, seq: u32) -> [u8; 20] {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[4..8].copy_from_slice(&seq.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x02;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = lb_common::csum::l4_checksum(src.octets(), dst.ip().octets(), 6, &seg);
    seg[16..18].copy_from_slice(&c.to_ne_bytes());
    seg
}

/// Sends one SYN from `src` to `dst` for each source port of `ports`, `per_ms` SYNs per
/// millisecond at most, from a raw socket inside `ns` (the client's kernel answers the
/// SYN-ACKs with RSTs, as for any port it has no socket on). `src` need not be an address
/// of `ns`. Returns how many were sent.
pub fn syn_flood(
    ns: &Netns,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    ports: std::ops::Range<u16>,
    per_ms: u32,
) -> usize {
    ns.enter(|| {
        use rustix::net::{self, AddressFamily, SendFlags, SocketType, ipproto, sockopt};
        let socket = net::socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::TCP))
            .unwrap_or_else(|e| panic!("raw socket: {e}"));
        // A forged source is not an address of the namespace: binding it takes
        // IP_FREEBIND, sending from it IP_TRANSPARENT (root may).
        sockopt::set_ip_freebind(&socket, true).unwrap_or_else(|e| panic!("IP_FREEBIND: {e}"));
        let on: libc::c_int = 1;
        // Through libc: rustix has no setter for IP_TRANSPARENT.
        // SAFETY: setsockopt(2) on a socket we own, with an int option we own.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_TRANSPARENT,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_TRANSPARENT: {}", std::io::Error::last_os_error());
        net::bind(&socket, &SocketAddrV4::new(src, 0)).unwrap_or_else(|e| panic!("bind: {e}"));
        let remote = SocketAddrV4::new(*dst.ip(), 0);
        let started = Instant::now();
        let mut sent = 0usize;
        for (i, port) in ports.enumerate() {
            let seg = syn_segment(src, dst, port, 0x1000_0000 ^ u32::from(port) << 8);
            if net::sendto(&socket, &seg, SendFlags::empty(), &remote) == Ok(seg.len()) {
                sent += 1;
            }
            // Pace: i SYNs may have gone by i / per_ms milliseconds.
            let due = Duration::from_millis(i as u64 / u64::from(per_ms));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
        }
        sent
    })
}
