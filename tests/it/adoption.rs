//! Adopting a database the Rails Tasker engine created (`tasker_diesel::adoption`):
//! the schema it ends with is the crate's to the catalog entry, every row is
//! kept, nothing of an old task is handed out before the backfill reaches it,
//! the backfill makes the maintained readiness exact while others write, and a
//! database that cannot be adopted is refused unchanged.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Text};
use tasker_diesel::adoption::{adopt_rails_schema, backfill_readiness, tasks_to_backfill};
use tasker_diesel::readiness::ReadinessDrift;
use tasker_diesel::testing::{fill_rails_engine_database, TestDatabase};
use tasker_diesel::workflow::{claim_ready_steps, ClaimRequest};
use tasker_diesel::{Error, StepReadinessStatus};

const LEASE: Duration = Duration::from_secs(60);

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// Every catalog entry of the crate's objects, column order aside (the engine
/// added some columns late): columns with type, nullability, default and
/// comment; tables, views and sequences with comments; constraints, indexes and
/// triggers as PostgreSQL prints them; function definitions.
fn catalog(conn: &mut PgConnection) -> Vec<String> {
    sql_query(
        "SELECT line FROM (
            SELECT 'column ' || c.relname || '.' || a.attname || ' '
                   || format_type(a.atttypid, a.atttypmod)
                   || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                   || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                   || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
                   || coalesce(' comment ' || col_description(c.oid, a.attnum), '') AS line
            FROM pg_attribute AS a
            JOIN pg_class AS c ON c.oid = a.attrelid
            LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v')
              AND c.relname LIKE 'tasker%' AND a.attnum > 0 AND NOT a.attisdropped
            UNION ALL
            SELECT 'relation ' || c.relkind::text || ' ' || c.relname
                   || coalesce(' comment ' || obj_description(c.oid, 'pg_class'), '')
            FROM pg_class AS c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'tasker%'
            UNION ALL
            SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' '
                   || pg_get_constraintdef(oid)
            FROM pg_constraint
            WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text LIKE 'tasker%'
            UNION ALL
            SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index
            WHERE indrelid::regclass::text LIKE 'tasker%'
            UNION ALL
            SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
            UNION ALL
            SELECT 'sequence ' || seqrelid::regclass || ' ' || format_type(seqtypid, NULL)
            FROM pg_sequence
            UNION ALL
            SELECT 'type ' || typname || coalesce(' comment ' || obj_description(oid, 'pg_type'), '')
            FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typname LIKE 'tasker%'
            UNION ALL
            SELECT 'function ' || pg_get_functiondef(oid)
                   || coalesce(' comment ' || obj_description(oid, 'pg_proc'), '')
            FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND prokind = 'f'
        ) AS entries ORDER BY line",
    )
    .load::<Line>(conn)
    .unwrap()
    .into_iter()
    .map(|l| l.line)
    .collect()
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    sql_query(sql).get_result::<N>(conn).unwrap().n
}

/// The rows of every table the engine wrote, as text, in a stable order: what
/// the adoption must keep (the state columns compared as text).
fn engine_rows(conn: &mut PgConnection) -> Vec<String> {
    let tables = [
        ("tasker_task_namespaces", "task_namespace_id"),
        ("tasker_dependent_systems", "dependent_system_id"),
        ("tasker_named_tasks", "named_task_id"),
        ("tasker_named_steps", "named_step_id"),
        ("tasker_named_tasks_named_steps", "id"),
        ("tasker_tasks", "task_id"),
        ("tasker_workflow_step_edges", "id"),
        ("tasker_workflow_step_transitions", "id"),
        ("tasker_task_transitions", "id"),
    ];
    let mut rows = Vec::new();
    for (table, key) in tables {
        rows.extend(
            sql_query(format!(
                "SELECT '{table} ' || (to_jsonb(t) - 'bypass_steps')::text AS line \
                 FROM {table} AS t ORDER BY {key}"
            ))
            .load::<Line>(conn)
            .unwrap()
            .into_iter()
            .map(|l| l.line),
        );
    }
    // The steps' own columns (the adoption adds the maintained ones).
    rows.extend(
        sql_query(
            "SELECT 'step ' || jsonb_build_array(workflow_step_id, task_id, named_step_id, \
                    retryable, retry_limit, in_process, processed, processed_at, attempts, \
                    last_attempted_at, backoff_request_seconds, inputs, results, skippable, \
                    created_at, updated_at)::text AS line \
             FROM tasker_workflow_steps ORDER BY workflow_step_id",
        )
        .load::<Line>(conn)
        .unwrap()
        .into_iter()
        .map(|l| l.line),
    );
    rows
}

