//! One test per rule of step readiness.
//!
//! Each test runs in one transaction (`begin_test_transaction`), so `now()`
//! is the same instant for the rows it writes and the functions it calls.

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable};
use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{StepReadinessStatus, StepState};

use crate::support;
use support::*;

use StepState::*;

/// The readiness row of one step.
fn readiness(conn: &mut PgConnection, step_id: i64) -> StepReadinessStatus {
    let mut rows = StepReadinessStatus::for_steps(&[step_id])
        .load(conn)
        .unwrap();
    assert_eq!(rows.len(), 1, "one row for step {step_id}");
    rows.remove(0)
}

fn step_ids(rows: &[StepReadinessStatus]) -> Vec<i64> {
    rows.iter().map(|row| row.workflow_step_id).collect()
}

fn seconds(n: i64) -> Duration {
    Duration::seconds(n)
}

/// Sets the step's attempts, as a worker that ran it would.
fn set_attempts(conn: &mut PgConnection, step_id: i64, attempts: Option<i32>) {
    update_step(conn, step_id, steps::attempts.eq(attempts));
}

/// Puts the step in `error` after `attempts` attempts, failed at `failed_at`.
fn failed_at(conn: &mut PgConnection, step_id: i64, attempts: Option<i32>, at: NaiveDateTime) {
    set_attempts(conn, step_id, attempts);
    step_history(conn, step_id, &[InProgress, Error]);
    current_transition_at(conn, step_id, at);
}

#[test]
fn root_step_is_ready() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_with_steps(&mut conn, 1);
    let step = &fixture.steps[0];

    let row = readiness(&mut conn, step.workflow_step_id);
    assert_eq!(row.task_id, fixture.task.task_id);
    assert_eq!(row.named_step_id, fixture.named_steps[0].named_step_id);
    assert_eq!(row.name, fixture.named_steps[0].name);
    assert_eq!(row.current_state, Pending);
    assert_eq!((row.total_parents, row.completed_parents), (0, 0));
    assert!(row.dependencies_satisfied);
    assert!(row.retry_eligible);
    assert_eq!(row.next_retry_at, None);
    assert!(row.ready_for_execution);
}

#[test]
fn current_state_is_the_most_recent_transition() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;

    assert_eq!(readiness(&mut conn, id).current_state, Pending);
    for (state, expected) in [(InProgress, InProgress), (Error, Error), (Pending, Pending)] {
        transition_step(&mut conn, id, state);
        assert_eq!(readiness(&mut conn, id).current_state, expected);
    }
}

#[test]
fn child_waits_for_one_incomplete_parent() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let diamond = diamond(&mut conn);
    let id = |index: usize| diamond.steps[index].workflow_step_id;
    step_history(&mut conn, id(0), &[InProgress, Complete]);
    step_history(&mut conn, id(1), &[InProgress, Complete]);

    let child = readiness(&mut conn, id(3));
    assert_eq!((child.total_parents, child.completed_parents), (2, 1));
    assert!(!child.dependencies_satisfied);
    assert!(!child.ready_for_execution);

    step_history(&mut conn, id(2), &[InProgress, Complete]);
    let child = readiness(&mut conn, id(3));
    assert_eq!((child.total_parents, child.completed_parents), (2, 2));
    assert!(child.dependencies_satisfied);
    assert!(child.ready_for_execution);
}

#[test]
fn resolved_manually_parent_satisfies_its_child() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_with_steps(&mut conn, 2);
    let (parent, child) = (
        fixture.steps[0].workflow_step_id,
        fixture.steps[1].workflow_step_id,
    );
    add_edge(&mut conn, parent, child).unwrap();
    step_history(&mut conn, parent, &[Error, ResolvedManually]);

    let row = readiness(&mut conn, child);
    assert_eq!(row.completed_parents, 1);
    assert!(row.dependencies_satisfied);
    assert!(row.ready_for_execution);
}

#[test]
fn parent_in_any_other_state_blocks_its_child() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    for history in [
        &[][..],
        &[InProgress],
        &[Error],
        &[Cancelled],
        &[InProgress, Error, Pending],
    ] {
        let fixture = task_with_steps(&mut conn, 2);
        let (parent, child) = (
            fixture.steps[0].workflow_step_id,
            fixture.steps[1].workflow_step_id,
        );
        add_edge(&mut conn, parent, child).unwrap();
        step_history(&mut conn, parent, history);

        let row = readiness(&mut conn, child);
        assert_eq!(row.completed_parents, 0, "parent history {history:?}");
        assert!(!row.dependencies_satisfied, "parent history {history:?}");
        assert!(!row.ready_for_execution, "parent history {history:?}");
    }
}

