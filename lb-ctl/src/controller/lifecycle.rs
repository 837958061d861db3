//! Start: load the data plane or re-adopt the pinned one, attach it, fill the maps; and
//! the host around it (interfaces that come and go, the host's own addresses).

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use lb_common::LISTENER_F_VIP_MARKER;
use tracing::{info, warn};

use super::{Controller, Kernel, Options, Platform, StartError};
use crate::{
    config::{self, Config},
    dataplane::MapSizes,
    dataplane::{DataPlaneAccess, DataPlaneError},
    family::ListenerMapKey,
    overlay, pins,
    plan::{BackendKey, Desired, Frontend, Ids, Runtime},
    reconcile::{ENDPOINT_LINGER_NS, EndpointLinger, Reconciler},
};

impl Controller<Kernel> {
    /// Loads the config and the overlay, loads or re-adopts the pinned data plane,
    /// attaches it and fills the maps.
    pub fn start(options: Options) -> Result<Self, StartError> {
        let kernel = Kernel::new(&options);
        Self::start_on(kernel, options)
    }
}

impl<P: Platform> Controller<P> {
    /// `start` on the host `platform`.
    pub fn start_on(mut platform: P, options: Options) -> Result<Self, StartError> {
        let base = config::load(&options.config_path).map_err(|errors| StartError::BadConfig {
            path: options.config_path.clone(),
            errors,
        })?;
        let state_path = overlay::state_path(&options.state_dir, &base.instance);
        let (saved, drains) = overlay::load_state_with_drains(&state_path, &base.instance)?;
        let (effective, overlay, conflicts) = overlay::replay(&base, &saved);
        for c in &conflicts {
            warn!("runtime change dropped, it no longer fits the config: {c}");
        }
        for w in effective.warnings() {
            warn!("config: {w}");
        }
        if overlay != saved {
            overlay::save_state_with_drains(&state_path, &base.instance, &overlay, &drains)?;
        }

        let sizes = MapSizes::of(&effective);
        let (mut dataplane, adopting) = platform.load(&effective, sizes)?;

        let mut ids = Ids::new(sizes.max_listeners, sizes.max_backends);
        let mut reconciler =
            Reconciler::new(sizes.maglev_slots).with_endpoint_linger(EndpointLinger {
                ns: ENDPOINT_LINGER_NS,
                room: sizes.max_backends,
            });
        let mut runtime = Runtime {
            local_addresses: platform.local_addresses(),
            ..Runtime::default()
        };
        if adopting {
            runtime.unhealthy = adopt(&dataplane, &effective, &mut ids, &mut reconciler)?;
        }
        let attached = platform.attach(
            &mut dataplane,
            &effective.interfaces,
            effective.xdp_mode,
            false,
        )?;
        for (iface, ifindex, mode) in &attached {
            dataplane.add_tx_port(*ifindex)?;
            info!("XDP on {iface} (ifindex {ifindex}): {mode}");
        }

        let mut controller = Self {
            platform,
            options,
            state_path,
            base,
            overlay,
            effective,
            conflicts,
            reloads: crate::api::ReloadStatus::default(),
            departed_at: HashMap::new(),
            initially_down: runtime.unhealthy.clone(),
            runtime,
            ids,
            reconciler,
            desired: Desired::default(),
            dataplane,
            attached,
            active: HashMap::new(),
            flow_entries: 0,
            sweep_ticks: 0,
            started: Instant::now(),
            health: None,
            drains: drains.clone(),
            cut_removed: false,
        };
        controller.restore_drains(&drains);
        controller.prepare_host();
        let ops = controller.apply()?;
        info!(
            "instance {}: {} listener(s), {} map operation(s){}",
            controller.effective.instance,
            controller.effective.listeners.len(),
            ops,
            if adopting {
                ", data plane re-adopted"
            } else {
                ""
            }
        );
        Ok(controller)
    }

    pub(super) fn reattach(&mut self) -> anyhow::Result<()> {
        let interfaces = self.effective.interfaces.clone();
        self.reattach_to(&interfaces, self.effective.xdp_mode)
    }

    /// Attaches to `interfaces` in `mode` (a reload's, before it is committed: a refused
    /// attachment refuses the reload).
    pub(super) fn reattach_to(
        &mut self,
        interfaces: &[String],
        mode: config::XdpMode,
    ) -> anyhow::Result<()> {
        let old: Vec<u32> = self.attached.iter().map(|a| a.1).collect();
        self.attached = self
            .platform
            .attach(&mut self.dataplane, interfaces, mode, true)?;
        for ifindex in old {
            if !self.attached.iter().any(|a| a.1 == ifindex) {
                self.dataplane.remove_tx_port(ifindex)?;
            }
        }
        for (name, ifindex, mode) in &self.attached {
            if *mode == pins::MISSING {
                warn!("interface {name} does not exist: XDP is not attached there");
            } else {
                self.dataplane.add_tx_port(*ifindex)?;
            }
        }
        Ok(())
    }

