//! The selection steps of the data plane, as pure functions over values read from the maps.
//!
//! The XDP program calls these on every packet and `lb-ctl explain` calls the very same
//! functions on values it reads from the live maps, so the explanation cannot drift from
//! what the data plane does.

use crate::{
    CLOSE_WINDOW, FIN_TIMEOUT_S, FLOW_F_FIN, FLOW_F_OPENING, FLOW_F_RST, Flow, HALF_OPEN_TIMEOUT_S,
    Listener, MAGLEV_TABLE_SIZE, PROTO_TCP, RST_TIMEOUT_S, SEQUENCE_TABLE_SIZE, TableMeta, hash,
};

/// What the flow table says about a packet's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// No entry.
    Missing,
    /// An entry whose backend is gone, replaced or unhealthy.
    BackendUnusable,
    /// An entry idle for longer than its timeout.
    Expired,
    /// An entry whose backend still takes its flows. `closing`: FIN or RST seen.
    Live { closing: bool },
}

impl EntryState {
    /// The state as one byte, for the hand-off between programs (`PendingFlow::state`).
    #[inline(always)]
    pub const fn code(self) -> u8 {
        match self {
            Self::Missing => 0,
            Self::BackendUnusable => 1,
            Self::Expired => 2,
            Self::Live { closing: false } => 3,
            Self::Live { closing: true } => 4,
        }
    }

    /// The inverse of `code`; an unknown byte reads as `Missing`.
    #[inline(always)]
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => Self::BackendUnusable,
            2 => Self::Expired,
            3 => Self::Live { closing: false },
            4 => Self::Live { closing: true },
            _ => Self::Missing,
        }
    }
}

/// What to do with a packet for a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send it to the flow's backend.
    Reuse,
    /// A new flow: run the listener's scheduler.
    Schedule,
    /// A TCP packet of a connection this LB has no usable entry for (after a restart, an
    /// LB failover, an eviction or a backend failure): pick through the Maglev table on the
    /// 4-tuple, whatever the scheduler, so every LB host picks the same backend.
    Pickup,
}

impl Step {
    /// The step as one byte, for the hand-off between programs (`PendingFlow::step`).
    #[inline(always)]
    pub const fn code(self) -> u8 {
        match self {
            Self::Reuse => 0,
            Self::Schedule => 1,
            Self::Pickup => 2,
        }
    }

