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
    /// The task's id (primary key).
    pub task_id: i64,
    /// The task template ([`NamedTask`]) this task is a run of.
    pub named_task_id: i32,
    /// True once the task has been finalized as complete.
    pub complete: bool,
    /// When the task was requested (UTC).
    pub requested_at: NaiveDateTime,
    /// Who or what asked for the task (a user, a service); `None` when not given.
    pub initiator: Option<String>,
    /// The system the request came from; `None` when not given.
    pub source_system: Option<String>,
    /// Why the task was requested; `None` when not given.
    pub reason: Option<String>,
    /// Names of the skippable steps this task bypasses, as a JSON array; `None` when not given.
    pub bypass_steps: Option<Value>,
    /// The task's tags, as a JSON array of strings; `None` when not given.
    pub tags: Option<Value>,
    /// The task's input: the JSON its steps work on.
    pub context: Option<Value>,
    /// Hash of what makes a request unique, at most 128 characters; creating the same request twice finds the same task.
    pub identity_hash: String,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A task row to insert, for fixtures and imports; `None` fields take the
/// SQL defaults (`complete` false, `requested_at` now in UTC) or stay NULL.
///
/// It has no steps: [`create_task`](crate::workflow::create_task) builds a
/// task with its steps and edges from a template.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_tasks)]
pub struct NewTask<'a> {
    /// The task template ([`NamedTask`]) the task is a run of.
    pub named_task_id: i32,
    /// Hash of what makes the request unique, at most 128 characters; a second task with the same hash is refused.
    pub identity_hash: &'a str,
    /// Whether the task is finalized as complete; `None` stores the default, false.
    pub complete: Option<bool>,
    /// When the task was requested (UTC); `None` stores the default, the transaction's time in UTC.
    pub requested_at: Option<NaiveDateTime>,
    /// Who or what asked for the task (at most 128 characters); `None` stores NULL.
    pub initiator: Option<&'a str>,
    /// The system the request came from (at most 128 characters); `None` stores NULL.
    pub source_system: Option<&'a str>,
    /// Why the task was requested (at most 128 characters); `None` stores NULL.
    pub reason: Option<&'a str>,
    /// Names of the skippable steps the task bypasses, as a JSON array; `None` stores NULL.
    pub bypass_steps: Option<&'a Value>,
    /// The task's tags, as a JSON array of strings; `None` stores NULL.
    pub tags: Option<&'a Value>,
    /// The task's input, the JSON its steps work on; `None` stores NULL.
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
    /// The [`Task`] whose steps are counted.
    pub task_id: i64,
    /// Steps of the task, whatever their state.
    pub total_steps: i64,
    /// Steps whose current state is `Pending`.
    pub pending_steps: i64,
    /// Steps whose current state is `InProgress`.
    pub in_progress_steps: i64,
    /// Steps whose current state is `Complete`.
    pub complete_steps: i64,
    /// Steps whose current state is `ResolvedManually`.
    pub resolved_manually_steps: i64,
    /// Steps whose current state is `Error`.
    pub failed_steps: i64,
    /// Steps whose current state is `Cancelled`.
    pub cancelled_steps: i64,
    /// Steps in `Error` that are not retry eligible.
    pub permanently_failed_steps: i64,
    /// Steps that are runnable: ready for execution except for their time gate (`next_retry_at`).
    pub runnable_steps: i64,
}
