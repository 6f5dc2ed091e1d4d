//! What a Service's author may ask of the proxy pods' scheduling. Proxy pods run a privileged
//! init container and hold host ports: a toleration lets them onto nodes the admin keeps for
//! others, a PriorityClass lets them preempt other workloads. Both are the admin's to grant.

use hostlb_model::names;
use hostlb_model::options::{annotation_error, FieldError, ServiceLb};
use hostlb_model::reason::listed;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    /// PriorityClasses a Service may name besides the default one.
    pub priority_classes: Vec<String>,
    /// Taint keys a Service's tolerations may name.
    pub toleration_keys: Vec<String>,
    /// Namespaces whose Services may ask for any PriorityClass and toleration.
    pub trusted_namespaces: Vec<String>,
}

impl TenantPolicy {
    /// The options of `lb` that the admin has not granted its namespace.
    pub fn refusals(&self, lb: &ServiceLb, default_priority_class: &str) -> Vec<FieldError> {
        if self.trusted_namespaces.contains(&lb.namespace) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        if let Some(class) = lb.priority_class.as_deref() {
            if class != default_priority_class && !self.priority_classes.iter().any(|allowed| allowed == class) {
                errors.push(annotation_error(
                    names::ANNOTATION_PRIORITY_CLASS,
                    format!(
                        "PriorityClass {class:?} is not allowed here (--allowed-priority-classes: {})",
                        shown(&self.priority_classes)
                    ),
                ));
            }
        }
        let refused = lb.extra_tolerations.iter().enumerate().filter_map(|(index, toleration)| {
            let key = toleration.key.as_deref().unwrap_or_default();
            if key.is_empty() {
                Some(format!("item {index} tolerates every taint"))
            } else if self.toleration_keys.iter().any(|allowed| allowed == key) {
                None
            } else {
                Some(format!("item {index} tolerates taint {key:?}"))
            }
        });
        let refused: Vec<String> = refused.collect();
        if !refused.is_empty() {
            // One error for all of them: a list of thousands costs one Warning, not thousands.
            errors.push(annotation_error(
                names::ANNOTATION_TOLERATIONS,
                format!(
                    "not allowed here (--allowed-toleration-keys: {}): {}",
                    shown(&self.toleration_keys),
                    listed(refused)
                ),
            ));
        }
        errors
    }
}

fn shown(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ServiceBuilder, NAMESPACE};

    fn lb(builder: ServiceBuilder) -> ServiceLb {
        ServiceLb::from_service(&builder.build()).unwrap()
    }

    fn policy() -> TenantPolicy {
        TenantPolicy {
            priority_classes: vec!["lb-high".into()],
            toleration_keys: vec!["edge".into()],
            trusted_namespaces: vec!["infra".into()],
        }
    }

    #[test]
    fn the_default_and_allowed_classes_and_keys_pass() {
        let asked = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_PRIORITY_CLASS, "lb-high")
            .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"edge","operator":"Exists"}]"#);
        assert!(policy().refusals(&lb(asked), "hostlb-proxy").is_empty());
        let default = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "hostlb-proxy");
        assert!(policy().refusals(&lb(default), "hostlb-proxy").is_empty());
    }

    #[test]
    fn other_classes_any_taint_and_unlisted_keys_are_refused_naming_the_setting() {
        let asked = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_PRIORITY_CLASS, "system-node-critical")
            .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"operator":"Exists"},{"key":"gpu","operator":"Exists"}]"#);
        let errors: Vec<String> =
            policy().refusals(&lb(asked), "hostlb-proxy").iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            vec![
                "metadata.annotations[hostlb.io/priority-class]: PriorityClass \"system-node-critical\" is not allowed \
                 here (--allowed-priority-classes: lb-high)",
                "metadata.annotations[hostlb.io/tolerations]: not allowed here (--allowed-toleration-keys: edge): \
                 item 0 tolerates every taint, item 1 tolerates taint \"gpu\"",
            ]
        );
    }

    #[test]
    fn thousands_of_refused_tolerations_are_one_error_naming_the_first_twenty() {
        let keys: Vec<String> = (0..2000).map(|i| format!(r#"{{"key":"team-{i}","operator":"Exists"}}"#)).collect();
        let asked =
            ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, &format!("[{}]", keys.join(",")));
        let errors = policy().refusals(&lb(asked), "hostlb-proxy");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.ends_with("item 19 tolerates taint \"team-19\" and 1980 more"), "{}", errors[0]);
    }

    #[test]
    fn trusted_namespaces_may_ask_for_anything() {
        let asked = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_PRIORITY_CLASS, "system-node-critical")
            .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"operator":"Exists"}]"#);
        let trusted = TenantPolicy { trusted_namespaces: vec![NAMESPACE.into()], ..TenantPolicy::default() };
        assert!(trusted.refusals(&lb(asked), "hostlb-proxy").is_empty());
    }
}
