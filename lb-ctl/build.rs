//! Builds the XDP program (crate `lb-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/dataplane.rs` embeds it: one `lb-ctl` binary carries its data plane.
//! Default features only: the shipped object holds the production programs and nothing else.

fn main() -> anyhow::Result<()> {
    lb_build::build_xdp_object(&[])
}