#[test]
fn asking_for_a_child_alone_still_sees_its_parents() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let diamond = diamond(&mut conn);
    let id = |index: usize| diamond.steps[index].workflow_step_id;
    step_history(&mut conn, id(0), &[InProgress, Complete]);
    step_history(&mut conn, id(1), &[InProgress, Complete]);

    for query in [
        StepReadinessStatus::for_steps(&[id(3)]),
        StepReadinessStatus::for_task_steps(diamond.task.task_id, &[id(3)]),
    ] {
        let rows = query.load(&mut conn).unwrap();
        assert_eq!(step_ids(&rows), [id(3)]);
        assert_eq!((rows[0].total_parents, rows[0].completed_parents), (2, 1));
    }
}

#[test]
fn processed_step_is_never_ready() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(&mut conn, id, steps::processed.eq(true));

    let row = readiness(&mut conn, id);
    assert!(row.dependencies_satisfied && row.retry_eligible);
    assert!(!row.ready_for_execution);
}

#[test]
fn in_process_step_is_never_ready() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(&mut conn, id, steps::in_process.eq(true));

    let row = readiness(&mut conn, id);
    assert!(row.dependencies_satisfied && row.retry_eligible);
    assert!(!row.ready_for_execution);
}

#[test]
fn only_pending_and_error_steps_can_be_ready() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let long_ago = utc_now(&mut conn) - Duration::hours(1);
    for state in StepState::ALL {
        let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
        transition_step(&mut conn, id, state);
        current_transition_at(&mut conn, id, long_ago);

        let row = readiness(&mut conn, id);
        assert_eq!(
            row.ready_for_execution,
            matches!(state, Pending | Error),
            "{state}"
        );
    }
}

#[test]
fn null_attempts_count_as_zero() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    set_attempts(&mut conn, id, None);
    update_step(&mut conn, id, steps::retryable.eq(false));

    let row = readiness(&mut conn, id);
    assert_eq!(row.attempts, 0);
    // Zero attempts: a non-retryable step still gets its first one.
    assert!(row.retry_eligible);
    assert!(row.ready_for_execution);
}

#[test]
fn null_retry_limit_counts_as_three() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(&mut conn, id, steps::retry_limit.eq(None::<i32>));

    for (attempts, eligible) in [(2, true), (3, false)] {
        set_attempts(&mut conn, id, Some(attempts));
        let row = readiness(&mut conn, id);
        assert_eq!(row.retry_limit, 3);
        assert_eq!(row.retry_eligible, eligible, "{attempts} attempts");
        assert_eq!(row.ready_for_execution, eligible, "{attempts} attempts");
    }
}

#[test]
fn retry_limit_zero_is_never_ready() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(&mut conn, id, steps::retry_limit.eq(0));

    let row = readiness(&mut conn, id);
    assert_eq!((row.attempts, row.retry_limit), (0, 0));
    assert!(!row.retry_eligible);
    assert!(!row.ready_for_execution);
}

#[test]
fn attempts_below_the_limit_are_retry_eligible() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(&mut conn, id, steps::retry_limit.eq(2));

    for (attempts, eligible) in [(0, true), (1, true), (2, false), (5, false)] {
        set_attempts(&mut conn, id, Some(attempts));
        assert_eq!(
            readiness(&mut conn, id).retry_eligible,
            eligible,
            "{attempts}"
        );
    }
}

#[test]
fn non_retryable_step_gets_first_attempt() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(
        &mut conn,
        id,
        (steps::retryable.eq(false), steps::attempts.eq(0)),
    );

    let row = readiness(&mut conn, id);
    assert!(row.retry_eligible);
    assert!(row.ready_for_execution);
}

