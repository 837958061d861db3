//! The active/standby test network: two LB hosts in NAT mode, each with a client-side and a
//! backend-side interface on two switched segments, as an IPVS pair with keepalived is
//! deployed.
//!
//! ```text
//!  client ns (<p>c)                  switch ns (<p>sw)                   LB K (<p>lK)
//!  eth0 198.18.0.2/24 ──veth── sw-c ┐
//!  VIP on-link                       brc ─ sw-lKc ──veth── c0 198.18.0.(10+K)/24 (+ VIP/32 on the master)
//!                                    brb ─ sw-lKb ──veth── b0 198.18.1.(1+K)/24  (+ 198.18.1.1/24 on the master)
//!  backend K (<p>bK)                    └ sw-bK ──veth── eth0 198.18.1.(10+K)/24, default via 198.18.1.1
//! ```
//!
//! The VIP and the backends' gateway (198.18.1.1) are keepalived's virtual addresses:
//! whichever LB host is master holds both and announces them with gratuitous ARP.
//! [`Pair::keepalived`] writes each host's configuration, one `vrrp_sync_group` of the two
//! addresses with `lb-ctl check` as its health script, and runs it in the host's namespace.

use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, time::Duration};

use crate::{
    Backend, ChildGuard, Netns, VIP, XdpPass, netns::unique_prefix, topology::xdp_pass, veth,
};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The backends' default gateway: a virtual address of the master.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The LB hosts' interfaces.
pub const CLIENT_IF: &str = "c0";
pub const BACKEND_IF: &str = "b0";
const HOST_IF: &str = "eth0";
const PREFIX_LEN: u8 = 24;

/// LB host `k`'s client-side address.
pub fn lb_client_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + k as u8)
}

/// LB host `k`'s backend-side address.
pub fn lb_backend_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1 + k as u8)
}

/// Backend `k`'s address.
pub fn backend_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + k as u8)
}

pub struct Pair {
    prefix: String,
    client: Netns,
    lbs: Vec<Netns>,
    backends: Vec<Netns>,
    /// XDP_PASS on the switch's ends of the LB hosts' veths (see `XdpPass`).
    _switch_xdp: Vec<XdpPass>,
    // Dropped last: the other namespaces' veths go with their own namespace.
    switch: Netns,
}

