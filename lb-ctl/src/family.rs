//! Keys and values of the tables each address family has its own of (`LISTENERS` and
//! `LISTENERS6`, `ENDPOINTS` and `ENDPOINTS6`), as the controller plans and writes them:
//! one type for both families, so the plan and the reconciler are written once and the
//! data plane picks the map.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{
    Endpoint, Endpoint6, EndpointKey, EndpointKey6, EndpointListener, EndpointListener6, FlowKey,
    FlowKey6, ListenerKey, ListenerKey6,
    family::{addr6, octets6},
};

/// An address as the maps hold IPv4 ones: its bytes read as a native `u32`.
pub fn ipv4_word(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The address an IPv4 map word holds.
pub fn ipv4_of(word: u32) -> Ipv4Addr {
    Ipv4Addr::from(word.to_ne_bytes())
}

/// The address an IPv6 map key holds.
pub fn ipv6_of(words: lb_common::Addr6) -> Ipv6Addr {
    Ipv6Addr::from(octets6(words))
}

/// A key of `LISTENERS` or `LISTENERS6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenerMapKey {
    V4(ListenerKey),
    V6(ListenerKey6),
}

impl ListenerMapKey {
    /// The key of (address, port, protocol); port in host order.
    pub fn new(address: IpAddr, port: u16, protocol: u8) -> Self {
        match address {
            IpAddr::V4(a) => Self::V4(ListenerKey::new(ipv4_word(a), port.to_be(), protocol)),
            IpAddr::V6(a) => Self::V6(ListenerKey6 {
                addr: addr6(a.octets()),
                port: port.to_be(),
                protocol,
                _pad: 0,
            }),
        }
    }

    /// The VIP marker of `address` (port and protocol 0).
    pub fn vip_marker(address: IpAddr) -> Self {
        Self::new(address, 0, 0)
    }

    pub fn address(&self) -> IpAddr {
        match self {
            Self::V4(k) => IpAddr::V4(ipv4_of(k.addr)),
            Self::V6(k) => IpAddr::V6(ipv6_of(k.addr)),
        }
    }

    /// Port, host order.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(k) => u16::from_be(k.port),
            Self::V6(k) => u16::from_be(k.port),
        }
    }

    pub fn protocol(&self) -> u8 {
        match self {
            Self::V4(k) => k.protocol,
            Self::V6(k) => k.protocol,
        }
    }
}

/// A key of `FLOWS` or `FLOWS6` (and their half-open tables): the client side of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowMapKey {
    V4(FlowKey),
    V6(FlowKey6),
}

impl FlowMapKey {
    pub fn protocol(&self) -> u8 {
        match self {
            Self::V4(k) => k.protocol,
            Self::V6(k) => k.protocol,
        }
    }

    /// The client's address and port.
    pub fn client(&self) -> SocketAddr {
        match self {
            Self::V4(k) => {
                SocketAddr::new(IpAddr::V4(ipv4_of(k.src_addr)), u16::from_be(k.src_port))
            }
            Self::V6(k) => {
                SocketAddr::new(IpAddr::V6(ipv6_of(k.src_addr)), u16::from_be(k.src_port))
            }
        }
    }

    /// The VIP and listener port.
    pub fn vip(&self) -> SocketAddr {
        match self {
            Self::V4(k) => {
                SocketAddr::new(IpAddr::V4(ipv4_of(k.dst_addr)), u16::from_be(k.dst_port))
            }
            Self::V6(k) => {
                SocketAddr::new(IpAddr::V6(ipv6_of(k.dst_addr)), u16::from_be(k.dst_port))
            }
        }
    }
}

/// A key of `ENDPOINTS` or `ENDPOINTS6`: a backend endpoint as its replies show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointMapKey {
    V4(EndpointKey),
    V6(EndpointKey6),
}

impl EndpointMapKey {
    /// The endpoint of (address, port, protocol); port in host order.
    pub fn new(address: IpAddr, port: u16, protocol: u8) -> Self {
        match address {
            IpAddr::V4(a) => Self::V4(EndpointKey {
                addr: ipv4_word(a),
                port: port.to_be(),
                protocol,
                _pad: 0,
            }),
            IpAddr::V6(a) => Self::V6(EndpointKey6 {
                addr: addr6(a.octets()),
                port: port.to_be(),
                protocol,
                _pad: 0,
            }),
        }
    }

