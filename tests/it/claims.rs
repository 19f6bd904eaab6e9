//! Claiming ready steps and reporting results under a claim: the write path
//! of `claim_ready_steps`, `complete_step`, `fail_step`, `extend_step_claim`
//! and `release_expired_claims`.
//!
//! Each test has a database of its own and autocommit connections, so every
//! call sees the commits made before it and `now()` moves on as it does in
//! production. Time is made to pass by moving timestamps into the past.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::dsl::IntervalDsl;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::json;
use tasker_diesel::models::{NewWorkflowStep, WorkflowStep, WorkflowStepTransition};
use tasker_diesel::schema::tasker_workflow_step_transitions::dsl as transitions;
use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, extend_step_claim, fail_step,
    release_expired_claims, transition_task, transition_workflow_step, Claim, ClaimRequest,
    ClaimedStep, TransitionOptions,
};
use tasker_diesel::{Refusal, StepReadinessStatus, StepState, TaskState};

use crate::support;
use support::{refusal, step_row, step_transitions, task_transitions};

use StepState::{Cancelled, Complete, InProgress, Pending};

/// The lease of claims whose lease does not matter to the test.
const LEASE: Duration = Duration::from_secs(60);

fn seconds(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn claim(conn: &mut PgConnection, request: &ClaimRequest<'_>) -> Vec<ClaimedStep> {
    claim_ready_steps(conn, request).expect("claim_ready_steps")
}

/// Up to `max_steps` ready steps of any task.
fn claim_any(conn: &mut PgConnection, max_steps: u32) -> Vec<ClaimedStep> {
    claim(conn, &ClaimRequest::any_task(max_steps, LEASE))
}

/// Claims exactly one step of any task and returns it.
fn claim_one(conn: &mut PgConnection) -> ClaimedStep {
    let mut claimed = claim_any(conn, 1);
    assert_eq!(claimed.len(), 1, "one step claimed: {claimed:?}");
    claimed.remove(0)
}

fn ids(claimed: &[ClaimedStep]) -> Vec<i64> {
    claimed.iter().map(|step| step.workflow_step_id).collect()
}

fn states(history: &[WorkflowStepTransition]) -> Vec<StepState> {
    history
        .iter()
        .map(|transition| transition.to_state)
        .collect()
}

fn step_states(conn: &mut PgConnection, step_id: i64) -> Vec<StepState> {
    states(&step_transitions(conn, step_id))
}

fn readiness(conn: &mut PgConnection, step_id: i64) -> StepReadinessStatus {
    let mut rows = StepReadinessStatus::for_steps(&[step_id])
        .load(conn)
        .expect("readiness");
    assert_eq!(rows.len(), 1, "one readiness row for step {step_id}");
    rows.remove(0)
}

/// The step row and its history: equal before and after a refused call
/// when the call wrote nothing.
fn snapshot(conn: &mut PgConnection, step_id: i64) -> (WorkflowStep, Vec<WorkflowStepTransition>) {
    (step_row(conn, step_id), step_transitions(conn, step_id))
}

/// As if `by` seconds had passed since the step's latest transition (its
/// failure) and its last attempt started.
fn age_latest_transition(conn: &mut PgConnection, step_id: i64, by: i32) {
    diesel::update(transitions::tasker_workflow_step_transitions)
        .filter(
            transitions::workflow_step_id
                .eq(step_id)
                .and(transitions::most_recent),
        )
        .set(transitions::created_at.eq(transitions::created_at - by.seconds()))
        .execute(conn)
        .expect("age latest transition");
    age_last_attempt(conn, step_id, by);
}

/// As if `by` seconds had passed since the step's last attempt started.
fn age_last_attempt(conn: &mut PgConnection, step_id: i64, by: i32) {
    support::update_step(
        conn,
        step_id,
        steps::last_attempted_at.eq(steps::last_attempted_at - by.seconds()),
    );
}

/// Moves the step's lease into the past and returns its new end.
fn expire_lease(conn: &mut PgConnection, step_id: i64, ago: i64) -> NaiveDateTime {
    let until = support::utc_now(conn) - seconds(ago);
    support::update_step(conn, step_id, steps::claimed_until.eq(Some(until)));
    until
}

/// Fails the claimed step and lets its failure backoff pass.
fn fail_and_wait(conn: &mut PgConnection, claimed: &ClaimedStep) {
    fail_step(conn, claimed.claim(), &json!({"message": "boom"}), None).expect("fail_step");
    age_latest_transition(conn, claimed.workflow_step_id, 60);
}

// Which steps are claimed ---------------------------------------------------------------

#[test]
fn only_ready_steps_are_claimed() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 6);
    let [parent, child, backing_off, exhausted, done, ready] = fixture.step_ids()[..] else {
        unreachable!()
    };
    support::add_edge(&mut conn, parent, child).unwrap();
    // Failed just now after 5 of 10 attempts: 30 s of failure backoff.
    support::update_step(
        &mut conn,
        backing_off,
        (steps::attempts.eq(Some(5)), steps::retry_limit.eq(Some(10))),
    );
    support::step_history(&mut conn, backing_off, &[InProgress, StepState::Error]);
    // Failed an hour ago after 3 of 3 attempts: permanently failed.
    support::update_step(&mut conn, exhausted, steps::attempts.eq(Some(3)));
    support::step_history(&mut conn, exhausted, &[InProgress, StepState::Error]);
    let an_hour_ago = support::utc_now(&mut conn) - seconds(3600);
    support::current_transition_at(&mut conn, exhausted, an_hour_ago);
    // Processed.
    support::step_history(&mut conn, done, &[InProgress, Complete]);
    support::update_step(
        &mut conn,
        done,
        (
            steps::processed.eq(true),
            steps::processed_at.eq(Some(an_hour_ago)),
        ),
    );

    // The parent is the first ready step; once claimed it is in process.
    let first = claim(
        &mut conn,
        &ClaimRequest::for_tasks(&[fixture.task.task_id], 1, LEASE),
    );
    assert_eq!(ids(&first), [parent]);

    assert_eq!(ids(&claim_any(&mut conn, 10)), [ready]);
    assert_eq!(claim_any(&mut conn, 10), []);
    assert_eq!(step_states(&mut conn, parent), [InProgress]);
    assert_eq!(step_states(&mut conn, child), []);
    assert_eq!(
        step_states(&mut conn, backing_off),
        [InProgress, StepState::Error]
    );
    assert_eq!(
        step_states(&mut conn, exhausted),
        [InProgress, StepState::Error]
    );
    assert_eq!(step_states(&mut conn, done), [InProgress, Complete]);
    assert_eq!(step_row(&mut conn, backing_off).attempts, Some(5));
}

