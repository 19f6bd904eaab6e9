//! The two state machines, as the write path applies
//! them: every legal and illegal move of steps and tasks, the step and task
//! flags that follow each state, compare-and-swap, refusals that write
//! nothing, metadata and UTC timestamps, and manual resolution.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;
use tasker_diesel::functions::{tasker_step_transition_allowed, tasker_task_transition_allowed};
use tasker_diesel::models::{TaskTransition, WorkflowStepTransition};
use tasker_diesel::schema::{tasker_tasks, tasker_workflow_steps};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    resolve_step_manually, transition_task, transition_workflow_step, TransitionOptions,
};
use tasker_diesel::{Error, Refusal, StepReadinessStatus, StepState, TaskState};

use crate::oracle;
use crate::support;

use oracle::{step_move_allowed, task_move_allowed};
use support::{
    assert_nothing_written, refusal, snapshot, step_row, step_transitions, task_row,
    task_transitions, utc_now,
};

/// A legal way from pending (no transition) into `state`.
fn step_path_to(state: StepState) -> &'static [StepState] {
    use StepState::*;
    match state {
        Pending => &[],
        InProgress => &[InProgress],
        Complete => &[InProgress, Complete],
        Error => &[InProgress, Error],
        Cancelled => &[Cancelled],
        ResolvedManually => &[InProgress, Error, ResolvedManually],
    }
}

/// A legal way from pending (no transition) into `state`.
fn task_path_to(state: TaskState) -> &'static [TaskState] {
    use TaskState::*;
    match state {
        Pending => &[],
        InProgress => &[InProgress],
        Complete => &[InProgress, Complete],
        Error => &[InProgress, Error],
        Cancelled => &[Cancelled],
        ResolvedManually => &[InProgress, Error, ResolvedManually],
    }
}

// Helpers.

fn move_step(conn: &mut PgConnection, step_id: i64, to: StepState) -> WorkflowStepTransition {
    transition_workflow_step(conn, step_id, to, TransitionOptions::default())
        .unwrap_or_else(|error| panic!("step {step_id} -> {to}: {error}"))
}

fn move_task(conn: &mut PgConnection, task_id: i64, to: TaskState) -> TaskTransition {
    transition_task(conn, task_id, to, TransitionOptions::default())
        .unwrap_or_else(|error| panic!("task {task_id} -> {to}: {error}"))
}

// The state machines, move by move.

#[test]
fn spec_allows_nine_step_moves_and_eleven_task_moves() {
    let step_moves = StepState::ALL
        .iter()
        .flat_map(|from| StepState::ALL.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| step_move_allowed(*from, *to))
        .count();
    let task_moves = TaskState::ALL
        .iter()
        .flat_map(|from| TaskState::ALL.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| task_move_allowed(*from, *to))
        .count();
    assert_eq!((step_moves, task_moves), (9, 11));
}

