//! Handles on the measuring programs of `lb-ebpf/src/bench.rs` and the listener set-up the
//! per-packet and forwarding benchmarks share.
//!
//! The measuring programs exist only in the test object ([`crate::TEST_OBJECT`]), so every
//! data plane handed to [`Kit::new`] is loaded from it. What the wrapper measures (`lb_xdp`
//! and its stages) is still the shipped code: the test object is the production object,
//! built from the same source with the same settings, with the measuring programs added.
//!
//! The wrapper `lb_bench` makes every run a new flow by writing a per-CPU counter `n` into
//! the source: address low half `[(n >> 24) as u8, (n >> 16) as u8 | 1]`, port
//! `(n as u16) | 0x0400`. Those two ORs alias counters: `n` and `n ^ 0x400` give the same
//! port, `n` and `n ^ 0x1_0000` the same address. Counting straight up from 0 therefore
//! repeats a tuple after 1024 runs, and "a new flow each run" would silently become half
//! hits. [`FlowSpace`] hands out runs of 1024 counter values that never alias each other:
//! start `(k << 16) | (j << 11)` with `k` even and `j < 32`; the caller sets the counter
//! to the start before each run of at most 1024 repetitions.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, anyhow, ensure};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray, xdp::DevMap},
    programs::{ProgramFd, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::Scheduler;
use lb_ctl::{
    config::{Config, Listener, Member, Protocol, VServerGroup},
    dataplane::{DataPlane, MapSizes},
    plan::Runtime,
};

use crate::provision::Provisioned;

/// Bytes of every benchmark frame (the wrapper restores exactly this many).
pub const FRAME_LEN: usize = 64;
/// Bytes of the IPv6 benchmark frames: `FRAME_LEN`'s TCP segment behind an IPv6 header.
pub const FRAME6_LEN: usize = FRAME_LEN + 20;
/// `BENCH_PACKET6`'s value: the frame in eight-byte words, rounded up.
const FRAME6_BUFFER: usize = FRAME6_LEN.next_multiple_of(8);
/// Repetitions of one wrapper run in new-flow mode: the longest stretch of counter values
/// without a repeated tuple.
pub const SEGMENT: u32 = 1024;

/// The benchmark maps of one loaded object, and its programs loaded.
pub struct Kit {
    target: ProgramArray<MapData>,
    packet: Array<MapData, [u8; FRAME_LEN]>,
    packet6: Array<MapData, [u8; FRAME6_BUFFER]>,
    config: Array<MapData, u32>,
    counter: PerCpuArray<MapData, u64>,
    port: DevMap<MapData>,
    ncpus: usize,
}

impl Kit {
    /// Loads `programs` (e.g. `lb_bench`, `lb_empty`) of the data plane's object and takes
    /// its benchmark maps.
    pub fn new(dp: &mut DataPlane, programs: &[&str]) -> anyhow::Result<Kit> {
        let ebpf = dp.ebpf_mut();
        for name in programs {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| {
                    format!("no program {name} in the object (load lb_tests::TEST_OBJECT)")
                })?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name} in the object"))
        };
        Ok(Kit {
            target: take("BENCH_TARGET")?.try_into()?,
            packet: take("BENCH_PACKET")?.try_into()?,
            packet6: take("BENCH_PACKET6")?.try_into()?,
            config: take("BENCH_CONFIG")?.try_into()?,
            counter: take("BENCH_COUNTER")?.try_into()?,
            port: take("BENCH_PORT")?.try_into()?,
            ncpus: aya::util::nr_cpus().map_err(|(_, e)| e)?,
        })
    }

    /// Slot 0 of BENCH_TARGET: what `lb_bench` tail-calls.
    pub fn set_target(&mut self, fd: &ProgramFd) -> anyhow::Result<()> {
        Ok(self.target.set(0, fd, 0)?)
    }

    /// The frame every `lb_bench` run starts from.
    pub fn set_packet(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let frame: [u8; FRAME_LEN] = frame.try_into().map_err(|_| {
            anyhow!(
                "benchmark frames are {FRAME_LEN} bytes, not {}",
                frame.len()
            )
        })?;
        Ok(self.packet.set(0, frame, 0)?)
    }

    /// The frame every `lb_bench6` run starts from (`FRAME6_LEN` bytes).
    pub fn set_packet6(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let mut value = [0u8; FRAME6_BUFFER];
        ensure!(
            frame.len() == FRAME6_LEN,
            "IPv6 benchmark frames are {FRAME6_LEN} bytes, not {}",
            frame.len()
        );
        value[..FRAME6_LEN].copy_from_slice(frame);
        Ok(self.packet6.set(0, value, 0)?)
    }

    /// New-flow mode of the wrapper (and of `lb_gen`) on or off.
    pub fn set_vary(&mut self, on: bool) -> anyhow::Result<()> {
        Ok(self.config.set(0, u32::from(on), 0)?)
    }

    /// Sets counter `index` (0: the wrapper's source counter, 1: the sink's count) on
    /// every CPU.
    pub fn set_counter(&mut self, index: u32, value: u64) -> anyhow::Result<()> {
        let values = PerCpuValues::try_from(vec![value; self.ncpus])?;
        Ok(self.counter.set(index, values, 0)?)
    }

    /// Counter `index` summed over CPUs.
    pub fn counter(&self, index: u32) -> anyhow::Result<u64> {
        Ok(self.counter.get(&index, 0)?.iter().sum())
    }

    /// Slot 0 of BENCH_PORT: where `lb_redirect` sends frames. The ifindex is looked up
    /// in the calling thread's namespace.
    pub fn set_port(&mut self, ifindex: u32) -> anyhow::Result<()> {
        self.port
            .set(0, ifindex, None, 0)
            .map_err(|e| anyhow!("BENCH_PORT: {e}"))
    }
}