#[test]
fn diamond_children_are_claimed_after_their_parents_complete() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let [root, left, right, sink] = fixture.step_ids()[..] else {
        unreachable!()
    };

    let claimed = claim_any(&mut conn, 10);
    assert_eq!(ids(&claimed), [root]);
    assert_eq!(claim_any(&mut conn, 10), []);

    complete_step(&mut conn, claimed[0].claim(), &json!({})).unwrap();
    let middle = claim_any(&mut conn, 10);
    assert_eq!(ids(&middle), [left, right]);
    assert_eq!(claim_any(&mut conn, 10), []);

    complete_step(&mut conn, middle[0].claim(), &json!({})).unwrap();
    assert_eq!(
        claim_any(&mut conn, 10),
        [],
        "the sink still waits for {right}"
    );
    complete_step(&mut conn, middle[1].claim(), &json!({})).unwrap();
    assert_eq!(ids(&claim_any(&mut conn, 10)), [sink]);
}

// Order and limits ----------------------------------------------------------------------

#[test]
fn older_tasks_are_claimed_first_then_lower_step_ids() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let older = support::task_with_steps(&mut conn, 2);
    let newer = support::task_with_steps(&mut conn, 2);
    let newest = support::task_with_steps(&mut conn, 3);
    // A step added to the oldest task last: the highest step id of all.
    let late: WorkflowStep = diesel::insert_into(steps::tasker_workflow_steps)
        .values(NewWorkflowStep {
            task_id: older.task.task_id,
            named_step_id: newest.named_steps[2].named_step_id,
            ..NewWorkflowStep::default()
        })
        .returning(WorkflowStep::as_returning())
        .get_result(&mut conn)
        .unwrap();
    assert!(late.workflow_step_id > newest.steps[2].workflow_step_id);

    let mut expected = older.step_ids();
    expected.push(late.workflow_step_id);
    assert_eq!(ids(&claim_any(&mut conn, 3)), expected);
    assert_eq!(ids(&claim_any(&mut conn, 2)), newer.step_ids());
    assert_eq!(ids(&claim_any(&mut conn, 10)), newest.step_ids());
}

#[test]
fn claim_returns_at_most_max_steps() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 5);
    let all = fixture.step_ids();

    assert_eq!(ids(&claim_any(&mut conn, 2)), all[0..2]);
    assert_eq!(ids(&claim_any(&mut conn, 2)), all[2..4]);
    assert_eq!(ids(&claim_any(&mut conn, 2)), all[4..]);
    assert_eq!(claim_any(&mut conn, 2), []);
}

#[test]
fn for_tasks_claims_only_from_those_tasks_oldest_first() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let first = support::task_with_steps(&mut conn, 2);
    let second = support::task_with_steps(&mut conn, 2);
    let third = support::task_with_steps(&mut conn, 2);
    let chosen = [third.task.task_id, second.task.task_id];

    let claimed = claim(&mut conn, &ClaimRequest::for_tasks(&chosen, 3, LEASE));
    let mut expected = second.step_ids();
    expected.push(third.steps[0].workflow_step_id);
    assert_eq!(ids(&claimed), expected);
    assert!(claimed.iter().all(|step| chosen.contains(&step.task_id)));

    // The other task is untouched: no step moved, the task did not start.
    for step in first.step_ids() {
        assert_eq!(step_states(&mut conn, step), []);
        assert_eq!(step_row(&mut conn, step).attempts, Some(0));
    }
    assert_eq!(task_transitions(&mut conn, first.task.task_id), []);

    let rest = claim(&mut conn, &ClaimRequest::for_tasks(&chosen, 10, LEASE));
    assert_eq!(ids(&rest), [third.steps[1].workflow_step_id]);
    assert_eq!(
        claim(&mut conn, &ClaimRequest::for_tasks(&chosen, 10, LEASE)),
        []
    );
    assert_eq!(
        claim(&mut conn, &ClaimRequest::for_tasks(&[], 10, LEASE)),
        []
    );
    assert_eq!(ids(&claim_any(&mut conn, 10)), first.step_ids());
}

