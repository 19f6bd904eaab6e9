//! The legacy baseline (workload L): views that compute readiness and context
//! for every task, queried with `WHERE task_id = $1` (`bench/sql/legacy_views.sql`).

use std::fmt::Debug;

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{sql_query, Connection, PgConnection, QueryResult, RunQueryDsl};
use tasker_diesel::readiness::{StepReadinessStatus, TaskExecutionContext};

use crate::BoxResult;

const VIEWS_SQL: &str = include_str!("../sql/legacy_views.sql");

/// The statement of L-W1: a task's step readiness from the legacy view.
pub const STEP_READINESS: &str =
    "SELECT * FROM bench_legacy_step_readiness WHERE task_id = $1 ORDER BY workflow_step_id";

/// The statement of L-W4: a task's execution context from the legacy view.
pub const EXECUTION_CONTEXT: &str =
    "SELECT * FROM bench_legacy_task_execution_context WHERE task_id = $1";

/// Creates (or replaces) the legacy views.
pub fn install(conn: &mut PgConnection) -> BoxResult<()> {
    conn.batch_execute(VIEWS_SQL)?;
    Ok(())
}

pub fn step_readiness(
    conn: &mut PgConnection,
    task_id: i64,
) -> QueryResult<Vec<StepReadinessStatus>> {
    sql_query(STEP_READINESS)
        .bind::<BigInt, _>(task_id)
        .load(conn)
}

pub fn execution_context(
    conn: &mut PgConnection,
    task_id: i64,
) -> QueryResult<Option<TaskExecutionContext>> {
    let rows: Vec<TaskExecutionContext> = sql_query(EXECUTION_CONTEXT)
        .bind::<BigInt, _>(task_id)
        .load(conn)?;
    Ok(rows.into_iter().next())
}

/// Checks that the views and the crate's functions give the same rows for
/// each task, both read in one transaction (one snapshot, one `now()`).
pub fn check_agreement(conn: &mut PgConnection, task_ids: &[i64]) -> BoxResult<()> {
    for &task_id in task_ids {
        conn.transaction(|conn| -> BoxResult<()> {
            same(
                task_id,
                "get_step_readiness_status",
                StepReadinessStatus::for_task(task_id).load(conn)?,
                step_readiness(conn, task_id)?,
            )?;
            same(
                task_id,
                "get_task_execution_context",
                TaskExecutionContext::find(conn, task_id)?,
                execution_context(conn, task_id)?,
            )
        })?;
    }
    Ok(())
}

fn same<T: PartialEq + Debug>(task_id: i64, function: &str, expected: T, view: T) -> BoxResult<()> {
    if expected == view {
        return Ok(());
    }
    Err(format!(
        "task {task_id}: the legacy view disagrees with {function}:\n  function: {expected:?}\n  view: {view:?}"
    )
    .into())
}