    /// Notices configured interfaces that disappeared or came back (a new index): logs it
    /// once, shows it in `status` (mode `missing`), and attaches again when it is back.
    pub fn check_interfaces(&mut self) -> anyhow::Result<()> {
        let mut reattach = false;
        for (name, ifindex, mode) in &mut self.attached {
            match self.platform.ifindex(name) {
                Some(now) if now == *ifindex => {}
                Some(now) => {
                    info!("interface {name} is back (ifindex {now}): attaching XDP again");
                    reattach = true;
                }
                None if *mode != pins::MISSING => {
                    warn!(
                        "interface {name} disappeared: its traffic is not balanced until it \
                         comes back (lb-ctl status shows it as missing)"
                    );
                    let gone = *ifindex;
                    *mode = pins::MISSING;
                    *ifindex = 0;
                    self.dataplane.remove_tx_port(gone)?;
                }
                None => {}
            }
        }
        if reattach {
            self.reattach()?;
            // A re-created interface starts from the kernel's defaults.
            self.prepare_host();
        }
        Ok(())
    }

    /// The kernel settings the data plane needs on the attached interfaces, checked
    /// against the VIPs of the effective config (see `host`).
    pub(super) fn prepare_host(&self) {
        let interfaces: Vec<&str> = self
            .attached
            .iter()
            .filter(|(_, _, mode)| *mode != pins::MISSING)
            .map(|(name, _, _)| name.as_str())
            .collect();
        let vips = self.effective.listeners.iter().map(|l| l.address).collect();
        self.platform.prepare_host(&interfaces, &vips);
    }

    /// Follows the host's addresses (an operator or DHCP may add one at any time): the
    /// data plane refuses new flows from each of them.
    pub fn refresh_local_addresses(&mut self) -> anyhow::Result<()> {
        let now = self.platform.local_addresses();
        if now != self.runtime.local_addresses {
            info!(
                "host addresses changed: {} now, refused as client sources",
                now.len()
            );
            self.runtime.local_addresses = now;
            self.apply()?;
        }
        Ok(())
    }
}

/// Rebuilds ids and the reconciler's record from a pinned data plane, so the first
/// apply keeps every established flow's backend id and generation. Returns the configured
/// backends the data plane had marked unusable (down when the previous daemon stopped).
fn adopt(
    dataplane: &impl DataPlaneAccess,
    config: &Config,
    ids: &mut Ids,
    reconciler: &mut Reconciler,
) -> Result<std::collections::BTreeSet<BackendKey>, DataPlaneError> {
    let mut down = std::collections::BTreeSet::new();
    let frontends: BTreeMap<ListenerMapKey, (&str, Frontend)> = config
        .listeners
        .iter()
        .map(|l| {
            let f = Frontend::of(l);
            (f.key(), (l.name.as_str(), f))
        })
        .collect();
    let mut adopted = Vec::new();
    let mut vips = Vec::new();
    let mut by_id: HashMap<u32, Frontend> = HashMap::new();
    for (key, value) in dataplane.listener_entries()? {
        if value.flags & LISTENER_F_VIP_MARKER != 0 {
            vips.push((key.address(), value.flags));
            continue;
        }
        // Where its live table lies in MAGLEV: no rebuild may write there.
        let meta = dataplane.table_meta(value.table)?;
        match frontends.get(&key) {
            Some((name, frontend)) => {
                ids.adopt_listener(*frontend, value.id);
                if value.acl_id != 0
                    && let Some(acl) = config.listener(name).and_then(|l| l.acl.as_ref())
                {
                    ids.adopt_acl(acl.name.clone(), value.acl_id);
                }
                by_id.insert(value.id, *frontend);
                adopted.push(((*name).to_owned(), key, value, meta));
            }
            // A listener no longer in the config: recorded under a name no config
            // uses, so the first apply removes it.
            None => adopted.push((format!("stale listener {}", value.id), key, value, meta)),
        }
    }
    reconciler.adopt(&adopted, &vips);
    reconciler.adopt_acl_entries(dataplane.acl_entries());
    reconciler.adopt_address_filter(&dataplane.address_filter()?);
    reconciler.adopt_endpoints(dataplane.endpoint_entries()?);
    for id in 0..config.max_backends {
        let b = dataplane.backend(id)?;
        if b.generation == 0 {
            continue;
        }
        if let Some(frontend) = by_id.get(&b.listener) {
            // An IPv6 backend's address is in `BACKENDS6`; its listener says which.
            let address = match frontend.address {
                std::net::IpAddr::V4(_) => crate::family::ipv4_of(b.addr).into(),
                std::net::IpAddr::V6(_) => dataplane.backend_address6(id)?.into(),
            };
            let key = BackendKey {
                frontend: *frontend,
                address,
                port: u16::from_be(b.port),
            };
            ids.adopt_backend(key, id, b.generation);
            if !b.is_usable() {
                down.insert(key);
            }
        } else {
            // Its listener is gone: the first apply retires it; its generation is kept so
            // the id's next owner never inherits its flows.
            ids.note_generation(id, b.generation);
        }
        reconciler.adopt_backend(id, b);
    }
    Ok(down)
}