    pub fn address(&self) -> IpAddr {
        match self {
            Self::V4(k) => IpAddr::V4(ipv4_of(k.addr)),
            Self::V6(k) => IpAddr::V6(ipv6_of(k.addr)),
        }
    }

    /// Port, host order.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(k) => u16::from_be(k.port),
            Self::V6(k) => u16::from_be(k.port),
        }
    }

    pub fn protocol(&self) -> u8 {
        match self {
            Self::V4(k) => k.protocol,
            Self::V6(k) => k.protocol,
        }
    }
}

/// One listener an endpoint serves: its VIP, port (host order) and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub vip: IpAddr,
    pub port: u16,
    pub listener: u32,
}

/// A value of `ENDPOINTS` or `ENDPOINTS6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointEntry {
    V4(Endpoint),
    V6(Endpoint6),
}

impl EndpointEntry {
    /// The entry serving `listeners`, in that order, in the family of `key`; `None` when
    /// there are more than `MAX_ENDPOINT_LISTENERS` (or one of another family).
    pub fn of(key: &EndpointMapKey, listeners: impl IntoIterator<Item = Served>) -> Option<Self> {
        match key {
            EndpointMapKey::V4(_) => {
                let served: Option<Vec<EndpointListener>> = listeners
                    .into_iter()
                    .map(|s| match s.vip {
                        IpAddr::V4(vip) => Some(EndpointListener {
                            vip: ipv4_word(vip),
                            vport: s.port.to_be(),
                            _pad: 0,
                            listener: s.listener,
                        }),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                Endpoint::of(served?).map(Self::V4)
            }
            EndpointMapKey::V6(_) => {
                let served: Option<Vec<EndpointListener6>> = listeners
                    .into_iter()
                    .map(|s| match s.vip {
                        IpAddr::V6(vip) => Some(EndpointListener6 {
                            vip: addr6(vip.octets()),
                            vport: s.port.to_be(),
                            _pad: 0,
                            listener: s.listener,
                        }),
                        IpAddr::V4(_) => None,
                    })
                    .collect();
                Endpoint::of(served?).map(Self::V6)
            }
        }
    }

    /// The listeners it serves.
    pub fn served(&self) -> Vec<Served> {
        match self {
            Self::V4(e) => e
                .served()
                .iter()
                .map(|l| Served {
                    vip: IpAddr::V4(ipv4_of(l.vip)),
                    port: u16::from_be(l.vport),
                    listener: l.listener,
                })
                .collect(),
            Self::V6(e) => e
                .served()
                .iter()
                .map(|l| Served {
                    vip: IpAddr::V6(ipv6_of(l.vip)),
                    port: u16::from_be(l.vport),
                    listener: l.listener,
                })
                .collect(),
        }
    }

    /// How many listeners it serves.
    pub fn count(&self) -> u32 {
        match self {
            Self::V4(e) => e.count,
            Self::V6(e) => e.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_what_they_were_made_of() {
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let k = ListenerMapKey::new(v6, 8080, 6);
        assert_eq!((k.address(), k.port(), k.protocol()), (v6, 8080, 6));
        let v4: IpAddr = "198.18.0.100".parse().unwrap();
        let k = ListenerMapKey::new(v4, 80, 17);
        assert_eq!((k.address(), k.port(), k.protocol()), (v4, 80, 17));
        assert_eq!(
            ListenerMapKey::new(v4, 80, 6),
            ListenerMapKey::V4(ListenerKey::new(
                ipv4_word("198.18.0.100".parse().unwrap()),
                80u16.to_be(),
                6
            ))
        );
        let e = EndpointMapKey::new(v6, 9000, 17);
        assert_eq!((e.address(), e.port(), e.protocol()), (v6, 9000, 17));
    }

    #[test]
    fn an_endpoint_entry_holds_listeners_of_its_family_only() {
        let key = EndpointMapKey::new("2001:db8:1::10".parse().unwrap(), 8080, 6);
        let served = Served {
            vip: "2001:db8::100".parse().unwrap(),
            port: 80,
            listener: 3,
        };
        let entry = EndpointEntry::of(&key, [served]).expect("one listener fits");
        assert_eq!(entry.served(), vec![served]);
        assert_eq!(entry.count(), 1);
        let other = Served {
            vip: "198.18.0.100".parse().unwrap(),
            ..served
        };
        assert_eq!(EndpointEntry::of(&key, [other]), None);
    }
}