#[test]
fn every_legal_step_move_is_written_and_every_other_is_refused_without_writing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for from in StepState::ALL {
        for to in StepState::ALL {
            let fixture = support::task_with_steps(&mut conn, 1);
            let step_id = fixture.steps[0].workflow_step_id;
            for state in step_path_to(from) {
                move_step(&mut conn, step_id, *state);
            }
            let previous = step_transitions(&mut conn, step_id).last().cloned();
            assert_eq!(
                previous.as_ref().map_or(StepState::Pending, |t| t.to_state),
                from
            );
            let before = snapshot(&mut conn);

            let result =
                transition_workflow_step(&mut conn, step_id, to, TransitionOptions::default());

            let case = format!("step {from} -> {to}");
            if step_move_allowed(from, to) {
                let written = result.unwrap_or_else(|error| panic!("{case}: {error}"));
                assert_eq!(written.workflow_step_id, step_id, "{case}");
                assert_eq!(written.to_state, to, "{case}");
                assert_eq!(
                    written.from_state,
                    previous.as_ref().map(|t| t.to_state),
                    "{case}"
                );
                assert_eq!(
                    written.sort_key,
                    previous.as_ref().map_or(0, |t| t.sort_key) + 1,
                    "{case}"
                );
                assert!(written.most_recent, "{case}");
                let history = step_transitions(&mut conn, step_id);
                assert_eq!(history.len(), step_path_to(from).len() + 1, "{case}");
                assert_eq!(history.last(), Some(&written), "{case}: stored as returned");
                let current: Vec<i64> = history
                    .iter()
                    .filter(|t| t.most_recent)
                    .map(|t| t.id)
                    .collect();
                assert_eq!(current, [written.id], "{case}: exactly one most_recent");
            } else {
                assert_eq!(
                    refusal(result),
                    Refusal::IllegalStepTransition {
                        workflow_step_id: step_id,
                        name: fixture.named_steps[0].name.clone(),
                        from,
                        to,
                    },
                    "{case}"
                );
                assert_nothing_written(&before, &snapshot(&mut conn), &case);
            }
        }
    }
}

#[test]
fn every_legal_task_move_is_written_and_every_other_is_refused_without_writing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            let fixture = support::task_with_steps(&mut conn, 1);
            let task_id = fixture.task.task_id;
            for state in task_path_to(from) {
                move_task(&mut conn, task_id, *state);
            }
            let previous = task_transitions(&mut conn, task_id).last().cloned();
            assert_eq!(
                previous.as_ref().map_or(TaskState::Pending, |t| t.to_state),
                from
            );
            let before = snapshot(&mut conn);

            let result = transition_task(&mut conn, task_id, to, TransitionOptions::default());

            let case = format!("task {from} -> {to}");
            if task_move_allowed(from, to) {
                let written = result.unwrap_or_else(|error| panic!("{case}: {error}"));
                assert_eq!(written.task_id, task_id, "{case}");
                assert_eq!(written.to_state, to, "{case}");
                assert_eq!(
                    written.from_state,
                    previous.as_ref().map(|t| t.to_state),
                    "{case}"
                );
                assert_eq!(
                    written.sort_key,
                    previous.as_ref().map_or(0, |t| t.sort_key) + 1,
                    "{case}"
                );
                assert!(written.most_recent, "{case}");
                let history = task_transitions(&mut conn, task_id);
                assert_eq!(history.len(), task_path_to(from).len() + 1, "{case}");
                assert_eq!(history.last(), Some(&written), "{case}: stored as returned");
                let current: Vec<i64> = history
                    .iter()
                    .filter(|t| t.most_recent)
                    .map(|t| t.id)
                    .collect();
                assert_eq!(current, [written.id], "{case}: exactly one most_recent");
                // The step is not touched by a task move.
                assert_eq!(snapshot(&mut conn).steps, before.steps, "{case}");
            } else {
                assert_eq!(
                    refusal(result),
                    Refusal::IllegalTaskTransition { task_id, from, to },
                    "{case}"
                );
                assert_nothing_written(&before, &snapshot(&mut conn), &case);
            }
        }
    }
}

#[test]
fn sql_step_transition_allowed_agrees_with_the_spec_for_all_36_pairs() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for from in StepState::ALL {
        for to in StepState::ALL {
            let allowed: bool = diesel::select(tasker_step_transition_allowed(from, to))
                .get_result(&mut conn)
                .expect("tasker_step_transition_allowed");
            assert_eq!(allowed, step_move_allowed(from, to), "step {from} -> {to}");
        }
    }
}

#[test]
fn sql_task_transition_allowed_agrees_with_the_spec_for_all_36_pairs() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            let allowed: bool = diesel::select(tasker_task_transition_allowed(from, to))
                .get_result(&mut conn)
                .expect("tasker_task_transition_allowed");
            assert_eq!(allowed, task_move_allowed(from, to), "task {from} -> {to}");
        }
    }
}

