//! The controller of the XDP load balancer: configuration, the desired map contents, the
//! loaded data plane, the daemon and its control API.

pub(crate) mod api;
pub mod bgp;
pub(crate) mod cli;
pub(crate) mod client;
pub mod config;
pub mod controller;
pub(crate) mod daemon;
pub mod dataplane;
pub mod decap;
pub(crate) mod explain;
pub mod family;
pub mod flow_filter;
pub(crate) mod flow_walk;
pub mod health;
pub mod host;
pub(crate) mod listener_index;
pub(crate) mod metrics;
pub(crate) mod netlink;
pub(crate) mod overlay;
pub(crate) mod pins;
pub mod plan;
pub mod reconcile;
mod run;
pub mod sizing;
pub mod verifier;
pub(crate) mod web;

pub use run::run;
