//! hostlb's controller: serves Services of type LoadBalancer from the nodes' own addresses
//! through per-Service DaemonSets of hostPort proxy pods.
//!
//! Layers, from pure to I/O:
//! - what a Service asks for and what follows from it: `service_lb`, `placement`, `daemonset`,
//!   `status`, `condition`, `proxy_health`, `conflicts`, `port_policy`, `tenancy`, `finalizer`, and `decide`, the one decision per reconcile;
//! - `index`: what the watches know of other objects, grouped for cheap look-ups;
//!   `mapping`: which Services a watched change affects;
//! - `lease`: who leads, from the Lease as read;
//! - `watches` (the streams, and the controller loop while this replica leads), `election`
//!   (reads and writes the Lease), `reconcile` (the executor: every other write) and `events`.
//!
//! The same binary also runs in the proxy pods of `externalTrafficPolicy: Local` Services,
//! where `main` runs `hostlb_follower` to keep their forwarding on the node's endpoints.

pub mod condition;
mod conflicts;
pub mod daemonset;
mod decide;
pub mod election;
mod error;
pub mod events;
mod finalizer;
#[cfg(test)]
mod fixtures;
mod index;
pub mod lease;
mod mapping;
pub mod metrics;
#[cfg(test)]
mod mock_api;
pub mod names;
mod node_leases;
mod placement;
pub mod port_policy;
mod proxy_health;
mod reconcile;
pub mod server;
pub mod service_lb;
pub mod status;
pub mod tenancy;
mod watches;

pub use error::Error;
pub use events::Reason;
pub use reconcile::uninstall;
pub use watches::run;

impl Settings {
    /// Whether this install serves the Service.
    pub fn serves(&self, service: &k8s_openapi::api::core::v1::Service) -> bool {
        service_lb::is_handled(service, &self.load_balancer_class, self.serve_unclassed)
    }

    /// Whether the Service carries this install's finalizer.
    pub fn holds(&self, service: &k8s_openapi::api::core::v1::Service) -> bool {
        service.metadata.finalizers.iter().flatten().any(|f| *f == self.finalizer)
    }
}

/// Cluster-wide choices of this controller.
#[derive(Clone, Debug)]
pub struct Settings {
    pub load_balancer_class: String,
    /// Whether Services without a class are this install's.
    pub serve_unclassed: bool,
    /// This install's finalizer (`names::finalizer_for` its class).
    pub finalizer: String,
    /// How addresses are chosen unless a Service asks otherwise.
    pub addresses: status::AddressPolicy,
    /// Whether the API server keeps `status.loadBalancer.ingress[].ipMode` (1.30 and later).
    pub server_has_ip_mode: bool,
    pub proxy: daemonset::ProxySettings,
    pub ports: port_policy::PortPolicy,
    pub tenants: tenancy::TenantPolicy,
    /// Names this replica in the Events it publishes.
    pub instance: Option<String>,
    /// A node whose kubelet misses a Lease renewal by more than this leaves every status;
    /// None to wait for the node controller's NotReady.
    pub node_lease_grace: Option<std::time::Duration>,
}
