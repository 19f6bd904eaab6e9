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
    pub id: i64,
    pub to_state: StepState,
    /// `None` for the step's first transition.
    pub from_state: Option<StepState>,
    pub metadata: Option<Value>,
    /// Position in the step's history, increasing.
    pub sort_key: i32,
    /// True for the step's latest transition only.
    pub most_recent: bool,
    pub workflow_step_id: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A step transition to insert. The previous `most_recent` row must be
/// cleared first: the database allows one per step.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_workflow_step_transitions)]
pub struct NewWorkflowStepTransition<'a> {
    pub workflow_step_id: i64,
    pub to_state: StepState,
    pub from_state: Option<StepState>,
    pub metadata: Option<&'a Value>,
    pub sort_key: i32,
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
    pub id: i64,
    pub to_state: TaskState,
    /// `None` for the task's first transition.
    pub from_state: Option<TaskState>,
    pub metadata: Option<Value>,
    /// Position in the task's history, increasing.
    pub sort_key: i32,
    /// True for the task's latest transition only.
    pub most_recent: bool,
    pub task_id: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A task transition to insert. The previous `most_recent` row must be
/// cleared first: the database allows one per task.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_task_transitions)]
pub struct NewTaskTransition<'a> {
    pub task_id: i64,
    pub to_state: TaskState,
    pub from_state: Option<TaskState>,
    pub metadata: Option<&'a Value>,
    pub sort_key: i32,
    pub most_recent: bool,
}
