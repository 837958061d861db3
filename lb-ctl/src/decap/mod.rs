//! `lb-ctl decap`: the backends' side of `forwarding: dsr`. Loads the decapsulation
//! program (`lb-ebpf/src/decap/main.rs`, an object of its own embedded in this binary)
//! on a backend's interface, pinned under `<bpffs>/<name>` (default `decap`) so it stays
//! when the command exits, and reads its counters back.
//!
//! One pin folder is one set of settings (GUE port, allowed sources) for every interface
//! attached under it; two network namespaces of one host each have their own bpffs view
//! of the folder only if they mount their own, so tests give each backend its own name.

mod checks;
pub(crate) mod command;

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapInfo, PerCpuArray, lpm_trie::Key},
    programs::Xdp,
};
use lb_common::decap::{DECAP_REASON_COUNT, DecapReason, DecapSettings, MAX_DECAP_SOURCES, names};

pub use self::checks::{HostFacts, Warning, check_host};
use crate::{config::IpNet, pins, verifier};

/// The decapsulation object, built with the load balancer's by `build.rs`.
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// The pin folder name when `--instance` is not given.
pub const DEFAULT_NAME: &str = "decap";

/// What `lb-ctl decap attach` sets up.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub bpffs: PathBuf,
    pub name: String,
    /// GUE's UDP port; `None`: IPIP (and ip6ip6) only.
    pub gue_port: Option<u16>,
    /// Outer sources allowed to tunnel, of either family; empty: any.
    pub allow_sources: Vec<IpNet>,
    /// VIPs that must be on `lo`.
    pub vips: Vec<IpAddr>,
}

/// What an attach did.
#[derive(Debug)]
pub struct Attached {
    /// `native` or `generic`, as the kernel reports it (also for an interface attached
    /// before).
    pub mode: &'static str,
    pub warnings: Vec<Warning>,
}

/// Loads the program (or reuses the pinned maps), applies the settings, and attaches it
/// to `iface`, keeping the other interfaces of the same folder attached.
pub fn attach(iface: &str, options: &AttachOptions) -> Result<Attached> {
    pins::check_bpffs(&options.bpffs)?;
    let ifindex = pins::ifindex(iface)?;
    if options.allow_sources.len() > MAX_DECAP_SOURCES as usize {
        bail!(
            "{} --allow-source prefixes; at most {MAX_DECAP_SOURCES}",
            options.allow_sources.len()
        );
    }
    let layout = pins::Layout::new(&options.bpffs, &options.name);
    fs::create_dir_all(layout.maps())
        .with_context(|| format!("creating {}", layout.maps().display()))?;
    drop_stale_pins(&layout)?;
    let mut loader = EbpfLoader::new();
    loader.verifier_log_level(verifier::log_level());
    let pins: Vec<(&str, PathBuf)> = names::ALL_MAPS
        .iter()
        .map(|n| (*n, layout.maps().join(n)))
        .collect();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(DECAP_OBJECT)
        .context("loading the decapsulation object")?;

    let mut settings: Array<_, DecapSettings> = ebpf
        .map_mut(names::SETTINGS)
        .context("no settings map")?
        .try_into()?;
    settings.set(
        0,
        DecapSettings {
            gue_port: options.gue_port.unwrap_or(0).to_be(),
            restrict_sources: u8::from(!options.allow_sources.is_empty()),
            _pad: [0; 5],
        },
        0,
    )?;
    let ipv4 = options.allow_sources.iter().filter_map(|net| match net {
        IpNet::V4(n) => Some(Key::new(
            u32::from(n.prefix_len()),
            u32::from_ne_bytes(n.addr().octets()),
        )),
        IpNet::V6(_) => None,
    });
    set_prefixes(&mut ebpf, names::SOURCES, ipv4)?;
    let ipv6 = options.allow_sources.iter().filter_map(|net| match net {
        IpNet::V6(n) => Some(Key::new(u32::from(n.prefix_len()), n.addr().octets())),
        IpNet::V4(_) => None,
    });
    set_prefixes(&mut ebpf, names::SOURCES6, ipv6)?;

    let program: &mut Xdp = ebpf
        .program_mut(names::PROGRAM)
        .context("no decapsulation program in the object")?
        .try_into()?;
    verifier::load_checked(program, names::PROGRAM, None)?;
    let mut interfaces = layout.linked_interfaces();
    if !interfaces.iter().any(|i| i == iface) {
        interfaces.push(iface.to_owned());
    }
    let attached = pins::attach(program, &layout, &interfaces, pins::XdpAttach::Auto, false)?;
    let mode = attached
        .iter()
        .find(|(name, index, _)| name == iface && *index == ifindex)
        .map_or("attached", |(_, _, mode)| *mode);
    let facts = HostFacts::read(iface);
    Ok(Attached {
        mode,
        warnings: check_host(iface, &facts, &options.vips),
    })
}

