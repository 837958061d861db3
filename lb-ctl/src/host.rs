//! Kernel settings the data plane relies on where it hands packets to the kernel.
//!
//! The XDP program passes some packets to the kernel already translated: one whose next
//! hop has no neighbour entry yet (the kernel queues it, resolves the neighbour and
//! forwards it), one too large for the egress MTU, one whose egress runs no XDP program. A
//! backend's reply then carries the VIP as its source. When the VIP is an address of the
//! LB itself (configured on its client-side interface so that it answers ARP, as LVS
//! directors have it), the kernel drops such a packet as a martian unless `accept_local`
//! is on where it came in. Nothing then resolves the client either, so a client the LB has
//! no neighbour entry for never gets an answer. Strict reverse-path filtering on that
//! interface drops the packet whatever `accept_local` says (unless the VIP is an address
//! of that same interface); loose mode and no filtering let it through.
//!
//! So the daemon turns `accept_local` on wherever it attaches XDP. It leaves `rp_filter`
//! alone, as the host's own defence against spoofed sources is its operator's call, and
//! says when strict mode is in the way.

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use thiserror::Error;
use tracing::{debug, info, warn};

/// Where the kernel shows `net.ipv4.conf.*`. The files under `/proc/sys/net` answer for
/// the network namespace of the thread that opens them, whatever namespace `/proc` was
/// mounted in, so a daemon that joined a namespace with setns(2) (`--netns`) reads and
/// writes that namespace's settings.
pub(crate) const IPV4_CONF: &str = "/proc/sys/net/ipv4/conf";
/// Where IPv6's per-interface settings live.
pub(crate) const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

#[derive(Debug, Error)]
pub enum HostError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {text:?}, not a number")]
    NotANumber { path: PathBuf, text: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listing the local addresses: {0}")]
    Addresses(#[source] io::Error),
}

type Result<T, E = HostError> = std::result::Result<T, E>;

/// Reverse-path filtering of an interface (`rp_filter`), as the kernel applies it: the
/// higher of the `all` value and the interface's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RpFilter {
    Off,
    /// The source must be routed back through the interface it came in on.
    Strict,
    /// The source must be routed back through some interface.
    Loose,
}

impl RpFilter {
    /// The kernel checks strictly for 1 only; any other non-zero value is loose.
    fn of(value: u32) -> Self {
        match value {
            0 => Self::Off,
            1 => Self::Strict,
            _ => Self::Loose,
        }
    }
}

/// `net.ipv4.conf.<scope>.<key>` (or, at `IPV6_CONF`, `net.ipv6.conf`'s) of the current
/// network namespace.
#[derive(Clone, Debug)]
pub(crate) struct IpConf {
    root: PathBuf,
}

impl Default for IpConf {
    fn default() -> Self {
        Self::at(IPV4_CONF)
    }
}

impl IpConf {
    /// The settings under `root` instead of [`IPV4_CONF`].
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, scope: &str, key: &str) -> PathBuf {
        // The path, not the dotted sysctl name: an interface name may contain dots.
        self.root.join(scope).join(key)
    }

    fn read(&self, scope: &str, key: &str) -> Result<u32> {
        let path = self.path(scope, key);
        let text = fs::read_to_string(&path).map_err(|source| HostError::Read {
            path: path.clone(),
            source,
        })?;
        text.trim()
            .parse()
            .map_err(|_| HostError::NotANumber { path, text })
    }

    fn write(&self, scope: &str, key: &str, value: u32) -> Result<()> {
        let path = self.path(scope, key);
        fs::write(&path, format!("{value}\n")).map_err(|source| HostError::Write { path, source })
    }

    /// Turns `accept_local` on for `iface` unless it is on already, for the interface or
    /// for `all` (the kernel takes either). Says whether this call turned it on.
    pub fn enable_accept_local(&self, iface: &str) -> Result<bool> {
        if self.read(iface, "accept_local")? != 0 || self.read("all", "accept_local")? != 0 {
            return Ok(false);
        }
        self.write(iface, "accept_local", 1)?;
        Ok(true)
    }

    /// Whether the kernel forwards packets that arrive on `iface` (`forwarding`, which
    /// `net.ipv4.ip_forward` sets on every interface). The FIB lookup of the XDP program
    /// answers only for such an ingress.
    pub fn forwarding(&self, iface: &str) -> Result<bool> {
        Ok(self.read(iface, "forwarding")? != 0)
    }

    /// The reverse-path filtering in force on `iface`.
    pub fn rp_filter(&self, iface: &str) -> Result<RpFilter> {
        Ok(RpFilter::of(self.effective(iface, "rp_filter")?))
    }

    /// The value of `key` the kernel applies on `iface` where it takes the higher of the
    /// `all` value and the interface's own (`rp_filter`, `arp_ignore`, `arp_announce`).
    pub fn effective(&self, iface: &str, key: &str) -> Result<u32> {
        Ok(self.read(iface, key)?.max(self.read("all", key)?))
    }
}

