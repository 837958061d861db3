//! The controller of the XDP load balancer: configuration, the desired map contents, the
//! loaded data plane, the daemon and its control API.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub(crate) mod explain;
pub(crate) mod flow_walk;
pub mod health;
pub mod host;
pub(crate) mod metrics;
pub(crate) mod overlay;
pub(crate) mod pins;
pub mod plan;
pub mod reconcile;
pub mod verifier;
pub(crate) mod web;
