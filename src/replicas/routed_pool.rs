//! A primary pool and standby pools, with reads routed by freshness.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::r2d2::{Builder, ConnectionManager, Pool};
use diesel::PgConnection;

use super::routed_connection::{mark_broken, SET_READ_ONLY};
use super::StandbyStatus;
use super::{commit_lsn, Freshness, Lsn, Node, RoutedConnection, SkipReason, SkippedStandby};
use crate::error::Result;
use crate::pool::{build_pool, PgPool, PooledPgConnection};

/// How long a standby that failed (or turned out not to be one) is skipped
/// before it is tried again, unless [`RoutedPoolBuilder::standby_retry_after`]
/// says otherwise.
pub const DEFAULT_STANDBY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long [`standby_pool_builder`] lets a read wait for a standby
/// connection before it counts the standby as down.
pub const DEFAULT_STANDBY_CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);

/// How often a read that may wait ([`Freshness::wait_up_to`]) checks the
/// standbys again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// An r2d2 pool for the primary and one for each hot standby.
///
/// - [`RoutedPool::primary`] is for writes, claims, transitions and any
///   read that must see its own writes in the same breath: it is always the
///   primary.
/// - [`RoutedPool::read`] is for readiness, execution context and health
///   reads that a standby may serve: the first standby (in turn, to spread
///   the load) that is up, is a standby and is as fresh as the
///   [`Freshness`] asks, else the primary. A standby that is down, promoted
///   or behind never makes the read fail.
///
/// Cloning is cheap and shares the pools.
#[derive(Clone)]
pub struct RoutedPool {
    inner: Arc<Inner>,
}

struct Inner {
    primary: PgPool,
    standbys: Vec<Standby>,
    /// Where the next read starts looking, so reads take turns.
    next: AtomicUsize,
    retry_after: Duration,
}

struct Standby {
    pool: PgPool,
    /// Not tried before this instant after a failure.
    skip_until: Mutex<Option<Instant>>,
}

impl RoutedPool {
    /// The primary's pool and the standbys' pools, with default settings.
    /// Standby pools are best built with [`standby_pool_builder`].
    pub fn new(primary: PgPool, standbys: impl IntoIterator<Item = PgPool>) -> Self {
        RoutedPool::builder(primary).standbys(standbys).build()
    }

    /// Pools for the primary and the standbys at these URLs. Fails only when
    /// the primary cannot be reached: standbys that are down are skipped
    /// until they come up.
    pub fn connect(primary_url: &str, standby_urls: &[impl AsRef<str>]) -> Result<Self> {
        Ok(RoutedPool::new(
            build_pool(primary_url)?,
            standby_urls
                .iter()
                .map(|url| build_standby_pool(url.as_ref())),
        ))
    }

    /// A builder, to set how standbys are retried.
    pub fn builder(primary: PgPool) -> RoutedPoolBuilder {
        RoutedPoolBuilder {
            primary,
            standbys: Vec::new(),
            retry_after: DEFAULT_STANDBY_RETRY_AFTER,
        }
    }

    /// A connection to the primary, for writes and for reads that must be
    /// current.
    pub fn primary(&self) -> Result<PooledPgConnection> {
        Ok(self.inner.primary.get()?)
    }

    /// The primary's pool.
    pub fn primary_pool(&self) -> &PgPool {
        &self.inner.primary
    }

    /// How many standbys the pool routes to.
    pub fn standby_count(&self) -> usize {
        self.inner.standbys.len()
    }

    /// Runs `write` on a primary connection and returns its value with the
    /// WAL position after it ([`commit_lsn`]), for a later
    /// [`Freshness::at_least`]. `write` must have committed when it returns
    /// (Diesel's `transaction` does, and so does every write-path function).
    pub fn write<T>(&self, write: impl FnOnce(&mut PgConnection) -> Result<T>) -> Result<(T, Lsn)> {
        let mut conn = self.primary()?;
        let value = write(&mut conn)?;
        let lsn = commit_lsn(&mut conn)?;
        Ok((value, lsn))
    }