/// No drift, and each task's maintained readiness equals the from-history oracle.
fn assert_exact(conn: &mut PgConnection, phase: &str) {
    assert_eq!(
        ReadinessDrift::load(conn, None).unwrap(),
        [],
        "{phase}: drift"
    );
    let tasks: Vec<i64> = sql_query("SELECT task_id AS n FROM tasker_tasks ORDER BY 1")
        .load::<IdRow>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.n)
        .collect();
    let mut kept = StepReadinessStatus::for_tasks(&tasks).load(conn).unwrap();
    kept.sort_by_key(|r| r.workflow_step_id);
    let ids: Vec<i64> = kept.iter().map(|r| r.workflow_step_id).collect();
    let mut recomputed = StepReadinessStatus::from_history(&ids).load(conn).unwrap();
    recomputed.sort_by_key(|r| r.workflow_step_id);
    assert_eq!(kept, recomputed, "{phase}: maintained readiness");
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[test]
fn an_adopted_database_has_the_schema_of_a_migrated_one() {
    let fresh = TestDatabase::new();
    let rails = TestDatabase::try_rails_engine().unwrap();
    let mut conn = rails.connection();
    fill_rails_engine_database(&mut conn, 20).unwrap();
    let adoption = adopt_rails_schema(&mut conn).unwrap();
    assert!(adoption.converted);
    assert_eq!(adoption.tasks_to_backfill, 20);
    let expected = catalog(&mut fresh.connection());
    let adopted = catalog(&mut conn);
    let missing: Vec<_> = expected.iter().filter(|l| !adopted.contains(l)).collect();
    let extra: Vec<_> = adopted.iter().filter(|l| !expected.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing after adoption: {missing:#?}\nextra after adoption: {extra:#?}"
    );
    // The engine's own bookkeeping tables are left as they were.
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM schema_migrations"),
        0
    );
}

#[test]
fn adoption_keeps_every_row_and_hands_nothing_out_until_the_backfill() {
    let rails = TestDatabase::try_rails_engine().unwrap();
    let mut conn = rails.connection();
    fill_rails_engine_database(&mut conn, 25).unwrap();
    let before = engine_rows(&mut conn);
    // Catalogs 11, tasks 25, edges 100, step transitions 105 (21 per five tasks),
    // task transitions 30 (6 per five), steps 100.
    assert_eq!(before.len(), 11 + 25 + 100 + 105 + 30 + 100);

    let adoption = adopt_rails_schema(&mut conn).unwrap();
    assert_eq!(engine_rows(&mut conn), before, "every row is kept");
    assert_eq!(adoption.tasks_to_backfill, 25);

    // The engine adds an edge to an old task (b -> c in task 1, whose a is
    // complete): c, whose parents are not counted yet, must not become runnable.
    conn.batch_execute(
        "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name, created_at, updated_at)
         SELECT b.workflow_step_id, c.workflow_step_id, 'provides', now(), now()
         FROM tasker_workflow_steps b, tasker_workflow_steps c
         WHERE b.task_id = 1 AND c.task_id = 1
           AND b.named_step_id = (SELECT named_step_id FROM tasker_named_steps WHERE name = 'b')
           AND c.named_step_id = (SELECT named_step_id FROM tasker_named_steps WHERE name = 'c')",
    )
    .unwrap();
    // Whatever a parent count not yet counted becomes, the step is not runnable:
    // here completed_parents reaches total_parents (-1), written past the triggers.
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        conn.batch_execute(
            "SET LOCAL tasker.writer_maintains = on;
             UPDATE tasker_workflow_steps SET completed_parents = -1 WHERE task_id = 5",
        )
    })
    .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM tasker_workflow_steps WHERE task_id = 5 AND total_parents = completed_parents"),
        4
    );
    // Before the backfill: nothing runnable, no context, and the drift says so.
    let claimed = claim_ready_steps(&mut conn, &ClaimRequest::any_task(100, LEASE)).unwrap();
    assert_eq!(
        claimed,
        [],
        "no step of a task the backfill has not reached is claimed"
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM get_task_execution_contexts_batch(ARRAY(SELECT task_id FROM tasker_tasks))"),
        0
    );
    assert!(!ReadinessDrift::load(&mut conn, None).unwrap().is_empty());

    let mut seen = Vec::new();
    let done = backfill_readiness(&mut conn, 7, |p| seen.push(*p)).unwrap();
    assert_eq!(
        seen.iter().map(|p| p.tasks).collect::<Vec<_>>(),
        [7, 14, 21, 25],
        "progress after each batch"
    );
    assert_eq!(done.tasks, 25);
    assert_eq!(done.steps, 100);
    assert_eq!(done.tasks_total, 25);
    assert_eq!(done.batches, 4);
    assert_eq!(tasks_to_backfill(&mut conn).unwrap(), 0);
    assert_exact(&mut conn, "after the backfill");

    // Ready now: a of history 0, b and c of history 1, b of history 2 (a retry,
    // its backoff past), five tasks each, but c of task 1, which waits for b since
    // the new edge; c of history 2 is running, and a of history 4 has no retry left.
    let claimed = claim_ready_steps(&mut conn, &ClaimRequest::any_task(100, LEASE)).unwrap();
    assert_eq!(claimed.len(), 19);
    assert_exact(&mut conn, "after a claim");

    // Calling both again changes nothing.
    let again = adopt_rails_schema(&mut conn).unwrap();
    assert!(!again.converted);
    assert_eq!(again.migrations, Vec::<String>::new());
    assert_eq!(backfill_readiness(&mut conn, 7, |_| {}).unwrap().tasks, 0);
}

