// The README's links to the manual point at its files on GitHub; these
// definitions come first, so on docs.rs the same links go to the modules.
#![doc = "[guide-readiness]: crate::guide::readiness"]
#![doc = "[guide-workflows]: crate::guide::workflows"]
#![doc = "[guide-scaling]: crate::guide::scaling"]
#![doc = "[guide-semantics]: crate::guide::semantics"]
#![doc = "[guide-rails]: crate::guide::rails"]
#![doc = "[guide-schema]: crate::guide::schema"]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod adoption;
mod arguments;
mod call;
pub mod enums;
pub mod error;
pub mod functions;
pub mod guide;
mod jsonb;
pub mod migrations;
pub mod models;
pub mod pool;
pub mod readiness;
pub mod replicas;
/// The Diesel `table!` and SQL type definitions of the Tasker tables, generated from the migrations by `diesel print-schema`.
#[rustfmt::skip]
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "worker")]
pub mod worker;
pub mod workflow;

pub use arguments::{MAX_DURATION, MAX_IDS_PER_CALL};
pub use bigdecimal::BigDecimal;
pub use enums::{ExecutionStatus, HealthStatus, RecommendedAction, StepState, TaskState};
pub use error::{Error, ErrorKind, IntegrityRule, Refusal, Result};
pub use migrations::{run_pending_migrations, MIGRATIONS};
pub use pool::{build_pool, establish_connection, PgPool, PooledPgConnection};
pub use readiness::{
    DependencyLevel, StepReadinessQuery, StepReadinessStatus, SystemHealthCounts,
    TaskExecutionContext,
};
pub use replicas::{Freshness, RoutedPool};