    /// A read-only connection to a standby as fresh as `freshness` asks,
    /// else to the primary; [`RoutedConnection::node`] says which.
    ///
    /// Standbys are tried in turn, starting one further along at every
    /// read. Each try is one checkout and one status query
    /// ([`StandbyStatus::load`]); a standby that gives no connection within
    /// its pool's `connection_timeout`, fails the query or is not in recovery
    /// is skipped for the pool's retry delay. Only when the primary gives no
    /// connection is there an error.
    pub fn read(&self, freshness: &Freshness) -> Result<RoutedConnection> {
        let inner = &*self.inner;
        let mut skipped = Vec::new();
        let count = inner.standbys.len();
        if count > 0 {
            let deadline = crate::arguments::deadline_after(freshness.wait());
            let first = inner.next.fetch_add(1, Ordering::Relaxed);
            loop {
                skipped.clear();
                for index in (0..count).map(|offset| first.wrapping_add(offset) % count) {
                    match inner.try_standby(index, freshness) {
                        Ok(conn) => {
                            return Ok(RoutedConnection::new(conn, Node::Standby(index), skipped))
                        }
                        Err(reason) => skipped.push(SkippedStandby {
                            standby: index,
                            reason,
                        }),
                    }
                }
                let now = Instant::now();
                let may_catch_up = skipped.iter().any(|skip| skip.reason.may_catch_up());
                if !may_catch_up || now >= deadline {
                    break;
                }
                thread::sleep(POLL_INTERVAL.min(deadline - now));
            }
        }
        let mut conn = inner.primary.get()?;
        if let Err(error) = conn.batch_execute(SET_READ_ONLY) {
            mark_broken(&mut conn);
            return Err(error.into());
        }
        Ok(RoutedConnection::new(conn, Node::Primary, skipped))
    }
}

impl Inner {
    /// A connection to standby `index` if it may serve a read of `freshness`.
    fn try_standby(
        &self,
        index: usize,
        freshness: &Freshness,
    ) -> std::result::Result<PooledPgConnection, SkipReason> {
        let standby = &self.standbys[index];
        if let Some(until) = standby.skipped_until() {
            return Err(SkipReason::BackingOff { until });
        }
        let (conn, status) = standby
            .checkout()
            .map_err(|error| self.back_off(standby, SkipReason::Unavailable(Arc::new(error))))?;
        match freshness.admits(&status) {
            Err(SkipReason::NotInRecovery) => {
                Err(self.back_off(standby, SkipReason::NotInRecovery))
            }
            Err(reason) => Err(reason),
            Ok(()) => Ok(conn),
        }
    }

    fn back_off(&self, standby: &Standby, reason: SkipReason) -> SkipReason {
        *standby.skip_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::arguments::deadline_after(self.retry_after));
        reason
    }
}

impl Standby {
    fn skipped_until(&self) -> Option<Instant> {
        let mut skip_until = self.skip_until.lock().unwrap_or_else(|e| e.into_inner());
        match *skip_until {
            Some(until) if Instant::now() < until => Some(until),
            _ => {
                *skip_until = None;
                None
            }
        }
    }

    /// A connection and the standby's status. Pooled connections whose
    /// status query fails (the standby restarted since they were opened)
    /// are discarded and the next one tried, up to the pool's size.
    fn checkout(&self) -> Result<(PooledPgConnection, StandbyStatus)> {
        let mut attempts_left = self.pool.max_size();
        loop {
            let mut conn = self.pool.get()?;
            match StandbyStatus::load(&mut conn) {
                Ok(status) => return Ok((conn, status)),
                Err(error) => {
                    mark_broken(&mut conn);
                    if attempts_left == 0 {
                        return Err(error);
                    }
                    attempts_left -= 1;
                }
            }
        }
    }
}

/// Builds a [`RoutedPool`].
pub struct RoutedPoolBuilder {
    primary: PgPool,
    standbys: Vec<PgPool>,
    retry_after: Duration,
}

impl RoutedPoolBuilder {
    /// Adds a standby's pool.
    pub fn standby(mut self, pool: PgPool) -> Self {
        self.standbys.push(pool);
        self
    }

    /// Adds standbys' pools.
    pub fn standbys(mut self, pools: impl IntoIterator<Item = PgPool>) -> Self {
        self.standbys.extend(pools);
        self
    }

    /// How long a standby that failed, or turned out not to be one, is
    /// skipped before reads try it again (default
    /// [`DEFAULT_STANDBY_RETRY_AFTER`]). Only one read per period pays for a
    /// standby that is down.
    pub fn standby_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The pool.
    pub fn build(self) -> RoutedPool {
        RoutedPool {
            inner: Arc::new(Inner {
                primary: self.primary,
                standbys: self
                    .standbys
                    .into_iter()
                    .map(|pool| Standby {
                        pool,
                        skip_until: Mutex::new(None),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                retry_after: self.retry_after,
            }),
        }
    }
}

/// An r2d2 builder suited to a standby: a short `connection_timeout`
/// ([`DEFAULT_STANDBY_CONNECTION_TIMEOUT`]), so a read gives up on a standby
/// that is down quickly, and no test query on checkout, since every checkout
/// runs the status query anyway.
pub fn standby_pool_builder() -> Builder<ConnectionManager<PgConnection>> {
    Pool::builder()
        .connection_timeout(DEFAULT_STANDBY_CONNECTION_TIMEOUT)
        .test_on_check_out(false)
}

/// A pool for the standby at `url`, from [`standby_pool_builder`]. It opens
/// its connections in the background, so a standby that is down does not
/// stop the service from starting.
pub fn build_standby_pool(url: &str) -> PgPool {
    standby_pool_builder().build_unchecked(ConnectionManager::new(url))
}
