//! The packet fuzzer's CI slice: 20,000 seeded frames, IPv4 and IPv6, through the XDP
//! program with BPF_PROG_TEST_RUN, each checked against the packet policy's model (see
//! `lb_tests::fuzz`). `lb-fuzz --packets N --seed S` runs the long version.
//!
//! `LB_FUZZ_SEED` (decimal or 0x-hex) and `LB_FUZZ_PACKETS` override the seed and count.

use std::env;

use lb_tests::{
    fuzz::{self, FuzzOptions, Lab},
    require_root_and_bpf,
};

const PACKETS: u64 = 20_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

#[test]
fn fuzzed_frames_follow_the_packet_policy() {
    if !require_root_and_bpf("fuzzed_frames_follow_the_packet_policy") {
        return;
    }
    let options = FuzzOptions {
        seed: env_u64("LB_FUZZ_SEED").unwrap_or(FuzzOptions::default().seed),
        packets: env_u64("LB_FUZZ_PACKETS").unwrap_or(PACKETS),
        ..FuzzOptions::default()
    };
    println!(
        "fuzz seed {:#x}, {} frames (LB_FUZZ_SEED / LB_FUZZ_PACKETS change them; \
         `lb-fuzz --seed {:#x} --packets N` reproduces)",
        options.seed, options.packets, options.seed
    );
    let lab = Lab::build("fuzz");
    let report = fuzz::run(&lab, &options).expect("the lab and the program are usable");
    println!("{report}");
    assert_eq!(report.packets, options.packets);
    assert!(
        report.run() > options.packets * 9 / 10,
        "most frames ran: {report}"
    );
    for reason in [
        "forwarded",
        "reply_forwarded",
        "icmp_to_backend",
        "icmp_to_client",
        "pass_not_ip",
        "pass_other_protocol",
        "pass_not_for_us",
        "drop_vip_no_listener",
        "drop_vip_other_protocol",
        "icmp_echo_reply",
        "pass_ttl_expired",
        "pass_neighbour_unknown",
        "pass_frag_needed",
        "icmp_frag_needed_to_client",
        "icmp_frag_needed_to_backend",
        "pass_no_tx_port",
        "drop_malformed_ipv4",
        "drop_malformed_ipv6",
        "drop_extension_header",
        "pass_neighbour_discovery",
        "drop_malformed_l4",
        "drop_fragment",
        "drop_no_backend",
        "drop_reverse_collision",
        "drop_no_route",
        "drop_acl_denied",
    ] {
        assert!(
            report.reasons.get(reason).copied().unwrap_or(0) > 0,
            "the generator reaches {reason}: {report}"
        );
    }
    // IPv6 frames reach every verdict of the IPv6 policy an IPv6 listener makes
    // reachable: forwarded both ways (counted under `forwarded` and `reply_forwarded`
    // with IPv4's), ICMPv6 errors translated both ways, echo answered, Packet Too Big
    // sent both ways (counted with IPv4's fragmentation needed; extension headers quoted,
    // so no IPv6 TCP/UDP packet is left to the kernel's `pass_frag_needed`), and each way
    // of refusing or passing.
    for reason in [
        "forwarded",
        "reply_forwarded",
        "icmp_to_backend",
        "icmp_to_client",
        "icmp_echo_reply",
        "icmp_frag_needed_to_client",
        "icmp_frag_needed_to_backend",
        "drop_malformed_ipv6",
        "drop_extension_header",
        "drop_fragment",
        "drop_malformed_l4",
        "pass_neighbour_discovery",
        "drop_vip_other_protocol",
        "pass_other_protocol",
        "drop_vip_no_listener",
        "pass_not_for_us",
        "pass_ttl_expired",
        "pass_neighbour_unknown",
        "pass_no_tx_port",
        "drop_no_route",
        "drop_acl_denied",
        "drop_reverse_collision",
    ] {
        assert!(
            report.reasons6.get(reason).copied().unwrap_or(0) > 0,
            "the generator reaches {reason} with IPv6 frames: {report}"
        );
    }
    assert!(
        report.contested_replies > 0,
        "the generator makes backend packets that flows of two listeners could answer: {report}"
    );
    assert!(
        report.ok(),
        "the program disagrees with the policy:\n{report}"
    );
}

