//! What the API server's version tells of the features it has.

/// Whether a Kubernetes version, as the API server (`1`, `29+`) or a kubelet (`v1`, `29`)
/// gives it, is at least 1.`wanted_minor`.
pub fn version_at_least(major: &str, minor: &str, wanted_minor: u32) -> bool {
    let number = |text: &str| text.trim_start_matches('v').trim_end_matches('+').parse::<u32>().ok();
    matches!((number(major), number(minor)), (Some(major), Some(minor)) if major > 1 || minor >= wanted_minor)
}

#[cfg(test)]
#[path = "api_version_tests.rs"]
mod tests;
