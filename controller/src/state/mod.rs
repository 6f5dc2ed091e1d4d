//! What the watches know of the cluster, beyond the Service cache: the index, and which
//! Services each committed change concerns. Pure: the watches hand in their events.

pub mod agent_report;
pub mod index;
pub mod node_liveness;
pub mod proxy_pod;
pub mod section;
pub mod triggers;
pub mod withdrawals;

pub use index::Index;
pub use proxy_pod::ProxyPod;
pub use section::{key_of, Change, Key};
