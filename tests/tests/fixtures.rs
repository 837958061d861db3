//! Packet fixtures: frames through the XDP program with BPF_PROG_TEST_RUN, each case
//! stating the verdict, the reason it is counted under, and every byte of the output.
//!
//! Each test builds its own namespace ("lab") with two interfaces (client side and
//! backend side), `ip_forward=1` and permanent neighbours, so `bpf_fib_lookup` inside the
//! program answers deterministically; the test thread joins that namespace before running
//! the program, and sets the ingress ifindex in the XDP context.
//!
//! The maps hold what the controller writes for a config: each test states its config in
//! YAML and installs it through `plan` and the reconciler (`lb_tests::provision`); health,
//! drains and the host's addresses go through the controller's runtime facts.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{FLOW_F_PICKUP, Flow, FlowKey, ListenerKey, MAGLEV_TABLE_SIZE, Reason, select};
use lb_ctl::{
    config::VipPing,
    dataplane::{DataPlane, EBPF_OBJECT, LoadOptions, MapSizes},
    plan::Runtime,
};
use lb_tests::{
    Netns, TEST_OBJECT,
    bench::{
        kit::{self, Kit},
        util::pin_to_cpu,
    },
    packet::{self, ACK, FIN, Frame, Mac, RST, SYN, diff, mac_string},
    provision::{self, Provisioned},
    require_root_and_bpf, unique_prefix, veth,
    xdp::{self, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];
const LB_CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x01];
const LB_BACKEND_MAC: Mac = [0x02, 0, 0, 0, 0x0b, 0x01];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 101);
/// Not a VIP, not a backend: traffic the LB has nothing to do with.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);

/// Backends with permanent neighbour entries, and one without (NO_NEIGH).
const B: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 10),
    Ipv4Addr::new(198, 18, 1, 11),
    Ipv4Addr::new(198, 18, 1, 12),
];
const B_MAC: [Mac; 3] = [
    [0x02, 0, 0, 0, 0, 0xb0],
    [0x02, 0, 0, 0, 0, 0xb1],
    [0x02, 0, 0, 0, 0, 0xb2],
];
const NO_NEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 13);

/// The namespace and its two LB interfaces.
struct Lab {
    ns: Netns,
    _peer: Netns,
    client_if: u32,
    backend_if: u32,
}
fn lab(tag: &str) -> Option<Lab> {
    if !require_root_and_bpf(tag) {
        return None;
    }
    let prefix = unique_prefix(tag);
    let ns = Netns::create(&format!("{prefix}fx"));
    let peer = Netns::create(&format!("{prefix}fp"));
    veth(&ns, "cl0", &peer, "pcl0");
    veth(&ns, "be0", &peer, "pbe0");
    ns.set_mac("cl0", &mac_string(LB_CLIENT_MAC));
    ns.set_mac("be0", &mac_string(LB_BACKEND_MAC));
    for dev in ["cl0", "be0"] {
        ns.link_up(dev);
    }
    for dev in ["pcl0", "pbe0"] {
        peer.link_up(dev);
    }
    ns.addr_add("cl0", "198.18.0.1/24");
    ns.addr_add("be0", "198.18.1.1/24");
    ns.sysctl("net.ipv4.ip_forward", 1);
    ns.neigh_permanent("cl0", CLIENT, &mac_string(CLIENT_MAC));
    for (addr, mac) in B.iter().zip(B_MAC) {
        ns.neigh_permanent("be0", addr, &mac_string(mac));
    }
    Some(Lab {
        client_if: ns.ifindex("cl0"),
        backend_if: ns.ifindex("be0"),
        ns,
        _peer: peer,
    })
}

fn be(a: impl Into<IpAddr>) -> u32 {
    match a.into() {
        IpAddr::V4(a) => u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => panic!("{a} is not an IPv4 fixture address"),
    }
}

fn port(p: u16) -> u16 {
    p.to_be()
}

/// What every fixture config starts with: the instance and the lab's interfaces.
const HEAD: &str = "
instance: fx
interfaces: [cl0, be0]
";

/// One backend, B[0], behind VIP:80 (`web`).
const ONE_BACKEND: &str = "
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
";

/// `ONE_BACKEND` and a UDP listener VIP:53 (`dns`) on the same server, port 5353.
const WEB_AND_DNS: &str = "
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
  - { name: dns, protocol: udp, address: 198.19.0.100, port: 53, backend_port: 5353 }
";

/// B[0], B[1] and B[2] (weights 100, 50, 50) behind VIP:80 (`web`), scheduled by
/// `scheduler`, with `settings` added to the listener (`persistence_timeout: 60`, say).
fn three_backends(scheduler: &str, settings: &str) -> String {
    format!(
        "
default_server_group:
  servers:
    - {{ address: 198.18.1.10 }}
    - {{ address: 198.18.1.11, weight: 50 }}
    - {{ address: 198.18.1.12, weight: 50 }}
listeners:
  - name: web
    protocol: tcp
    address: 198.19.0.100
    port: 80
    backend_port: 8080
    scheduler: {scheduler}
    {settings}
"
    )
}

/// Plans `yaml` (after `HEAD`) with `runtime` and writes it into the maps, as the
/// controller does.
fn provision_with(dp: &mut DataPlane, yaml: &str, runtime: Runtime) -> Provisioned {
    let config = provision::config(&format!("{HEAD}{yaml}"));
    Provisioned::install(dp, config, runtime).expect("the config is installed")
}

fn provision(dp: &mut DataPlane, yaml: &str) -> Provisioned {
    provision_with(dp, yaml, Runtime::default())
}

/// The fixture index (into `B`) of backend `id`.
fn index_of_id(fx: &Provisioned, id: u32) -> usize {
    index_of(fx.backend_by_id(id).key.address)
}

/// The table slot listener `name` uses now.
fn live_slot(dp: &DataPlane, fx: &Provisioned, name: &str) -> u32 {
    dp.listener(&fx.listener(name).frontend.key())
        .unwrap()
        .expect("the listener is installed")
        .table
}

/// The backend ids of listener `name`'s live sequence table: its WRR turns, in order.
fn live_sequence(dp: &DataPlane, fx: &Provisioned, name: &str) -> Vec<u32> {
    let slot = live_slot(dp, fx, name);
    let len = dp.table_meta(slot).unwrap().sequence_len as usize;
    dp.sequence(slot).unwrap()[..len].to_vec()
}

/// The backend id listener `name`'s live Maglev table gives the 4-tuple (what a pickup
/// gets, and `tch`).
fn maglev_pick(dp: &DataPlane, fx: &Provisioned, name: &str, client: (Ipv4Addr, u16)) -> u32 {
    let frontend = fx.listener(name).frontend;
    let meta = dp.table_meta(live_slot(dp, fx, name)).unwrap();
    let index = select::maglev_index_tuple(
        &meta,
        be(client.0),
        be(frontend.address),
        port(client.1),
        port(frontend.port),
    );
    dp.maglev_entry(index)
}

/// The shipped object: the fixtures test the production programs.
fn load(lab: &Lab) -> DataPlane {
    load_object(lab, EBPF_OBJECT)
}

fn load_object(lab: &Lab, object: &[u8]) -> DataPlane {
    load_sized(lab, object, MapSizes::new(4096, 4, 64))
}

fn load_sized(lab: &Lab, object: &[u8], sizes: MapSizes) -> DataPlane {
    let mut dp = DataPlane::load_object(
        object,
        &LoadOptions {
            sizes,
            map_pin_dir: None,
            verifier_log_dir: None,
        },
    )
    .expect("the XDP program loads and verifies");
    // The round-robin cursors are per CPU: a test that predicts the next backend must not
    // migrate between runs.
    pin_to_cpu(0).expect("sched_setaffinity");
    dp.add_tx_port(lab.client_if).unwrap();
    dp.add_tx_port(lab.backend_if).unwrap();
    dp
}

/// Runs one frame through the program as if it arrived on `ingress`.
fn run(dp: &mut DataPlane, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    run_program(dp, lb_common::names::PROGRAM, ingress, frame)
}

/// Runs one frame through one program of the object (the entry program or a stage).
fn run_program(dp: &mut DataPlane, name: &str, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    xdp::test_run(dp, name, ingress, frame).expect("BPF_PROG_TEST_RUN")
}

/// What the output frame must be.
enum Output {
    Unchanged,
    Exactly(Vec<u8>),
}

/// One row of a fixture table.
struct Case {
    name: &'static str,
    ingress: u32,
    input: Vec<u8>,
    verdict: u32,
    reason: Reason,
    output: Output,
}

/// The rows most tables are made of.
impl Lab {
    /// A client frame forwarded to fixture backend `backend` (index into `B`) on `port`.
    fn forwarded(&self, name: &'static str, frame: &Frame, backend: usize, port: u16) -> Case {
        Case {
            name,
            ingress: self.client_if,
            input: frame.build(),
            verdict: XDP_REDIRECT,
            reason: Reason::Forwarded,
            output: Output::Exactly(to_backend(frame, backend, port)),
        }
    }

    /// A backend's frame translated back to the client: `output`, every byte.
    fn replied(&self, name: &'static str, input: &Frame, output: Vec<u8>) -> Case {
        Case {
            name,
            ingress: self.backend_if,
            input: input.build(),
            verdict: XDP_REDIRECT,
            reason: Reason::ReplyForwarded,
            output: Output::Exactly(output),
        }
    }

    /// A frame from the client side dropped and counted under `reason`.
    fn dropped(&self, name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
        Case {
            name,
            ingress: self.client_if,
            input,
            verdict: XDP_DROP,
            reason,
            output: Output::Unchanged,
        }
    }

    /// A frame from the client side left to the kernel, untouched, counted under `reason`.
    fn passed(&self, name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
        Case {
            name,
            ingress: self.client_if,
            input,
            verdict: XDP_PASS,
            reason,
            output: Output::Unchanged,
        }
    }
}

/// Runs the cases in order (later cases see the flow state earlier ones left), checking
/// the verdict, the output bytes, and that exactly the expected reason counter moved.
fn check(dp: &mut DataPlane, cases: &[Case]) {
    for case in cases {
        let before = dp.counters().unwrap();
        let (verdict, out) = run(dp, case.ingress, &case.input);
        let after = dp.counters().unwrap();
        assert_eq!(
            verdict,
            case.verdict,
            "{}: verdict {verdict}, expected {}; counters that moved: {:?}",
            case.name,
            case.verdict,
            after
                .iter()
                .filter(|(name, v)| **v != before[*name])
                .collect::<Vec<_>>()
        );
        let want = match &case.output {
            Output::Unchanged => &case.input,
            Output::Exactly(bytes) => bytes,
        };
        assert!(
            out == *want,
            "{}: output differs from the expected frame:\n{}",
            case.name,
            diff(&out, want)
        );
        let moved: Vec<(&str, u64)> = after
            .iter()
            .filter(|(name, v)| !name.starts_with("event_") && **v != before[*name])
            .map(|(name, v)| (*name, v - before[name]))
            .collect();
        assert_eq!(
            moved,
            vec![(case.reason.name(), 1)],
            "{}: counters that moved",
            case.name
        );
    }
}

/// The frame a backend receives for a client frame: addressed to the backend, TTL − 1,
/// MACs from the LB's backend-side port to the backend, checksums recomputed from scratch.
fn to_backend(client_frame: &Frame, backend: usize, backend_port: u16) -> Vec<u8> {
    let mut f = client_frame.clone();
    f.dst = B[backend];
    f.dst_port = backend_port;
    f.ttl -= 1;
    f.macs(LB_BACKEND_MAC, B_MAC[backend]).build()
}

fn from_client(frame: Frame) -> Frame {
    frame.macs(CLIENT_MAC, LB_CLIENT_MAC)
}

/// Makes flow `key` look idle for `seconds`, as if no packet had come since: time passes
/// for the program, not for the test.
fn age(dp: &mut DataPlane, key: FlowKey, seconds: u64) {
    let mut flow = dp.flow(&key).unwrap().expect("flow recorded");
    flow.last_seen_ns = lb_ctl::controller::monotonic_coarse_ns() - seconds * 1_000_000_000;
    dp.set_flow(key, flow).unwrap();
}

fn flow_of(frame: &Frame) -> FlowKey {
    FlowKey {
        src_addr: be(frame.src),
        dst_addr: be(frame.dst),
        src_port: port(frame.src_port),
        dst_port: port(frame.dst_port),
        protocol: frame.protocol(),
        _pad: [0; 3],
    }
}

/// A segment from fixture backend `index` (port 8080) to the client's `sport`, and the
/// same segment as the client must receive it (from VIP:80).
fn backend_segment(index: usize, sport: u16, flags: u8, seq: u32, ack: u32) -> (Frame, Vec<u8>) {
    let input = Frame::tcp((B[index], 8080), (CLIENT, sport), flags)
        .seq_ack(seq, ack)
        .macs(B_MAC[index], LB_BACKEND_MAC);
    let out = Frame::tcp((VIP, 80), (CLIENT, sport), flags)
        .seq_ack(seq, ack)
        .ttl(63)
        .macs(LB_CLIENT_MAC, CLIENT_MAC)
        .build();
    (input, out)
}

fn index_of(addr: impl Into<IpAddr>) -> usize {
    let addr = addr.into();
    B.iter()
        .position(|b| IpAddr::V4(*b) == addr)
        .unwrap_or_else(|| panic!("{addr} is not a fixture backend"))
}

#[test]
fn tcp_new_flow_established_reply_and_close() {
    let Some(lab) = lab("fxtcp") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, &three_backends("wrr", ""));
        let web = fx.listener_id("web");
        // A fresh cursor starts at the head of the smooth WRR sequence.
        let first_id = live_sequence(&dp, &fx, "web")[0];
        let first = index_of_id(&fx, first_id);

        // Client ISN 1000, backend ISN 5000; the SYN-ACK carries 7 bytes of payload.
        let syn = from_client(Frame::tcp((CLIENT, 40000), (VIP, 80), SYN));
        let ack = from_client(
            Frame::tcp((CLIENT, 40000), (VIP, 80), ACK)
                .seq_ack(1001, 5008)
                .payload(b"GET /"),
        );
        let fin =
            from_client(Frame::tcp((CLIENT, 40000), (VIP, 80), FIN | ACK).seq_ack(1006, 5008));
        let (syn_ack, syn_ack_out) = backend_segment(first, 40000, SYN | ACK, 5000, 1001);

        check(
            &mut dp,
            &[
                lab.forwarded(
                    "SYN to the VIP goes to the head of the WRR sequence",
                    &syn,
                    first,
                    8080,
                ),
                lab.replied(
                    "the backend's SYN-ACK is translated back to the VIP",
                    &syn_ack,
                    syn_ack_out,
                ),
                lab.forwarded("an ACK with data reuses the flow", &ack, first, 8080),
                lab.forwarded("FIN still goes to the same backend", &fin, first, 8080),
            ],
        );
        let stats = dp.listener_stats(web).unwrap();
        assert_eq!(stats.new_flows, 1, "one new flow for SYN, ACK and FIN");
        assert_eq!((stats.packets, stats.reply_packets), (3, 1));
        let backend = dp.backend_stats(first_id).unwrap();
        assert_eq!(
            (backend.packets, backend.reply_packets, backend.new_flows),
            (3, 1, 1),
            "the backend's counters, from both of its records"
        );
        let flow = dp.flow(&flow_of(&syn)).unwrap().expect("flow recorded");
        assert_eq!(flow.backend, first_id);
        assert_ne!(
            flow.flags & lb_common::FLOW_F_FIN,
            0,
            "FIN recorded on the flow"
        );

        // The client reuses its port after the close: a new flow, which stays on the
        // backend of the closed one while that backend takes new flows (a forged RST and
        // SYN could otherwise move a live connection), although the WRR cursor has moved.
        let inserted = dp.counter(Reason::EventFlowInserted).unwrap();
        check(
            &mut dp,
            &[lab.forwarded(
                "a SYN on a closed flow's 5-tuple is a new flow on the same backend",
                &syn,
                first,
                8080,
            )],
        );
        let flow = dp.flow(&flow_of(&syn)).unwrap().expect("flow recorded");
        assert_eq!(
            flow.flags & (lb_common::FLOW_F_FIN | lb_common::FLOW_F_OPENING),
            lb_common::FLOW_F_OPENING,
            "the reopened flow is half-open, not closing"
        );
        assert_eq!(dp.listener_stats(web).unwrap().new_flows, 2);
        // Its ACK moves it back to the flow table: the same key, so no new entry there
        // (the status view's eviction estimate is insertions minus entries present).
        let (verdict, _) = run(&mut dp, lab.client_if, &ack.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(dp.established_flows().unwrap().len(), 1);
        assert_eq!(
            dp.counter(Reason::EventFlowInserted).unwrap(),
            inserted,
            "a reopened connection is no new entry of the flow table"
        );
    });
}

