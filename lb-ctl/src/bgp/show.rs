//! Reading `birdc show protocols` and `birdc show route protocol lb_vips` (and `lb_vips6`):
//! the sessions and what BIRD announces, for `lb-ctl status`.
//!
//! The columns are BIRD 2's: `Name Proto Table State Since Info`, with `Since` one word
//! because the rendered config sets `timeformat protocol "%F_%T"`.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

/// Where a BGP session stands: the BGP finite state machine (RFC 4271, 8.2.2) as BIRD
/// names it, or `Down` when the protocol is shut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Routes are exchanged: the VIPs are announced to this neighbor.
    Established,
    Idle,
    /// Opening the TCP connection.
    Connect,
    /// Waiting to connect again, or for the neighbor to connect.
    Active,
    OpenSent,
    OpenConfirm,
    /// Closing.
    Close,
    /// The protocol is down (shut, or reconfiguring).
    Down,
}

impl SessionState {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Idle => "idle",
            Self::Connect => "connect",
            Self::Active => "active",
            Self::OpenSent => "opensent",
            Self::OpenConfirm => "openconfirm",
            Self::Close => "close",
            Self::Down => "down",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SessionState {
    type Err = ();

    /// BIRD's spelling of a state (`Established`, `OpenSent`, …).
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "Established" => Self::Established,
            "Idle" => Self::Idle,
            "Connect" => Self::Connect,
            "Active" => Self::Active,
            "OpenSent" => Self::OpenSent,
            "OpenConfirm" => Self::OpenConfirm,
            "Close" => Self::Close,
            "Down" => Self::Down,
            _ => return Err(()),
        })
    }
}

/// One BGP session as `birdc show protocols` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// BIRD's protocol name (`bgp_198_18_2_1`, `bgp_2001_db8__1`).
    pub name: String,
    /// The neighbor of the config this session is with; `None` for a session the config
    /// no longer names (BIRD still reconfiguring).
    pub neighbor: Option<IpAddr>,
    pub state: SessionState,
    /// When the session entered its protocol state, local time (`2026-12-06 12:58:55`).
    pub since: String,
    /// BIRD's explanation beyond the state, e.g. `Socket: Connection refused`.
    pub info: String,
}

/// Error of a reply that is not the table the parser knows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShowError {
    #[error("no `Name Proto Table State Since Info` header in BIRD's reply: {0:?}")]
    NoHeader(String),
    #[error("BIRD listed protocol line {0:?} with fewer than five columns")]
    ShortLine(String),
}

/// The BGP sessions of a `show protocols` reply. `neighbor_of` maps a protocol name back
/// to the neighbor address.
pub fn parse_protocols(
    reply: &str,
    neighbor_of: impl Fn(&str) -> Option<IpAddr>,
) -> Result<Vec<Session>, ShowError> {
    let mut lines = reply.lines().skip_while(|l| !l.starts_with("Name "));
    if lines.next().is_none() {
        return Err(ShowError::NoHeader(reply.to_owned()));
    }
    let mut sessions = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (columns, info) = split_columns(line, 5);
        let [name, proto, _table, state, since] = columns[..] else {
            return Err(ShowError::ShortLine(line.to_owned()));
        };
        if proto != "BGP" {
            continue;
        }
        // Info starts with the BGP state while the protocol is starting or up
        // (`Established`, `Active  Socket: …`); a protocol that is down has none.
        let (first, rest) = info.split_once(char::is_whitespace).unwrap_or((info, ""));
        let (state, info) = match (state, first.parse::<SessionState>()) {
            ("down", _) => (SessionState::Down, info.to_owned()),
            (_, Ok(bgp)) => (bgp, rest.trim().to_owned()),
            (_, Err(())) => (SessionState::Idle, info.to_owned()),
        };
        sessions.push(Session {
            name: name.to_owned(),
            neighbor: neighbor_of(name),
            state,
            since: since.replace('_', " "),
            info,
        });
    }
    Ok(sessions)
}