impl Pair {
    /// Two LB hosts and `n_backends` backends.
    pub fn build(tag: &str, n_backends: usize) -> Pair {
        assert!((1..=9).contains(&n_backends), "n_backends {n_backends}");
        let prefix = unique_prefix(tag);
        let client = Netns::create(&format!("{prefix}c"));
        let switch = Netns::create(&format!("{prefix}sw"));
        let lbs: Vec<Netns> = (1..=2)
            .map(|k| Netns::create(&format!("{prefix}l{k}")))
            .collect();
        let backends: Vec<Netns> = (1..=n_backends)
            .map(|k| Netns::create(&format!("{prefix}b{k}")))
            .collect();
        for ns in [&client, &switch].into_iter().chain(&lbs).chain(&backends) {
            crate::topology::ipv4_only_host(ns);
        }
        for lb in &lbs {
            lb.sysctl("net.ipv4.ip_forward", 1);
        }
        for bridge in ["brc", "brb"] {
            crate::topology::add_bridge(&switch, bridge);
        }
        let mut ends: Vec<(&Netns, String)> = Vec::new();
        let mut ports: Vec<(String, &str)> = Vec::new();
        veth(&client, HOST_IF, &switch, "sw-c");
        ends.extend([(&client, HOST_IF.to_owned()), (&switch, "sw-c".to_owned())]);
        ports.push(("sw-c".into(), "brc"));
        for (i, lb) in lbs.iter().enumerate() {
            for (dev, side, bridge) in [(CLIENT_IF, "c", "brc"), (BACKEND_IF, "b", "brb")] {
                let port = format!("sw-l{}{side}", i + 1);
                veth(&switch, &port, lb, dev);
                ends.extend([(&switch, port.clone()), (lb, dev.to_owned())]);
                ports.push((port, bridge));
            }
        }
        for (i, backend) in backends.iter().enumerate() {
            let port = format!("sw-b{}", i + 1);
            veth(&switch, &port, backend, HOST_IF);
            ends.extend([(&switch, port.clone()), (backend, HOST_IF.to_owned())]);
            ports.push((port, "brb"));
        }
        for (port, bridge) in &ports {
            switch.ip(["link", "set", port, "master", bridge]);
        }
        crate::topology::prepare_veth_ends(&ends);
        switch.link_up("brc");
        switch.link_up("brb");
        crate::topology::gro_on_every_end(&ends);

        client.addr_add(HOST_IF, format!("{CLIENT_ADDR}/{PREFIX_LEN}"));
        // The VIP is on the client's segment: it asks for it by ARP, and the master answers.
        client.ip(["route", "add", &format!("{VIP}/32"), "dev", HOST_IF]);
        for (i, lb) in lbs.iter().enumerate() {
            lb.addr_add(CLIENT_IF, format!("{}/{PREFIX_LEN}", lb_client_addr(i + 1)));
            lb.addr_add(
                BACKEND_IF,
                format!("{}/{PREFIX_LEN}", lb_backend_addr(i + 1)),
            );
        }
        for (i, backend) in backends.iter().enumerate() {
            backend.addr_add(HOST_IF, format!("{}/{PREFIX_LEN}", backend_addr(i + 1)));
            backend.route_add("default", GATEWAY);
        }
        let switch_xdp = (1..=2)
            .flat_map(|k| ["c", "b"].map(|side| format!("sw-l{k}{side}")))
            .map(|port| xdp_pass(&switch, &port))
            .collect();
        Pair {
            prefix,
            client,
            lbs,
            backends,
            _switch_xdp: switch_xdp,
            switch,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// LB host `k` (1 or 2).
    pub fn lb(&self, k: usize) -> &Netns {
        &self.lbs[k - 1]
    }

    /// Backend `k` (1-based).
    pub fn backend(&self, k: usize) -> &Netns {
        &self.backends[k - 1]
    }

    /// Starts `lb-test-backend` in every backend, named `bK`, HTTP on `port`.
    pub fn start_backends(&self, port: u16) -> Vec<Backend> {
        (1..=self.backends.len())
            .map(|k| {
                Backend::start(
                    &self.backends[k - 1],
                    &format!("b{k}"),
                    &[(Ipv4Addr::UNSPECIFIED, port).into()],
                    &[],
                )
            })
            .collect()
    }

    /// Takes LB host `k` off both segments (its switch ports down), as a host that dies.
    pub fn cut_lb(&self, k: usize) {
        for side in ["c", "b"] {
            self.switch
                .ip(["link", "set", &format!("sw-l{k}{side}"), "down"]);
        }
    }

    /// Whether LB host `k` holds the VIP now (is keepalived's master).
    pub fn holds_vip(&self, k: usize) -> bool {
        self.lb(k)
            .ip(["-4", "addr", "show", "dev", CLIENT_IF])
            .contains(&format!("{VIP}/32"))
    }

    /// Runs keepalived in LB host `k` with [`keepalived_config`] (priority 150 for host 1,
    /// 100 for host 2), `lb-ctl check --socket <socket>` as its health script.
    pub fn keepalived(&self, k: usize, socket: &std::path::Path) -> Keepalived {
        let dir = std::env::temp_dir().join(format!("{}-keepalived-{k}", self.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("keepalived folder");
        let check = format!(
            "{} check --socket {}",
            crate::bin_path("lb-ctl").display(),
            socket.display()
        );
        let priority = if k == 1 { 150 } else { 100 };
        let config = keepalived_config(&format!("lb{k}"), priority, &check);
        let path = dir.join("keepalived.conf");
        std::fs::write(&path, config).expect("keepalived.conf");
        let p = |name: &str| dir.join(name).display().to_string();
        let child = self.lb(k).spawn([
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
            &path.display().to_string(),
            "--pid",
            &p("keepalived.pid"),
            "--vrrp_pid",
            &p("vrrp.pid"),
            "--checkers_pid",
            &p("checkers.pid"),
        ]);
        Keepalived {
            child,
            config: path,
            dir,
        }
    }
}

/// The keepalived configuration of one LB host of the pair, as docs/operations.md gives
/// it ("Active/standby with keepalived"): the VIP on the client side and the backends'
/// gateway on the backend side move together (`vrrp_sync_group`), and a host whose
/// `lb-ctl check` fails twice gives them up.
pub fn keepalived_config(router_id: &str, priority: u8, check: &str) -> String {
    let mut c = String::new();
    let _ = write!(
        c,
        "global_defs {{
    router_id {router_id}
    script_user root
}}

vrrp_script lb_check {{
    script \"{check}\"
    interval 1
    timeout 2
    fall 2
    rise 2
}}

vrrp_sync_group lb {{
    group {{
        lb_clients
        lb_backends
    }}
}}

vrrp_instance lb_clients {{
    state BACKUP
    interface {CLIENT_IF}
    virtual_router_id 51
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {VIP}/32 dev {CLIENT_IF}
    }}
    track_script {{
        lb_check
    }}
}}

vrrp_instance lb_backends {{
    state BACKUP
    interface {BACKEND_IF}
    virtual_router_id 52
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {GATEWAY}/{PREFIX_LEN} dev {BACKEND_IF}
    }}
}}
"
    );
    c
}

/// keepalived running in an LB host's namespace; stopped when dropped.
pub struct Keepalived {
    child: ChildGuard,
    pub config: PathBuf,
    dir: PathBuf,
}

impl Keepalived {
    /// What keepalived logged so far.
    pub fn log(&self) -> String {
        format!("{}{}", self.child.stdout(), self.child.stderr())
    }

    /// Kills it at once (no priority-0 advertisement: the peer notices by the silence).
    pub fn kill(&mut self) {
        self.child.signal(9);
        let _ = self.child.wait_timeout(Duration::from_secs(5));
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
