//! Ending a task: `cancel_task` and `finalize_task` (the write path over the
//! state machines and the execution context of
//! section 4). Every refusal is checked to have written nothing.

use std::time::Duration;

use diesel::prelude::*;
use serde_json::json;
use tasker_diesel::models::WorkflowStep;
use tasker_diesel::schema::tasker_workflow_steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, fail_step, finalize_task, resolve_step_manually,
    transition_task, transition_workflow_step, ClaimRequest, TransitionOptions,
};
use tasker_diesel::{ExecutionStatus, Refusal, StepState, TaskExecutionContext, TaskState};

use crate::support;
use support::{
    assert_nothing_written, refusal, snapshot, step_row, step_transitions, task_row,
    task_transitions,
};

// Helpers.

/// `(from_state, to_state)` of each transition of a task, in order.
fn task_moves(conn: &mut PgConnection, task_id: i64) -> Vec<(Option<TaskState>, TaskState)> {
    task_transitions(conn, task_id)
        .into_iter()
        .map(|t| (t.from_state, t.to_state))
        .collect()
}

fn step_state(conn: &mut PgConnection, step_id: i64) -> StepState {
    step_transitions(conn, step_id)
        .last()
        .map_or(StepState::Pending, |t| t.to_state)
}

/// Moves the step through `path` with the write path.
fn walk_step(conn: &mut PgConnection, step_id: i64, path: &[StepState]) {
    for &to in path {
        transition_workflow_step(conn, step_id, to, TransitionOptions::default())
            .unwrap_or_else(|error| panic!("step {step_id} -> {to}: {error}"));
    }
}

/// Moves the task through `path` with the write path.
fn walk_task(conn: &mut PgConnection, task_id: i64, path: &[TaskState]) {
    for &to in path {
        transition_task(conn, task_id, to, TransitionOptions::default())
            .unwrap_or_else(|error| panic!("task {task_id} -> {to}: {error}"));
    }
}

const START: &[StepState] = &[StepState::InProgress];
const DONE: &[StepState] = &[StepState::InProgress, StepState::Complete];
const FAILED: &[StepState] = &[StepState::InProgress, StepState::Error];
const RESOLVED: &[StepState] = &[
    StepState::InProgress,
    StepState::Error,
    StepState::ResolvedManually,
];

/// A step that failed and may not be retried: its only attempt is used up.
fn fail_for_good(conn: &mut PgConnection, step_id: i64) {
    support::update_step(conn, step_id, tasker_workflow_steps::retry_limit.eq(1));
    walk_step(conn, step_id, FAILED);
    assert_eq!(step_row(conn, step_id).attempts, Some(1));
}

/// A step that failed and will be retried, but not for an hour.
fn fail_for_now(conn: &mut PgConnection, step_id: i64) {
    walk_step(conn, step_id, FAILED);
    support::update_step(
        conn,
        step_id,
        tasker_workflow_steps::backoff_request_seconds.eq(3600),
    );
}

// cancel_task.

/// A running task with one step in each of pending, in_progress, complete,
/// error and resolved_manually (in that order).
fn task_with_a_step_in_each_state(conn: &mut PgConnection) -> support::Fixture {
    let fixture = support::task_with_steps(conn, 5);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    walk_task(conn, fixture.task.task_id, &[TaskState::InProgress]);
    walk_step(conn, id(1), START);
    walk_step(conn, id(2), DONE);
    walk_step(conn, id(3), FAILED);
    walk_step(conn, id(4), RESOLVED);
    fixture
}

#[test]
fn cancel_task_cancels_the_task_and_its_pending_and_in_progress_steps() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_a_step_in_each_state(&mut conn);
    let task_id = fixture.task.task_id;
    let id = |index: usize| fixture.steps[index].workflow_step_id;

    let cancelled = cancel_task(&mut conn, task_id, None).unwrap();

    assert_eq!(cancelled.task_id, task_id);
    assert_eq!(
        (cancelled.from_state, cancelled.to_state, cancelled.sort_key),
        (Some(TaskState::InProgress), TaskState::Cancelled, 2)
    );
    assert!(cancelled.most_recent);
    assert_eq!(
        task_transitions(&mut conn, task_id).last(),
        Some(&cancelled)
    );
    assert!(!task_row(&mut conn, task_id).complete);

    let pending = step_transitions(&mut conn, id(0));
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].from_state, pending[0].to_state),
        (None, StepState::Cancelled)
    );
    let running = step_transitions(&mut conn, id(1));
    assert_eq!(running.len(), 2);
    assert_eq!(
        (running[1].from_state, running[1].to_state),
        (Some(StepState::InProgress), StepState::Cancelled)
    );
}