#[test]
fn non_retryable_step_is_permanently_failed_after_one_failure() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    update_step(&mut conn, id, steps::retryable.eq(false));
    let long_ago = utc_now(&mut conn) - Duration::hours(1);
    failed_at(&mut conn, id, Some(1), long_ago);

    let row = readiness(&mut conn, id);
    assert_eq!(row.current_state, Error);
    assert!(!row.retry_eligible);
    assert!(!row.ready_for_execution);
    let failed = StepReadinessStatus::for_steps(&[id])
        .permanently_failed()
        .load(&mut conn)
        .unwrap();
    assert_eq!(step_ids(&failed), [id]);
}

#[test]
fn last_failure_at_is_the_time_of_the_current_error_transition() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    let failure = utc_now(&mut conn) - seconds(100);
    failed_at(&mut conn, id, Some(1), failure);
    assert_eq!(readiness(&mut conn, id).last_failure_at, Some(failure));

    // Retried: the step is pending again, and its old failure no longer gates it.
    transition_step(&mut conn, id, Pending);
    let row = readiness(&mut conn, id);
    assert_eq!(row.last_failure_at, None);
    assert_eq!(row.next_retry_at, None);
}

#[test]
fn requested_backoff_alone_gates_the_step() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    let now = utc_now(&mut conn);
    let attempted = now - seconds(5);

    for (backoff, ready) in [(10, false), (5, true), (3, true)] {
        update_step(
            &mut conn,
            id,
            (
                steps::last_attempted_at.eq(attempted),
                steps::backoff_request_seconds.eq(backoff),
            ),
        );
        let row = readiness(&mut conn, id);
        assert_eq!(row.last_failure_at, None);
        assert_eq!(row.next_retry_at, Some(attempted + seconds(backoff.into())));
        assert_eq!(row.ready_for_execution, ready, "backoff {backoff}s");
    }
}

#[test]
fn requested_backoff_needs_both_columns() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_with_steps(&mut conn, 2);
    let now = utc_now(&mut conn);
    let (only_backoff, only_attempt) = (
        fixture.steps[0].workflow_step_id,
        fixture.steps[1].workflow_step_id,
    );
    update_step(
        &mut conn,
        only_backoff,
        steps::backoff_request_seconds.eq(60),
    );
    update_step(&mut conn, only_attempt, steps::last_attempted_at.eq(now));

    for id in [only_backoff, only_attempt] {
        let row = readiness(&mut conn, id);
        assert_eq!(row.next_retry_at, None);
        assert!(row.ready_for_execution);
    }
}

#[test]
fn failure_backoff_doubles_with_attempts_up_to_thirty_seconds() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let failure = utc_now(&mut conn) - seconds(1);
    let expected = [
        (Some(0), 1),
        (None, 2),
        (Some(1), 2),
        (Some(2), 4),
        (Some(3), 8),
        (Some(4), 16),
        (Some(5), 30),
        (Some(6), 30),
        (Some(40), 30),
    ];
    for (attempts, delay) in expected {
        let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
        update_step(&mut conn, id, steps::retry_limit.eq(100));
        failed_at(&mut conn, id, attempts, failure);

        let row = readiness(&mut conn, id);
        assert_eq!(row.last_failure_at, Some(failure), "{attempts:?}");
        assert_eq!(
            row.next_retry_at,
            Some(failure + seconds(delay)),
            "{attempts:?}"
        );
        // One second has passed since the failure: only a one-second backoff is over.
        assert_eq!(row.ready_for_execution, delay == 1, "{attempts:?}");
    }
}

#[test]
fn step_is_ready_at_the_instant_its_backoff_ends() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
    let now = utc_now(&mut conn);
    failed_at(&mut conn, id, Some(2), now - seconds(4));

    let row = readiness(&mut conn, id);
    assert_eq!(row.next_retry_at, Some(now));
    assert!(row.ready_for_execution);

    current_transition_at(&mut conn, id, now - seconds(4) + Duration::microseconds(1));
    assert!(!readiness(&mut conn, id).ready_for_execution);
}

