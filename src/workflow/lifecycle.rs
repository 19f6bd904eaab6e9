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
use crate::{arguments, Result};

/// Cancels a task and its pending and in-progress steps (`tasker_cancel_task`); a
/// worker's claim on a cancelled step is lost. Steps in `error` stay there
/// (the step state machine has no `error -> cancelled`).
///
/// Cancelling stops work that is not done: a task already `complete`,
/// `resolved_manually` or `cancelled` is refused with
/// [`Refusal::TaskFinished`](crate::Refusal::TaskFinished), also when its
/// finalize committed while the cancel waited for the task's lock. (The task
/// state machine allows `complete -> cancelled` for an operator who means
/// it: [`transition_task`](super::transition_task) does that.) A task in
/// `error` cannot be cancelled either: the task state machine has no
/// `error -> cancelled` ([`crate::Refusal::IllegalTaskTransition`]).
pub fn cancel_task(
    conn: &mut PgConnection,
    task_id: i64,
    metadata: Option<&Value>,
) -> Result<TaskTransition> {
    arguments::metadata("metadata", metadata)?;
    Ok(FunctionCall::new(
        "tasker_cancel_task",
        (
            task_id.into_sql::<BigInt>(),
            metadata.into_sql::<Nullable<Jsonb>>(),
        ),
    )
    .get_result(conn)?)
}

/// Finalizes a task (`tasker_finalize_task`): `Complete` when every step is done
/// (`all_complete`; also for a task in `Error` whose failed steps were since
/// resolved), `Error` when a step failed for good and nothing else can run
/// (`blocked_by_failures`). Idempotent. A task already `Cancelled` or
/// `ResolvedManually` is left as it is and its state returned (a cancelled
/// task's context reads `all_complete`, which must not complete it). Refused
/// with [`crate::Refusal::TaskNotFinished`] while work remains.
pub fn finalize_task(
    conn: &mut PgConnection,
    task_id: i64,
    metadata: Option<&Value>,
) -> Result<TaskState> {
    arguments::metadata("metadata", metadata)?;
    Ok(diesel::select(functions::tasker_finalize_task(task_id, metadata)).get_result(conn)?)
}

/// A task [`finalize_settled_tasks`] finalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
#[diesel(check_for_backend(Pg))]
pub struct FinalizedTask {
    /// The finalized task.
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
    let max_tasks = arguments::count("max_tasks", max_tasks, 1)?;
    arguments::ids("among", among.map_or(0, <[i64]>::len))?;
    arguments::metadata("metadata", metadata)?;
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