/// A blind attacker who knows a connection's 4-tuple but not its sequence numbers sends a
/// RST (or FIN) with a random sequence number, then a SYN, from the client's address, and
/// the same from the backend's: none of it may move the connection to another backend or
/// end its accounting (`wlc`, `status`, `wait drained` count it as active).
#[test]
fn forged_rst_and_syn_cannot_move_or_close_a_connection() {
    let Some(lab) = lab("fxforge") else { return };
    lab.ns.enter(|| {
        for (n, scheduler) in ["wrr", "rr", "wlc"].into_iter().enumerate() {
            let mut dp = load(&lab);
            let fx = provision(&mut dp, &three_backends(scheduler, ""));
            let sport = 43_000 + n as u16;
            let client = |flags: u8, seq: u32, ack: u32| {
                from_client(Frame::tcp((CLIENT, sport), (VIP, 80), flags).seq_ack(seq, ack))
            };
            let syn = client(SYN, 1000, 0);
            let (_, out) = run(&mut dp, lab.client_if, &syn.build());
            let first = index_of(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
            let (syn_ack, syn_ack_out) = backend_segment(first, sport, SYN | ACK, 5000, 1001);
            let ack = client(ACK, 1001, 5001);
            let forged_rst = client(RST | ACK, 0x5eed_1234, 0);
            let forged_fin = client(FIN | ACK, 0x0bad_cafe, 5001);
            let (forged_backend_rst, forged_backend_rst_out) =
                backend_segment(first, sport, RST | ACK, 0x7777_0000, 1001);
            let to_first = |name, frame: &Frame| lab.forwarded(name, frame, first, 8080);
            check(
                &mut dp,
                &[
                    lab.replied("the backend's SYN-ACK", &syn_ack, syn_ack_out),
                    to_first("the client's ACK", &ack),
                    to_first("a RST with a random sequence number", &forged_rst),
                    to_first("a SYN after it stays with the connection's backend", &syn),
                    to_first("a FIN with a random sequence number", &forged_fin),
                    to_first("a SYN after it", &syn),
                    lab.replied(
                        "a RST from the backend's address with a random sequence number",
                        &forged_backend_rst,
                        forged_backend_rst_out,
                    ),
                    to_first("a SYN after that", &syn),
                    to_first("the client's next ACK", &ack),
                ],
            );
            let first_id = fx.backend_id("web", B[first], 8080);
            let flow = dp.flow(&flow_of(&syn)).unwrap().expect("flow recorded");
            assert_eq!(
                (
                    flow.backend,
                    flow.flags & (lb_common::FLOW_F_FIN | lb_common::FLOW_F_RST)
                ),
                (first_id, 0),
                "{scheduler}: the connection keeps its backend and stays active"
            );
            let web = fx.listener_id("web");
            assert_eq!(dp.listener_stats(web).unwrap().new_flows, 1, "{scheduler}");
            if scheduler == "wlc" {
                assert_eq!(dp.active_flows(first_id).unwrap(), 1, "still counted");
            }
        }
    });
}

/// The filter of established keys (`lb_common::flow_filter`) lets a SYN whose key's bit
/// is clear skip the flow-table lookup. So the handshake's promotion must set the bit, and
/// a sweep's rebuilds (two: both bitmaps rebuilt) must keep it while the flow is in the
/// table: a forged RST and SYN after them still find the connection. Under `wrr` a SYN that
/// missed the entry would be scheduled to the sequence's next backend, another one.
#[test]
fn the_flow_filter_keeps_every_established_key_across_sweeps() {
    let Some(lab) = lab("fxfilter") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let _fx = provision(&mut dp, &three_backends("wrr", ""));
        let sport = 44_500;
        let client = |flags: u8, seq: u32, ack: u32| {
            from_client(Frame::tcp((CLIENT, sport), (VIP, 80), flags).seq_ack(seq, ack))
        };
        let syn = client(SYN, 1000, 0);
        let key = flow_of(&syn);
        let held = |dp: &DataPlane| lb_ctl::flow_filter::may_hold(dp.flow_filter(), &key);
        assert!(!held(&dp), "a fresh filter holds no key");
        let (_, out) = run(&mut dp, lab.client_if, &syn.build());
        let first = index_of(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
        assert!(
            !held(&dp),
            "a half-open flow is not in the table of established ones"
        );
        let ack = client(ACK, 1001, 5001);
        check(
            &mut dp,
            &[lab.forwarded("the client's ACK", &ack, first, 8080)],
        );
        assert!(held(&dp), "the promotion set the key's bit");
        for sweep in 0..2 {
            let flows = dp.sweep_flows().unwrap();
            assert_eq!(flows.len(), 1, "sweep {sweep}");
            assert!(held(&dp), "sweep {sweep} kept the key");
        }
        let forged_rst = client(RST | ACK, 0x5eed_1234, 0);
        let to_first = |name, frame: &Frame| lab.forwarded(name, frame, first, 8080);
        check(
            &mut dp,
            &[
                to_first("a forged RST after the sweeps", &forged_rst),
                to_first("a SYN after it stays with the connection's backend", &syn),
                to_first("the client's next ACK", &ack),
            ],
        );
        assert!(held(&dp));
    });
}

/// Nothing addressed to a VIP goes to the kernel, which would route it back toward the
/// router when the VIP is not one of its addresses (a loop until the TTL runs out): ports
/// and protocols without a listener are dropped and counted; a ping is answered from XDP
/// (`vip_ping: answer`, the default) or dropped (`vip_ping: drop`).
#[test]
fn nothing_for_a_vip_reaches_the_kernel_and_pings_are_answered_as_configured() {
    let Some(lab) = lab("fxvip") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let mut fx = provision(&mut dp, ONE_BACKEND);
        let icmp = |kind: u8, to: Ipv4Addr, fragment: bool| {
            let mut message = vec![kind, 0, 0, 0, 0x12, 0x34, 0x00, 0x07];
            message.extend_from_slice(b"ping data");
            let check = lb_common::csum::checksum(&message);
            message[2..4].copy_from_slice(&check.to_ne_bytes());
            let mut f = from_client(Frame::udp((CLIENT, 0), (to, 0)))
                .fragment(fragment, 0)
                .ttl(57);
            f.transport = packet::Transport::Other(1);
            f.payload = message;
            f
        };
        // The reply, built from scratch: addresses and MACs swapped, TTL 64, type 0, the
        // rest of the message as it was.
        let echo = icmp(8, VIP, false);
        let mut reply = icmp(0, VIP, false).macs(LB_CLIENT_MAC, CLIENT_MAC).ttl(64);
        (reply.src, reply.dst) = (VIP, CLIENT);
        let mut gre = from_client(Frame::udp((CLIENT, 0), (VIP, 0)));
        gre.transport = packet::Transport::Other(47);
        gre.payload = vec![0; 24];
        let timestamp = icmp(13, VIP, false);
        let unreachable_about_nothing = icmp(3, VIP, false);
        let fragmented_echo = icmp(8, VIP, true);
        let udp_no_listener = from_client(Frame::udp((CLIENT, 40300), (VIP, 5060)));
        let drop = |name, input: &Frame, reason| lab.dropped(name, input.build(), reason);
        check(
            &mut dp,
            &[
                Case {
                    name: "echo request to the VIP: answered from XDP",
                    ingress: lab.client_if,
                    input: echo.build(),
                    verdict: XDP_TX,
                    reason: Reason::IcmpEchoReply,
                    output: Output::Exactly(reply.build()),
                },
                drop("GRE to the VIP", &gre, Reason::DropVipOtherProtocol),
                drop(
                    "ICMP timestamp to the VIP",
                    &timestamp,
                    Reason::DropVipOtherProtocol,
                ),
                drop(
                    "ICMP unreachable about no flow, to the VIP",
                    &unreachable_about_nothing,
                    Reason::DropVipOtherProtocol,
                ),
                drop(
                    "fragmented echo request",
                    &fragmented_echo,
                    Reason::DropVipOtherProtocol,
                ),
                drop(
                    "UDP to a port without a listener",
                    &udp_no_listener,
                    Reason::DropVipNoListener,
                ),
            ],
        );
        fx.config.vip_ping = VipPing::Drop;
        let ops = fx.apply(&mut dp).unwrap();
        assert_eq!(ops.len(), 1, "only the VIP's marker changes: {ops:?}");
        check(
            &mut dp,
            &[drop(
                "echo request, vip_ping: drop",
                &echo,
                Reason::DropVipOtherProtocol,
            )],
        );
    });
}

/// A SYN forged with the LB's own backend-side address as source, from the port a health
/// probe uses: accepted, its reverse entry captures the backend's answer to the probe
/// (rewritten to come from the VIP), so the probe fails. The controller lists the host's
/// addresses in `REFUSED_SOURCES_ACL`; then the SYN is dropped and creates nothing, and
/// the probe's answer goes to the kernel. A VIP as source is refused the same way.
#[test]
fn forged_sources_plant_no_state_and_cannot_capture_health_probes() {
    let Some(lab) = lab("fxspoof") else { return };
    lab.ns.enter(|| {
        let lb_backend_addr = Ipv4Addr::new(198, 18, 1, 1);
        let probe_port = 40_500;
        let forged = from_client(Frame::tcp((lb_backend_addr, probe_port), (VIP, 80), SYN));
        let forged_ack = from_client(Frame::tcp(
            (lb_backend_addr, probe_port + 1),
            (VIP, 80),
            ACK,
        ));
        let from_vip = from_client(Frame::tcp((VIP2, 40_502), (VIP, 80), SYN));
        // The backend's SYN-ACK to the LB's probe (LB:40500 → B0:8080).
        let probe_answer = Frame::tcp((B[0], 8080), (lb_backend_addr, probe_port), SYN | ACK)
            .macs(B_MAC[0], LB_BACKEND_MAC);

        // Without the host's addresses refused (as before): the probe is captured.
        let mut dp = load(&lab);
        provision(&mut dp, ONE_BACKEND);
        let (verdict, _) = run(&mut dp, lab.client_if, &forged.build());
        assert_eq!(verdict, XDP_REDIRECT, "accepted as a new flow");
        let (_, out) = run(&mut dp, lab.backend_if, &probe_answer.build());
        assert_eq!(
            &out[26..30],
            &VIP.octets(),
            "the probe's answer is taken for the forged flow's reply: rewritten to come \
             from the VIP, the prober never matches it"
        );

        // As the controller provisions it, with the lab's addresses (198.18.0.1 and
        // 198.18.1.1) as the host's and a second VIP.
        let mut dp = load(&lab);
        let runtime = Runtime {
            local_addresses: provision::host_addresses().unwrap(),
            ..Runtime::default()
        };
        assert!(runtime.local_addresses.contains(&lb_backend_addr.into()));
        let fx = provision_with(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
  - { name: web2, protocol: tcp, address: 198.19.0.101, port: 80, backend_port: 8080 }
",
            runtime,
        );
        let refused =
            |name, frame: &Frame| lab.dropped(name, frame.build(), Reason::DropSpoofedSource);
        check(
            &mut dp,
            &[
                refused("a SYN from the LB's own address", &forged),
                refused("an ACK (pickup) from the LB's own address", &forged_ack),
                refused("a SYN from a VIP", &from_vip),
                Case {
                    name: "the probe's answer goes to the kernel, untouched",
                    ingress: lab.backend_if,
                    input: probe_answer.build(),
                    verdict: XDP_PASS,
                    reason: Reason::PassNotForUs,
                    output: Output::Unchanged,
                },
            ],
        );
        for frame in [&forged, &forged_ack, &from_vip] {
            assert!(dp.flow(&flow_of(frame)).unwrap().is_none(), "no flow entry");
        }
        assert!(dp.flows().unwrap().is_empty(), "no state at all");
        assert_eq!(dp.listener_stats(fx.listener_id("web")).unwrap().dropped, 3);
    });
}

/// SYNs without an ACK live in a half-open table of their own: a flood of them, larger
/// than the flow table, evicts only half-open entries. An established flow keeps its entry
/// (no pickup, same backend), and a handshake completed before the flood is unaffected.
#[test]
fn a_syn_flood_cannot_evict_established_flows() {
    let Some(lab) = lab("fxflood") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, &three_backends("wrr", ""));
        let syn = from_client(Frame::tcp((CLIENT, 44000), (VIP, 80), SYN));
        let ack = from_client(Frame::tcp((CLIENT, 44000), (VIP, 80), ACK).seq_ack(1001, 5001));
        let (_, out) = run(&mut dp, lab.client_if, &syn.build());
        let backend = index_of(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
        let half_open = dp.flow(&flow_of(&syn)).unwrap().expect("half-open entry");
        assert_ne!(half_open.flags & lb_common::FLOW_F_OPENING, 0);
        let (verdict, _) = run(&mut dp, lab.client_if, &ack.build());
        assert_eq!(verdict, XDP_REDIRECT);
        let established = dp.flow(&flow_of(&syn)).unwrap().expect("established entry");
        assert_eq!(
            established.flags & lb_common::FLOW_F_OPENING,
            0,
            "promoted by the ACK"
        );
        assert_eq!(
            dp.established_flows().unwrap().len(),
            1,
            "in the table of established flows"
        );

        // 5,000 SYNs from other clients (the flow table has 4,096 entries, the half-open
        // table 1,024), none ever acknowledged.
        let flood_client = Ipv4Addr::new(198, 18, 0, 66);
        for i in 0..5_000u16 {
            let frame = from_client(Frame::tcp((flood_client, 10_000 + i), (VIP, 80), SYN));
            let (verdict, _) = run(&mut dp, lab.client_if, &frame.build());
            assert_eq!(verdict, XDP_REDIRECT, "flood SYN {i}");
        }
        let pickups = dp.counter(Reason::EventPickup).unwrap();
        check(
            &mut dp,
            &[lab.forwarded(
                "the established flow's next packet after the flood",
                &ack,
                backend,
                8080,
            )],
        );
        assert_eq!(
            dp.counter(Reason::EventPickup).unwrap(),
            pickups,
            "not a pickup"
        );
        assert_eq!(
            dp.established_flows().unwrap().len(),
            1,
            "the flood is not in the table of established flows"
        );
        assert!(dp.flow(&flow_of(&syn)).unwrap().is_some());
    });
}

#[test]
fn mid_flow_pickup_uses_the_maglev_table_on_the_4_tuple() {
    let Some(lab) = lab("fxpick") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, &three_backends("wrr", ""));
        let mut picked = Vec::new();
        for sport in [41000u16, 41001, 41002, 41003] {
            let ack = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), ACK));
            let id = maglev_pick(&dp, &fx, "web", (CLIENT, sport));
            picked.push(id);
            let expected = index_of_id(&fx, id);
            let before = dp.counter(Reason::EventPickup).unwrap();
            check(
                &mut dp,
                &[lab.forwarded("ACK without an entry", &ack, expected, 8080)],
            );
            assert_eq!(dp.counter(Reason::EventPickup).unwrap(), before + 1);
            let flow = dp.flow(&flow_of(&ack)).unwrap().expect("pickup recorded");
            assert_ne!(flow.flags & FLOW_F_PICKUP, 0);
        }
        let stats = dp.listener_stats(fx.listener_id("web")).unwrap();
        assert_eq!((stats.pickups, stats.new_flows), (4, 0));
        // Each backend counts the pickups it took (BACKEND_CPU_REPLY), and no new flow.
        picked.sort_unstable();
        picked.dedup();
        let (mut pickups, mut new_flows) = (0, 0);
        for id in picked {
            let b = dp.backend_stats(id).unwrap();
            pickups += b.pickups;
            new_flows += b.new_flows;
        }
        assert_eq!((pickups, new_flows), (4, 0), "the backends' pickups");
    });
}

/// A listener's own table size: its table lies where the controller placed it, and the
/// data plane hashes into all of it (not into the default size's first slots).
#[test]
fn a_listener_with_a_larger_maglev_table_schedules_from_all_of_it() {
    let Some(lab) = lab("fxmagsz") else { return };
    lab.ns.enter(|| {
        let sizes = MapSizes {
            maglev_slots: 2 * 655_373 + 2 * MAGLEV_TABLE_SIZE,
            ..MapSizes::new(4096, 4, 64)
        };
        let mut dp = load_sized(&lab, EBPF_OBJECT, sizes);
        let fx = provision(&mut dp, &three_backends("tch", "maglev_table_size: 655373"));
        let meta = dp.table_meta(live_slot(&dp, &fx, "web")).unwrap();
        assert_eq!(meta.maglev_size, 655_373);
        let frontend = fx.listener("web").frontend;
        let mut differs = 0;
        for sport in 42_000u16..42_012 {
            let syn = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), SYN));
            let expected = index_of_id(&fx, maglev_pick(&dp, &fx, "web", (CLIENT, sport)));
            // What a data plane hashing into the default size would pick instead.
            let hash = lb_common::hash::hash_tuple(
                be(CLIENT),
                be(frontend.address),
                port(sport),
                port(frontend.port),
            );
            let short = dp.maglev_entry(meta.maglev_base + hash % MAGLEV_TABLE_SIZE);
            if index_of_id(&fx, short) != expected {
                differs += 1;
            }
            check(
                &mut dp,
                &[lab.forwarded("a SYN to the 655373-slot listener", &syn, expected, 8080)],
            );
        }
        assert!(differs > 0, "the ports chosen tell the two sizes apart");
    });
}

#[test]
fn udp_with_and_without_checksum() {
    let Some(lab) = lab("fxudp") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - { name: dns, protocol: udp, address: 198.19.0.100, port: 53, backend_port: 5353, scheduler: rr }
",
        );
        let with = from_client(Frame::udp((CLIENT, 33000), (VIP, 53)).payload(b"query"));
        let without = from_client(
            Frame::udp((CLIENT, 33001), (VIP, 53))
                .payload(b"query")
                .no_udp_checksum(),
        );
        let reply = Frame::udp((B[0], 5353), (CLIENT, 33000))
            .payload(b"answer")
            .macs(B_MAC[0], LB_BACKEND_MAC);
        let reply_out = Frame::udp((VIP, 53), (CLIENT, 33000))
            .payload(b"answer")
            .ttl(63)
            .macs(LB_CLIENT_MAC, CLIENT_MAC)
            .build();
        let without_out = to_backend(&without, 0, 5353);
        assert_eq!(
            &without_out[40..42],
            &[0, 0],
            "expected frame keeps checksum 0"
        );
        check(
            &mut dp,
            &[
                lab.forwarded("UDP with a checksum", &with, 0, 5353),
                Case {
                    name: "UDP without a checksum keeps 0",
                    ingress: lab.client_if,
                    input: without.build(),
                    verdict: XDP_REDIRECT,
                    reason: Reason::Forwarded,
                    output: Output::Exactly(without_out),
                },
                lab.replied("UDP reply", &reply, reply_out),
            ],
        );
        assert_eq!(
            dp.listener_stats(fx.listener_id("dns")).unwrap().new_flows,
            2
        );
    });
}

