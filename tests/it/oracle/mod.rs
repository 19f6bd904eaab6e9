//! A reference implementation of the state machines, step readiness and the
//! task execution context, written from the README's rules in plain Rust,
//! to check the SQL functions against.
//!
//! It works on plain data: what is stored for each step and task, the edges,
//! and `now`. It returns the crate's own row types, so whole results can be
//! compared with `assert_eq!`.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{Duration, NaiveDateTime};
use tasker_diesel::{
    BigDecimal, ExecutionStatus, HealthStatus, RecommendedAction, StepReadinessStatus, StepState,
    TaskExecutionContext, TaskState,
};

/// What is stored for one workflow step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInput {
    pub workflow_step_id: i64,
    pub task_id: i64,
    pub named_step_id: i32,
    pub name: String,
    pub retryable: bool,
    pub retry_limit: Option<i32>,
    pub attempts: Option<i32>,
    pub processed: bool,
    pub in_process: bool,
    pub backoff_request_seconds: Option<i32>,
    pub last_attempted_at: Option<NaiveDateTime>,
    /// The `to_state` and `created_at` of the step's most recent transition,
    /// `None` when it has none.
    pub current_transition: Option<(StepState, NaiveDateTime)>,
}

/// What is stored for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInput {
    pub task_id: i64,
    pub named_task_id: i32,
    /// The `to_state` of the task's most recent transition, if any.
    pub current_state: Option<TaskState>,
}

/// Everything the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub tasks: Vec<TaskInput>,
    pub steps: Vec<StepInput>,
    /// Dependencies as `(parent, child)` step ids.
    pub edges: Vec<(i64, i64)>,
    /// The current time in UTC.
    pub now: NaiveDateTime,
}

/// Rule 1: the state of the most recent transition, else `pending`.
pub fn current_state(step: &StepInput) -> StepState {
    match step.current_transition {
        Some((state, _)) => state,
        None => StepState::Pending,
    }
}

/// Whether a parent in `state` counts as completed (rule 2).
fn counts_as_completed(state: StepState) -> bool {
    state == StepState::Complete || state == StepState::ResolvedManually
}

/// `min(2^exponent, 30)` seconds, without overflowing for large exponents.
fn failure_backoff_seconds(exponent: i32) -> i64 {
    let mut seconds: i64 = 1;
    for _ in 0..exponent {
        seconds *= 2;
        if seconds >= 30 {
            return 30;
        }
    }
    seconds
}

/// The later of two optional times; `None` only when both are `None`.
fn later(a: Option<NaiveDateTime>, b: Option<NaiveDateTime>) -> Option<NaiveDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a > b { a } else { b }),
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    }
}

/// The readiness row of one step of `world`.
pub fn step_readiness(world: &World, step: &StepInput) -> StepReadinessStatus {
    let state = current_state(step);

    // Rule 2: parents, looked up among all steps.
    let mut total_parents = 0;
    let mut completed_parents = 0;
    for &(parent_id, child_id) in &world.edges {
        if child_id != step.workflow_step_id {
            continue;
        }
        let parent = world
            .steps
            .iter()
            .find(|candidate| candidate.workflow_step_id == parent_id)
            .expect("every edge's parent is a step of the world");
        total_parents += 1;
        if counts_as_completed(current_state(parent)) {
            completed_parents += 1;
        }
    }
    let dependencies_satisfied = total_parents == completed_parents;

    // Rule 3.
    let attempts = step.attempts.unwrap_or(0);
    let retry_limit = step.retry_limit.unwrap_or(3);

    // Rule 4.
    let retry_eligible = attempts < retry_limit && (step.retryable || attempts == 0);

    // Rule 5.
    let last_failure_at = match step.current_transition {
        Some((StepState::Error, created_at)) => Some(created_at),
        _ => None,
    };

    // Rule 6.
    let requested_gate = match (step.backoff_request_seconds, step.last_attempted_at) {
        (Some(seconds), Some(attempted_at)) => {
            Some(attempted_at + Duration::seconds(i64::from(seconds)))
        }
        _ => None,
    };
    let failure_gate = last_failure_at.map(|failed_at| {
        let exponent = step.attempts.unwrap_or(1);
        failed_at + Duration::seconds(failure_backoff_seconds(exponent))
    });
    let next_retry_at = later(requested_gate, failure_gate);

    // Rule 7.
    let ready_for_execution = runnable(state, step, dependencies_satisfied, retry_eligible)
        && next_retry_at.is_none_or(|at| at <= world.now);

    StepReadinessStatus {
        workflow_step_id: step.workflow_step_id,
        task_id: step.task_id,
        named_step_id: step.named_step_id,
        name: step.name.clone(),
        current_state: state,
        dependencies_satisfied,
        retry_eligible,
        ready_for_execution,
        last_failure_at,
        next_retry_at,
        total_parents,
        completed_parents,
        attempts,
        retry_limit,
        backoff_request_seconds: step.backoff_request_seconds,
        last_attempted_at: step.last_attempted_at,
    }
}

/// The readiness rows of every step of `world`, ordered by
/// `(task_id, workflow_step_id)`.
pub fn readiness(world: &World) -> Vec<StepReadinessStatus> {
    let mut rows: Vec<StepReadinessStatus> = world
        .steps
        .iter()
        .map(|step| step_readiness(world, step))
        .collect();
    rows.sort_by_key(|row| (row.task_id, row.workflow_step_id));
    rows
}

/// A step that is in `error` and may not be retried.
pub fn is_permanently_failed(row: &StepReadinessStatus) -> bool {
    row.current_state == StepState::Error && !row.retry_eligible
}

