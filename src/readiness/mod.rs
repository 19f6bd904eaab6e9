//! Readiness and execution context: the rows of the schema's SQL functions
//! and the queries that load them.
//!
//! The rules live in the database, written once; this module only calls the
//! functions. Every statement is constant SQL text with bind parameters, so
//! Diesel prepares it once per connection and reuses it.

mod context;
mod health;
mod levels;
mod maintenance;
mod step;

use crate::call::FunctionCall;
pub use context::TaskExecutionContext;
pub use health::{get_system_health_counts, SystemHealthCounts};
pub use levels::{calculate_dependency_levels, DependencyLevel};
pub use maintenance::{readiness_drift, rebuild_readiness, ReadinessDrift};
pub use step::{StepReadinessQuery, StepReadinessStatus};