#[test]
fn ip_options_are_kept_and_honoured() {
    let Some(lab) = lab("fxopt") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, ONE_BACKEND);
        // Router alert (4 bytes) and a timestamp-sized run of NOPs: IHL 5 + 3.
        let options = [0x94, 0x04, 0x00, 0x00, 1, 1, 1, 1, 1, 1, 1, 0];
        let syn = from_client(Frame::tcp((CLIENT, 40100), (VIP, 80), SYN).options(&options));
        assert_eq!(syn.build()[14], 0x48, "IHL 8");
        check(
            &mut dp,
            &[lab.forwarded("SYN with IP options", &syn, 0, 8080)],
        );
    });
}

#[test]
fn malformed_fragmented_and_foreign_packets() {
    let Some(lab) = lab("fxbad") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, ONE_BACKEND);
        let syn = from_client(Frame::tcp((CLIENT, 40200), (VIP, 80), SYN)).build();
        let udp = from_client(Frame::udp((CLIENT, 40200), (VIP, 80))).build();

        let mut ihl4 = syn.clone();
        ihl4[14] = 0x44;
        packet::fix_ip_checksum(&mut ihl4);
        let mut version6 = syn.clone();
        version6[14] = 0x65;
        let mut too_long = syn.clone();
        packet::set_total_length(&mut too_long, 1400);
        let mut shorter_than_header = syn.clone();
        packet::set_total_length(&mut shorter_than_header, 19);
        // TCP data offset 4 (< 5) and 15 (past the end of a 20-byte header + 7 bytes).
        let mut doff4 = syn.clone();
        doff4[46] = 4 << 4;
        let mut doff15 = syn.clone();
        doff15[46] = 15 << 4;
        let mut arp = syn.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut ipv6 = syn.clone();
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let mut vlan = syn.clone();
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());

        let frag_first = from_client(Frame::tcp((CLIENT, 40201), (VIP, 80), SYN).fragment(true, 0));
        let frag_later = from_client(Frame::udp((CLIENT, 40202), (VIP, 80)).fragment(false, 185));
        let frag_other = from_client(Frame::udp((CLIENT, 40203), (OTHER, 80)).fragment(true, 0));
        let ttl1 = from_client(Frame::tcp((CLIENT, 40204), (VIP, 80), SYN).ttl(1));
        let ttl0 = from_client(Frame::tcp((CLIENT, 40205), (VIP, 80), SYN).ttl(0));
        let not_vip = from_client(Frame::tcp((CLIENT, 40206), (OTHER, 80), SYN));
        let unknown_port = from_client(Frame::tcp((CLIENT, 40207), (VIP, 8443), SYN));
        let wrong_proto = from_client(Frame::udp((CLIENT, 40208), (VIP, 80)));
        let mut icmp = from_client(Frame::udp((CLIENT, 0), (OTHER, 0)));
        icmp.transport = packet::Transport::Other(1);
        icmp.payload = vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0];

        let mut cases = vec![
            lab.dropped("IHL 4", ihl4, Reason::DropMalformedIpv4),
            lab.dropped(
                "IP version 6 in an IPv4 ethertype",
                version6,
                Reason::DropMalformedIpv4,
            ),
            lab.dropped(
                "total length beyond the frame",
                too_long,
                Reason::DropMalformedIpv4,
            ),
            lab.dropped(
                "total length shorter than the header",
                shorter_than_header,
                Reason::DropMalformedIpv4,
            ),
            lab.dropped("TCP data offset 4", doff4, Reason::DropMalformedL4),
            lab.dropped(
                "TCP data offset past the segment",
                doff15,
                Reason::DropMalformedL4,
            ),
            lab.passed("ARP", arp, Reason::PassNotIp),
            lab.dropped(
                "an IPv4 packet under the IPv6 ethertype",
                ipv6,
                Reason::DropMalformedIpv6,
            ),
            lab.passed("VLAN tag", vlan, Reason::PassNotIp),
            lab.dropped(
                "first fragment to a VIP",
                frag_first.build(),
                Reason::DropFragment,
            ),
            lab.dropped(
                "later fragment to a VIP",
                frag_later.build(),
                Reason::DropFragment,
            ),
            lab.passed(
                "fragment to another host",
                frag_other.build(),
                Reason::PassNotForUs,
            ),
            lab.passed("TTL 1", ttl1.build(), Reason::PassTtlExpired),
            lab.passed("TTL 0", ttl0.build(), Reason::PassTtlExpired),
            lab.passed("not a VIP", not_vip.build(), Reason::PassNotForUs),
            lab.dropped(
                "VIP, port without a listener",
                unknown_port.build(),
                Reason::DropVipNoListener,
            ),
            lab.dropped(
                "VIP, listener port, other protocol",
                wrong_proto.build(),
                Reason::DropVipNoListener,
            ),
            lab.passed(
                "ICMP echo to another address",
                icmp.build(),
                Reason::PassOtherProtocol,
            ),
        ];

        // Truncated at every layer: every length from the Ethernet header to the end of the
        // TCP header. (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header with
        // EINVAL, and no driver delivers one; the program still drops them, counted as
        // drop_malformed_ethernet.)
        for len in 14..syn.len() - 7 {
            let mut frame = syn[..len].to_vec();
            let (verdict, reason) = match len {
                14..34 => (XDP_DROP, Reason::DropMalformedIpv4),
                _ => {
                    // A consistent IP header whose payload stops inside the TCP header.
                    packet::set_total_length(&mut frame, (len - 14) as u16);
                    (XDP_DROP, Reason::DropMalformedL4)
                }
            };
            cases.push(Case {
                name: "truncated TCP frame",
                ingress: lab.client_if,
                input: frame,
                verdict,
                reason,
                output: Output::Unchanged,
            });
        }
        for len in 34..42 {
            let mut frame = udp[..len].to_vec();
            packet::set_total_length(&mut frame, (len - 14) as u16);
            cases.push(lab.dropped("truncated UDP header", frame, Reason::DropMalformedL4));
        }
        check(&mut dp, &cases);
        assert!(
            dp.flows().expect("reading the flow table").is_empty(),
            "no flow created by any of these"
        );
    });
}

#[test]
fn unknown_neighbour_goes_to_the_kernel_translated() {
    let Some(lab) = lab("fxneigh") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.13 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
",
        );
        let syn = from_client(Frame::tcp((CLIENT, 40300), (VIP, 80), SYN));
        // Translated, but TTL and MACs untouched: the kernel forwards it (and decrements).
        let mut expected = syn.clone();
        expected.dst = NO_NEIGH;
        expected.dst_port = 8080;
        check(
            &mut dp,
            &[Case {
                name: "backend without a neighbour entry",
                ingress: lab.client_if,
                input: syn.build(),
                verdict: XDP_PASS,
                reason: Reason::PassNeighUnknown,
                output: Output::Exactly(expected.build()),
            }],
        );
    });
}

/// Generations count per backend id: after reloads that release and reuse ids, the two
/// listeners' entries for one backend endpoint may have different generations. A live flow
/// of the other listener is still seen, and the newcomer refused.
#[test]
fn collision_is_seen_whatever_the_generations_of_the_endpoints_entries() {
    let Some(lab) = lab("fxcgen") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let web = "
vserver_groups:
  - { name: web, servers: [{ address: 198.18.1.10, port: 8080 }] }
  - { name: other, servers: [{ address: 198.18.1.11, port: 9000 }] }
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, server_group: web }
";
        let mut fx = provision(
            &mut dp,
            &format!(
                "{web}  - {{ name: x, protocol: tcp, address: 198.19.0.100, port: 81, \
                 server_group: other }}\n"
            ),
        );
        // x leaves: its backend id is released, and its generation stays counted.
        fx.config = provision::config(&format!("{HEAD}{web}"));
        fx.apply(&mut dp).unwrap();
        fx.config = provision::config(&format!(
            "{HEAD}{web}  - {{ name: web2, protocol: tcp, address: 198.19.0.101, port: 80, \
             server_group: web }}\n"
        ));
        fx.apply(&mut dp).unwrap();
        let (a, b) = (
            fx.backend("web", B[0], 8080),
            fx.backend("web2", B[0], 8080),
        );
        assert_ne!(
            a.generation, b.generation,
            "the case needs entries of different generations: {a:?} {b:?}"
        );
        let first = from_client(Frame::tcp((CLIENT, 40402), (VIP, 80), SYN));
        let second = from_client(Frame::tcp((CLIENT, 40402), (VIP2, 80), SYN));
        check(
            &mut dp,
            &[
                lab.forwarded("first flow to B0:8080 from client:40402", &first, 0, 8080),
                lab.dropped(
                    "same client port to the other VIP, whose entry has another generation",
                    second.build(),
                    Reason::DropReverseCollision,
                ),
            ],
        );
    });
}

#[test]
fn reverse_entry_collision_is_refused_and_counted() {
    let Some(lab) = lab("fxcoll") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        // Two listeners whose groups share backend B0:8080.
        let fx = provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
  - { name: web2, protocol: tcp, address: 198.19.0.101, port: 80, backend_port: 8080 }
",
        );
        let first = from_client(Frame::tcp((CLIENT, 40400), (VIP, 80), SYN));
        let second = from_client(Frame::tcp((CLIENT, 40400), (VIP2, 80), SYN));
        let other_port = from_client(Frame::tcp((CLIENT, 40401), (VIP2, 80), SYN));
        check(
            &mut dp,
            &[
                lab.forwarded("first flow claims B0:8080 ↔ client:40400", &first, 0, 8080),
                lab.dropped(
                    "same client port to the other VIP would share the reply tuple",
                    second.build(),
                    Reason::DropReverseCollision,
                ),
                lab.forwarded("another client port is fine", &other_port, 0, 8080),
            ],
        );
        assert_eq!(
            dp.listener_stats(fx.listener_id("web2")).unwrap().dropped,
            1
        );
        assert!(
            dp.flow(&flow_of(&second)).unwrap().is_none(),
            "refused flow not recorded"
        );

        // A RST whose sequence number does not fit the connection (a blind attacker's)
        // closes nothing: the reply tuple stays the first flow's.
        let (syn_ack, syn_ack_out) = backend_segment(0, 40400, SYN | ACK, 5000, 1001);
        let forged =
            from_client(Frame::tcp((CLIENT, 40400), (VIP, 80), RST | ACK).seq_ack(0x8bad_f00d, 0));
        check(
            &mut dp,
            &[
                lab.replied("B0 answers the first flow", &syn_ack, syn_ack_out),
                lab.forwarded(
                    "a forged RST goes to the backend, whose TCP ignores it",
                    &forged,
                    0,
                    8080,
                ),
                lab.dropped(
                    "after a forged RST the reply tuple is still taken",
                    second.build(),
                    Reason::DropReverseCollision,
                ),
            ],
        );

        // Once the first flow is closed by its own RST, its reply tuple may be taken over.
        let rst =
            from_client(Frame::tcp((CLIENT, 40400), (VIP, 80), RST | ACK).seq_ack(1001, 5001));
        check(
            &mut dp,
            &[
                lab.forwarded("RST closes the first flow", &rst, 0, 8080),
                lab.forwarded(
                    "the reply tuple of a closed flow is taken over",
                    &second,
                    0,
                    8080,
                ),
            ],
        );
    });
}

#[test]
fn weight_zero_takes_no_new_flow_but_keeps_its_own() {
    let Some(lab) = lab("fxw0") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let mut fx = provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.10 }, { address: 198.18.1.11 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
",
        );
        // Find a client port whose SYN lands on B1, then quiesce B1 (weight 0).
        let mut on_b1 = None;
        for sport in 42000u16..42010 {
            let syn = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), SYN));
            let (_, out) = run(&mut dp, lab.client_if, &syn.build());
            if out[30..34] == B[1].octets() {
                on_b1 = Some(sport);
                break;
            }
        }
        let sport = on_b1.expect("wrr alternates, so one of ten SYNs goes to B1");
        fx.config.default_server_group.servers[1].weight = 0;
        fx.apply(&mut dp).unwrap();

        let ack = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), ACK).payload(b"more"));
        let mut cases = vec![lab.forwarded(
            "the established flow on the weight-0 backend continues",
            &ack,
            1,
            8080,
        )];
        for sport in 43000u16..43020 {
            let syn = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), SYN));
            cases.push(lab.forwarded("new flows avoid the weight-0 backend", &syn, 0, 8080));
        }
        check(&mut dp, &cases);
    });
}

#[test]
fn unhealthy_backend_gets_no_new_flows_and_its_flows_move() {
    let Some(lab) = lab("fxdown") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let mut fx = provision(&mut dp, &three_backends("sch", ""));
        // sch: the client address decides; find where CLIENT lands.
        let syn = from_client(Frame::tcp((CLIENT, 44000), (VIP, 80), SYN));
        let (verdict, out) = run(&mut dp, lab.client_if, &syn.build());
        assert_eq!(verdict, XDP_REDIRECT);
        let down = index_of(Ipv4Addr::new(out[30], out[31], out[32], out[33]));

        // Health check failed: the controller marks it unusable and rebuilds the tables.
        let down_id = fx.backend_id("web", B[down], 8080);
        let key = fx.backend_key("web", B[down], 8080);
        fx.runtime.unhealthy.insert(key);
        fx.apply(&mut dp).unwrap();
        let live = live_slot(&dp, &fx, "web");
        let table = dp.maglev_table(live).unwrap();
        assert!(table.iter().all(|&id| id != down_id));

        let ack = from_client(Frame::tcp((CLIENT, 44000), (VIP, 80), ACK));
        let moved_to = index_of_id(&fx, maglev_pick(&dp, &fx, "web", (CLIENT, 44000)));
        assert_ne!(moved_to, down);
        let before = dp.counter(Reason::EventReselected).unwrap();
        let syn2 = from_client(Frame::tcp((CLIENT, 44001), (VIP, 80), SYN));
        let src_slot = select::maglev_index_source(&dp.table_meta(live).unwrap(), be(CLIENT));
        let sch_pick = index_of_id(&fx, dp.maglev_entry(src_slot));
        check(
            &mut dp,
            &[
                lab.forwarded(
                    "the flow of the failed backend is picked up elsewhere",
                    &ack,
                    moved_to,
                    8080,
                ),
                lab.forwarded(
                    "a new flow from the same client avoids the failed backend",
                    &syn2,
                    sch_pick,
                    8080,
                ),
            ],
        );
        assert_ne!(sch_pick, down);
        assert_eq!(dp.counter(Reason::EventReselected).unwrap(), before + 1);
        let flow: Flow = dp.flow(&flow_of(&ack)).unwrap().unwrap();
        assert_eq!(index_of_id(&fx, flow.backend), moved_to);
    });
}

#[test]
fn same_interface_replies_use_xdp_tx() {
    let Some(lab) = lab("fxtx") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        // A backend on the client-side segment: in and out through cl0.
        let local = Ipv4Addr::new(198, 18, 0, 50);
        let local_mac: Mac = [0x02, 0, 0, 0, 0, 0x50];
        lab.ns.neigh_permanent("cl0", local, &mac_string(local_mac));
        provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.0.50 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080 }
",
        );
        let syn = from_client(Frame::tcp((CLIENT, 40500), (VIP, 80), SYN));
        let mut out = syn.clone();
        out.dst = local;
        out.dst_port = 8080;
        out.ttl -= 1;
        check(
            &mut dp,
            &[Case {
                name: "backend reached through the ingress interface",
                ingress: lab.client_if,
                input: syn.build(),
                verdict: XDP_TX,
                reason: Reason::Forwarded,
                output: Output::Exactly(out.macs(LB_CLIENT_MAC, local_mac).build()),
            }],
        );
    });
}

#[test]
fn no_usable_backend_drops_new_flows() {
    let Some(lab) = lab("fxnone") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        // Its only backend's health check failed before anything was written.
        let config = provision::config(&format!("{HEAD}{ONE_BACKEND}"));
        let mut fx = Provisioned::plan(config, Runtime::default(), dp.sizes()).unwrap();
        let key = fx.backend_key("web", B[0], 8080);
        fx.runtime.unhealthy.insert(key);
        fx.apply(&mut dp).unwrap();
        let syn = from_client(Frame::tcp((CLIENT, 40600), (VIP, 80), SYN));
        check(
            &mut dp,
            &[lab.dropped(
                "SYN with every backend down",
                syn.build(),
                Reason::DropNoBackend,
            )],
        );
        assert_eq!(dp.listener_stats(fx.listener_id("web")).unwrap().dropped, 1);
    });
}

#[test]
fn a_stage_without_its_hand_off_drops_and_changes_nothing() {
    let Some(lab) = lab("fxstage") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, &three_backends("wrr", ""));
        // The entry program hands this SYN's flow to the new-flow stage, which opens it.
        let first = from_client(Frame::tcp((CLIENT, 40700), (VIP, 80), SYN));
        let (verdict, _) = run(&mut dp, lab.client_if, &first.build());
        assert!(
            matches!(verdict, XDP_TX | XDP_REDIRECT),
            "the first SYN is forwarded, got verdict {verdict}"
        );
        // The stage run on its own with another packet finds a hand-off that is not its
        // packet's: it must not schedule, record or send anything.
        let other = from_client(Frame::tcp((CLIENT, 40701), (VIP, 80), SYN));
        let before = dp.counters().unwrap();
        let (verdict, out) = run_program(
            &mut dp,
            lb_common::names::PROGRAM_NEW_FLOW,
            lab.client_if,
            &other.build(),
        );
        let after = dp.counters().unwrap();
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(out, other.build(), "the packet is left as it was");
        let moved: Vec<&str> = after
            .iter()
            .filter(|(name, v)| **v != before[*name])
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(moved, vec![Reason::DropStageFailed.name()]);
        assert!(
            dp.flow(&flow_of(&other)).unwrap().is_none(),
            "no flow recorded"
        );
        assert!(dp.flow(&flow_of(&first)).unwrap().is_some());
    });
}

/// An ICMP error frame from `from` to `to` quoting `quoted` (a built frame; its IP header
/// and the first `quote_len` bytes after it are quoted), checksum computed from scratch.
fn icmp_error(
    from: Ipv4Addr,
    to: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
    quote_len: usize,
) -> Frame {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&quoted[14..14 + 20 + quote_len]);
    let c = lb_common::csum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    let mut f = Frame::udp((from, 0), (to, 0));
    f.transport = packet::Transport::Other(1);
    f.payload = icmp;
    f
}