/// The first `n` whitespace-separated words of `line` and the rest, trimmed.
fn split_columns(line: &str, n: usize) -> (Vec<&str>, &str) {
    let mut words = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    while words.len() < n && !rest.is_empty() {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (words, rest.trim_end())
}

/// The host routes (IPv4 /32s, IPv6 /128s) of a `show route protocol lb_vips` or
/// `lb_vips6` reply: the VIPs BIRD announces to every established session of their
/// family.
pub fn parse_routes(reply: &str) -> Vec<IpAddr> {
    let mut vips: Vec<IpAddr> = reply
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|prefix| prefix.split_once('/'))
        .filter_map(|(addr, len)| match (addr.parse::<IpAddr>().ok()?, len) {
            (vip @ IpAddr::V4(_), "32") | (vip @ IpAddr::V6(_), "128") => Some(vip),
            _ => None,
        })
        .collect();
    vips.sort_unstable();
    vips
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Captured from BIRD 2.0.12: one session up, one whose neighbor does not exist.
    const UP: &str = include_str!("testdata/show_protocols.txt");
    /// The same a second after the up neighbor's BIRD was killed.
    const DOWN: &str = include_str!("testdata/show_protocols_down.txt");
    const ROUTES: &str = include_str!("testdata/show_route.txt");
    /// Captured from BIRD 2.0.12 on a dual-stack host: the IPv4 neighbor refuses, one IPv6
    /// session is up, the other IPv6 neighbor does not answer.
    const UP6: &str = include_str!("testdata/show_protocols6.txt");
    /// `show route protocol lb_vips6` of the same BIRD.
    const ROUTES6: &str = include_str!("testdata/show_route6.txt");

    fn neighbor_of(name: &str) -> Option<IpAddr> {
        match name {
            "bgp_198_18_2_1" => Some(Ipv4Addr::new(198, 18, 2, 1).into()),
            "bgp_2001_db8_2__1" => Some("2001:db8:2::1".parse().unwrap()),
            _ => None,
        }
    }

    #[test]
    fn sessions_up_and_connecting() {
        let sessions = parse_protocols(UP, neighbor_of).unwrap();
        assert_eq!(
            sessions,
            vec![
                Session {
                    name: "bgp_198_18_2_1".to_owned(),
                    neighbor: Some(Ipv4Addr::new(198, 18, 2, 1).into()),
                    state: SessionState::Established,
                    since: "2026-12-06 12:58:55".to_owned(),
                    info: String::new(),
                },
                Session {
                    name: "bgp_198_18_2_2".to_owned(),
                    neighbor: None,
                    state: SessionState::Active,
                    since: "2026-12-06 12:58:51".to_owned(),
                    info: "Socket: No route to host".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn a_session_whose_peer_died() {
        let sessions = parse_protocols(DOWN, neighbor_of).unwrap();
        let states: Vec<_> = sessions
            .iter()
            .map(|s| (s.state, s.info.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                (SessionState::Active, "Socket: Connection closed"),
                (SessionState::Connect, "Socket: No route to host"),
            ]
        );
    }

    #[test]
    fn a_protocol_that_is_down_or_unknown() {
        let reply = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         \
                     Info\nbgp_x      BGP        ---        down   2026-12-06_13:00:00  \n\
                     bgp_y      BGP        ---        start  2026-12-06_13:00:00  Weird thing\n";
        let sessions = parse_protocols(reply, |_| None).unwrap();
        assert_eq!(sessions[0].state, SessionState::Down);
        assert_eq!(sessions[0].info, "");
        assert_eq!(sessions[1].state, SessionState::Idle);
        assert_eq!(sessions[1].info, "Weird thing");
    }

    #[test]
    fn replies_that_are_not_the_table() {
        assert!(matches!(
            parse_protocols("Unable to connect to server control socket", |_| None),
            Err(ShowError::NoHeader(_))
        ));
        assert!(matches!(
            parse_protocols("Name Proto\nbgp_x BGP ---\n", |_| None),
            Err(ShowError::ShortLine(_))
        ));
    }

    #[test]
    fn announced_routes() {
        assert_eq!(
            parse_routes(ROUTES),
            [
                IpAddr::from(Ipv4Addr::new(198, 18, 0, 100)),
                IpAddr::from(Ipv4Addr::new(198, 18, 0, 101))
            ]
        );
        assert!(parse_routes("BIRD 2.0.12 ready.\n").is_empty());
    }

    #[test]
    fn ipv6_sessions_beside_an_ipv4_one() {
        let sessions = parse_protocols(UP6, neighbor_of).unwrap();
        let seen: Vec<_> = sessions
            .iter()
            .map(|s| (s.name.as_str(), s.neighbor, s.state, s.info.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "bgp_198_18_2_1",
                    Some(Ipv4Addr::new(198, 18, 2, 1).into()),
                    SessionState::Active,
                    "Socket: Connection refused"
                ),
                (
                    "bgp_2001_db8_2__1",
                    Some("2001:db8:2::1".parse().unwrap()),
                    SessionState::Established,
                    ""
                ),
                ("bgp_2001_db8_2__2", None, SessionState::Connect, ""),
            ]
        );
        assert_eq!(sessions[1].since, "2026-12-06 23:28:43");
    }

    #[test]
    fn announced_ipv6_routes_are_host_routes_only() {
        assert_eq!(
            parse_routes(ROUTES6),
            [
                "2001:db8:19::100".parse::<IpAddr>().unwrap(),
                "2001:db8:19::101".parse().unwrap()
            ]
        );
        // A prefix that is not one address is no VIP, in either family.
        let other = "Table master6:\n2001:db8:19::/64 blackhole [lb_vips6 12:58:51.921] * \
                     (200)\n198.18.0.0/24 blackhole [lb_vips 12:58:51.921] * (200)\n\
                     198.18.0.1/128 blackhole\n";
        assert!(parse_routes(other).is_empty(), "{:?}", parse_routes(other));
    }
}
