//! Programs for measuring and for tests, compiled only with the `testing` feature: the
//! tests crate builds that object (`lb_tests::TEST_OBJECT`) for the benchmarks, fixtures and
//! end-to-end tests; the object lb-ctl ships never holds them.
//!
//! - `lb_bench`: the fair in-kernel loop of docs/benchmarks.md. BPF_PROG_TEST_RUN with
//!   `repeat` runs a program again on the buffer it already rewrote; this wrapper puts the
//!   original packet back at the start of every run (and optionally makes every run a new
//!   flow), then tail-calls the program under test.
//! - `lb_bench6`: the same for the IPv6 cases' 84-byte frames (new flows vary the source's
//!   interface identifier).
//! - `lb_empty`: the floor: the same machinery with nothing behind it. The end-to-end
//!   tests also attach it as an XDP_PASS program on veths that need one.
//! - `lb_gen`: a traffic generator for XDP live frames: every frame gets a new source
//!   address and port, then goes out (XDP_TX becomes a transmit in live-frames mode).
//! - `lb_sink`: counts and drops, the receiving end of the forwarding benchmark.
//! - `lb_redirect`: redirects every frame to one port, the ceiling of the forwarding
//!   benchmark.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

use crate::parse::ptr_at;

/// Bytes of the benchmark packet: the 64-byte frames of the peer's measurements (a
/// minimal frame without FCS is 60 bytes, so this one carries Ethernet padding).
pub const BENCH_LEN: usize = 64;

/// The packet every `lb_bench` run starts from, as eight-byte words: restored with eight
/// 64-bit copies, not 64 byte copies, so the floor the measurements subtract stays small.
#[map(name = "BENCH_PACKET")]
static BENCH_PACKET: Array<[u64; BENCH_LEN / 8]> = Array::with_max_entries(1, 0);

/// Bytes of the IPv6 benchmark packet: the 64-byte frame's TCP segment behind an IPv6
/// header (20 bytes more than IPv4's).
pub const BENCH6_LEN: usize = 84;

/// The packet every `lb_bench6` run starts from: ten eight-byte words and the last four
/// bytes (88 bytes as the test writes them, the last four unused).
#[repr(C)]
struct Packet6 {
    words: [u64; 10],
    tail: u32,
    _unused: u32,
}

#[map(name = "BENCH_PACKET6")]
static BENCH_PACKET6: Array<Packet6> = Array::with_max_entries(1, 0);

/// `lb_bench` and `lb_gen` settings: [0] = 1 to give every run a new source address
/// and port (a new flow each run).
#[map(name = "BENCH_CONFIG")]
static BENCH_CONFIG: Array<u32> = Array::with_max_entries(4, 0);

/// Per-CPU run counter (new-flow mode) and the sink's packet count.
#[map(name = "BENCH_COUNTER")]
static BENCH_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Slot 0: the program `lb_bench` measures (`lb_xdp` or `lb_empty`).
#[map(name = "BENCH_TARGET")]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: where `lb_redirect` sends every frame.
#[map(name = "BENCH_PORT")]
static BENCH_PORT: DevMap = DevMap::with_max_entries(1, 0);

#[inline(always)]
fn next_count(index: u32) -> u64 {
    match BENCH_COUNTER.get_ptr_mut(index) {
        Some(c) => {
            // SAFETY: per-CPU value, only this CPU touches it while the program runs.
            let v = unsafe { *c };
            unsafe { *c = v + 1 };
            v
        }
        None => 0,
    }
}

/// Writes a new source address (low 16 bits) and port from a run counter into a frame
/// whose IPv4 header has no options; checksums are left alone (the program under test
/// does not verify them, it updates them incrementally).
#[inline(always)]
fn vary_source(ctx: &XdpContext, n: u64) {
    if let Some(src) = ptr_at::<[u8; 8]>(ctx, 28) {
        // Bytes 28..30 are the low half of the IPv4 source, 34..36 the L4 source port.
        // SAFETY: bounds checked by ptr_at.
        let bytes = unsafe { &mut *src };
        let addr = ((n >> 16) as u16).to_be_bytes();
        bytes[0] = addr[0];
        bytes[1] = addr[1] | 0x01;
        let port = ((n as u16) | 0x0400).to_be_bytes();
        bytes[6] = port[0];
        bytes[7] = port[1];
    }
}

