//! What an instance leaves in bpffs, so the data plane outlives the daemon:
//!
//! ```text
//! /sys/fs/bpf/<instance>/maps/<MAP>      every map (flows, tables, counters)
//! /sys/fs/bpf/<instance>/prog            the XDP program last attached
//! /sys/fs/bpf/<instance>/stages          its stage table (the programs it tail-calls)
//! /sys/fs/bpf/<instance>/links/<ifname>  one XDP link per interface
//! ```
//!
//! A restarted daemon loads its (possibly newer) program against the pinned maps and
//! swaps it into the pinned links atomically (`bpf_link_update`): established flows keep
//! flowing while the daemon is down and across the restart. `teardown` removes it all.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Backend, COUNTER_SLOTS, Flow, FlowKey, Listener, ListenerKey, TableMeta, TrafficCounters, names,
};
use thiserror::Error;

use crate::dataplane::{ALL_MAPS, MapSizes};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// statfs(2) magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "{0} is not a bpffs mount, so the data plane cannot outlive the daemon; mount it with \
         `mount -t bpf bpf {0}` (or start through `cargo xtask run`, which does)"
    )]
    NotBpffs(PathBuf),
    #[error(
        "pinned map {name} of instance {instance} has an incompatible layout ({found}; this \
         lb-ctl needs {expected}). The pinned data plane was made by another version or with \
         other table sizes. To start over (established flows are dropped): \
         `lb-ctl teardown --instance {instance}`"
    )]
    Layout {
        instance: String,
        name: &'static str,
        found: String,
        expected: String,
    },
    #[error("counting this machine's possible CPUs (/sys/devices/system/cpu/possible) failed")]
    Cpus,
    #[error("reading pinned map {name}: {source}")]
    Info {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("attaching XDP to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "xdp_mode: native, but the driver of {iface} cannot run XDP in native mode ({reason}); \
         set `xdp_mode: generic` (works on every interface, slower) or `xdp_mode: auto` \
         (native where the driver can, else generic)"
    )]
    NativeRefused { iface: String, reason: String },
    #[error("switching XDP on {iface} to {mode} mode: {source}")]
    Switch {
        iface: String,
        mode: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "XDP on {0} was attached through netlink, which cannot be pinned; the data plane of \
         this interface would stop with the daemon"
    )]
    NotPinnable(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("re-adopting the pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
}

type Result<T, E = PinError> = std::result::Result<T, E>;

/// The pin folder of an instance.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub instance: String,
}