#[test]
fn icmp_errors_about_a_flow_are_translated_both_ways() {
    let Some(lab) = lab("fxicmp") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, WEB_AND_DNS);
        let router = Ipv4Addr::new(198, 18, 0, 254);
        let syn = from_client(Frame::tcp((CLIENT, 40700), (VIP, 80), SYN));
        let query = from_client(Frame::udp((CLIENT, 33100), (VIP, 53)).payload(b"query"));

        // What the LB sent the client (VIP:80 → client), and the same packet as the
        // backend sent it (backend:8080 → client): the ICMP quotes one, the backend must
        // get the other.
        let reply = Frame::tcp((VIP, 80), (CLIENT, 40700), SYN | ACK).payload(&[0u8; 1400]);
        let reply_as_backend_sent =
            Frame::tcp((B[0], 8080), (CLIENT, 40700), SYN | ACK).payload(&[0u8; 1400]);
        let mtu = [0, 0, 0x05, 0x00];
        let frag_needed = from_client(icmp_error(router, VIP, 3, 4, mtu, &reply.build(), 20));
        let mut frag_needed_out =
            icmp_error(router, B[0], 3, 4, mtu, &reply_as_backend_sent.build(), 20);
        frag_needed_out.ttl -= 1;
        let frag_needed_out = frag_needed_out.macs(LB_BACKEND_MAC, B_MAC[0]).build();

        // What the LB sent the backend (client → backend:5353), and as the client sent it.
        let sent = Frame::udp((CLIENT, 33100), (B[0], 5353)).payload(b"query");
        let as_client_sent = Frame::udp((CLIENT, 33100), (VIP, 53)).payload(b"query");
        let port_unreachable =
            icmp_error(B[0], CLIENT, 3, 3, [0; 4], &sent.build(), 8).macs(B_MAC[0], LB_BACKEND_MAC);
        let mut port_unreachable_out =
            icmp_error(VIP, CLIENT, 3, 3, [0; 4], &as_client_sent.build(), 8);
        port_unreachable_out.ttl -= 1;
        let port_unreachable_out = port_unreachable_out.macs(LB_CLIENT_MAC, CLIENT_MAC).build();

        let unknown = from_client(icmp_error(
            router,
            VIP,
            3,
            4,
            mtu,
            &Frame::tcp((VIP, 80), (CLIENT, 49999), ACK).build(),
            8,
        ));
        check(
            &mut dp,
            &[
                lab.forwarded("SYN creates the TCP flow", &syn, 0, 8080),
                lab.forwarded("UDP query creates the UDP flow", &query, 0, 5353),
                Case {
                    name: "fragmentation needed on the client's path goes to the backend",
                    ingress: lab.client_if,
                    input: frag_needed.build(),
                    verdict: XDP_REDIRECT,
                    reason: Reason::IcmpToBackend,
                    output: Output::Exactly(frag_needed_out),
                },
                Case {
                    name: "port unreachable from the backend goes to the client from the VIP",
                    ingress: lab.backend_if,
                    input: port_unreachable.build(),
                    verdict: XDP_REDIRECT,
                    reason: Reason::IcmpToClient,
                    output: Output::Exactly(port_unreachable_out),
                },
                lab.dropped(
                    "an ICMP error to a VIP about no known flow is dropped (the kernel \
                           would route it back when the VIP is not a local address)",
                    unknown.build(),
                    Reason::DropVipOtherProtocol,
                ),
            ],
        );
    });
}

/// The ICMP "fragmentation needed" the LB must send for `quoted` (the frame as its sender
/// sent it), from `from` to `to`: IPv4 header and 8 bytes of TCP/UDP quoted, next-hop MTU
/// `mtu`, TTL 64, DF with id 0, out of the interface it came in on.
fn frag_needed(
    from: Ipv4Addr,
    to: Ipv4Addr,
    mtu: u16,
    quoted: &Frame,
    macs: (Mac, Mac),
) -> Vec<u8> {
    let [hi, lo] = mtu.to_be_bytes();
    let mut f = icmp_error(from, to, 3, 4, [0, 0, hi, lo], &quoted.build(), 8);
    f.ttl = 64;
    f.id = 0;
    f.dont_fragment = true;
    f.macs(macs.0, macs.1).build()
}

/// The packet as the kernel gets it when the LB hands it over translated (TTL and MACs
/// untouched).
fn translated(mut frame: Frame, addr: Ipv4Addr, port: u16, destination: bool) -> Vec<u8> {
    if destination {
        frame.dst = addr;
        frame.dst_port = port;
    } else {
        frame.src = addr;
        frame.src_port = port;
    }
    frame.build()
}

#[test]
fn packets_with_df_too_big_for_the_egress_are_answered_with_fragmentation_needed() {
    let Some(lab) = lab("fxmtu") else { return };
    // Different MTUs on the two sides, so each answer shows which egress it is about.
    lab.ns.ip(["link", "set", "be0", "mtu", "1400"]);
    lab.ns.ip(["link", "set", "cl0", "mtu", "1300"]);
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, WEB_AND_DNS);
        let big = [0x5au8; 1400];
        let df = |mut f: Frame| {
            f.dont_fragment = true;
            f
        };
        let syn = from_client(df(Frame::tcp((CLIENT, 40800), (VIP, 80), SYN)));
        let upload = from_client(df(Frame::tcp((CLIENT, 40800), (VIP, 80), ACK)
            .seq_ack(1001, 5001)
            .payload(&big)));
        let upload_no_df = {
            let mut f = upload.clone();
            f.dont_fragment = false;
            f
        };
        let upload_options = upload.clone().options(&[1, 1, 1, 0]);
        let download = df(Frame::tcp((B[0], 8080), (CLIENT, 40800), ACK)
            .seq_ack(5001, 1001)
            .payload(&big))
        .macs(B_MAC[0], LB_BACKEND_MAC);
        let download_no_df = {
            let mut f = download.clone();
            f.dont_fragment = false;
            f
        };
        let datagram = from_client(df(Frame::udp((CLIENT, 33200), (VIP, 53)).payload(&big)));
        check(
            &mut dp,
            &[
                lab.forwarded("SYN creates the flow", &syn, 0, 8080),
                Case {
                    name: "a client segment with DF too big for the backend side: \
                           fragmentation needed from the VIP, quoting the segment as sent",
                    ingress: lab.client_if,
                    input: upload.build(),
                    verdict: XDP_TX,
                    reason: Reason::IcmpFragNeededToClient,
                    output: Output::Exactly(frag_needed(
                        VIP,
                        CLIENT,
                        1400,
                        &upload,
                        (LB_CLIENT_MAC, CLIENT_MAC),
                    )),
                },
                Case {
                    name: "without DF the kernel gets it translated and fragments it",
                    ingress: lab.client_if,
                    input: upload_no_df.build(),
                    verdict: XDP_PASS,
                    reason: Reason::PassFragNeeded,
                    output: Output::Exactly(translated(upload_no_df.clone(), B[0], 8080, true)),
                },
                Case {
                    name: "with IP options the kernel gets it translated",
                    ingress: lab.client_if,
                    input: upload_options.build(),
                    verdict: XDP_PASS,
                    reason: Reason::PassFragNeeded,
                    output: Output::Exactly(translated(upload_options.clone(), B[0], 8080, true)),
                },
                Case {
                    name: "a backend segment with DF too big for the client side: \
                           fragmentation needed to the backend, quoting the segment as sent",
                    ingress: lab.backend_if,
                    input: download.build(),
                    verdict: XDP_TX,
                    reason: Reason::IcmpFragNeededToBackend,
                    output: Output::Exactly(frag_needed(
                        CLIENT,
                        B[0],
                        1300,
                        &download,
                        (LB_BACKEND_MAC, B_MAC[0]),
                    )),
                },
                Case {
                    name: "a backend segment without DF: the kernel gets it translated",
                    ingress: lab.backend_if,
                    input: download_no_df.build(),
                    verdict: XDP_PASS,
                    reason: Reason::PassFragNeeded,
                    output: Output::Exactly(translated(download_no_df.clone(), VIP, 80, false)),
                },
                Case {
                    name: "a new UDP flow's first datagram with DF too big: answered, its \
                           UDP checksum quoted as sent",
                    ingress: lab.client_if,
                    input: datagram.build(),
                    verdict: XDP_TX,
                    reason: Reason::IcmpFragNeededToClient,
                    output: Output::Exactly(frag_needed(
                        VIP,
                        CLIENT,
                        1400,
                        &datagram,
                        (LB_CLIENT_MAC, CLIENT_MAC),
                    )),
                },
            ],
        );
    });
}

#[test]
fn wlc_sends_new_flows_to_the_backend_with_fewest_active_flows_per_weight() {
    let Some(lab) = lab("fxwlc") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.10 }, { address: 198.18.1.11, weight: 50 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 8080, scheduler: wlc }
",
        );
        let [b0, b1] = [0, 1].map(|i| fx.backend_id("web", B[i], 8080));
        // B0 carries 3 active flows at weight 100 (0.03 per unit), B1 1 at weight 50
        // (0.02): B1 is the less loaded one, as the controller's sweep would count them.
        dp.set_active_flows(b0, 3).unwrap();
        dp.set_active_flows(b1, 1).unwrap();
        let syn = from_client(Frame::tcp((CLIENT, 45000), (VIP, 80), SYN));
        check(
            &mut dp,
            &[lab.forwarded("least loaded per unit of weight", &syn, 1, 8080)],
        );
        assert_eq!(
            dp.active_flows(b1).unwrap(),
            2,
            "the new flow counts on B1 at once"
        );
        // 2 on B1 (0.04) now exceeds B0's 0.03: the next one goes to B0.
        let syn2 = from_client(Frame::tcp((CLIENT, 45001), (VIP, 80), SYN));
        let (syn_ack, syn_ack_out) = backend_segment(1, 45000, SYN | ACK, 5000, 1001);
        let fin =
            from_client(Frame::tcp((CLIENT, 45000), (VIP, 80), FIN | ACK).seq_ack(1001, 5008));
        check(
            &mut dp,
            &[
                lab.forwarded("the balance tips to B0", &syn2, 0, 8080),
                lab.replied("B1 answers the first SYN", &syn_ack, syn_ack_out),
                lab.forwarded("a FIN gives the flow's count back", &fin, 1, 8080),
            ],
        );
        assert_eq!(dp.active_flows(b0).unwrap(), 4);
        assert_eq!(dp.active_flows(b1).unwrap(), 1);
    });
}

/// The entry program leaves a SYN's half-open lookup to the new-flow stage's insert
/// (`BPF_NOEXIST`); a SYN whose key the half-open table already holds (a retransmission)
/// is handed back and decided with that entry: it goes to the same backend, although `rr`
/// would pick the next one and `wlc` the less loaded one, and counts as nothing new (with
/// persistence, its first pass's pick through the affinity entry is not counted either).
#[test]
fn a_retransmitted_syn_keeps_its_backend_and_counts_once() {
    let Some(lab) = lab("fxresyn") else { return };
    lab.ns.enter(|| {
        for (scheduler, settings) in [("rr", ""), ("wlc", ""), ("rr", "persistence_timeout: 60")] {
            let mut dp = load(&lab);
            let fx = provision(&mut dp, &three_backends(scheduler, settings));
            let web = fx.listener_id("web");
            let syn = from_client(Frame::tcp((CLIENT, 46000), (VIP, 80), SYN));
            let (verdict, out) = run(&mut dp, lab.client_if, &syn.build());
            assert_eq!(
                verdict, XDP_REDIRECT,
                "{scheduler}: the first SYN is forwarded"
            );
            let first = dp
                .flow(&flow_of(&syn))
                .unwrap()
                .expect("half-open entry")
                .backend;
            let index = index_of_id(&fx, first);
            assert_eq!(out, to_backend(&syn, index, 8080));
            let active = dp.active_flows(first).unwrap();
            check(
                &mut dp,
                &[
                    lab.forwarded(
                        "the retransmitted SYN, to the same backend",
                        &syn,
                        index,
                        8080,
                    ),
                    lab.forwarded("and again", &syn, index, 8080),
                ],
            );
            let stats = dp.listener_stats(web).unwrap();
            assert_eq!(
                (stats.new_flows, stats.packets),
                (1, 3),
                "{scheduler}: one new flow for three SYNs"
            );
            assert_eq!(dp.counter(Reason::EventNewFlow).unwrap(), 1, "{scheduler}");
            assert_eq!(
                dp.counter(Reason::EventSynRechecked).unwrap(),
                2,
                "{scheduler}: each retransmission was found by the insert, then decided again"
            );
            assert_eq!(
                dp.active_flows(first).unwrap(),
                active,
                "{scheduler}: the backend's active count is the first SYN's only"
            );
            let flow = dp.flow(&flow_of(&syn)).unwrap().expect("half-open entry");
            assert_eq!(flow.backend, first, "{scheduler}: the entry is unchanged");
            assert_eq!(
                dp.counter(Reason::EventPersisted).unwrap(),
                0,
                "{scheduler} {settings}: no retransmission counts as sent by affinity"
            );
            // A new client port is a new flow, which the scheduler places afresh (or the
            // client's affinity keeps on its backend).
            let other = from_client(Frame::tcp((CLIENT, 46001), (VIP, 80), SYN));
            let (verdict, _) = run(&mut dp, lab.client_if, &other.build());
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(dp.listener_stats(web).unwrap().new_flows, 2, "{scheduler}");
            let persisted = u64::from(!settings.is_empty());
            assert_eq!(
                dp.counter(Reason::EventPersisted).unwrap(),
                persisted,
                "{scheduler} {settings}"
            );
        }
    });
}

/// A frame from another client address (same MACs as the fixture client).
fn from(addr: Ipv4Addr, sport: u16, dport: u16) -> Frame {
    from_client(Frame::tcp((addr, sport), (VIP, dport), SYN))
}

/// Two listeners whose keys hash to the same `LISTENER_INDEX` slot are both found (through
/// `LISTENERS`, copied into the CPU's scratch slot); once one is removed, the slot holds
/// the other's listener again; a change of that listener (its access list) is what the
/// next packet sees, and so is the change back (the record first written again).
#[test]
fn listeners_sharing_an_index_slot_and_listener_changes() {
    let Some(lab) = lab("fxidx") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let bits = lb_common::listener_index_bits(dp.sizes().max_listeners);
        let slot = |key: ListenerKey| lb_common::listener_slot(&key, bits);
        let tcp = |p: u16| ListenerKey::new(be(VIP), port(p), lb_common::PROTO_TCP);
        let marker = slot(ListenerKey::vip_marker(be(VIP)));
        let (a, b) = (1000..1100u16)
            .flat_map(|a| (a + 1..1100).map(move |b| (a, b)))
            .find(|&(a, b)| slot(tcp(a)) == slot(tcp(b)) && slot(tcp(a)) != marker)
            .expect("two of 100 ports share one of the index's slots");
        println!(
            "ports {a} and {b} share slot {} of {}",
            slot(tcp(a)),
            1 << bits
        );
        let config = |acl_on_a: bool, with_b: bool| {
            let acl = if acl_on_a {
                ", acl: { type: deny, name: client }"
            } else {
                ""
            };
            let b_listener = if with_b {
                format!(
                    "  - {{ name: b, protocol: tcp, address: 198.19.0.100, port: {b}, \
                     backend_port: 9090 }}\n"
                )
            } else {
                String::new()
            };
            provision::config(&format!(
                "{HEAD}
acls:
  - {{ name: client, entries: [198.18.0.2/32] }}
default_server_group:
  servers: [{{ address: 198.18.1.10 }}]
listeners:
  - {{ name: a, protocol: tcp, address: 198.19.0.100, port: {a}, backend_port: 8080{acl} }}
{b_listener}"
            ))
        };
        let mut fx = Provisioned::install(&mut dp, config(false, true), Runtime::default())
            .expect("the config is installed");
        let mut sport = 43000;
        let mut syn = |vport: u16| {
            sport += 1;
            from_client(Frame::tcp((CLIENT, sport), (VIP, vport), SYN))
        };
        let (to_a, to_b) = (syn(a), syn(b));
        check(
            &mut dp,
            &[
                lab.forwarded(
                    "a SYN to the first listener of a shared slot",
                    &to_a,
                    0,
                    8080,
                ),
                lab.forwarded(
                    "a SYN to the second listener of a shared slot",
                    &to_b,
                    0,
                    9090,
                ),
            ],
        );

        fx.config = config(false, false);
        fx.apply(&mut dp).unwrap();
        let (to_a, to_b) = (syn(a), syn(b));
        check(
            &mut dp,
            &[
                lab.forwarded("the slot's remaining listener", &to_a, 0, 8080),
                lab.dropped(
                    "the removed listener",
                    to_b.build(),
                    Reason::DropVipNoListener,
                ),
            ],
        );

        fx.config = config(true, false);
        fx.apply(&mut dp).unwrap();
        let to_a = syn(a);
        check(
            &mut dp,
            &[lab.dropped(
                "the listener's new access list denies the client",
                to_a.build(),
                Reason::DropAclDenied,
            )],
        );
        fx.config = config(false, false);
        fx.apply(&mut dp).unwrap();
        let to_a = syn(a);
        check(
            &mut dp,
            &[lab.forwarded("and the change back lets it in", &to_a, 0, 8080)],
        );
    });
}