/// Attaches program `name` (driver mode) to `ifindex`, an interface that carries no
/// traffic, only so that it stays registered in the kernel's XDP dispatcher. A
/// BPF_PROG_TEST_RUN with `repeat > 1` registers the program there and removes it
/// afterwards unless it is attached somewhere; each registration rebuilds the dispatcher
/// and waits for an RCU grace period (10–25 ms here), which would dominate runs of 1024.
/// The caller's thread must be in the interface's namespace.
pub fn hold_in_dispatcher(dp: &mut DataPlane, name: &str, ifindex: u32) -> anyhow::Result<()> {
    let p: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    p.attach_to_if_index(ifindex, XdpMode::Driver)
        .with_context(|| format!("attaching {name} to the idle interface {ifindex}"))?;
    Ok(())
}

/// A clone of a loaded program's descriptor (for the program array).
pub fn prog_fd(dp: &mut DataPlane, name: &str) -> anyhow::Result<ProgramFd> {
    let p: &Xdp = dp
        .ebpf_mut()
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    Ok(p.fd()?.try_clone()?)
}

/// The XDP context of a test run: `struct xdp_md` with data_end = `len` and the ingress
/// interface set (the program's FIB lookups and redirects depend on it).
pub fn xdp_ctx(len: usize, ingress: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    ctx
}

/// One BPF_PROG_TEST_RUN of program `name`: the verdict and the kernel's mean duration
/// per repetition in ns.
pub fn test_run(
    dp: &mut DataPlane,
    name: &str,
    frame: &[u8],
    ingress: u32,
    repeat: u32,
) -> anyhow::Result<(u32, u64)> {
    let ctx = xdp_ctx(frame.len(), ingress);
    let p: &Xdp = dp
        .ebpf_mut()
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

/// BPF_PROG_TEST_RUN in live-frames mode: `repeat` real frames, built from `frame`,
/// processed by program `name` as if received on `ingress`, in batches of `batch`.
pub fn live_frames(
    dp: &mut DataPlane,
    name: &str,
    frame: &[u8],
    ingress: u32,
    repeat: u32,
    batch: u32,
) -> anyhow::Result<()> {
    let ctx = xdp_ctx(frame.len(), ingress);
    let p: &Xdp = dp
        .ebpf_mut()
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    p.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat,
        attrs: TestRunAttrs::new().xdp_live_frames(batch),
        ..TestRunOptions::new()
    })
    .with_context(|| format!("BPF_PROG_TEST_RUN (live frames) of {name}"))?;
    Ok(())
}

/// Whether `err` is the kernel refusing a live-frames run outright (EPERM). Some kernel
/// builds reject `BPF_F_TEST_XDP_LIVE_FRAMES` for every program, as root and before
/// looking at the other arguments, while ordinary test runs work.
pub fn live_frames_refused(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    })
}

/// Hands out starts of 1024-value counter runs whose tuples are all distinct (see the
/// module documentation). Sources fall in 198.18.128.0/17: `k` starts at 0x8000.
#[derive(Debug)]
pub struct FlowSpace {
    next: u64,
}

impl Default for FlowSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowSpace {
    const K_BASE: u64 = 0x8000;

    pub fn new() -> FlowSpace {
        FlowSpace { next: 0 }
    }

    /// The start of a fresh run of [`SEGMENT`] counter values.
    pub fn segment(&mut self) -> u64 {
        let s = self.next;
        self.next += 1;
        let k = Self::K_BASE + ((s >> 5) << 1);
        assert!(k <= 0xfffe, "flow space exhausted");
        (k << 16) | ((s & 31) << 11)
    }