/// An IPv4 address of this host and the interface it is configured on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalAddress {
    pub address: Ipv4Addr,
    pub iface: String,
}

impl fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.address, self.iface)
    }
}

/// Every IPv4 address of the current network namespace, with its interface.
pub fn local_addresses() -> Result<Vec<LocalAddress>> {
    Ok(interface_addresses()?
        .into_iter()
        .filter_map(|(address, iface)| match address {
            IpAddr::V4(address) => Some(LocalAddress { address, iface }),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// Every address of either family of the current network namespace, with the name of
/// its interface.
pub fn interface_addresses() -> Result<Vec<(IpAddr, String)>> {
    // getifaddrs(3) through libc: rustix does not offer it, and std has no interface list.
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes the head of a list it allocates; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(HostError::Addresses(io::Error::last_os_error()));
    }
    let mut addresses = Vec::new();
    let mut node = head;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*node };
        node = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points to a socket address whose family field is
        // valid to read whatever the family.
        let address = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        // An address with a label (`eth0:vip`) is reported under the label; the interface
        // is what precedes the colon (interface names cannot contain one).
        let iface = name.split(':').next().unwrap_or_default().to_owned();
        addresses.push((address, iface));
    }
    // SAFETY: the list getifaddrs returned, freed once; nothing borrowed from it remains.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
}

/// An interface with strict reverse-path filtering, while VIPs are addresses of other
/// interfaces: backends' replies that come in there and go to the kernel are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StrictRpFilter {
    pub iface: String,
    pub vips: Vec<LocalAddress>,
}

/// The interfaces of `filters` whose strict filtering drops replies from a VIP of
/// `local_vips`. A VIP on the same interface passes the strict check.
pub(crate) fn strict_rp_filter_conflicts(
    filters: &[(String, RpFilter)],
    local_vips: &[LocalAddress],
) -> Vec<StrictRpFilter> {
    filters
        .iter()
        .filter(|(_, filter)| *filter == RpFilter::Strict)
        .filter_map(|(iface, _)| {
            let vips: Vec<LocalAddress> = local_vips
                .iter()
                .filter(|vip| vip.iface != *iface)
                .cloned()
                .collect();
            (!vips.is_empty()).then(|| StrictRpFilter {
                iface: iface.clone(),
                vips,
            })
        })
        .collect()
}

