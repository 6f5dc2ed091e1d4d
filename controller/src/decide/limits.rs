//! How much one Service may ask of every node. Each port is a hostPort of every proxy pod, and
//! each source range an argument copied into the DaemonSet, its revisions and every pod (and an
//! element of the proxies' nftables sets): without a cap, one tenant's Service costs every node
//! what it likes. Over a limit, nothing of the Service is applied.

use hostlb_model::options::{FieldError, ServiceLb};

pub const DEFAULT_MAX_SERVICE_PORTS: usize = 100;
pub const DEFAULT_MAX_SOURCE_RANGES: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLimits {
    pub ports: usize,
    pub source_ranges: usize,
}

impl ServiceLimits {
    /// What of `lb` is over a limit, naming the field and the setting.
    pub fn excess(&self, lb: &ServiceLb) -> Vec<FieldError> {
        let over = |field: &str, what: &str, count: usize, limit: usize, setting: &str| {
            (count > limit).then(|| FieldError {
                field: field.into(),
                message: format!("{count} {what} are more than the {limit} a Service may have here ({setting})"),
            })
        };
        let ports = over("spec.ports", "ports", lb.ports.len(), self.ports, "--max-service-ports");
        let ranges = over(
            "spec.loadBalancerSourceRanges",
            "source ranges",
            lb.source_ranges.len(),
            self.source_ranges,
            "--max-source-ranges",
        );
        ports.into_iter().chain(ranges).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;

    #[test]
    fn ports_and_source_ranges_up_to_the_limits_pass_and_more_are_named_with_the_setting() {
        let limits = ServiceLimits { ports: 2, source_ranges: 3 };
        let ranges: Vec<String> = (0..4).map(|i| format!("10.{i}.0.0/16")).collect();
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let within = ServiceBuilder::new("web").port("TCP", 80, 0).port("TCP", 443, 0).source_ranges(&ranges[..3]);
        assert!(limits.excess(&ServiceLb::from_service(&within.build()).unwrap()).is_empty());
        let over = ServiceBuilder::new("web").port("TCP", 80, 0).port("TCP", 443, 0).port("UDP", 53, 0);
        let lb = ServiceLb::from_service(&over.source_ranges(&ranges).build()).unwrap();
        let errors: Vec<String> = limits.excess(&lb).iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "spec.ports: 3 ports are more than the 2 a Service may have here (--max-service-ports)",
                "spec.loadBalancerSourceRanges: 4 source ranges are more than the 3 a Service may have here \
                 (--max-source-ranges)",
            ]
        );
    }
}
