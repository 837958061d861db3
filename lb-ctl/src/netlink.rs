//! The one rtnetlink question the controller asks: how XDP is attached to an interface.
//! A link's `bpf_link_info` has only the interface index for XDP links; the attach mode
//! is an attribute of the interface (`IFLA_XDP` / `IFLA_XDP_ATTACHED`).

use std::{io, time::Duration};

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, recv, send, socket_with,
    sockopt::{Timeout, set_socket_timeout},
};

/// `IFLA_XDP_ATTACHED` values (linux/if_link.h).
pub const XDP_ATTACHED_NONE: u8 = 0;
pub const XDP_ATTACHED_DRV: u8 = 1;
pub const XDP_ATTACHED_SKB: u8 = 2;
pub const XDP_ATTACHED_HW: u8 = 3;
pub const XDP_ATTACHED_MULTI: u8 = 4;

const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// The `IFLA_XDP_ATTACHED` value of interface `ifindex` in the current network namespace.
pub fn xdp_attached(ifindex: u32) -> io::Result<u8> {
    // `None`: the netlink protocol 0, NETLINK_ROUTE.
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // A hung kernel answer must not stop the daemon.
    set_socket_timeout(&fd, Timeout::Recv, Some(Duration::from_secs(2)))?;

    let mut request = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let len = request.len() as u32;
    request[0..4].copy_from_slice(&len.to_ne_bytes());
    request[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    request[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // An unconnected netlink socket sends to the kernel.
    send(&fd, &request, SendFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = recv(&fd, &mut buf[..], RecvFlags::empty())?;
    parse_reply(&buf[..n])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The `IFLA_XDP_ATTACHED` of the RTM_NEWLINK answer; an NLMSG_ERROR as its errno.
fn parse_reply(reply: &[u8]) -> io::Result<u8> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink answer");
    let len = u32_at(reply, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(reply, 4).ok_or_else(bad)?;
    let message = reply.get(..len).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(message, NLMSG_HDRLEN).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != libc::RTM_NEWLINK {
        return Err(bad());
    }
    let attributes = message
        .get(NLMSG_HDRLEN + IFINFOMSG_LEN..)
        .ok_or_else(bad)?;
    let Some(xdp) = attribute(attributes, IFLA_XDP) else {
        return Ok(XDP_ATTACHED_NONE);
    };
    Ok(attribute(xdp, IFLA_XDP_ATTACHED)
        .and_then(|v| v.first().copied())
        .unwrap_or(XDP_ATTACHED_NONE))
}

/// The payload of the first attribute of type `wanted` in a run of rtattrs.
fn attribute(mut attributes: &[u8], wanted: u16) -> Option<&[u8]> {
    while attributes.len() >= 4 {
        let len = usize::from(u16_at(attributes, 0)?);
        let kind = u16_at(attributes, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == wanted {
            return Some(&attributes[4..len]);
        }
        let aligned = (len + 3) & !3;
        attributes = attributes.get(aligned.min(attributes.len())..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtattr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn newlink(attributes: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        m.extend_from_slice(attributes);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m
    }

    #[test]
    fn reads_the_attach_mode_from_the_nested_attribute() {
        let ifname = rtattr(3, b"veth0\0");
        let xdp = rtattr(
            IFLA_XDP | 0x8000,
            &[
                rtattr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]),
                rtattr(4, &7u32.to_ne_bytes()),
            ]
            .concat(),
        );
        let reply = newlink(&[ifname.clone(), xdp].concat());
        assert_eq!(parse_reply(&reply).unwrap(), XDP_ATTACHED_SKB);
        assert_eq!(parse_reply(&newlink(&ifname)).unwrap(), XDP_ATTACHED_NONE);
    }

    #[test]
    fn an_error_answer_is_its_errno() {
        let mut m = vec![0u8; NLMSG_HDRLEN + 4];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m[NLMSG_HDRLEN..].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(
            parse_reply(&m).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        assert!(parse_reply(&[1, 2]).is_err());
    }

    #[test]
    fn the_loopback_has_no_xdp() {
        // Index 1 is the loopback of every network namespace.
        assert_eq!(xdp_attached(1).unwrap(), XDP_ATTACHED_NONE);
    }
}
