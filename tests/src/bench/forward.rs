//! Part 2: forwarding rate on veth, the whole chain on one vCPU.
//!
//! ```text
//!  generator ns (<p>g)               LB ns (<p>l)                          sink ns (<p>s)
//!  g0 198.18.0.2 ──veth── lb-in 198.18.0.1        lb-out 198.18.1.1 ──veth── s0 198.18.1.2
//!  lb_bench → lb_redirect             (the case under test)                 lb_sink (native)
//! ```
//!
//! The generator is `lb_bench` run in live-frames mode on g0: it restores the 64-byte UDP
//! frame on every run (a receiving program's rewrites come back with recycled pages, so
//! `lb_gen`, which only rewrites the source, would resend NATed frames), optionally
//! writes a new source, and tail-calls `lb_redirect`, which sends the frame out of g0.
//! Live-frames batches run with bottom halves disabled and the receiving veths' NAPI runs
//! when they are enabled again, on the same CPU: generator, LB and sink share one vCPU,
//! as in the peer figures.
//!
//! Some kernel builds refuse live frames (EPERM for any program, see
//! [`kit::live_frames_refused`]). The generator then starts each run from a frame a user
//! space [`Feeder`] sends into `feed0`: `lb_bench`, attached natively on its peer `feed1`,
//! rewrites it and tail-calls `lb_redirect` out of g0 exactly as in live-frames mode, so
//! the LB still receives frames redirected by XDP (not skbs from a socket, which veth
//! would copy into new pages first). Every path pays the feeder's cost alike; the report
//! says which generator ran.
//!
//! New flows: every run gets a source from a fresh counter segment ([`FlowSpace`]); each
//! segment keeps one source address, and the frame the wrapper restores carries that
//! address with a correct IPv4 checksum, so the kernel's own forwarding (nftables,
//! routing) accepts the frames too; the UDP checksum is 0 (none), which the port rewrite
//! leaves valid. Every case, the ceiling included, sends the same frames in the same
//! calls (1024 frames per BPF_PROG_RUN, batches of 64).
//!
//! DSR: `forwarding: dsr` is a config-wide mode, so its path runs on a second LB data
//! plane, provisioned like the first but with the backends on the VIP's port (DSR leaves
//! ports alone). Its frames reach the sink 20 bytes longer (IPIP); the sink counts them
//! alike.

use std::{
    fs, io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};
use lb_common::{Reason, Scheduler};
use lb_ctl::{
    config::{Dsr, Forwarding, Protocol, Tunnel},
    dataplane::{DataPlane, LoadOptions, MapSizes},
};

use super::{
    kit::{self, FRAME_LEN, FlowSpace, Kit, SEGMENT, wrapper_source},
    util::{KnobGuard, Summary, bench_cpu, conntrack_flush, pin_to_cpu, say},
};
use crate::{
    Netns, TEST_OBJECT,
    packet::{Frame, Mac, parse_mac},
    unique_prefix, veth,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// The backend port of the DSR path: DSR cannot rewrite ports, so the backends listen on
/// the port the frames are sent to.
const DSR_BACKEND_PORT: u16 = VIP_PORT;
const BACKENDS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 1, 11),
    Ipv4Addr::new(198, 18, 1, 12),
    Ipv4Addr::new(198, 18, 1, 13),
    Ipv4Addr::new(198, 18, 1, 14),
];
/// Source of the established flow: outside the new-flow space (198.18.128.0/17, ports
/// from 1024).
const EST_SOURCE: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 127, 1), 999);
/// Frames per BPF_PROG_RUN call and per live-frames batch.
const BATCH: u32 = 64;
/// The flow table of the LB under test, as in part 1.
const FLOW_TABLE: u32 = 4 << 20;
/// nf_conntrack_max while the benchmark runs (a round's new flows must fit).
const CONNTRACK_MAX: u64 = 1 << 20;
const CONNTRACK_HASHSIZE: u64 = 1 << 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Ceiling,
    LbEstablished,
    LbDsrEstablished,
    LbNew,
    NftEstablished,
    NftNew,
    Routing,
}

