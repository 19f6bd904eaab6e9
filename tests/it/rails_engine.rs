//! Each test runs twice: on a database the crate's migrations created and on
//! one the Rails engine created and the crate adopted (see the macro at the end).
//!
//! What the Rails Tasker engine reads from a database this crate created:
//! the `*_v01` functions of its health and analytics endpoints, the view
//! `tasker_step_dag_relationships`, and the `error_message` of failures.

use std::time::Duration;

use bigdecimal::BigDecimal;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Jsonb, Nullable, Numeric, Text, Timestamptz};
use serde_json::{json, Value};
use tasker_diesel::readiness::SystemHealthCounts;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    claim_ready_steps, complete_step, create_task, fail_step, ClaimRequest, ClaimedStep,
    CreatedTask, StepTemplate, TaskRequest, TaskTemplate,
};

const LEASE: Duration = Duration::from_secs(60);

/// a → b, a → c, b → d, c → d, a → d: d's fewest edges from the root is 1.
fn diamond() -> TaskTemplate {
    TaskTemplate::new("rails", "diamond", "1.0.0")
        .step(StepTemplate::new("a"))
        .step(StepTemplate::new("b").depends_on(["a"]))
        .step(StepTemplate::new("c").depends_on(["a"]))
        .step(StepTemplate::new("d").depends_on(["b", "c", "a"]))
}

fn create(conn: &mut PgConnection, n: i64) -> CreatedTask {
    create_task(
        conn,
        &TaskRequest::new(&diamond())
            .context(json!({ "n": n }))
            .initiator("rails-test"),
    )
    .unwrap()
}

fn claim(conn: &mut PgConnection, task: i64) -> Vec<ClaimedStep> {
    claim_ready_steps(conn, &ClaimRequest::for_tasks(&[task], 10, LEASE)).unwrap()
}

#[derive(QueryableByName, Debug)]
struct Dag {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = Jsonb)]
    parent_step_ids: Value,
    #[diesel(sql_type = Jsonb)]
    child_step_ids: Value,
    #[diesel(sql_type = BigInt)]
    parent_count: i64,
    #[diesel(sql_type = BigInt)]
    child_count: i64,
    #[diesel(sql_type = Bool)]
    is_root_step: bool,
    #[diesel(sql_type = Bool)]
    is_leaf_step: bool,
    #[diesel(sql_type = Nullable<Integer>)]
    min_depth_from_root: Option<i32>,
}

fn the_dag_view_gives_parents_children_roots_leaves_and_depths(db: TestDatabase) {
    let mut conn = db.connection();
    let task = create(&mut conn, 1);
    create(&mut conn, 2);
    let id = |name: &str| task.step(name).unwrap().workflow_step_id;
    let rows: Vec<Dag> = diesel::sql_query(
        "SELECT * FROM tasker_step_dag_relationships WHERE task_id = $1 ORDER BY workflow_step_id",
    )
    .bind::<BigInt, _>(task.task.task_id)
    .load(&mut conn)
    .unwrap();
    assert_eq!(rows.len(), 4);
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.workflow_step_id == id(name))
            .unwrap()
    };
    let (a, b, c, d) = (id("a"), id("b"), id("c"), id("d"));
    assert_eq!(row("a").parent_step_ids, json!([]));
    assert_eq!(row("a").child_step_ids, json!([b, c, d]));
    assert!(row("a").is_root_step && !row("a").is_leaf_step);
    assert_eq!(row("d").parent_step_ids, json!([a, b, c]));
    assert_eq!((row("d").parent_count, row("d").child_count), (3, 0));
    assert!(row("d").is_leaf_step && !row("d").is_root_step);
    assert_eq!(row("b").child_count, 1);
    let depths: Vec<Option<i32>> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| row(name).min_depth_from_root)
        .collect();
    assert_eq!(depths, [Some(0), Some(1), Some(1), Some(1)]);
}