/// Rule 7 without its time gate.
fn runnable(
    state: StepState,
    step: &StepInput,
    dependencies_satisfied: bool,
    retry_eligible: bool,
) -> bool {
    (state == StepState::Pending || state == StepState::Error)
        && !step.processed
        && !step.in_process
        && dependencies_satisfied
        && retry_eligible
}

/// The documented predicate of `StepReadinessQuery::waiting_for_backoff`:
/// `step`, whose readiness row is `row`, meets every condition of rule 7 but
/// the time gate, and the gate is still closed at `now`.
pub fn is_waiting_for_backoff(
    row: &StepReadinessStatus,
    step: &StepInput,
    now: NaiveDateTime,
) -> bool {
    runnable(
        row.current_state,
        step,
        row.dependencies_satisfied,
        row.retry_eligible,
    ) && row.next_retry_at.is_some_and(|at| at > now)
}

/// `round(100 * completed / total, 2)`, rounding half away from zero (all
/// values are non-negative, so half up); 0 when `total` is 0.
pub fn completion_percentage(completed: i64, total: i64) -> BigDecimal {
    if total == 0 {
        return BigDecimal::from(0);
    }
    // Hundredths of a percent: 10000 * completed / total, rounded half up,
    // which is floor((20000 * completed + total) / (2 * total)).
    let hundredths = (20_000 * completed + total) / (2 * total);
    let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
    BigDecimal::from_str(&text).expect("a decimal literal")
}

/// The execution context of one task, given the readiness rows of its steps.
pub fn task_context(task: &TaskInput, rows: &[&StepReadinessStatus]) -> TaskExecutionContext {
    let count = |wanted: &[StepState]| -> i64 {
        rows.iter()
            .filter(|row| wanted.contains(&row.current_state))
            .count() as i64
    };
    let total_steps = rows.len() as i64;
    let pending_steps = count(&[StepState::Pending]);
    let in_progress_steps = count(&[StepState::InProgress]);
    let completed_steps = count(&[StepState::Complete, StepState::ResolvedManually]);
    let failed_steps = count(&[StepState::Error]);
    let ready_steps = rows.iter().filter(|row| row.ready_for_execution).count() as i64;
    let any_permanently_failed = rows.iter().any(|row| is_permanently_failed(row));
    let all_finished = total_steps > 0
        && rows.iter().all(|row| {
            matches!(
                row.current_state,
                StepState::Complete | StepState::ResolvedManually | StepState::Cancelled
            )
        });

    let (execution_status, recommended_action) = if ready_steps > 0 {
        (
            ExecutionStatus::HasReadySteps,
            RecommendedAction::ExecuteReadySteps,
        )
    } else if in_progress_steps > 0 {
        (
            ExecutionStatus::Processing,
            RecommendedAction::WaitForCompletion,
        )
    } else if any_permanently_failed {
        (
            ExecutionStatus::BlockedByFailures,
            RecommendedAction::HandleFailures,
        )
    } else if all_finished {
        (
            ExecutionStatus::AllComplete,
            RecommendedAction::FinalizeTask,
        )
    } else {
        (
            ExecutionStatus::WaitingForDependencies,
            RecommendedAction::WaitForDependencies,
        )
    };

    let health_status = if failed_steps == 0 {
        HealthStatus::Healthy
    } else if any_permanently_failed && ready_steps == 0 {
        HealthStatus::Blocked
    } else {
        HealthStatus::Recovering
    };

    TaskExecutionContext {
        task_id: task.task_id,
        named_task_id: task.named_task_id,
        status: task.current_state.unwrap_or(TaskState::Pending),
        total_steps,
        pending_steps,
        in_progress_steps,
        completed_steps,
        failed_steps,
        ready_steps,
        execution_status,
        recommended_action,
        completion_percentage: completion_percentage(completed_steps, total_steps),
        health_status,
    }
}

/// The execution contexts of every task of `world`, ordered by `task_id`.
pub fn contexts(world: &World) -> Vec<TaskExecutionContext> {
    let rows = readiness(world);
    let mut by_task: BTreeMap<i64, Vec<&StepReadinessStatus>> = BTreeMap::new();
    for row in &rows {
        by_task.entry(row.task_id).or_default().push(row);
    }
    let mut contexts: Vec<TaskExecutionContext> = world
        .tasks
        .iter()
        .map(|task| {
            let task_rows = by_task.get(&task.task_id).map_or(&[][..], Vec::as_slice);
            task_context(task, task_rows)
        })
        .collect();
    contexts.sort_by_key(|context| context.task_id);
    contexts
}

/// The step state machine: pending -> in_progress | error |
/// cancelled | resolved_manually; in_progress -> complete | error |
/// cancelled; error -> pending | resolved_manually. Nothing else.
pub fn step_move_allowed(from: StepState, to: StepState) -> bool {
    use StepState::*;
    matches!(
        (from, to),
        (Pending, InProgress | Error | Cancelled | ResolvedManually)
            | (InProgress, Complete | Error | Cancelled)
            | (Error, Pending | ResolvedManually)
    )
}

/// The task state machine: pending -> in_progress |
/// cancelled | error; in_progress -> complete | error | cancelled | pending;
/// error -> pending | resolved_manually; complete -> cancelled;
/// resolved_manually -> cancelled. Nothing else.
pub fn task_move_allowed(from: TaskState, to: TaskState) -> bool {
    use TaskState::*;
    matches!(
        (from, to),
        (Pending, InProgress | Cancelled | Error)
            | (InProgress, Complete | Error | Cancelled | Pending)
            | (Error, Pending | ResolvedManually)
            | (Complete, Cancelled)
            | (ResolvedManually, Cancelled)
    )
}