// What a claim writes -------------------------------------------------------------------

#[test]
fn claim_starts_the_step_counts_an_attempt_and_leases_it() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let inputs = json!({"order_id": 42, "lines": [1, 2]});
    support::update_step(&mut conn, step_id, steps::inputs.eq(Some(&inputs)));
    let worker = json!({"worker": "worker-7"});

    let before = support::utc_now(&mut conn);
    let claimed = claim(
        &mut conn,
        &ClaimRequest::any_task(1, Duration::from_secs(90)).with_metadata(&worker),
    );
    let after = support::utc_now(&mut conn);

    assert_eq!(claimed.len(), 1);
    let claimed = &claimed[0];
    assert_eq!(claimed.workflow_step_id, step_id);
    assert_eq!(claimed.task_id, fixture.task.task_id);
    assert_eq!(claimed.named_step_id, fixture.named_steps[0].named_step_id);
    assert_eq!(claimed.name, fixture.named_steps[0].name);
    assert_eq!(claimed.attempt, 1);
    assert_eq!(claimed.inputs, Some(inputs));

    let history = step_transitions(&mut conn, step_id);
    assert_eq!(states(&history), [InProgress]);
    let started = &history[0];
    assert_eq!(started.id, claimed.claim_id);
    assert!(started.most_recent);
    assert_eq!(started.from_state, None);
    assert_eq!(started.metadata, Some(worker.clone()));
    assert!(before <= started.created_at && started.created_at <= after);
    assert_eq!(claimed.claimed_until, started.created_at + seconds(90));

    let row = step_row(&mut conn, step_id);
    assert!(row.in_process);
    assert!(!row.processed);
    assert_eq!(row.attempts, Some(claimed.attempt));
    assert_eq!(row.last_attempted_at, Some(started.created_at));
    assert_eq!(row.claimed_until, Some(claimed.claimed_until));

    let task_history = task_transitions(&mut conn, fixture.task.task_id);
    assert_eq!(task_history.len(), 1);
    assert_eq!(task_history[0].to_state, TaskState::InProgress);
    assert_eq!(task_history[0].metadata, Some(worker));
}

#[test]
fn attempt_counts_on_from_stored_attempts() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let [unset, counted] = fixture.step_ids()[..] else {
        unreachable!()
    };
    support::update_step(&mut conn, unset, steps::attempts.eq(None::<i32>));
    support::update_step(&mut conn, counted, steps::attempts.eq(Some(1)));

    let claimed = claim_any(&mut conn, 2);
    assert_eq!(ids(&claimed), [unset, counted]);
    assert_eq!(claimed[0].attempt, 1, "NULL attempts count as 0");
    assert_eq!(claimed[1].attempt, 2);
    assert_eq!(step_row(&mut conn, counted).attempts, Some(2));
}

#[test]
fn pending_task_starts_with_its_first_claim_only() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;
    assert_eq!(task_transitions(&mut conn, task_id), []);

    claim_one(&mut conn);
    let started = task_transitions(&mut conn, task_id);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].to_state, TaskState::InProgress);
    assert_eq!(started[0].from_state, None);
    assert_eq!(started[0].metadata, Some(json!({})), "no request metadata");
    assert!(started[0].most_recent);

    claim_one(&mut conn);
    assert_eq!(task_transitions(&mut conn, task_id), started);
}

#[test]
fn steps_of_cancelled_complete_errored_or_resolved_tasks_are_not_claimed() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let paths: [&[TaskState]; 4] = [
        &[TaskState::Cancelled],
        &[TaskState::InProgress, TaskState::Complete],
        &[TaskState::Error],
        &[TaskState::Error, TaskState::ResolvedManually],
    ];
    let mut stopped = Vec::new();
    for path in paths {
        let fixture = support::task_with_steps(&mut conn, 2);
        for &state in path {
            transition_task(
                &mut conn,
                fixture.task.task_id,
                state,
                TransitionOptions::default(),
            )
            .unwrap();
        }
        stopped.push(fixture);
    }
    let live = support::task_with_steps(&mut conn, 1);

    let stopped_ids: Vec<i64> = stopped.iter().map(|fixture| fixture.task.task_id).collect();
    assert_eq!(
        claim(&mut conn, &ClaimRequest::for_tasks(&stopped_ids, 10, LEASE)),
        []
    );
    assert_eq!(ids(&claim_any(&mut conn, 10)), live.step_ids());
    assert_eq!(claim_any(&mut conn, 10), []);
    for (fixture, path) in stopped.iter().zip(paths) {
        let task_states: Vec<TaskState> = task_transitions(&mut conn, fixture.task.task_id)
            .iter()
            .map(|transition| transition.to_state)
            .collect();
        assert_eq!(task_states, path);
        for step in fixture.step_ids() {
            assert_eq!(step_states(&mut conn, step), []);
            assert!(!step_row(&mut conn, step).in_process);
        }
    }
}

// Retries -------------------------------------------------------------------------------

