//! hostlb's controller: serves Services of type LoadBalancer from the nodes' own addresses,
//! through one of two data planes (`decide::dataplane`): per-Service DaemonSets of hostPort
//! proxy pods, or node agents that program a plan per Service.
//!
//! Three layers, each a folder, each importing only the ones below it and `hostlb_model`
//! (what a Service asks, and what hostlb publishes):
//! - `state`: what the watches know of the cluster (the index) and which Services each
//!   committed change concerns (`triggers`);
//! - `decide`: what hostlb decides, pure: the one decision per reconcile (`decide::decide`)
//!   and its pieces, and who leads;
//! - `run`: the I/O: flags, watches, leader election, the executor of decisions
//!   (`reconcile`, and `forwarding` for the data planes' objects), Events, metrics and the
//!   HTTP server.
//!
//! The same binary also runs the endpoint follower in the proxy pods of
//! `externalTrafficPolicy: Local` Services, and the node agents: `main` hands both to
//! `hostlb_agent`.

pub mod decide;
mod error;
#[cfg(test)]
mod fixtures;
pub mod run;
pub mod state;

pub use decide::Settings;
pub use error::Error;
