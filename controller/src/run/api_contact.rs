//! When this process last heard from the API server: the elector asks it something every
//! retry period, follower or leader, so a silence of a few seconds means the API server is
//! away or hung for this process, whatever else the watches say.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A silence this long, several retry periods, means the API server does not answer.
const SILENCE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ApiContact(Arc<Mutex<Instant>>);

impl Default for ApiContact {
    fn default() -> Self {
        ApiContact(Arc::new(Mutex::new(Instant::now())))
    }
}

impl ApiContact {
    /// The API server answered, whatever it said.
    pub fn answered(&self) {
        *self.0.lock().expect("contact lock") = Instant::now();
    }

    /// Whether the API server has answered within `SILENCE` of `now`.
    pub fn answering(&self, now: Instant) -> bool {
        now.saturating_duration_since(*self.0.lock().expect("contact lock")) < SILENCE
    }
}