/// Replaces the prefixes the LPM trie `map` of the loaded object holds with `keys`.
fn set_prefixes<K: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    map: &str,
    keys: impl Iterator<Item = Key<K>>,
) -> Result<()> {
    let mut trie: LpmTrie<_, K, u8> = ebpf
        .map_mut(map)
        .with_context(|| format!("no {map} map"))?
        .try_into()?;
    let old: Vec<Key<K>> = trie.keys().collect::<Result<_, _>>()?;
    for key in &old {
        trie.remove(key)?;
    }
    for key in keys {
        trie.insert(&key, 1, 0)?;
    }
    Ok(())
}

/// The prefixes of an LPM trie of sources, written out with `address`.
fn prefixes<K: aya::Pod>(data: MapData, address: fn(K) -> IpAddr) -> Result<Vec<String>> {
    let trie: LpmTrie<_, K, u8> = LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
    trie.keys()
        .map(|key| {
            let key = key?;
            Ok(format!("{}/{}", address(key.data()), key.prefix_len()))
        })
        .collect()
}

/// Each map's layout: name, key and value bytes, entries.
const LAYOUT: [(&str, u32, u32, u32); 4] = [
    (names::SETTINGS, 4, size_of::<DecapSettings>() as u32, 1),
    (names::COUNTERS, 4, 8, DECAP_REASON_COUNT),
    (names::SOURCES, 4 + 4, 1, MAX_DECAP_SOURCES),
    (names::SOURCES6, 4 + 16, 1, MAX_DECAP_SOURCES),
];

/// Removes pinned maps of another layout (an earlier build's counters, say), which loading
/// would reuse as they are: each is made again. Every attach rewrites all but the
/// counters, which start again from 0.
fn drop_stale_pins(layout: &pins::Layout) -> Result<()> {
    for (name, key, value, entries) in LAYOUT {
        let path = layout.maps().join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        if (info.key_size(), info.value_size(), info.max_entries()) != (key, value, entries) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Detaches the program from `iface`; the last interface takes the folder (maps,
/// counters) with it. Returns the interfaces still attached.
pub fn detach(iface: &str, bpffs: &Path, name: &str) -> Result<Vec<String>> {
    let layout = pins::Layout::new(bpffs, name);
    let attached = layout.linked_interfaces();
    if !attached.iter().any(|i| i == iface) {
        if attached.is_empty() {
            bail!(
                "no decapsulation program is attached under {}",
                layout.root.display()
            );
        }
        bail!(
            "{iface} has no decapsulation program of {name}; attached: {}",
            attached.join(", ")
        );
    }
    let link = layout.link(iface);
    fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    let left = layout.linked_interfaces();
    if left.is_empty() {
        pins::teardown(&layout)?;
    }
    Ok(left)
}

/// What `lb-ctl decap status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub name: String,
    pub interfaces: Vec<String>,
    /// `None`: IPIP and ip6ip6 only.
    pub gue_port: Option<u16>,
    /// Empty: any source.
    pub allowed_sources: Vec<String>,
    /// Every counter, by `DecapReason` name, summed over the CPUs.
    pub counters: BTreeMap<&'static str, u64>,
}

pub fn status(bpffs: &Path, name: &str) -> Result<Status> {
    let layout = pins::Layout::new(bpffs, name);
    if !layout.exists() {
        bail!(
            "no decapsulation program under {}: `lb-ctl decap attach IFACE` loads one",
            layout.root.display()
        );
    }
    let open = |map: &str| {
        let path = layout.maps().join(map);
        MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
    };
    let settings: Array<_, DecapSettings> =
        Array::try_from(aya::maps::Map::Array(open(names::SETTINGS)?))?;
    let settings = settings.get(&0, 0)?;
    let counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(names::COUNTERS)?))?;
    let mut totals = BTreeMap::new();
    for reason in DecapReason::ALL {
        let per_cpu = counters.get(&(reason as u32), 0)?;
        totals.insert(reason.name(), per_cpu.iter().sum());
    }
    let mut allowed = prefixes(open(names::SOURCES)?, |a: u32| {
        IpAddr::from(Ipv4Addr::from(a.to_ne_bytes()))
    })?;
    allowed.extend(prefixes(open(names::SOURCES6)?, |a: [u8; 16]| {
        IpAddr::from(Ipv6Addr::from(a))
    })?);
    allowed.sort();
    Ok(Status {
        name: name.to_owned(),
        interfaces: layout.linked_interfaces(),
        gue_port: (settings.gue_port != 0).then(|| u16::from_be(settings.gue_port)),
        allowed_sources: if settings.restrict_sources != 0 {
            allowed
        } else {
            Vec::new()
        },
        counters: totals,
    })
}