#[derive(QueryableByName, Debug, PartialEq)]
struct HealthV01 {
    #[diesel(sql_type = BigInt)]
    total_tasks: i64,
    #[diesel(sql_type = BigInt)]
    pending_tasks: i64,
    #[diesel(sql_type = BigInt)]
    in_progress_tasks: i64,
    #[diesel(sql_type = BigInt)]
    total_steps: i64,
    #[diesel(sql_type = BigInt)]
    complete_steps: i64,
    #[diesel(sql_type = BigInt)]
    error_steps: i64,
    #[diesel(sql_type = BigInt)]
    retryable_error_steps: i64,
    #[diesel(sql_type = BigInt)]
    in_backoff_steps: i64,
    #[diesel(sql_type = BigInt)]
    max_connections: i64,
}

fn health_counts_v01_agree_with_the_crates_and_count_steps_in_backoff(db: TestDatabase) {
    let mut conn = db.connection();
    let first = create(&mut conn, 1);
    create(&mut conn, 2);
    let root = claim(&mut conn, first.task.task_id).remove(0);
    complete_step(&mut conn, root.claim(), &json!({})).unwrap();
    let mut next = claim(&mut conn, first.task.task_id);
    let failing = next.remove(0);
    fail_step(
        &mut conn,
        failing.claim(),
        &json!("timeout"),
        Some(Duration::from_secs(3600)),
    )
    .unwrap();

    let v01: HealthV01 = diesel::sql_query("SELECT * FROM get_system_health_counts_v01()")
        .get_result(&mut conn)
        .unwrap();
    let crate_counts = SystemHealthCounts::load(&mut conn).unwrap();
    assert_eq!(
        v01,
        HealthV01 {
            total_tasks: crate_counts.total_tasks,
            pending_tasks: crate_counts.pending_tasks,
            in_progress_tasks: crate_counts.in_progress_tasks,
            total_steps: 8,
            complete_steps: 1,
            error_steps: 1,
            retryable_error_steps: 1,
            in_backoff_steps: 1,
            max_connections: i64::from(crate_counts.max_connections),
        }
    );
    assert_eq!(
        (v01.total_tasks, v01.pending_tasks, v01.in_progress_tasks),
        (2, 1, 1)
    );
}

#[derive(QueryableByName, Debug)]
struct Analytics {
    #[diesel(sql_type = BigInt)]
    active_tasks_count: i64,
    #[diesel(sql_type = BigInt)]
    total_namespaces_count: i64,
    #[diesel(sql_type = BigInt)]
    unique_task_types_count: i64,
    #[diesel(sql_type = Numeric)]
    system_health_score: BigDecimal,
    #[diesel(sql_type = BigInt)]
    task_throughput: i64,
    #[diesel(sql_type = BigInt)]
    completion_count: i64,
    #[diesel(sql_type = BigInt)]
    error_count: i64,
    #[diesel(sql_type = Numeric)]
    completion_rate: BigDecimal,
    #[diesel(sql_type = BigInt)]
    step_throughput: i64,
    #[diesel(sql_type = Timestamptz)]
    analysis_period_start: chrono::DateTime<chrono::Utc>,
}

#[derive(QueryableByName, Debug)]
struct SlowStep {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = Text)]
    step_name: String,
    #[diesel(sql_type = Text)]
    namespace_name: String,
    #[diesel(sql_type = Numeric)]
    duration_seconds: BigDecimal,
    #[diesel(sql_type = Timestamptz)]
    created_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Timestamptz)]
    completed_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Text)]
    step_status: String,
}

#[derive(QueryableByName, Debug)]
struct SlowTask {
    #[diesel(sql_type = BigInt)]
    task_id: i64,
    #[diesel(sql_type = BigInt)]
    step_count: i64,
    #[diesel(sql_type = BigInt)]
    completed_steps: i64,
    #[diesel(sql_type = BigInt)]
    error_steps: i64,
    #[diesel(sql_type = Nullable<Text>)]
    initiator: Option<String>,
}