#[test]
fn both_gates_apply_and_next_retry_at_is_the_later() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let now = utc_now(&mut conn);
    let failure = now - seconds(10);
    // Failure backoff after 2 attempts: failure + 4 s = now - 6 s (passed).
    // Requested backoff: (now - 10 s) + 20 s = now + 10 s (not passed), then
    // (now - 10 s) + 1 s = now - 9 s (passed, and earlier than the failure gate).
    for (requested, next, ready) in [(20, now + seconds(10), false), (1, now - seconds(6), true)] {
        let id = task_with_steps(&mut conn, 1).steps[0].workflow_step_id;
        update_step(
            &mut conn,
            id,
            (
                steps::last_attempted_at.eq(failure),
                steps::backoff_request_seconds.eq(requested),
            ),
        );
        failed_at(&mut conn, id, Some(2), failure);

        let row = readiness(&mut conn, id);
        assert_eq!(row.next_retry_at, Some(next), "requested {requested}s");
        assert_eq!(row.ready_for_execution, ready, "requested {requested}s");
    }
}

#[test]
fn answers_do_not_depend_on_the_session_time_zone() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_with_steps(&mut conn, 3);
    let now = utc_now(&mut conn);
    let ids: Vec<i64> = fixture
        .steps
        .iter()
        .map(|step| step.workflow_step_id)
        .collect();
    // Failed 3 s ago with a 4 s backoff, and 10 s ago with a 4 s backoff.
    failed_at(&mut conn, ids[0], Some(2), now - seconds(3));
    failed_at(&mut conn, ids[1], Some(2), now - seconds(10));
    update_step(
        &mut conn,
        ids[2],
        (
            steps::last_attempted_at.eq(now),
            steps::backoff_request_seconds.eq(30),
        ),
    );

    let in_utc = StepReadinessStatus::for_steps(&ids)
        .load(&mut conn)
        .unwrap();
    diesel::sql_query("SET TIME ZONE 'America/New_York'")
        .execute(&mut conn)
        .unwrap();
    let in_new_york = StepReadinessStatus::for_steps(&ids)
        .load(&mut conn)
        .unwrap();
    diesel::sql_query("SET TIME ZONE 'Asia/Tokyo'")
        .execute(&mut conn)
        .unwrap();
    let in_tokyo = StepReadinessStatus::for_steps(&ids)
        .load(&mut conn)
        .unwrap();

    let ready: Vec<bool> = in_utc.iter().map(|row| row.ready_for_execution).collect();
    assert_eq!(ready, [false, true, false]);
    assert_eq!(in_new_york, in_utc);
    assert_eq!(in_tokyo, in_utc);
}

#[test]
fn unknown_duplicate_and_empty_ids() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_with_steps(&mut conn, 2);
    let (a, b) = (
        fixture.steps[0].workflow_step_id,
        fixture.steps[1].workflow_step_id,
    );
    let task = fixture.task.task_id;

    let load = |conn: &mut PgConnection, query: tasker_diesel::StepReadinessQuery| {
        step_ids(&query.load(conn).unwrap())
    };
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_steps(&[b, -1, a, b, a])),
        [a, b]
    );
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_steps(&[])),
        Vec::<i64>::new()
    );
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_steps(&[i64::MAX])),
        Vec::<i64>::new()
    );
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_tasks(&[task, task, -7])),
        [a, b]
    );
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_tasks(&[])),
        Vec::<i64>::new()
    );
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_task(-7)),
        Vec::<i64>::new()
    );
    assert_eq!(
        load(
            &mut conn,
            StepReadinessStatus::for_task_steps(task, &[b, b, -1])
        ),
        [b]
    );
    assert_eq!(
        load(&mut conn, StepReadinessStatus::for_task_steps(task, &[])),
        Vec::<i64>::new()
    );
}

#[test]
fn null_arguments_give_no_rows() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    task_with_steps(&mut conn, 2);

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let count = |conn: &mut PgConnection, sql: &str| -> i64 {
        diesel::sql_query(sql)
            .bind::<Nullable<Array<BigInt>>, _>(None::<Vec<i64>>)
            .get_result::<Count>(conn)
            .unwrap()
            .count
    };
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM get_step_readiness_status($1)"
        ),
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM get_step_readiness_status_batch($1)"
        ),
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM get_step_readiness_status(NULL::bigint, $1)"
        ),
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM get_task_execution_contexts_batch($1)"
        ),
        0
    );
    // The task form with a NULL step list means "every step of the task".
    let task = task_with_steps(&mut conn, 3).task.task_id;
    let every_step = diesel::sql_query("SELECT count(*) FROM get_step_readiness_status($1, NULL)")
        .bind::<BigInt, _>(task)
        .get_result::<Count>(&mut conn)
        .unwrap();
    assert_eq!(every_step.count, 3);
}