#[test]
fn failed_step_is_claimed_again_once_its_failure_backoff_has_passed() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let first = claim_one(&mut conn);
    let failed = fail_step(&mut conn, first.claim(), &json!("timeout"), None).unwrap();

    // 2^1 seconds after the failure.
    let row = readiness(&mut conn, step_id);
    assert_eq!(row.current_state, StepState::Error);
    assert!(row.retry_eligible);
    assert_eq!(row.last_failure_at, Some(failed.created_at));
    assert_eq!(row.next_retry_at, Some(failed.created_at + seconds(2)));
    assert_eq!(claim_any(&mut conn, 10), []);

    age_latest_transition(&mut conn, step_id, 60);
    let worker = json!({"worker": "second"});
    let again = claim(
        &mut conn,
        &ClaimRequest::any_task(10, LEASE).with_metadata(&worker),
    );
    assert_eq!(ids(&again), [step_id]);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(step_row(&mut conn, step_id).attempts, Some(2));

    let history = step_transitions(&mut conn, step_id);
    assert_eq!(
        states(&history),
        [InProgress, StepState::Error, Pending, InProgress]
    );
    let from: Vec<Option<StepState>> = history.iter().map(|t| t.from_state).collect();
    assert_eq!(
        from,
        [
            None,
            Some(InProgress),
            Some(StepState::Error),
            Some(Pending)
        ]
    );
    assert_eq!(again[0].claim_id, history[3].id);
    assert_eq!(history[2].metadata, Some(worker.clone()));
    assert_eq!(history[3].metadata, Some(worker));
}

#[test]
fn retry_after_holds_the_step_until_last_attempt_plus_that_delay() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let first = claim_one(&mut conn);
    fail_step(
        &mut conn,
        first.claim(),
        &json!({"status": 429}),
        Some(Duration::from_secs(120)),
    )
    .unwrap();

    let row = step_row(&mut conn, step_id);
    assert_eq!(row.backoff_request_seconds, Some(120));
    let started = row.last_attempted_at.unwrap();
    assert_eq!(
        readiness(&mut conn, step_id).next_retry_at,
        Some(started + seconds(120))
    );

    // The failure backoff has passed, the requested delay has not.
    age_latest_transition(&mut conn, step_id, 60);
    assert_eq!(claim_any(&mut conn, 10), []);
    assert!(!readiness(&mut conn, step_id).ready_for_execution);

    age_last_attempt(&mut conn, step_id, 61);
    let again = claim_any(&mut conn, 10);
    assert_eq!(ids(&again), [step_id]);
    assert_eq!(again[0].attempt, 2);
}

#[test]
fn a_requested_delay_is_cleared_when_the_next_attempt_starts() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let first = claim_one(&mut conn);
    fail_step(
        &mut conn,
        first.claim(),
        &json!("slow down"),
        Some(Duration::from_secs(120)),
    )
    .unwrap();
    age_latest_transition(&mut conn, step_id, 200);
    let second = claim_one(&mut conn);
    assert_eq!(step_row(&mut conn, step_id).backoff_request_seconds, None);
    assert_eq!(readiness(&mut conn, step_id).next_retry_at, None);

    let failed = fail_step(&mut conn, second.claim(), &json!("boom"), None).unwrap();
    assert_eq!(step_row(&mut conn, step_id).backoff_request_seconds, None);
    // Only the failure backoff is left: 2^2 seconds.
    assert_eq!(
        readiness(&mut conn, step_id).next_retry_at,
        Some(failed.created_at + seconds(4))
    );
    // 10 s later the step runs again, well before its last start + 120 s.
    age_latest_transition(&mut conn, step_id, 10);
    let third = claim_one(&mut conn);
    assert_eq!((third.workflow_step_id, third.attempt), (step_id, 3));
}

#[test]
fn step_is_permanently_failed_after_retry_limit_failures() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    assert_eq!(fixture.steps[0].retry_limit, Some(3));

    for attempt in 1..=3 {
        let claimed = claim_one(&mut conn);
        assert_eq!(claimed.attempt, attempt);
        fail_and_wait(&mut conn, &claimed);
    }

    assert_eq!(claim_any(&mut conn, 10), []);
    let row = readiness(&mut conn, step_id);
    assert_eq!(row.current_state, StepState::Error);
    assert_eq!((row.attempts, row.retry_limit), (3, 3));
    assert!(!row.retry_eligible);
    assert!(!row.ready_for_execution);
    let failed = StepReadinessStatus::for_steps(&[step_id])
        .permanently_failed()
        .load(&mut conn)
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(step_states(&mut conn, step_id).len(), 3 * 2 + 2);
}

#[test]
fn non_retryable_step_gets_one_attempt_only() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    support::update_step(&mut conn, step_id, steps::retryable.eq(false));

    let claimed = claim_one(&mut conn);
    assert_eq!(claimed.attempt, 1);
    fail_and_wait(&mut conn, &claimed);

    assert_eq!(claim_any(&mut conn, 10), []);
    let row = readiness(&mut conn, step_id);
    assert!(!row.retry_eligible);
    assert!(!row.ready_for_execution);
    assert_eq!(step_row(&mut conn, step_id).attempts, Some(1));
}

// Concurrency ---------------------------------------------------------------------------