impl Layout {
    pub fn new(bpffs: &Path, instance: &str) -> Self {
        Self {
            root: bpffs.join(instance),
            instance: instance.to_owned(),
        }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn program(&self) -> PathBuf {
        self.root.join("prog")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn stages(&self) -> PathBuf {
        self.root.join("stages")
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.links().join(iface)
    }

    /// Whether an earlier daemon of this instance left a data plane here.
    pub fn exists(&self) -> bool {
        self.maps().is_dir()
    }

    /// Interfaces with a pinned link.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.links()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// Checks that `path` is a bpffs mount.
pub fn check_bpffs(path: &Path) -> Result<()> {
    match rustix::fs::statfs(path) {
        Ok(st) if st.f_type == BPF_FS_MAGIC => Ok(()),
        _ => Err(PinError::NotBpffs(path.into())),
    }
}

/// The layout every pinned map must have: (name, key size, value size, max entries).
pub(crate) fn expected_layout(sizes: &MapSizes, cpus: u32) -> Vec<(&'static str, u32, u32, u32)> {
    let entries: std::collections::HashMap<&str, u32> = sizes.entries(cpus).into_iter().collect();
    let e = |n: &str| entries.get(n).copied().unwrap_or(0);
    let pair = size_of::<lb_common::IdPair>() as u32;
    vec![
        (
            names::LISTENERS,
            size_of::<ListenerKey>() as u32,
            size_of::<Listener>() as u32,
            e(names::LISTENERS),
        ),
        (
            names::LISTENER_INDEX,
            4,
            size_of::<lb_common::ListenerSlot>() as u32,
            e(names::LISTENER_INDEX),
        ),
        (
            names::BACKENDS,
            4,
            size_of::<Backend>() as u32,
            e(names::BACKENDS),
        ),
        (names::MAGLEV, 4, pair, e(names::MAGLEV)),
        (names::SEQUENCE, 4, pair, e(names::SEQUENCE)),
        (
            names::TABLE_META,
            4,
            size_of::<TableMeta>() as u32,
            e(names::TABLE_META),
        ),
        (names::CURSORS, 4, 4, e(names::CURSORS)),
        (
            names::FLOWS,
            size_of::<FlowKey>() as u32,
            size_of::<Flow>() as u32,
            e(names::FLOWS),
        ),
        (
            names::HALF_OPEN,
            size_of::<FlowKey>() as u32,
            size_of::<Flow>() as u32,
            e(names::HALF_OPEN),
        ),
        (
            names::ENDPOINTS,
            size_of::<lb_common::EndpointKey>() as u32,
            size_of::<lb_common::Endpoint>() as u32,
            e(names::ENDPOINTS),
        ),
        (names::ACTIVE_FLOWS, 4, 4, e(names::ACTIVE_FLOWS)),
        (
            names::LISTENER_STATS,
            4,
            size_of::<TrafficCounters>() as u32,
            e(names::LISTENER_STATS),
        ),
        (
            names::BACKEND_CPU,
            4,
            size_of::<lb_common::BackendCpu>() as u32,
            e(names::BACKEND_CPU),
        ),
        (
            names::BACKEND_CPU_REPLY,
            4,
            size_of::<lb_common::BackendCpuReply>() as u32,
            e(names::BACKEND_CPU_REPLY),
        ),
        (names::COUNTERS, 4, 8, COUNTER_SLOTS),
        (names::TX_PORTS, 4, 8, lb_common::MAX_INTERFACES),
        (
            names::ACLS,
            4 + size_of::<lb_common::AclKey>() as u32,
            4,
            lb_common::MAX_ACL_ENTRIES,
        ),
        (
            names::AFFINITY,
            size_of::<lb_common::AffinityKey>() as u32,
            size_of::<lb_common::Affinity>() as u32,
            e(names::AFFINITY),
        ),
        (names::ADDRESS_FILTER, 4, 8, lb_common::ADDRESS_FILTER_WORDS),
        (names::FLOW_FILTER, 4, 8, e(names::FLOW_FILTER)),
        (
            names::LISTENERS6,
            size_of::<lb_common::ListenerKey6>() as u32,
            size_of::<Listener>() as u32,
            e(names::LISTENERS6),
        ),
        (
            names::BACKENDS6,
            4,
            size_of::<lb_common::BackendAddr6>() as u32,
            e(names::BACKENDS6),
        ),
        (
            names::FLOWS6,
            size_of::<lb_common::FlowKey6>() as u32,
            size_of::<Flow>() as u32,
            e(names::FLOWS6),
        ),
        (
            names::HALF_OPEN6,
            size_of::<lb_common::FlowKey6>() as u32,
            size_of::<Flow>() as u32,
            e(names::HALF_OPEN6),
        ),
        (
            names::ENDPOINTS6,
            size_of::<lb_common::EndpointKey6>() as u32,
            size_of::<lb_common::Endpoint6>() as u32,
            e(names::ENDPOINTS6),
        ),
        (
            names::ACLS6,
            4 + size_of::<lb_common::AclKey6>() as u32,
            4,
            lb_common::MAX_ACL_ENTRIES,
        ),
        (
            names::AFFINITY6,
            size_of::<lb_common::AffinityKey6>() as u32,
            size_of::<lb_common::Affinity>() as u32,
            e(names::AFFINITY6),
        ),
        (
            names::NEXT_HOPS6,
            4,
            size_of::<lb_common::NextHop6>() as u32,
            e(names::NEXT_HOPS6),
        ),
        (
            names::ENCAP_SOURCES6,
            4,
            size_of::<lb_common::EncapSource6>() as u32,
            e(names::ENCAP_SOURCES6),
        ),
    ]
}

/// Maps earlier versions pinned that this one no longer has: the per-CPU next-hop cache and
/// backend counters, now one record per backend and CPU in `BACKEND_CPU`.
const OBSOLETE_MAPS: [&str; 2] = ["NEXT_HOPS", "BACKEND_STATS"];

/// Removes the pins of `OBSOLETE_MAPS` once this version's program is loaded against the
/// instance's other pins (a program still attached holds its own references, so removing
/// a pin stops nothing). Returns the names removed.
pub fn remove_obsolete(layout: &Layout) -> Result<Vec<&'static str>> {
    let mut removed = Vec::new();
    for name in OBSOLETE_MAPS {
        let path = layout.maps().join(name);
        if !path.exists() {
            continue;
        }
        fs::remove_file(&path).map_err(|source| PinError::Io {
            what: "removing",
            path,
            source,
        })?;
        removed.push(name);
    }
    Ok(removed)
}

/// Refuses pinned maps whose layout differs from what this build needs (another version
/// of lb-ctl, or a config with other table sizes): reusing them would corrupt state.
pub fn check_pinned_layout(layout: &Layout, sizes: &MapSizes) -> Result<()> {
    let cpus = crate::sizing::possible_cpus().ok_or(PinError::Cpus)?;
    debug_assert_eq!(expected_layout(sizes, cpus).len(), ALL_MAPS.len());
    for (name, key, value, max) in expected_layout(sizes, cpus) {
        let path = layout.maps().join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| PinError::Info { name, source })?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        // TX_PORTS values are 8 bytes on current kernels (ifindex + prog fd) and 4 on old ones.
        let value_ok =
            info.value_size() == value || (name == names::TX_PORTS && info.value_size() == 4);
        if found.0 != key || !value_ok || found.2 != max {
            return Err(PinError::Layout {
                instance: layout.instance.clone(),
                name,
                found: format!(
                    "key {} B, value {} B, {} entries",
                    found.0, found.1, found.2
                ),
                expected: format!("key {key} B, value {value} B, {max} entries"),
            });
        }
    }
    Ok(())
}

/// Attaches (or re-attaches) `program` to every interface in `mode`, pinning each link,
/// and pins the program. Links of interfaces no longer configured are removed (detached).
/// Returns (interface, ifindex, mode in force) for each attachment: `native` or `generic`
/// as the kernel reports it, also for a re-adopted link.
///
/// `allow_missing`: an interface that does not exist is reported as `(name, 0, "missing")`
/// instead of failing (a running daemon re-attaches when it comes back; at start a
/// missing interface is an error).
///
/// A pinned link in another mode than `mode` asks for (not `auto`) is detached and the
/// program attached afresh: the config says how XDP runs, also across restarts. When an
/// attachment fails, the links this call created are removed again, so a refused start or
/// reload leaves the interfaces as they were.
pub fn attach(
    program: &mut Xdp,
    layout: &Layout,
    interfaces: &[String],
    mode: XdpAttach,
    allow_missing: bool,
) -> Result<Vec<(String, u32, &'static str)>> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| PinError::Io { what, path, source }
    };
    fs::create_dir_all(layout.links()).map_err(io("creating", &layout.links()))?;
    let mut attached = Vec::new();
    let mut created = Vec::new();
    let result = (|| {
        for iface in interfaces {
            let ifindex = match ifindex(iface) {
                Ok(i) => i,
                Err(_) if allow_missing => {
                    attached.push((iface.clone(), 0, MISSING));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let pin = layout.link(iface);
            let in_force = if pin.exists() {
                match reattach_pinned(program, &pin, iface) {
                    Ok(()) => {
                        let now = attached_mode(ifindex);
                        match (mode.wanted(), now) {
                            (Some(wanted), Some(now))
                                if wanted != now && (now == NATIVE || now == GENERIC) =>
                            {
                                tracing::warn!(
                                    "XDP on {iface} runs in {now} mode, xdp_mode asks for \
                                     {wanted}: attaching again (packets in between reach the \
                                     kernel's stack without balancing)"
                                );
                                switch_mode(program, iface, &pin, mode, now)?
                            }
                            (_, Some(now)) => now,
                            // The kernel did not tell (an old kernel, a netlink error): the
                            // link is in the mode it was attached in, which is unknown here.
                            (_, None) => "unknown",
                        }
                    }
                    Err(e) => {
                        // The link died with its interface (removed, or removed and made
                        // again): nothing is attached there now, so attach afresh.
                        tracing::warn!("{e}; attaching XDP to {iface} afresh");
                        fs::remove_file(&pin).map_err(io("removing", &pin))?;
                        created.push(pin.clone());
                        attach_fresh(program, iface, &pin, mode)?
                    }
                }
            } else {
                created.push(pin.clone());
                attach_fresh(program, iface, &pin, mode)?
            };
            attached.push((iface.clone(), ifindex, in_force));
        }
        Ok(())
    })();
    if let Err(e) = result {
        for pin in created {
            // Best effort: the error that stopped the attachment is the one to report.
            let _ = fs::remove_file(pin);
        }
        return Err(e);
    }
    for stale in layout.linked_interfaces() {
        if !interfaces.contains(&stale) {
            let path = layout.link(&stale);
            fs::remove_file(&path).map_err(io("removing", &path))?;
        }
    }
    let prog = layout.program();
    if prog.exists() {
        fs::remove_file(&prog).map_err(io("removing", &prog))?;
    }
    program.pin(&prog).map_err(|source| PinError::Pin {
        path: prog.clone(),
        source,
    })?;
    Ok(attached)
}

/// The XDP mode to attach in: the config's `xdp_mode` (which lb-common's config model
/// does not depend on aya, so the mapping lives here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    /// Native, else generic.
    Auto,
    Native,
    Generic,
}

impl XdpAttach {
    /// The mode an attachment must be in, `None` for any.
    fn wanted(self) -> Option<&'static str> {
        match self {
            Self::Auto => None,
            Self::Native => Some(NATIVE),
            Self::Generic => Some(GENERIC),
        }
    }
}

