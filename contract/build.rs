//! Stamps the binaries with the release they are built from: images/build.sh and
//! images/release.sh set HOSTLB_VERSION and HOSTLB_REVISION. A plain cargo build has the
//! crate's version and an unknown revision.

fn main() {
    let version = stamp("HOSTLB_VERSION")
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION"));
    let revision = stamp("HOSTLB_REVISION").unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HOSTLB_BUILD_VERSION={version}");
    println!("cargo:rustc-env=HOSTLB_BUILD_REVISION={revision}");
}

/// The variable's value unless it is unset or empty. Cargo runs this script again whenever it
/// changes, so that a binary never keeps the stamp of an earlier build.
fn stamp(variable: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={variable}");
    std::env::var(variable).ok().filter(|value| !value.is_empty())
}
