//! `lb-ctl explain`: why a packet lands where it does, step by step, computed from the
//! live maps with the very functions the XDP program runs (`lb_common::select`), so the
//! explanation cannot drift from the data plane.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    ACL_ALLOW, ACL_DENY, AffinityKey, FlowKey, ListenerKey, MAGLEV_TABLE_SIZE, NO_BACKEND,
    PROTO_TCP, PROTO_UDP, Scheduler,
    select::{self, EntryState, Step},
};
use serde::{Deserialize, Serialize};

use crate::{controller::monotonic_coarse_ns, dataplane::DataPlane, plan::Desired};

/// The answer: each step in words, and the backend the packet goes to (if any).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Explanation {
    pub steps: Vec<String>,
    /// `ADDR:PORT` of the chosen backend; None when the packet is not forwarded, or when
    /// the pick depends on which CPU receives it (`wrr`, `rr`: see the steps).
    pub backend: Option<String>,
    /// forward, pass, drop, or depends-on-cpu.
    pub outcome: String,
}

fn name(dp: &DataPlane, id: u32) -> String {
    match dp.backend(id) {
        Ok(b) if b.generation != 0 => format!(
            "{}:{} (backend id {id})",
            Ipv4Addr::from(b.addr.to_ne_bytes()),
            u16::from_be(b.port)
        ),
        _ => format!("backend id {id} (empty)"),
    }
}

fn addr_port(dp: &DataPlane, id: u32) -> Option<String> {
    dp.backend(id).ok().filter(|b| b.generation != 0).map(|b| {
        format!(
            "{}:{}",
            Ipv4Addr::from(b.addr.to_ne_bytes()),
            u16::from_be(b.port)
        )
    })
}

