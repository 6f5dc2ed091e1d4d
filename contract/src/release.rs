//! The release a binary is built from, one definition for every hostlb binary: what
//! `--version` prints, and what the controller logs at start and exports as
//! `hostlb_build_info`. Set at build time (see build.rs).

/// The release's version; the crate's for a build outside images/build.sh and images/release.sh.
pub const VERSION: &str = env!("HOSTLB_BUILD_VERSION");
/// The commit built, with `-dirty` when the tree had changes; `unknown` outside git, or for a
/// build outside images/build.sh and images/release.sh.
pub const REVISION: &str = env!("HOSTLB_BUILD_REVISION");
/// What `--version` prints after the binary's name.
pub const VERSION_AND_REVISION: &str =
    concat!(env!("HOSTLB_BUILD_VERSION"), " (revision ", env!("HOSTLB_BUILD_REVISION"), ")");
