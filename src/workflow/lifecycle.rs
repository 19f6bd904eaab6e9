//! Ending a task: cancelling it, or finalizing it once its execution context
//! says there is nothing left to run.

use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable};
use diesel::{IntoSql, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::Value;

use crate::call::FunctionCall;
use crate::enums::TaskState;
use crate::functions;
use crate::models::TaskTransition;
use crate::Result;

/// Cancels a task and its pending and in-progress steps (`cancel_task`); a
/// worker's claim on a cancelled step is lost. Steps in `error` stay there
/// (the step state machine has no `error -> cancelled`).
pub fn cancel_task(
    conn: &mut PgConnection,
    task_id: i64,
    metadata: Option<&Value>,
) -> Result<TaskTransition> {
    Ok(FunctionCall::new(
        "cancel_task",
        (
            task_id.into_sql::<BigInt>(),
            metadata.into_sql::<Nullable<Jsonb>>(),
        ),
    )
    .get_result(conn)?)
}

/// Finalizes a task (`finalize_task`): `Complete` when every step is done
/// (`all_complete`; also for a task in `Error` whose failed steps were since
/// resolved), `Error` when a step failed for good and nothing else can run
/// (`blocked_by_failures`). Idempotent. Refused with
/// [`crate::Refusal::TaskNotFinished`] while work remains.
pub fn finalize_task(
    conn: &mut PgConnection,
    task_id: i64,
    metadata: Option<&Value>,
) -> Result<TaskState> {
    Ok(diesel::select(functions::finalize_task(task_id, metadata)).get_result(conn)?)
}

/// A task [`finalize_settled_tasks`] finalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
#[diesel(check_for_backend(Pg))]
pub struct FinalizedTask {
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    /// `Complete`, or `Error` for a task blocked by failures.
    #[diesel(sql_type = crate::schema::sql_types::TaskerTaskState)]
    pub task_state: TaskState,
}

/// Finalizes up to `max_tasks` tasks in progress that [`finalize_task`]
/// would finalize now, whoever ran their last step
/// (`tasker_finalize_settled_tasks`), lowest task id first; returns them.
/// `among`: only of these tasks (those a worker just reported steps of,
/// say); `None`: of all. Call it until it returns fewer than `max_tasks`. It
/// walks an index of the tasks in progress only, not the finished ones, and
/// reads the execution context of the candidates. `max_tasks` is at least 1
/// and at most `i32::MAX`; outside that it is refused with
/// [`crate::Refusal::InvalidArgument`].
pub fn finalize_settled_tasks(
    conn: &mut PgConnection,
    max_tasks: u32,
    among: Option<&[i64]>,
    metadata: Option<&Value>,
) -> Result<Vec<FinalizedTask>> {
    let max_tasks = i32::try_from(max_tasks).map_err(|_| crate::Refusal::InvalidArgument {
        message: format!(
            "finalize_settled_tasks takes max_tasks up to {}, got {max_tasks}",
            i32::MAX
        ),
    })?;
    Ok(FunctionCall::new(
        "tasker_finalize_settled_tasks",
        (
            max_tasks.into_sql::<Integer>(),
            metadata.into_sql::<Nullable<Jsonb>>(),
            among.into_sql::<Nullable<Array<BigInt>>>(),
        ),
    )
    .load(conn)?)
}