impl From<crate::config::XdpMode> for XdpAttach {
    fn from(mode: crate::config::XdpMode) -> Self {
        match mode {
            crate::config::XdpMode::Auto => Self::Auto,
            crate::config::XdpMode::Native => Self::Native,
            crate::config::XdpMode::Generic => Self::Generic,
        }
    }
}

/// The mode names shown by `status`, `/metrics` and the status page.
pub const NATIVE: &str = "native";
pub const GENERIC: &str = "generic";

/// Pins the stage table of the program just attached at `<instance>/stages`, in place of
/// an earlier daemon's. The kernel empties a program array when its last open file and pin
/// are gone, so the pin is what keeps the attached program's stages while no daemon runs.
///
/// Returns the table it replaced, still open: a packet that entered the replaced program
/// just before the swap may still be on its way to one of its stages, which must not find
/// an empty slot. The caller keeps it for a while (the daemon: for its lifetime).
pub fn pin_stages(stages: &MapData, layout: &Layout) -> Result<Option<MapData>> {
    let path = layout.stages();
    let info_err = |source| PinError::Info {
        name: names::STAGES,
        source,
    };
    let mut replaced = None;
    if path.exists() {
        let pinned = MapData::from_pin(&path).map_err(info_err)?;
        let ours = stages.info().map_err(info_err)?.id();
        if pinned.info().map_err(info_err)?.id() == ours {
            return Ok(None);
        }
        fs::remove_file(&path).map_err(|source| PinError::Io {
            what: "removing",
            path: path.clone(),
            source,
        })?;
        replaced = Some(pinned);
    }
    stages.pin(&path).map_err(|source| PinError::Pin {
        path: path.clone(),
        source,
    })?;
    Ok(replaced)
}

