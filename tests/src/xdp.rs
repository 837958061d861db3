//! Running frames through the loaded XDP programs with BPF_PROG_TEST_RUN, and the XDP
//! actions they return (`enum xdp_action` of the kernel's UAPI, which aya does not export).

use anyhow::Context as _;
use aya::programs::{ProgramError, TestRun as _, TestRunOptions, TestRunResult, Xdp};
use lb_ctl::dataplane::DataPlane;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The action's name as the kernel spells it, for messages.
pub fn action_name(action: u32) -> String {
    match action {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("action {other}"),
    }
}

/// Runs `frame` once through `program` of the data plane's object (the entry program or a
/// stage) as if it arrived on `ingress`; returns the action and the frame as it left.
/// `Err` when the kernel refuses the run (a frame too short or too long, say).
pub fn test_run(
    dp: &mut DataPlane,
    program: &str,
    ingress: u32,
    frame: &[u8],
) -> anyhow::Result<(u32, Vec<u8>)> {
    let xdp: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(program)
        .with_context(|| format!("no program {program} in the object"))?
        .try_into()?;
    run_program(xdp, ingress, frame)
}

/// Runs `frame` once through a loaded XDP program (one opened from its pin, say) as if
/// it arrived on `ingress`.
pub fn run_program(xdp: &Xdp, ingress: u32, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    test_run_frame(frame, &ctx, |options| xdp.test_run(options))
}

/// Runs `frame` once through a loaded TC program as a packet leaving by `ifindex` with
/// socket mark `mark`; returns the TC action and the packet as it left.
pub fn run_tc_program(
    program: &aya::programs::SchedClassifier,
    ifindex: u32,
    mark: u32,
    frame: &[u8],
) -> anyhow::Result<(i32, Vec<u8>)> {
    // struct __sk_buff: mark at byte 8, ifindex at byte 40; the kernel lets a test run
    // set these and wants the rest zero.
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let (action, out) = test_run_frame(frame, &ctx, |options| program.test_run(options))?;
    Ok((action as i32, out))
}

/// One test run of `frame` with context `ctx`, by either program type: its return value
/// and the packet as it left, with room for what the program may add (an ICMP error
/// quoting the frame, an outer header).
fn test_run_frame(
    frame: &[u8],
    ctx: &[u8],
    run: impl FnOnce(TestRunOptions<'_>) -> Result<TestRunResult, ProgramError>,
) -> anyhow::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}
