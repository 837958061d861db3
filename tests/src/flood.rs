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
        // SAFETY: plain socket(2); the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let sockaddr = |a: Ipv4Addr| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sockaddr(src);
        let remote = sockaddr(*dst.ip());
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // A forged source is not an address of the namespace: binding it takes
        // IP_FREEBIND, sending from it IP_TRANSPARENT (root may).
        for (option, name) in [
            (libc::IP_FREEBIND, "IP_FREEBIND"),
            (libc::IP_TRANSPARENT, "IP_TRANSPARENT"),
        ] {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt(2) with an int option we own.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    option,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "{name}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: binding our socket to a valid sockaddr_in of the right length.
        let rc = unsafe { libc::bind(fd, (&raw const local).cast(), len) };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let started = Instant::now();
        let mut sent = 0usize;
        for (i, port) in ports.enumerate() {
            let seg = syn_segment(src, dst, port, 0x1000_0000 ^ u32::from(port) << 8);
            // SAFETY: sending 20 bytes we own to a valid sockaddr_in.
            let n = unsafe {
                libc::sendto(
                    fd,
                    seg.as_ptr().cast(),
                    seg.len(),
                    0,
                    (&raw const remote).cast(),
                    len,
                )
            };
            if n == 20 {
                sent += 1;
            }
            // Pace: i SYNs may have gone by i / per_ms milliseconds.
            let due = Duration::from_millis(i as u64 / u64::from(per_ms));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
        }
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(fd) };
        sent
    })
}
