//! One test per rule of the task execution context and
//! of the other functions (section 5).

use chrono::Duration;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use tasker_diesel::readiness::SystemHealthCounts;
use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{
    BigDecimal, DependencyLevel, ExecutionStatus, HealthStatus, RecommendedAction, StepState,
    TaskExecutionContext, TaskState,
};

use crate::support;
use support::*;

use StepState::*;

fn context(conn: &mut PgConnection, task_id: i64) -> TaskExecutionContext {
    TaskExecutionContext::find(conn, task_id)
        .unwrap()
        .expect("a context row")
}

/// A task of `states.len()` unconnected steps, each moved into its state
/// (`None`: no transition) long enough ago for any backoff to be over.
fn task_in_states(conn: &mut PgConnection, states: &[Option<StepState>]) -> Fixture {
    let fixture = task_with_steps(conn, states.len());
    let long_ago = utc_now(conn) - Duration::hours(1);
    for (step, state) in fixture.steps.iter().zip(states) {
        if let Some(state) = state {
            transition_step(conn, step.workflow_step_id, *state);
            current_transition_at(conn, step.workflow_step_id, long_ago);
        }
    }
    fixture
}

/// Uses up the step's attempts, so an `error` state is permanent.
fn exhaust(conn: &mut PgConnection, step_id: i64) {
    update_step(
        conn,
        step_id,
        (steps::attempts.eq(3), steps::retry_limit.eq(3)),
    );
}

fn percent(text: &str) -> BigDecimal {
    text.parse().unwrap()
}

#[test]
fn unknown_task_has_no_context() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    assert_eq!(TaskExecutionContext::find(&mut conn, 12345).unwrap(), None);
    assert_eq!(
        TaskExecutionContext::find_many(&mut conn, &[12345, -1]).unwrap(),
        []
    );
}

#[test]
fn status_is_the_task_current_state() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let task = task_with_steps(&mut conn, 1).task;
    assert_eq!(context(&mut conn, task.task_id).status, TaskState::Pending);
    transition_task(&mut conn, task.task_id, TaskState::InProgress);
    transition_task(&mut conn, task.task_id, TaskState::Error);
    let row = context(&mut conn, task.task_id);
    assert_eq!(row.status, TaskState::Error);
    assert_eq!(
        (row.task_id, row.named_task_id),
        (task.task_id, task.named_task_id)
    );
}

#[test]
fn state_buckets_count_steps_and_sum_to_total() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let states = [
        None,
        Some(Pending),
        Some(InProgress),
        Some(InProgress),
        Some(Complete),
        Some(ResolvedManually),
        Some(Error),
        Some(Cancelled),
    ];
    let task = task_in_states(&mut conn, &states).task.task_id;

    let row = context(&mut conn, task);
    assert_eq!(row.total_steps, 8);
    assert_eq!(row.pending_steps, 2);
    assert_eq!(row.in_progress_steps, 2);
    assert_eq!(row.completed_steps, 2);
    assert_eq!(row.failed_steps, 1);
    // Not a column of the original design's row: the total less the others.
    assert_eq!(row.cancelled_steps(), 1);
    // Both pending steps and the retryable failed one.
    assert_eq!(row.ready_steps, 3);
}

#[test]
fn ready_steps_make_has_ready_steps_even_while_others_run() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(&mut conn, &[None, Some(InProgress), Some(Error)]);
    exhaust(&mut conn, fixture.steps[2].workflow_step_id);

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(row.ready_steps, 1);
    assert_eq!(row.execution_status, ExecutionStatus::HasReadySteps);
    assert_eq!(row.recommended_action, RecommendedAction::ExecuteReadySteps);
    // A step failed for good, but other work is ready.
    assert_eq!(row.health_status, HealthStatus::Recovering);
}

#[test]
fn running_steps_without_ready_ones_are_processing() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(&mut conn, &[Some(InProgress), Some(Error), Some(Complete)]);
    exhaust(&mut conn, fixture.steps[1].workflow_step_id);

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(row.execution_status, ExecutionStatus::Processing);
    assert_eq!(row.recommended_action, RecommendedAction::WaitForCompletion);
    assert_eq!(row.health_status, HealthStatus::Blocked);
}