/// The attachment mode shown for a configured interface that does not exist (now).
pub const MISSING: &str = "missing";

/// Swaps `program` into the pinned link of `iface`: no moment without XDP.
fn reattach_pinned(program: &mut Xdp, pin: &Path, iface: &str) -> Result<()> {
    let link_err = |source| PinError::Link {
        path: pin.to_owned(),
        source,
    };
    let pinned = PinnedLink::from_pin(pin).map_err(link_err)?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
    let id = program
        .attach_to_link(link)
        .map_err(|source| PinError::Attach {
            iface: iface.to_owned(),
            source,
        })?;
    // The pin keeps the link; the handle is not needed (dropping it does not detach).
    let _ = program.take_link(id);
    Ok(())
}

/// Detaches the pinned link of `iface` now: unpinning alone would let the kernel free the
/// link later (deferred work), and attaching in the other mode before that fails, as a
/// device cannot run native and generic XDP at once. Holding the link open while
/// unpinning and then closing it frees it synchronously.
fn detach_pinned(pin: &Path, iface: &str, mode: &'static str) -> Result<()> {
    let switch_err = |source| PinError::Switch {
        iface: iface.to_owned(),
        mode,
        source,
    };
    let pinned = PinnedLink::from_pin(pin).map_err(|source| PinError::Link {
        path: pin.to_owned(),
        source,
    })?;
    drop(pinned.unpin().map_err(switch_err)?);
    Ok(())
}

/// Detaches the pinned link of `iface`, running in mode `now`, and attaches `program` in
/// `mode`. A device cannot run native and generic XDP at once, so the old link goes
/// first; when the new mode is refused the old one is attached again, so a refused start
/// or reload leaves the interface running as before.
fn switch_mode(
    program: &mut Xdp,
    iface: &str,
    pin: &Path,
    mode: XdpAttach,
    now: &'static str,
) -> Result<&'static str> {
    detach_pinned(pin, iface, mode.wanted().unwrap_or(now))?;
    attach_fresh(program, iface, pin, mode).inspect_err(|_| {
        let back = if now == NATIVE {
            XdpAttach::Native
        } else {
            XdpAttach::Generic
        };
        if let Err(again) = attach_fresh(program, iface, pin, back) {
            tracing::error!("attaching XDP to {iface} in {now} mode again: {again}");
        }
    })
}

