//! The controller of the XDP load balancer.
