//! System-wide monitoring counts.

use diesel::pg::Pg;
use diesel::sql_types::{BigInt, Integer};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::FunctionCall;
use crate::Result;

/// Tasks and steps by current state (no transition counts as pending),
/// failed steps by whether they may be retried, and connection usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct SystemHealthCounts {
    /// Every task.
    #[diesel(sql_type = BigInt)]
    pub total_tasks: i64,
    /// Tasks whose current state is `Pending`, or that have no transition.
    #[diesel(sql_type = BigInt)]
    pub pending_tasks: i64,
    /// Tasks whose current state is `InProgress`.
    #[diesel(sql_type = BigInt)]
    pub in_progress_tasks: i64,
    /// Tasks whose current state is `Complete`.
    #[diesel(sql_type = BigInt)]
    pub complete_tasks: i64,
    /// Tasks whose current state is `Error`.
    #[diesel(sql_type = BigInt)]
    pub error_tasks: i64,
    /// Tasks whose current state is `Cancelled`.
    #[diesel(sql_type = BigInt)]
    pub cancelled_tasks: i64,
    /// Tasks whose current state is `ResolvedManually`.
    #[diesel(sql_type = BigInt)]
    pub resolved_manually_tasks: i64,
    /// Every step of every task.
    #[diesel(sql_type = BigInt)]
    pub total_steps: i64,
    /// Steps in `Pending` (including those without a transition).
    #[diesel(sql_type = BigInt)]
    pub pending_steps: i64,
    /// Steps in `InProgress`.
    #[diesel(sql_type = BigInt)]
    pub in_progress_steps: i64,
    /// Steps in `Complete`.
    #[diesel(sql_type = BigInt)]
    pub complete_steps: i64,
    /// Steps in `Error`, retryable or not.
    #[diesel(sql_type = BigInt)]
    pub error_steps: i64,
    /// Steps in `Cancelled`.
    #[diesel(sql_type = BigInt)]
    pub cancelled_steps: i64,
    /// Steps in `ResolvedManually`.
    #[diesel(sql_type = BigInt)]
    pub resolved_manually_steps: i64,
    /// Steps in `Error` that are still retry eligible.
    #[diesel(sql_type = BigInt)]
    pub retryable_error_steps: i64,
    /// Steps in `Error` that have used up their attempts.
    #[diesel(sql_type = BigInt)]
    pub exhausted_retry_steps: i64,
    /// Client connections to the server, all databases.
    #[diesel(sql_type = BigInt)]
    pub active_connections: i64,
    /// The server's `max_connections`.
    #[diesel(sql_type = Integer)]
    pub max_connections: i32,
}

impl SystemHealthCounts {
    /// The counts now (`tasker_system_health_counts`). They cost a pass over
    /// the tasks, their current transitions and their maintained step counts
    /// (not over the steps): poll every few seconds, not per request.
    pub fn load(conn: &mut PgConnection) -> Result<Self> {
        Ok(FunctionCall::new("tasker_system_health_counts", ()).get_result(conn)?)
    }
}
