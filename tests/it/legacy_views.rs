//! The benchmark's legacy baseline (`bench/sql/legacy_views.sql`: the
//! views `bench_legacy_step_readiness` and `bench_legacy_task_execution_context`)
//! answers exactly like the functions it is compared with, so the benchmark
//! times two ways of computing the same thing.
//!
//! For random tasks (random DAGs, histories, attempts, retry limits, backoff,
//! times on either side of the backoff gates, session time zones far from
//! UTC, generic and custom plans; `tests/histories`),
//! `SELECT * FROM <view> WHERE task_id = $1` must give the same rows as
//! `get_step_readiness_status($1)` and `get_task_execution_context($1)`, both
//! as the crate's row types and as PostgreSQL's text of each row (which also
//! sees numeric scale). Fixed cases cover rules a random case could miss.

use chrono::{Duration, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use proptest::test_runner::TestCaseError;
use tasker_diesel::schema::tasker_workflow_steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{
    ExecutionStatus, HealthStatus, RecommendedAction, StepReadinessStatus, StepState,
    TaskExecutionContext, TaskState,
};

use crate::histories;
use crate::support;

use histories::{build, compare, failure, run_property, Case, Labels, Session, TIME_ZONES};

const LEGACY_VIEWS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/bench/sql/legacy_views.sql"
));

const CASES: u32 = 96;
const MAX_STEPS: usize = 10;

const VIEW_READINESS: &str =
    "SELECT * FROM bench_legacy_step_readiness WHERE task_id = $1 ORDER BY workflow_step_id";
const FUNCTION_READINESS: &str = "SELECT * FROM get_step_readiness_status($1)";
const VIEW_CONTEXT: &str = "SELECT * FROM bench_legacy_task_execution_context WHERE task_id = $1";
const FUNCTION_CONTEXT: &str = "SELECT * FROM get_task_execution_context($1)";
const VIEW_READINESS_TEXT: &str = "SELECT r::text AS row FROM bench_legacy_step_readiness AS r \
     WHERE r.task_id = $1 ORDER BY r.workflow_step_id";
const FUNCTION_READINESS_TEXT: &str =
    "SELECT r::text AS row FROM get_step_readiness_status($1) AS r";
const VIEW_CONTEXT_TEXT: &str =
    "SELECT r::text AS row FROM bench_legacy_task_execution_context AS r WHERE r.task_id = $1";
const FUNCTION_CONTEXT_TEXT: &str =
    "SELECT r::text AS row FROM get_task_execution_context($1) AS r";

// Reading and comparing rows ----------------------------------------------------

#[derive(QueryableByName, Debug, PartialEq)]
struct RowText {
    #[diesel(sql_type = Text)]
    row: String,
}

fn rows<T: QueryableByName<diesel::pg::Pg> + 'static>(
    conn: &mut PgConnection,
    query: &str,
    task_id: i64,
) -> Vec<T> {
    diesel::sql_query(query)
        .bind::<BigInt, _>(task_id)
        .load(conn)
        .unwrap_or_else(|error| panic!("{query} with $1 = {task_id}: {error}"))
}

/// What the views and the functions say about one task.
struct Answers {
    view_readiness: Vec<StepReadinessStatus>,
    function_readiness: Vec<StepReadinessStatus>,
    view_context: Vec<TaskExecutionContext>,
    function_context: Vec<TaskExecutionContext>,
    view_text: Vec<RowText>,
    function_text: Vec<RowText>,
}

fn answers(conn: &mut PgConnection, task_id: i64) -> Answers {
    let mut view_text = rows(conn, VIEW_READINESS_TEXT, task_id);
    view_text.extend(rows::<RowText>(conn, VIEW_CONTEXT_TEXT, task_id));
    let mut function_text = rows(conn, FUNCTION_READINESS_TEXT, task_id);
    function_text.extend(rows::<RowText>(conn, FUNCTION_CONTEXT_TEXT, task_id));
    Answers {
        view_readiness: rows(conn, VIEW_READINESS, task_id),
        function_readiness: rows(conn, FUNCTION_READINESS, task_id),
        view_context: rows(conn, VIEW_CONTEXT, task_id),
        function_context: rows(conn, FUNCTION_CONTEXT, task_id),
        view_text,
        function_text,
    }
}

