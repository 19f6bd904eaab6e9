//! Task instances.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::models::NamedTask;
use crate::schema::{tasker_task_step_counts, tasker_tasks};

/// One run of a task template. Its state is in [`crate::models::TaskTransition`].
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_tasks, primary_key(task_id))]
#[diesel(belongs_to(NamedTask, foreign_key = named_task_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct Task {
    pub task_id: i64,
    pub named_task_id: i32,
    /// True once the task has been finalized as complete.
    pub complete: bool,
    pub requested_at: NaiveDateTime,
    pub initiator: Option<String>,
    pub source_system: Option<String>,
    pub reason: Option<String>,
    pub bypass_steps: Option<Value>,
    pub tags: Option<Value>,
    pub context: Option<Value>,
    /// Unique: the same request always maps to the same task.
    pub identity_hash: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A task to insert; `None` fields take the SQL defaults (`complete` false,
/// `requested_at` now in UTC) or stay NULL.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_tasks)]
pub struct NewTask<'a> {
    pub named_task_id: i32,
    pub identity_hash: &'a str,
    pub complete: Option<bool>,
    pub requested_at: Option<NaiveDateTime>,
    pub initiator: Option<&'a str>,
    pub source_system: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub bypass_steps: Option<&'a Value>,
    pub tags: Option<&'a Value>,
    pub context: Option<&'a Value>,
}

impl<'a> NewTask<'a> {
    /// A task of template `named_task_id` with every optional field unset.
    pub fn new(named_task_id: i32, identity_hash: &'a str) -> Self {
        NewTask {
            named_task_id,
            identity_hash,
            complete: None,
            requested_at: None,
            initiator: None,
            source_system: None,
            reason: None,
            bypass_steps: None,
            tags: None,
            context: None,
        }
    }
}

/// A task's row of step counts by state, kept by the schema's triggers and
/// write functions (never written by this crate's Rust code).
///
/// It is not always the whole count: a writer that finds the row locked by
/// another adds its change to a row of `tasker_task_step_count_stripes`
/// instead, so that concurrent writers of one task never wait for each other.
/// The task's counts are this row plus its stripes, as the execution context
/// (`tasker_task_step_counts_of`) reads them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Queryable,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_task_step_counts, primary_key(task_id))]
#[diesel(belongs_to(Task, foreign_key = task_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TaskStepCounts {
    pub task_id: i64,
    pub total_steps: i64,
    pub pending_steps: i64,
    pub in_progress_steps: i64,
    pub complete_steps: i64,
    pub resolved_manually_steps: i64,
    /// Steps in `Error`.
    pub failed_steps: i64,
    pub cancelled_steps: i64,
    /// Steps in `Error` that are not retry eligible.
    pub permanently_failed_steps: i64,
    /// Steps ready for execution but for their backoff.
    pub runnable_steps: i64,
}