#[test]
fn access_lists_allow_and_deny_on_prefix_edges() {
    let Some(lab) = lab("fxacl") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(
            &mut dp,
            "
acls:
  - { name: blocked, entries: [198.18.0.2/32, 198.18.5.0/24] }
  - { name: everyone, entries: [0.0.0.0/0] }
  - { name: branch, entries: [198.18.5.0/24] }
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - name: deny
    protocol: tcp
    address: 198.19.0.100
    port: 80
    backend_port: 8080
    acl: { type: deny, name: blocked }
  - name: everyone
    protocol: tcp
    address: 198.19.0.100
    port: 81
    backend_port: 8080
    acl: { type: allow, name: everyone }
  - name: branch
    protocol: tcp
    address: 198.19.0.100
    port: 82
    backend_port: 8080
    acl: { type: allow, name: branch }
",
        );
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };

        let mut cases = Vec::new();
        let mut port = 47000u16;
        for (src, vport, allowed, name) in [
            ("198.18.0.2", 80, false, "deny /32: the address itself"),
            ("198.18.0.3", 80, true, "deny /32: the next address"),
            ("198.18.0.1", 80, true, "deny /32: the previous address"),
            ("198.18.5.0", 80, false, "deny /24: first address"),
            ("198.18.5.255", 80, false, "deny /24: last address"),
            ("198.18.4.255", 80, true, "deny /24: just below"),
            ("198.18.6.0", 80, true, "deny /24: just above"),
            ("198.18.0.2", 81, true, "allow /0: anything"),
            ("198.19.255.255", 81, true, "allow /0: anything at all"),
            ("198.18.5.7", 82, true, "allow /24: inside"),
            ("198.18.5.255", 82, true, "allow /24: last address"),
            ("198.18.6.0", 82, false, "allow /24: just above"),
            ("198.18.4.255", 82, false, "allow /24: just below"),
        ] {
            port += 1;
            let frame = from(ip(src), port, vport);
            cases.push(if allowed {
                lab.forwarded(name, &frame, 0, 8080)
            } else {
                lab.dropped(name, frame.build(), Reason::DropAclDenied)
            });
        }
        check(&mut dp, &cases);
        assert_eq!(
            dp.listener_stats(fx.listener_id("deny")).unwrap().dropped,
            3,
            "198.18.0.2 and both ends of the /24"
        );
        assert_eq!(
            dp.listener_stats(fx.listener_id("branch")).unwrap().dropped,
            2
        );
    });
}

#[test]
fn persistence_entry_is_honoured_then_expires() {
    let Some(lab) = lab("fxpers") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, &three_backends("wrr", "persistence_timeout: 60"));
        let seq = live_sequence(&dp, &fx, "web");
        let (first_id, second_id) = (seq[0], seq[1]);
        let (first, second) = (index_of_id(&fx, first_id), index_of_id(&fx, second_id));
        assert_ne!(first, second, "the WRR sequence alternates");

        let syn1 = from_client(Frame::tcp((CLIENT, 46000), (VIP, 80), SYN));
        let syn2 = from_client(Frame::tcp((CLIENT, 46001), (VIP, 80), SYN));
        let before = dp.counter(Reason::EventPersisted).unwrap();
        check(
            &mut dp,
            &[
                lab.forwarded(
                    "first connection: scheduled, affinity recorded",
                    &syn1,
                    first,
                    8080,
                ),
                lab.forwarded(
                    "second connection follows the affinity, not the WRR turn",
                    &syn2,
                    first,
                    8080,
                ),
            ],
        );
        assert_eq!(dp.counter(Reason::EventPersisted).unwrap(), before + 1);

        // Age the entry past the 60 s timeout: the next connection is scheduled again and
        // gets the WRR turn the persisted one did not take.
        let key = lb_common::AffinityKey {
            listener: fx.listener_id("web"),
            addr: be(CLIENT),
        };
        let mut a = dp.affinity(&key).unwrap().expect("affinity entry");
        assert_eq!(a.backend, first_id);
        a.last_seen_ns = lb_ctl::controller::monotonic_coarse_ns() - 61_000_000_000;
        dp.set_affinity(key, a).unwrap();
        let syn3 = from_client(Frame::tcp((CLIENT, 46002), (VIP, 80), SYN));
        check(
            &mut dp,
            &[lab.forwarded("expired affinity: scheduled again", &syn3, second, 8080)],
        );
        assert_eq!(dp.affinity(&key).unwrap().unwrap().backend, second_id);
    });
}

#[test]
fn idle_flow_is_forgotten_after_its_timeout() {
    let Some(lab) = lab("fxidle") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, &three_backends("wrr", "established_timeout: 10"));
        let syn = from_client(Frame::tcp((CLIENT, 46100), (VIP, 80), SYN));
        let (verdict, _) = run(&mut dp, lab.client_if, &syn.build());
        assert_eq!(verdict, XDP_REDIRECT);
        // Idle for 11 s (> 10): the next packet is not the old flow's any more.
        age(&mut dp, flow_of(&syn), 11);
        let ack = from_client(Frame::tcp((CLIENT, 46100), (VIP, 80), ACK));
        let picked = index_of_id(&fx, maglev_pick(&dp, &fx, "web", (CLIENT, 46100)));
        let pickups = dp.counter(Reason::EventPickup).unwrap();
        check(
            &mut dp,
            &[lab.forwarded(
                "ACK after the idle timeout is picked up again",
                &ack,
                picked,
                8080,
            )],
        );
        assert_eq!(dp.counter(Reason::EventPickup).unwrap(), pickups + 1);
    });
}

/// A half-open flow (SYN, no ACK from the client yet) is forgotten after 30 s, not after
/// the established timeout; replacing an expired entry does not give back a `wlc` count
/// the controller's recount has already dropped (counts would wrap below zero).
#[test]
fn half_open_flows_expire_early_and_expired_entries_keep_wlc_counts_whole() {
    let Some(lab) = lab("fxhalf") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(
            &mut dp,
            "
default_server_group:
  servers: [{ address: 198.18.1.10 }]
listeners:
  - name: web
    protocol: tcp
    address: 198.19.0.100
    port: 80
    backend_port: 8080
    scheduler: wlc
    established_timeout: 300
",
        );
        let (web, b0) = (fx.listener_id("web"), fx.backend_id("web", B[0], 8080));
        let syn = from_client(Frame::tcp((CLIENT, 46150), (VIP, 80), SYN));
        let key = flow_of(&syn);
        let (verdict, _) = run(&mut dp, lab.client_if, &syn.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(dp.active_flows(b0).unwrap(), 1);
        // 31 s without the client's ACK: expired, so the controller's recount (which
        // leaves expired entries out) brings the count to 0.
        age(&mut dp, key, 31);
        dp.set_active_flows(b0, 0).unwrap();
        let before = dp.listener_stats(web).unwrap().new_flows;
        let (verdict, _) = run(&mut dp, lab.client_if, &syn.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            dp.listener_stats(web).unwrap().new_flows,
            before + 1,
            "a SYN 31 s after an unanswered one is a new flow"
        );
        assert_eq!(
            dp.active_flows(b0).unwrap(),
            1,
            "counted once, not given back"
        );

        // An established flow idle past the established timeout, replaced by a SYN.
        let ack = from_client(Frame::tcp((CLIENT, 46150), (VIP, 80), ACK).seq_ack(1001, 5001));
        run(&mut dp, lab.client_if, &ack.build());
        let flow = dp.flow(&key).unwrap().unwrap();
        assert_eq!(
            flow.flags & lb_common::FLOW_F_OPENING,
            0,
            "the ACK ends half-open"
        );
        age(&mut dp, key, 31);
        assert_eq!(
            dp.flow(&key).unwrap().unwrap().flags & lb_common::FLOW_F_RST,
            0
        );
        let (verdict, _) = run(&mut dp, lab.client_if, &ack.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            dp.listener_stats(web).unwrap().new_flows,
            before + 1,
            "an established flow idle 31 s of 300 is still live"
        );
        age(&mut dp, key, 301);
        dp.set_active_flows(b0, 0).unwrap();
        run(&mut dp, lab.client_if, &syn.build());
        assert_eq!(
            dp.active_flows(b0).unwrap(),
            1,
            "an expired entry's count is not given back twice"
        );
    });
}

#[test]
fn drained_backend_flows_are_cut_after_the_deadline() {
    let Some(lab) = lab("fxdrain") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let mut fx = provision(&mut dp, WEB_AND_DNS);
        let syn = from_client(Frame::tcp((CLIENT, 46200), (VIP, 80), SYN));
        let query = from_client(Frame::udp((CLIENT, 46201), (VIP, 53)));
        run(&mut dp, lab.client_if, &syn.build());
        run(&mut dp, lab.client_if, &query.build());

        // Drained (`lb-ctl server drain`), deadline not yet reached: flows continue.
        let now = lb_ctl::controller::monotonic_coarse_ns();
        let keys = [
            fx.backend_key("web", B[0], 8080),
            fx.backend_key("dns", B[0], 5353),
        ];
        let drain = |fx: &mut Provisioned, dp: &mut DataPlane, deadline: u64| {
            for key in keys {
                fx.runtime.draining.insert(key, deadline);
            }
            fx.apply(dp).unwrap();
        };
        drain(&mut fx, &mut dp, now + 600_000_000_000);
        let ack =
            from_client(Frame::tcp((CLIENT, 46200), (VIP, 80), ACK | packet::PSH).payload(b"data"));
        check(
            &mut dp,
            &[lab.forwarded(
                "draining, before the deadline: still forwarded",
                &ack,
                0,
                8080,
            )],
        );

        // Past the deadline: the LB answers TCP with a RST from the VIP, drops UDP.
        drain(&mut fx, &mut dp, now - 1);
        let mut rst = Frame::tcp((VIP, 80), (CLIENT, 46200), RST).payload(b"");
        // RFC 793: the answer to an ACK carries the ACK's acknowledgment as its sequence.
        rst.transport = packet::Transport::Tcp {
            flags: RST,
            seq: 2000,
            ack: 0,
        };
        rst.id = 0;
        rst.dont_fragment = true;
        rst.window = 0;
        let rst = rst.macs(LB_CLIENT_MAC, CLIENT_MAC).build();
        check(
            &mut dp,
            &[
                Case {
                    name: "TCP past the drain deadline: RST to the client",
                    ingress: lab.client_if,
                    input: ack.build(),
                    verdict: XDP_TX,
                    reason: Reason::ResetDrainExpired,
                    output: Output::Exactly(rst),
                },
                lab.dropped(
                    "UDP past the drain deadline: dropped",
                    query.build(),
                    Reason::DropDrainExpired,
                ),
            ],
        );
        let flow = dp.flow(&flow_of(&syn)).unwrap().unwrap();
        assert_ne!(
            flow.flags & lb_common::FLOW_F_RST,
            0,
            "a cut flow is no longer active"
        );
        // The client's kernel answers the backend's next segment with a RST: that one
        // goes through, so the backend closes too.
        let client_rst = from_client(Frame::tcp((CLIENT, 46200), (VIP, 80), RST));
        check(
            &mut dp,
            &[lab.forwarded("the client's RST reaches the backend", &client_rst, 0, 8080)],
        );
    });
}

#[test]
fn a_backend_closing_or_refusing_ends_the_flow() {
    let Some(lab) = lab("fxbrst") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, ONE_BACKEND);
        let syn = from_client(Frame::tcp((CLIENT, 46300), (VIP, 80), SYN));
        // A refusal acknowledges exactly the SYN (its sequence number 1000, plus one).
        let refusal = |ack: u32| {
            let input = Frame::tcp((B[0], 8080), (CLIENT, 46300), RST | ACK)
                .seq_ack(0, ack)
                .payload(b"")
                .macs(B_MAC[0], LB_BACKEND_MAC);
            let mut out = Frame::tcp((VIP, 80), (CLIENT, 46300), RST | ACK)
                .seq_ack(0, ack)
                .payload(b"");
            out.ttl = 63;
            (input, out.macs(LB_CLIENT_MAC, CLIENT_MAC).build())
        };
        let (forged, forged_out) = refusal(777_777);
        let (refused, refused_out) = refusal(1001);
        check(
            &mut dp,
            &[
                lab.forwarded("SYN", &syn, 0, 8080),
                lab.replied(
                    "a RST from the backend's address that does not acknowledge the SYN \
                            goes to the client, whose TCP ignores it",
                    &forged,
                    forged_out,
                ),
            ],
        );
        let flow = dp.flow(&flow_of(&syn)).unwrap().unwrap();
        assert_eq!(
            flow.flags & (lb_common::FLOW_F_RST | lb_common::FLOW_F_FIN),
            0,
            "a RST that does not fit the connection does not close it"
        );
        check(
            &mut dp,
            &[lab.replied("the backend refuses with a RST", &refused, refused_out)],
        );
        let flow = dp.flow(&flow_of(&syn)).unwrap().unwrap();
        assert_ne!(
            flow.flags & lb_common::FLOW_F_RST,
            0,
            "the refused flow is not active"
        );
    });
}

/// The benchmark wrapper set up as the benchmarks do (`lb_tests::bench::kit`): a 64-byte
/// SYN from the client's port `port` to restore before every run of `lb_xdp`.
fn wrapper_on_a_syn(dp: &mut DataPlane, port: u16) -> (Kit, Vec<u8>) {
    let mut syn = from_client(Frame::tcp((CLIENT, port), (VIP, 80), SYN)).payload(b"");
    syn.payload = vec![0; 64 - 54];
    let frame = syn.build();
    assert_eq!(frame.len(), 64);
    let mut kit = Kit::new(dp, &["lb_bench", "lb_empty"]).unwrap();
    kit.set_target(&kit::prog_fd(dp, lb_common::names::PROGRAM).unwrap())
        .unwrap();
    kit.set_packet(&frame).unwrap();
    (kit, frame)
}

/// 1000 runs of the wrapper over `frame` arriving on `ingress`: the verdict of the last.
fn run_wrapper(dp: &mut DataPlane, frame: &[u8], ingress: u32) -> u32 {
    let (verdict, _) = kit::test_run(dp, "lb_bench", frame, ingress, 1000).unwrap();
    verdict
}

/// The in-kernel benchmark loop (`lb_bench`, docs/benchmarks.md) is only fair if every
/// repetition sees the original packet: 1000 repetitions must be 1000 forwards of one
/// established flow, and in new-flow mode 1000 new flows. The wrapper is only in the test
/// object, whose lb_xdp is the shipped one.
#[test]
fn benchmark_wrapper_restores_the_packet_on_every_run() {
    let Some(lab) = lab("fxbench") else { return };
    lab.ns.enter(|| {
        let mut dp = load_object(&lab, TEST_OBJECT);
        let web = provision(&mut dp, ONE_BACKEND).listener_id("web");
        let (mut kit, frame) = wrapper_on_a_syn(&mut dp, 40900);
        let run_bench = |dp: &mut DataPlane| run_wrapper(dp, &frame, lab.client_if);
        assert_eq!(run_bench(&mut dp), XDP_REDIRECT);
        let s = dp.listener_stats(web).unwrap();
        assert_eq!(
            (s.packets, s.new_flows),
            (1000, 1),
            "one flow, 1000 forwards"
        );

        kit.set_vary(true).unwrap();
        assert_eq!(run_bench(&mut dp), XDP_REDIRECT);
        let s = dp.listener_stats(web).unwrap();
        assert_eq!(
            (s.packets, s.new_flows),
            (2000, 1001),
            "a new flow every run"
        );
    });
}

/// The same loop over a packet that encapsulation grows at its front (`forwarding: dsr`):
/// the wrapper must move the head back each time, or the headroom runs out after a dozen
/// repetitions and the rest are drops, measured as if they were the DSR path.
#[test]
fn benchmark_wrapper_restores_an_encapsulated_packet_on_every_run() {
    let Some(lab) = lab("fxbenchdsr") else { return };
    lab.ns.enter(|| {
        let mut dp = load_object(&lab, TEST_OBJECT);
        provision(&mut dp, &dsr_config("{ encapsulation: gue }"));
        let (mut kit, frame) = wrapper_on_a_syn(&mut dp, 40901);
        let run_bench = |dp: &mut DataPlane| run_wrapper(dp, &frame, lab.client_if);
        let new_flows = |dp: &DataPlane| dp.counter(Reason::EventNewFlow).unwrap();
        let sent = |dp: &DataPlane| dp.counter(Reason::Encapsulated).unwrap();
        assert_eq!(run_bench(&mut dp), XDP_REDIRECT);
        assert_eq!(
            (sent(&dp), new_flows(&dp)),
            (1000, 1),
            "one flow, 1000 packets encapsulated"
        );

        kit.set_vary(true).unwrap();
        assert_eq!(run_bench(&mut dp), XDP_REDIRECT);
        assert_eq!(
            (sent(&dp), new_flows(&dp)),
            (2000, 1001),
            "a new flow every run, each encapsulated"
        );
    });
}

/// The controller reads the flow table in batches (`lb_ctl::flow_walk`): every entry
/// comes back exactly once with its value, across many batches, and the walk is far
/// cheaper than key-by-key iteration (timings printed, not asserted).
#[test]
fn flow_table_walk_reads_every_entry_once_in_batches() {
    let Some(lab) = lab("fxwalk") else { return };
    lab.ns.enter(|| {
        const ENTRIES: u32 = 100_000;
        let mut dp = DataPlane::load(&LoadOptions {
            sizes: MapSizes::new(262_144, 4, 64),
            map_pin_dir: None,
            verifier_log_dir: None,
        })
        .expect("the XDP program loads and verifies");
        let key = |i: u32| FlowKey {
            src_addr: be(Ipv4Addr::from(0xc612_0000 | (i >> 16))),
            dst_addr: be(VIP),
            src_port: (i as u16).to_be(),
            dst_port: port(80),
            protocol: 6,
            _pad: [0; 3],
        };
        for i in 0..ENTRIES {
            let flow = Flow {
                backend: i % 64,
                listener: 1,
                last_seen_ns: u64::from(i),
                ..Default::default()
            };
            dp.set_flow(key(i), flow).unwrap();
        }

        let started = std::time::Instant::now();
        let walked = dp.flows().expect("the batch walk");
        let batch_time = started.elapsed();
        let mut seen = std::collections::HashMap::new();
        for (k, f) in &walked {
            let lb_ctl::family::FlowMapKey::V4(k) = k else {
                panic!("{k:?}: an IPv6 entry in an IPv4 table's walk");
            };
            assert!(seen.insert(*k, *f).is_none(), "{k:?} seen twice");
        }
        assert_eq!(seen.len(), ENTRIES as usize, "every entry, once");
        for i in 0..ENTRIES {
            let f = seen.get(&key(i)).expect("entry present");
            assert_eq!((f.backend, f.last_seen_ns), (i % 64, u64::from(i)));
        }

        // The same map through a handle of its own, walked key by key (for the timing).
        let map_ids = dp.program().unwrap().info().unwrap().map_ids().unwrap();
        let map = map_ids
            .unwrap_or_default()
            .into_iter()
            .map(|id| aya::maps::MapData::from_id(id).unwrap())
            .find(|m| m.info().unwrap().name_as_str() == Some(lb_common::names::FLOWS))
            .expect("the program uses the flow table");
        let flows: aya::maps::HashMap<_, FlowKey, Flow> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).unwrap();
        let started = std::time::Instant::now();
        let one_by_one = flows.iter().filter_map(Result::ok).count();
        let key_time = started.elapsed();
        println!(
            "{ENTRIES} flow entries: batch walk {batch_time:?}, key by key {key_time:?} \
             ({one_by_one} entries)"
        );
    });
}

