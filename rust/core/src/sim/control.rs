//! Following a running simulation from another thread, and stopping it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Lets another thread follow a running simulation and stop it.
#[derive(Debug, Default)]
pub struct Control {
    pub(super) cancel: AtomicBool,
    pub(super) arrived: AtomicU64,
}

impl Control {
    /// A control with nothing cancelled and no progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the simulation to stop at its next check (every few thousand events).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Requests that have arrived so far.
    pub fn arrived(&self) -> u64 {
        self.arrived.load(Ordering::Relaxed)
    }
}