/// `None` when the views answer like the functions for `task_id`, else a
/// description of the differences.
fn disagreement(
    conn: &mut PgConnection,
    task_id: i64,
    labels: &Labels,
    now: NaiveDateTime,
) -> Option<String> {
    let answers = answers(conn, task_id);
    let sides = ["view", "function"];
    let mut problems: Vec<String> = [
        compare(
            "readiness",
            sides,
            labels,
            now,
            &answers.view_readiness,
            &answers.function_readiness,
        )
        .err(),
        compare(
            "execution context",
            sides,
            labels,
            now,
            &answers.view_context,
            &answers.function_context,
        )
        .err(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() && answers.view_text != answers.function_text {
        problems.push(format!(
            "rows as text differ:\n  view     {:?}\n  function {:?}\n",
            answers.view_text, answers.function_text
        ));
    }
    let task = labels
        .tasks
        .get(&task_id)
        .cloned()
        .unwrap_or_else(|| format!("#{task_id}"));
    (!problems.is_empty()).then(|| format!("task {task}:\n{}", problems.join("")))
}

// Random cases --------------------------------------------------------------------

/// The views and the functions agree on every task of the case and on a task
/// that does not exist.
fn check_case(session: &Session, case: &Case) -> Result<(), TestCaseError> {
    session.rolled_back(|conn| {
        let built = build(conn, case);
        let unknown = built.task_ids.iter().max().copied().unwrap_or(0) + 1000;
        let problems: Vec<String> = built
            .task_ids
            .iter()
            .chain([&unknown])
            .filter_map(|&task_id| disagreement(conn, task_id, &built.labels, built.world.now))
            .collect();
        failure(&built, &problems)
    })
}

#[test]
fn legacy_views_answer_like_the_functions_for_random_tasks() {
    let session = Session::on(legacy_database());
    run_property(CASES, histories::case(MAX_STEPS), |case| {
        check_case(&session, &case)
    });
}

// Fixed cases -------------------------------------------------------------------------

/// A test database in which the legacy views exist.
fn legacy_database() -> TestDatabase {
    let db = TestDatabase::new();
    db.connection()
        .batch_execute(LEGACY_VIEWS)
        .expect("bench/sql/legacy_views.sql");
    db
}

/// Asserts that the views answer like the functions for `task_id`, and
/// returns the functions' rows.
fn agreed(
    conn: &mut PgConnection,
    task_id: i64,
) -> (Vec<StepReadinessStatus>, TaskExecutionContext) {
    let now = support::utc_now(conn);
    if let Some(problem) = disagreement(conn, task_id, &Labels::default(), now) {
        panic!("the legacy views disagree with the functions (now = {now}):\n{problem}");
    }
    let mut contexts: Vec<TaskExecutionContext> = rows(conn, FUNCTION_CONTEXT, task_id);
    assert_eq!(contexts.len(), 1, "one context row for task #{task_id}");
    (rows(conn, FUNCTION_READINESS, task_id), contexts.remove(0))
}

/// The views' columns are the row types' columns, the file can be run again,
/// and the views use none of the crate's functions.
#[test]
fn views_have_the_row_types_columns_and_stand_alone() {
    let db = legacy_database();
    let mut conn = db.connection();
    conn.batch_execute(LEGACY_VIEWS)
        .expect("legacy_views.sql a second time");

    #[derive(QueryableByName, Debug, PartialEq)]
    struct Column {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        type_name: String,
    }
    let columns = |conn: &mut PgConnection, relation: &str| -> Vec<Column> {
        diesel::sql_query(
            "SELECT attname::text AS name, format_type(atttypid, atttypmod) AS type_name
             FROM pg_attribute
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
        )
        .bind::<Text, _>(relation)
        .load(conn)
        .expect("columns")
    };
    for (view, row_type) in [
        ("bench_legacy_step_readiness", "tasker_step_readiness_row"),
        (
            "bench_legacy_task_execution_context",
            "tasker_task_execution_context_row",
        ),
    ] {
        let expected = columns(&mut conn, row_type);
        assert!(!expected.is_empty(), "{row_type} has columns");
        assert_eq!(columns(&mut conn, view), expected, "columns of {view}");
    }

    #[derive(QueryableByName)]
    struct Function {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let used: Vec<String> = diesel::sql_query(
        "SELECT DISTINCT proc.proname::text AS name
         FROM pg_rewrite AS rule
         JOIN pg_depend AS dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = rule.oid
         JOIN pg_proc AS proc ON dep.refclassid = 'pg_proc'::regclass AND proc.oid = dep.refobjid
         WHERE rule.ev_class IN ('bench_legacy_step_readiness'::regclass,
                                 'bench_legacy_task_execution_context'::regclass)
           AND proc.pronamespace <> 'pg_catalog'::regnamespace",
    )
    .load::<Function>(&mut conn)
    .expect("functions the views use")
    .into_iter()
    .map(|function| function.name)
    .collect();
    assert!(used.is_empty(), "the views call {used:?}");
}

/// A task without steps, steps without transitions, a task without
/// transitions, and unknown tasks.
#[test]
fn empty_tasks_and_steps_without_history() {
    let db = legacy_database();
    let mut conn = support::test_connection(&db);
    let conn = &mut conn;

    let empty = support::task_with_steps(conn, 0);
    let (readiness, context) = agreed(conn, empty.task.task_id);
    assert!(readiness.is_empty());
    assert_eq!(context.total_steps, 0);
    assert_eq!(context.status, TaskState::Pending);
    assert_eq!(
        context.execution_status,
        ExecutionStatus::WaitingForDependencies
    );
    assert_eq!(context.health_status, HealthStatus::Healthy);

    // A chain 0 -> 1 -> 2 with no transition at all, and default columns.
    let chain = support::task_with_steps(conn, 3);
    let step = chain.step_ids();
    support::add_edge(conn, step[0], step[1]).expect("edge");
    support::add_edge(conn, step[1], step[2]).expect("edge");
    let (readiness, context) = agreed(conn, chain.task.task_id);
    let ready: Vec<bool> = readiness
        .iter()
        .map(|row| row.ready_for_execution)
        .collect();
    assert_eq!(ready, [true, false, false]);
    assert!(readiness
        .iter()
        .all(|row| row.current_state == StepState::Pending));
    assert_eq!(context.pending_steps, 3);
    assert_eq!(context.execution_status, ExecutionStatus::HasReadySteps);

    // The same with NULL attempts and retry limits (read as 0 and 3).
    support::update_step(
        conn,
        step[0],
        (
            tasker_workflow_steps::attempts.eq(None::<i32>),
            tasker_workflow_steps::retry_limit.eq(None::<i32>),
        ),
    );
    let (readiness, _) = agreed(conn, chain.task.task_id);
    assert_eq!((readiness[0].attempts, readiness[0].retry_limit), (0, 3));
    assert!(readiness[0].ready_for_execution);

    for unknown in [0, -1, chain.task.task_id + 1000] {
        let answers = answers(conn, unknown);
        assert!(answers.view_readiness.is_empty() && answers.view_context.is_empty());
        assert!(answers.function_readiness.is_empty() && answers.function_context.is_empty());
    }
}

/// Parents in `resolved_manually` count as completed; cancelled, in-error and
/// pending parents do not; a parent's history before its current state does
/// not count.
#[test]
fn parents_count_when_complete_or_resolved_manually() {
    let db = legacy_database();
    let mut conn = support::test_connection(&db);
    let conn = &mut conn;
    let diamond = support::diamond(conn);
    let step = diamond.step_ids();
    support::step_history(
        conn,
        step[0],
        &[
            StepState::InProgress,
            StepState::Error,
            StepState::ResolvedManually,
        ],
    );
    let (readiness, _) = agreed(conn, diamond.task.task_id);
    assert!(readiness[1].dependencies_satisfied && readiness[1].ready_for_execution);
    assert!(readiness[2].dependencies_satisfied);

    support::step_history(conn, step[1], &[StepState::InProgress, StepState::Complete]);
    support::step_history(conn, step[2], &[StepState::Cancelled]);
    let (readiness, context) = agreed(conn, diamond.task.task_id);
    assert_eq!(
        (readiness[3].total_parents, readiness[3].completed_parents),
        (2, 1)
    );
    assert!(!readiness[3].dependencies_satisfied);
    assert_eq!(
        context.execution_status,
        ExecutionStatus::WaitingForDependencies
    );

    // A parent that completed once but is in error now no longer counts.
    let other = support::diamond(conn);
    let step = other.step_ids();
    support::step_history(conn, step[0], &[StepState::InProgress, StepState::Complete]);
    support::step_history(conn, step[1], &[StepState::InProgress, StepState::Error]);
    support::step_history(conn, step[2], &[StepState::InProgress, StepState::Complete]);
    let (readiness, _) = agreed(conn, other.task.task_id);
    assert_eq!(readiness[3].completed_parents, 1);
}

/// The failure backoff is `min(2^attempts, 30)` seconds after the current
/// error transition (exponent 1 for NULL attempts); an earlier error that is
/// no longer current sets no gate; the later of the two gates wins.
#[test]
fn failure_backoff_is_capped_and_follows_the_current_transition() {
    let db = legacy_database();
    let mut conn = support::test_connection(&db);
    let conn = &mut conn;
    let now = support::utc_now(conn);
    let fixture = support::task_with_steps(conn, 6);
    let step = fixture.step_ids();
    let attempts_column = tasker_workflow_steps::dsl::attempts;
    let limit_column = tasker_workflow_steps::dsl::retry_limit;
    // (attempts, seconds since the failure, ready?)
    let cases = [
        (Some(6), 31, true),  // 2^6 = 64, capped at 30: open since 1 s
        (Some(5), 29, false), // 2^5 = 32, capped at 30: opens in 1 s
        (None, 3, true),      // NULL: 2^1 = 2
        (Some(0), 1, true),   // 2^0 = 1, opens exactly now
        (Some(2), 3, false),  // 2^2 = 4
    ];
    for (index, &(attempts, ago, _)) in cases.iter().enumerate() {
        support::update_step(
            conn,
            step[index],
            (attempts_column.eq(attempts), limit_column.eq(Some(20))),
        );
        support::step_history(
            conn,
            step[index],
            &[StepState::InProgress, StepState::Error],
        );
        support::current_transition_at(conn, step[index], now - Duration::seconds(ago));
    }
    // An old error, then back to pending: no failure gate.
    support::step_history(
        conn,
        step[5],
        &[StepState::InProgress, StepState::Error, StepState::Pending],
    );
    let (readiness, _) = agreed(conn, fixture.task.task_id);
    for (index, &(attempts, ago, ready)) in cases.iter().enumerate() {
        let row = &readiness[index];
        assert_eq!(
            row.ready_for_execution, ready,
            "attempts {attempts:?}, failed {ago} s ago: {row:?}"
        );
        assert_eq!(row.last_failure_at, Some(now - Duration::seconds(ago)));
    }
    assert_eq!(readiness[0].next_retry_at, Some(now - Duration::seconds(1)));
    assert_eq!(readiness[5].last_failure_at, None);
    assert_eq!(readiness[5].next_retry_at, None);
    assert!(readiness[5].ready_for_execution);

    // The requested backoff is later than the failure gate: it wins.
    support::update_step(
        conn,
        step[0],
        (
            tasker_workflow_steps::backoff_request_seconds.eq(Some(20)),
            tasker_workflow_steps::last_attempted_at.eq(Some(now - Duration::seconds(10))),
        ),
    );
    let (readiness, _) = agreed(conn, fixture.task.task_id);
    assert_eq!(
        readiness[0].next_retry_at,
        Some(now + Duration::seconds(10))
    );
    assert!(!readiness[0].ready_for_execution);
}

/// The gates compare with the current time in UTC whatever the session's
/// time zone, far ahead of UTC or far behind it.
#[test]
fn gates_use_utc_whatever_the_session_time_zone() {
    let db = legacy_database();
    let mut conn = support::test_connection(&db);
    let conn = &mut conn;
    let now = support::utc_now(conn);
    let fixture = support::task_with_steps(conn, 4);
    let step = fixture.step_ids();
    let attempted = |seconds: i64| {
        (
            tasker_workflow_steps::backoff_request_seconds.eq(Some(60)),
            tasker_workflow_steps::last_attempted_at.eq(Some(now + Duration::seconds(seconds))),
        )
    };
    support::update_step(conn, step[0], attempted(-61)); // open since 1 s
    support::update_step(conn, step[1], attempted(-59)); // opens in 1 s
    for index in [2, 3] {
        support::step_history(
            conn,
            step[index],
            &[StepState::InProgress, StepState::Error],
        );
    }
    support::current_transition_at(conn, step[2], now - Duration::seconds(5)); // attempts 0: 1 s gate, open
    support::current_transition_at(conn, step[3], now); // 1 s gate: shut
    for zone in TIME_ZONES {
        diesel::sql_query(format!("SET LOCAL TimeZone = '{zone}'"))
            .execute(conn)
            .expect("time zone");
        let (readiness, _) = agreed(conn, fixture.task.task_id);
        let ready: Vec<bool> = readiness
            .iter()
            .map(|row| row.ready_for_execution)
            .collect();
        assert_eq!(ready, [true, false, true, false], "TimeZone {zone}");
    }
}

/// Retry eligibility: attempts below the limit, and a non-retryable step
/// gets its first attempt only.
#[test]
fn retry_eligibility() {
    let db = legacy_database();
    let mut conn = support::test_connection(&db);
    let conn = &mut conn;
    let fixture = support::task_with_steps(conn, 5);
    let step = fixture.step_ids();
    use tasker_workflow_steps::dsl::{attempts, retry_limit, retryable};
    // (retryable, attempts, retry_limit, eligible)
    let cases = [
        (false, Some(0), Some(3), true),
        (false, Some(1), Some(3), false),
        (true, Some(2), None, true),
        (true, Some(3), None, false),
        (true, None, Some(0), false),
    ];
    for (index, &(may_retry, tried, limit, _)) in cases.iter().enumerate() {
        support::update_step(
            conn,
            step[index],
            (
                retryable.eq(may_retry),
                attempts.eq(tried),
                retry_limit.eq(limit),
            ),
        );
    }
    let (readiness, _) = agreed(conn, fixture.task.task_id);
    let eligible: Vec<bool> = readiness.iter().map(|row| row.retry_eligible).collect();
    let expected: Vec<bool> = cases.iter().map(|case| case.3).collect();
    assert_eq!(eligible, expected);
}

/// Execution status precedence, health and completion percentage.
#[test]
fn execution_status_health_and_percentage() {
    let db = legacy_database();
    let mut conn = support::test_connection(&db);
    let conn = &mut conn;
    use tasker_workflow_steps::dsl::{attempts, retry_limit};

    // One step ready, one failed for good: ready wins, health recovering.
    let mixed = support::task_with_steps(conn, 3);
    let step = mixed.step_ids();
    support::update_step(
        conn,
        step[0],
        (attempts.eq(Some(3)), retry_limit.eq(Some(3))),
    );
    support::step_history(conn, step[0], &[StepState::InProgress, StepState::Error]);
    support::step_history(conn, step[1], &[StepState::InProgress, StepState::Complete]);
    let (_, context) = agreed(conn, mixed.task.task_id);
    assert_eq!(
        (context.execution_status, context.health_status),
        (ExecutionStatus::HasReadySteps, HealthStatus::Recovering)
    );
    assert_eq!(context.completion_percentage.to_string(), "33.33");

    // The ready step starts: processing, and now blocked.
    support::step_history(conn, step[2], &[StepState::InProgress]);
    let (_, context) = agreed(conn, mixed.task.task_id);
    assert_eq!(
        (
            context.execution_status,
            context.recommended_action,
            context.health_status
        ),
        (
            ExecutionStatus::Processing,
            RecommendedAction::WaitForCompletion,
            HealthStatus::Blocked
        )
    );

    // It completes: blocked by the failure.
    support::transition_step(conn, step[2], StepState::Complete);
    let (_, context) = agreed(conn, mixed.task.task_id);
    assert_eq!(
        (context.execution_status, context.recommended_action),
        (
            ExecutionStatus::BlockedByFailures,
            RecommendedAction::HandleFailures
        )
    );
    assert_eq!(context.completion_percentage.to_string(), "66.67");

    // Resolved by hand: everything finished.
    support::transition_step(conn, step[0], StepState::ResolvedManually);
    support::transition_task(conn, mixed.task.task_id, TaskState::InProgress);
    let (_, context) = agreed(conn, mixed.task.task_id);
    assert_eq!(
        (
            context.execution_status,
            context.health_status,
            context.status
        ),
        (
            ExecutionStatus::AllComplete,
            HealthStatus::Healthy,
            TaskState::InProgress
        )
    );

    // Complete and cancelled steps only: all complete, not 100 %.
    let cancelled = support::task_with_steps(conn, 2);
    let step = cancelled.step_ids();
    support::step_history(conn, step[0], &[StepState::InProgress, StepState::Complete]);
    support::transition_step(conn, step[1], StepState::Cancelled);
    let (_, context) = agreed(conn, cancelled.task.task_id);
    assert_eq!(context.execution_status, ExecutionStatus::AllComplete);
    assert_eq!(context.completion_percentage.to_string(), "50.00");

    // An error still inside its backoff, nothing else: recovering, waiting.
    let waiting = support::task_with_steps(conn, 1);
    let step = waiting.step_ids();
    support::update_step(conn, step[0], attempts.eq(Some(1)));
    support::step_history(conn, step[0], &[StepState::InProgress, StepState::Error]);
    let (_, context) = agreed(conn, waiting.task.task_id);
    assert_eq!(
        (context.execution_status, context.health_status),
        (
            ExecutionStatus::WaitingForDependencies,
            HealthStatus::Recovering
        )
    );
}