/// `forwarding: dsr` with one backend, B[0], for TCP VIP:80 and UDP VIP:53 (ports kept, as
/// DSR requires), and `dsr` settings.
fn dsr_config(dsr: &str) -> String {
    format!(
        "
forwarding: dsr
dsr: {dsr}
default_server_group:
  servers: [{{ address: 198.18.1.10 }}]
listeners:
  - {{ name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 80 }}
  - {{ name: dns, protocol: udp, address: 198.19.0.100, port: 53, backend_port: 53 }}
"
    )
}

/// The frame the LB sends toward a backend for `inner` in DSR, written out byte by byte
/// from the RFCs rather than from the code under test: Ethernet `macs` (source,
/// destination), an outer IPv4 header (TOS copied, identification 0, DF copied, TTL 64,
/// protocol 4 for IPIP or 17 with a UDP header to `gue` = (source port, port)), then
/// the client's IP packet exactly as it came.
fn encapsulated(
    inner: &[u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    gue: Option<(u16, u16)>,
    macs: (Mac, Mac),
) -> Vec<u8> {
    let packet = &inner[14..];
    let extra = if gue.is_some() { 28 } else { 20 };
    let mut ip = vec![0x45, packet[1]];
    ip.extend_from_slice(&((packet.len() + extra) as u16).to_be_bytes());
    ip.extend_from_slice(&[
        0,
        0,
        packet[6] & 0x40,
        0,
        64,
        if gue.is_some() { 17 } else { 4 },
        0,
        0,
    ]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = lb_common::csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    let mut out = Vec::new();
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&macs.0);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip);
    if let Some((sport, dport)) = gue {
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&dport.to_be_bytes());
        out.extend_from_slice(&((packet.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(packet);
    out
}

impl Lab {
    /// A client frame encapsulated to B[0] in IPIP from `src`, out of the backend side.
    fn tunnelled(&self, name: &'static str, frame: &Frame, src: Ipv4Addr) -> Case {
        let input = frame.build();
        Case {
            name,
            ingress: self.client_if,
            output: Output::Exactly(encapsulated(
                &input,
                src,
                B[0],
                None,
                (LB_BACKEND_MAC, B_MAC[0]),
            )),
            input,
            verdict: XDP_REDIRECT,
            reason: Reason::Encapsulated,
        }
    }
}

#[test]
fn dsr_ipip_carries_the_client_packet_whole_from_the_route_s_source() {
    let Some(lab) = lab("fxdsr") else { return };
    lab.ns.ip(["link", "set", "be0", "mtu", "1400"]);
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, &dsr_config("{ encapsulation: ipip }"));
        // No dsr.source: the FIB's preferred source toward B[0], be0's address.
        let lb = Ipv4Addr::new(198, 18, 1, 1);
        let syn = from_client(Frame::tcp((CLIENT, 41000), (VIP, 80), SYN));
        let ack = from_client(Frame::tcp((CLIENT, 41000), (VIP, 80), ACK).seq_ack(1001, 5001));
        let datagram = from_client(Frame::udp((CLIENT, 33300), (VIP, 53)).payload(b"query"));
        let mut dscp =
            from_client(Frame::tcp((CLIENT, 41000), (VIP, 80), ACK).seq_ack(1001, 5001)).build();
        dscp[15] = 0xb8; // EF: the outer header must carry it too
        packet::fix_ip_checksum(&mut dscp);
        let df = |mut f: Frame| {
            f.dont_fragment = true;
            f
        };
        // 1390 bytes fit the 1400-byte egress bare, not with 20 bytes of IPIP in front.
        let upload = from_client(df(Frame::tcp((CLIENT, 41000), (VIP, 80), ACK)
            .seq_ack(1001, 5001)
            .payload(&[0x5a; 1350])));
        let upload_no_df = {
            let mut f = upload.clone();
            f.dont_fragment = false;
            f
        };
        let upload_options = upload.clone().options(&[1, 1, 1, 0]);
        // What a backend answers the client with: from the VIP, straight to the client.
        // Should it cross the LB, it is not the LB's to touch.
        let direct_reply = Frame::tcp((VIP, 80), (CLIENT, 41000), ACK)
            .seq_ack(5001, 1001)
            .macs(B_MAC[0], LB_BACKEND_MAC);
        // A router on the client's path cannot pass that reply on: its error comes to the
        // VIP, so to the LB, which tunnels it to the backend untouched.
        let router = Ipv4Addr::new(198, 18, 0, 254);
        let frag_needed_for_reply = from_client(icmp_error(
            router,
            VIP,
            3,
            4,
            [0, 0, 0x05, 0x00],
            &direct_reply.build(),
            8,
        ))
        .build();
        check(
            &mut dp,
            &[
                lab.tunnelled("SYN: encapsulated whole, TTL kept", &syn, lb),
                lab.tunnelled("the flow's next segment", &ack, lb),
                lab.tunnelled("a UDP datagram", &datagram, lb),
                Case {
                    name: "the TOS byte is copied to the outer header",
                    ingress: lab.client_if,
                    output: Output::Exactly(encapsulated(
                        &dscp,
                        lb,
                        B[0],
                        None,
                        (LB_BACKEND_MAC, B_MAC[0]),
                    )),
                    input: dscp.clone(),
                    verdict: XDP_REDIRECT,
                    reason: Reason::Encapsulated,
                },
                Case {
                    name: "DF and too big once encapsulated: the client learns the MTU left \
                           inside the tunnel, 1380",
                    ingress: lab.client_if,
                    input: upload.build(),
                    verdict: XDP_TX,
                    reason: Reason::IcmpFragNeededToClient,
                    output: Output::Exactly(frag_needed(
                        VIP,
                        CLIENT,
                        1380,
                        &upload,
                        (LB_CLIENT_MAC, CLIENT_MAC),
                    )),
                },
                lab.dropped(
                    "without DF it cannot be fragmented for the tunnel: dropped, counted",
                    upload_no_df.build(),
                    Reason::DropTooBigForTunnel,
                ),
                lab.dropped(
                    "with IP options the answer cannot be built: dropped, not passed",
                    upload_options.build(),
                    Reason::DropTooBigForTunnel,
                ),
                Case {
                    name: "an ICMP error about the backend's reply goes to it, tunnelled",
                    ingress: lab.client_if,
                    output: Output::Exactly(encapsulated(
                        &frag_needed_for_reply,
                        lb,
                        B[0],
                        None,
                        (LB_BACKEND_MAC, B_MAC[0]),
                    )),
                    input: frag_needed_for_reply.clone(),
                    verdict: XDP_REDIRECT,
                    reason: Reason::IcmpToBackend,
                },
                Case {
                    name: "the backend's own answer to the client is not the LB's",
                    ingress: lab.backend_if,
                    input: direct_reply.build(),
                    verdict: XDP_PASS,
                    reason: Reason::PassNotForUs,
                    output: Output::Unchanged,
                },
            ],
        );
    });
}

#[test]
fn dsr_gue_spreads_flows_over_outer_sources_and_ports() {
    let Some(lab) = lab("fxgue") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            &dsr_config("{ encapsulation: gue, gue_port: 6080, source: 198.18.9.0/24 }"),
        );
        let mut cases = Vec::new();
        let mut sources = std::collections::BTreeSet::new();
        for sport in [42000, 42001, 42002, 42003] {
            let frame = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), SYN));
            let hash = lb_common::hash::hash_tuple(be(CLIENT), be(VIP), port(sport), port(80));
            let src = Ipv4Addr::new(198, 18, 9, hash as u8);
            let gue_port = 0xc000 | (hash as u16 & 0x3fff);
            sources.insert(src);
            let input = frame.build();
            cases.push(Case {
                name: "a SYN in GUE: UDP to 6080 from a port and an address of the flow's hash",
                ingress: lab.client_if,
                output: Output::Exactly(encapsulated(
                    &input,
                    src,
                    B[0],
                    Some((gue_port, 6080)),
                    (LB_BACKEND_MAC, B_MAC[0]),
                )),
                input,
                verdict: XDP_REDIRECT,
                reason: Reason::Encapsulated,
            });
        }
        check(&mut dp, &cases);
        assert!(
            sources.len() > 1,
            "four flows, one outer source: {sources:?}"
        );
    });
}

#[test]
fn dsr_to_an_unknown_neighbour_hands_the_kernel_the_encapsulated_packet() {
    let Some(lab) = lab("fxdsrn") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            "
forwarding: dsr
dsr: { source: 198.18.1.1 }
default_server_group:
  servers: [{ address: 198.18.1.13 }]
listeners:
  - { name: web, protocol: tcp, address: 198.19.0.100, port: 80, backend_port: 80 }
",
        );
        let syn = from_client(Frame::tcp((CLIENT, 43000), (VIP, 80), SYN));
        let input = syn.build();
        check(
            &mut dp,
            &[Case {
                name: "the kernel resolves the neighbour and forwards the outer packet; the \
                       frame keeps the addresses it came with, which the kernel checks",
                ingress: lab.client_if,
                output: Output::Exactly(encapsulated(
                    &input,
                    Ipv4Addr::new(198, 18, 1, 1),
                    NO_NEIGH,
                    None,
                    (CLIENT_MAC, LB_CLIENT_MAC),
                )),
                input,
                verdict: XDP_PASS,
                reason: Reason::PassNeighUnknown,
            }],
        );
    });
}

/// The TC program that sends `dsr` health probes through the tunnel: a packet marked with
/// a backend's probe mark, to a listener's VIP:port, gets that backend's outer header (from
/// the probe's own source, no `dsr.source` here) and is redirected (TC_ACT_REDIRECT, 7);
/// an unmarked packet passes untouched (TC_ACT_OK, 0); a marked one that cannot be
/// tunnelled (no such backend, no such listener) is dropped (TC_ACT_SHOT, 2), so the probe
/// fails rather than reaching the VIP another way.
#[test]
fn dsr_probes_are_tunnelled_to_their_backend_and_nothing_else_is_touched() {
    let Some(lab) = lab("fxprb") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, &dsr_config("{ encapsulation: ipip }"));
        let id = fx.backend("web", B[0], 80).id;
        let mark = lb_common::probe_mark(id);
        let lb = Ipv4Addr::new(198, 18, 1, 1);
        let probe = Frame::tcp((lb, 45000), (VIP, 80), SYN)
            .macs(LB_BACKEND_MAC, B_MAC[1])
            .build();
        let elsewhere = Frame::tcp((lb, 45000), (VIP, 81), SYN)
            .macs(LB_BACKEND_MAC, B_MAC[1])
            .build();
        let program: &mut aya::programs::SchedClassifier = dp
            .ebpf_mut()
            .program_mut(lb_common::names::PROGRAM_PROBE_TUNNEL)
            .expect("the object has the probe tunnel")
            .try_into()
            .expect("a TC program");
        let run = |mark: u32, frame: &[u8]| {
            xdp::run_tc_program(program, lab.backend_if, mark, frame).expect("test run")
        };

        let (action, out) = run(mark, &probe);
        let mut want = encapsulated(&probe, lb, B[0], None, (LB_BACKEND_MAC, B_MAC[1]));
        // The Ethernet header is the probe's own: the redirect fills in the next hop's.
        want[..12].copy_from_slice(&probe[..12]);
        assert_eq!(action, 7, "a marked probe is redirected");
        assert!(out == want, "the tunnelled probe:\n{}", diff(&out, &want));

        assert_eq!(run(0, &probe), (0, probe.clone()), "unmarked: untouched");
        assert_eq!(
            run(0x1234, &probe),
            (0, probe.clone()),
            "another mark: untouched"
        );
        assert_eq!(
            run(lb_common::probe_mark(63), &probe).0,
            2,
            "no such backend"
        );
        assert_eq!(run(mark, &elsewhere).0, 2, "no listener on VIP:81");
    });
}

// ---------------------------------------------------------------------------------------
// IPv6

const CLIENT6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x100);
/// Not a VIP, not a backend.
const OTHER6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x77);
const B6: [std::net::Ipv6Addr; 2] = [
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 0x10),
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 0x11),
];

/// The lab with IPv6 addresses and permanent IPv6 neighbours (client and `B6`), IPv6
/// forwarding on: `bpf_fib_lookup` answers IPv6 lookups only then.
fn lab6(tag: &str) -> Option<Lab> {
    let lab = lab(tag)?;
    lab.ns.sysctls(&[
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ]);
    lab.ns.addr_add_nodad("cl0", "2001:db8:18::1/64");
    lab.ns.addr_add_nodad("be0", "2001:db8:18:1::1/64");
    lab.ns
        .neigh_permanent("cl0", CLIENT6, &mac_string(CLIENT_MAC));
    for (addr, mac) in B6.iter().zip(B_MAC) {
        lab.ns.neigh_permanent("be0", addr, &mac_string(mac));
    }
    Some(lab)
}

/// B6[0] and B6[1] behind VIP6:80 (`web6`, tcp, wrr) and VIP6:53 (`dns6`, udp).
const IPV6_WEB_AND_DNS: &str = "
vserver_groups:
  - name: web
    servers:
      - { address: 2001:db8:18:1::10, port: 8080 }
  - name: dns
    servers:
      - { address: 2001:db8:18:1::10, port: 5353 }
listeners:
  - { name: web6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: web }
  - { name: dns6, protocol: udp, address: 2001:db8:19::100, port: 53, server_group: dns }
";

impl Lab {
    fn case6(
        &self,
        name: &'static str,
        ingress: u32,
        input: Vec<u8>,
        verdict: u32,
        reason: Reason,
        output: Output,
    ) -> Case {
        Case {
            name,
            ingress,
            input,
            verdict,
            reason,
            output,
        }
    }
}

/// A client frame as it reaches the LB.
fn from_client6(frame: packet::Frame6) -> packet::Frame6 {
    frame.macs(CLIENT_MAC, LB_CLIENT_MAC)
}

/// `frame` translated to B6[0]:`port`: destination and port rewritten, hop limit − 1, out
/// of the backend side. Built from scratch, so its checksum is the one a correct
/// incremental update must reach.
fn to_backend6(frame: &packet::Frame6, port: u16) -> Vec<u8> {
    let mut f = frame.clone();
    f.dst = B6[0];
    f.dst_port = port;
    f.hop_limit -= 1;
    f.macs(LB_BACKEND_MAC, B_MAC[0]).build()
}

/// NAT66 both ways, TCP and UDP, every byte, with and without extension headers the
/// policy skips; the checksums of every output frame are checked from scratch too.
/// `a_retransmitted_syn_keeps_its_backend_and_counts_once` over IPv6: the insert that
/// finds the key hands the SYN back to `lb_ipv6`.
#[test]
fn a_retransmitted_ipv6_syn_is_decided_with_its_half_open_entry() {
    use packet::Frame6;
    let Some(lab) = lab6("fx6resyn") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, IPV6_WEB_AND_DNS);
        let syn = from_client6(Frame6::tcp((CLIENT6, 40100), (VIP6, 80), SYN).seq_ack(1000, 0));
        let forwarded = |name| {
            lab.case6(
                name,
                lab.client_if,
                syn.build(),
                XDP_REDIRECT,
                Reason::Forwarded,
                Output::Exactly(to_backend6(&syn, 8080)),
            )
        };
        check(
            &mut dp,
            &[forwarded("the SYN"), forwarded("its retransmission")],
        );
        let stats = dp.listener_stats(fx.listener_id("web6")).unwrap();
        assert_eq!((stats.new_flows, stats.packets), (1, 2));
        assert_eq!(dp.counter(Reason::EventSynRechecked).unwrap(), 1);
    });
}