#[test]
fn cancel_task_leaves_complete_error_and_resolved_steps_as_they_are() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_a_step_in_each_state(&mut conn);
    let finished: Vec<i64> = fixture.steps[2..]
        .iter()
        .map(|step| step.workflow_step_id)
        .collect();
    let before: Vec<_> = finished
        .iter()
        .map(|&step_id| {
            (
                step_row(&mut conn, step_id),
                step_transitions(&mut conn, step_id),
            )
        })
        .collect();

    cancel_task(&mut conn, fixture.task.task_id, None).unwrap();

    let after: Vec<_> = finished
        .iter()
        .map(|&step_id| {
            (
                step_row(&mut conn, step_id),
                step_transitions(&mut conn, step_id),
            )
        })
        .collect();
    assert_eq!(after, before);
    let states: Vec<_> = finished
        .iter()
        .map(|&step_id| step_state(&mut conn, step_id))
        .collect();
    assert_eq!(
        states,
        [
            StepState::Complete,
            StepState::Error,
            StepState::ResolvedManually
        ]
    );
}

#[test]
fn steps_cancelled_with_their_task_are_processed_and_not_in_process() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_a_step_in_each_state(&mut conn);
    let ids: Vec<i64> = fixture.steps[..2]
        .iter()
        .map(|step| step.workflow_step_id)
        .collect();
    let before: Vec<WorkflowStep> = ids.iter().map(|&id| step_row(&mut conn, id)).collect();
    let cancelled = cancel_task(&mut conn, fixture.task.task_id, None).unwrap();
    for (&step_id, before) in ids.iter().zip(&before) {
        let row = step_row(&mut conn, step_id);
        let last = step_transitions(&mut conn, step_id).pop().unwrap();
        assert_eq!(last.to_state, StepState::Cancelled, "step {step_id}");
        assert!(row.processed, "step {step_id}: processed");
        assert!(!row.in_process, "step {step_id}: in_process");
        assert_eq!(row.processed_at, Some(last.created_at), "step {step_id}");
        assert_eq!(row.claimed_until, None, "step {step_id}");
        // A cancellation is not an attempt.
        assert_eq!(row.attempts, before.attempts, "step {step_id}: attempts");
        assert_eq!(
            row.last_attempted_at, before.last_attempted_at,
            "step {step_id}"
        );
        assert!(last.created_at >= cancelled.created_at, "step {step_id}");
    }
}

#[test]
fn cancel_task_stores_its_metadata_on_the_task_and_step_transitions() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let note = json!({"cancelled_by": "ops", "why": "duplicate order"});
    let cancelled = cancel_task(&mut conn, fixture.task.task_id, Some(&note)).unwrap();
    assert_eq!(cancelled.metadata, Some(note.clone()));
    for step in &fixture.steps {
        let history = step_transitions(&mut conn, step.workflow_step_id);
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].metadata, Some(note.clone()));
    }

    let other = support::task_with_steps(&mut conn, 1);
    let cancelled = cancel_task(&mut conn, other.task.task_id, None).unwrap();
    assert_eq!(cancelled.metadata, Some(json!({})));
    let history = step_transitions(&mut conn, other.steps[0].workflow_step_id);
    assert_eq!(history[0].metadata, Some(json!({})));
}

#[test]
fn cancel_task_of_a_pending_task_writes_its_first_transition() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let cancelled = cancel_task(&mut conn, fixture.task.task_id, None).unwrap();
    assert_eq!(
        (cancelled.from_state, cancelled.to_state, cancelled.sort_key),
        (None, TaskState::Cancelled, 1)
    );
    assert_eq!(
        step_state(&mut conn, fixture.steps[0].workflow_step_id),
        StepState::Cancelled
    );
}

#[test]
fn cancelling_a_task_in_error_is_refused_and_cancels_no_step() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 3);
    let task_id = fixture.task.task_id;
    walk_task(
        &mut conn,
        task_id,
        &[TaskState::InProgress, TaskState::Error],
    );
    walk_step(&mut conn, fixture.steps[1].workflow_step_id, START);
    let before = snapshot(&mut conn);

    assert_eq!(
        refusal(cancel_task(&mut conn, task_id, Some(&json!({"x": 1})))),
        Refusal::IllegalTaskTransition {
            task_id,
            from: TaskState::Error,
            to: TaskState::Cancelled,
        }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "cancel in error");
}