/// Attaches `program` to `iface` in `mode` and pins the link; returns the mode in force.
fn attach_fresh(
    program: &mut Xdp,
    iface: &str,
    pin: &Path,
    mode: XdpAttach,
) -> Result<&'static str> {
    let attach_err = |source| PinError::Attach {
        iface: iface.to_owned(),
        source,
    };
    let (id, in_force) = match mode {
        XdpAttach::Auto => match program.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, NATIVE),
            Err(_) => (
                program.attach(iface, XdpMode::Skb).map_err(attach_err)?,
                GENERIC,
            ),
        },
        XdpAttach::Native => {
            let id =
                program
                    .attach(iface, XdpMode::Driver)
                    .map_err(|e| PinError::NativeRefused {
                        iface: iface.to_owned(),
                        reason: error_chain(&e),
                    })?;
            (id, NATIVE)
        }
        XdpAttach::Generic => (
            program.attach(iface, XdpMode::Skb).map_err(attach_err)?,
            GENERIC,
        ),
    };
    let link = program.take_link(id).map_err(attach_err)?;
    let fd_link = FdLink::try_from(link).map_err(|_| PinError::NotPinnable(iface.to_owned()))?;
    fd_link.pin(pin).map_err(|source| PinError::Pin {
        path: pin.to_owned(),
        source,
    })?;
    Ok(in_force)
}

/// An error and its sources on one line: aya's attach errors name the system call and
/// keep the kernel's answer (`Operation not supported`) in the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The XDP mode of the program attached to `ifindex` as the kernel reports it: `native`,
/// `generic`, `offloaded`, `several`; `None` when nothing is attached or netlink does
/// not answer.
///
/// A link's own information (`bpf_link_info`) has only the interface index for XDP; the
/// mode is in the interface's attributes (`IFLA_XDP_ATTACHED`, what `ip link` shows as
/// `xdp` or `xdpgeneric`), read here with one RTM_GETLINK request.
pub fn attached_mode(ifindex: u32) -> Option<&'static str> {
    match crate::netlink::xdp_attached(ifindex) {
        Ok(crate::netlink::XDP_ATTACHED_DRV) => Some(NATIVE),
        Ok(crate::netlink::XDP_ATTACHED_SKB) => Some(GENERIC),
        Ok(crate::netlink::XDP_ATTACHED_HW) => Some("offloaded"),
        Ok(crate::netlink::XDP_ATTACHED_MULTI) => Some("several"),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("reading the XDP mode of ifindex {ifindex}: {e}");
            None
        }
    }
}

/// Interface index by name, in the current network namespace: the SIOCGIFINDEX ioctl (what
/// if_nametoindex(3) does) answers from the namespace of the socket it is asked on.
pub fn ifindex(iface: &str) -> Result<u32> {
    let no_interface = |_| PinError::NoInterface(iface.to_owned());
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(no_interface)?;
    rustix::net::netdevice::name_to_index(&socket, iface).map_err(no_interface)
}

/// Removes an instance's data plane: unpinning a link detaches it once no process holds
/// it; the maps and program go with their last reference.
pub fn teardown(layout: &Layout) -> Result<bool> {
    if !layout.root.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(&layout.root).map_err(|source| PinError::Io {
        what: "removing",
        path: layout.root.clone(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance pinned by an earlier version loses the pins of the maps this one
    /// replaced, and keeps every other.
    #[test]
    fn pins_of_replaced_maps_are_removed_and_no_other() {
        let bpffs = std::env::temp_dir().join(format!("lb-ctl-pins-{}", std::process::id()));
        let layout = Layout::new(&bpffs, "lb");
        fs::create_dir_all(layout.maps()).unwrap();
        for name in ["NEXT_HOPS", "BACKEND_STATS", "FLOWS", "BACKEND_CPU"] {
            fs::write(layout.maps().join(name), b"").unwrap();
        }
        assert_eq!(
            remove_obsolete(&layout).unwrap(),
            ["NEXT_HOPS", "BACKEND_STATS"]
        );
        let mut left: Vec<String> = fs::read_dir(layout.maps())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["BACKEND_CPU", "FLOWS"]);
        assert!(remove_obsolete(&layout).unwrap().is_empty());
        fs::remove_dir_all(&bpffs).unwrap();
    }
}
