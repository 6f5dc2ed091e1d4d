//! Every label, annotation and name that hostlb reads or writes, in one place.

use sha2::{Digest, Sha256};

/// Field manager for server-side apply and the reporting controller of Events.
pub const MANAGER: &str = "hostlb-controller";
/// The class of Services the default install serves.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "hostlb.io/hostlb";
/// The finalizer of the default install, which hostlb 0.1.0 put on the Services it served;
/// hostlb now removes it wherever it finds it. `finalizer_for` gives every install its own.
pub const FINALIZER: &str = "hostlb.io/cleanup";
/// Where the install puts the controller and the proxy DaemonSets unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "hostlb-system";
/// The ServiceAccount of every proxy pod: it carries the install's image pull secrets, and the
/// manifests let it read EndpointSlices, which only pods that follow endpoints get a token for.
pub const PROXY_SERVICE_ACCOUNT: &str = "hostlb-proxy";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const APP_NAME: &str = "hostlb";
pub const COMPONENT_PROXY: &str = "lb-proxy";
pub const MANAGED_BY: &str = "hostlb";

pub const LABEL_SERVICE_NAME: &str = "hostlb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "hostlb.io/service-namespace";
pub const LABEL_SERVICE_UID: &str = "hostlb.io/service-uid";
/// Hash of everything the controller sets on a DaemonSet, so an unchanged one is not re-applied.
pub const ANNOTATION_CONFIG_HASH: &str = "hostlb.io/config-hash";
/// On proxy pods: hash of what the pod does (containers, rules, security), without where it
/// may run, so that only a change of what proxies do replaces running ones.
pub const ANNOTATION_PROXY_SPEC_HASH: &str = "hostlb.io/proxy-spec-hash";
/// Set on a pod template by `kubectl rollout restart`: pods started before it are replaced.
pub const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Node label: once any node carries it, only nodes with the value `true` run proxy pods.
pub const NODE_LABEL_ENABLE_LB: &str = "hostlb.io/enablelb";
/// k3s ServiceLB's node label of the same meaning, read where a node has no hostlb.io/enablelb,
/// so that nodes labelled for ServiceLB need no relabelling.
pub const K3S_NODE_LABEL_ENABLE_LB: &str = "svccontroller.k3s.cattle.io/enablelb";
/// Node label naming a pool; Service label or annotation choosing one.
pub const POOL: &str = "hostlb.io/lbpool";
/// k3s ServiceLB's label naming a pool: a node is in the pool either label names, and a
/// Service without hostlb's own label or annotation chooses the pool it names.
pub const K3S_POOL: &str = "svccontroller.k3s.cattle.io/lbpool";
/// Node labels `pool.hostlb.io/POOL` put a node in several pools.
const POOL_LABEL_PREFIX: &str = "pool.hostlb.io/";

pub fn pool_label(pool: &str) -> String {
    format!("{POOL_LABEL_PREFIX}{pool}")
}
/// Well-known node label that keeps a node out of every load balancer.
pub const NODE_LABEL_EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
pub const NODE_LABEL_OS: &str = "kubernetes.io/os";

/// The prefix of the options a Service's labels and annotations give hostlb.
pub const OPTION_PREFIX: &str = "hostlb.io/";
pub const ANNOTATION_TOLERATIONS: &str = "hostlb.io/tolerations";
pub const ANNOTATION_PRIORITY_CLASS: &str = "hostlb.io/priority-class";
/// `VIP` or `Proxy`: how kube-proxy treats the published addresses (Kubernetes 1.30 and later).
pub const ANNOTATION_IP_MODE: &str = "hostlb.io/ip-mode";
/// hostlb's condition on the Services it serves.
pub const CONDITION_READY: &str = "hostlb.io/Ready";
/// What of its nodes a Service publishes: `ip`, `hostname`, or both.
pub const ANNOTATION_PUBLISH: &str = "hostlb.io/publish";
/// At most this many nodes are published for the Service.
pub const ANNOTATION_MAX_NODES: &str = "hostlb.io/max-nodes";
/// On a node: the address(es) to publish for it instead of its own, one per family.
pub const NODE_ANNOTATION_PUBLIC_ADDRESS: &str = "hostlb.io/public-address";
/// On a node: the hostname to publish for it instead of its own.
pub const NODE_ANNOTATION_PUBLIC_HOSTNAME: &str = "hostlb.io/public-hostname";
/// The pre-`spec.loadBalancerSourceRanges` way of asking for source ranges, still honoured by
/// kube-proxy, so honoured here too.
pub const ANNOTATION_LEGACY_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Names the install (by its class) on the DaemonSets it makes, so that installs sharing a
/// namespace never take each other's DaemonSets for orphans.
pub const LABEL_INSTALL: &str = "hostlb.io/install";

