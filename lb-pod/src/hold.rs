//! `hold`: keeps the pod alive, with no privilege, until kubelet stops it.
//!
//! The signals are blocked and then waited for with `sigwait`, rather than handled: a blocked
//! signal is delivered even to PID 1 of a PID namespace, which otherwise drops signals it has
//! no handler for.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use crate::error::Error;

/// Blocks SIGTERM and SIGINT, so that they wait to be taken by `wait`.
pub fn block_signals() -> Result<SigSet, Error> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|errno| Error::Signal { step: "blocking SIGTERM and SIGINT", errno })?;
    Ok(set)
}

/// Returns once SIGTERM or SIGINT arrives.
pub fn wait(signals: &SigSet) -> Result<(), Error> {
    eprintln!("holding until SIGTERM or SIGINT");
    let signal = signals.wait().map_err(|errno| Error::Signal { step: "waiting for a signal", errno })?;
    eprintln!("received {signal}, exiting");
    Ok(())
}