#[test]
fn rows_are_ordered_by_task_then_step() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let first = task_with_steps(&mut conn, 3);
    let second = task_with_steps(&mut conn, 3);
    let mut ids: Vec<i64> = first
        .steps
        .iter()
        .chain(&second.steps)
        .map(|step| step.workflow_step_id)
        .collect();
    let asked: Vec<i64> = ids.iter().rev().copied().collect();
    ids.sort_unstable();

    let rows = StepReadinessStatus::for_steps(&asked)
        .load(&mut conn)
        .unwrap();
    let keys: Vec<(i64, i64)> = rows
        .iter()
        .map(|row| (row.task_id, row.workflow_step_id))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    assert_eq!(step_ids(&rows).len(), ids.len());

    let batch = StepReadinessStatus::for_tasks(&[second.task.task_id, first.task.task_id])
        .load(&mut conn)
        .unwrap();
    assert_eq!(batch, rows);
}

#[test]
fn filters_run_in_sql_and_compose() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let diamond = diamond(&mut conn);
    let id = |index: usize| diamond.steps[index].workflow_step_id;
    let task = diamond.task.task_id;
    let now = utc_now(&mut conn);
    // 0 complete; 1 failed 1 s ago (backoff 2 s); 2 failed for good; 3 blocked.
    step_history(&mut conn, id(0), &[InProgress, Complete]);
    failed_at(&mut conn, id(1), Some(1), now - seconds(1));
    update_step(&mut conn, id(2), steps::retry_limit.eq(1));
    failed_at(&mut conn, id(2), Some(1), now - seconds(100));

    let query = || StepReadinessStatus::for_task(task);
    let load = |conn: &mut PgConnection, query: tasker_diesel::StepReadinessQuery| {
        step_ids(&query.load(conn).unwrap())
    };
    assert_eq!(
        load(&mut conn, query().ready_for_execution()),
        Vec::<i64>::new()
    );
    assert_eq!(load(&mut conn, query().blocked_by_dependencies()), [id(3)]);
    assert_eq!(load(&mut conn, query().waiting_for_backoff()), [id(1)]);
    // A gate on a step that also waits for its parents: blocked, not waiting
    // for backoff, and the same when the rows come from the history.
    update_step(
        &mut conn,
        id(3),
        (
            steps::backoff_request_seconds.eq(60),
            steps::last_attempted_at.eq(now),
        ),
    );
    assert!(StepReadinessStatus::for_steps(&[id(3)])
        .load(&mut conn)
        .unwrap()[0]
        .next_retry_at
        .is_some_and(|at| at > now));
    assert_eq!(load(&mut conn, query().waiting_for_backoff()), [id(1)]);
    assert_eq!(
        load(
            &mut conn,
            StepReadinessStatus::from_history(&[id(1), id(3)]).waiting_for_backoff()
        ),
        [id(1)]
    );
    assert_eq!(load(&mut conn, query().blocked_by_dependencies()), [id(3)]);
    // A gated step that is in process (a worker holds it) is not waiting either.
    update_step(&mut conn, id(1), steps::in_process.eq(true));
    assert_eq!(
        load(&mut conn, query().waiting_for_backoff()),
        Vec::<i64>::new()
    );
    update_step(&mut conn, id(1), steps::in_process.eq(false));
    assert_eq!(load(&mut conn, query().permanently_failed()), [id(2)]);
    assert_eq!(load(&mut conn, query().in_state(Error)), [id(1), id(2)]);
    assert_eq!(
        load(&mut conn, query().in_state(Error).permanently_failed()),
        [id(2)]
    );
    assert_eq!(
        load(
            &mut conn,
            query()
                .permanently_failed()
                .in_state(Error)
                .permanently_failed()
        ),
        [id(2)]
    );
    assert_eq!(
        load(
            &mut conn,
            query().in_state(Complete).blocked_by_dependencies()
        ),
        Vec::<i64>::new()
    );

    // The backoff over, step 1 is ready and no longer waiting.
    current_transition_at(&mut conn, id(1), now - seconds(2));
    assert_eq!(load(&mut conn, query().ready_for_execution()), [id(1)]);
    assert_eq!(
        load(&mut conn, query().waiting_for_backoff()),
        Vec::<i64>::new()
    );
}