// Flags that follow the state.

/// Moves the step along `path`, scrambling its flags before each move (so a
/// flag the move should set or clear is seen to be set or cleared), and checks
/// the flags against the new state after it.
fn walk_step_checking_flags(conn: &mut PgConnection, step_id: i64, path: &[StepState]) {
    use tasker_workflow_steps::dsl as s;
    let stale = NaiveDateTime::parse_from_str("2001-02-03 04:05:06", "%Y-%m-%d %H:%M:%S").unwrap();
    for (index, &to) in path.iter().enumerate() {
        let in_progress = to == StepState::InProgress;
        let finished = matches!(
            to,
            StepState::Complete | StepState::Cancelled | StepState::ResolvedManually
        );
        // The opposite of what the move must leave, and a lease to clear.
        support::update_step(
            conn,
            step_id,
            (
                s::in_process.eq(!in_progress),
                s::processed.eq(!finished),
                s::processed_at.eq((!finished).then_some(stale)),
                s::claimed_until.eq(Some(stale)),
                s::backoff_request_seconds.eq(Some(30)),
            ),
        );
        let before = step_row(conn, step_id);
        let written = move_step(conn, step_id, to);
        let after = step_row(conn, step_id);
        let case = format!("move {index} to {to}");

        assert_eq!(after.in_process, in_progress, "{case}: in_process");
        assert_eq!(after.processed, finished, "{case}: processed");
        assert_eq!(
            after.processed_at,
            finished.then_some(written.created_at),
            "{case}: processed_at"
        );
        assert_eq!(after.claimed_until, None, "{case}: claimed_until");
        if in_progress {
            assert_eq!(
                after.attempts,
                Some(before.attempts.unwrap_or(0) + 1),
                "{case}: attempts"
            );
            assert_eq!(
                after.last_attempted_at,
                Some(written.created_at),
                "{case}: last_attempted_at"
            );
            assert_eq!(
                after.backoff_request_seconds, None,
                "{case}: the start honoured the requested delay"
            );
        } else {
            assert_eq!(
                after.backoff_request_seconds,
                Some(30),
                "{case}: backoff_request_seconds"
            );
            assert_eq!(after.attempts, before.attempts, "{case}: attempts");
            assert_eq!(
                after.last_attempted_at, before.last_attempted_at,
                "{case}: last_attempted_at"
            );
        }
        // Nothing else of the row moves.
        assert_eq!(
            (
                after.task_id,
                after.named_step_id,
                after.retryable,
                after.retry_limit,
                &after.inputs,
                &after.results,
                after.skippable,
                after.created_at,
            ),
            (
                before.task_id,
                before.named_step_id,
                before.retryable,
                before.retry_limit,
                &before.inputs,
                &before.results,
                before.skippable,
                before.created_at,
            ),
            "{case}"
        );
    }
}

#[test]
fn step_flags_follow_the_state_after_each_move() {
    use StepState::*;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let paths: &[&[StepState]] = &[
        &[
            InProgress, Error, Pending, InProgress, Error, Pending, InProgress, Complete,
        ],
        &[InProgress, Cancelled],
        &[InProgress, Error, ResolvedManually],
        &[Error, Pending, InProgress, Cancelled],
        &[ResolvedManually],
        &[Cancelled],
    ];
    let fixture = support::task_with_steps(&mut conn, paths.len());
    for (step, path) in fixture.steps.iter().zip(paths) {
        walk_step_checking_flags(&mut conn, step.workflow_step_id, path);
    }
}