/// Makes the kernel forward what the XDP program hands it on `interfaces` (the attached
/// ones) for listeners on `vips`, and logs what it cannot fix. Never fails: the balancer
/// works without these settings for clients and backends the kernel has resolved, so a
/// setting that cannot be read or written is a warning with the command that fixes it.
pub(crate) fn prepare(conf: &IpConf, interfaces: &[&str], vips: &BTreeSet<Ipv4Addr>) {
    for iface in interfaces {
        match conf.forwarding(iface) {
            Ok(true) => {}
            Ok(false) => warn!("{}", forwarding_off(iface)),
            Err(e) => warn!("cannot read the forwarding setting of {iface}: {e}"),
        }
        match conf.enable_accept_local(iface) {
            Ok(true) => info!(
                "net.ipv4.conf.{iface}.accept_local set to 1: replies that XDP hands to the \
                 kernel (next hop not resolved yet, too large for the MTU) keep the VIP as \
                 their source, which the kernel would drop as a martian where the VIP is \
                 an address of this host"
            ),
            Ok(false) => debug!("accept_local is already on for {iface}"),
            Err(e) => warn!(
                "cannot turn accept_local on for {iface} ({e}): where a VIP is an address \
                 of this host, a client without a neighbour entry gets no answer; run \
                 `sysctl -w net.ipv4.conf.{iface}.accept_local=1`"
            ),
        }
    }
    let local_vips: Vec<LocalAddress> = match local_addresses() {
        Ok(all) => all
            .into_iter()
            .filter(|a| vips.contains(&a.address))
            .collect(),
        Err(e) => {
            warn!("cannot tell which VIPs are local addresses: {e}");
            return;
        }
    };
    if local_vips.is_empty() {
        return;
    }
    let filters: Vec<(String, RpFilter)> = interfaces
        .iter()
        .filter_map(|iface| match conf.rp_filter(iface) {
            Ok(filter) => Some(((*iface).to_owned(), filter)),
            Err(e) => {
                warn!("cannot read the rp_filter of {iface}: {e}");
                None
            }
        })
        .collect();
    for conflict in strict_rp_filter_conflicts(&filters, &local_vips) {
        let iface = &conflict.iface;
        let vips: Vec<String> = conflict.vips.iter().map(ToString::to_string).collect();
        warn!(
            "net.ipv4.conf.{iface}.rp_filter is strict (1, the higher of `all` and \
             `{iface}`) while VIPs are addresses of other interfaces of this host ({}): \
             the kernel drops the backends' replies that arrive on {iface} and that XDP \
             hands to it, so a client the balancer has no neighbour entry for never gets \
             an answer. Use loose mode: `sysctl -w net.ipv4.conf.{iface}.rp_filter=2`",
            vips.join(", ")
        );
    }
}

/// For IPv6 VIPs: the FIB answers the XDP program's IPv6 lookups only while IPv6
/// forwarding is on (`net.ipv6.conf.all.forwarding`, which `bpf_fib_lookup` checks), so
/// every IPv6 packet would be dropped (`drop_no_route`) without it. Warns, as for IPv4:
/// turning a host into a router is its operator's decision.
pub(crate) fn prepare_ipv6(conf: &IpConf) {
    match conf.forwarding("all") {
        Ok(true) => {}
        Ok(false) => warn!(
            "net.ipv6.conf.all.forwarding is 0 while listeners have IPv6 VIPs: the kernel's \
             FIB gives the XDP program no next hop for IPv6, so every IPv6 packet it would \
             forward is dropped (drop_no_route). Run `sysctl -w \
             net.ipv6.conf.all.forwarding=1` and persist it in /etc/sysctl.d/"
        ),
        Err(e) => warn!("cannot read net.ipv6.conf.all.forwarding: {e}"),
    }
}

