//! What a worker has done so far, counted as it goes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters of a running worker ([`super::WorkerHandle::stats`]).
#[derive(Debug, Default)]
pub(super) struct Counters {
    claimed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    retried: AtomicU64,
    released: AtomicU64,
    lost: AtomicU64,
    expired_released: AtomicU64,
    finalized: AtomicU64,
    transient_errors: AtomicU64,
    handler_nanos: AtomicU64,
}

/// A snapshot of a worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Steps claimed.
    pub claimed: u64,
    /// Steps whose handler succeeded and whose result was recorded.
    pub completed: u64,
    /// Steps whose handler failed (panics included) and whose failure was
    /// recorded.
    pub failed: u64,
    /// Handlers that panicked (each also counted as failed).
    pub panicked: u64,
    /// Claimed steps on their second attempt or later.
    pub retried: u64,
    /// Steps given back unfinished: not started before a shutdown, over a
    /// kind's limit, or still running at the shutdown deadline.
    pub released: u64,
    /// Results refused because the claim no longer held (the lease ran out,
    /// the task was cancelled, ...).
    pub lost: u64,
    /// Expired claims (of any worker) the sweeper released.
    pub expired_released: u64,
    /// Tasks the sweeper finalized.
    pub finalized: u64,
    /// Calls retried after a lost connection or a transient database error.
    pub transient_errors: u64,
    /// Time spent in handlers, over all threads.
    pub handler_time: Duration,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        Stats {
            claimed: self.claimed.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            retried: self.retried.load(Relaxed),
            released: self.released.load(Relaxed),
            lost: self.lost.load(Relaxed),
            expired_released: self.expired_released.load(Relaxed),
            finalized: self.finalized.load(Relaxed),
            transient_errors: self.transient_errors.load(Relaxed),
            handler_time: Duration::from_nanos(self.handler_nanos.load(Relaxed)),
        }
    }

    pub fn claimed(&self, steps: usize, retries: usize) {
        self.claimed.fetch_add(steps as u64, Relaxed);
        self.retried.fetch_add(retries as u64, Relaxed);
    }

    pub fn completed(&self) {
        self.completed.fetch_add(1, Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }

    pub fn panicked(&self) {
        self.panicked.fetch_add(1, Relaxed);
    }

    pub fn released(&self, steps: usize) {
        self.released.fetch_add(steps as u64, Relaxed);
    }

    pub fn lost(&self) {
        self.lost.fetch_add(1, Relaxed);
    }

    pub fn expired_released(&self, steps: usize) {
        self.expired_released.fetch_add(steps as u64, Relaxed);
    }

    pub fn finalized(&self, tasks: usize) {
        self.finalized.fetch_add(tasks as u64, Relaxed);
    }

    pub fn transient_error(&self) {
        self.transient_errors.fetch_add(1, Relaxed);
    }

    pub fn handler_time(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.handler_nanos.fetch_add(nanos, Relaxed);
    }
}