/// Each install's own finalizer (hostlb 0.1.0), so that two installs never release each
/// other's Services.
pub fn finalizer_for(load_balancer_class: &str) -> String {
    for_install(FINALIZER, load_balancer_class)
}

/// The Lease of the default install; `lease_name` gives every install its own.
pub const LEASE: &str = "hostlb-controller";

/// Each install's own Lease, so that two installs in one namespace elect their leaders apart.
pub fn lease_name(load_balancer_class: &str) -> String {
    for_install(LEASE, load_balancer_class)
}

/// `name` itself for the default install, `name-ID` for the install of any other class.
pub fn for_install(name: &str, load_balancer_class: &str) -> String {
    if load_balancer_class == DEFAULT_LOAD_BALANCER_CLASS {
        name.to_string()
    } else {
        format!("{name}-{}", install_id(load_balancer_class))
    }
}

/// Names this process in the Lease when no `--instance` is given: the host name (a pod's
/// own name in Kubernetes) and the process id.
pub fn process_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "hostlb-controller".into());
    format!("{host}-{}", std::process::id())
}

/// A label value standing for the install serving this class.
pub fn install_id(load_balancer_class: &str) -> String {
    short_hash(load_balancer_class)
}

/// Label selector matching the proxy DaemonSets of one install.
pub fn proxy_daemonset_selector(install_id: &str) -> String {
    format!("{},{LABEL_INSTALL}={install_id}", managed_selector())
}

/// Label selector matching every object the controller creates.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_PROXY}")
}

/// Name of the object that carries a Service's forwarding: its proxy DaemonSet, or its plan
/// for the node agents. The Service's name keeps it readable; a hash of the UID keeps Services
/// of the same name in different namespaces (or re-created ones) apart. Short enough that pod
/// names derived from it stay valid.
pub fn forwarding_name(service_name: &str, service_uid: &str) -> String {
    const MAX_SERVICE_PART: usize = 40;
    let readable: String = service_name.chars().take(MAX_SERVICE_PART).collect();
    let readable = readable.trim_end_matches('-');
    format!("hostlb-{readable}-{}", short_hash(service_uid))
}

pub fn short_hash(input: &str) -> String {
    hex_digest(input.as_bytes())[..8].to_string()
}

pub fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_install_has_its_own_finalizer_and_the_default_one_keeps_the_old_name() {
        assert_eq!(finalizer_for(DEFAULT_LOAD_BALANCER_CLASS), FINALIZER);
        let other = finalizer_for("example.com/edge");
        assert!(other.starts_with("hostlb.io/cleanup-") && other.len() == FINALIZER.len() + 9, "{other}");
        assert_ne!(other, finalizer_for("example.com/core"));
    }

    #[test]
    fn each_install_has_its_own_lease_and_the_default_one_a_fixed_name() {
        assert_eq!(lease_name(DEFAULT_LOAD_BALANCER_CLASS), LEASE);
        assert_eq!(lease_name("example.com/edge"), format!("{LEASE}-{}", install_id("example.com/edge")));
    }

    #[test]
    fn forwarding_name_keeps_short_service_names_whole() {
        let name = forwarding_name("web", "0b0e5f3a-1111-2222-3333-444455556666");
        assert!(name.starts_with("hostlb-web-"), "{name}");
        assert_eq!(name.len(), "hostlb-web-".len() + 8);
    }

    #[test]
    fn forwarding_name_differs_for_same_name_with_other_uid() {
        assert_ne!(forwarding_name("web", "uid-a"), forwarding_name("web", "uid-b"));
    }

    #[test]
    fn forwarding_name_of_longest_service_name_is_bounded_and_valid() {
        let long = format!("a{}", "-b".repeat(31));
        assert_eq!(long.len(), 63);
        let name = forwarding_name(&long, "uid");
        assert!(name.len() <= 55, "{name} is {} long", name.len());
        assert!(!name.contains("--"), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }
}
