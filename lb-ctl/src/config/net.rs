//! Address prefixes: `IpNet`, of either family (access lists, `refused_client_sources`,
//! `dsr.source`, the decap program's allowed sources), made of an `Ipv4Net` or an
//! `Ipv6Net`. Only a network address (no host bits) is accepted, so `198.18.0.7/24` is
//! refused rather than silently widened to the whole /24.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Serialize, Serializer};

/// An IPv4 prefix such as `198.18.0.0/24`. Always a network address: `IpNet`'s
/// constructor refuses host bits, so every value is one the LPM trie can hold as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// A /32 holding one address.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 32,
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask_v4(self.prefix_len) == u32::from(self.addr)
    }
}

fn mask_v4(prefix_len: u8) -> u32 {
    // `checked_shl` because a shift by 32 (a /0) overflows a u32.
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask_v6(prefix_len: u8) -> u128 {
    // `checked_shl` because a shift by 128 (a /0) overflows a u128.
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// `addr/len` split into its parts; `None` for the length of a plain address. A length
/// that is not all digits is `Err` (u32's parser would also take a leading '+').
fn split_prefix(s: &str) -> Result<(&str, Option<u32>), ()> {
    let Some((addr, len)) = s.split_once('/') else {
        return Ok((s, None));
    };
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    // All digits: only a number too large for a u32 fails, and it is too long anyway.
    Ok((addr, Some(len.parse().unwrap_or(u32::MAX))))
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IPv6 prefix such as `2001:db8::/32`; like `Ipv4Net`, always a network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix_len: u8,
}

impl Ipv6Net {
    /// A /128 holding one address.
    pub fn host(addr: Ipv6Addr) -> Self {
        Self {
            addr,
            prefix_len: 128,
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask_v6(self.prefix_len) == u128::from(self.addr)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A prefix of either family, for the fields that take both. An access list may mix
/// them: a prefix of the other family than a packet's simply never matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpNet {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("{}", malformed(.0))]
    Malformed(String),
    #[error("prefix length {len} is longer than {max}")]
    PrefixTooLong { len: u32, max: u8 },
    #[error("{addr}/{prefix_len} has host bits set")]
    HostBitsSet {
        addr: IpAddr,
        prefix_len: u8,
        network: IpNet,
    },
}

/// Says which family the text looked like, so an IPv6 typo is not explained with the
/// IPv4 syntax.
fn malformed(text: &str) -> String {
    if text.contains(':') {
        format!("`{text}` is not an IPv6 address or prefix (e.g. 2001:db8::1 or 2001:db8::/32)")
    } else {
        format!("`{text}` is not an IP address or prefix (a.b.c.d, a.b.c.d/len or an IPv6 prefix)")
    }
}

impl IpNetError {
    /// What the user probably meant, when that can be told.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::HostBitsSet { network, .. } => Some(format!("did you mean `{network}`?")),
            Self::PrefixTooLong { max: 32, .. } => {
                Some("an IPv4 prefix length is 0..=32".to_owned())
            }
            Self::PrefixTooLong { .. } => Some("an IPv6 prefix length is 0..=128".to_owned()),
            Self::Malformed(text) if text.starts_with('[') => {
                Some("write IPv6 addresses and prefixes without brackets".to_owned())
            }
            Self::Malformed(_) => None,
        }
    }
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, IpNetError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(IpNetError::PrefixTooLong {
                len: prefix_len.into(),
                max,
            });
        }
        let network = match addr {
            IpAddr::V4(a) => Self::V4(Ipv4Net {
                addr: Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len)),
                prefix_len,
            }),
            IpAddr::V6(a) => Self::V6(Ipv6Net {
                addr: Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len)),
                prefix_len,
            }),
        };
        if network.addr() != addr {
            return Err(IpNetError::HostBitsSet {
                addr,
                prefix_len,
                network,
            });
        }
        Ok(network)
    }

    /// A /32 or /128 holding one address.
    pub fn host(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(Ipv4Net::host(a)),
            IpAddr::V6(a) => Self::V6(Ipv6Net::host(a)),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        match self {
            Self::V4(n) => IpAddr::V4(n.addr()),
            Self::V6(n) => IpAddr::V6(n.addr()),
        }
    }

    pub fn prefix_len(&self) -> u8 {
        match self {
            Self::V4(n) => n.prefix_len(),
            Self::V6(n) => n.prefix_len(),
        }
    }

    /// Whether `addr` is inside; never for an address of the other family.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Self::V4(n), IpAddr::V4(a)) => n.contains(a),
            (Self::V6(n), IpAddr::V6(a)) => n.contains(a),
            _ => false,
        }
    }
}

impl From<Ipv4Net> for IpNet {
    fn from(net: Ipv4Net) -> Self {
        Self::V4(net)
    }
}

