//! The XDP program is the binary target (`src/main.rs`); this empty library lets host
//! tools (`cargo check --workspace`, rust-analyzer) resolve the crate.
#![no_std]