#[test]
fn permanent_failure_with_nothing_ready_or_running_blocks_the_task() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(&mut conn, &[Some(Complete), Some(Error), None]);
    let (failed, child) = (
        fixture.steps[1].workflow_step_id,
        fixture.steps[2].workflow_step_id,
    );
    add_edge(&mut conn, failed, child).unwrap();
    exhaust(&mut conn, failed);

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(row.ready_steps, 0);
    assert_eq!(row.execution_status, ExecutionStatus::BlockedByFailures);
    assert_eq!(row.recommended_action, RecommendedAction::HandleFailures);
    assert_eq!(row.health_status, HealthStatus::Blocked);
}

#[test]
fn non_retryable_failure_is_permanent() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(&mut conn, &[Some(Error)]);
    update_step(
        &mut conn,
        fixture.steps[0].workflow_step_id,
        (steps::retryable.eq(false), steps::attempts.eq(1)),
    );

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(row.execution_status, ExecutionStatus::BlockedByFailures);
    assert_eq!(row.health_status, HealthStatus::Blocked);
}

#[test]
fn finished_steps_make_all_complete() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(
        &mut conn,
        &[Some(Complete), Some(ResolvedManually), Some(Cancelled)],
    );

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(row.execution_status, ExecutionStatus::AllComplete);
    assert_eq!(row.recommended_action, RecommendedAction::FinalizeTask);
    assert_eq!(row.health_status, HealthStatus::Healthy);
    assert_eq!(row.completion_percentage, percent("66.67"));
}

#[test]
fn retryable_failure_in_backoff_waits() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(&mut conn, &[Some(Complete), Some(Error)]);
    let failed = fixture.steps[1].workflow_step_id;
    let now = utc_now(&mut conn);
    current_transition_at(&mut conn, failed, now);

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(row.ready_steps, 0);
    assert_eq!(
        row.execution_status,
        ExecutionStatus::WaitingForDependencies
    );
    assert_eq!(
        row.recommended_action,
        RecommendedAction::WaitForDependencies
    );
    assert_eq!(row.health_status, HealthStatus::Recovering);
}

#[test]
fn children_of_unfinished_parents_wait_for_dependencies() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_with_steps(&mut conn, 2);
    let (parent, child) = (
        fixture.steps[0].workflow_step_id,
        fixture.steps[1].workflow_step_id,
    );
    add_edge(&mut conn, parent, child).unwrap();
    transition_step(&mut conn, parent, Cancelled);

    let row = context(&mut conn, fixture.task.task_id);
    assert_eq!(
        row.execution_status,
        ExecutionStatus::WaitingForDependencies
    );
    assert_eq!(row.health_status, HealthStatus::Healthy);
}

#[test]
fn task_without_steps_waits_and_is_zero_percent_complete() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let task = task_with_steps(&mut conn, 0).task.task_id;

    let row = context(&mut conn, task);
    assert_eq!(row.total_steps, 0);
    assert_eq!(
        row.execution_status,
        ExecutionStatus::WaitingForDependencies
    );
    assert_eq!(
        row.recommended_action,
        RecommendedAction::WaitForDependencies
    );
    assert_eq!(row.health_status, HealthStatus::Healthy);
    assert_eq!(row.completion_percentage, percent("0"));
}

#[test]
fn completion_percentage_rounds_to_two_decimals() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let cases: [(&[Option<StepState>], &str); 5] = [
        (&[Some(Complete), None, None], "33.33"),
        (&[Some(Complete), Some(ResolvedManually), None], "66.67"),
        (
            &[Some(Complete), None, None, None, None, None, None, None],
            "12.50",
        ),
        (&[Some(Complete), Some(Complete)], "100"),
        (&[Some(Cancelled), Some(Error)], "0"),
    ];
    for (states, expected) in cases {
        let task = task_in_states(&mut conn, states).task.task_id;
        let row = context(&mut conn, task);
        assert_eq!(row.completion_percentage, percent(expected), "{states:?}");
    }
    // Halves round away from zero: 1 of 800 is 0.125 %.
    let task = task_with_steps(&mut conn, 800);
    transition_step(&mut conn, task.steps[0].workflow_step_id, Complete);
    let row = context(&mut conn, task.task.task_id);
    assert_eq!(row.completion_percentage, percent("0.13"));
    assert_eq!(row.completion_percentage.to_string(), "0.13");
}