#[test]
fn attempts_count_every_start_and_nothing_else() {
    use StepState::*;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    assert_eq!(step_row(&mut conn, step_id).attempts, Some(0));
    let mut starts = Vec::new();
    for to in [
        InProgress, Error, Pending, InProgress, Error, Pending, InProgress, Complete,
    ] {
        let written = move_step(&mut conn, step_id, to);
        if to == InProgress {
            starts.push(written.created_at);
        }
        let step = step_row(&mut conn, step_id);
        assert_eq!(step.attempts, Some(starts.len() as i32), "after {to}");
        assert_eq!(step.last_attempted_at, starts.last().copied(), "after {to}");
    }
    assert_eq!(starts.len(), 3);
}

#[test]
fn a_start_counts_from_zero_when_attempts_is_null() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    support::update_step(
        &mut conn,
        step_id,
        tasker_workflow_steps::attempts.eq(None::<i32>),
    );
    move_step(&mut conn, step_id, StepState::InProgress);
    assert_eq!(step_row(&mut conn, step_id).attempts, Some(1));
}

#[test]
fn task_complete_flag_is_true_exactly_while_the_task_is_complete() {
    use TaskState::*;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let paths: &[&[TaskState]] = &[
        &[InProgress, Pending, InProgress, Complete, Cancelled],
        &[InProgress, Error, ResolvedManually, Cancelled],
        &[InProgress, Error, Pending, Cancelled],
    ];
    for path in paths {
        let fixture = support::task_with_steps(&mut conn, 1);
        let task_id = fixture.task.task_id;
        assert!(!task_row(&mut conn, task_id).complete);
        for &to in *path {
            // A stale flag is overwritten by every move, whichever way.
            diesel::update(tasker_tasks::table.find(task_id))
                .set(tasker_tasks::complete.eq(to != Complete))
                .execute(&mut conn)
                .expect("scramble complete");
            let before = task_row(&mut conn, task_id);
            move_task(&mut conn, task_id, to);
            let after = task_row(&mut conn, task_id);
            assert_eq!(after.complete, to == Complete, "{path:?}: after {to}");
            assert_eq!(
                (&after.identity_hash, after.requested_at, &after.context),
                (&before.identity_hash, before.requested_at, &before.context),
                "{path:?}: after {to}"
            );
        }
    }
}

// Compare-and-swap.

#[test]
fn step_compare_and_swap_moves_only_from_the_expected_state() {
    use StepState::*;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;

    let started = transition_workflow_step(
        &mut conn,
        step_id,
        InProgress,
        TransitionOptions::expecting(Pending),
    )
    .expect("pending, as expected");
    assert_eq!((started.from_state, started.to_state), (None, InProgress));

    for expected in [Pending, Complete, Error, Cancelled, ResolvedManually] {
        let before = snapshot(&mut conn);
        let refused = refusal(transition_workflow_step(
            &mut conn,
            step_id,
            Complete,
            TransitionOptions::expecting(expected),
        ));
        assert_eq!(
            refused,
            Refusal::StepStateConflict {
                workflow_step_id: step_id,
                expected,
                actual: InProgress,
            }
        );
        assert_nothing_written(
            &before,
            &snapshot(&mut conn),
            &format!("expecting {expected}"),
        );
    }

    let completed = transition_workflow_step(
        &mut conn,
        step_id,
        Complete,
        TransitionOptions::expecting(InProgress),
    )
    .expect("in progress, as expected");
    assert_eq!(
        (completed.from_state, completed.to_state, completed.sort_key),
        (Some(InProgress), Complete, 2)
    );
}

#[test]
fn step_state_conflict_is_reported_before_an_illegal_move() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let before = snapshot(&mut conn);
    let refused = refusal(transition_workflow_step(
        &mut conn,
        step_id,
        StepState::Complete,
        TransitionOptions::expecting(StepState::InProgress),
    ));
    assert_eq!(
        refused,
        Refusal::StepStateConflict {
            workflow_step_id: step_id,
            expected: StepState::InProgress,
            actual: StepState::Pending,
        }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "conflict");
}

