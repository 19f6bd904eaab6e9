//! Task execution context rows.

use bigdecimal::BigDecimal;
use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Integer, Numeric, Text};
use diesel::{IntoSql, OptionalExtension, PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::FunctionCall;
use crate::enums::{ExecutionStatus, HealthStatus, RecommendedAction, TaskState};
use crate::{arguments, Result};

/// One row of `get_task_execution_context`: where a task stands and what the
/// orchestrator should do with it next.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct TaskExecutionContext {
    /// The task (`tasker_tasks.task_id`).
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    /// The task template (`tasker_named_tasks`) the task is an instance of.
    #[diesel(sql_type = Integer)]
    pub named_task_id: i32,
    /// The task's own state; `Pending` when it has no transition.
    #[diesel(sql_type = Text)]
    pub status: TaskState,
    /// Every step of the task.
    #[diesel(sql_type = BigInt)]
    pub total_steps: i64,
    /// Steps in `Pending` (including those without a transition).
    #[diesel(sql_type = BigInt)]
    pub pending_steps: i64,
    /// Steps in `InProgress`.
    #[diesel(sql_type = BigInt)]
    pub in_progress_steps: i64,
    /// Steps `Complete` or `ResolvedManually`.
    #[diesel(sql_type = BigInt)]
    pub completed_steps: i64,
    /// Steps in `Error`.
    #[diesel(sql_type = BigInt)]
    pub failed_steps: i64,
    /// Steps ready for execution now.
    #[diesel(sql_type = BigInt)]
    pub ready_steps: i64,
    /// What the task is doing: the first of ready steps, steps in progress, a step failed for good, every step complete or cancelled, else waiting for dependencies.
    #[diesel(sql_type = Text)]
    pub execution_status: ExecutionStatus,
    /// What the orchestrator should do next, one action per `execution_status`.
    #[diesel(sql_type = Text)]
    pub recommended_action: RecommendedAction,
    /// `round(100 * completed / total, 2)`, exact; 0 for a task without steps.
    #[diesel(sql_type = Numeric)]
    pub completion_percentage: BigDecimal,
    /// `Healthy` with no step in `Error`, `Blocked` when a step failed for good and none is ready, else `Recovering`.
    #[diesel(sql_type = Text)]
    pub health_status: HealthStatus,
}

impl TaskExecutionContext {
    /// Steps `Cancelled`: the SQL row keeps the original design's thirteen
    /// columns, which count every other state.
    pub fn cancelled_steps(&self) -> i64 {
        self.total_steps
            - self.pending_steps
            - self.in_progress_steps
            - self.completed_steps
            - self.failed_steps
    }

    /// Whether the task itself is finished: `Complete`, `ResolvedManually` or
    /// `Cancelled`.
    ///
    /// The row's `execution_status`, `recommended_action` and
    /// `health_status` describe the task's steps only, as the original
    /// design defines them: a cancelled task, whose unfinished steps were
    /// cancelled, reads `all_complete` / `finalize_task` although there is
    /// nothing to finalize, and a complete task reads `finalize_task` too.
    /// [`next_action`](Self::next_action) combines both.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status,
            TaskState::Complete | TaskState::ResolvedManually | TaskState::Cancelled
        )
    }

    /// What to do with the task next, its own state taken into account:
    /// `None` once it is finished ([`is_finished`](Self::is_finished)),
    /// otherwise the row's `recommended_action`. A task in `Error` whose
    /// failed steps were since resolved gets `FinalizeTask`, which
    /// [`finalize_task`](crate::workflow::finalize_task) completes.
    pub fn next_action(&self) -> Option<RecommendedAction> {
        (!self.is_finished()).then_some(self.recommended_action)
    }

    /// The context of one task (`get_task_execution_context`), `None` for an
    /// unknown task.
    pub fn find(conn: &mut PgConnection, task_id: i64) -> Result<Option<Self>> {
        Ok(
            FunctionCall::new("get_task_execution_context", task_id.into_sql::<BigInt>())
                .get_result(conn)
                .optional()?,
        )
    }

    /// The contexts of the given tasks (`get_task_execution_contexts_batch`):
    /// one per distinct existing task, ordered by `task_id`. At most
    /// [`MAX_IDS_PER_CALL`](crate::MAX_IDS_PER_CALL) ids; more are refused
    /// with [`Refusal::InvalidArgument`](crate::Refusal::InvalidArgument).
    pub fn find_many(conn: &mut PgConnection, task_ids: &[i64]) -> Result<Vec<Self>> {
        arguments::ids("task_ids", task_ids.len())?;
        Ok(FunctionCall::new(
            "get_task_execution_contexts_batch",
            task_ids.into_sql::<Array<BigInt>>(),
        )
        .load(conn)?)
    }
}
