//! Checking and repairing the maintained readiness state (the step columns
//! and `tasker_task_step_counts` that the schema's triggers keep).
//!
//! The triggers keep it right whoever writes; these are for an operator who
//! suspects otherwise (rows written with triggers disabled, a restore of part
//! of a table), and for tests.

use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel::{IntoSql, PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::FunctionCall;
use crate::functions::tasker_rebuild_readiness;
use crate::{arguments, Result};

/// One maintained value that disagrees with a recount
/// (`tasker_readiness_drift`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct ReadinessDrift {
    /// The task whose maintained readiness disagrees.
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    /// The step whose column is wrong; `None` for the task's counts row.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub workflow_step_id: Option<i64>,
    /// The column (or `counts_row` when the task has no counts row).
    #[diesel(sql_type = Text)]
    pub field: String,
    /// The value as maintained, in PostgreSQL's text form; `None` for NULL (a count of a task without a counts row, say).
    #[diesel(sql_type = Nullable<Text>)]
    pub maintained: Option<String>,
    /// The value recounted from the transitions, edges and steps, in PostgreSQL's text form; `None` for NULL.
    #[diesel(sql_type = Nullable<Text>)]
    pub recomputed: Option<String>,
}

impl ReadinessDrift {
    /// Where the maintained readiness of `task_ids` (`None`: every task)
    /// disagrees with a recount from the transitions and edges, ordered by
    /// task, step and field. Empty when there is no drift. Costs a recount of
    /// every step of the tasks asked for; at most
    /// [`MAX_IDS_PER_CALL`](crate::MAX_IDS_PER_CALL) ids.
    pub fn load(conn: &mut PgConnection, task_ids: Option<&[i64]>) -> Result<Vec<Self>> {
        arguments::ids("task_ids", task_ids.map_or(0, <[i64]>::len))?;
        let task_ids = task_ids.map(<[i64]>::to_vec);
        Ok(FunctionCall::new(
            "tasker_readiness_drift",
            task_ids.into_sql::<Nullable<Array<BigInt>>>(),
        )
        .load(conn)?)
    }
}

/// Rebuilds the maintained readiness of `task_ids` (`None`: every task) from
/// the transitions and edges, locking the steps in id order, and returns how
/// many values or rows it corrected (0: there was no drift).
pub fn rebuild_readiness(conn: &mut PgConnection, task_ids: Option<&[i64]>) -> Result<i64> {
    arguments::ids("task_ids", task_ids.map_or(0, <[i64]>::len))?;
    let task_ids = task_ids.map(<[i64]>::to_vec);
    Ok(diesel::select(tasker_rebuild_readiness(task_ids)).get_result(conn)?)
}
