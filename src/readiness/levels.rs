//! Dependency levels of a task's steps.

use diesel::pg::Pg;
use diesel::sql_types::{BigInt, Integer};
use diesel::{IntoSql, PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::FunctionCall;
use crate::Result;

/// A step and its longest distance from a root of its task's DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct DependencyLevel {
    /// The step (`tasker_workflow_steps.workflow_step_id`).
    #[diesel(sql_type = BigInt)]
    pub workflow_step_id: i64,
    /// 0 for a root.
    #[diesel(sql_type = Integer)]
    pub dependency_level: i32,
}

impl DependencyLevel {
    /// Every step of the task with its level (`calculate_dependency_levels`),
    /// ordered by level then step id; empty for an unknown task.
    pub fn load(conn: &mut PgConnection, task_id: i64) -> Result<Vec<Self>> {
        Ok(
            FunctionCall::new("calculate_dependency_levels", task_id.into_sql::<BigInt>())
                .load(conn)?,
        )
    }
}