impl Path {
    pub const ALL: [Path; 7] = [
        Path::Ceiling,
        Path::LbEstablished,
        Path::LbDsrEstablished,
        Path::LbNew,
        Path::NftEstablished,
        Path::NftNew,
        Path::Routing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path::Ceiling => "bare XDP redirect (ceiling)",
            Path::LbEstablished => "this LB, established flow",
            Path::LbDsrEstablished => "this LB, DSR ipip, established flow",
            Path::LbNew => "this LB, new flow each packet",
            Path::NftEstablished => "nftables DNAT numgen, established flow",
            Path::NftNew => "nftables DNAT numgen, new flow each packet",
            Path::Routing => "plain kernel routing",
        }
    }

    /// The peer's figure, Mpps (docs/benchmarks.md says where it was measured).
    pub fn peer(self) -> Option<f64> {
        match self {
            Path::Ceiling => Some(2.9),
            Path::Routing => Some(0.85),
            Path::NftEstablished => Some(0.56),
            Path::NftNew => Some(0.43),
            Path::LbEstablished | Path::LbDsrEstablished | Path::LbNew => None,
        }
    }

    fn new_flows(self) -> bool {
        matches!(self, Path::LbNew | Path::NftNew)
    }

    /// Position in [`Path::ALL`].
    fn index(self) -> usize {
        Path::ALL
            .iter()
            .position(|&p| p == self)
            .expect("every path is in Path::ALL")
    }
}

#[derive(Clone, Debug)]
pub struct ForwardOptions {
    pub rounds: usize,
    /// Frames per round, established-flow paths (multiple of 1024).
    pub frames: u32,
    /// Frames per round, new-flow paths (multiple of 1024).
    pub new_flow_frames: u32,
}

#[derive(Clone, Debug)]
pub struct PathResult {
    pub path: Path,
    /// Frames counted by the sink per second of generator time, millions.
    pub mpps: Option<Summary>,
    /// Share of the frames sent that reached the sink (median over rounds).
    pub delivered: Option<Summary>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ForwardReport {
    /// The generator ran in live-frames mode (false: fed from a packet socket, see
    /// [`Feeder`]).
    pub live_frames: bool,
    pub paths: Vec<PathResult>,
    /// Per-round ratios, summarised.
    pub lb_over_ceiling: Option<Summary>,
    pub lb_dsr_over_ceiling: Option<Summary>,
    pub lb_over_nft: Option<Summary>,
    pub lb_new_over_nft_new: Option<Summary>,
    pub notes: Vec<String>,
}

impl ForwardReport {
    pub fn path(&self, path: Path) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.path == path)
    }
}

/// The three namespaces and what runs in them.
struct Rig {
    generator: Netns,
    lb: Netns,
    sink: Netns,
    g0: u32,
    lb_in: u32,
    lb_in_mac: Mac,
    g0_mac: Mac,
}

fn rig() -> Rig {
    let prefix = unique_prefix("bfw");
    let generator = Netns::create(&format!("{prefix}g"));
    let lb = Netns::create(&format!("{prefix}l"));
    let sink = Netns::create(&format!("{prefix}s"));
    for ns in [&generator, &lb, &sink] {
        ns.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ]);
    }
    lb.sysctl("net.ipv4.ip_forward", 1);
    veth(&generator, "g0", &lb, "lb-in");
    veth(&lb, "lb-out", &sink, "s0");
    veth(&generator, "idle0", &sink, "idle1");
    veth(&generator, "feed0", &generator, "feed1");
    for (ns, dev) in [
        (&generator, "feed0"),
        (&generator, "feed1"),
        (&generator, "g0"),
        (&lb, "lb-in"),
        (&lb, "lb-out"),
        (&sink, "s0"),
    ] {
        ns.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), 0);
        ns.link_up(dev);
    }
    // After both ends are up (see `Netns::gro_on`): the ends that receive redirected
    // frames.
    lb.gro_on("lb-in");
    sink.gro_on("s0");
    generator.addr_add("g0", "198.18.0.2/24");
    lb.addr_add("lb-in", "198.18.0.1/24");
    lb.addr_add("lb-out", "198.18.1.1/24");
    sink.addr_add("s0", "198.18.1.2/24");
    let s0_mac = sink.mac("s0");
    for b in BACKENDS {
        lb.neigh_permanent("lb-out", b, &s0_mac);
    }
    Rig {
        g0: generator.ifindex("g0"),
        lb_in: lb.ifindex("lb-in"),
        lb_in_mac: parse_mac(&lb.mac("lb-in")),
        g0_mac: parse_mac(&generator.mac("g0")),
        generator,
        lb,
        sink,
    }
}