/// Backdates a step's and its task's creation, so that its run takes time.
fn created_seconds_ago(conn: &mut PgConnection, task: &CreatedTask, seconds: i64) {
    conn.batch_execute(&format!(
        "UPDATE tasker_workflow_steps SET created_at = created_at - interval '{seconds} seconds' \
         WHERE task_id = {id}; \
         UPDATE tasker_tasks SET created_at = created_at - interval '{seconds} seconds' \
         WHERE task_id = {id}",
        id = task.task.task_id
    ))
    .unwrap();
}

fn analytics_and_slowest_steps_and_tasks_v01_run_on_the_crates_schema(db: TestDatabase) {
    let mut conn = db.connection();
    let slow = create(&mut conn, 1);
    let fast = create(&mut conn, 2);
    create(&mut conn, 3);
    created_seconds_ago(&mut conn, &slow, 30);
    created_seconds_ago(&mut conn, &fast, 2);
    for task in [&slow, &fast] {
        let root = claim(&mut conn, task.task.task_id).remove(0);
        complete_step(&mut conn, root.claim(), &json!({})).unwrap();
    }

    let analytics: Analytics = diesel::sql_query("SELECT * FROM get_analytics_metrics_v01()")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(analytics.active_tasks_count, 3);
    assert_eq!(
        (
            analytics.total_namespaces_count,
            analytics.unique_task_types_count
        ),
        (1, 1)
    );
    assert_eq!(
        (
            analytics.task_throughput,
            analytics.completion_count,
            analytics.error_count
        ),
        (3, 0, 0)
    );
    assert_eq!(analytics.step_throughput, 12);
    assert_eq!(analytics.system_health_score, BigDecimal::from(1));
    assert_eq!(analytics.completion_rate, BigDecimal::from(0));
    let hour_ago = chrono::Utc::now() - chrono::Duration::minutes(61);
    assert!(analytics.analysis_period_start > hour_ago);

    let steps: Vec<SlowStep> = diesel::sql_query("SELECT * FROM get_slowest_steps_v01()")
        .load(&mut conn)
        .unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(
        steps[0].workflow_step_id,
        slow.step("a").unwrap().workflow_step_id
    );
    let twenty_nine = BigDecimal::from(29);
    assert!(steps[0].duration_seconds > twenty_nine, "{steps:?}");
    assert!(steps[0].duration_seconds > steps[1].duration_seconds);
    assert!(steps[0].completed_at > steps[0].created_at);
    assert_eq!(
        (
            steps[0].step_name.as_str(),
            steps[0].namespace_name.as_str(),
            steps[0].step_status.as_str()
        ),
        ("a", "rails", "complete")
    );
    let filtered: Vec<SlowStep> = diesel::sql_query(
        "SELECT * FROM get_slowest_steps_v01(NULL, 1, 'rails', 'diamond', '1.0.0')",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(filtered.len(), 1);
    let none: Vec<SlowStep> =
        diesel::sql_query("SELECT * FROM get_slowest_steps_v01(NULL, 10, 'other')")
            .load(&mut conn)
            .unwrap();
    assert!(none.is_empty());

    let tasks: Vec<SlowTask> = diesel::sql_query("SELECT * FROM get_slowest_tasks_v01()")
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        [slow.task.task_id, fast.task.task_id],
        "longest first; the task with nothing done is left out"
    );
    assert_eq!(
        (
            tasks[0].step_count,
            tasks[0].completed_steps,
            tasks[0].error_steps
        ),
        (4, 1, 0)
    );
    assert_eq!(tasks[0].initiator.as_deref(), Some("rails-test"));
}

