//! What the controller does to the host besides writing the maps: load or re-adopt the
//! program, attach it to interfaces, follow interfaces that come and go, read the host's
//! addresses and set the kernel knobs forwarding needs, and read the clocks. `Kernel` does
//! it for real; the controller's unit tests use a stand-in that needs no root.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use tracing::warn;

use super::Options;
use crate::{
    config::{Config, XdpMode},
    dataplane::{DataPlane, DataPlaneAccess, LoadOptions, MapSizes},
    host,
    pins::{self, Layout},
};

/// XDP on one configured interface: its name, its index (0 while missing) and the mode in
/// force (native, generic, as the kernel reports it also for a re-adopted link; or
/// `pins::MISSING`).
pub type Attachment = (String, u32, &'static str);

/// The host side of the controller.
pub trait Platform {
    type DataPlane: DataPlaneAccess;

    /// Loads the data plane of `config`'s instance, re-adopting the pinned one when there
    /// is one. Returns it and whether it was re-adopted.
    fn load(&mut self, config: &Config, sizes: MapSizes)
    -> anyhow::Result<(Self::DataPlane, bool)>;

    /// Attaches the program to `interfaces` in `mode`. `running`: the daemon is already
    /// running, so an interface that does not exist is reported as missing instead of
    /// failing, and interfaces already attached get the program swapped in.
    fn attach(
        &mut self,
        dataplane: &mut Self::DataPlane,
        interfaces: &[String],
        mode: XdpMode,
        running: bool,
    ) -> anyhow::Result<Vec<Attachment>>;

    /// The index of an interface now, `None` when it does not exist.
    fn ifindex(&self, name: &str) -> Option<u32>;

    /// The host's IPv4 addresses: the data plane refuses new flows from each of them.
    fn local_addresses(&self) -> BTreeSet<IpAddr>;

    /// The kernel settings the data plane needs on the attached interfaces (see `host`).
    fn prepare_host(&self, interfaces: &[&str], vips: &BTreeSet<IpAddr>);

    /// Where the maps are pinned: the background sweep and the counter readers open them
    /// there.
    fn maps_dir(&self) -> PathBuf;

    /// Now on the clock the data plane stamps flows and drain deadlines with.
    fn monotonic_ns(&self) -> u64 {
        super::monotonic_coarse_ns()
    }

    /// Now in milliseconds since the Unix epoch (drain deadlines in the state file).
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The real host: bpffs pins, XDP attachments, sysctls, netlink.
pub struct Kernel {
    bpffs: PathBuf,
    /// Where a rejected program's verifier log goes.
    verifier_log_dir: PathBuf,
    /// Known once `load` has the instance name.
    layout: Option<Layout>,
    /// The stage table of the program this daemon replaced at start, held open so the
    /// packets still in that program find their stages (`pins::pin_stages`).
    replaced_stages: Option<aya::maps::MapData>,
}

impl Kernel {
    pub fn new(options: &Options) -> Self {
        Self {
            bpffs: options.bpffs.clone(),
            verifier_log_dir: options.state_dir.clone(),
            layout: None,
            replaced_stages: None,
        }
    }

    fn layout(&self) -> anyhow::Result<&Layout> {
        self.layout
            .as_ref()
            .context("the data plane is not loaded yet")
    }
}

impl Platform for Kernel {
    type DataPlane = DataPlane;

    fn load(&mut self, config: &Config, sizes: MapSizes) -> anyhow::Result<(DataPlane, bool)> {
        pins::check_bpffs(&self.bpffs)?;
        check_kernel_for(config)?;
        let layout = Layout::new(&self.bpffs, &config.instance);
        let adopting = layout.exists();
        if adopting {
            pins::check_pinned_layout(&layout, &sizes)?;
        }
        std::fs::create_dir_all(layout.maps())
            .with_context(|| format!("creating {}", layout.maps().display()))?;
        let dataplane = DataPlane::load(&LoadOptions {
            sizes,
            map_pin_dir: Some(layout.maps()),
            verifier_log_dir: Some(self.verifier_log_dir.clone()),
        })?;
        for name in pins::remove_obsolete(&layout)? {
            tracing::info!(
                map = name,
                "removed the pin of a map this version no longer uses; backend counters \
                 start again from zero"
            );
        }
        self.layout = Some(layout);
        Ok((dataplane, adopting))
    }

    fn attach(
        &mut self,
        dataplane: &mut DataPlane,
        interfaces: &[String],
        mode: XdpMode,
        running: bool,
    ) -> anyhow::Result<Vec<Attachment>> {
        let layout = self.layout()?;
        let attached = pins::attach(
            dataplane.program()?,
            layout,
            interfaces,
            mode.into(),
            running,
        )?;
        dataplane.attach_probe_tunnel(interfaces)?;
        if !running {
            // The first attachment of this daemon: its stages become the pinned ones.
            self.replaced_stages = pins::pin_stages(dataplane.stages(), layout)?;
        }
        Ok(attached)
    }

    fn ifindex(&self, name: &str) -> Option<u32> {
        pins::ifindex(name).ok()
    }

    /// None when they cannot be read (logged), as then nothing is refused that a client
    /// could legitimately have.
    fn local_addresses(&self) -> BTreeSet<IpAddr> {
        match host::local_addresses() {
            Ok(addresses) => addresses.into_iter().map(|a| a.address.into()).collect(),
            Err(e) => {
                warn!(
                    "cannot list the host's addresses, so none is refused as a client source: {e}"
                );
                BTreeSet::new()
            }
        }
    }

    fn prepare_host(&self, interfaces: &[&str], vips: &BTreeSet<IpAddr>) {
        let vips4: BTreeSet<Ipv4Addr> = vips
            .iter()
            .filter_map(|v| match v {
                IpAddr::V4(v) => Some(*v),
                IpAddr::V6(_) => None,
            })
            .collect();
        host::prepare(&host::IpConf::default(), interfaces, &vips4);
        if vips.iter().any(IpAddr::is_ipv6) {
            host::prepare_ipv6(&host::IpConf::at(host::IPV6_CONF));
        }
    }

    fn maps_dir(&self) -> PathBuf {
        self.layout.as_ref().map_or_else(PathBuf::new, Layout::maps)
    }
}

/// Kernel 6.7 is the first whose `bpf_fib_lookup` tells the route's source address
/// (`BPF_FIB_LOOKUP_SRC`): a `forwarding: dsr` listener of a family `dsr.source` gives no
/// address of needs it, and on an older kernel every packet encapsulated for it would be
/// dropped.
fn check_kernel_for(config: &Config) -> anyhow::Result<()> {
    if config.forwarding != crate::config::Forwarding::Dsr {
        return Ok(());
    }
    let source = config.dsr.source;
    let unsourced = config.listeners.iter().find(|l| match l.address {
        IpAddr::V4(_) => source.and_then(|s| s.ipv4()).is_none(),
        IpAddr::V6(_) => source.and_then(|s| s.ipv6()).is_none(),
    });
    let Some(listener) = unsourced else {
        return Ok(());
    };
    let Ok(kernel) = aya::util::KernelVersion::current() else {
        return Ok(());
    };
    if kernel < aya::util::KernelVersion::new(6, 7, 0) {
        let family = if listener.address.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        anyhow::bail!(
            "forwarding: dsr without an {family} dsr.source (listener `{}`) needs Linux 6.7 or \
             later to find the outer source address (this kernel is {kernel}); set dsr.source \
             to the LB's {family} address on the backend side",
            listener.name
        );
    }
    Ok(())
}