impl From<Ipv6Net> for IpNet {
    fn from(net: Ipv6Net) -> Self {
        Self::V6(net)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || IpNetError::Malformed(s.to_owned());
        let (addr_text, len) = split_prefix(s).map_err(|()| malformed())?;
        let addr: IpAddr = addr_text.parse().map_err(|_| malformed())?;
        let Some(len) = len else {
            return Ok(Self::host(addr));
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = u8::try_from(len)
            .ok()
            .filter(|l| *l <= max)
            .ok_or(IpNetError::PrefixTooLong { len, max })?;
        Self::new(addr, len)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(n) => n.fmt(f),
            Self::V6(n) => n.fmt(f),
        }
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 prefix, read as the fields that take one read it.
    fn net(s: &str) -> Result<Ipv4Net, IpNetError> {
        match s.parse()? {
            IpNet::V4(n) => Ok(n),
            IpNet::V6(n) => panic!("{n} is not an IPv4 prefix"),
        }
    }

    fn any(s: &str) -> Result<IpNet, IpNetError> {
        s.parse()
    }

    #[test]
    fn parses_prefixes_and_plain_addresses() {
        let n = net("198.18.0.0/24").unwrap();
        assert_eq!(
            (n.addr(), n.prefix_len()),
            (Ipv4Addr::new(198, 18, 0, 0), 24)
        );
        let h = net("198.18.7.7").unwrap();
        assert_eq!(h, Ipv4Net::host(Ipv4Addr::new(198, 18, 7, 7)));
        assert_eq!(h.to_string(), "198.18.7.7/32");
        assert_eq!(net("0.0.0.0/0").unwrap().prefix_len(), 0);
    }

    #[test]
    fn refuses_host_bits_and_names_the_network() {
        let err = net("198.18.0.7/24").unwrap_err();
        assert_eq!(err.to_string(), "198.18.0.7/24 has host bits set");
        assert_eq!(err.hint().as_deref(), Some("did you mean `198.18.0.0/24`?"));
        assert!(matches!(
            net("1.0.0.0/0"),
            Err(IpNetError::HostBitsSet { .. })
        ));
    }

    #[test]
    fn refuses_long_prefixes_and_garbage() {
        assert_eq!(
            net("198.18.0.0/300"),
            Err(IpNetError::PrefixTooLong { len: 300, max: 32 })
        );
        for bad in [
            "198.18.0.0/",
            "198.18.0.0/+8",
            "10.0.0/8",
            "office",
            "198.18.0.0/8/8",
            "",
        ] {
            assert!(matches!(net(bad), Err(IpNetError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn contains_honours_the_prefix() {
        let n = net("198.18.0.0/24").unwrap();
        assert!(n.contains(Ipv4Addr::new(198, 18, 0, 255)));
        assert!(!n.contains(Ipv4Addr::new(198, 18, 1, 0)));
        assert!(net("0.0.0.0/0").unwrap().contains(Ipv4Addr::BROADCAST));
    }

    #[test]
    fn either_family_parses_into_ip_net() {
        let v6 = any("2001:db8::/32").unwrap();
        assert_eq!(
            (v6.addr(), v6.prefix_len()),
            ("2001:db8::".parse().unwrap(), 32)
        );
        assert_eq!(v6.to_string(), "2001:db8::/32");
        // The text is read as an address, so another spelling of it is the same prefix.
        assert_eq!(any("2001:0db8:0::/32"), Ok(v6));
        let host = any("2001:db8::7").unwrap();
        assert_eq!(host.to_string(), "2001:db8::7/128");
        assert_eq!(any("::/0").unwrap().prefix_len(), 0);
        let v4 = any("198.18.0.0/24").unwrap();
        assert_eq!(v4, IpNet::V4(net("198.18.0.0/24").unwrap()));
        assert_eq!(any("198.18.7.7").unwrap().to_string(), "198.18.7.7/32");
    }

    #[test]
    fn ipv6_host_bits_and_lengths_are_refused_as_for_ipv4() {
        let err = any("2001:db8::1/32").unwrap_err();
        assert_eq!(err.to_string(), "2001:db8::1/32 has host bits set");
        assert_eq!(err.hint().as_deref(), Some("did you mean `2001:db8::/32`?"));
        let err = any("198.18.0.7/24").unwrap_err();
        assert_eq!(err.hint().as_deref(), Some("did you mean `198.18.0.0/24`?"));
        let err = any("2001:db8::/129").unwrap_err();
        assert_eq!(err.to_string(), "prefix length 129 is longer than 128");
        assert_eq!(
            err.hint().as_deref(),
            Some("an IPv6 prefix length is 0..=128")
        );
        assert_eq!(
            any("198.18.0.0/33"),
            Err(IpNetError::PrefixTooLong { len: 33, max: 32 })
        );
    }

    #[test]
    fn malformed_prefixes_are_explained_in_their_family() {
        for bad in [
            "2001:db8:::/32",
            "2001:db8::g",
            "2001:db8::/",
            "2001:db8::/+8",
        ] {
            let err = any(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "`{bad}` is not an IPv6 address or prefix (e.g. 2001:db8::1 or 2001:db8::/32)"
                )
            );
        }
        assert!(matches!(any("office"), Err(IpNetError::Malformed(_))));
        assert!(any("198.18.0.0/8/8").is_err());
        let bracketed = any("[2001:db8::1]").unwrap_err();
        assert_eq!(
            bracketed.hint().as_deref(),
            Some("write IPv6 addresses and prefixes without brackets")
        );
    }

    #[test]
    fn ip_net_contains_only_its_own_family() {
        let v6 = any("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("198.18.0.1".parse().unwrap()));
        assert!(!any("0.0.0.0/0").unwrap().contains("::1".parse().unwrap()));
        assert!(any("::/0").unwrap().contains("::1".parse().unwrap()));
    }
}