#[test]
fn task_compare_and_swap_moves_only_from_the_expected_state() {
    use TaskState::*;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;

    let started = transition_task(
        &mut conn,
        task_id,
        InProgress,
        TransitionOptions::expecting(Pending),
    )
    .expect("pending, as expected");
    assert_eq!((started.from_state, started.to_state), (None, InProgress));

    for expected in [Pending, Complete, Error, Cancelled, ResolvedManually] {
        let before = snapshot(&mut conn);
        let refused = refusal(transition_task(
            &mut conn,
            task_id,
            Complete,
            TransitionOptions::expecting(expected),
        ));
        assert_eq!(
            refused,
            Refusal::TaskStateConflict {
                task_id,
                expected,
                actual: InProgress,
            }
        );
        assert_nothing_written(
            &before,
            &snapshot(&mut conn),
            &format!("expecting {expected}"),
        );
    }

    let completed = transition_task(
        &mut conn,
        task_id,
        Complete,
        TransitionOptions::expecting(InProgress),
    )
    .expect("in progress, as expected");
    assert_eq!(
        (completed.from_state, completed.to_state, completed.sort_key),
        (Some(InProgress), Complete, 2)
    );
    assert!(task_row(&mut conn, task_id).complete);
}

#[test]
fn concurrent_compare_and_swap_starts_a_step_exactly_once() {
    let db = TestDatabase::new();
    let mut setup = db.connection();
    let fixture = support::task_with_steps(&mut setup, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let barrier = Barrier::new(2);

    let results: Vec<tasker_diesel::Result<WorkflowStepTransition>> = thread::scope(|scope| {
        let racers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut conn = db.connection();
                    conn.transaction::<_, Error, _>(|conn| {
                        barrier.wait();
                        let moved = transition_workflow_step(
                            conn,
                            step_id,
                            StepState::InProgress,
                            TransitionOptions::expecting(StepState::Pending),
                        )?;
                        // Hold the step's row lock a while, so the other
                        // racer has to wait for this commit.
                        thread::sleep(Duration::from_millis(300));
                        Ok(moved)
                    })
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| racer.join().expect("racer thread"))
            .collect()
    });

    let (won, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(|result| result.is_ok());
    assert_eq!(
        (won.len(), lost.len()),
        (1, 1),
        "won {won:?}, lost {lost:?}"
    );
    let lost = lost.into_iter().next().unwrap();
    assert_eq!(
        refusal(lost),
        Refusal::StepStateConflict {
            workflow_step_id: step_id,
            expected: StepState::Pending,
            actual: StepState::InProgress,
        }
    );
    let history = step_transitions(&mut setup, step_id);
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].to_state, StepState::InProgress);
    assert_eq!(step_row(&mut setup, step_id).attempts, Some(1));
}

// Unknown ids.

#[test]
fn transition_of_an_unknown_step_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let before = snapshot(&mut conn);
    for options in [
        TransitionOptions::default(),
        TransitionOptions::expecting(StepState::Pending),
    ] {
        assert_eq!(
            refusal(transition_workflow_step(
                &mut conn,
                987_654,
                StepState::InProgress,
                options
            )),
            Refusal::UnknownStep {
                workflow_step_id: 987_654
            }
        );
    }
    assert_eq!(
        refusal(resolve_step_manually(&mut conn, 987_654, None)),
        Refusal::UnknownStep {
            workflow_step_id: 987_654
        }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "unknown step");
}

#[test]
fn transition_of_an_unknown_task_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let before = snapshot(&mut conn);
    for options in [
        TransitionOptions::default(),
        TransitionOptions::expecting(TaskState::Pending),
    ] {
        assert_eq!(
            refusal(transition_task(
                &mut conn,
                987_654,
                TaskState::InProgress,
                options
            )),
            Refusal::UnknownTask { task_id: 987_654 }
        );
    }
    assert_nothing_written(&before, &snapshot(&mut conn), "unknown task");
}

// Metadata and time.