#[test]
fn writers_keep_going_during_the_backfill_and_it_ends_exact() {
    let rails = TestDatabase::try_rails_engine().unwrap();
    let mut conn = rails.connection();
    fill_rails_engine_database(&mut conn, 30).unwrap();
    adopt_rails_schema(&mut conn).unwrap();
    let mut engine = rails.connection();
    // Between batches the engine writes as Statesman does, to a task already
    // filled (1) and to one not yet reached (26), and creates a task.
    let mut batch = 0;
    backfill_readiness(&mut conn, 10, |_| {
        batch += 1;
        if batch != 1 {
            return;
        }
        for task in [1_i64, 26] {
            engine
                .batch_execute(&format!(
                    "UPDATE tasker_workflow_step_transitions SET most_recent = false, updated_at = now()
                     WHERE most_recent AND workflow_step_id = (
                         SELECT s.workflow_step_id FROM tasker_workflow_steps s
                         JOIN tasker_named_steps n USING (named_step_id)
                         WHERE s.task_id = {task} AND n.name = 'b');
                     INSERT INTO tasker_workflow_step_transitions
                         (to_state, from_state, metadata, sort_key, most_recent, workflow_step_id, created_at, updated_at)
                     SELECT 'complete', NULL, '{{}}', 100, true, s.workflow_step_id, now(), now()
                     FROM tasker_workflow_steps s JOIN tasker_named_steps n USING (named_step_id)
                     WHERE s.task_id = {task} AND n.name = 'b';
                     UPDATE tasker_workflow_steps SET processed = true, processed_at = now(), updated_at = now()
                     WHERE task_id = {task} AND named_step_id = (SELECT named_step_id FROM tasker_named_steps WHERE name = 'b');"
                ))
                .unwrap();
        }
        engine
            .batch_execute(
                "INSERT INTO tasker_tasks (named_task_id, requested_at, identity_hash, created_at, updated_at)
                 SELECT named_task_id, now(), 'made-meanwhile', now(), now() FROM tasker_named_tasks;
                 INSERT INTO tasker_workflow_steps (task_id, named_step_id, created_at, updated_at)
                 SELECT t.task_id, n.named_step_id, now(), now()
                 FROM tasker_tasks t, tasker_named_steps n WHERE t.identity_hash = 'made-meanwhile';
                 INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name, created_at, updated_at)
                 SELECT a.workflow_step_id, b.workflow_step_id, 'provides', now(), now()
                 FROM tasker_workflow_steps a JOIN tasker_named_steps an ON an.named_step_id = a.named_step_id AND an.name = 'a'
                 JOIN tasker_workflow_steps b ON b.task_id = a.task_id
                 JOIN tasker_named_steps bn ON bn.named_step_id = b.named_step_id AND bn.name <> 'a'
                 JOIN tasker_tasks t ON t.task_id = a.task_id AND t.identity_hash = 'made-meanwhile';",
            )
            .unwrap();
    })
    .unwrap();
    assert!(batch >= 3);
    assert_exact(&mut conn, "after a backfill with writers");
    // The task made meanwhile never needed the backfill: a is its only ready step.
    let made: i64 = count(
        &mut conn,
        "SELECT task_id AS n FROM tasker_tasks WHERE identity_hash = 'made-meanwhile'",
    );
    let ready = StepReadinessStatus::for_task(made)
        .ready_for_execution()
        .load(&mut conn)
        .unwrap();
    assert_eq!(ready.len(), 1);
}

