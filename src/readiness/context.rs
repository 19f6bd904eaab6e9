//! Task execution context rows.

use bigdecimal::BigDecimal;
use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Integer, Numeric};
use diesel::{IntoSql, OptionalExtension, PgConnection, QueryResult, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::FunctionCall;
use crate::enums::sql_types::{TaskerExecutionStatus, TaskerHealthStatus, TaskerRecommendedAction};
use crate::enums::{ExecutionStatus, HealthStatus, RecommendedAction, TaskState};
use crate::schema::sql_types::TaskerTaskState;

/// One row of `get_task_execution_context`: where a task stands and what the
/// orchestrator should do with it next.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct TaskExecutionContext {
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    #[diesel(sql_type = Integer)]
    pub named_task_id: i32,
    /// The task's own state; `Pending` when it has no transition.
    #[diesel(sql_type = TaskerTaskState)]
    pub status: TaskState,
    #[diesel(sql_type = BigInt)]
    pub total_steps: i64,
    #[diesel(sql_type = BigInt)]
    pub pending_steps: i64,
    #[diesel(sql_type = BigInt)]
    pub in_progress_steps: i64,
    /// Steps `Complete` or `ResolvedManually`.
    #[diesel(sql_type = BigInt)]
    pub completed_steps: i64,
    /// Steps in `Error`.
    #[diesel(sql_type = BigInt)]
    pub failed_steps: i64,
    #[diesel(sql_type = BigInt)]
    pub cancelled_steps: i64,
    /// Steps ready for execution now.
    #[diesel(sql_type = BigInt)]
    pub ready_steps: i64,
    #[diesel(sql_type = TaskerExecutionStatus)]
    pub execution_status: ExecutionStatus,
    #[diesel(sql_type = TaskerRecommendedAction)]
    pub recommended_action: RecommendedAction,
    /// `round(100 * completed / total, 2)`, exact; 0 for a task without steps.
    #[diesel(sql_type = Numeric)]
    pub completion_percentage: BigDecimal,
    #[diesel(sql_type = TaskerHealthStatus)]
    pub health_status: HealthStatus,
}

impl TaskExecutionContext {
    /// The context of one task (`get_task_execution_context`), `None` for an
    /// unknown task.
    pub fn find(conn: &mut PgConnection, task_id: i64) -> QueryResult<Option<Self>> {
        FunctionCall::new("get_task_execution_context", task_id.into_sql::<BigInt>())
            .get_result(conn)
            .optional()
    }

    /// The contexts of the given tasks (`get_task_execution_contexts_batch`):
    /// one per distinct existing task, ordered by `task_id`.
    pub fn find_many(conn: &mut PgConnection, task_ids: &[i64]) -> QueryResult<Vec<Self>> {
        FunctionCall::new(
            "get_task_execution_contexts_batch",
            task_ids.into_sql::<Array<BigInt>>(),
        )
        .load(conn)
    }
}
