//! Helpers for the end-to-end tests of hostlb on the harness's real two-node cluster, one module
//! per concern.

pub mod cluster;
pub mod dataplane;
pub mod figures;
pub mod namespace;
pub mod poll;
pub mod status;
pub mod traffic;
