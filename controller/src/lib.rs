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
//! The same binary also runs in the proxy pods of `externalTrafficPolicy: Local` Services,
//! where `main` runs `hostlb_agent` to keep their forwarding on the node's endpoints.

pub mod decide;
mod error;
#[cfg(test)]
mod fixtures;
pub mod run;
pub mod state;

pub use decide::Settings;
pub use error::Error;