/// Two connections, each in a thread of its own, claim up to `max_steps`
/// steps of any task at the same moment.
fn claim_at_once(db: &TestDatabase, max_steps: u32) -> [Vec<ClaimedStep>; 2] {
    let barrier = Barrier::new(2);
    thread::scope(|scope| {
        let worker = || {
            scope.spawn(|| {
                let mut conn = db.connection();
                barrier.wait();
                claim_any(&mut conn, max_steps)
            })
        };
        let (first, second) = (worker(), worker());
        [first, second].map(|worker| worker.join().expect("claiming thread"))
    })
}

#[test]
fn concurrent_claims_are_disjoint_and_cover_every_ready_step() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    // Several rounds, each on a task of 20 ready steps; every other task has
    // not started yet, so both claims race to start it.
    for round in 0..10 {
        let fixture = support::task_with_steps(&mut conn, 20);
        let task_id = fixture.task.task_id;
        if round % 2 == 0 {
            transition_task(
                &mut conn,
                task_id,
                TaskState::InProgress,
                TransitionOptions::default(),
            )
            .unwrap();
        }
        let all: BTreeSet<i64> = fixture.step_ids().into_iter().collect();

        let [first, second] = claim_at_once(&db, 20);
        let first: BTreeSet<i64> = ids(&first).into_iter().collect();
        let second: BTreeSet<i64> = ids(&second).into_iter().collect();
        assert!(first.is_disjoint(&second), "{first:?} and {second:?}");
        let union: BTreeSet<i64> = first.union(&second).copied().collect();
        assert_eq!(union, all, "claimed {} and {}", first.len(), second.len());
        for step in all {
            assert_eq!(step_states(&mut conn, step), [InProgress], "step {step}");
            assert_eq!(step_row(&mut conn, step).attempts, Some(1));
        }
        assert_eq!(task_transitions(&mut conn, task_id).len(), 1);
    }
}

/// The claim that overlaps another one which is starting the same pending
/// task: the first claimer's transaction has moved the task to in_progress
/// and claimed one step, and has not committed yet. The second claimer skips
/// the locked step, waits for the task's row, and then gets the other ready
/// steps without starting the task a second time.
#[test]
fn claim_overlapping_the_claim_that_starts_the_task_waits_for_it_and_gets_the_other_ready_steps() {
    let db = TestDatabase::new();
    let mut first = db.connection();
    let fixture = support::task_with_steps(&mut first, 3);
    let [taken, second_step, third_step] = fixture.step_ids()[..] else {
        unreachable!()
    };
    // The first claim starts the task and keeps its transaction open (one
    // Diesel knows of, so the claim's own is a savepoint inside it).
    AnsiTransactionManager::begin_transaction(&mut first).unwrap();
    assert_eq!(ids(&claim_any(&mut first, 1)), [taken]);

    let mut second = db.connection();
    let overlapping = std::thread::spawn(move || claim_any(&mut second, 10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !overlapping.is_finished(),
        "the overlapping claim waits for the task the first claim is starting"
    );
    AnsiTransactionManager::commit_transaction(&mut first).unwrap();

    assert_eq!(ids(&overlapping.join().unwrap()), [second_step, third_step]);
    assert_eq!(task_transitions(&mut first, fixture.task.task_id).len(), 1);
}

#[test]
fn claim_skips_a_step_locked_by_another_transaction_without_waiting() {
    let db = TestDatabase::new();
    let mut holder = db.connection();
    let fixture = support::task_with_steps(&mut holder, 3);
    let [locked, second, third] = fixture.step_ids()[..] else {
        unreachable!()
    };
    diesel::sql_query("BEGIN").execute(&mut holder).unwrap();
    diesel::sql_query("SELECT 1 FROM tasker_workflow_steps WHERE workflow_step_id = $1 FOR UPDATE")
        .bind::<BigInt, _>(locked)
        .execute(&mut holder)
        .unwrap();

    let mut claimer = db.connection();
    // A claim that waited for the lock would fail here instead of going on.
    diesel::sql_query("SET lock_timeout = '2s'")
        .execute(&mut claimer)
        .unwrap();
    let claimed = claim_any(&mut claimer, 10);
    assert_eq!(ids(&claimed), [second, third]);
    assert_eq!(step_states(&mut claimer, locked), []);

    diesel::sql_query("ROLLBACK").execute(&mut holder).unwrap();
    assert_eq!(ids(&claim_any(&mut claimer, 10)), [locked]);
}

// Results -------------------------------------------------------------------------------

#[test]
fn complete_step_stores_results_and_finishes_the_step() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let claimed = claim_one(&mut conn);
    let results = json!({"charged": 1999, "currency": "EUR"});

    let completed = complete_step(&mut conn, claimed.claim(), &results).unwrap();
    assert_eq!(completed.to_state, Complete);
    assert_eq!(completed.from_state, Some(InProgress));
    assert!(completed.most_recent);
    assert_eq!(completed.metadata, Some(json!({})));

    let row = step_row(&mut conn, step_id);
    assert_eq!(row.results, Some(results));
    assert!(row.processed);
    assert_eq!(row.processed_at, Some(completed.created_at));
    assert!(!row.in_process);
    assert_eq!(row.claimed_until, None);
    assert_eq!(row.attempts, Some(1));
    assert_eq!(step_states(&mut conn, step_id), [InProgress, Complete]);
}