/// Table exhaustion at the packet level, deterministic: a flow table of 1024 entries, one
/// established flow whose client keeps sending (its flow entry stays recently used) and
/// whose backend is quiet for a while, then 4096 short connections (SYN, SYN-ACK, RST)
/// to another VIP. The policy's promise for an established flow is that it keeps going
/// (LRU evicts the idle entries): after the churn the client's packets still reach the
/// same backend, and the backend's answer must still be translated back to the VIP
/// (`reply_forwarded`), not handed to the kernel untranslated (`pass_not_for_us`): the
/// reply finds its flow through the flow entry the client keeps young. `LB_CHURN_FLOWS` and
/// `LB_CHURN_EVERY` change the churn and how often the client sends.
#[test]
fn reply_path_of_a_live_flow_survives_flow_table_churn() {
    use std::net::Ipv4Addr;

    use lb_common::Reason;
    use lb_ctl::dataplane::DataPlane;
    use lb_tests::{
        fuzz::{
            B0, B1, CLIENT, CLIENT_MAC, CLIENT_NO_NEIGH, LB_BACKEND_MAC, LB_CLIENT_MAC, Setup, VIP,
            VIP2,
        },
        packet::{ACK, Frame, PSH, RST, SYN},
    };

    fn run(dp: &mut DataPlane, ingress: u32, frame: &[u8]) -> (u32, Reason, Vec<u8>) {
        let (action, reason, out) =
            fuzz::run_counted(dp, ingress, frame).expect("BPF_PROG_TEST_RUN");
        (
            action,
            reason.expect("exactly one verdict counter moved"),
            out,
        )
    }
    fn dst(out: &[u8]) -> Ipv4Addr {
        Ipv4Addr::new(out[30], out[31], out[32], out[33])
    }

    if !require_root_and_bpf("reply_path_of_a_live_flow_survives_flow_table_churn") {
        return;
    }
    let churn = env_u64("LB_CHURN_FLOWS").unwrap_or(4096);
    let every = env_u64("LB_CHURN_EVERY").unwrap_or(16).max(1);
    let lab = Lab::build("chrn");
    lab.ns().enter(|| {
        let setup = Setup::standard();
        let mut dp = fuzz::load(&lab, &setup, 1024).expect("the program loads");
        let from_client = |f: Frame| f.macs(CLIENT_MAC, LB_CLIENT_MAC).build();
        // A client port that VIP:80 (tch) sends to a backend with a neighbour entry.
        let (sport, backend) = (40000u16..40100)
            .find_map(|sport| {
                let syn = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), SYN));
                let (_, reason, out) = run(&mut dp, lab.client_if, &syn);
                let to = dst(&out);
                (reason == Reason::Forwarded && (to == B0 || to == B1)).then_some((sport, to))
            })
            .expect("some port lands on B0 or B1");
        let from_backend = |flags: u8, payload: &[u8]| {
            Frame::tcp((backend, 8080), (CLIENT, sport), flags)
                .payload(payload)
                .macs([0x02, 0, 0, 0, 0, 0xb0], LB_BACKEND_MAC)
                .build()
        };
        let ack = from_client(Frame::tcp((CLIENT, sport), (VIP, 80), ACK).payload(b"more"));
        let (_, reason, _) = run(&mut dp, lab.backend_if, &from_backend(SYN | ACK, b""));
        assert_eq!(
            reason,
            Reason::ReplyForwarded,
            "the SYN-ACK goes back to the client"
        );

        // New flows to VIP2:80; the client of the established flow sends every `every` of
        // them, its backend stays quiet.
        let mut client_side = Vec::new();
        for i in 0..churn {
            // Each a real (short) connection attempt: SYN, the backend's SYN-ACK, the
            // client's RST, so its entries are used again after they are made, as every
            // flow's are.
            let port = 1024 + (i % 60000) as u16;
            let syn = from_client(Frame::tcp((CLIENT_NO_NEIGH, port), (VIP2, 80), SYN));
            run(&mut dp, lab.client_if, &syn);
            let syn_ack = Frame::tcp((B0, 8080), (CLIENT_NO_NEIGH, port), SYN | ACK)
                .macs([0x02, 0, 0, 0, 0, 0xb0], LB_BACKEND_MAC)
                .build();
            run(&mut dp, lab.backend_if, &syn_ack);
            let rst = from_client(Frame::tcp((CLIENT_NO_NEIGH, port), (VIP2, 80), RST));
            run(&mut dp, lab.client_if, &rst);
            if i % every == every - 1 {
                let (reason, _, out) = {
                    let (a, r, o) = run(&mut dp, lab.client_if, &ack);
                    (r, a, o)
                };
                client_side.push((reason, dst(&out)));
            }
        }
        let kept = client_side
            .iter()
            .filter(|&&(r, to)| r == Reason::Forwarded && to == backend)
            .count();
        let (action, reason, out) =
            run(&mut dp, lab.backend_if, &from_backend(ACK | PSH, b"answer"));
        // The client goes on; does the return path come back?
        let (_, again_client, _) = run(&mut dp, lab.client_if, &ack);
        let (_, again, _) = run(&mut dp, lab.backend_if, &from_backend(ACK | PSH, b"again"));
        let flow = dp
            .flows()
            .expect("reading the flow table")
            .into_iter()
            .any(|(k, _)| k.client().port() == sport && k.vip().port() == 80);
        println!(
            "{churn} new flows into a 1024-entry table, the client sending every {every}: \
             {kept}/{} client packets to {backend}; flow entry present afterwards: {flow}; \
             the backend's answer: {} (action {action}); after one more client packet \
             ({}) the next answer: {}",
            client_side.len(),
            reason.name(),
            again_client.name(),
            again.name(),
        );
        assert_eq!(
            kept,
            client_side.len(),
            "the established flow's client packets keep going to {backend}: {client_side:?}"
        );
        assert_eq!(
            reason,
            Reason::ReplyForwarded,
            "the backend's answer on the live flow ({backend}:8080 → {CLIENT}:{sport}) is \
             translated back to {VIP}:80; observed action {action} with {} (flow entry \
             present: {flow}), output source {}; the next answer after another client \
             packet: {}",
            reason.name(),
            Ipv4Addr::new(out[26], out[27], out[28], out[29]),
            again.name(),
        );
    });
}