#[test]
fn ipv6_flows_are_translated_both_ways_with_their_checksums() {
    use packet::{ExtHeader, Frame6};
    let Some(lab) = lab6("fx6nat") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, IPV6_WEB_AND_DNS);
        let syn = from_client6(Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN).seq_ack(1000, 0));
        let ack = from_client6(
            Frame6::tcp((CLIENT6, 40000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .payload(b"GET / HTTP/1.1\r\n\r\n"),
        );
        let reply_in = Frame6::tcp((B6[0], 8080), (CLIENT6, 40000), SYN | ACK)
            .seq_ack(5000, 1001)
            .macs(B_MAC[0], LB_BACKEND_MAC);
        let mut reply_out = reply_in.clone();
        reply_out.src = VIP6;
        reply_out.src_port = 80;
        reply_out.hop_limit -= 1;
        let reply_out = reply_out.macs(LB_CLIENT_MAC, CLIENT_MAC).build();
        // Hop-by-hop (first), destination options, a routing header with no segment left
        // and an atomic fragment: all skipped, and kept in the translated packet.
        let with_ext = from_client6(
            Frame6::tcp((CLIENT6, 40001), (VIP6, 80), SYN)
                .ext(ExtHeader::HopByHop(vec![]))
                .ext(ExtHeader::DestOpts(vec![]))
                .ext(ExtHeader::srh(0, &[VIP6, OTHER6]))
                .ext(ExtHeader::Fragment {
                    offset: 0,
                    more: false,
                    id: 7,
                }),
        );
        let udp = from_client6(Frame6::udp((CLIENT6, 40002), (VIP6, 53)).payload(b"query"));
        let udp_reply_in = Frame6::udp((B6[0], 5353), (CLIENT6, 40002))
            .payload(b"answer")
            .macs(B_MAC[0], LB_BACKEND_MAC);
        let mut udp_reply_out = udp_reply_in.clone();
        udp_reply_out.src = VIP6;
        udp_reply_out.src_port = 53;
        udp_reply_out.hop_limit -= 1;
        let udp_reply_out = udp_reply_out.macs(LB_CLIENT_MAC, CLIENT_MAC).build();
        let fwd = |name, f: &Frame6, port| {
            lab.case6(
                name,
                lab.client_if,
                f.build(),
                XDP_REDIRECT,
                Reason::Forwarded,
                Output::Exactly(to_backend6(f, port)),
            )
        };
        let cases = vec![
            fwd("SYN to the IPv6 VIP", &syn, 8080),
            lab.case6(
                "SYN-ACK from the backend",
                lab.backend_if,
                reply_in.build(),
                XDP_REDIRECT,
                Reason::ReplyForwarded,
                Output::Exactly(reply_out.clone()),
            ),
            fwd("ACK with data", &ack, 8080),
            fwd("SYN through skipped extension headers", &with_ext, 8080),
            fwd("UDP datagram", &udp, 5353),
            lab.case6(
                "UDP answer",
                lab.backend_if,
                udp_reply_in.build(),
                XDP_REDIRECT,
                Reason::ReplyForwarded,
                Output::Exactly(udp_reply_out.clone()),
            ),
        ];
        for case in &cases {
            if let Output::Exactly(out) = &case.output {
                packet::verify6(out).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            }
        }
        check(&mut dp, &cases);
    });
}

/// The extension-header policy, fragments, hop limit, neighbour discovery and malformed
/// headers, each with its verdict and counter (docs/packet-policy.md, "IPv6").
#[test]
fn ipv6_policy_refuses_what_it_does_not_serve_and_leaves_the_rest_to_the_kernel() {
    use packet::{ExtHeader, Frame6};
    let Some(lab) = lab6("fx6pol") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, IPV6_WEB_AND_DNS);
        let syn = |sport| from_client6(Frame6::tcp((CLIENT6, sport), (VIP6, 80), SYN));
        let routed = syn(41000).ext(ExtHeader::srh(1, &[OTHER6, VIP6])).build();
        let hbh_second = syn(41001)
            .ext(ExtHeader::DestOpts(vec![]))
            .ext(ExtHeader::HopByHop(vec![]))
            .build();
        let mut long_chain = syn(41002);
        for _ in 0..6 {
            long_chain = long_chain.ext(ExtHeader::DestOpts(vec![]));
        }
        let fragment = syn(41003).fragment(0, true, 9).build();
        let later_fragment = syn(41004).fragment(8, false, 9).build();
        let hop_limit_1 = syn(41005).hop_limit(1).build();
        let mut truncated_ext = syn(41006)
            .ext(ExtHeader::Raw {
                kind: packet::NH_DEST_OPTS,
                bytes: vec![200, 0, 0, 0, 0, 0],
            })
            .build();
        truncated_ext.truncate(14 + 40 + 8);
        packet::set_payload_length6(&mut truncated_ext, 8);
        let no_udp_checksum = from_client6(
            Frame6::udp((CLIENT6, 41007), (VIP6, 53))
                .payload(b"q")
                .no_udp_checksum(),
        )
        .build();
        let not_ours = from_client6(Frame6::tcp((CLIENT6, 41008), (OTHER6, 80), SYN)).build();
        // Neighbour solicitation for the VIP: the kernel's, even though it is a VIP.
        let solicitation = from_client6(Frame6::icmp6(CLIENT6, VIP6, 135, 0, [0; 4])).build();
        // The same bytes behind a payload length of 0: padding, not a message, so other
        // ICMPv6 to a VIP.
        let mut padded_solicitation = solicitation.clone();
        padded_solicitation[18..20].copy_from_slice(&[0, 0]);
        let echo = from_client6(Frame6::icmp6(CLIENT6, VIP6, 128, 0, [0, 1, 0, 1])).build();
        let mut version4 = syn(41009).build();
        version4[14] = 0x45;
        let cases = vec![
            lab.dropped(
                "routing header with a segment left",
                routed,
                Reason::DropExtensionHeader,
            ),
            lab.dropped(
                "hop-by-hop header not first",
                hbh_second,
                Reason::DropExtensionHeader,
            ),
            lab.dropped(
                "six extension headers",
                long_chain.build(),
                Reason::DropExtensionHeader,
            ),
            lab.dropped("first fragment to a VIP", fragment, Reason::DropFragment),
            lab.dropped(
                "later fragment to a VIP",
                later_fragment,
                Reason::DropFragment,
            ),
            lab.passed("hop limit 1", hop_limit_1, Reason::PassTtlExpired),
            lab.dropped(
                "extension header past the payload",
                truncated_ext,
                Reason::DropMalformedIpv6,
            ),
            lab.dropped(
                "UDP without a checksum",
                no_udp_checksum,
                Reason::DropMalformedL4,
            ),
            lab.passed("not for a VIP", not_ours, Reason::PassNotForUs),
            lab.passed(
                "neighbour solicitation for the VIP",
                solicitation,
                Reason::PassNeighbourDiscovery,
            ),
            lab.dropped(
                "a solicitation's bytes past the payload length",
                padded_solicitation,
                Reason::DropVipOtherProtocol,
            ),
            lab.case6(
                "echo request to the VIP, answered",
                lab.client_if,
                echo,
                XDP_TX,
                Reason::IcmpEchoReply,
                Output::Exactly(
                    Frame6::icmp6(VIP6, CLIENT6, 129, 0, [0, 1, 0, 1])
                        .macs(LB_CLIENT_MAC, CLIENT_MAC)
                        .build(),
                ),
            ),
            lab.dropped(
                "version 4 under the IPv6 ethertype",
                version4,
                Reason::DropMalformedIpv6,
            ),
        ];
        check(&mut dp, &cases);
        // None of it made a flow.
        assert!(
            dp.flows().unwrap().is_empty(),
            "no state from refused packets"
        );
    });
}

/// Packet Too Big both ways: a translated packet too big for its egress is answered by the
/// program (a router never fragments IPv6), quoting the packet as its sender sent it; a
/// Packet Too Big from the path about a reply reaches the backend, and a port unreachable
/// from the backend reaches the client, each translated like the flow they quote.
#[test]
fn ipv6_packet_too_big_is_answered_and_icmpv6_errors_are_translated() {
    use packet::Frame6;
    const ROUTER6: std::net::Ipv6Addr =
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0xfe);
    let Some(lab) = lab6("fx6ptb") else { return };
    lab.ns.ip(["link", "set", "be0", "mtu", "1400"]);
    lab.ns.ip(["link", "set", "cl0", "mtu", "1300"]);
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, IPV6_WEB_AND_DNS);
        let syn = from_client6(Frame6::tcp((CLIENT6, 40000), (VIP6, 80), SYN).seq_ack(1000, 0));
        let big = from_client6(
            Frame6::tcp((CLIENT6, 40000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .payload(&[7; 1400]),
        );
        // To the client, from the VIP, quoting the IPv6 header and 8 bytes of TCP as sent.
        let big_packet = big.packet();
        let ptb_to_client = Frame6::packet_too_big(VIP6, CLIENT6, 1400, &big_packet[..48])
            .macs(LB_CLIENT_MAC, CLIENT_MAC)
            .build();
        // The same behind a hop-by-hop and a destination options header: the quote holds
        // them, up to 8 bytes of TCP.
        let big_ext = from_client6(
            Frame6::tcp((CLIENT6, 40000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .payload(&[7; 1400])
                .ext(packet::ExtHeader::HopByHop(vec![]))
                .ext(packet::ExtHeader::DestOpts(vec![0; 14])),
        );
        let big_ext_packet = big_ext.packet();
        let ext_len = big_ext_packet.len() - big_packet.len();
        assert_eq!(ext_len, 8 + 16, "the extension headers the case means");
        let ptb_ext_to_client =
            Frame6::packet_too_big(VIP6, CLIENT6, 1400, &big_ext_packet[..48 + ext_len])
                .macs(LB_CLIENT_MAC, CLIENT_MAC)
                .build();
        // A large reply from the backend, too big for the client side (1300).
        let big_reply = Frame6::tcp((B6[0], 8080), (CLIENT6, 40000), ACK)
            .seq_ack(5001, 2401)
            .payload(&[9; 1300])
            .macs(B_MAC[0], LB_BACKEND_MAC);
        let reply_packet = big_reply.packet();
        let ptb_to_backend = Frame6::packet_too_big(CLIENT6, B6[0], 1300, &reply_packet[..48])
            .macs(LB_BACKEND_MAC, B_MAC[0])
            .build();
        // A router on the client's path says a reply (as the LB sent it, from the VIP) was
        // too big; the backend gets it about its own packet.
        let reply_as_sent = Frame6::tcp((VIP6, 80), (CLIENT6, 40000), ACK)
            .seq_ack(5001, 2401)
            .payload(&[9; 100]);
        let reply_as_backend_sent = Frame6::tcp((B6[0], 8080), (CLIENT6, 40000), ACK)
            .seq_ack(5001, 2401)
            .payload(&[9; 100]);
        let path_ptb = from_client6(Frame6::packet_too_big(
            ROUTER6,
            VIP6,
            1280,
            &reply_as_sent.packet(),
        ));
        let mut to_backend =
            Frame6::packet_too_big(ROUTER6, B6[0], 1280, &reply_as_backend_sent.packet());
        to_backend.hop_limit -= 1;
        let to_backend = to_backend.macs(LB_BACKEND_MAC, B_MAC[0]).build();
        // The backend's port unreachable about the client's packet it got.
        let as_backend_got = Frame6::udp((CLIENT6, 40002), (B6[0], 5353)).payload(b"query");
        let as_client_sent = Frame6::udp((CLIENT6, 40002), (VIP6, 53)).payload(b"query");
        let unreachable =
            Frame6::icmp6_error(B6[0], CLIENT6, 1, 4, [0; 4], &as_backend_got.packet())
                .macs(B_MAC[0], LB_BACKEND_MAC);
        // The same with its hop limit spent: the kernel's, untouched (as towards a backend).
        let mut last_hop = unreachable.clone();
        last_hop.hop_limit = 1;
        let mut to_client =
            Frame6::icmp6_error(VIP6, CLIENT6, 1, 4, [0; 4], &as_client_sent.packet());
        to_client.hop_limit -= 1;
        let to_client = to_client.macs(LB_CLIENT_MAC, CLIENT_MAC).build();
        // The same errors behind extension headers the policy skips: translated alike,
        // the headers kept.
        let opts = || packet::ExtHeader::DestOpts(vec![]);
        let hop_by_hop = || packet::ExtHeader::HopByHop(vec![]);
        let path_ptb_ext = from_client6(
            Frame6::packet_too_big(ROUTER6, VIP6, 1280, &reply_as_sent.packet()).ext(hop_by_hop()),
        );
        let mut to_backend_ext =
            Frame6::packet_too_big(ROUTER6, B6[0], 1280, &reply_as_backend_sent.packet())
                .ext(hop_by_hop());
        to_backend_ext.hop_limit -= 1;
        let to_backend_ext = to_backend_ext.macs(LB_BACKEND_MAC, B_MAC[0]).build();
        let unreachable_ext =
            Frame6::icmp6_error(B6[0], CLIENT6, 1, 4, [0; 4], &as_backend_got.packet())
                .ext(opts())
                .macs(B_MAC[0], LB_BACKEND_MAC);
        let mut to_client_ext =
            Frame6::icmp6_error(VIP6, CLIENT6, 1, 4, [0; 4], &as_client_sent.packet()).ext(opts());
        to_client_ext.hop_limit -= 1;
        let to_client_ext = to_client_ext.macs(LB_CLIENT_MAC, CLIENT_MAC).build();
        let udp = from_client6(Frame6::udp((CLIENT6, 40002), (VIP6, 53)).payload(b"query"));
        let cases = vec![
            lab.case6(
                "SYN",
                lab.client_if,
                syn.build(),
                XDP_REDIRECT,
                Reason::Forwarded,
                Output::Exactly(to_backend6(&syn, 8080)),
            ),
            lab.case6(
                "a client packet too big for the backend side",
                lab.client_if,
                big.build(),
                XDP_TX,
                Reason::IcmpFragNeededToClient,
                Output::Exactly(ptb_to_client.clone()),
            ),
            lab.case6(
                "a client packet with extension headers too big for the backend side",
                lab.client_if,
                big_ext.build(),
                XDP_TX,
                Reason::IcmpFragNeededToClient,
                Output::Exactly(ptb_ext_to_client.clone()),
            ),
            lab.case6(
                "a backend's reply too big for the client side",
                lab.backend_if,
                big_reply.build(),
                XDP_TX,
                Reason::IcmpFragNeededToBackend,
                Output::Exactly(ptb_to_backend.clone()),
            ),
            lab.case6(
                "Packet Too Big from the client's path, about a reply",
                lab.client_if,
                path_ptb.build(),
                XDP_REDIRECT,
                Reason::IcmpToBackend,
                Output::Exactly(to_backend.clone()),
            ),
            lab.case6(
                "UDP datagram (its flow)",
                lab.client_if,
                udp.build(),
                XDP_REDIRECT,
                Reason::Forwarded,
                Output::Exactly(to_backend6(&udp, 5353)),
            ),
            lab.case6(
                "port unreachable from the backend",
                lab.backend_if,
                unreachable.build(),
                XDP_REDIRECT,
                Reason::IcmpToClient,
                Output::Exactly(to_client.clone()),
            ),
            lab.case6(
                "Packet Too Big from the client's path, behind a hop-by-hop header",
                lab.client_if,
                path_ptb_ext.build(),
                XDP_REDIRECT,
                Reason::IcmpToBackend,
                Output::Exactly(to_backend_ext.clone()),
            ),
            lab.case6(
                "port unreachable from the backend, behind destination options",
                lab.backend_if,
                unreachable_ext.build(),
                XDP_REDIRECT,
                Reason::IcmpToClient,
                Output::Exactly(to_client_ext.clone()),
            ),
            lab.case6(
                "port unreachable from the backend, hop limit 1",
                lab.backend_if,
                last_hop.build(),
                XDP_PASS,
                Reason::PassTtlExpired,
                Output::Unchanged,
            ),
        ];
        for out in [
            &ptb_to_client,
            &ptb_ext_to_client,
            &ptb_to_backend,
            &to_backend,
            &to_client,
            &to_backend_ext,
            &to_client_ext,
        ] {
            packet::verify6(out).unwrap_or_else(|e| panic!("expected frame: {e}"));
        }
        check(&mut dp, &cases);
    });
}

/// The filter of established keys holds IPv6 keys too (see
/// `the_flow_filter_keeps_every_established_key_across_sweeps`): the promotion of an IPv6
/// flow sets its bit, sweeps keep it, and a forged RST and SYN after them still reach the
/// connection's backend under `wrr`, which would give a SYN that missed the entry to the
/// other backend.
#[test]
fn the_flow_filter_keeps_established_ipv6_keys_across_sweeps() {
    use packet::Frame6;
    let Some(lab) = lab6("fx6filter") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            "
vserver_groups:
  - name: web
    servers:
      - { address: 2001:db8:18:1::10, port: 8080 }
      - { address: 2001:db8:18:1::11, port: 8080 }
listeners:
  - { name: web6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: web, scheduler: wrr }
",
        );
        let client = |flags: u8, seq: u32, ack: u32| {
            from_client6(Frame6::tcp((CLIENT6, 44_600), (VIP6, 80), flags).seq_ack(seq, ack))
        };
        let key = <lb_common::V6 as lb_common::Family>::flow_key(
            lb_common::family::addr6(CLIENT6.octets()),
            lb_common::family::addr6(VIP6.octets()),
            44_600u16.to_be(),
            80u16.to_be(),
            6,
        );
        let held = |dp: &DataPlane| lb_ctl::flow_filter::may_hold(dp.flow_filter(), &key);
        assert!(!held(&dp), "a fresh filter holds no key");
        let syn = client(SYN, 1000, 0);
        let (verdict, out) = run(&mut dp, lab.client_if, &syn.build());
        assert_eq!(verdict, XDP_REDIRECT, "the SYN is forwarded");
        let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap());
        let first = B6.iter().position(|b| *b == dst).expect("sent to a backend");
        assert!(!held(&dp), "a half-open flow is not in the table of established ones");
        let to_first = |name, f: &Frame6| {
            let mut out = f.clone();
            out.dst = B6[first];
            out.dst_port = 8080;
            out.hop_limit -= 1;
            lab.case6(
                name,
                lab.client_if,
                f.build(),
                XDP_REDIRECT,
                Reason::Forwarded,
                Output::Exactly(out.macs(LB_BACKEND_MAC, B_MAC[first]).build()),
            )
        };
        let ack = client(ACK, 1001, 5001);
        check(&mut dp, &[to_first("the client's ACK", &ack)]);
        assert!(held(&dp), "the promotion set the key's bit");
        for sweep in 0..2 {
            let flows = dp.sweep_flows().unwrap();
            assert_eq!(flows.len(), 1, "sweep {sweep}");
            assert!(held(&dp), "sweep {sweep} kept the key");
        }
        let forged_rst = client(RST | ACK, 0x5eed_1234, 0);
        check(
            &mut dp,
            &[
                to_first("a forged RST after the sweeps", &forged_rst),
                to_first("a SYN after it stays with the connection's backend", &syn),
                to_first("the client's next ACK", &ack),
            ],
        );
        assert!(held(&dp));
    });
}

