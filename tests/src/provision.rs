//! Map contents installed the way the controller installs them: a config (YAML as an
//! operator writes it, read by the product's parser) and the runtime facts the controller
//! keeps besides it (health, drains, the host's addresses) go through `plan` and the
//! `Reconciler` into the data plane. Fixtures, the fuzzer and the benchmarks therefore
//! test and measure what the controller writes, not a copy of it.
//!
//! A test changes the config or the runtime facts and calls [`Provisioned::apply`], as
//! the controller does on every change: the reconciler writes only the difference, in
//! its order (a listener flips to its other table slot, and so on).

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::anyhow;
use lb_ctl::{
    config::{self, Config},
    dataplane::{DataPlane, MapSizes},
    plan::{self, BackendKey, Desired, DesiredBackend, DesiredListener, Ids, Runtime},
    reconcile::{MapOp, Reconciler},
};

/// Reads config YAML with the daemon's parser and validation; panics with every error,
/// as a test's config is part of the test.
pub fn config(yaml: &str) -> Config {
    config::parse(yaml).unwrap_or_else(|errors| panic!("the test's config is invalid:\n{errors}"))
}

/// The addresses of the current network namespace, as the controller lists them to refuse
/// them as client sources (`Runtime::local_addresses`).
pub fn host_addresses() -> anyhow::Result<BTreeSet<std::net::IpAddr>> {
    Ok(lb_ctl::host::local_addresses()?
        .into_iter()
        .map(|a| a.address.into())
        .collect())
}

/// What was planned for a data plane and applied to it, with the controller's record of
/// ids and of what the maps hold, so later changes apply as differences.
pub struct Provisioned {
    pub config: Config,
    pub runtime: Runtime,
    ids: Ids,
    reconciler: Reconciler,
    desired: Desired,
}

impl Provisioned {
    /// Plans `config` and `runtime` for maps of `sizes` without touching any map: the ids
    /// and contents [`Provisioned::install`] would write; [`Provisioned::apply`] writes
    /// them.
    pub fn plan(config: Config, runtime: Runtime, sizes: MapSizes) -> anyhow::Result<Self> {
        // A typed config is validated as the runtime API validates what it builds.
        config
            .validate()
            .map_err(|errors| anyhow!("the config is invalid:\n{errors}"))?;
        let mut ids = Ids::new(sizes.max_listeners, sizes.max_backends);
        let desired = plan::plan(&config, &runtime, &mut ids)?;
        Ok(Self {
            config,
            runtime,
            ids,
            reconciler: Reconciler::new(sizes.maglev_slots),
            desired,
        })
    }

    /// Plans `config` and `runtime` for the data plane's maps and writes them.
    pub fn install(dp: &mut DataPlane, config: Config, runtime: Runtime) -> anyhow::Result<Self> {
        let mut provisioned = Self::plan(config, runtime, dp.sizes())?;
        provisioned.write(dp)?;
        Ok(provisioned)
    }

    /// Writes what is planned but not yet in the maps (everything, the first time). The
    /// reconciler has no endpoint linger, so the time given is never read.
    fn write(&mut self, dp: &mut DataPlane) -> anyhow::Result<Vec<MapOp>> {
        Ok(self.reconciler.apply(&self.desired, 0, dp)?)
    }

    /// Re-plans after a change of `config` or `runtime` and writes the difference.
    pub fn apply(&mut self, dp: &mut DataPlane) -> anyhow::Result<Vec<MapOp>> {
        self.config
            .validate()
            .map_err(|errors| anyhow!("the changed config is invalid:\n{errors}"))?;
        self.desired = plan::plan(&self.config, &self.runtime, &mut self.ids)?;
        self.write(dp)
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The listener named `name` in the config; panics when there is none.
    pub fn listener(&self, name: &str) -> &DesiredListener {
        self.desired
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name} in the test's config"))
    }

    pub fn listener_id(&self, name: &str) -> u32 {
        self.listener(name).id
    }

    /// The backend `address:port` of listener `name`; panics when there is none.
    pub fn backend(&self, name: &str, address: Ipv4Addr, port: u16) -> &DesiredBackend {
        self.listener(name)
            .backends
            .iter()
            .find(|b| b.key.address == address && b.key.port == port)
            .unwrap_or_else(|| panic!("listener {name} has no backend {address}:{port}"))
    }

    pub fn backend_id(&self, name: &str, address: Ipv4Addr, port: u16) -> u32 {
        self.backend(name, address, port).id
    }

    /// The key under which the runtime facts name that backend (health, drains).
    pub fn backend_key(&self, name: &str, address: Ipv4Addr, port: u16) -> BackendKey {
        self.backend(name, address, port).key
    }

    /// The backend with id `id`, whichever listener it belongs to; panics when there is
    /// none.
    pub fn backend_by_id(&self, id: u32) -> &DesiredBackend {
        self.desired
            .listeners
            .values()
            .flat_map(|l| &l.backends)
            .find(|b| b.id == id)
            .unwrap_or_else(|| panic!("no backend has id {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: MapSizes = MapSizes::new(1024, 4, 16);

    const TWO_LISTENERS: &str = "
instance: t
interfaces: [eth0]
default_server_group:
  servers: [{ address: 198.18.1.10 }, { address: 198.18.1.11 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
  - { name: dns, protocol: udp, address: 198.19.0.100, port: 53, backend_port: 5353 }
";

    #[test]
    fn ids_are_looked_up_by_name_and_address() {
        let p = Provisioned::plan(config(TWO_LISTENERS), Runtime::default(), SIZES).unwrap();
        let b1: Ipv4Addr = "198.18.1.11".parse().unwrap();
        assert_ne!(p.listener_id("web"), p.listener_id("dns"));
        let id = p.backend_id("dns", b1, 5353);
        assert_ne!(
            id,
            p.backend_id("web", b1, 8080),
            "one backend per listener"
        );
        assert_eq!(p.backend_by_id(id).key, p.backend_key("dns", b1, 5353));
    }

    #[test]
    fn an_invalid_typed_config_is_refused() {
        let mut c = config(TWO_LISTENERS);
        c.listeners[1].port = 80;
        c.listeners[1].protocol = config::Protocol::Tcp;
        assert!(Provisioned::plan(c, Runtime::default(), SIZES).is_err());
    }

    #[test]
    #[should_panic(expected = "no listener nope")]
    fn an_unknown_listener_is_a_test_error() {
        let p = Provisioned::plan(config(TWO_LISTENERS), Runtime::default(), SIZES).unwrap();
        p.listener("nope");
    }
}
