//! The readiness and context functions keep index-seek plans whatever plan
//! PostgreSQL caches, and Diesel reuses one prepared statement per query.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{StepReadinessStatus, TaskExecutionContext};

/// 2,000 tasks of 10 steps in a chain, half of them complete, analysed:
/// enough rows that a sequential scan is never the cheaper plan.
const DATASET: &str = "
    INSERT INTO tasker_task_namespaces (name) VALUES ('plans');
    INSERT INTO tasker_dependent_systems (name) VALUES ('plans');
    INSERT INTO tasker_named_tasks (task_namespace_id, name, version)
        SELECT task_namespace_id, 'chain', '1' FROM tasker_task_namespaces;
    INSERT INTO tasker_named_steps (dependent_system_id, name)
        SELECT dependent_system_id, 'step_' || n
        FROM tasker_dependent_systems, generate_series(1, 10) AS n;
    INSERT INTO tasker_tasks (named_task_id, identity_hash)
        SELECT named_task_id, 'plans-' || n FROM tasker_named_tasks, generate_series(1, 2000) AS n;
    INSERT INTO tasker_workflow_steps (task_id, named_step_id)
        SELECT task_id, named_step_id FROM tasker_tasks, tasker_named_steps;
    INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
        SELECT parent.workflow_step_id, child.workflow_step_id, 'next'
        FROM tasker_workflow_steps AS parent
        JOIN tasker_workflow_steps AS child
          ON child.task_id = parent.task_id AND child.named_step_id = parent.named_step_id + 1;
    INSERT INTO tasker_workflow_step_transitions (workflow_step_id, to_state, sort_key, most_recent)
        SELECT workflow_step_id, 'complete', 1, true
        FROM tasker_workflow_steps WHERE task_id % 2 = 0;
    INSERT INTO tasker_task_transitions (task_id, to_state, sort_key, most_recent)
        SELECT task_id, state, key, key = 2
        FROM tasker_tasks,
             unnest(ARRAY['in_progress', 'complete']::tasker_task_state[]) WITH ORDINALITY
                 AS history (state, key);
    ANALYZE;
";

/// Tables that grow with history: none may be read by a sequential scan.
const LARGE_TABLES: [&str; 6] = [
    "tasker_tasks",
    "tasker_task_step_counts",
    "tasker_workflow_steps",
    "tasker_workflow_step_edges",
    "tasker_workflow_step_transitions",
    "tasker_task_transitions",
];

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

fn plan(conn: &mut PgConnection, mode: &str, statement: &str, argument: &str) -> Vec<String> {
    diesel::sql_query(format!("SET plan_cache_mode = {mode}"))
        .execute(conn)
        .unwrap();
    diesel::sql_query("DEALLOCATE ALL").execute(conn).unwrap();
    diesel::sql_query(format!("PREPARE probe AS {statement}"))
        .execute(conn)
        .unwrap();
    diesel::sql_query(format!("EXPLAIN (COSTS OFF) EXECUTE probe({argument})"))
        .load::<PlanLine>(conn)
        .unwrap()
        .into_iter()
        .map(|row| row.line)
        .collect()
}

#[test]
fn generic_and_custom_plans_seek_by_index_and_inline_the_functions() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    conn.batch_execute(DATASET).unwrap();

    let statements = [
        (
            "SELECT * FROM get_step_readiness_status($1::bigint[])",
            "'{15,16,17}'",
        ),
        ("SELECT * FROM get_step_readiness_status($1::bigint)", "7"),
        (
            "SELECT * FROM get_step_readiness_status($1::bigint, '{70,71}')",
            "7",
        ),
        (
            "SELECT * FROM get_step_readiness_status_batch($1)",
            "'{3,4,5}'",
        ),
        ("SELECT * FROM get_task_execution_context($1)", "7"),
        (
            "SELECT * FROM get_task_execution_contexts_batch($1)",
            "'{3,4,5}'",
        ),
        ("SELECT * FROM calculate_dependency_levels($1)", "7"),
    ];
    for mode in ["force_generic_plan", "force_custom_plan"] {
        for (statement, argument) in statements {
            let lines = plan(&mut conn, mode, statement, argument);
            let text = lines.join("\n");
            for table in LARGE_TABLES {
                assert!(
                    !lines
                        .iter()
                        .any(|line| line.contains(&format!("Seq Scan on {table}"))),
                    "{mode}: {statement} scans {table}:\n{text}"
                );
            }
            // Every SQL function inlines into the caller's plan; the one
            // procedural step allowed is the topological pass behind the
            // levels, which runs once over the task's steps and edges.
            let opaque = lines.iter().filter(|line| line.contains("Function Scan"));
            let allowed = |line: &&String| {
                statement.contains("calculate_dependency_levels")
                    && line.contains("Function Scan on tasker_topological_levels")
            };
            assert!(
                opaque.clone().all(|line| allowed(&line)),
                "{mode}: {statement} is not inlined:\n{text}"
            );
            assert!(
                opaque.count() <= 1,
                "{mode}: {statement} calls a function more than once:\n{text}"
            );
            // Readiness and context read the maintained state, not the step
            // history; ready steps come from the active-set index.
            if !statement.contains("calculate_dependency_levels") {
                assert!(
                    !text.contains("tasker_workflow_step_transitions")
                        && !text.contains("tasker_workflow_step_edges"),
                    "{mode}: {statement} recomputes from the history:\n{text}"
                );
            }
            if statement.contains("context") {
                assert!(
                    text.contains("tasker_workflow_steps_runnable_idx"),
                    "{mode}: {statement} does not count ready steps by the active-set index:\n{text}"
                );
            }
        }
    }
}

#[test]
fn each_query_is_prepared_once_per_connection() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    conn.batch_execute(DATASET).unwrap();

    for task_id in 1..=8 {
        StepReadinessStatus::for_task(task_id)
            .load(&mut conn)
            .unwrap();
        StepReadinessStatus::for_steps(&[task_id * 10, task_id * 10 + 1])
            .ready_for_execution()
            .load(&mut conn)
            .unwrap();
        TaskExecutionContext::find(&mut conn, task_id)
            .unwrap()
            .unwrap();
        TaskExecutionContext::find_many(&mut conn, &[task_id, task_id + 1]).unwrap();
    }

    #[derive(QueryableByName, Debug, PartialEq)]
    struct Prepared {
        #[diesel(sql_type = Text)]
        function: String,
        #[diesel(sql_type = BigInt)]
        statements: i64,
        #[diesel(sql_type = BigInt)]
        executions: i64,
    }
    let prepared: Vec<Prepared> = diesel::sql_query(
        "SELECT substring(statement FROM '(get_[a-z_]+)\\(') AS function,
                count(*) AS statements,
                sum(generic_plans + custom_plans)::bigint AS executions
         FROM pg_prepared_statements
         WHERE statement LIKE '%get_%'
         GROUP BY 1 ORDER BY 1",
    )
    .load(&mut conn)
    .unwrap();
    let expected = [
        ("get_step_readiness_status", 2, 16),
        ("get_task_execution_context", 1, 8),
        ("get_task_execution_contexts_batch", 1, 8),
    ];
    let expected: Vec<Prepared> = expected
        .into_iter()
        .map(|(function, statements, executions)| Prepared {
            function: function.to_owned(),
            statements,
            executions,
        })
        .collect();
    assert_eq!(prepared, expected);
}