    /// The inverse of `code`; an unknown byte reads as `Reuse`.
    #[inline(always)]
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Schedule,
            2 => Self::Pickup,
            _ => Self::Reuse,
        }
    }
}

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A connection opener: SYN without ACK.
#[inline(always)]
pub const fn is_tcp_open(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The decision table of step 4 of the packet walk (docs/architecture.md).
#[inline(always)]
pub const fn next_step(protocol: u8, tcp_flags: u8, entry: EntryState) -> Step {
    let tcp = protocol == PROTO_TCP;
    match entry {
        // A SYN on a closed connection's entry is the client reusing its port: a new flow.
        EntryState::Live { closing: true } if tcp && is_tcp_open(tcp_flags) => Step::Schedule,
        EntryState::Live { .. } => Step::Reuse,
        _ if !tcp || is_tcp_open(tcp_flags) => Step::Schedule,
        _ => Step::Pickup,
    }
}

/// What a flow entry means for the next packet of its flow: the backend it names is gone,
/// replaced or unhealthy (`None`: no backend with that id), the entry is idle past its
/// timeout, or it is live.
#[inline(always)]
pub const fn entry_state(
    now_ns: u64,
    flow: &Flow,
    backend: Option<&crate::Backend>,
    protocol: u8,
    listener: &Listener,
) -> EntryState {
    match backend {
        Some(b) if b.generation == flow.generation && b.is_usable() => {
            if is_expired(now_ns, flow, protocol, listener) {
                EntryState::Expired
            } else {
                EntryState::Live {
                    closing: flow.flags & (FLOW_F_FIN | FLOW_F_RST) != 0,
                }
            }
        }
        _ => EntryState::BackendUnusable,
    }
}

/// Seconds a flow may stay idle before it is forgotten.
#[inline(always)]
pub const fn idle_timeout_s(protocol: u8, flow_flags: u32, listener: &Listener) -> u32 {
    if protocol != PROTO_TCP {
        return listener.udp_timeout_s;
    }
    let est = listener.established_timeout_s;
    if flow_flags & FLOW_F_OPENING != 0 && flow_flags & (FLOW_F_FIN | FLOW_F_RST) == 0 {
        if HALF_OPEN_TIMEOUT_S < est {
            HALF_OPEN_TIMEOUT_S
        } else {
            est
        }
    } else if flow_flags & FLOW_F_RST != 0 {
        if RST_TIMEOUT_S < est {
            RST_TIMEOUT_S
        } else {
            est
        }
    } else if flow_flags & FLOW_F_FIN != 0 {
        if FIN_TIMEOUT_S < est {
            FIN_TIMEOUT_S
        } else {
            est
        }
    } else {
        est
    }
}

/// Whether a flow has been idle longer than its timeout at `now_ns`.
#[inline(always)]
pub const fn is_expired(now_ns: u64, flow: &Flow, protocol: u8, listener: &Listener) -> bool {
    let timeout_ns = idle_timeout_s(protocol, flow.flags, listener) as u64 * 1_000_000_000;
    now_ns.saturating_sub(flow.last_seen_ns) > timeout_ns
}

/// Whether a FIN or RST with sequence number `seq` may close a flow: the other side has
/// acknowledged something (`acked_known`) and `seq` lies within `CLOSE_WINDOW` bytes after
/// its last acknowledgement `acked` (host order, with wraparound). A blind attacker who
/// knows the 4-tuple but not the sequence numbers cannot end the flow's accounting, nor
/// make room for a SYN that would move the connection to another backend.
#[inline(always)]
pub const fn close_is_credible(seq: u32, acked: u32, acked_known: bool) -> bool {
    acked_known && seq.wrapping_sub(acked) < CLOSE_WINDOW
}

/// Whether the backend's FIN or RST (sequence `seq`, acknowledgement `ack`, `tcp_flags`)
/// may close `flow`. A backend refusing a half-open connection acknowledges exactly the
/// client's SYN; later, its sequence number must fit what the client acknowledged.
#[inline(always)]
pub const fn backend_close_is_credible(flow: &Flow, seq: u32, ack: u32, tcp_flags: u8) -> bool {
    if flow.flags & FLOW_F_OPENING != 0 {
        tcp_flags & TCP_ACK != 0 && ack == flow.client_acked
    } else {
        close_is_credible(seq, flow.client_acked, true)
    }
}

/// An active flow (the definition `wlc`, `status` and `wait drained` share): no FIN or RST
/// seen and used within its idle timeout.
#[inline(always)]
pub const fn is_active(now_ns: u64, flow: &Flow, protocol: u8, listener: &Listener) -> bool {
    flow.flags & (FLOW_F_FIN | FLOW_F_RST) == 0 && !is_expired(now_ns, flow, protocol, listener)
}

/// Whether a listener's access list refuses a source, given whether the source matched
/// an entry of the list.
#[inline(always)]
pub const fn acl_denies(acl_mode: u8, matched: bool) -> bool {
    match acl_mode {
        crate::ACL_ALLOW => !matched,
        crate::ACL_DENY => matched,
        _ => false,
    }
}

/// Whether a client's affinity entry still binds it to its backend: the listener keeps
/// affinity (`persistence_timeout_s` > 0) and the entry was used within that time.
#[inline(always)]
pub const fn affinity_fresh(
    now_ns: u64,
    affinity: &crate::Affinity,
    persistence_timeout_s: u32,
) -> bool {
    persistence_timeout_s > 0
        && now_ns.saturating_sub(affinity.last_seen_ns)
            <= persistence_timeout_s as u64 * 1_000_000_000
}

/// Slot `hash` falls in of a Maglev table of `size` slots (`hash % size`). The default
/// size divides by a constant, which compiles to a multiplication; other sizes pay a
/// division. A size of 0 (no table) gives slot 0.
#[inline(always)]
pub const fn maglev_slot(hash: u32, size: u32) -> u32 {
    if size == MAGLEV_TABLE_SIZE {
        hash % MAGLEV_TABLE_SIZE
    } else {
        match hash.checked_rem(size) {
            Some(slot) => slot,
            None => 0,
        }
    }
}

/// Index into `MAGLEV` of the slot `hash` falls in, in the table `meta` describes.
#[inline(always)]
pub const fn maglev_index(meta: &TableMeta, hash: u32) -> u32 {
    meta.maglev_base + maglev_slot(hash, meta.maglev_size)
}

/// Index into `MAGLEV` for an IPv4 `sch` flow (hash of the client address), in the table
/// `meta` describes.
#[inline(always)]
pub const fn maglev_index_source(meta: &TableMeta, src_addr: u32) -> u32 {
    maglev_index(meta, hash::hash_source(src_addr))
}

/// Index into `MAGLEV` for a `tch` flow or a pickup (hash of the 4-tuple).
#[inline(always)]
pub const fn maglev_index_tuple(
    meta: &TableMeta,
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
) -> u32 {
    meta.maglev_base
        + maglev_slot(
            hash::hash_tuple(src_addr, dst_addr, src_port, dst_port),
            meta.maglev_size,
        )
}

/// Index into `SEQUENCE` of position `cursor` of a sequence of `len` entries.
#[inline(always)]
pub const fn sequence_index(table: u32, cursor: u32, len: u32) -> u32 {
    table * SEQUENCE_TABLE_SIZE + if len == 0 { 0 } else { cursor % len }
}

/// `wlc`: whether backend a (active flows, weight) is a better choice than b, i.e.
/// a_active / a_weight < b_active / b_weight, compared without division.
#[inline(always)]
pub const fn wlc_prefers(a_active: u32, a_weight: u32, b_active: u32, b_weight: u32) -> bool {
    (a_active as u64) * (b_weight as u64) < (b_active as u64) * (a_weight as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTO_UDP;

    const SYN: u8 = TCP_SYN;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;

    #[test]
    fn decision_table() {
        use EntryState::*;
        use Step::*;
        let live = Live { closing: false };
        let closed = Live { closing: true };
        let cases = [
            (PROTO_TCP, SYN, Missing, Schedule),
            (PROTO_TCP, ACK, Missing, Pickup),
            (PROTO_TCP, SYN_ACK, Missing, Pickup),
            (PROTO_TCP, SYN, live, Reuse),
            (PROTO_TCP, ACK, live, Reuse),
            (PROTO_TCP, SYN, closed, Schedule),
            (PROTO_TCP, ACK, closed, Reuse),
            (PROTO_TCP, SYN, BackendUnusable, Schedule),
            (PROTO_TCP, ACK, BackendUnusable, Pickup),
            (PROTO_TCP, ACK, Expired, Pickup),
            (PROTO_TCP, SYN, Expired, Schedule),
            (PROTO_UDP, 0, Missing, Schedule),
            (PROTO_UDP, 0, live, Reuse),
            (PROTO_UDP, 0, BackendUnusable, Schedule),
            (PROTO_UDP, 0, Expired, Schedule),
        ];
        for (proto, flags, entry, want) in cases {
            assert_eq!(
                next_step(proto, flags, entry),
                want,
                "{proto} {flags:#x} {entry:?}"
            );
        }
    }

    fn listener() -> Listener {
        Listener {
            established_timeout_s: 900,
            udp_timeout_s: 30,
            ..Default::default()
        }
    }

    #[test]
    fn idle_timeouts() {
        let l = listener();
        let s = 1_000_000_000u64;
        let mut f = Flow {
            last_seen_ns: 100 * s,
            ..Default::default()
        };
        assert!(!is_expired(1000 * s, &f, PROTO_TCP, &l));
        assert!(is_expired(1000 * s + 1, &f, PROTO_TCP, &l));
        assert!(is_expired(131 * s, &f, PROTO_UDP, &l));
        assert!(!is_expired(130 * s, &f, PROTO_UDP, &l));
        f.flags = FLOW_F_FIN;
        assert!(is_expired(161 * s, &f, PROTO_TCP, &l));
        assert!(!is_active(101 * s, &f, PROTO_TCP, &l));
        f.flags = FLOW_F_RST;
        assert!(is_expired(111 * s, &f, PROTO_TCP, &l));
        // A clock read before last_seen (another CPU wrote a newer time) is not expiry.
        assert!(!is_expired(
            99 * s,
            &Flow {
                last_seen_ns: 100 * s,
                ..Default::default()
            },
            PROTO_TCP,
            &l
        ));
    }

    #[test]
    fn half_open_flows_time_out_early() {
        let l = listener();
        let s = 1_000_000_000u64;
        let f = Flow {
            last_seen_ns: 100 * s,
            flags: FLOW_F_OPENING,
            ..Default::default()
        };
        assert!(is_active(130 * s, &f, PROTO_TCP, &l));
        assert!(!is_active(130 * s + 1, &f, PROTO_TCP, &l));
        // A short established timeout still rules.
        let short = Listener {
            established_timeout_s: 10,
            ..l
        };
        assert!(!is_active(111 * s, &f, PROTO_TCP, &short));
    }

    #[test]
    fn closes_need_a_sequence_number_near_the_peers_acknowledgement() {
        assert!(close_is_credible(1000, 1000, true));
        assert!(close_is_credible(1000 + CLOSE_WINDOW - 1, 1000, true));
        assert!(!close_is_credible(1000 + CLOSE_WINDOW, 1000, true));
        assert!(
            !close_is_credible(999, 1000, true),
            "behind the acknowledgement"
        );
        assert!(close_is_credible(5, u32::MAX - 5, true), "across the wrap");
        assert!(
            !close_is_credible(1000, 1000, false),
            "nothing acknowledged yet"
        );
    }

    #[test]
    fn a_backend_refusing_a_syn_acknowledges_exactly_that_syn() {
        let opening = Flow {
            flags: FLOW_F_OPENING,
            client_acked: 5001,
            ..Default::default()
        };
        assert!(backend_close_is_credible(
            &opening,
            0,
            5001,
            TCP_RST | TCP_ACK
        ));
        assert!(!backend_close_is_credible(
            &opening,
            0,
            5002,
            TCP_RST | TCP_ACK
        ));
        assert!(!backend_close_is_credible(&opening, 0, 5001, TCP_RST));
        let open = Flow {
            client_acked: 9000,
            ..Default::default()
        };
        assert!(backend_close_is_credible(&open, 9000, 0, TCP_FIN | TCP_ACK));
        assert!(!backend_close_is_credible(
            &open,
            8999,
            0,
            TCP_FIN | TCP_ACK
        ));
    }

    #[test]
    fn acl_modes() {
        use crate::{ACL_ALLOW, ACL_DENY, ACL_NONE};
        assert!(!acl_denies(ACL_NONE, true) && !acl_denies(ACL_NONE, false));
        assert!(acl_denies(ACL_ALLOW, false) && !acl_denies(ACL_ALLOW, true));
        assert!(acl_denies(ACL_DENY, true) && !acl_denies(ACL_DENY, false));
    }

    #[test]
    fn affinity_freshness() {
        let s = 1_000_000_000u64;
        let a = crate::Affinity {
            last_seen_ns: 10 * s,
            ..Default::default()
        };
        assert!(affinity_fresh(70 * s, &a, 60));
        assert!(!affinity_fresh(70 * s + 1, &a, 60));
        assert!(!affinity_fresh(11 * s, &a, 0), "0 = persistence off");
    }

    #[test]
    fn hand_off_codes_round_trip() {
        use EntryState::*;
        for state in [
            Missing,
            BackendUnusable,
            Expired,
            Live { closing: false },
            Live { closing: true },
        ] {
            assert_eq!(EntryState::from_code(state.code()), state);
        }
        for step in [Step::Reuse, Step::Schedule, Step::Pickup] {
            assert_eq!(Step::from_code(step.code()), step);
        }
    }

    #[test]
    fn wlc_ratio() {
        assert!(wlc_prefers(1, 100, 1, 50));
        assert!(!wlc_prefers(2, 100, 1, 50));
        assert!(wlc_prefers(0, 1, 1, 100));
        assert!(!wlc_prefers(3, 3, 1, 1));
    }

    #[test]
    fn indices_stay_in_their_table() {
        for (base, size) in [(0, MAGLEV_TABLE_SIZE), (7, 1021), (131_074, 655_373)] {
            let meta = TableMeta {
                maglev_base: base,
                maglev_size: size,
                ..Default::default()
            };
            for src in [0, 1, 0xdead_beef, u32::MAX] {
                let i = maglev_index_source(&meta, src);
                assert!((base..base + size).contains(&i));
                assert_eq!(i - base, hash::hash_source(src) % size);
                let j = maglev_index_tuple(&meta, src, 5, 6, 7);
                assert!((base..base + size).contains(&j));
            }
        }
        assert_eq!(maglev_slot(12345, 0), 0);
        for t in 0..4 {
            let j = sequence_index(t, u32::MAX, 7);
            assert_eq!(j, t * SEQUENCE_TABLE_SIZE + u32::MAX % 7);
        }
    }
}