#[test]
fn find_many_returns_one_row_per_distinct_task_in_id_order() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let first = task_in_states(&mut conn, &[Some(Complete)]).task.task_id;
    let second = task_in_states(&mut conn, &[None]).task.task_id;

    let rows = TaskExecutionContext::find_many(&mut conn, &[second, -3, first, second]).unwrap();
    let ids: Vec<i64> = rows.iter().map(|row| row.task_id).collect();
    assert_eq!(ids, [first, second]);
    assert_eq!(rows[0], context(&mut conn, first));
    assert_eq!(rows[1], context(&mut conn, second));
    assert_eq!(TaskExecutionContext::find_many(&mut conn, &[]).unwrap(), []);
}

#[test]
fn an_unknown_enum_label_is_an_error_not_a_default() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = task_in_states(&mut conn, &[Some(Error)]).task.task_id;
    // A newer schema could add a label this crate does not know.
    conn.batch_execute("ALTER TYPE tasker_health_status ADD VALUE 'degraded'")
        .unwrap();
    conn.batch_execute(
        "ALTER TABLE tasker_tasks ADD COLUMN health tasker_health_status DEFAULT 'degraded'",
    )
    .unwrap();

    #[derive(QueryableByName, Debug)]
    #[allow(dead_code)]
    struct Health {
        #[diesel(sql_type = tasker_diesel::enums::sql_types::TaskerHealthStatus)]
        health: HealthStatus,
    }
    let loaded = diesel::sql_query("SELECT health FROM tasker_tasks WHERE task_id = $1")
        .bind::<diesel::sql_types::BigInt, _>(task)
        .get_result::<Health>(&mut conn);
    let error = loaded.expect_err("an unknown label must not load");
    assert!(error.to_string().contains("degraded"), "{error}");
}

#[test]
fn dependency_levels_are_longest_distances_from_a_root() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    // 0 → 1 → 2 → 3 and a shortcut 0 → 3; 4 alone.
    let fixture = task_with_steps(&mut conn, 5);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    for (from, to) in [(0, 1), (1, 2), (2, 3), (0, 3)] {
        add_edge(&mut conn, id(from), id(to)).unwrap();
    }

    let levels = DependencyLevel::load(&mut conn, fixture.task.task_id).unwrap();
    let level = |step_id: i64, dependency_level: i32| DependencyLevel {
        workflow_step_id: step_id,
        dependency_level,
    };
    assert_eq!(
        levels,
        [
            level(id(0), 0),
            level(id(4), 0),
            level(id(1), 1),
            level(id(2), 2),
            level(id(3), 3)
        ]
    );
    assert_eq!(DependencyLevel::load(&mut conn, -1).unwrap(), []);
}

#[test]
fn dependency_levels_of_a_diamond() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let diamond = diamond(&mut conn);
    let levels: Vec<i32> = DependencyLevel::load(&mut conn, diamond.task.task_id)
        .unwrap()
        .iter()
        .map(|level| level.dependency_level)
        .collect();
    assert_eq!(levels, [0, 1, 1, 2]);
}

#[test]
fn system_health_counts_tasks_and_steps_by_state() {
    let db = TestDatabase::new();
    let mut conn = test_connection(&db);
    let fixture = task_in_states(
        &mut conn,
        &[
            None,
            Some(Pending),
            Some(InProgress),
            Some(Complete),
            Some(Error),
            Some(Error),
            Some(Cancelled),
            Some(ResolvedManually),
        ],
    );
    exhaust(&mut conn, fixture.steps[5].workflow_step_id);
    transition_task(&mut conn, fixture.task.task_id, TaskState::InProgress);
    let other = task_with_steps(&mut conn, 0).task.task_id;
    transition_task(&mut conn, other, TaskState::InProgress);
    transition_task(&mut conn, other, TaskState::Complete);
    task_with_steps(&mut conn, 0);

    let counts = SystemHealthCounts::load(&mut conn).unwrap();
    assert_eq!(
        (
            counts.total_tasks,
            counts.pending_tasks,
            counts.in_progress_tasks,
            counts.complete_tasks,
            counts.error_tasks,
            counts.cancelled_tasks,
            counts.resolved_manually_tasks
        ),
        (3, 1, 1, 1, 0, 0, 0)
    );
    assert_eq!(
        (
            counts.total_steps,
            counts.pending_steps,
            counts.in_progress_steps,
            counts.complete_steps,
            counts.error_steps,
            counts.cancelled_steps,
            counts.resolved_manually_steps
        ),
        (8, 2, 1, 1, 2, 1, 1)
    );
    assert_eq!(
        (counts.retryable_error_steps, counts.exhausted_retry_steps),
        (1, 1)
    );
    assert!(counts.active_connections >= 1);
    assert!(counts.max_connections >= counts.active_connections as i32);
}
