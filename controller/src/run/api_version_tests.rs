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
