//! Reads from PostgreSQL hot standbys (streaming replicas), with a freshness
//! bound.
//!
//! A [`RoutedPool`] holds a pool for the primary and one per standby.
//! Writes, claims, transitions and reads that must see their own writes at
//! once take [`RoutedPool::primary`]; readiness, execution-context and
//! health reads may take [`RoutedPool::read`] with a [`Freshness`], and are
//! served by a standby when one is up, is really a standby
//! (`pg_is_in_recovery()`) and is fresh enough, else by the primary:
//!
//! ```no_run
//! use std::time::Duration;
//! use tasker_diesel::replicas::{Freshness, RoutedPool};
//! use tasker_diesel::workflow::{create_task, TaskRequest, TaskTemplate, StepTemplate};
//! use tasker_diesel::{StepReadinessStatus, TaskExecutionContext};
//!
//! # fn main() -> tasker_diesel::Result<()> {
//! let pool = RoutedPool::connect(
//!     "postgres://app@primary/tasker",
//!     &["postgres://app@standby-1/tasker", "postgres://app@standby-2/tasker"],
//! )?;
//! let template = TaskTemplate::new("shop", "fulfil_order", "1.0.0")
//!     .step(StepTemplate::new("validate"));
//! // The write, and the WAL position after it.
//! let (created, lsn) = pool.write(|conn| create_task(conn, &TaskRequest::new(&template)))?;
//! let task_id = created.task.task_id;
//!
//! // A dashboard: data at most 5 s old is fine.
//! let mut conn = pool.read(&Freshness::within(Duration::from_secs(5)))?;
//! let context = TaskExecutionContext::find(&mut conn, task_id)?;
//!
//! // Right after the write: only a standby that has replayed it.
//! let mut conn = pool.read(&Freshness::any().at_least(lsn))?;
//! let steps = StepReadinessStatus::for_task(task_id).load(&mut conn)?;
//! println!("{} served {context:?} {steps:?}", conn.node());
//! # Ok(())
//! # }
//! ```

mod freshness;
mod lsn;
mod routed_connection;
mod routed_pool;
mod standby_status;

pub use freshness::{Freshness, SkipReason, SkippedStandby};
pub use lsn::{Lsn, ParseLsnError};
pub use routed_connection::{Node, RoutedConnection};
pub use routed_pool::{
    build_standby_pool, standby_pool_builder, RoutedPool, RoutedPoolBuilder,
    DEFAULT_STANDBY_CONNECTION_TIMEOUT, DEFAULT_STANDBY_RETRY_AFTER,
};
pub use standby_status::{commit_lsn, StandbyStatus};