/// A 64-byte UDP frame from the generator to the LB, without UDP checksum.
fn udp_frame(rig: &Rig, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut f = Frame::udp(src, dst)
        .no_udp_checksum()
        .macs(rig.g0_mac, rig.lb_in_mac);
    f.payload = vec![0; FRAME_LEN - 42];
    f.build()
}

/// The generator's and the sink's data plane: only their measuring programs run.
fn small_dataplane() -> anyhow::Result<DataPlane> {
    Ok(DataPlane::load_object(
        TEST_OBJECT,
        &LoadOptions {
            sizes: MapSizes::new(1024, 1, 16),
            map_pin_dir: None,
            verifier_log_dir: None,
        },
    )?)
}

/// A data plane of the LB under test, provisioned as the controller does: a 4M-entry flow
/// table, `wrr` over [`BACKENDS`], NAT to [`BACKEND_PORT`] or, given a tunnel,
/// `forwarding: dsr` to [`DSR_BACKEND_PORT`]. Its lb_xdp is the shipped one.
fn lb_dataplane(rig: &Rig, lb_out: u32, dsr: Option<Tunnel>) -> anyhow::Result<DataPlane> {
    let mut dp = DataPlane::load_object(
        TEST_OBJECT,
        &LoadOptions {
            sizes: MapSizes::new(FLOW_TABLE, 4, 64),
            map_pin_dir: None,
            verifier_log_dir: None,
        },
    )
    .context("loading the LB data plane")?;
    let backend_port = if dsr.is_some() {
        DSR_BACKEND_PORT
    } else {
        BACKEND_PORT
    };
    let mut config = kit::one_listener(
        dp.sizes(),
        (Protocol::Udp, VIP, VIP_PORT),
        Scheduler::Wrr,
        BACKENDS.iter().map(|&b| (b, backend_port)),
    );
    if let Some(tunnel) = dsr {
        config.forwarding = Forwarding::Dsr;
        // No `source`: the outer source is the one the route to the backends prefers
        // (lb-out's address), the default an operator gets.
        config.dsr = Dsr {
            encapsulation: tunnel,
            ..Dsr::default()
        };
    }
    kit::provision(&mut dp, config)?;
    // Devmap entries name interfaces by ifindex in the updating thread's namespace.
    rig.lb.enter(|| -> anyhow::Result<()> {
        dp.add_tx_port(rig.lb_in)?;
        dp.add_tx_port(lb_out)?;
        Ok(())
    })?;
    Ok(dp)
}

/// One path's measurements over the rounds.
struct PathRounds {
    path: Path,
    /// Mpps per round.
    rates: Vec<f64>,
    /// Share of the frames that reached the sink, per round.
    delivered: Vec<f64>,
    notes: Vec<String>,
}

/// What one send measured.
struct Sent {
    frames: u64,
    delivered: u64,
    seconds: f64,
}

/// Sends frames from user space into a veth, for kernels that refuse live frames. The
/// socket is bound to protocol 0, so it never receives; the qdisc is bypassed, and each
/// frame's NAPI work on the other end runs on this thread's CPU when `sendmmsg` leaves
/// the device (bottom halves enabled again), as it does between live-frames batches.
pub struct Feeder {
    fd: OwnedFd,
}

impl Feeder {
    /// A packet socket on `ifindex`; the caller's thread must be in its namespace.
    pub fn open(ifindex: u32) -> anyhow::Result<Feeder> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: an int option of the right size on our socket.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: binding our socket to a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("binding the packet socket");
        }
        Ok(Feeder { fd })
    }

    /// Sends `count` copies of `frame`, in calls of [`BATCH`]; a frame the veth could not
    /// queue (ENOBUFS) is sent again, so exactly `count` frames go in.
    pub fn send(&self, frame: &[u8], count: u32) -> anyhow::Result<()> {
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        };
        // SAFETY: mmsghdr is plain data; all-zero is a valid start.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut left = count;
        let mut refused = 0u32;
        while left > 0 {
            let n = left.min(BATCH);
            // SAFETY: `n` initialised headers, each pointing at `iov`, which points at
            // `frame`; all outlive the call, and the kernel only reads them.
            let sent = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
            if sent < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) && refused < 100_000 {
                    refused += 1;
                    thread::yield_now();
                    continue;
                }
                return Err(e).context("sendmmsg on the feeder socket");
            }
            left -= sent as u32;
            refused = 0;
        }
        Ok(())
    }
}