#[test]
fn fail_step_stores_the_error_and_leaves_the_step_unprocessed() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let claimed = claim_one(&mut conn);
    let error = json!({"message": "card declined", "code": "E42"});

    let failed = fail_step(&mut conn, claimed.claim(), &error, None).unwrap();
    assert_eq!(failed.to_state, StepState::Error);
    assert_eq!(failed.from_state, Some(InProgress));
    // error_message, for the Rails engine: the error's message.
    assert_eq!(
        failed.metadata,
        Some(json!({"error": error, "error_message": "card declined"}))
    );

    let row = step_row(&mut conn, step_id);
    assert!(!row.in_process);
    assert!(!row.processed);
    assert_eq!(row.processed_at, None);
    assert_eq!(row.claimed_until, None);
    assert_eq!(row.results, None);
    assert_eq!(row.attempts, Some(1));
    assert_eq!(
        step_states(&mut conn, step_id),
        [InProgress, StepState::Error]
    );
}

// Claims that no longer hold ------------------------------------------------------------

/// Completing, failing and extending under `claim` are all refused with
/// `expected`, and none of them writes anything.
fn assert_every_report_refused(conn: &mut PgConnection, claim: Claim, expected: &Refusal) {
    let before = snapshot(conn, claim.workflow_step_id);
    assert_eq!(
        &refusal(complete_step(conn, claim, &json!({"late": true}))),
        expected,
        "complete_step"
    );
    assert_eq!(
        &refusal(fail_step(conn, claim, &json!("late"), Some(LEASE))),
        expected,
        "fail_step"
    );
    assert_eq!(
        &refusal(extend_step_claim(conn, claim, LEASE)),
        expected,
        "extend_step_claim"
    );
    assert_eq!(snapshot(conn, claim.workflow_step_id), before);
}

fn claim_lost(claim: Claim, state: StepState) -> Refusal {
    Refusal::ClaimLost {
        workflow_step_id: claim.workflow_step_id,
        claim_id: claim.claim_id,
        state,
    }
}

#[test]
fn claim_with_a_wrong_claim_id_is_lost() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 3);
    let never_claimed = fixture.steps[2].workflow_step_id;
    let claimed = claim_any(&mut conn, 2);
    let (mine, other) = (&claimed[0], &claimed[1]);

    // Another step's claim, and an id that is no transition at all.
    for claim_id in [other.claim_id, mine.claim_id + 1_000_000] {
        let wrong = Claim {
            workflow_step_id: mine.workflow_step_id,
            claim_id,
        };
        assert_every_report_refused(&mut conn, wrong, &claim_lost(wrong, InProgress));
    }
    let pending = Claim {
        workflow_step_id: never_claimed,
        claim_id: mine.claim_id,
    };
    assert_every_report_refused(&mut conn, pending, &claim_lost(pending, Pending));

    // Both claims still hold.
    let other_before = snapshot(&mut conn, other.workflow_step_id);
    complete_step(&mut conn, mine.claim(), &json!({})).unwrap();
    assert_eq!(snapshot(&mut conn, other.workflow_step_id), other_before);
    complete_step(&mut conn, other.claim(), &json!({})).unwrap();
}

#[test]
fn claim_is_lost_once_the_step_completed() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim_one(&mut conn);
    complete_step(&mut conn, claimed.claim(), &json!({"first": true})).unwrap();

    assert_every_report_refused(
        &mut conn,
        claimed.claim(),
        &claim_lost(claimed.claim(), Complete),
    );
    assert_eq!(
        step_row(&mut conn, claimed.workflow_step_id).results,
        Some(json!({"first": true}))
    );
}

#[test]
fn claim_is_lost_when_the_task_is_cancelled() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let claimed = claim_one(&mut conn);
    cancel_task(&mut conn, fixture.task.task_id, None).unwrap();

    assert_every_report_refused(
        &mut conn,
        claimed.claim(),
        &claim_lost(claimed.claim(), Cancelled),
    );
    assert_eq!(
        step_states(&mut conn, claimed.workflow_step_id),
        [InProgress, Cancelled]
    );
}

#[test]
fn released_claim_is_lost_and_the_step_is_claimed_again_after_its_backoff() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let old = claim_one(&mut conn);
    expire_lease(&mut conn, step_id, 5);
    assert_eq!(release_expired_claims(&mut conn, None).unwrap(), [step_id]);

    assert_every_report_refused(
        &mut conn,
        old.claim(),
        &claim_lost(old.claim(), StepState::Error),
    );
    // The release is a failure like any other: 2^1 seconds of backoff.
    assert_eq!(claim_any(&mut conn, 10), []);
    age_latest_transition(&mut conn, step_id, 60);
    let new = claim_one(&mut conn);
    assert_eq!((new.workflow_step_id, new.attempt), (step_id, 2));

    assert_every_report_refused(&mut conn, old.claim(), &claim_lost(old.claim(), InProgress));
    complete_step(&mut conn, new.claim(), &json!({"by": "new"})).unwrap();
    assert_eq!(
        step_row(&mut conn, step_id).results,
        Some(json!({"by": "new"}))
    );
}

