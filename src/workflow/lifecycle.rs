//! Ending a task: cancelling it, or finalizing it once its execution context
//! says there is nothing left to run.

use diesel::sql_types::{BigInt, Jsonb, Nullable};
use diesel::{IntoSql, PgConnection, RunQueryDsl};
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
