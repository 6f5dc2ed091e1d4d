//! The error type of the follower and the node agent. Each error ends the process: its
//! container restarts, and once a proxy pod crash-loops its Service gets a ProxyPodFailing
//! Warning.

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
    #[error("{action}: {source}")]
    Api { action: String, source: Box<kube::Error> },
}

impl Error {
    /// Names what was asked of the API server, for `map_err`.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source: Box::new(source) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
