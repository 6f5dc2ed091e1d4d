//! The controller's cluster-wide choices, as every decision reads them.

use hostlb_model::address::AddressPolicy;
use hostlb_model::options::is_handled;
use hostlb_model::service::ServiceView;
use k8s_openapi::api::core::v1::Service;

use crate::decide::dataplane::ForwardingSettings;
use crate::decide::limits::ServiceLimits;
use crate::decide::port_policy::PortPolicy;
use crate::decide::tenancy::TenantPolicy;

/// Cluster-wide choices of this controller.
#[derive(Clone, Debug)]
pub struct Settings {
    pub load_balancer_class: String,
    /// Whether Services without a class are this install's.
    pub serve_unclassed: bool,
    /// This install's finalizer (`names::finalizer_for` its class).
    pub finalizer: String,
    /// How addresses are chosen unless a Service asks otherwise.
    pub addresses: AddressPolicy,
    /// Whether the API server keeps `status.loadBalancer.ingress[].ipMode` (1.30 and later).
    pub server_has_ip_mode: bool,
    pub forwarding: ForwardingSettings,
    pub ports: PortPolicy,
    pub tenants: TenantPolicy,
    pub limits: ServiceLimits,
    /// Names this replica in the Events it publishes.
    pub instance: Option<String>,
    /// A node whose kubelet misses a Lease renewal by more than this leaves every status;
    /// None to wait for the node controller's NotReady.
    pub node_lease_grace: Option<std::time::Duration>,
    /// How long withdrawals may stay paused while most nodes look down.
    pub withdrawal_pause_limit: std::time::Duration,
    /// How long a node agent's report stands without renewal before what its node forwards
    /// counts as unknown.
    pub agent_report_expiry: std::time::Duration,
}

impl Settings {
    /// Whether this install serves the Service.
    pub fn serves(&self, service: &ServiceView) -> bool {
        service.is_handled(&self.load_balancer_class, self.serve_unclassed)
    }

    /// Whether the Service carries this install's finalizer, which only older versions put on.
    pub fn holds(&self, service: &ServiceView) -> bool {
        service.has_finalizer(&self.finalizer)
    }

    /// Whether something of this install's is left on or for a Service it does not serve (any
    /// more): an older version's finalizer, proxies, or its condition, which only hostlb writes.
    pub fn must_release(&self, service: &ServiceView, has_proxies: bool) -> bool {
        self.holds(service) || has_proxies || service.condition.is_some()
    }

    /// Whether this install serves the Service or still has to clean up after it, read from
    /// the object as it is, without parsing it: for sweeping over every Service at once.
    pub fn concerns(&self, service: &Service) -> bool {
        is_handled(service, &self.load_balancer_class, self.serve_unclassed)
            || service.metadata.finalizers.iter().flatten().any(|f| *f == self.finalizer)
    }
}

#[cfg(test)]
mod tests {
    use crate::fixtures::{settings, ServiceBuilder};
    use hostlb_model::names;

    #[test]
    fn handled_services_and_those_awaiting_cleanup_concern_the_install() {
        let handled = ServiceBuilder::new("web").build();
        let other_class = ServiceBuilder::new("metal").class("metallb.io/metallb").build();
        let mut leaving = ServiceBuilder::new("leaving").type_("ClusterIP").build();
        leaving.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        let plain = ServiceBuilder::new("plain").type_("ClusterIP").build();
        let concerned: Vec<bool> = [&handled, &other_class, &leaving, &plain].map(|s| settings().concerns(s)).to_vec();
        assert_eq!(concerned, [true, false, true, false]);
    }
}