#[test]
fn claim_is_refused_once_its_lease_has_passed() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim(
        &mut conn,
        &ClaimRequest::any_task(1, Duration::from_secs(1)),
    )
    .remove(0);
    thread::sleep(Duration::from_millis(1200));

    assert_every_report_refused(
        &mut conn,
        claimed.claim(),
        &Refusal::ClaimExpired {
            workflow_step_id: claimed.workflow_step_id,
            claim_id: claimed.claim_id,
            claimed_until: claimed.claimed_until,
        },
    );
    assert!(step_row(&mut conn, claimed.workflow_step_id).in_process);
}

#[test]
fn claim_is_refused_once_claimed_until_is_in_the_past() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim_one(&mut conn);
    let until = expire_lease(&mut conn, claimed.workflow_step_id, 1);

    assert_every_report_refused(
        &mut conn,
        claimed.claim(),
        &Refusal::ClaimExpired {
            workflow_step_id: claimed.workflow_step_id,
            claim_id: claimed.claim_id,
            claimed_until: until,
        },
    );
}

// Leases --------------------------------------------------------------------------------

#[test]
fn extend_step_claim_moves_the_lease_forward_and_keeps_the_claim() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim(
        &mut conn,
        &ClaimRequest::any_task(1, Duration::from_secs(2)),
    )
    .remove(0);
    let step_id = claimed.workflow_step_id;

    let before = support::utc_now(&mut conn);
    let until = extend_step_claim(&mut conn, claimed.claim(), Duration::from_secs(30)).unwrap();
    let after = support::utc_now(&mut conn);
    assert!(before + seconds(30) <= until && until <= after + seconds(30));
    assert!(until > claimed.claimed_until);
    assert_eq!(step_row(&mut conn, step_id).claimed_until, Some(until));
    assert_eq!(step_states(&mut conn, step_id), [InProgress]);

    // Past the first lease the claim still holds.
    thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        release_expired_claims(&mut conn, None).unwrap(),
        Vec::<i64>::new()
    );
    let later = extend_step_claim(&mut conn, claimed.claim(), Duration::from_secs(60)).unwrap();
    assert!(later > until);
    complete_step(&mut conn, claimed.claim(), &json!({})).unwrap();
    assert_eq!(step_states(&mut conn, step_id), [InProgress, Complete]);
}

#[test]
fn release_expired_claims_fails_only_expired_claims() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 5);
    let [oldest, older, unexpired, leaseless, untouched] = fixture.step_ids()[..] else {
        unreachable!()
    };
    let claimed = claim_any(&mut conn, 3);
    assert_eq!(ids(&claimed), [oldest, older, unexpired]);
    let oldest_until = expire_lease(&mut conn, oldest, 10);
    expire_lease(&mut conn, older, 5);
    // In progress without a lease: moved there directly, not claimed.
    transition_workflow_step(
        &mut conn,
        leaseless,
        InProgress,
        TransitionOptions::default(),
    )
    .unwrap();
    assert_eq!(step_row(&mut conn, leaseless).claimed_until, None);
    let kept = [unexpired, leaseless, untouched].map(|step| snapshot(&mut conn, step));

    // The longest expired goes first.
    assert_eq!(
        release_expired_claims(&mut conn, Some(1)).unwrap(),
        [oldest]
    );
    assert_eq!(release_expired_claims(&mut conn, None).unwrap(), [older]);
    assert_eq!(
        release_expired_claims(&mut conn, None).unwrap(),
        Vec::<i64>::new()
    );

    let released = step_transitions(&mut conn, oldest);
    assert_eq!(states(&released), [InProgress, StepState::Error]);
    let error = released[1].metadata.clone().unwrap()["error"].clone();
    assert_eq!(error["message"], "claim expired");
    assert_eq!(error["claim_id"], claimed[0].claim_id);
    let until: NaiveDateTime = serde_json::from_value(error["claimed_until"].clone()).unwrap();
    assert_eq!(until, oldest_until);
    for step in [oldest, older] {
        let row = step_row(&mut conn, step);
        assert!(!row.in_process && !row.processed);
        assert_eq!((row.attempts, row.claimed_until), (Some(1), None));
    }
    let now_kept = [unexpired, leaseless, untouched].map(|step| snapshot(&mut conn, step));
    assert_eq!(now_kept, kept);
    complete_step(&mut conn, claimed[2].claim(), &json!({})).unwrap();
}