/// Explains a packet from `src` to `dst`. `tcp_flags`: the packet's TCP flags (a SYN
/// unless told otherwise), ignored for UDP.
pub fn explain(
    dp: &DataPlane,
    desired: &Desired,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    protocol: u8,
    tcp_flags: u8,
) -> anyhow::Result<Explanation> {
    let mut steps = Vec::new();
    let done = |steps: &mut Vec<String>, outcome: &str, backend: Option<String>| Explanation {
        steps: std::mem::take(steps),
        backend,
        outcome: outcome.to_owned(),
    };
    let proto = if protocol == PROTO_TCP { "tcp" } else { "udp" };
    let key = ListenerKey {
        addr: u32::from_ne_bytes(dst.ip().octets()),
        port: dst.port().to_be(),
        protocol,
        _pad: 0,
    };
    let Some(listener) = dp.listener(&key)? else {
        let vip = dp.listener(&ListenerKey::vip_marker(key.addr))?.is_some();
        steps.push(if vip {
            format!("{dst}/{proto}: {} is a VIP but no listener has port {}/{proto}: passed to the kernel (pass_vip_no_listener)", dst.ip(), dst.port())
        } else {
            format!("{dst}/{proto}: not a listener: passed to the kernel (pass_not_for_us), unless it is a reply of a known flow")
        });
        return Ok(done(&mut steps, "pass", None));
    };
    let lname = desired
        .listeners
        .values()
        .find(|l| l.id == listener.id)
        .map_or_else(|| format!("id {}", listener.id), |l| l.name.clone());
    let scheduler = Scheduler::from_u8(listener.scheduler).unwrap_or(Scheduler::Wrr);
    steps.push(format!(
        "listener {lname} (id {}) matches {dst}/{proto}: scheduler {}, live table slot {}",
        listener.id,
        scheduler.name(),
        listener.table
    ));

    // Access list.
    if listener.acl_mode == ACL_ALLOW || listener.acl_mode == ACL_DENY {
        let matched = dp.acl_matches(listener.acl_id, *src.ip())?;
        let kind = if listener.acl_mode == ACL_ALLOW {
            "allow"
        } else {
            "deny"
        };
        let denied = select::acl_denies(listener.acl_mode, matched);
        steps.push(format!(
            "access list {} ({kind}): {} {} an entry → {}",
            listener.acl_id,
            src.ip(),
            if matched { "matches" } else { "matches no" },
            if denied {
                "denied: dropped (drop_acl_denied)"
            } else {
                "allowed"
            }
        ));
        if denied {
            return Ok(done(&mut steps, "drop", None));
        }
    } else {
        steps.push("no access list".to_owned());
    }

    // Flow table.
    let now = monotonic_coarse_ns();
    let flow_key = FlowKey {
        src_addr: u32::from_ne_bytes(src.ip().octets()),
        dst_addr: key.addr,
        src_port: src.port().to_be(),
        dst_port: key.port,
        protocol,
        _pad: [0; 3],
    };
    let state = match dp.flow(&flow_key)? {
        Some(flow) => {
            let backend = dp.backend(flow.backend).ok();
            let state = select::entry_state(now, &flow, backend.as_ref(), protocol, &listener);
            steps.push(format!(
                "flow entry: {}, idle {} s of {} s allowed → {}",
                name(dp, flow.backend),
                now.saturating_sub(flow.last_seen_ns) / 1_000_000_000,
                select::idle_timeout_s(protocol, flow.flags, &listener),
                match state {
                    EntryState::Live { closing: false } => "live",
                    EntryState::Live { closing: true } => "live, FIN/RST seen",
                    EntryState::Expired => "expired",
                    EntryState::BackendUnusable => "its backend is gone or unhealthy",
                    EntryState::Missing => "missing",
                }
            ));
            if let EntryState::Live { .. } = state
                && let Some(b) = backend
                && b.flags & lb_common::BACKEND_F_DRAINING != 0
                && b.drain_deadline_ns != 0
            {
                if now > b.drain_deadline_ns {
                    steps.push(format!(
                        "its backend is drained and the drain timeout has passed: {}",
                        if protocol == PROTO_TCP {
                            "the LB answers with a RST (reset_drain_expired)"
                        } else {
                            "dropped (drop_drain_expired)"
                        }
                    ));
                    return Ok(done(&mut steps, "drop", None));
                }
                steps.push(format!(
                    "its backend is draining: the flow continues for {} s more",
                    (b.drain_deadline_ns - now) / 1_000_000_000
                ));
            }
            (state, Some(flow))
        }
        None => {
            steps.push("no flow entry".to_owned());
            (EntryState::Missing, None)
        }
    };
    let flags = if protocol == PROTO_UDP { 0 } else { tcp_flags };
    let step = select::next_step(protocol, flags, state.0);
    match step {
        Step::Reuse => {
            let id = state.1.map_or(NO_BACKEND, |f| f.backend);
            steps.push(format!("packet of an established flow → {}", name(dp, id)));
            return Ok(done(&mut steps, "forward", addr_port(dp, id)));
        }
        Step::Pickup => {
            let index = select::maglev_index_tuple(
                listener.table,
                flow_key.src_addr,
                flow_key.dst_addr,
                flow_key.src_port,
                flow_key.dst_port,
            );
            let id = maglev_entry(dp, listener.table, index)?;
            steps.push(format!(
                "TCP packet without SYN and without a usable entry: mid-flow pickup through the Maglev table on the 4-tuple, slot {} → {}",
                index - listener.table * MAGLEV_TABLE_SIZE,
                name(dp, id)
            ));
            return Ok(done(&mut steps, "forward", addr_port(dp, id)));
        }
        Step::Schedule => steps.push("new flow: scheduled".to_owned()),
    }

    let meta = dp.table_meta(listener.table)?;
    if meta.backends == 0 {
        steps.push("no backend takes new flows (all down, weight 0 or draining): dropped (drop_no_backend)".to_owned());
        return Ok(done(&mut steps, "drop", None));
    }
    if listener.persistence_timeout_s > 0 && protocol == PROTO_TCP {
        let akey = AffinityKey {
            listener: listener.id,
            addr: flow_key.src_addr,
        };
        match dp.affinity(&akey)? {
            Some(a) if select::affinity_fresh(now, &a, listener.persistence_timeout_s) => {
                let b = dp.backend(a.backend)?;
                if b.generation == a.generation
                    && b.is_usable()
                    && b.weight > 0
                    && b.flags & lb_common::BACKEND_F_DRAINING == 0
                {
                    steps.push(format!(
                        "persistence: {} has a fresh affinity entry → {}",
                        src.ip(),
                        name(dp, a.backend)
                    ));
                    return Ok(done(&mut steps, "forward", addr_port(dp, a.backend)));
                }
                steps.push(
                    "persistence: the affinity entry's backend no longer takes new flows"
                        .to_owned(),
                );
            }
            Some(_) => steps.push("persistence: the affinity entry has expired".to_owned()),
            None => steps.push(format!("persistence: no affinity entry for {}", src.ip())),
        }
    }
    match scheduler {
        Scheduler::Sch | Scheduler::Tch => {
            let index = if scheduler == Scheduler::Sch {
                select::maglev_index_source(listener.table, flow_key.src_addr)
            } else {
                select::maglev_index_tuple(
                    listener.table,
                    flow_key.src_addr,
                    flow_key.dst_addr,
                    flow_key.src_port,
                    flow_key.dst_port,
                )
            };
            let id = maglev_entry(dp, listener.table, index)?;
            steps.push(format!(
                "{}: hash of the {} → Maglev slot {} of {MAGLEV_TABLE_SIZE} → {}",
                scheduler.name(),
                if scheduler == Scheduler::Sch {
                    "source address"
                } else {
                    "4-tuple"
                },
                index - listener.table * MAGLEV_TABLE_SIZE,
                name(dp, id)
            ));
            Ok(done(&mut steps, "forward", addr_port(dp, id)))
        }
        Scheduler::Wrr | Scheduler::Rr => {
            let sequence = dp.sequence(listener.table)?;
            let cursors = dp.cursors(listener.id)?;
            let picks: Vec<String> = cursors
                .iter()
                .enumerate()
                .map(|(cpu, c)| {
                    let i = select::sequence_index(listener.table, *c, meta.sequence_len)
                        - listener.table * lb_common::SEQUENCE_TABLE_SIZE;
                    format!(
                        "CPU {cpu}: position {i} → {}",
                        sequence
                            .get(i as usize)
                            .map_or("?".to_owned(), |id| name(dp, *id))
                    )
                })
                .collect();
            steps.push(format!(
                "{}: the next new flow takes the next turn of a {}-entry sequence; each CPU has its own position: {}",
                scheduler.name(),
                sequence.len(),
                picks.join("; ")
            ));
            Ok(done(&mut steps, "depends-on-cpu", None))
        }
        Scheduler::Wlc => {
            let sequence = dp.sequence(listener.table)?;
            let mut best: Option<(u32, u32, u32)> = None;
            let mut seen = Vec::new();
            for &id in sequence.iter().take(lb_common::WLC_SCAN_MAX as usize) {
                let b = dp.backend(id)?;
                let active = dp.active_flows(id)?;
                seen.push(format!(
                    "{} active {active} weight {}",
                    name(dp, id),
                    b.weight
                ));
                if b.weight > 0
                    && best.is_none_or(|(_, ba, bw)| select::wlc_prefers(active, b.weight, ba, bw))
                {
                    best = Some((id, active, b.weight));
                }
            }
            steps.push(format!(
                "wlc: fewest active flows per unit of weight among: {}",
                seen.join("; ")
            ));
            let id = best.map_or(NO_BACKEND, |b| b.0);
            steps.push(format!(
                "→ {} (ties go to the first in the rotating scan)",
                name(dp, id)
            ));
            Ok(done(&mut steps, "forward", addr_port(dp, id)))
        }
    }
}

fn maglev_entry(dp: &DataPlane, table: u32, index: u32) -> anyhow::Result<u32> {
    let slot = (index - table * MAGLEV_TABLE_SIZE) as usize;
    Ok(dp
        .maglev_table(table)?
        .get(slot)
        .copied()
        .unwrap_or(NO_BACKEND))
}
