//! Readiness and execution context: the rows of the schema's SQL functions
//! and the queries that load them.
//!
//! The rules live in the database, written once; this module only calls the
//! functions. Every statement is constant SQL text with bind parameters, so
//! Diesel prepares it once per connection and reuses it.
//!
//! Every read is an associated function of the row type it returns:
//!
//! - `find(conn, id)` and `find_many(conn, ids)` for rows asked for by id
//!   ([`TaskExecutionContext`]);
//! - `load(conn, ..)` for the rest: [`SystemHealthCounts::load`],
//!   [`DependencyLevel::load`], [`ReadinessDrift::load`], and
//!   [`StepReadinessQuery::load`] at the end of a scope such as
//!   `StepReadinessStatus::for_task(id).ready_for_execution()`.
//!
//! The one write here, [`rebuild_readiness`], is a function.

mod context;
mod health;
mod levels;
mod maintenance;
mod step;

use crate::call::FunctionCall;
pub use context::TaskExecutionContext;
pub use health::SystemHealthCounts;
pub use levels::DependencyLevel;
pub use maintenance::{rebuild_readiness, ReadinessDrift};
pub use step::{StepReadinessQuery, StepReadinessStatus};
