//! Forwarding objects (proxy DaemonSets, plans) that no Service will clean up.

use std::collections::HashSet;

use hostlb_model::names;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::decide::settings::Settings;

/// Proxy objects that no Service will ever clean up: the Service of their UID is gone (deleted,
/// or re-created with another UID), or neither served nor holding an older version's finalizer.
/// Left alone, they would hold their host ports for good.
pub fn orphaned<'a, K: ResourceExt>(
    proxies: impl IntoIterator<Item = &'a K>,
    services: &[&Service],
    settings: &Settings,
) -> Vec<&'a K> {
    let claimed: HashSet<&str> =
        services.iter().filter(|s| settings.concerns(s)).filter_map(|s| s.metadata.uid.as_deref()).collect();
    proxies
        .into_iter()
        .filter(|proxy| proxy.meta().deletion_timestamp.is_none())
        .filter(|proxy| proxy.labels().get(names::LABEL_SERVICE_UID).is_none_or(|uid| !claimed.contains(uid.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{proxy_pod, settings, terminating_proxy_pod, ServiceBuilder};

    #[test]
    fn proxies_are_orphaned_once_no_served_or_finalizing_service_has_their_uid() {
        let proxy = proxy_pod("p", "n1", true);
        let served = ServiceBuilder::new("web").build();
        let mut finalizing = ServiceBuilder::new("web").type_("ClusterIP").build();
        finalizing.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        let released_by_hand = ServiceBuilder::new("web").type_("ClusterIP").build();
        let mut recreated = ServiceBuilder::new("web").build();
        recreated.metadata.uid = Some("another-uid".into());
        let class = &settings();

        assert!(orphaned([&proxy], &[&served], class).is_empty());
        assert!(orphaned([&proxy], &[&finalizing], class).is_empty());
        assert_eq!(orphaned([&proxy], &[&released_by_hand], class).len(), 1);
        assert_eq!(orphaned([&proxy], &[&recreated], class).len(), 1);
        assert_eq!(orphaned([&proxy], &[], class).len(), 1);

        assert!(orphaned([&terminating_proxy_pod("p", "n1")], &[], class).is_empty());
    }
}