fn failures_record_the_error_message_the_rails_engine_reads(db: TestDatabase) {
    let mut conn = db.connection();
    let cases = [
        (json!("connection reset"), "connection reset"),
        (
            json!({"message": "card declined", "code": 7}),
            "card declined",
        ),
        (json!({"code": 7}), "{\"code\": 7}"),
        (json!(42), "42"),
    ];
    for (n, (error, message)) in cases.into_iter().enumerate() {
        let task = create(&mut conn, n as i64);
        let root = claim(&mut conn, task.task.task_id).remove(0);
        let failed = fail_step(&mut conn, root.claim(), &error, None).unwrap();
        let metadata = failed.metadata.unwrap();
        assert_eq!(metadata["error"], error);
        assert_eq!(metadata["error_message"], json!(message), "{metadata}");
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Column {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    sql_type: String,
}

fn columns(conn: &mut PgConnection, row_type: &str) -> Vec<(String, String)> {
    diesel::sql_query(
        "SELECT attname::text AS name, format_type(atttypid, atttypmod) AS sql_type \
         FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped \
         ORDER BY attnum",
    )
    .bind::<Text, _>(row_type)
    .load::<Column>(conn)
    .unwrap()
    .into_iter()
    .map(|column| (column.name, column.sql_type))
    .collect()
}

fn contexts_have_the_original_designs_thirteen_columns_with_text_states(db: TestDatabase) {
    let mut conn = db.connection();
    let expected = [
        ("task_id", "bigint"),
        ("named_task_id", "integer"),
        ("status", "text"),
        ("total_steps", "bigint"),
        ("pending_steps", "bigint"),
        ("in_progress_steps", "bigint"),
        ("completed_steps", "bigint"),
        ("failed_steps", "bigint"),
        ("ready_steps", "bigint"),
        ("execution_status", "text"),
        ("recommended_action", "text"),
        ("completion_percentage", "numeric"),
        ("health_status", "text"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(name, sql_type)| (name.to_string(), sql_type.to_string()))
        .collect();
    assert_eq!(
        columns(&mut conn, "tasker_task_execution_context_row"),
        expected
    );
    let readiness = columns(&mut conn, "tasker_step_readiness_row");
    assert!(readiness.contains(&("current_state".to_owned(), "text".to_owned())));

    // Rust still maps them to strict enums, and derives the cancelled count.
    let task = create(&mut conn, 1);
    tasker_diesel::workflow::cancel_task(&mut conn, task.task.task_id, None).unwrap();
    let context = tasker_diesel::TaskExecutionContext::find(&mut conn, task.task.task_id)
        .unwrap()
        .unwrap();
    assert_eq!(context.status, tasker_diesel::TaskState::Cancelled);
    assert_eq!(context.cancelled_steps(), 4);
    let ready = tasker_diesel::StepReadinessStatus::for_task(task.task.task_id)
        .in_state(tasker_diesel::StepState::Cancelled)
        .load(&mut conn)
        .unwrap();
    assert_eq!(ready.len(), 4);
}

#[derive(QueryableByName, Debug)]
struct TextState {
    #[diesel(sql_type = Text)]
    state: tasker_diesel::TaskState,
}

fn a_text_label_rust_does_not_know_is_an_error_not_a_default(db: TestDatabase) {
    let mut conn = db.connection();
    let known: TextState = diesel::sql_query("SELECT 'in_progress'::text AS state")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(known.state, tasker_diesel::TaskState::InProgress);
    let unknown =
        diesel::sql_query("SELECT 'skipped'::text AS state").get_result::<TextState>(&mut conn);
    assert!(
        matches!(unknown, Err(diesel::result::Error::DeserializationError(_))),
        "{unknown:?}"
    );
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::dsl::sql::<BigInt>(sql).get_result(conn).unwrap()
}

/// Transitions written with binds typed `text` and `varchar`, as sqlx, JDBC's
/// `setString` or asyncpg send them (the `pg` gem sends them untyped):
/// PREPARE fixes the parameter types as such a driver would. A comparison
/// with such a bind casts it; the engine's Task.active scope, which names
/// 'skipped', runs.
fn text_typed_binds_write_the_state_columns_and_skipped_is_a_comparable_label(db: TestDatabase) {
    let mut conn = db.connection();
    let task = create(&mut conn, 1);
    let a = task.step("a").unwrap().workflow_step_id;
    conn.batch_execute(
        "PREPARE start_step(bigint, text, varchar) AS
             INSERT INTO tasker_workflow_step_transitions
                 (workflow_step_id, to_state, from_state, sort_key, most_recent, metadata)
             VALUES ($1, $2, $3, 10, true, '{}');
         PREPARE move_task(bigint, varchar) AS
             INSERT INTO tasker_task_transitions
                 (task_id, to_state, from_state, sort_key, most_recent, metadata)
             VALUES ($1, $2, NULL, 10, true, '{}');
         PREPARE in_state(text) AS
             SELECT count(*) FROM tasker_workflow_step_transitions
             WHERE to_state = $1::tasker_step_state AND most_recent;",
    )
    .unwrap();
    conn.batch_execute(&format!("EXECUTE start_step({a}, 'in_progress', NULL)"))
        .unwrap();
    conn.batch_execute(&format!(
        "EXECUTE move_task({}, 'in_progress')",
        task.task.task_id
    ))
    .unwrap();
    assert_eq!(count(&mut conn, "EXECUTE in_state('in_progress')"), 1);
    let context = tasker_diesel::TaskExecutionContext::find(&mut conn, task.task.task_id)
        .unwrap()
        .unwrap();
    assert_eq!(context.status, tasker_diesel::TaskState::InProgress);

    // The engine's Task.active scope names 'skipped', which no row holds.
    let active = count(
        &mut conn,
        &format!(
            "SELECT count(*) FROM tasker_tasks WHERE task_id = {} AND EXISTS (
                 SELECT 1 FROM tasker_workflow_steps ws
                 JOIN tasker_workflow_step_transitions wst
                   ON wst.workflow_step_id = ws.workflow_step_id
                 WHERE ws.task_id = tasker_tasks.task_id AND wst.most_recent = true
                   AND wst.to_state NOT IN ('complete', 'error', 'skipped', 'resolved_manually'))",
            task.task.task_id
        ),
    );
    assert_eq!(active, 1);

    // A label the type lacks is refused, and 'skipped' is never stored.
    let b = task.step("b").unwrap().workflow_step_id;
    let unknown = conn.batch_execute(&format!("EXECUTE start_step({b}, 'paused', NULL)"));
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("invalid input value for enum"),);
    let skipped = conn.batch_execute(&format!("EXECUTE start_step({b}, 'skipped', NULL)"));
    assert!(skipped
        .unwrap_err()
        .to_string()
        .contains("tasker_workflow_step_transitions_not_skipped_check"),);

    // The maintained readiness followed the text-typed write.
    let step = tasker_diesel::StepReadinessStatus::for_steps(&[a])
        .load(&mut conn)
        .unwrap()
        .remove(0);
    assert_eq!(step.current_state, tasker_diesel::StepState::InProgress);
    assert!(
        tasker_diesel::readiness::ReadinessDrift::load(&mut conn, None)
            .unwrap()
            .is_empty()
    );
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The crate's own functions are all `tasker_*`; the others are those the
/// Rails engine calls by its names.
fn every_function_is_prefixed_or_one_the_rails_engine_calls(db: TestDatabase) {
    let mut conn = db.connection();
    let rails_names = [
        "calculate_dependency_levels",
        "get_analytics_metrics_v01",
        "get_slowest_steps_v01",
        "get_slowest_tasks_v01",
        "get_step_readiness_status",
        "get_step_readiness_status_batch",
        "get_system_health_counts_v01",
        "get_task_execution_context",
        "get_task_execution_contexts_batch",
    ];
    let names: Vec<String> = diesel::sql_query(
        "SELECT DISTINCT proname::text AS name FROM pg_proc \
         WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
    )
    .load::<Name>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|row| row.name)
    .collect();
    let stray: Vec<&String> = names
        .iter()
        .filter(|name| !name.starts_with("tasker_") && !rails_names.contains(&name.as_str()))
        .collect();
    assert!(stray.is_empty(), "unprefixed functions: {stray:?}");
    for name in rails_names {
        assert!(names.iter().any(|n| n == name), "{name} is missing");
    }
}

/// Whoever writes a transition, its metadata is a JSON object, which the
/// Rails engine reads as a Hash.
fn transition_metadata_that_is_not_an_object_breaks_an_integrity_rule(db: TestDatabase) {
    let mut conn = db.connection();
    let task = create(&mut conn, 1);
    let step = task.step("a").unwrap().workflow_step_id;
    for (sql, rule) in [
        (
            format!(
                "INSERT INTO tasker_workflow_step_transitions
                     (workflow_step_id, to_state, sort_key, most_recent, metadata)
                 VALUES ({step}, 'in_progress', 1, true, '\"a string\"')"
            ),
            tasker_diesel::IntegrityRule::StepTransitionMetadataNotObject,
        ),
        (
            format!(
                "INSERT INTO tasker_task_transitions
                     (task_id, to_state, sort_key, most_recent, metadata)
                 VALUES ({}, 'in_progress', 1, true, '[1, 2]')",
                task.task.task_id
            ),
            tasker_diesel::IntegrityRule::TaskTransitionMetadataNotObject,
        ),
    ] {
        let error = diesel::sql_query(sql)
            .execute(&mut conn)
            .map_err(tasker_diesel::Error::from)
            .unwrap_err();
        assert!(
            matches!(&error, tasker_diesel::Error::Integrity { rule: broken, .. } if *broken == rule),
            "{error:?}"
        );
    }
}

/// Runs `sql` as the simple protocol does (values untyped, as the `pg` gem
/// sends them).
fn rails(conn: &mut PgConnection, sql: &str) {
    conn.batch_execute(sql)
        .unwrap_or_else(|error| panic!("{error}: {sql}"));
}

fn id_of(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::dsl::sql::<BigInt>(sql).get_result(conn).unwrap()
}

/// A Statesman transition of a step, as the engine writes it: the current one
/// loses most_recent, the new one takes the next sort_key (steps of 10), in
/// one transaction, with the step's flags as the engine sets them.
fn statesman_step(conn: &mut PgConnection, step: i64, to: &str, flags: &str) {
    rails(
        conn,
        &format!(
            "BEGIN;
             UPDATE tasker_workflow_step_transitions SET most_recent = false, updated_at = now()
              WHERE workflow_step_id = {step} AND most_recent = true;
             INSERT INTO tasker_workflow_step_transitions
                 (to_state, metadata, sort_key, most_recent, workflow_step_id, created_at, updated_at)
             VALUES ('{to}', '{{}}',
                     (SELECT coalesce(max(sort_key), 0) + 10 FROM tasker_workflow_step_transitions
                       WHERE workflow_step_id = {step}),
                     true, {step}, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');
             {flags}
             COMMIT;"
        ),
    );
}

fn statesman_task(conn: &mut PgConnection, task: i64, to: &str) {
    rails(
        conn,
        &format!(
            "BEGIN;
             UPDATE tasker_task_transitions SET most_recent = false WHERE task_id = {task} AND most_recent;
             INSERT INTO tasker_task_transitions (to_state, metadata, sort_key, most_recent, task_id)
             VALUES ('{to}', '{{}}',
                     (SELECT coalesce(max(sort_key), 0) + 10 FROM tasker_task_transitions
                       WHERE task_id = {task}),
                     true, {task});
             COMMIT;"
        ),
    );
}

/// After each phase of the engine's writes: nothing has drifted, and the
/// maintained readiness is the readiness recomputed from the history.
fn assert_exact(conn: &mut PgConnection, task: i64, phase: &str) {
    assert_eq!(
        tasker_diesel::readiness::ReadinessDrift::load(conn, None).unwrap(),
        [],
        "{phase}: drift"
    );
    let (kept, recomputed) = conn
        .transaction::<_, tasker_diesel::Error, _>(|conn| {
            let kept = tasker_diesel::StepReadinessStatus::for_task(task).load(conn)?;
            let ids: Vec<i64> = kept.iter().map(|row| row.workflow_step_id).collect();
            let recomputed = tasker_diesel::StepReadinessStatus::from_history(&ids).load(conn)?;
            Ok((kept, recomputed))
        })
        .unwrap();
    assert_eq!(kept, recomputed, "{phase}: maintained readiness");
}

fn ready_steps(conn: &mut PgConnection, task: i64) -> Vec<i64> {
    tasker_diesel::StepReadinessStatus::for_task(task)
        .ready_for_execution()
        .load(conn)
        .unwrap()
        .iter()
        .map(|row| row.workflow_step_id)
        .collect()
}

/// The engine's own write patterns on a database the crate created: catalog
/// find-or-create, a task with steps and edges, Statesman transitions,
/// a retry, a manual resolution and a cancel.
fn the_engines_writes_keep_the_maintained_readiness_exact(db: TestDatabase) {
    let mut conn = db.connection();
    // Catalog: find, else create (the engine's find_or_create_by).
    let namespace = id_of(
        &mut conn,
        "WITH found AS (SELECT task_namespace_id FROM tasker_task_namespaces WHERE name = 'ops'),
              made AS (INSERT INTO tasker_task_namespaces (name, created_at, updated_at)
                       SELECT 'ops', now(), now() WHERE NOT EXISTS (SELECT FROM found)
                       RETURNING task_namespace_id)
         SELECT task_namespace_id::bigint FROM found UNION ALL SELECT task_namespace_id FROM made",
    );
    let system = id_of(
        &mut conn,
        "INSERT INTO tasker_dependent_systems (name) VALUES ('api') RETURNING dependent_system_id::bigint",
    );
    let named_task = id_of(
        &mut conn,
        &format!(
            "INSERT INTO tasker_named_tasks (task_namespace_id, name, version)
             VALUES ({namespace}, 'nightly', '0.1.0') RETURNING named_task_id::bigint"
        ),
    );
    let mut named_steps = Vec::new();
    for name in ["fetch", "transform", "load"] {
        let step = id_of(
            &mut conn,
            &format!(
                "INSERT INTO tasker_named_steps (dependent_system_id, name)
                 VALUES ({system}, '{name}') RETURNING named_step_id::bigint"
            ),
        );
        rails(
            &mut conn,
            &format!(
                "INSERT INTO tasker_named_tasks_named_steps (named_task_id, named_step_id)
                 VALUES ({named_task}, {step})"
            ),
        );
        named_steps.push(step);
    }

    // Two tasks, each fetch and transform before load.
    let mut tasks = Vec::new();
    for n in 0..2 {
        let task = id_of(
            &mut conn,
            &format!(
                "INSERT INTO tasker_tasks (named_task_id, requested_at, initiator, context,
                                           identity_hash, complete, created_at, updated_at)
                 VALUES ({named_task}, now(), 'rails', '{{\"run\": {n}}}', 'rails-{n}', false,
                         now(), now())
                 RETURNING task_id"
            ),
        );
        let mut steps = Vec::new();
        for &named_step in &named_steps {
            steps.push(id_of(
                &mut conn,
                &format!(
                    "INSERT INTO tasker_workflow_steps
                         (task_id, named_step_id, retryable, retry_limit, in_process, processed,
                          attempts, inputs, created_at, updated_at)
                     VALUES ({task}, {named_step}, true, 3, false, false, 0, '{{}}', now(), now())
                     RETURNING workflow_step_id"
                ),
            ));
        }
        for parent in &steps[..2] {
            rails(
                &mut conn,
                &format!(
                    "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
                     VALUES ({parent}, {}, 'provides')",
                    steps[2]
                ),
            );
        }
        assert_exact(&mut conn, task, "created");
        tasks.push((task, steps));
    }
    let (task, steps) = tasks[0].clone();
    let [fetch, transform, load] = steps[..] else {
        unreachable!()
    };
    assert_eq!(ready_steps(&mut conn, task), [fetch, transform]);

    // Runs: fetch completes, transform fails once and is retried.
    statesman_task(&mut conn, task, "in_progress");
    let start = |step: i64| {
        format!(
            "UPDATE tasker_workflow_steps SET in_process = true, attempts = attempts + 1,
                    last_attempted_at = now() AT TIME ZONE 'UTC' WHERE workflow_step_id = {step};"
        )
    };
    let finish = |step: i64| {
        format!(
            "UPDATE tasker_workflow_steps SET in_process = false, processed = true,
                    processed_at = now() AT TIME ZONE 'UTC', results = '{{\"ok\": true}}'
              WHERE workflow_step_id = {step};"
        )
    };
    statesman_step(&mut conn, fetch, "in_progress", &start(fetch));
    statesman_step(&mut conn, fetch, "complete", &finish(fetch));
    statesman_step(&mut conn, transform, "in_progress", &start(transform));
    statesman_step(
        &mut conn,
        transform,
        "error",
        &format!(
            "UPDATE tasker_workflow_steps SET in_process = false WHERE workflow_step_id = {transform};"
        ),
    );
    assert_exact(&mut conn, task, "after a failure");
    assert!(
        ready_steps(&mut conn, task).is_empty(),
        "transform is in its backoff"
    );
    // The retry, once the backoff has passed.
    rails(
        &mut conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET created_at = created_at - interval '1 hour'
              WHERE workflow_step_id = {transform} AND most_recent;
             UPDATE tasker_workflow_steps SET last_attempted_at = last_attempted_at - interval '1 hour'
              WHERE workflow_step_id = {transform};"
        ),
    );
    assert_exact(&mut conn, task, "backoff passed");
    assert_eq!(ready_steps(&mut conn, task), [transform]);
    statesman_step(&mut conn, transform, "pending", "");
    statesman_step(&mut conn, transform, "in_progress", &start(transform));
    statesman_step(&mut conn, transform, "complete", &finish(transform));
    assert_exact(&mut conn, task, "retried");
    assert_eq!(ready_steps(&mut conn, task), [load]);

    // An operator resolves load by hand after it fails for good.
    statesman_step(&mut conn, load, "in_progress", &start(load));
    statesman_step(
        &mut conn,
        load,
        "error",
        &format!(
            "UPDATE tasker_workflow_steps SET in_process = false, retryable = false
              WHERE workflow_step_id = {load};"
        ),
    );
    assert_exact(&mut conn, task, "failed for good");
    statesman_step(&mut conn, load, "resolved_manually", &finish(load));
    assert_exact(&mut conn, task, "resolved");
    assert_eq!(
        tasker_diesel::workflow::finalize_task(&mut conn, task, None).unwrap(),
        tasker_diesel::TaskState::Complete
    );

    // The other task is cancelled, its steps with it.
    let (other, other_steps) = tasks[1].clone();
    statesman_task(&mut conn, other, "cancelled");
    for step in other_steps {
        statesman_step(&mut conn, step, "cancelled", "");
    }
    assert_exact(&mut conn, other, "cancelled");
    let context = tasker_diesel::TaskExecutionContext::find(&mut conn, other)
        .unwrap()
        .unwrap();
    assert_eq!(context.cancelled_steps(), 3);
    assert_eq!(context.next_action(), None);

    // And what the engine reads runs on it.
    let health: HealthV01 = diesel::sql_query("SELECT * FROM get_system_health_counts_v01()")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!((health.total_tasks, health.total_steps), (2, 6));
}

/// Each replay runs on a database the crate's migrations created and on one the
/// Rails engine created and the crate adopted (`tasker_diesel::adoption`).
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod crate_created {
            $(#[test]
            fn $name() {
                super::$name(tasker_diesel::testing::TestDatabase::new())
            })*
        }
        mod adopted_from_rails {
            $(#[test]
            fn $name() {
                super::$name(tasker_diesel::testing::TestDatabase::adopted_from_rails())
            })*
        }
    };
}

on_both_databases!(
    the_dag_view_gives_parents_children_roots_leaves_and_depths,
    health_counts_v01_agree_with_the_crates_and_count_steps_in_backoff,
    analytics_and_slowest_steps_and_tasks_v01_run_on_the_crates_schema,
    failures_record_the_error_message_the_rails_engine_reads,
    contexts_have_the_original_designs_thirteen_columns_with_text_states,
    a_text_label_rust_does_not_know_is_an_error_not_a_default,
    text_typed_binds_write_the_state_columns_and_skipped_is_a_comparable_label,
    every_function_is_prefixed_or_one_the_rails_engine_calls,
    transition_metadata_that_is_not_an_object_breaks_an_integrity_rule,
    the_engines_writes_keep_the_maintained_readiness_exact
);
