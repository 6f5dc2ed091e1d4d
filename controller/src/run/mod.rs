//! The I/O: the command line (`flags`), the watches that feed the index, leader election, the
//! fence of a term of leadership, the executor that carries out decisions, Events, metrics and
//! the HTTP server.

pub mod api_contact;
mod api_version;
pub mod events;
mod fence;
pub mod flags;
mod forwarding;
pub mod leader_election;
mod leading;
mod lease_clock;
pub mod metrics;
#[cfg(test)]
mod mock_api;
mod process;
pub mod reconcile;
pub mod server;
pub mod stop;
pub mod watches;

pub use forwarding::uninstall;
pub use process::run;
