//! Step instances and the dependency edges between them.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::enums::StepState;
use crate::models::{NamedStep, Task};
use crate::schema::{tasker_workflow_step_edges, tasker_workflow_steps};

/// A step of a task. Its history is in [`crate::models::WorkflowStepTransition`];
/// `current_state` to `runnable` are kept from it by the schema's triggers and
/// generated columns (never written by this crate).
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
#[diesel(table_name = tasker_workflow_steps, primary_key(workflow_step_id))]
#[diesel(belongs_to(Task, foreign_key = task_id))]
#[diesel(belongs_to(NamedStep, foreign_key = named_step_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct WorkflowStep {
    /// The step's id (primary key).
    pub workflow_step_id: i64,
    /// The [`Task`] this step belongs to; a step cannot move to another task.
    pub task_id: i64,
    /// The step template ([`NamedStep`]) this step is an instance of, at most one step per template in a task.
    pub named_step_id: i32,
    /// False: the step gets its first attempt but no retry after a failure.
    pub retryable: bool,
    /// Attempts allowed in all; `None` is read as 3.
    pub retry_limit: Option<i32>,
    /// True while a worker executes the step.
    pub in_process: bool,
    /// True once the step has finished for good; a processed step never runs again.
    pub processed: bool,
    /// When the step was processed (UTC); `None` until it is.
    pub processed_at: Option<NaiveDateTime>,
    /// Executions started; `None` is read as 0.
    pub attempts: Option<i32>,
    /// When the latest execution started (UTC); `None` until the first attempt.
    pub last_attempted_at: Option<NaiveDateTime>,
    /// Delay in seconds the step asked for (for example from Retry-After), counted from `last_attempted_at`; `None` when it asked for none.
    pub backoff_request_seconds: Option<i32>,
    /// Step-specific input, beside the task's context; `None` when it has none.
    pub inputs: Option<Value>,
    /// What the step produced; `None` until it has produced something.
    pub results: Option<Value>,
    /// Whether the task may bypass this step.
    pub skippable: bool,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
    /// While a worker holds a claim on the step: until when the claim holds (UTC); `None` with no claim, or for a step moved to `InProgress` without a lease.
    pub claimed_until: Option<NaiveDateTime>,
    /// Maintained: the state of the most recent transition, else `Pending`.
    pub current_state: StepState,
    /// Maintained: the time of the most recent transition when it is to `Error` (UTC), else `None`.
    pub last_failure_at: Option<NaiveDateTime>,
    /// Maintained: the number of parent steps; -1 for a step of an adopted database until the readiness backfill counts its parents.
    pub total_parents: i32,
    /// Maintained: parents that are `Complete` or `ResolvedManually`.
    pub completed_parents: i32,
    /// Generated: attempts (`None`: 0) are below `retry_limit` (`None`: 3), and a step that is not retryable has had none yet.
    pub retry_eligible: bool,
    /// Generated: the earliest time the step may run again (UTC); `None` when no time gate applies.
    pub next_retry_at: Option<NaiveDateTime>,
    /// Generated: ready for execution except for the time gate; the step is ready when `next_retry_at` is also `None` or past.
    pub runnable: bool,
}

/// A step row to insert, for fixtures and imports; `None` fields take the
/// SQL defaults (retryable, retry limit 3, zero attempts, not in process, not
/// processed, not skippable) or stay NULL.
///
/// Nothing checks it against a template: a task's steps are built by
/// [`create_task`](crate::workflow::create_task) (see [the module
/// docs](crate::models#reading-is-the-use-writing-goes-through-workflow)).
#[derive(Debug, Clone, Copy, Default, Insertable, Serialize)]
#[diesel(table_name = tasker_workflow_steps)]
pub struct NewWorkflowStep<'a> {
    /// The [`Task`] the step belongs to.
    pub task_id: i64,
    /// The step template ([`NamedStep`]) the step is an instance of, at most once per task.
    pub named_step_id: i32,
    /// False: the step gets its first attempt but no retry; `None` stores the default, true.
    pub retryable: Option<bool>,
    /// Attempts allowed in all (at least 0); `None` stores the default, 3.
    pub retry_limit: Option<i32>,
    /// Whether a worker is executing the step; `None` stores the default, false.
    pub in_process: Option<bool>,
    /// Whether the step has finished for good; `None` stores the default, false.
    pub processed: Option<bool>,
    /// When the step was processed (UTC); `None` stores NULL.
    pub processed_at: Option<NaiveDateTime>,
    /// Executions started so far (at least 0); `None` stores the default, 0.
    pub attempts: Option<i32>,
    /// When the latest execution started (UTC); `None` stores NULL.
    pub last_attempted_at: Option<NaiveDateTime>,
    /// Delay in seconds requested before the next attempt, counted from `last_attempted_at`; `None` stores NULL (no delay).
    pub backoff_request_seconds: Option<i32>,
    /// Step-specific input, beside the task's context; `None` stores NULL.
    pub inputs: Option<&'a Value>,
    /// What the step produced; `None` stores NULL.
    pub results: Option<&'a Value>,
    /// Whether the task may bypass this step; `None` stores the default, false.
    pub skippable: Option<bool>,
}

/// A dependency: `to_step_id` (the child) runs only after `from_step_id`
/// (the parent). Both steps belong to the same task, and the edges of a task
/// form a DAG; the database rejects any other edge.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, Deserialize,
)]
#[diesel(table_name = tasker_workflow_step_edges)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct WorkflowStepEdge {
    /// The edge's id (primary key).
    pub id: i64,
    /// The parent: the step that must finish first.
    pub from_step_id: i64,
    /// The child: the step that waits for the parent.
    pub to_step_id: i64,
    /// Label of the dependency (for example `provides`), at most 128 characters.
    pub name: String,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// An edge row to insert, for fixtures and imports. Its triggers refuse a
/// cycle or an edge across tasks; [`create_task`](crate::workflow::create_task)
/// builds a task's edges from its template.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_workflow_step_edges)]
pub struct NewWorkflowStepEdge<'a> {
    /// The parent: the step that must finish first.
    pub from_step_id: i64,
    /// The child: the step that waits for the parent, in the same task.
    pub to_step_id: i64,
    /// Label of the dependency (for example `provides`), at most 128 characters.
    pub name: &'a str,
}
