//! What the API server's version tells of the features it has.

/// Whether a Kubernetes version, as the API server (`1`, `29+`) or a kubelet (`v1`, `29`)
/// gives it, is at least 1.`wanted_minor`.
pub fn version_at_least(major: &str, minor: &str, wanted_minor: u32) -> bool {
    let number = |text: &str| text.trim_start_matches('v').trim_end_matches('+').parse::<u32>().ok();
    matches!((number(major), number(minor)), (Some(major), Some(minor)) if major > 1 || minor >= wanted_minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_the_api_server_and_kubelets_write_them() {
        for (major, minor, at_least_29) in [
            ("1", "20", false),
            ("1", "28+", false),
            ("1", "29", true),
            ("v1", "33", true),
            ("2", "0", true),
            ("", "x", false),
        ] {
            assert_eq!(version_at_least(major, minor, 29), at_least_29, "{major}.{minor}");
        }
    }
}
