//! The setup: the listeners, backends and access list a run installs, as the
//! model sees them.

use super::*;

/// One backend entry (one member of one listener).
#[derive(Clone, Copy, Debug)]
pub struct BackendSpec {
    pub id: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub id: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
    pub scheduler: Scheduler,
    /// Backend ids.
    pub members: Vec<u32>,
    /// Denied source prefixes (access list `id + 1`, mode deny); empty: no access list.
    pub deny: Vec<(Ipv4Addr, u8)>,
    pub(super) maglev: Vec<u32>,
}

impl ListenerSpec {
    pub(super) fn denies(&self, src: Ipv4Addr) -> bool {
        self.deny.iter().any(|&(net, len)| {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(src) & mask == u32::from(net) & mask
        })
    }
}

/// What the run installs: backends, listeners, VIP markers, access lists.
#[derive(Clone, Debug)]
pub struct Setup {
    pub backends: Vec<BackendSpec>,
    pub listeners: Vec<ListenerSpec>,
    pub vips: Vec<Ipv4Addr>,
}

impl Setup {
    /// The fuzzing setup: seven listeners on two VIPs plus a bare VIP marker; every
    /// forwarding outcome (redirect, TX, unknown neighbour, no route, not a redirect
    /// target, no backend, access list, collision) is reachable.
    pub fn standard() -> Setup {
        let b = |id, addr, port| BackendSpec { id, addr, port };
        let backends = vec![
            b(0, B0, 8080),
            b(1, B1, 8080),
            b(2, B_NO_NEIGH, 8080),
            b(3, B0, 5353),
            b(4, B1, 5353),
            b(5, B0, 8080),
            b(6, B_FAR, 53),
            b(7, B_OTHER_SIDE, 443),
            b(8, B1, 5000),
            b(9, B_NO_NEIGH, 5000),
        ];
        let l = |id, vip, port, protocol, scheduler, members: &[u32], deny: &[(Ipv4Addr, u8)]| {
            ListenerSpec {
                id,
                vip,
                port,
                protocol,
                scheduler,
                members: members.to_vec(),
                deny: deny.to_vec(),
                maglev: Vec::new(),
            }
        };
        let mut listeners = vec![
            l(0, VIP, 80, PROTO_TCP, Scheduler::Tch, &[0, 1, 2], &[]),
            l(
                1,
                VIP,
                53,
                PROTO_UDP,
                Scheduler::Tch,
                &[3, 4],
                &[(CLIENT_NO_NEIGH, 32), (ip(198, 19, 200, 0), 24)],
            ),
            l(2, VIP2, 80, PROTO_TCP, Scheduler::Wrr, &[5], &[]),
            l(3, VIP2, 53, PROTO_UDP, Scheduler::Rr, &[6], &[]),
            l(4, VIP2, 443, PROTO_TCP, Scheduler::Wlc, &[7], &[]),
            l(5, VIP, 8080, PROTO_TCP, Scheduler::Wrr, &[], &[]),
            l(6, VIP, 5000, PROTO_UDP, Scheduler::Tch, &[8, 9], &[]),
        ];
        for listener in &mut listeners {
            let members: Vec<MaglevBackend> = listener
                .members
                .iter()
                .map(|&id| {
                    let m = backends[id as usize];
                    MaglevBackend {
                        id,
                        addr: u32::from_ne_bytes(m.addr.octets()),
                        port: m.port.to_be(),
                        weight: 100,
                    }
                })
                .collect();
            listener.maglev = maglev::build_table(&members, MAGLEV_TABLE_SIZE);
        }
        Setup {
            backends,
            listeners,
            vips: vec![VIP, VIP2, VIP3],
        }
    }

    pub(super) fn listener(&self, dst: Ipv4Addr, port: u16, protocol: u8) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.vip == dst && l.port == port && l.protocol == protocol)
    }

    pub(super) fn listener_by_id(&self, id: u32) -> Option<usize> {
        self.listeners.iter().position(|l| l.id == id)
    }

    pub(super) fn is_vip(&self, addr: Ipv4Addr) -> bool {
        self.vips.contains(&addr)
    }

    /// The backend a new flow or a pickup of `t` gets: the only member, or the Maglev
    /// slot of the 4-tuple (`tch`; pickups always use it).
    pub(super) fn pick(&self, listener: usize, t: &Tuple) -> Option<BackendSpec> {
        let l = &self.listeners[listener];
        match l.members.as_slice() {
            [] => None,
            [only] => Some(self.backends[*only as usize]),
            _ => {
                let h = hash::hash_tuple(
                    u32::from_ne_bytes(t.src.octets()),
                    u32::from_ne_bytes(t.dst.octets()),
                    t.sport.to_be(),
                    t.dport.to_be(),
                );
                let id = l.maglev[(h % MAGLEV_TABLE_SIZE) as usize];
                Some(self.backends[id as usize])
            }
        }
    }

    /// Writes everything into the maps, the way the controller does: backends, tables,
    /// listener entries, VIP markers, access lists.
    pub fn install(&self, dp: &mut DataPlane) -> anyhow::Result<()> {
        let be = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        for l in &self.listeners {
            for &id in &l.members {
                let m = self.backends[id as usize];
                dp.set_backend(
                    id,
                    Backend {
                        addr: be(m.addr),
                        port: m.port.to_be(),
                        flags: BACKEND_F_USABLE,
                        weight: 100,
                        listener: l.id,
                        generation: 1,
                        ..Default::default()
                    },
                )?;
            }
            let weighted: Vec<(u32, u32)> = l.members.iter().map(|&id| (id, 100)).collect();
            let sequence = match l.scheduler {
                Scheduler::Wrr => wrr::weighted_sequence(&weighted, lb_common::SEQUENCE_TABLE_SIZE),
                _ => wrr::each_once(&weighted),
            };
            let slot = l.id * 2;
            dp.write_table(
                slot,
                &l.maglev,
                &sequence,
                TableMeta {
                    backends: l.members.len() as u32,
                    sequence_len: sequence.len() as u32,
                },
            )?;
            let acl_id = l.id + 1;
            for &(net, len) in &l.deny {
                dp.add_acl_entry(acl_id, net, len)?;
            }
            dp.set_listener(
                ListenerKey {
                    addr: be(l.vip),
                    port: l.port.to_be(),
                    protocol: l.protocol,
                    _pad: 0,
                },
                Listener {
                    id: l.id,
                    table: slot,
                    scheduler: l.scheduler as u8,
                    established_timeout_s: IDLE_TIMEOUT_S,
                    udp_timeout_s: IDLE_TIMEOUT_S,
                    acl_mode: if l.deny.is_empty() {
                        ACL_NONE
                    } else {
                        ACL_DENY
                    },
                    acl_id: if l.deny.is_empty() { 0 } else { acl_id },
                    ..Default::default()
                },
            )?;
            dp.reset_cursor(l.id)?;
        }
        for &vip in &self.vips {
            dp.add_vip(be(vip))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_prefixes() {
        let setup = Setup::standard();
        let l = &setup.listeners[1];
        assert!(l.denies(CLIENT_NO_NEIGH));
        assert!(!l.denies(CLIENT));
        assert!(l.denies(ip(198, 19, 200, 255)));
        assert!(!l.denies(ip(198, 19, 201, 0)));
    }
}