#[test]
fn cancelling_a_task_twice_is_refused_the_second_time() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;
    cancel_task(&mut conn, task_id, None).unwrap();
    let before = snapshot(&mut conn);

    assert_eq!(
        refusal(cancel_task(&mut conn, task_id, None)),
        Refusal::TaskFinished {
            task_id,
            state: TaskState::Cancelled,
        }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "second cancel");
}

#[test]
fn cancelling_an_unknown_task_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let before = snapshot(&mut conn);
    assert_eq!(
        refusal(cancel_task(&mut conn, 987_654, None)),
        Refusal::UnknownTask { task_id: 987_654 }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "unknown task");
}

#[test]
fn a_claim_on_a_step_cancelled_with_its_task_is_lost() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;
    let claimed = claim_ready_steps(
        &mut conn,
        &ClaimRequest::for_tasks(&[task_id], 1, Duration::from_secs(60)),
    )
    .unwrap();
    assert_eq!(claimed.len(), 1);
    cancel_task(&mut conn, task_id, None).unwrap();
    let before = snapshot(&mut conn);

    let late = refusal(complete_step(
        &mut conn,
        claimed[0].claim(),
        &json!({"ok": true}),
    ));
    assert_eq!(
        late,
        Refusal::ClaimLost {
            workflow_step_id: claimed[0].workflow_step_id,
            claim_id: claimed[0].claim_id,
            state: StepState::Cancelled,
        }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "late result");
}

// finalize_task.

#[test]
fn finalize_task_completes_a_pending_task_whose_steps_are_all_complete() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let task_id = fixture.task.task_id;
    for step in &fixture.steps {
        walk_step(&mut conn, step.workflow_step_id, DONE);
    }
    assert!(!task_row(&mut conn, task_id).complete);

    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Complete
    );

    assert!(task_row(&mut conn, task_id).complete);
    let history = task_transitions(&mut conn, task_id);
    assert_eq!(
        history
            .iter()
            .map(|t| (t.from_state, t.to_state, t.sort_key, t.most_recent))
            .collect::<Vec<_>>(),
        [
            (None, TaskState::InProgress, 1, false),
            (Some(TaskState::InProgress), TaskState::Complete, 2, true),
        ]
    );
}

#[test]
fn finalize_task_completes_a_running_task_with_one_transition() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;
    walk_task(&mut conn, task_id, &[TaskState::InProgress]);
    for step in &fixture.steps {
        walk_step(&mut conn, step.workflow_step_id, DONE);
    }
    let steps_before = snapshot(&mut conn).steps;

    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Complete
    );

    assert_eq!(
        task_moves(&mut conn, task_id),
        [
            (None, TaskState::InProgress),
            (Some(TaskState::InProgress), TaskState::Complete),
        ]
    );
    assert!(task_row(&mut conn, task_id).complete);
    assert_eq!(snapshot(&mut conn).steps, steps_before, "steps untouched");
}

#[test]
fn finalize_task_counts_resolved_and_cancelled_steps_as_done() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 3);
    walk_step(&mut conn, fixture.steps[0].workflow_step_id, DONE);
    walk_step(&mut conn, fixture.steps[1].workflow_step_id, RESOLVED);
    walk_step(
        &mut conn,
        fixture.steps[2].workflow_step_id,
        &[StepState::Cancelled],
    );
    assert_eq!(
        finalize_task(&mut conn, fixture.task.task_id, None).unwrap(),
        TaskState::Complete
    );
    assert!(task_row(&mut conn, fixture.task.task_id).complete);
}

#[test]
fn finalize_task_is_idempotent_once_complete() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;
    walk_step(&mut conn, fixture.steps[0].workflow_step_id, DONE);
    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Complete
    );
    let before = snapshot(&mut conn);

    assert_eq!(
        finalize_task(&mut conn, task_id, Some(&json!({"again": true}))).unwrap(),
        TaskState::Complete
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "second finalize");
}

#[test]
fn finalize_task_stores_its_metadata_on_each_transition() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let note = json!({"finalized_by": "orchestrator"});

    let with = support::task_with_steps(&mut conn, 1);
    walk_step(&mut conn, with.steps[0].workflow_step_id, DONE);
    finalize_task(&mut conn, with.task.task_id, Some(&note)).unwrap();
    let stored: Vec<_> = task_transitions(&mut conn, with.task.task_id)
        .into_iter()
        .map(|t| t.metadata)
        .collect();
    assert_eq!(stored, [Some(note.clone()), Some(note)]);
}