/// The access list and persistence over IPv6: an IPv6 prefix of a deny list drops its
/// sources before any state; a persistent listener sends a client's next connection to
/// the backend of its first, whatever the scheduler would pick.
#[test]
fn ipv6_access_lists_and_persistence_work_as_over_ipv4() {
    use packet::Frame6;
    const DENIED6: std::net::Ipv6Addr =
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0xbad, 1);
    let Some(lab) = lab6("fx6acl") else { return };
    lab.ns
        .neigh_permanent("cl0", DENIED6, &mac_string(CLIENT_MAC));
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            "
acls:
  - { name: blocked, entries: ['2001:db8:18::bad:0/112', 198.18.9.0/24] }
vserver_groups:
  - name: web
    servers:
      - { address: 2001:db8:18:1::10, port: 8080 }
      - { address: 2001:db8:18:1::11, port: 8080 }
listeners:
  - { name: web6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: web, scheduler: rr, persistence_timeout: 60, acl: { type: deny, name: blocked } }
",
        );
        let denied = from_client6(Frame6::tcp((DENIED6, 40000), (VIP6, 80), SYN)).build();
        let (verdict, _) = run(&mut dp, lab.client_if, &denied);
        assert_eq!(verdict, XDP_DROP, "a denied IPv6 source");
        assert_eq!(dp.counters().unwrap()["drop_acl_denied"], 1);
        assert!(dp.flows().unwrap().is_empty(), "nothing recorded for it");

        // rr alternates; persistence keeps the client on its first backend.
        let mut first = None;
        for sport in 41000..41006 {
            let syn = from_client6(Frame6::tcp((CLIENT6, sport), (VIP6, 80), SYN)).build();
            let (verdict, out) = run(&mut dp, lab.client_if, &syn);
            assert_eq!(verdict, XDP_REDIRECT, "SYN from port {sport}");
            packet::verify6(&out).unwrap_or_else(|e| panic!("{e}"));
            let backend = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&out[14 + 24..14 + 40]).unwrap());
            assert!(B6.contains(&backend), "{backend}");
            assert_eq!(*first.get_or_insert(backend), backend, "port {sport} stays on {backend}");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Direct server return over IPv6

/// `forwarding: dsr` over IPv6: one backend, B6[0], for TCP VIP6:80 and UDP VIP6:53 (ports
/// kept), and `dsr` settings.
fn dsr6_config(dsr: &str) -> String {
    format!(
        "
forwarding: dsr
dsr: {dsr}
vserver_groups:
  - name: web
    servers: [{{ address: 2001:db8:18:1::10, port: 80 }}]
  - name: dns
    servers: [{{ address: 2001:db8:18:1::10, port: 53 }}]
listeners:
  - {{ name: web6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: web }}
  - {{ name: dns6, protocol: udp, address: 2001:db8:19::100, port: 53, server_group: dns }}
"
    )
}

/// The LB's address on the backend side (`lab6`): the source the route to B6 prefers.
const LB_BACKEND6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 1);

/// The outer flow label of a flow (RFC 6438): 20 bits of the 4-tuple's hash (the one the
/// Maglev pickup uses), and 1 where those are 0 (0 means "not labelled", RFC 6437).
fn flow_label6(client: (std::net::Ipv6Addr, u16), vip: (std::net::Ipv6Addr, u16)) -> u32 {
    let w = |a: std::net::Ipv6Addr| lb_common::family::addr6(a.octets());
    let hash = lb_common::hash::hash_tuple6(w(client.0), w(vip.0), port(client.1), port(vip.1));
    match hash & 0xf_ffff {
        0 => 1,
        label => label,
    }
}

/// The frame the LB sends toward a backend for `inner` (an IPv6 frame) in DSR, written
/// out byte by byte from the RFCs rather than from the code under test: Ethernet `macs`
/// (source, destination), an outer IPv6 header (version 6, the inner traffic class, flow
/// label `label`, payload length, next header 41, or 17 with a UDP header to `gue` =
/// (source port, port) whose checksum is 0, hop limit 64), then the client's IPv6
/// packet exactly as it came (hop limit and all).
fn encapsulated6(
    inner: &[u8],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    label: u32,
    gue: Option<(u16, u16)>,
    macs: (Mac, Mac),
) -> Vec<u8> {
    let packet = &inner[14..];
    let traffic_class = packet[0] << 4 | packet[1] >> 4;
    let udp_len = if gue.is_some() { 8 } else { 0 };
    let mut out = Vec::new();
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&macs.0);
    out.extend_from_slice(&[0x86, 0xdd]);
    let first = 6 << 28 | u32::from(traffic_class) << 20 | label;
    out.extend_from_slice(&first.to_be_bytes());
    out.extend_from_slice(&((packet.len() + udp_len) as u16).to_be_bytes());
    out.push(if gue.is_some() { 17 } else { 41 });
    out.push(64);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    if let Some((sport, dport)) = gue {
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&dport.to_be_bytes());
        out.extend_from_slice(&((packet.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(packet);
    out
}

impl Lab {
    /// A client frame encapsulated in ip6ip6 to B6[0] from `src`, out of the backend side.
    fn tunnelled6(
        &self,
        name: &'static str,
        frame: &packet::Frame6,
        src: std::net::Ipv6Addr,
    ) -> Case {
        let input = frame.build();
        let label = flow_label6((frame.src, frame.src_port), (frame.dst, frame.dst_port));
        Case {
            name,
            ingress: self.client_if,
            output: Output::Exactly(encapsulated6(
                &input,
                src,
                B6[0],
                label,
                None,
                (LB_BACKEND_MAC, B_MAC[0]),
            )),
            input,
            verdict: XDP_REDIRECT,
            reason: Reason::Encapsulated,
        }
    }
}

/// ip6ip6: every client packet goes whole, hop limit untouched, inside an outer IPv6
/// header from the route's source to the backend, its flow label from the flow's hash;
/// one too big once encapsulated is answered with Packet Too Big carrying the MTU left
/// inside the tunnel; an ICMPv6 error about the backend's own reply goes to it through
/// the tunnel, untouched.
#[test]
fn dsr6_ip6ip6_carries_the_client_packet_whole_from_the_route_s_source() {
    use packet::{ExtHeader, Frame6};
    const ROUTER6: std::net::Ipv6Addr =
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0xfe);
    let Some(lab) = lab6("fx6dsr") else { return };
    lab.ns.ip(["link", "set", "be0", "mtu", "1400"]);
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(&mut dp, &dsr6_config("{ encapsulation: ipip }"));
        // No dsr.source: the FIB's preferred source toward B6[0], be0's address.
        let lb = LB_BACKEND6;
        let syn = from_client6(Frame6::tcp((CLIENT6, 41000), (VIP6, 80), SYN).seq_ack(1000, 0));
        let ack = from_client6(
            Frame6::tcp((CLIENT6, 41000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .payload(b"GET / HTTP/1.1\r\n\r\n"),
        );
        let datagram = from_client6(Frame6::udp((CLIENT6, 33300), (VIP6, 53)).payload(b"query"));
        // EF and a flow label of the client's own: the outer header copies the class and
        // labels the flow itself.
        let dscp = from_client6(
            Frame6::tcp((CLIENT6, 41000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .traffic_class(0xb8)
                .flow_label(0x12345),
        );
        let options = from_client6(
            Frame6::tcp((CLIENT6, 41000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .ext(ExtHeader::DestOpts(vec![1, 2, 0, 0])),
        );
        // 1380 bytes fit the 1400-byte egress bare, not with 40 bytes of IPv6 in front.
        let upload = from_client6(
            Frame6::tcp((CLIENT6, 41000), (VIP6, 80), ACK)
                .seq_ack(1001, 5001)
                .payload(&[0x5a; 1320]),
        );
        let upload_packet = upload.packet();
        let ptb = Frame6::packet_too_big(VIP6, CLIENT6, 1360, &upload_packet[..48])
            .macs(LB_CLIENT_MAC, CLIENT_MAC)
            .build();
        let upload_options = upload.clone().ext(ExtHeader::DestOpts(vec![1, 2, 0, 0]));
        // Its answer quotes the destination options (8 bytes) too.
        let options_packet = upload_options.packet();
        let ptb_options = Frame6::packet_too_big(VIP6, CLIENT6, 1360, &options_packet[..56])
            .macs(LB_CLIENT_MAC, CLIENT_MAC)
            .build();
        // What the backend answers the client with: from the VIP, straight to the client.
        // Should it cross the LB, it is not the LB's to touch.
        let direct_reply = Frame6::tcp((VIP6, 80), (CLIENT6, 41000), ACK)
            .seq_ack(5001, 1001)
            .macs(B_MAC[0], LB_BACKEND_MAC);
        // A router on the client's path cannot pass a reply on: its Packet Too Big comes
        // to the VIP, so to the LB, which tunnels it to the backend untouched.
        let reply = Frame6::tcp((VIP6, 80), (CLIENT6, 41000), ACK)
            .seq_ack(5001, 1001)
            .payload(&[9; 100]);
        let path_ptb =
            from_client6(Frame6::packet_too_big(ROUTER6, VIP6, 1280, &reply.packet())).build();
        let path_label = flow_label6((CLIENT6, 41000), (VIP6, 80));
        let cases = vec![
            lab.tunnelled6("SYN: encapsulated whole, hop limit kept", &syn, lb),
            lab.tunnelled6("the flow's next segment", &ack, lb),
            lab.tunnelled6("a UDP datagram", &datagram, lb),
            lab.tunnelled6(
                "the traffic class is copied, the flow label is the tunnel's",
                &dscp,
                lb,
            ),
            lab.tunnelled6("extension headers travel inside, untouched", &options, lb),
            lab.case6(
                "too big once encapsulated: the client learns the MTU left inside the \
                 tunnel, 1360",
                lab.client_if,
                upload.build(),
                XDP_TX,
                Reason::IcmpFragNeededToClient,
                Output::Exactly(ptb.clone()),
            ),
            lab.case6(
                "too big with extension headers: answered alike, the headers quoted",
                lab.client_if,
                upload_options.build(),
                XDP_TX,
                Reason::IcmpFragNeededToClient,
                Output::Exactly(ptb_options.clone()),
            ),
            lab.case6(
                "Packet Too Big about the backend's reply goes to it, tunnelled",
                lab.client_if,
                path_ptb.clone(),
                XDP_REDIRECT,
                Reason::IcmpToBackend,
                Output::Exactly(encapsulated6(
                    &path_ptb,
                    lb,
                    B6[0],
                    path_label,
                    None,
                    (LB_BACKEND_MAC, B_MAC[0]),
                )),
            ),
            lab.case6(
                "the backend's own answer to the client is not the LB's",
                lab.backend_if,
                direct_reply.build(),
                XDP_PASS,
                Reason::PassNotForUs,
                Output::Unchanged,
            ),
        ];
        for out in [&ptb, &ptb_options] {
            packet::verify6(out).unwrap_or_else(|e| panic!("expected frame: {e}"));
        }
        check(&mut dp, &cases);
        // The listener counted the client's packets it sent, not the error nor the packet
        // answered instead.
        let stats = dp.listener_stats(fx.listener_id("web6")).unwrap();
        assert_eq!(stats.packets, 4, "{stats:?}");
    });
}

/// GUE over IPv6 from a `dsr.source` prefix: UDP to the GUE port (checksum 0, RFC
/// 6935), the outer source's host bits, the UDP source port and the flow label all from
/// the flow's hash, so flows spread over a backend's queues however its NIC hashes.
#[test]
fn dsr6_gue_spreads_flows_over_outer_sources_ports_and_labels() {
    use packet::Frame6;
    let Some(lab) = lab6("fx6gue") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            &dsr6_config(
                "{ encapsulation: gue, gue_port: 6080, source: [198.18.9.0/24, '2001:db8:9::/112'] }",
            ),
        );
        let mut cases = Vec::new();
        let mut sources = std::collections::BTreeSet::new();
        for sport in [42000, 42001, 42002, 42003] {
            let frame = from_client6(Frame6::tcp((CLIENT6, sport), (VIP6, 80), SYN));
            let w = |a: std::net::Ipv6Addr| lb_common::family::addr6(a.octets());
            let hash =
                lb_common::hash::hash_tuple6(w(CLIENT6), w(VIP6), port(sport), port(80));
            let src = std::net::Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, hash as u16);
            let gue_port = 0xc000 | (hash as u16 & 0x3fff);
            sources.insert(src);
            let input = frame.build();
            cases.push(Case {
                name: "a SYN in GUE over IPv6: UDP to 6080 from a port, an address and a label \
                       of the flow's hash",
                ingress: lab.client_if,
                output: Output::Exactly(encapsulated6(
                    &input,
                    src,
                    B6[0],
                    flow_label6((CLIENT6, sport), (VIP6, 80)),
                    Some((gue_port, 6080)),
                    (LB_BACKEND_MAC, B_MAC[0]),
                )),
                input,
                verdict: XDP_REDIRECT,
                reason: Reason::Encapsulated,
            });
        }
        check(&mut dp, &cases);
        assert!(
            sources.len() > 1,
            "four flows, one outer source: {sources:?}"
        );
    });
}

#[test]
fn dsr6_to_an_unknown_neighbour_hands_the_kernel_the_encapsulated_packet() {
    use packet::Frame6;
    const NO_NEIGH6: std::net::Ipv6Addr =
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 0x12);
    let Some(lab) = lab6("fx6dsn") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(
            &mut dp,
            "
forwarding: dsr
dsr: { source: '2001:db8:18:1::1' }
vserver_groups:
  - name: web
    servers: [{ address: 2001:db8:18:1::12, port: 80 }]
listeners:
  - { name: web6, protocol: tcp, address: 2001:db8:19::100, port: 80, server_group: web }
",
        );
        let syn = from_client6(Frame6::tcp((CLIENT6, 43000), (VIP6, 80), SYN));
        let input = syn.build();
        check(
            &mut dp,
            &[Case {
                name: "the kernel resolves the neighbour and forwards the outer packet; the \
                       frame keeps the addresses it came with, which the kernel checks",
                ingress: lab.client_if,
                output: Output::Exactly(encapsulated6(
                    &input,
                    LB_BACKEND6,
                    NO_NEIGH6,
                    flow_label6((CLIENT6, 43000), (VIP6, 80)),
                    None,
                    (CLIENT_MAC, LB_CLIENT_MAC),
                )),
                input,
                verdict: XDP_PASS,
                reason: Reason::PassNeighUnknown,
            }],
        );
    });
}

/// The tunnel's stage run on its own, with a packet that is not its hand-off's: nothing
/// is sent, the packet is left as it was.
#[test]
fn the_ipv6_tunnel_stage_without_its_hand_off_drops() {
    use packet::Frame6;
    let Some(lab) = lab6("fx6enc") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        provision(&mut dp, &dsr6_config("{ encapsulation: ipip }"));
        let first = from_client6(Frame6::tcp((CLIENT6, 40700), (VIP6, 80), SYN));
        let (verdict, _) = run(&mut dp, lab.client_if, &first.build());
        assert_eq!(verdict, XDP_REDIRECT, "the first SYN is tunnelled");
        let other = from_client6(Frame6::tcp((CLIENT6, 40701), (VIP6, 80), SYN));
        let (verdict, out) = run_program(
            &mut dp,
            lb_common::names::PROGRAM_ENCAP6,
            lab.client_if,
            &other.build(),
        );
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(out, other.build(), "the packet is left as it was");
    });
}

/// The probe tunnel over IPv6: a marked IPv6 probe to an IPv6 DSR listener's VIP:port
/// gets its backend's outer IPv6 header, from the probe's own source (no IPv6 source in
/// `dsr.source` here), and is redirected; unmarked or unknown, as over IPv4.
#[test]
fn dsr6_probes_are_tunnelled_to_their_backend_and_nothing_else_is_touched() {
    use packet::Frame6;
    let Some(lab) = lab6("fx6prb") else { return };
    lab.ns.enter(|| {
        let mut dp = load(&lab);
        let fx = provision(
            &mut dp,
            &dsr6_config("{ encapsulation: gue, source: 198.18.9.1 }"),
        );
        let id = fx
            .listener("web6")
            .backends
            .iter()
            .find(|b| b.key.address == IpAddr::V6(B6[0]))
            .expect("B6[0] serves web6")
            .id;
        let mark = lb_common::probe_mark(id);
        let probe = Frame6::tcp((LB_BACKEND6, 45000), (VIP6, 80), SYN)
            .macs(LB_BACKEND_MAC, B_MAC[1])
            .build();
        let elsewhere = Frame6::tcp((LB_BACKEND6, 45000), (VIP6, 81), SYN)
            .macs(LB_BACKEND_MAC, B_MAC[1])
            .build();
        let program: &mut aya::programs::SchedClassifier = dp
            .ebpf_mut()
            .program_mut(lb_common::names::PROGRAM_PROBE_TUNNEL)
            .expect("the object has the probe tunnel")
            .try_into()
            .expect("a TC program");
        let run = |mark: u32, frame: &[u8]| {
            xdp::run_tc_program(program, lab.backend_if, mark, frame).expect("test run")
        };

        let (action, out) = run(mark, &probe);
        let w = |a: std::net::Ipv6Addr| lb_common::family::addr6(a.octets());
        let hash = lb_common::hash::hash_tuple6(w(LB_BACKEND6), w(VIP6), port(45000), port(80));
        let mut want = encapsulated6(
            &probe,
            LB_BACKEND6,
            B6[0],
            flow_label6((LB_BACKEND6, 45000), (VIP6, 80)),
            Some((0xc000 | (hash as u16 & 0x3fff), 6080)),
            (LB_BACKEND_MAC, B_MAC[1]),
        );
        // The Ethernet header is the probe's own: the redirect fills in the next hop's.
        want[..12].copy_from_slice(&probe[..12]);
        assert_eq!(action, 7, "a marked probe is redirected");
        assert!(out == want, "the tunnelled probe:\n{}", diff(&out, &want));

        assert_eq!(run(0, &probe), (0, probe.clone()), "unmarked: untouched");
        assert_eq!(
            run(lb_common::probe_mark(63), &probe).0,
            2,
            "no such backend"
        );
        assert_eq!(run(mark, &elsewhere).0, 2, "no listener on VIP6:81");
    });
}
