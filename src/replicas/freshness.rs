//! How fresh a read must be to be served by a standby.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Lsn, StandbyStatus};
use crate::error::Error;

/// What a read asks of a standby before it may serve it; a read no standby
/// satisfies is served by the primary.
///
/// ```
/// use std::time::Duration;
/// use tasker_diesel::replicas::{Freshness, Lsn};
///
/// // Data at most two seconds old.
/// let dashboard = Freshness::within(Duration::from_secs(2));
/// // Must see the commit that ended at `lsn`; wait up to 100 ms for a
/// // standby to replay it, then ask the primary.
/// let lsn: Lsn = "0/3001150".parse().unwrap();
/// let after_write = Freshness::any().at_least(lsn).wait_up_to(Duration::from_millis(100));
/// # let _ = (dashboard, after_write);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Freshness {
    max_lag: Option<Duration>,
    min_lsn: Option<Lsn>,
    wait: Duration,
}

impl Freshness {
    /// Any standby that is up and in recovery, however far behind.
    pub const fn any() -> Self {
        Freshness {
            max_lag: None,
            min_lsn: None,
            wait: Duration::ZERO,
        }
    }

    /// A standby whose [replay lag](StandbyStatus::replay_lag) is known and
    /// at most `max_lag`. `Duration::ZERO` admits only a standby that has
    /// replayed all the WAL it received while streaming.
    pub const fn within(max_lag: Duration) -> Self {
        Freshness {
            max_lag: Some(max_lag),
            ..Freshness::any()
        }
    }

    /// Also requires the standby to have replayed the WAL up to `lsn`, the
    /// primary's position after a commit ([`super::commit_lsn`],
    /// [`super::RoutedPool::write`]): read-your-writes.
    pub const fn at_least(self, lsn: Lsn) -> Self {
        Freshness {
            min_lsn: Some(lsn),
            ..self
        }
    }

    /// When every standby that is up is too far behind, waits up to `wait`
    /// for one to catch up (checking it every few milliseconds) before the
    /// read goes to the primary. Zero (the default) never waits.
    pub const fn wait_up_to(self, wait: Duration) -> Self {
        Freshness { wait, ..self }
    }

    /// The largest replay lag allowed, `None` for any.
    pub const fn max_lag(&self) -> Option<Duration> {
        self.max_lag
    }

    /// The WAL position a standby must have replayed, if any.
    pub const fn min_lsn(&self) -> Option<Lsn> {
        self.min_lsn
    }

    /// How long a read may wait for a standby to catch up.
    pub const fn wait(&self) -> Duration {
        self.wait
    }

    /// Whether a standby in `status` may serve the read, or why not.
    pub fn admits(&self, status: &StandbyStatus) -> Result<(), SkipReason> {
        if !status.in_recovery {
            return Err(SkipReason::NotInRecovery);
        }
        if let Some(wanted) = self.min_lsn {
            if status.replayed_lsn.is_none_or(|replayed| replayed < wanted) {
                return Err(SkipReason::NotReplayed {
                    replayed: status.replayed_lsn,
                    wanted,
                });
            }
        }
        if let Some(max_lag) = self.max_lag {
            let lag = status.replay_lag();
            if lag.is_none_or(|lag| lag > max_lag) {
                return Err(SkipReason::TooFarBehind { lag, max_lag });
            }
        }
        Ok(())
    }
}

/// A standby passed over by a read, and why.
#[derive(Debug, Clone)]
pub struct SkippedStandby {
    /// Its position in the order the standbys were given.
    pub standby: usize,
    /// Why it did not serve the read.
    pub reason: SkipReason,
}

/// Why a standby did not serve a read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SkipReason {
    /// No connection within the standby pool's `connection_timeout`, or its
    /// status query failed.
    #[error("unavailable: {0}")]
    Unavailable(Arc<Error>),
    /// It failed or was found promoted recently; it is not tried again
    /// before `until`.
    #[error("skipped after a recent failure")]
    BackingOff {
        /// When the standby may be tried again.
        until: Instant,
    },
    /// `pg_is_in_recovery()` is false: a promoted standby or a primary.
    #[error("not a standby (not in recovery)")]
    NotInRecovery,
    /// Its replay lag is unknown or above the bound.
    #[error("replay lag {} above the allowed {max_lag:?}", describe(.lag.map(|lag| format!("{lag:?}"))))]
    TooFarBehind {
        /// The standby's replay lag; `None` when unknown.
        lag: Option<Duration>,
        /// The largest replay lag the read allows.
        max_lag: Duration,
    },
    /// It has not replayed the WAL position the read asked for.
    #[error("replayed up to {}, not yet {wanted}", describe(.replayed.map(|lsn| lsn.to_string())))]
    NotReplayed {
        /// The WAL position the standby has replayed; `None` when unknown.
        replayed: Option<Lsn>,
        /// The WAL position the read must see.
        wanted: Lsn,
    },
}

impl SkipReason {
    /// Whether the standby may pass the check by replaying more WAL, so that
    /// waiting for it makes sense.
    pub(super) fn may_catch_up(&self) -> bool {
        matches!(
            self,
            SkipReason::TooFarBehind { .. } | SkipReason::NotReplayed { .. }
        )
    }
}

/// A value for a message, or `unknown`.
fn describe(value: Option<String>) -> String {
    value.unwrap_or_else(|| "unknown".to_owned())
}
