//! hostlb's controller: serves Services of type LoadBalancer from the nodes' own addresses
//! through per-Service DaemonSets of hostPort proxy pods.
//!
//! Three layers, each a folder, each importing only the ones below it and `hostlb_model`
//! (what a Service asks, and what hostlb publishes):
//! - `state`: what the watches know of the cluster (the index) and which Services each
//!   committed change concerns (`triggers`);
//! - `decide`: what hostlb decides, pure: the one decision per reconcile (`decide::decide`)
//!   and its pieces, and who leads;
//! - `run`: the I/O: flags, watches, leader election, the executor of decisions
//!   (`reconcile`), Events, metrics and the HTTP server.
//!
//! The same binary also runs in the proxy pods of `externalTrafficPolicy: Local` Services:
//! `endpoint_follower` keeps their forwarding on the node's endpoints (`local_endpoints`).

pub mod decide;
mod endpoint_follower;
mod error;
#[cfg(test)]
mod fixtures;
mod local_endpoints;
pub mod run;
pub mod state;

pub use decide::Settings;
pub use endpoint_follower::follow;
pub use error::Error;