#[test]
fn transition_metadata_is_stored_and_is_an_empty_object_when_none() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let task_id = fixture.task.task_id;
    let given = json!({"worker": "w-7", "reason": ["retry", 2], "nested": {"ok": true}});

    let with = transition_workflow_step(
        &mut conn,
        step_id,
        StepState::InProgress,
        TransitionOptions::default().with_metadata(&given),
    )
    .unwrap();
    let without = move_step(&mut conn, step_id, StepState::Complete);
    assert_eq!(with.metadata, Some(given.clone()));
    assert_eq!(without.metadata, Some(json!({})));
    let stored: Vec<_> = step_transitions(&mut conn, step_id)
        .into_iter()
        .map(|t| t.metadata)
        .collect();
    assert_eq!(stored, [Some(given.clone()), Some(json!({}))]);

    let with = transition_task(
        &mut conn,
        task_id,
        TaskState::InProgress,
        TransitionOptions::expecting(TaskState::Pending).with_metadata(&given),
    )
    .unwrap();
    let without = move_task(&mut conn, task_id, TaskState::Complete);
    assert_eq!(with.metadata, Some(given.clone()));
    assert_eq!(without.metadata, Some(json!({})));
    let stored: Vec<_> = task_transitions(&mut conn, task_id)
        .into_iter()
        .map(|t| t.metadata)
        .collect();
    assert_eq!(stored, [Some(given), Some(json!({}))]);
}

#[test]
fn transition_timestamps_are_utc_whatever_the_session_time_zone() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let task_id = fixture.task.task_id;
    conn.batch_execute("SET TIME ZONE 'America/New_York'")
        .unwrap();
    // The session really is hours away from UTC.
    let local: NaiveDateTime = diesel::select(diesel::dsl::sql::<diesel::sql_types::Timestamp>(
        "LOCALTIMESTAMP",
    ))
    .get_result(&mut conn)
    .unwrap();
    let offset = utc_now(&mut conn) - local;
    assert!(
        offset >= chrono::Duration::hours(4),
        "UTC - local = {offset}"
    );

    let close_to_now = |conn: &mut PgConnection, at: NaiveDateTime, what: &str| {
        let now = utc_now(conn);
        let gap = (now - at).num_seconds().abs();
        assert!(gap <= 5, "{what}: {at} is {gap}s from now in UTC ({now})");
    };
    let step_move = move_step(&mut conn, step_id, StepState::InProgress);
    close_to_now(
        &mut conn,
        step_move.created_at,
        "step transition created_at",
    );
    close_to_now(
        &mut conn,
        step_move.updated_at,
        "step transition updated_at",
    );
    let step = step_row(&mut conn, step_id);
    close_to_now(
        &mut conn,
        step.last_attempted_at.unwrap(),
        "last_attempted_at",
    );
    let step_done = move_step(&mut conn, step_id, StepState::Complete);
    close_to_now(
        &mut conn,
        step_done.created_at,
        "step transition created_at",
    );
    let step = step_row(&mut conn, step_id);
    close_to_now(&mut conn, step.processed_at.unwrap(), "processed_at");

    let task_move = move_task(&mut conn, task_id, TaskState::InProgress);
    close_to_now(
        &mut conn,
        task_move.created_at,
        "task transition created_at",
    );
    close_to_now(
        &mut conn,
        task_move.updated_at,
        "task transition updated_at",
    );
}

#[test]
fn later_transitions_have_later_timestamps() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    conn.transaction::<_, Error, _>(|conn| {
        move_step(conn, step_id, StepState::InProgress);
        move_step(conn, step_id, StepState::Error);
        move_step(conn, step_id, StepState::Pending);
        Ok(())
    })
    .unwrap();
    let history = step_transitions(&mut conn, step_id);
    assert!(
        history
            .windows(2)
            .all(|pair| pair[0].created_at < pair[1].created_at),
        "{history:?}"
    );
}