    /// Segments handed out so far.
    pub fn used(&self) -> u64 {
        self.next
    }
}

/// The source address and port the wrapper writes for counter value `n`.
pub fn wrapper_source(n: u64) -> (Ipv4Addr, u16) {
    let hi = ((n >> 24) & 0xff) as u8;
    let lo = (((n >> 16) & 0xff) as u8) | 1;
    (
        Ipv4Addr::new(198, 18, hi, lo),
        ((n & 0xffff) as u16) | 0x0400,
    )
}

/// Writes counter value `n` into a frame's source the way the wrapper does (checksums
/// untouched, as in the wrapper).
pub fn patch_source(frame: &mut [u8], n: u64) {
    let (addr, port) = wrapper_source(n);
    frame[28..30].copy_from_slice(&addr.octets()[2..4]);
    frame[34..36].copy_from_slice(&port.to_be_bytes());
}

/// A config with one listener, `frontend`, over a vServer group of `backends`, for maps of
/// `sizes` (the benchmarks measure with many more backends than the default allows).
/// Either family: an IPv6 `frontend` and IPv6 backends make an IPv6 listener.
pub fn one_listener<V: Into<IpAddr>, B: Into<IpAddr>>(
    sizes: MapSizes,
    frontend: (Protocol, V, u16),
    scheduler: Scheduler,
    backends: impl IntoIterator<Item = (B, u16)>,
) -> Config {
    let mut config = Config::new("bench", vec!["lb0".to_owned()]);
    config.flow_table_size = sizes.flow_table_size;
    config.max_listeners = sizes.max_listeners;
    config.max_backends = sizes.max_backends;
    add_listener(&mut config, frontend, scheduler, backends);
    config
}

/// Adds a listener with a vServer group of its own (named after its port) to `config`.
pub fn add_listener<V: Into<IpAddr>, B: Into<IpAddr>>(
    config: &mut Config,
    frontend: (Protocol, V, u16),
    scheduler: Scheduler,
    backends: impl IntoIterator<Item = (B, u16)>,
) {
    let (protocol, vip, port) = frontend;
    let name = if config.listeners.is_empty() {
        "bench".to_owned()
    } else {
        format!("bench-{port}")
    };
    config.vserver_groups.push(VServerGroup {
        name: name.clone(),
        servers: backends
            .into_iter()
            .map(|(address, port)| Member::new(address, port))
            .collect(),
    });
    let mut listener = Listener::new(&name, protocol, vip, port);
    listener.server_group = Some(name);
    listener.scheduler = scheduler;
    // Flows of either protocol stay for the whole run.
    listener.established_timeout = 900;
    listener.udp_timeout = 900;
    config.listeners.push(listener);
}

/// Installs `config` into the data plane as the controller does (plan, then the
/// reconciler's writes).
pub fn provision(dp: &mut DataPlane, config: Config) -> anyhow::Result<Provisioned> {
    provision_with(dp, config, Runtime::default())
}

/// [`provision`] with runtime facts (the host's addresses, health).
pub fn provision_with(
    dp: &mut DataPlane,
    config: Config,
    runtime: Runtime,
) -> anyhow::Result<Provisioned> {
    Provisioned::install(dp, config, runtime)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The whole point of `FlowSpace`: no two counter values it hands out (across
    /// segments and within them) give the same source.
    #[test]
    fn flow_space_never_repeats_a_tuple() {
        let mut space = FlowSpace::new();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let start = space.segment();
            for n in start..start + u64::from(SEGMENT) {
                assert!(seen.insert(wrapper_source(n)), "tuple of {n:#x} repeated");
            }
        }
        // Counting straight up does repeat after 1024 values.
        assert_eq!(wrapper_source(0x8000_0000), wrapper_source(0x8000_0400));
    }

    #[test]
    fn a_segment_keeps_one_source_address() {
        let mut space = FlowSpace::new();
        for _ in 0..100 {
            let start = space.segment();
            let (addr, _) = wrapper_source(start);
            assert_eq!(wrapper_source(start + 1023).0, addr);
            assert!(addr.octets()[2] >= 128, "{addr} is outside 198.18.128.0/17");
        }
    }

    #[test]
    fn patching_matches_the_wrapper_layout() {
        let mut frame = [0u8; FRAME_LEN];
        patch_source(&mut frame, 0x8123_0456);
        assert_eq!(&frame[28..30], &[0x81, 0x23]);
        assert_eq!(&frame[34..36], &0x0456u16.to_be_bytes());
    }
}