#[test]
fn finalize_task_without_metadata_stores_an_empty_object() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let without = support::task_with_steps(&mut conn, 1);
    walk_step(&mut conn, without.steps[0].workflow_step_id, DONE);
    finalize_task(&mut conn, without.task.task_id, None).unwrap();
    let stored: Vec<_> = task_transitions(&mut conn, without.task.task_id)
        .into_iter()
        .map(|t| t.metadata)
        .collect();
    assert_eq!(stored, [Some(json!({})), Some(json!({}))]);

    let failed = support::task_with_steps(&mut conn, 1);
    fail_for_good(&mut conn, failed.steps[0].workflow_step_id);
    finalize_task(&mut conn, failed.task.task_id, None).unwrap();
    let stored: Vec<_> = task_transitions(&mut conn, failed.task.task_id)
        .into_iter()
        .map(|t| t.metadata)
        .collect();
    assert_eq!(stored, [Some(json!({}))]);
}

#[test]
fn finalize_task_moves_a_task_blocked_by_a_permanent_failure_to_error() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    // 0 → 1 → 2, and 3 on its own: 3 is done, 0 is done, 1 failed for good,
    // 2 can never run.
    let fixture = support::task_with_steps(&mut conn, 4);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    support::add_edge(&mut conn, id(0), id(1)).unwrap();
    support::add_edge(&mut conn, id(1), id(2)).unwrap();
    let task_id = fixture.task.task_id;
    walk_task(&mut conn, task_id, &[TaskState::InProgress]);
    walk_step(&mut conn, id(0), DONE);
    walk_step(&mut conn, id(3), DONE);
    fail_for_good(&mut conn, id(1));
    let steps_before = snapshot(&mut conn).steps;

    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Error
    );

    assert_eq!(
        task_moves(&mut conn, task_id),
        [
            (None, TaskState::InProgress),
            (Some(TaskState::InProgress), TaskState::Error),
        ]
    );
    assert!(!task_row(&mut conn, task_id).complete);
    assert_eq!(snapshot(&mut conn).steps, steps_before, "steps untouched");
}

#[test]
fn finalize_task_completes_a_blocked_task_once_its_failed_steps_are_resolved() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    let task_id = fixture.task.task_id;
    walk_task(&mut conn, task_id, &[TaskState::InProgress]);
    walk_step(&mut conn, id(0), DONE);
    fail_for_good(&mut conn, id(1));
    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Error
    );

    resolve_step_manually(&mut conn, id(1), None).unwrap();
    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Complete
    );

    assert_eq!(
        task_moves(&mut conn, task_id),
        [
            (None, TaskState::InProgress),
            (Some(TaskState::InProgress), TaskState::Error),
            (Some(TaskState::Error), TaskState::Pending),
            (Some(TaskState::Pending), TaskState::InProgress),
            (Some(TaskState::InProgress), TaskState::Complete),
        ]
    );
    assert!(task_row(&mut conn, task_id).complete);
}

#[test]
fn finalize_task_moves_a_pending_task_with_exhausted_attempts_to_error_idempotently() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;
    let step_id = fixture.steps[0].workflow_step_id;
    walk_step(&mut conn, step_id, FAILED);
    walk_step(&mut conn, step_id, &[StepState::Pending]);
    walk_step(&mut conn, step_id, FAILED);
    walk_step(&mut conn, step_id, &[StepState::Pending]);
    walk_step(&mut conn, step_id, FAILED);
    assert_eq!(step_row(&mut conn, step_id).attempts, Some(3));

    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Error
    );
    assert_eq!(task_moves(&mut conn, task_id), [(None, TaskState::Error)]);

    let before = snapshot(&mut conn);
    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Error
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "second finalize");
}

#[test]
fn finalize_task_moves_a_task_to_error_once_a_claimed_step_fails_its_last_attempt() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;
    let step_id = fixture.steps[0].workflow_step_id;
    support::update_step(&mut conn, step_id, tasker_workflow_steps::retry_limit.eq(1));
    let claimed = claim_ready_steps(
        &mut conn,
        &ClaimRequest::for_tasks(&[task_id], 1, Duration::from_secs(60)),
    )
    .unwrap();
    assert_eq!(claimed.len(), 1);
    fail_step(&mut conn, claimed[0].claim(), &json!({"boom": true}), None).unwrap();

    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Error
    );
    assert_eq!(
        task_moves(&mut conn, task_id),
        [
            (None, TaskState::InProgress),
            (Some(TaskState::InProgress), TaskState::Error),
        ]
    );
}