/// The warning for an interface the kernel does not forward from. Not fixed by the
/// daemon: turning a host into a router is its operator's decision.
fn forwarding_off(iface: &str) -> String {
    format!(
        "net.ipv4.conf.{iface}.forwarding is 0: the kernel's FIB gives the XDP program no \
         next hop for packets that arrive on {iface}, so every packet it would forward from \
         there is dropped (drop_no_route). Run `sysctl -w net.ipv4.ip_forward=1` (all \
         interfaces) and persist it in /etc/sysctl.d/"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `net.ipv4.conf` tree: `all` and the given interfaces, every value 0.
    struct FakeConf {
        root: PathBuf,
    }

    impl FakeConf {
        fn new(tag: &str, interfaces: &[&str]) -> Self {
            let root =
                std::env::temp_dir().join(format!("lb-ctl-host-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for scope in interfaces.iter().chain(&["all"]) {
                fs::create_dir_all(root.join(scope)).unwrap();
                for key in ["accept_local", "rp_filter", "forwarding"] {
                    fs::write(root.join(scope).join(key), "0\n").unwrap();
                }
            }
            Self { root }
        }

        fn set(&self, scope: &str, key: &str, value: &str) {
            fs::write(self.root.join(scope).join(key), value).unwrap();
        }

        fn get(&self, scope: &str, key: &str) -> String {
            fs::read_to_string(self.root.join(scope).join(key))
                .unwrap()
                .trim()
                .to_owned()
        }

        fn conf(&self) -> IpConf {
            IpConf::at(&self.root)
        }
    }

    impl Drop for FakeConf {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn local(address: [u8; 4], iface: &str) -> LocalAddress {
        LocalAddress {
            address: Ipv4Addr::from(address),
            iface: iface.to_owned(),
        }
    }

    #[test]
    fn forwarding_is_read_per_interface_and_its_warning_says_how_to_turn_it_on() {
        let fake = FakeConf::new("forwarding", &["lb-front", "lb-back"]);
        let conf = fake.conf();
        fake.set("lb-front", "forwarding", "1");
        assert!(conf.forwarding("lb-front").unwrap());
        assert!(!conf.forwarding("lb-back").unwrap());
        let warning = forwarding_off("lb-back");
        assert!(warning.contains("drop_no_route"), "{warning}");
        assert!(
            warning.contains("sysctl -w net.ipv4.ip_forward=1"),
            "{warning}"
        );
    }

    #[test]
    fn accept_local_is_turned_on_once() {
        let fake = FakeConf::new("accept", &["lb-back", "eth0.100"]);
        let conf = fake.conf();
        assert!(conf.enable_accept_local("lb-back").unwrap());
        assert_eq!(fake.get("lb-back", "accept_local"), "1");
        assert!(!conf.enable_accept_local("lb-back").unwrap(), "already on");
        // A dotted name is a folder of its own, not a path.
        assert!(conf.enable_accept_local("eth0.100").unwrap());
        assert_eq!(fake.get("eth0.100", "accept_local"), "1");
        assert_eq!(fake.get("all", "accept_local"), "0", "all is left alone");
    }

    #[test]
    fn accept_local_on_for_all_is_enough() {
        let fake = FakeConf::new("all", &["lb-back"]);
        fake.set("all", "accept_local", "1\n");
        assert!(!fake.conf().enable_accept_local("lb-back").unwrap());
        assert_eq!(fake.get("lb-back", "accept_local"), "0");
    }

    #[test]
    fn a_missing_interface_is_an_error_naming_the_file() {
        let fake = FakeConf::new("missing", &[]);
        let e = fake.conf().enable_accept_local("gone0").unwrap_err();
        assert!(e.to_string().contains("gone0/accept_local"), "{e}");
    }

    #[test]
    fn rp_filter_is_the_higher_of_all_and_the_interface() {
        let fake = FakeConf::new("rp", &["lb-back"]);
        let conf = fake.conf();
        assert_eq!(conf.rp_filter("lb-back").unwrap(), RpFilter::Off);
        fake.set("all", "rp_filter", "1");
        assert_eq!(conf.rp_filter("lb-back").unwrap(), RpFilter::Strict);
        // Loose on the interface wins over strict in `all`: the fix the warning gives.
        fake.set("lb-back", "rp_filter", "2");
        assert_eq!(conf.rp_filter("lb-back").unwrap(), RpFilter::Loose);
        fake.set("all", "rp_filter", "0");
        fake.set("lb-back", "rp_filter", "1");
        assert_eq!(conf.rp_filter("lb-back").unwrap(), RpFilter::Strict);
        fake.set("lb-back", "rp_filter", "garbage");
        assert!(matches!(
            conf.rp_filter("lb-back"),
            Err(HostError::NotANumber { .. })
        ));
    }

    #[test]
    fn strict_filtering_conflicts_only_with_vips_of_other_interfaces() {
        let filters = vec![
            ("lb-client".to_owned(), RpFilter::Strict),
            ("lb-back".to_owned(), RpFilter::Strict),
            ("lb-mgmt".to_owned(), RpFilter::Loose),
            ("lb-other".to_owned(), RpFilter::Off),
        ];
        let vips = vec![local([198, 19, 0, 100], "lb-client")];
        assert_eq!(
            strict_rp_filter_conflicts(&filters, &vips),
            vec![StrictRpFilter {
                iface: "lb-back".to_owned(),
                vips: vips.clone(),
            }]
        );
        assert!(strict_rp_filter_conflicts(&filters, &[]).is_empty());
        // One interface for clients and backends: the VIP is on the interface the
        // replies come in on, which passes the strict check.
        let one_armed = vec![("eth0".to_owned(), RpFilter::Strict)];
        let vips = vec![local([198, 19, 0, 100], "eth0")];
        assert!(strict_rp_filter_conflicts(&one_armed, &vips).is_empty());
    }

    #[test]
    fn local_addresses_include_the_loopback() {
        let all = local_addresses().unwrap();
        assert!(
            all.contains(&local([127, 0, 0, 1], "lo")),
            "127.0.0.1 on lo in {all:?}"
        );
    }
}
