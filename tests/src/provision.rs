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

use anyhow::{Context as _, anyhow};
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
pub fn host_addresses() -> anyhow::Result<BTreeSet<Ipv4Addr>> {
    Ok(lb_ctl::host::local_addresses()?
        .into_iter()
        .map(|a| a.address)
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
    /// and tables [`Provisioned::install`] would give them.
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
            reconciler: Reconciler::new(),
            desired,
        })
    }

    /// Plans `config` and `runtime` for the data plane's maps and writes them.
    pub fn install(dp: &mut DataPlane, config: Config, runtime: Runtime) -> anyhow::Result<Self> {
        let mut provisioned = Self::plan(config, runtime, dp.sizes())?;
        provisioned.write(dp)?;
        Ok(provisioned)
    }

    /// Writes what is planned but not yet in the maps (everything, the first time).
    pub fn write(&mut self, dp: &mut DataPlane) -> anyhow::Result<Vec<MapOp>> {
        Ok(self.reconciler.apply(&self.desired, dp)?)
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

    /// The backend with id `id`, whichever listener it belongs to.
    pub fn backend_by_id(&self, id: u32) -> anyhow::Result<&DesiredBackend> {
        self.desired
            .listeners
            .values()
            .flat_map(|l| &l.backends)
            .find(|b| b.id == id)
            .with_context(|| format!("no backend has id {id}"))
    }
}
