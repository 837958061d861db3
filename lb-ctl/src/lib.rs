//! The controller of the XDP load balancer: configuration, the desired map contents, the
//! loaded data plane, the daemon and its control API.

pub mod config;
pub mod dataplane;
pub mod plan;
pub mod reconcile;