/// Asserts that finalizing the task is refused as not finished, with
/// `status`, and writes nothing.
fn assert_not_finished(conn: &mut PgConnection, task_id: i64, status: ExecutionStatus) {
    let before = snapshot(conn);
    assert_eq!(
        refusal(finalize_task(conn, task_id, Some(&json!({"try": 1})))),
        Refusal::TaskNotFinished {
            task_id,
            execution_status: status,
        }
    );
    assert_nothing_written(
        &before,
        &snapshot(conn),
        &format!("finalize while {status:?}"),
    );
}

#[test]
fn finalize_task_is_refused_while_steps_are_ready() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    walk_step(&mut conn, fixture.steps[0].workflow_step_id, DONE);
    assert_not_finished(
        &mut conn,
        fixture.task.task_id,
        ExecutionStatus::HasReadySteps,
    );
}

#[test]
fn finalize_task_is_refused_while_a_step_is_ready_beside_a_permanent_failure() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    fail_for_good(&mut conn, fixture.steps[0].workflow_step_id);
    assert_not_finished(
        &mut conn,
        fixture.task.task_id,
        ExecutionStatus::HasReadySteps,
    );
}

#[test]
fn finalize_task_is_refused_while_a_step_is_in_progress() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 3);
    let task_id = fixture.task.task_id;
    walk_task(&mut conn, task_id, &[TaskState::InProgress]);
    walk_step(&mut conn, fixture.steps[0].workflow_step_id, DONE);
    walk_step(&mut conn, fixture.steps[1].workflow_step_id, START);
    fail_for_good(&mut conn, fixture.steps[2].workflow_step_id);
    assert_not_finished(&mut conn, task_id, ExecutionStatus::Processing);
}

#[test]
fn finalize_task_is_refused_while_a_failed_step_waits_for_its_retry() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    // 0 → 1: 0 failed and retries in an hour, 1 waits for it.
    let fixture = support::task_with_steps(&mut conn, 2);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    support::add_edge(&mut conn, id(0), id(1)).unwrap();
    walk_task(&mut conn, fixture.task.task_id, &[TaskState::InProgress]);
    fail_for_now(&mut conn, id(0));
    assert_not_finished(
        &mut conn,
        fixture.task.task_id,
        ExecutionStatus::WaitingForDependencies,
    );
}

#[test]
fn finalize_task_waits_for_the_retries_left_of_a_task_blocked_by_failures() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    // 0 failed for good; 1 failed and retries in an hour. The context says
    // blocked_by_failures, but 1 may still succeed.
    let fixture = support::task_with_steps(&mut conn, 2);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    let task_id = fixture.task.task_id;
    walk_task(&mut conn, task_id, &[TaskState::InProgress]);
    fail_for_good(&mut conn, id(0));
    fail_for_now(&mut conn, id(1));
    assert_not_finished(&mut conn, task_id, ExecutionStatus::BlockedByFailures);

    // Once 1 has used its last attempt, the task is blocked for good.
    support::update_step(&mut conn, id(1), tasker_workflow_steps::retry_limit.eq(1));
    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Error
    );
}

#[test]
fn finalize_task_leaves_a_cancelled_task_cancelled() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;
    walk_step(&mut conn, fixture.steps[0].workflow_step_id, DONE);
    cancel_task(&mut conn, task_id, None).unwrap();
    // Its steps' context reads all_complete / finalize_task ...
    let context = TaskExecutionContext::find(&mut conn, task_id)
        .unwrap()
        .unwrap();
    assert_eq!(context.execution_status, ExecutionStatus::AllComplete);
    assert_eq!(context.next_action(), None);
    let before = snapshot(&mut conn);

    // ... which does not make it complete.
    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::Cancelled
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "finalize cancelled");
}

#[test]
fn finalize_task_leaves_a_task_resolved_manually_as_it_is() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;
    support::transition_task(&mut conn, task_id, TaskState::Error);
    support::transition_task(&mut conn, task_id, TaskState::ResolvedManually);
    let before = snapshot(&mut conn);

    assert_eq!(
        finalize_task(&mut conn, task_id, None).unwrap(),
        TaskState::ResolvedManually
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "finalize resolved");
}

#[test]
fn finalize_task_of_an_unknown_task_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let before = snapshot(&mut conn);
    assert_eq!(
        refusal(finalize_task(&mut conn, 987_654, None)),
        Refusal::UnknownTask { task_id: 987_654 }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "unknown task");
}
