//! State histories of steps and tasks. The row with `most_recent = true` is
//! the entity's current state; an entity without rows is pending.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::enums::{StepState, TaskState};
use crate::models::{Task, WorkflowStep};
use crate::schema::{tasker_task_transitions, tasker_workflow_step_transitions};

/// One state change of a workflow step.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_workflow_step_transitions)]
#[diesel(belongs_to(WorkflowStep, foreign_key = workflow_step_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct WorkflowStepTransition {
    /// The transition's id (primary key); for a move to `InProgress` by a claim, the claim's id.
    pub id: i64,
    /// The state the step entered.
    pub to_state: StepState,
    /// The state the step left; `None` for its first transition.
    pub from_state: Option<StepState>,
    /// Context of the transition (error details, worker, ...) as a JSON object; `None` only when NULL was stored.
    pub metadata: Option<Value>,
    /// Position of the transition in the step's history, increasing and unique per step.
    pub sort_key: i32,
    /// True for the step's latest transition only, the one that holds its current state.
    pub most_recent: bool,
    /// The [`WorkflowStep`] whose state changed.
    pub workflow_step_id: i64,
    /// When the transition was recorded (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A step transition row to insert, for fixtures and imports. The previous
/// `most_recent` row must be cleared first: the database allows one per step.
///
/// An insert skips the state machine and leaves the step's flags
/// (`in_process`, `processed`, `attempts`) as they were: move a step with
/// [`transition_workflow_step`](crate::workflow::transition_workflow_step) or
/// the claim and report calls instead.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_workflow_step_transitions)]
pub struct NewWorkflowStepTransition<'a> {
    /// The [`WorkflowStep`] whose state changes.
    pub workflow_step_id: i64,
    /// The state the step enters.
    pub to_state: StepState,
    /// The state the step leaves; `None` for its first transition.
    pub from_state: Option<StepState>,
    /// Context of the transition, a JSON object; `None` stores the default, an empty object.
    pub metadata: Option<&'a Value>,
    /// Position in the step's history: above every earlier transition's, unique per step.
    pub sort_key: i32,
    /// True for the step's new current state; at most one row per step may be true.
    pub most_recent: bool,
}

/// One state change of a task.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_task_transitions)]
#[diesel(belongs_to(Task, foreign_key = task_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TaskTransition {
    /// The transition's id (primary key).
    pub id: i64,
    /// The state the task entered.
    pub to_state: TaskState,
    /// The state the task left; `None` for its first transition.
    pub from_state: Option<TaskState>,
    /// Context of the transition as a JSON object; `None` only when NULL was stored.
    pub metadata: Option<Value>,
    /// Position of the transition in the task's history, increasing and unique per task.
    pub sort_key: i32,
    /// True for the task's latest transition only, the one that holds its current state.
    pub most_recent: bool,
    /// The [`Task`] whose state changed.
    pub task_id: i64,
    /// When the transition was recorded (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A task transition row to insert, for fixtures and imports. The previous
/// `most_recent` row must be cleared first: the database allows one per task.
///
/// An insert skips the state machine: move a task with
/// [`transition_task`](crate::workflow::transition_task),
/// [`cancel_task`](crate::workflow::cancel_task) or
/// [`finalize_task`](crate::workflow::finalize_task) instead.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_task_transitions)]
pub struct NewTaskTransition<'a> {
    /// The [`Task`] whose state changes.
    pub task_id: i64,
    /// The state the task enters.
    pub to_state: TaskState,
    /// The state the task leaves; `None` for its first transition.
    pub from_state: Option<TaskState>,
    /// Context of the transition, a JSON object; `None` stores the default, an empty object.
    pub metadata: Option<&'a Value>,
    /// Position in the task's history: above every earlier transition's, unique per task.
    pub sort_key: i32,
    /// True for the task's new current state; at most one row per task may be true.
    pub most_recent: bool,
}