/// What starts each generator run.
enum Source {
    /// BPF_PROG_RUN of `lb_bench` in live-frames mode on g0.
    LiveFrames,
    /// Frames sent into `feed0`, run through `lb_bench` on `feed1`.
    Feeder(Feeder),
}

/// The generator and the sink, with their own copies of the object.
struct Ends {
    gen_dp: DataPlane,
    gen_kit: Kit,
    source: Source,
    /// Owns the attached `lb_sink`.
    _sink_dp: DataPlane,
    sink_kit: Kit,
    space: FlowSpace,
}

impl Ends {
    /// Sends `frames` frames (rounded up to 1024) of `template`, or of new flows when
    /// `new_flows`, and counts what reaches the sink.
    fn send(
        &mut self,
        rig: &Rig,
        template: &[u8],
        new_flows: bool,
        frames: u32,
    ) -> anyhow::Result<Sent> {
        let calls = frames.div_ceil(SEGMENT);
        let before = self.sink_kit.counter(1)?;
        let gen_dp = &mut self.gen_dp;
        let gen_kit = &mut self.gen_kit;
        let space = &mut self.space;
        let source = &self.source;
        let seconds = rig.generator.enter(|| -> anyhow::Result<f64> {
            pin_to_cpu(bench_cpu())?;
            gen_kit.set_vary(new_flows)?;
            let started = Instant::now();
            for _ in 0..calls {
                // The same map updates in every case, so the generator costs the same.
                let (frame, start) = if new_flows {
                    let start = space.segment();
                    let (addr, port) = wrapper_source(start);
                    let mut f = template.to_vec();
                    // The segment's address with a correct header checksum (the wrapper
                    // writes the same address again, and the port, on every run).
                    f[26..30].copy_from_slice(&addr.octets());
                    f[34..36].copy_from_slice(&port.to_be_bytes());
                    crate::packet::fix_ip_checksum(&mut f);
                    (f, start)
                } else {
                    (template.to_vec(), 0)
                };
                gen_kit.set_packet(&frame)?;
                gen_kit.set_counter(0, start)?;
                match source {
                    Source::LiveFrames => {
                        kit::live_frames(gen_dp, "lb_bench", &frame, rig.g0, SEGMENT, BATCH)?;
                    }
                    Source::Feeder(feeder) => {
                        let counted = gen_kit.counter(0)?;
                        feeder.send(&frame, SEGMENT)?;
                        if new_flows {
                            settle_segment(gen_kit, counted)?;
                        }
                    }
                }
            }
            Ok(started.elapsed().as_secs_f64())
        })?;
        // Whatever is still queued arrives within a few ms; wait until the count settles.
        let mut last = self.sink_kit.counter(1)?;
        for _ in 0..40 {
            thread::sleep(Duration::from_millis(5));
            let now = self.sink_kit.counter(1)?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(Sent {
            frames: u64::from(calls) * u64::from(SEGMENT),
            delivered: last - before,
            seconds,
        })
    }
}

/// Waits until `lb_bench` has taken its source from the counter for every frame of the
/// segment just fed (counter 0 summed over CPUs was `counted` before): the next segment
/// resets the counter, and a frame still queued would then repeat a tuple. The NAPI work
/// normally finishes inside `sendmmsg`; this covers work the kernel deferred.
fn settle_segment(gen_kit: &Kit, counted: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(200);
    while gen_kit.counter(0)? < counted + u64::from(SEGMENT) {
        ensure!(
            Instant::now() < deadline,
            "the generator's lb_bench ran {} of {SEGMENT} fed frames",
            gen_kit.counter(0)? - counted
        );
        thread::yield_now();
    }
    Ok(())
}

pub fn run(options: &ForwardOptions) -> anyhow::Result<ForwardReport> {
    let rig = rig();
    let mut report = ForwardReport::default();

    // Conntrack sized before nftables sees a packet: a round's new flows must fit (the
    // table is flushed between rounds). Machine-wide settings, restored on drop.
    let mut knobs = Vec::new();
    for (path, value) in [
        (
            "/sys/module/nf_conntrack/parameters/hashsize",
            CONNTRACK_HASHSIZE,
        ),
        ("/proc/sys/net/netfilter/nf_conntrack_max", CONNTRACK_MAX),
    ] {
        match KnobGuard::raise(path, value) {
            Ok(guard) => knobs.extend(guard),
            Err(e) => report
                .notes
                .push(format!("could not raise {path} to {value}: {e}")),
        }
    }
    let ct_max = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let ct_hash = fs::read_to_string("/sys/module/nf_conntrack/parameters/hashsize")
        .unwrap_or_default()
        .trim()
        .to_owned();
    report.notes.push(format!(
        "conntrack: nf_conntrack_max {ct_max}, hashsize {ct_hash} (machine-wide, restored \
         afterwards); flushed before every nftables round"
    ));

    // The LB: wrr over four backends (nftables uses `numgen inc`, round robin, over the
    // same four). The test object, for the bare redirect of the ceiling.
    let lb_out = rig.lb.ifindex("lb-out");
    let mut lb_dp = lb_dataplane(&rig, lb_out, None)?;
    let mut lb_kit = Kit::new(&mut lb_dp, &["lb_redirect"])?;
    rig.lb.enter(|| lb_kit.set_port(lb_out))?;
    // A data plane of its own, as an operator's `forwarding: dsr` would be: the mode is
    // one per config, and the NAT paths' flow table stays as it was.
    let mut dsr_dp = lb_dataplane(&rig, lb_out, Some(Tunnel::Ipip))?;

    let mut gen_dp = small_dataplane()?;
    let mut gen_kit = Kit::new(&mut gen_dp, &["lb_bench", "lb_redirect"])?;
    let redirect_fd = kit::prog_fd(&mut gen_dp, "lb_redirect")?;
    gen_kit.set_target(&redirect_fd)?;
    let idle0 = rig.generator.ifindex("idle0");
    let feed0 = rig.generator.ifindex("feed0");
    let feed1 = rig.generator.ifindex("feed1");
    let vip_frame = udp_frame(&rig, EST_SOURCE, (VIP, VIP_PORT));
    let source = rig.generator.enter(|| -> anyhow::Result<Source> {
        gen_kit.set_port(rig.g0)?;
        kit::hold_in_dispatcher(&mut gen_dp, "lb_bench", idle0)?;
        // One frame to learn whether this kernel runs live frames at all; nothing on the
        // LB side is attached yet, so the LB's stack drops it (no route to the VIP).
        gen_kit.set_packet(&vip_frame)?;
        gen_kit.set_vary(false)?;
        match kit::live_frames(&mut gen_dp, "lb_bench", &vip_frame, rig.g0, 1, 1) {
            Ok(()) => Ok(Source::LiveFrames),
            Err(e) if kit::live_frames_refused(&e) => {
                let p: &mut Xdp = gen_dp
                    .ebpf_mut()
                    .program_mut("lb_bench")
                    .context("no lb_bench")?
                    .try_into()?;
                p.attach_to_if_index(feed1, XdpMode::Driver)
                    .context("attaching lb_bench to feed1")?;
                Ok(Source::Feeder(Feeder::open(feed0)?))
            }
            Err(e) => Err(e),
        }
    })?;
    report.live_frames = matches!(source, Source::LiveFrames);
    if !report.live_frames {
        report.notes.push(
            "this kernel refuses BPF_PROG_RUN in live-frames mode (EPERM for any program): \
             each generator run started from a frame sent by an AF_PACKET socket into a \
             veth whose other end runs lb_bench natively; the LB receives the same \
             XDP-redirected frames, every path pays the feeder's cost"
                .to_owned(),
        );
    }

    let mut sink_dp = small_dataplane()?;
    let sink_kit = Kit::new(&mut sink_dp, &["lb_sink"])?;
    let s0 = rig.sink.ifindex("s0");
    rig.sink.enter(|| -> anyhow::Result<()> {
        let p: &mut Xdp = sink_dp
            .ebpf_mut()
            .program_mut("lb_sink")
            .context("no lb_sink")?
            .try_into()?;
        p.attach_to_if_index(s0, XdpMode::Driver)?;
        Ok(())
    })?;

    let mut ends = Ends {
        gen_dp,
        gen_kit,
        source,
        _sink_dp: sink_dp,
        sink_kit,
        space: FlowSpace::new(),
    };
    let routed_frame = udp_frame(&rig, EST_SOURCE, (BACKENDS[0], BACKEND_PORT));
    let nft_rules = nft_ruleset();
    let rules_file = std::env::temp_dir().join(format!("{}-nft.conf", rig.lb.name()));
    fs::write(&rules_file, nft_rules).context("writing the nftables ruleset")?;
    let _remove_rules_file = RemoveOnDrop(rules_file.clone());

    let mut per_path: Vec<PathRounds> = Path::ALL
        .iter()
        .map(|&path| PathRounds {
            path,
            rates: Vec::new(),
            delivered: Vec::new(),
            notes: Vec::new(),
        })
        .collect();
    let mut ratios = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds {
        let mut mpps = [0.0f64; Path::ALL.len()];
        for (i, &path) in Path::ALL.iter().enumerate() {
            let frames = if path.new_flows() {
                options.new_flow_frames
            } else {
                options.frames
            };
            let template = if path == Path::Routing {
                &routed_frame
            } else {
                &vip_frame
            };
            // Set the path up.
            let link: Option<XdpLinkId> = match path {
                Path::Ceiling => Some(rig.lb.enter(|| -> anyhow::Result<XdpLinkId> {
                    let p: &mut Xdp = lb_dp
                        .ebpf_mut()
                        .program_mut("lb_redirect")
                        .context("no lb_redirect")?
                        .try_into()?;
                    Ok(p.attach_to_if_index(rig.lb_in, XdpMode::Driver)?)
                })?),
                Path::LbEstablished | Path::LbNew => {
                    Some(rig.lb.enter(|| -> anyhow::Result<XdpLinkId> {
                        Ok(lb_dp
                            .program()?
                            .attach_to_if_index(rig.lb_in, XdpMode::Driver)?)
                    })?)
                }
                Path::LbDsrEstablished => Some(rig.lb.enter(|| -> anyhow::Result<XdpLinkId> {
                    Ok(dsr_dp
                        .program()?
                        .attach_to_if_index(rig.lb_in, XdpMode::Driver)?)
                })?),
                Path::NftEstablished | Path::NftNew => {
                    rig.lb.run_ok([
                        "nft",
                        "-f",
                        rules_file.to_str().context("temp path is not UTF-8")?,
                    ]);
                    rig.lb.enter(conntrack_flush)?;
                    None
                }
                Path::Routing => None,
            };
            // What the LB of the path counts for a frame it sent on, and its new flows.
            let lb_counts = |lb_dp: &DataPlane, dsr_dp: &DataPlane| -> anyhow::Result<(u64, u64)> {
                let (dp, reason) = if path == Path::LbDsrEstablished {
                    (dsr_dp, Reason::Encapsulated)
                } else {
                    (lb_dp, Reason::Forwarded)
                };
                Ok((dp.counter(reason)?, dp.counter(Reason::EventNewFlow)?))
            };
            let before = lb_counts(&lb_dp, &dsr_dp)?;
            // A short warm-up (first flow, conntrack entry, caches), then the measurement.
            ends.send(&rig, template, path.new_flows(), SEGMENT)?;
            let sent = ends.send(&rig, template, path.new_flows(), frames)?;
            let after = lb_counts(&lb_dp, &dsr_dp)?;
            let ct_count = if path.new_flows() && path != Path::LbNew {
                rig.lb
                    .run_ok(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
                    .trim()
                    .parse::<u64>()
                    .ok()
            } else {
                None
            };
            // Tear it down.
            let had_xdp = link.is_some();
            match path {
                Path::Ceiling => {
                    let p: &mut Xdp = lb_dp
                        .ebpf_mut()
                        .program_mut("lb_redirect")
                        .context("no lb_redirect")?
                        .try_into()?;
                    if let Some(link) = link {
                        p.detach(link)?;
                    }
                }
                Path::LbEstablished | Path::LbNew => {
                    if let Some(link) = link {
                        lb_dp.program()?.detach(link)?;
                    }
                }
                Path::LbDsrEstablished => {
                    if let Some(link) = link {
                        dsr_dp.program()?.detach(link)?;
                    }
                }
                Path::NftEstablished | Path::NftNew => {
                    rig.lb.run_ok(["nft", "delete", "table", "ip", "lbbench"]);
                }
                Path::Routing => {}
            }
            if had_xdp {
                // The generator's veth learns that lb-in can take its frames without an
                // XDP program only from a GRO change (see `Netns::gro_on`).
                rig.lb.gro_on("lb-in");
            }

            let rate = sent.delivered as f64 / sent.seconds / 1e6;
            mpps[i] = rate;
            let entry = &mut per_path[i];
            entry.rates.push(rate);
            entry
                .delivered
                .push(sent.delivered as f64 / sent.frames as f64);
            let passed = after.0 - before.0;
            let new_flows = after.1 - before.1;
            let warm = u64::from(SEGMENT);
            let passed_as = if path == Path::LbDsrEstablished {
                "encapsulated"
            } else {
                "forwarded"
            };
            // A frame the LB did not send on (dropped, or passed to a stack with no route
            // to the VIP) only lowers the sink's count, which reads as a slower path; the
            // LB's own counter tells the two apart.
            if matches!(path, Path::LbEstablished | Path::LbDsrEstablished)
                && passed != sent.frames + warm
            {
                let note = format!(
                    "CHECK FAILED: round {}: the LB {passed_as} {passed} of {} frames",
                    round + 1,
                    sent.frames + warm
                );
                say(format!("forward: {}: {note}", path.name()));
                entry.notes.push(note);
            }
            if round == 0 {
                let note = match path {
                    Path::LbEstablished | Path::LbDsrEstablished => format!(
                        "round 1: the LB {passed_as} {passed} of {} frames, {new_flows} new flows",
                        sent.frames + warm
                    ),
                    Path::LbNew => format!(
                        "round 1: {new_flows} new flows for {} frames sent",
                        sent.frames + warm
                    ),
                    Path::NftNew => format!(
                        "round 1: {} conntrack entries after {} frames sent",
                        ct_count.map_or_else(|| "?".to_owned(), |c| c.to_string()),
                        sent.frames + warm
                    ),
                    _ => String::new(),
                };
                if !note.is_empty() {
                    entry.notes.push(note);
                }
            }
            if (sent.delivered as f64) < 0.5 * sent.frames as f64 {
                entry.notes.push(format!(
                    "round {}: only {} of {} frames reached the sink",
                    round + 1,
                    sent.delivered,
                    sent.frames
                ));
            }
        }
        say(format!(
            "forward round {}/{}: {}",
            round + 1,
            options.rounds,
            Path::ALL
                .iter()
                .zip(mpps)
                .map(|(p, r)| format!("{:?} {r:.2}", p))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let at = |path: Path| mpps[path.index()];
        let (ceiling, lb_est, lb_dsr, lb_new, nft_est, nft_new) = (
            at(Path::Ceiling),
            at(Path::LbEstablished),
            at(Path::LbDsrEstablished),
            at(Path::LbNew),
            at(Path::NftEstablished),
            at(Path::NftNew),
        );
        if ceiling > 0.0 {
            ratios.0.push(lb_est / ceiling);
            ratios.3.push(lb_dsr / ceiling);
        }
        if nft_est > 0.0 {
            ratios.1.push(lb_est / nft_est);
        }
        if nft_new > 0.0 {
            ratios.2.push(lb_new / nft_new);
        }
    }
    report.paths = per_path
        .into_iter()
        .map(|r| PathResult {
            path: r.path,
            mpps: Summary::of(&r.rates),
            delivered: Summary::of(&r.delivered),
            notes: r.notes,
        })
        .collect();
    let flows = lb_dp.counter(Reason::EventNewFlow)?;
    report.notes.push(format!(
        "the LB's flow table held {flows} flows after the last round ({:.0} % of {FLOW_TABLE}): \
         never full, so no new flow evicted another",
        flows as f64 * 100.0 / f64::from(FLOW_TABLE)
    ));
    report.lb_over_ceiling = Summary::of(&ratios.0);
    report.lb_dsr_over_ceiling = Summary::of(&ratios.3);
    report.lb_over_nft = Summary::of(&ratios.1);
    report.lb_new_over_nft_new = Summary::of(&ratios.2);
    ensure!(
        report.paths.iter().all(|p| p.mpps.is_some()),
        "a forwarding path was not measured"
    );
    drop(knobs);
    Ok(report)
}

/// DNAT of the VIP to the four backends in turn (`numgen inc`), port 80 → 8080, as
/// kube-proxy's nftables mode does it.
fn nft_ruleset() -> String {
    let map = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b} . {BACKEND_PORT}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip lbbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {VIP} udp dport {VIP_PORT} dnat ip addr . port to numgen inc mod {} map {{ {map} }}\n  }}\n}}\n",
        BACKENDS.len()
    )
}

/// Removes a file on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
