//! The XDP program of the load balancer. One entry point, `lb_xdp`, attached to every
//! interface of the LB host (client side and backend side):
//!
//! 1. parse Ethernet / IPv4 / TCP or UDP (`parse`);
//! 2. a packet to a listener's VIP:port goes through the flow table; a live flow's packet
//!    is translated to its backend (`nat`); a new flow goes on in the new-flow stage
//!    (`new_flow`), which runs the listener's scheduler (`sched`, `wlc` in a stage of its
//!    own) and records the flow;
//! 3. a packet from a backend endpoint to a client it has a flow with is translated back
//!    to the VIP (`flow::reply_flow`);
//! 4. ICMP errors about a flow go to the ICMP stage (`icmp`);
//! 5. everything else is passed to the kernel untouched;
//! 6. translated packets leave through the FIB's next hop (`fwd`); one with DF too big for
//!    the egress is answered with ICMP "fragmentation needed" instead (`too_big`).
//!
//! The stages are programs of their own, entered by tail call (`stage`), so each is
//! verified on its own: docs/architecture.md lists them with their verifier cost.
//!
//! Every verdict is counted under its reason (`stats`); docs/packet-policy.md lists them.

#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_xadd and atomic_or are the BPF target's atomics (core's Atomic* \
                  types are not available on it)"
    )
)]

#[cfg(all(target_arch = "bpf", feature = "testing"))]
mod bench;
#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod encap;
#[cfg(target_arch = "bpf")]
mod encap6;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod flow_filter;
#[cfg(target_arch = "bpf")]
mod frame;
#[cfg(target_arch = "bpf")]
mod fwd;
#[cfg(target_arch = "bpf")]
mod fwd6;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod icmp6;
#[cfg(target_arch = "bpf")]
mod ipv6;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod nat6;
#[cfg(target_arch = "bpf")]
mod new_flow;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod parse6;
#[cfg(target_arch = "bpf")]
mod probe_tunnel;
#[cfg(target_arch = "bpf")]
mod program;
#[cfg(target_arch = "bpf")]
mod reset;
#[cfg(target_arch = "bpf")]
mod sched;
#[cfg(target_arch = "bpf")]
mod stage;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tables;
#[cfg(target_arch = "bpf")]
mod too_big;
#[cfg(target_arch = "bpf")]
mod too_big6;
#[cfg(target_arch = "bpf")]
mod words;

/// On the host (`cargo build --workspace`), the crate is an empty binary: the program
/// only exists for the BPF target, which lb-ctl's build script compiles.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
