//! Waiting for the signal that stops a container, without a signal handler.

use nix::sys::signal::{SigSet, Signal};

/// SIGTERM and SIGINT, blocked in the calling thread (and so in threads it spawns later), to be
/// taken synchronously with `wait`.
pub struct Termination {
    signals: SigSet,
}

impl Termination {
    pub fn block() -> nix::Result<Termination> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGTERM);
        signals.add(Signal::SIGINT);
        signals.thread_block()?;
        Ok(Termination { signals })
    }

    /// Returns the signal that arrived.
    pub fn wait(&self) -> nix::Result<Signal> {
        self.signals.wait()
    }
}
