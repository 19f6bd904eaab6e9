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
    pub workflow_step_id: i64,
    pub task_id: i64,
    pub named_step_id: i32,
    /// False: a first attempt but no retry.
    pub retryable: bool,
    /// Attempts allowed in all; `None` is read as 3.
    pub retry_limit: Option<i32>,
    /// True while a worker executes the step.
    pub in_process: bool,
    /// True once the step has finished for good.
    pub processed: bool,
    pub processed_at: Option<NaiveDateTime>,
    /// Executions started; `None` is read as 0.
    pub attempts: Option<i32>,
    pub last_attempted_at: Option<NaiveDateTime>,
    /// Delay requested by the step, counted from `last_attempted_at`.
    pub backoff_request_seconds: Option<i32>,
    pub inputs: Option<Value>,
    pub results: Option<Value>,
    pub skippable: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// While a worker's claim holds: until when (`None`: no claim or no lease).
    pub claimed_until: Option<NaiveDateTime>,
    /// Maintained: the state of the most recent transition, else `Pending`.
    pub current_state: StepState,
    /// Maintained: when the most recent transition is to `Error`, its time.
    pub last_failure_at: Option<NaiveDateTime>,
    /// Maintained: the number of parent steps.
    pub total_parents: i32,
    /// Maintained: parents that are `Complete` or `ResolvedManually`.
    pub completed_parents: i32,
    /// Generated: attempts left under the retry rules.
    pub retry_eligible: bool,
    /// Generated: the earliest time the step may run again, if gated.
    pub next_retry_at: Option<NaiveDateTime>,
    /// Generated: ready for execution except for the time gate.
    pub runnable: bool,
}

/// A step to insert; `None` fields take the SQL defaults (retryable, retry
/// limit 3, zero attempts, not in process, not processed, not skippable) or
/// stay NULL.
#[derive(Debug, Clone, Copy, Default, Insertable, Serialize)]
#[diesel(table_name = tasker_workflow_steps)]
pub struct NewWorkflowStep<'a> {
    pub task_id: i64,
    pub named_step_id: i32,
    pub retryable: Option<bool>,
    pub retry_limit: Option<i32>,
    pub in_process: Option<bool>,
    pub processed: Option<bool>,
    pub processed_at: Option<NaiveDateTime>,
    pub attempts: Option<i32>,
    pub last_attempted_at: Option<NaiveDateTime>,
    pub backoff_request_seconds: Option<i32>,
    pub inputs: Option<&'a Value>,
    pub results: Option<&'a Value>,
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
    pub id: i64,
    /// The parent step.
    pub from_step_id: i64,
    /// The child step.
    pub to_step_id: i64,
    pub name: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An edge to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_workflow_step_edges)]
pub struct NewWorkflowStepEdge<'a> {
    pub from_step_id: i64,
    pub to_step_id: i64,
    pub name: &'a str,
}