#[test]
fn leases_are_timed_in_utc_whatever_the_session_time_zone() {
    let db = TestDatabase::new();
    for zone in ["Pacific/Kiritimati", "America/Adak"] {
        let mut conn = db.connection();
        diesel::sql_query("SELECT set_config('TimeZone', $1, false)")
            .bind::<Text, _>(zone)
            .execute(&mut conn)
            .unwrap();
        let fixture = support::task_with_steps(&mut conn, 2);
        let task_ids = [fixture.task.task_id];
        let request = ClaimRequest::for_tasks(&task_ids, 2, LEASE);

        let before = support::utc_now(&mut conn);
        let claimed = claim(&mut conn, &request);
        let after = support::utc_now(&mut conn);
        assert_eq!(claimed.len(), 2, "{zone}");
        for step in &claimed {
            assert!(
                before + seconds(60) <= step.claimed_until
                    && step.claimed_until <= after + seconds(60),
                "{zone}: {step:?} between {before} and {after}"
            );
        }
        complete_step(&mut conn, claimed[0].claim(), &json!({})).unwrap();

        let late = &claimed[1];
        let until = expire_lease(&mut conn, late.workflow_step_id, 1);
        assert_eq!(
            refusal(complete_step(&mut conn, late.claim(), &json!({}))),
            Refusal::ClaimExpired {
                workflow_step_id: late.workflow_step_id,
                claim_id: late.claim_id,
                claimed_until: until,
            },
            "{zone}"
        );
        assert_eq!(
            release_expired_claims(&mut conn, None).unwrap(),
            [late.workflow_step_id],
            "{zone}"
        );
        assert_eq!(claim(&mut conn, &request), [], "{zone}: in failure backoff");
    }
}

#[test]
fn release_expired_claims_skips_a_row_whose_flags_disagree_with_its_history() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let claimed = claim_one(&mut conn);
    expire_lease(&mut conn, claimed.workflow_step_id, 5);
    // Written by hand: in process with a past lease, but never started.
    let odd = fixture.steps[1].workflow_step_id;
    support::update_step(&mut conn, odd, steps::in_process.eq(true));
    expire_lease(&mut conn, odd, 10);

    assert_eq!(
        release_expired_claims(&mut conn, None).unwrap(),
        [claimed.workflow_step_id]
    );
    assert_eq!(step_states(&mut conn, odd), []);
}

#[test]
fn release_expired_claims_with_nothing_expired_returns_nothing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 2);
    claim_any(&mut conn, 2);
    assert_eq!(
        release_expired_claims(&mut conn, None).unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        release_expired_claims(&mut conn, Some(10)).unwrap(),
        Vec::<i64>::new()
    );
}

// Bad input -----------------------------------------------------------------------------

/// The argument an [`Refusal::InvalidArgument`] names, and its message.
fn invalid_argument(result: tasker_diesel::Result<impl Debug>) -> (String, String) {
    match refusal(result) {
        Refusal::InvalidArgument { argument, message } => (argument, message),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn claim_with_no_steps_or_a_zero_lease_is_refused_and_leases_round_up_to_whole_seconds() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let step_id = fixture.steps[0].workflow_step_id;
    let task_id = fixture.task.task_id;

    let task_ids = [task_id];
    let requests = [
        (ClaimRequest::any_task(0, LEASE), "max_steps"),
        (ClaimRequest::for_tasks(&task_ids, 0, LEASE), "max_steps"),
        (ClaimRequest::any_task(1, Duration::ZERO), "lease"),
    ];
    for (request, named) in &requests {
        let (argument, message) = invalid_argument(claim_ready_steps(&mut conn, request));
        assert_eq!(argument, *named, "{message}");
    }
    assert_eq!(step_states(&mut conn, step_id), []);
    assert_eq!(task_transitions(&mut conn, task_id), []);

    // Whole seconds, never shorter than asked: 1.5 s is a lease of 2 s.
    let claimed = claim(
        &mut conn,
        &ClaimRequest::any_task(1, Duration::from_millis(1500)),
    );
    let started = step_transitions(&mut conn, step_id)[0].created_at;
    assert_eq!(claimed[0].claimed_until, started + seconds(2));
}

#[test]
fn extend_by_zero_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim_one(&mut conn);
    let before = snapshot(&mut conn, claimed.workflow_step_id);

    let (argument, message) = invalid_argument(extend_step_claim(
        &mut conn,
        claimed.claim(),
        Duration::ZERO,
    ));
    assert_eq!(argument, "lease", "{message}");
    assert_eq!(snapshot(&mut conn, claimed.workflow_step_id), before);
}

#[test]
fn retry_after_of_zero_adds_no_delay_beyond_the_failure_backoff() {
    // A negative delay cannot be expressed with `Duration`; zero is the least.
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim_one(&mut conn);
    let failed = fail_step(
        &mut conn,
        claimed.claim(),
        &json!("x"),
        Some(Duration::ZERO),
    )
    .unwrap();
    let step_id = claimed.workflow_step_id;
    assert_eq!(
        step_row(&mut conn, step_id).backoff_request_seconds,
        Some(0)
    );
    assert_eq!(
        readiness(&mut conn, step_id).next_retry_at,
        Some(failed.created_at + seconds(2))
    );
}

#[test]
fn reports_for_an_unknown_step_are_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    support::task_with_steps(&mut conn, 1);
    let claimed = claim_one(&mut conn);
    let unknown = Claim {
        workflow_step_id: claimed.workflow_step_id + 1_000,
        claim_id: claimed.claim_id,
    };
    let expected = Refusal::UnknownStep {
        workflow_step_id: unknown.workflow_step_id,
    };

    assert_eq!(
        refusal(complete_step(&mut conn, unknown, &json!({}))),
        expected
    );
    assert_eq!(
        refusal(fail_step(&mut conn, unknown, &json!("x"), None)),
        expected
    );
    assert_eq!(
        refusal(extend_step_claim(&mut conn, unknown, LEASE)),
        expected
    );
    assert!(step_row(&mut conn, claimed.workflow_step_id).in_process);
}
