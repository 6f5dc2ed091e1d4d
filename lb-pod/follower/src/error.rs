//! The follower's one error type. Each error ends the follower: its container restarts, and
//! once it crash-loops the Service gets a ProxyPodFailing Warning.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("discovering EndpointSlices failed: {0}")]
    Discovery(Box<kube::Error>),
    #[error("the API server serves no EndpointSlices (discovery.k8s.io)")]
    NoEndpointSlices,
    #[error("the Service's EndpointSlices were not listed within {0:?}")]
    EndpointsNotListed(Duration),
    #[error("forwarding to the node's endpoints: {0}")]
    Rules(hostlb_lb::error::Error),
    #[error("cannot wait for SIGTERM: {0}")]
    Signal(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