// Manual resolution.

#[test]
fn resolve_step_manually_from_pending_or_error_finishes_the_step() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let pending = fixture.steps[0].workflow_step_id;
    let failed = fixture.steps[1].workflow_step_id;
    move_step(&mut conn, failed, StepState::InProgress);
    move_step(&mut conn, failed, StepState::Error);
    let note = json!({"operator": "ana", "ticket": 42});

    let resolved = resolve_step_manually(&mut conn, pending, Some(&note)).unwrap();
    assert_eq!(
        (resolved.from_state, resolved.to_state, resolved.sort_key),
        (None, StepState::ResolvedManually, 1)
    );
    assert_eq!(resolved.metadata, Some(note));

    let resolved = resolve_step_manually(&mut conn, failed, None).unwrap();
    assert_eq!(
        (resolved.from_state, resolved.to_state, resolved.sort_key),
        (Some(StepState::Error), StepState::ResolvedManually, 3)
    );
    assert_eq!(resolved.metadata, Some(json!({})));

    for step_id in [pending, failed] {
        let step = step_row(&mut conn, step_id);
        assert!(step.processed && !step.in_process, "{step:?}");
        assert!(step.processed_at.is_some(), "{step:?}");
    }
}

#[test]
fn resolve_step_manually_from_in_progress_or_complete_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let running = fixture.steps[0].workflow_step_id;
    let done = fixture.steps[1].workflow_step_id;
    move_step(&mut conn, running, StepState::InProgress);
    move_step(&mut conn, done, StepState::InProgress);
    move_step(&mut conn, done, StepState::Complete);

    for (index, step_id, from) in [
        (0, running, StepState::InProgress),
        (1, done, StepState::Complete),
    ] {
        let before = snapshot(&mut conn);
        assert_eq!(
            refusal(resolve_step_manually(
                &mut conn,
                step_id,
                Some(&json!({"x": 1}))
            )),
            Refusal::IllegalStepTransition {
                workflow_step_id: step_id,
                name: fixture.named_steps[index].name.clone(),
                from,
                to: StepState::ResolvedManually,
            }
        );
        assert_nothing_written(&before, &snapshot(&mut conn), &format!("resolve {from}"));
    }
}

#[test]
fn a_manually_resolved_parent_counts_as_complete_for_its_children() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    // 0 → 1, 0 → 2, 1 → 3, 2 → 3.
    let fixture = support::diamond(&mut conn);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    let readiness = |conn: &mut PgConnection| -> Vec<(i64, i32, bool, bool)> {
        StepReadinessStatus::for_task(fixture.task.task_id)
            .load(conn)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.workflow_step_id,
                    r.completed_parents,
                    r.dependencies_satisfied,
                    r.ready_for_execution,
                )
            })
            .collect()
    };

    // The root, resolved from pending: both middle steps may run.
    resolve_step_manually(&mut conn, id(0), None).unwrap();
    assert_eq!(
        readiness(&mut conn),
        [
            (id(0), 0, true, false),
            (id(1), 1, true, true),
            (id(2), 1, true, true),
            (id(3), 0, false, false),
        ]
    );

    // One middle step resolved after failing, the other completed: the sink may run.
    move_step(&mut conn, id(1), StepState::InProgress);
    move_step(&mut conn, id(1), StepState::Error);
    resolve_step_manually(&mut conn, id(1), None).unwrap();
    move_step(&mut conn, id(2), StepState::InProgress);
    move_step(&mut conn, id(2), StepState::Complete);
    let sink = StepReadinessStatus::for_steps(&[id(3)])
        .load(&mut conn)
        .unwrap();
    assert_eq!(sink.len(), 1);
    assert_eq!(
        (
            sink[0].total_parents,
            sink[0].completed_parents,
            sink[0].dependencies_satisfied,
            sink[0].ready_for_execution
        ),
        (2, 2, true, true)
    );
}
