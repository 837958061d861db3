//! What the XDP program and the controller share: the layout of every map key and value,
//! the counters, and the pure logic both sides run (hashing, checksum folding, the
//! selection steps, and on the user side the Maglev and weighted round-robin builders).
//!
//! The crate is `no_std` so the eBPF crate can use it; with the `std` feature (and in
//! tests) it is an ordinary host crate, which is how the shared logic gets unit-tested.
//!
//! Byte order: fields holding packet values (addresses, ports) keep the packet's
//! network byte order in memory, so the XDP program copies them without swapping; the
//! comment on each field says which order it is in. Everything else is host order.

#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod csum;
pub mod decap;
pub mod decide;
pub mod encap;
pub mod family;
pub mod flow_filter;
pub mod hash;
pub mod maps;
pub mod maps6;
pub mod select;

#[cfg(feature = "user")]
pub mod maglev;
#[cfg(any(test, feature = "std"))]
pub mod memory;
#[cfg(feature = "user")]
pub mod wrr;

pub use family::{Addr6, Family, V4, V6};
pub use maps::*;
pub use maps6::*;
