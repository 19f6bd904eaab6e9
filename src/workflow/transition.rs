//! Moving a step or a task to a new state: one call of the SQL functions
//! `tasker_transition_workflow_step` / `tasker_transition_task`, which lock the entity,
//! check the state machine and write the transition and the flags together.

use diesel::sql_types::{BigInt, Jsonb, Nullable};
use diesel::{IntoSql, PgConnection, RunQueryDsl};
use serde_json::Value;

use crate::call::FunctionCall;
use crate::enums::{StepState, TaskState};
use crate::models::{TaskTransition, WorkflowStepTransition};
use crate::schema::sql_types::{TaskerStepState, TaskerTaskState};
use crate::{arguments, Result};

/// How a transition is written: its metadata, and optionally the state the
/// entity must be in for the move to happen (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransitionOptions<'a, S> {
    /// Refuse the move unless the entity is in this state
    /// ([`crate::Refusal::StepStateConflict`] / [`crate::Refusal::TaskStateConflict`]).
    pub expected: Option<S>,
    /// Stored in the transition's `metadata`; `None` stores `{}`.
    pub metadata: Option<&'a Value>,
}

impl<S> Default for TransitionOptions<'_, S> {
    fn default() -> Self {
        TransitionOptions {
            expected: None,
            metadata: None,
        }
    }
}

impl<'a, S> TransitionOptions<'a, S> {
    /// Moves only when the entity is currently in `state`.
    pub fn expecting(state: S) -> Self {
        TransitionOptions {
            expected: Some(state),
            metadata: None,
        }
    }

    /// Stores `metadata` with the transition.
    pub fn with_metadata(self, metadata: &'a Value) -> Self {
        TransitionOptions {
            metadata: Some(metadata),
            ..self
        }
    }
}

/// Moves a step to `to` (`tasker_transition_workflow_step`) and returns the new
/// transition. Refused, with nothing written, when the step does not exist,
/// is not in the expected state, or the state machine forbids the move, and
/// with [`crate::Refusal::InvalidArgument`] for metadata PostgreSQL cannot
/// store (a NUL character).
pub fn transition_workflow_step(
    conn: &mut PgConnection,
    workflow_step_id: i64,
    to: StepState,
    options: TransitionOptions<'_, StepState>,
) -> Result<WorkflowStepTransition> {
    arguments::metadata("metadata", options.metadata)?;
    Ok(FunctionCall::new(
        "tasker_transition_workflow_step",
        (
            workflow_step_id.into_sql::<BigInt>(),
            to.into_sql::<TaskerStepState>(),
            options.metadata.into_sql::<Nullable<Jsonb>>(),
            options.expected.into_sql::<Nullable<TaskerStepState>>(),
        ),
    )
    .get_result(conn)?)
}

/// Moves a task to `to` (`tasker_transition_task`) and returns the new transition;
/// `tasker_tasks.complete` follows whether the new state is `Complete`.
/// Refused like [`transition_workflow_step`].
pub fn transition_task(
    conn: &mut PgConnection,
    task_id: i64,
    to: TaskState,
    options: TransitionOptions<'_, TaskState>,
) -> Result<TaskTransition> {
    arguments::metadata("metadata", options.metadata)?;
    Ok(FunctionCall::new(
        "tasker_transition_task",
        (
            task_id.into_sql::<BigInt>(),
            to.into_sql::<TaskerTaskState>(),
            options.metadata.into_sql::<Nullable<Jsonb>>(),
            options.expected.into_sql::<Nullable<TaskerTaskState>>(),
        ),
    )
    .get_result(conn)?)
}

/// Moves a pending or failed step to `resolved_manually`: an operator's
/// decision that counts as complete for the step's children.
pub fn resolve_step_manually(
    conn: &mut PgConnection,
    workflow_step_id: i64,
    metadata: Option<&Value>,
) -> Result<WorkflowStepTransition> {
    transition_workflow_step(
        conn,
        workflow_step_id,
        StepState::ResolvedManually,
        TransitionOptions {
            expected: None,
            metadata,
        },
    )
}
