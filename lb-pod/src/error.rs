//! The one error type of the lb-pod, and the exit code each kind of failure maps to.

use std::fmt;
use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument (or its environment fallback) that cannot be honoured: exit code 2. `arg`
    /// is the flag as `hostlb_contract::flag` spells it, without its `--`.
    #[error("{}", BadArgumentDisplay { arg, value: value.as_deref(), reason })]
    BadArgument { arg: &'static str, value: Option<String>, reason: String },

    /// Reading or writing a forwarding sysctl failed.
    #[error("{action} {}: {source}", path.display())]
    Sysctl { action: &'static str, path: PathBuf, source: std::io::Error },

    /// A system call on the netlink socket failed (opening it, sending, receiving).
    #[error("netlink: {step}: {errno}")]
    Netlink { step: &'static str, errno: Errno },

    /// The kernel answered a step of the nftables batch (or the batch as a whole, `step`
    /// None) with an error; nothing of the batch was applied.
    #[error("{}", RefusedDisplay { step: step.as_ref(), total: *total, errno: *errno, detail: detail.as_deref() })]
    Refused { step: Option<(usize, String)>, total: usize, errno: Errno, detail: Option<String> },

    /// The kernel refused a conntrack request.
    #[error("conntrack: {step}: refused by the kernel: {errno}")]
    Conntrack { step: &'static str, errno: Errno },

    /// The kernel's answers did not account for every step of the batch.
    #[error("nftables: {0}")]
    Incomplete(String),

    /// The health check did not answer 200.
    #[error("probe {target}: {reason}")]
    Probe { target: String, reason: String },

    /// Waiting for a signal failed.
    #[error("signals: {step}: {errno}")]
    Signal { step: &'static str, errno: Errno },
}

impl Error {
    pub fn bad(arg: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArgument { arg, value: Some(value.into()), reason: reason.into() }
    }

    pub fn missing(arg: &'static str, reason: impl Into<String>) -> Self {
        Error::BadArgument { arg, value: None, reason: reason.into() }
    }

    /// The kernel refused a batch because something it adds exclusively (a table of ours) is
    /// already there.
    pub fn is_already_there(&self) -> bool {
        matches!(self, Error::Refused { errno: Errno::EEXIST, .. })
    }

    /// 2 for bad arguments (as clap does for usage errors), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadArgument { .. } => 2,
            _ => 1,
        }
    }
}

struct BadArgumentDisplay<'a> {
    arg: &'a str,
    value: Option<&'a str>,
    reason: &'a str,
}

impl fmt::Display for BadArgumentDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(value) => write!(f, "--{} {:?}: {}", self.arg, value, self.reason),
            None => write!(f, "--{}: {}", self.arg, self.reason),
        }
    }
}

struct RefusedDisplay<'a> {
    step: Option<&'a (usize, String)>,
    total: usize,
    errno: Errno,
    detail: Option<&'a str>,
}

impl fmt::Display for RefusedDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some((index, step)) => {
                write!(f, "nftables: step {index} of {} ({step}) refused by the kernel: {}", self.total, self.errno)?
            }
            None => write!(f, "nftables: the kernel refused the batch: {}", self.errno)?,
        }
        if let Some(detail) = self.detail {
            write!(f, " ({detail})")?;
        }
        if self.errno == Errno::EPERM {
            write!(f, "; programming nftables needs CAP_NET_ADMIN in the pod's network namespace")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hostlb_contract::flag;

    use super::*;

    #[test]
    fn bad_argument_names_the_argument_and_quotes_the_value() {
        let error = Error::bad(flag::PORT, "tcp:80:80", "tcp 80 is already forwarded to port 8080");
        assert_eq!(error.to_string(), r#"--port "tcp:80:80": tcp 80 is already forwarded to port 8080"#);
        assert_eq!(error.exit_code(), 2);
        assert_eq!(Error::missing(flag::TO, "no destination").to_string(), "--to: no destination");
    }

    #[test]
    fn kernel_refusal_names_the_step_and_the_errno() {
        let error = Error::Refused {
            step: Some((3, "add chain ip hostlb prerouting".into())),
            total: 9,
            errno: Errno::EINVAL,
            detail: Some("unknown chain type".into()),
        };
        assert_eq!(
            error.to_string(),
            "nftables: step 3 of 9 (add chain ip hostlb prerouting) refused by the kernel: \
             EINVAL: Invalid argument (unknown chain type)"
        );
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn a_refused_batch_without_privilege_says_what_is_missing() {
        let error = Error::Refused { step: None, total: 9, errno: Errno::EPERM, detail: None };
        assert_eq!(
            error.to_string(),
            "nftables: the kernel refused the batch: EPERM: Operation not permitted; \
             programming nftables needs CAP_NET_ADMIN in the pod's network namespace"
        );
    }
}