#[test]
fn a_database_the_crate_cannot_hold_is_refused_and_left_unchanged() {
    let rails = TestDatabase::try_rails_engine().unwrap();
    let mut conn = rails.connection();
    fill_rails_engine_database(&mut conn, 5).unwrap();
    conn.batch_execute(
        "UPDATE tasker_workflow_step_transitions SET to_state = 'paused' WHERE id = 1",
    )
    .unwrap();
    let before = engine_rows(&mut conn);
    match adopt_rails_schema(&mut conn) {
        Err(Error::Adoption { problem }) => {
            assert!(problem.contains("paused"), "names the value: {problem}")
        }
        other => panic!("expected an adoption error, got {other:?}"),
    }
    assert_eq!(engine_rows(&mut conn), before);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM pg_type WHERE typname = 'tasker_step_state'"
        ),
        0,
        "the state types went with the refused conversion"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM __diesel_schema_migrations"
        ),
        0
    );
    // Fixed, it adopts.
    conn.batch_execute(
        "UPDATE tasker_workflow_step_transitions SET to_state = 'in_progress' WHERE id = 1",
    )
    .unwrap();
    assert!(adopt_rails_schema(&mut conn).unwrap().converted);
}

#[test]
fn on_an_empty_or_crate_database_adoption_is_the_migrations() {
    let empty = TestDatabase::try_empty().unwrap();
    let mut conn = empty.connection();
    let adoption = adopt_rails_schema(&mut conn).unwrap();
    assert!(!adoption.converted);
    assert_eq!(
        adoption.migrations.len(),
        MigrationSource::<Pg>::migrations(&tasker_diesel::MIGRATIONS)
            .unwrap()
            .len()
    );
    let fresh = TestDatabase::new();
    assert_eq!(catalog(&mut conn), catalog(&mut fresh.connection()));
    assert_eq!(backfill_readiness(&mut conn, 1, |_| {}).unwrap().batches, 0);
    assert!(matches!(
        backfill_readiness(&mut conn, 0, |_| {}),
        Err(Error::Refused(_))
    ));
}

#[test]
fn a_rebuild_inside_a_transaction_leaves_the_triggers_on_for_what_follows() {
    // The rebuild skips the steps' trigger while it runs; a write after it in the
    // same transaction must be maintained again.
    let rails = TestDatabase::try_rails_engine().unwrap();
    let mut conn = rails.connection();
    fill_rails_engine_database(&mut conn, 5).unwrap();
    adopt_rails_schema(&mut conn).unwrap();
    conn.transaction::<_, Error, _>(|conn| {
        tasker_diesel::readiness::rebuild_readiness(conn, None)?;
        // Task 1 (history 1): b completes, as the engine writes it.
        conn.batch_execute(
            "INSERT INTO tasker_workflow_step_transitions
                 (to_state, metadata, sort_key, most_recent, workflow_step_id, created_at, updated_at)
             SELECT 'complete', '{}', 10, true, s.workflow_step_id, now(), now()
             FROM tasker_workflow_steps s JOIN tasker_named_steps n USING (named_step_id)
             WHERE s.task_id = 1 AND n.name = 'b';
             UPDATE tasker_workflow_steps SET processed = true, updated_at = now()
             WHERE task_id = 1 AND named_step_id = (SELECT named_step_id FROM tasker_named_steps WHERE name = 'b');",
        )?;
        Ok(())
    })
    .unwrap();
    assert_exact(&mut conn, "after a rebuild and a write in one transaction");
}
