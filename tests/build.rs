//! Builds the XDP program with the `testing` feature: the production programs, compiled
//! from the same source with the same settings as the object lb-ctl embeds, plus the
//! measuring and test-helper programs (`lb_bench`, `lb_empty`, …). `src/lib.rs` embeds it
//! as `TEST_OBJECT`.

fn main() -> anyhow::Result<()> {
    lb_build::build_xdp_object(&["testing"])
}