#[xdp]
pub fn lb_bench(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    if len > BENCH_LEN {
        // Only encapsulation (`forwarding: dsr`) grows a frame, and it grows it at the
        // front: moving the head back puts the frame where the first run had it. Trimming
        // the tail instead would leave the head moved, and after a dozen runs the
        // headroom would be gone.
        // SAFETY: ctx is the program's context; the kernel checks the new head.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, (len - BENCH_LEN) as i32) } != 0 {
            return XDP_ABORTED;
        }
    } else if len < BENCH_LEN {
        // What shrinks a frame (a reset, an ICMP error) cuts its tail.
        // SAFETY: ctx is the program's context; the frame grows back to size.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, BENCH_LEN as i32 - len as i32) } != 0 {
            return XDP_ABORTED;
        }
    }
    let (Some(original), Some(packet)) =
        (BENCH_PACKET.get(0), ptr_at::<[u64; BENCH_LEN / 8]>(&ctx, 0))
    else {
        return XDP_ABORTED;
    };
    // One 64-bit store per word. A plain `*packet = *original` compiles to a call of a
    // byte-by-byte `memmove`, which made this wrapper (and so the floor every method-2
    // figure subtracts) 30 ns dearer than the peer's.
    for (i, word) in original.iter().enumerate() {
        // SAFETY: bounds checked by ptr_at. The frame starts 8-byte aligned (after the
        // headroom), and unaligned packet access is allowed on the architectures XDP runs
        // on. Volatile, so the compiler cannot fold the stores back into a `memmove`.
        unsafe { core::ptr::write_volatile(packet.cast::<u64>().add(i), *word) };
    }
    if BENCH_CONFIG.get(0).copied() == Some(1) {
        vary_source(&ctx, next_count(0));
    }
    // SAFETY: a tail call replaces this program; on failure control returns here.
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

/// Brings the frame back to `len` bytes after a run that grew or cut it. False when the
/// kernel refuses.
#[inline(always)]
fn restore_length(ctx: &XdpContext, len: usize) -> bool {
    let now = ctx.data_end() - ctx.data();
    if now > len {
        // SAFETY: ctx is the program's context; the kernel checks the new head.
        return unsafe { bpf_xdp_adjust_head(ctx.ctx, (now - len) as i32) } == 0;
    }
    if now < len {
        // SAFETY: ctx is the program's context; the frame grows back to size.
        return unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - now as i32) } == 0;
    }
    true
}

/// `lb_bench` for the IPv6 frames. In new-flow mode each run's source is
/// 2001:db8:18:0:8000:: plus the run counter (the interface identifier, bytes 30..38), as
/// the benchmark's own new flows are numbered.
#[xdp]
pub fn lb_bench6(ctx: XdpContext) -> u32 {
    if !restore_length(&ctx, BENCH6_LEN) {
        return XDP_ABORTED;
    }
    let (Some(original), Some(packet)) =
        (BENCH_PACKET6.get(0), ptr_at::<[u8; BENCH6_LEN]>(&ctx, 0))
    else {
        return XDP_ABORTED;
    };
    for (i, word) in original.words.iter().enumerate() {
        // SAFETY: bounds checked by ptr_at; see `lb_bench`.
        unsafe { core::ptr::write_volatile(packet.cast::<u64>().add(i), *word) };
    }
    // SAFETY: as above; bytes 80..84.
    unsafe { core::ptr::write_volatile(packet.cast::<u32>().add(20), original.tail) };
    if BENCH_CONFIG.get(0).copied() == Some(1)
        && let Some(id) = ptr_at::<[u8; 8]>(&ctx, 30)
    {
        let n = next_count(0) | 1 << 63;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *id = n.to_be_bytes() };
    }
    // SAFETY: a tail call replaces this program; on failure control returns here.
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

#[xdp]
pub fn lb_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn lb_gen(ctx: XdpContext) -> u32 {
    if BENCH_CONFIG.get(0).copied() == Some(1) {
        vary_source(&ctx, next_count(0));
    }
    XDP_TX
}

#[xdp]
pub fn lb_sink(_ctx: XdpContext) -> u32 {
    next_count(1);
    XDP_DROP
}

#[xdp]
pub fn lb_redirect(_ctx: XdpContext) -> u32 {
    BENCH_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED)
}
