//! Helpers shared by the end-to-end cluster's two static programs.

pub mod echo;
pub mod signals;
