//! IPv4 prefixes for access lists. Only a network address (no host bits) is accepted, so
//! `198.18.0.7/24` is refused rather than silently widened to the whole /24.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Serialize, Serializer};

/// An IPv4 prefix such as `198.18.0.0/24`. Always a network address: the constructor
/// refuses host bits, so every value is one the LPM trie can hold as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4NetError {
    #[error("IPv6 is not supported yet")]
    Ipv6,
    #[error("`{0}` is not an IPv4 address or prefix (a.b.c.d or a.b.c.d/len)")]
    Malformed(String),
    #[error("prefix length {0} is longer than 32")]
    PrefixTooLong(u32),
    #[error("{addr}/{prefix_len} has host bits set")]
    HostBitsSet {
        addr: Ipv4Addr,
        prefix_len: u8,
        network: Ipv4Net,
    },
}

impl Ipv4NetError {
    /// What the user probably meant, when that can be told.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::HostBitsSet { network, .. } => Some(format!("did you mean `{network}`?")),
            Self::PrefixTooLong(_) => Some("an IPv4 prefix length is 0..=32".to_owned()),
            Self::Ipv6 | Self::Malformed(_) => None,
        }
    }
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, Ipv4NetError> {
        if prefix_len > 32 {
            return Err(Ipv4NetError::PrefixTooLong(prefix_len.into()));
        }
        let network = Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        };
        if network.addr != addr {
            return Err(Ipv4NetError::HostBitsSet {
                addr,
                prefix_len,
                network,
            });
        }
        Ok(network)
    }

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

    #[cfg(test)]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.addr)
    }
}

fn mask(prefix_len: u8) -> u32 {
    // `checked_shl` because a shift by 32 (a /0) overflows a u32.
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl FromStr for Ipv4Net {
    type Err = Ipv4NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr = match addr_text.parse::<Ipv4Addr>() {
            Ok(addr) => addr,
            Err(_) if addr_text.parse::<Ipv6Addr>().is_ok() => return Err(Ipv4NetError::Ipv6),
            Err(_) => return Err(Ipv4NetError::Malformed(s.to_owned())),
        };
        let Some(len_text) = len_text else {
            return Ok(Self::host(addr));
        };
        // Digits only: u32's parser would also take a leading '+'.
        if len_text.is_empty() || !len_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Ipv4NetError::Malformed(s.to_owned()));
        }
        let len: u32 = len_text
            .parse()
            .map_err(|_| Ipv4NetError::Malformed(s.to_owned()))?;
        let len = u8::try_from(len)
            .ok()
            .filter(|l| *l <= 32)
            .ok_or(Ipv4NetError::PrefixTooLong(len))?;
        Self::new(addr, len)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Result<Ipv4Net, Ipv4NetError> {
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
            Err(Ipv4NetError::HostBitsSet { .. })
        ));
    }

    #[test]
    fn refuses_ipv6_long_prefixes_and_garbage() {
        assert_eq!(net("2001:db8::/32"), Err(Ipv4NetError::Ipv6));
        assert_eq!(net("::1"), Err(Ipv4NetError::Ipv6));
        assert_eq!(net("198.18.0.0/33"), Err(Ipv4NetError::PrefixTooLong(33)));
        assert_eq!(net("198.18.0.0/300"), Err(Ipv4NetError::PrefixTooLong(300)));
        for bad in [
            "198.18.0.0/",
            "198.18.0.0/+8",
            "10.0.0/8",
            "office",
            "198.18.0.0/8/8",
            "",
        ] {
            assert!(matches!(net(bad), Err(Ipv4NetError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn contains_honours_the_prefix() {
        let n = net("198.18.0.0/24").unwrap();
        assert!(n.contains(Ipv4Addr::new(198, 18, 0, 255)));
        assert!(!n.contains(Ipv4Addr::new(198, 18, 1, 0)));
        assert!(net("0.0.0.0/0").unwrap().contains(Ipv4Addr::BROADCAST));
    }
}
