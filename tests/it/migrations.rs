//! The migrations apply on an empty database and every down.sql undoes its up.sql.

use std::thread;

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::MigrationHarness;
use tasker_diesel::migrations::{
    revert_all_migrations, run_pending_migrations, schema_version, MIGRATIONS,
};
use tasker_diesel::testing::TestDatabase;

/// Every object of the public schema and its full definition (function bodies,
/// trigger and view definitions, defaults, comments), one per line and sorted,
/// leaving out Diesel's own bookkeeping table.
const SCHEMA_FINGERPRINT: &str = r#"
SELECT coalesce(string_agg(item, E'\n' ORDER BY item), '') AS fingerprint
FROM (
    SELECT format('relation %s kind %s', c.relname, c.relkind) AS item
      FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT format('column %s.%s %s not null %s default %s', c.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid))
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indrelid
     WHERE c.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
      FROM pg_constraint
     WHERE connamespace = 'public'::regnamespace
    UNION ALL
    SELECT format('type %s', typname)
      FROM pg_type
     WHERE typnamespace = 'public'::regnamespace
    UNION ALL
    -- The whole definition, body and settings included: a down.sql that restored a
    -- function under its name but with another body would show here.
    SELECT format('function %s', pg_get_functiondef(oid))
      FROM pg_proc
     WHERE pronamespace = 'public'::regnamespace
    UNION ALL
    SELECT format('view %s: %s', c.relname, pg_get_viewdef(c.oid))
      FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('trigger %s', pg_get_triggerdef(oid))
      FROM pg_trigger
     WHERE NOT tgisinternal
    UNION ALL
    -- Named, not numbered: a column dropped and added again gets a new attnum.
    SELECT format('comment on %s: %s', pg_describe_object(classoid, objoid, objsubid),
                  description)
      FROM pg_description
     WHERE objoid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace
                      UNION ALL SELECT oid FROM pg_proc WHERE pronamespace = 'public'::regnamespace
                      UNION ALL SELECT oid FROM pg_type WHERE typnamespace = 'public'::regnamespace)
) items
WHERE item NOT LIKE '%\_\_diesel\_schema\_migrations%'
"#;

#[derive(QueryableByName)]
struct Fingerprint {
    #[diesel(sql_type = Text)]
    fingerprint: String,
}

fn fingerprint(conn: &mut PgConnection) -> String {
    diesel::sql_query(SCHEMA_FINGERPRINT)
        .get_result::<Fingerprint>(conn)
        .unwrap()
        .fingerprint
}

fn all_migrations() -> Vec<Box<dyn Migration<Pg>>> {
    MigrationSource::<Pg>::migrations(&MIGRATIONS).unwrap()
}

fn empty_database() -> TestDatabase {
    TestDatabase::try_empty().expect("create an empty database")
}

#[test]
fn migrations_apply_to_an_empty_database_and_revert_completely() {
    let db = empty_database();
    let mut conn = db.connection();
    let empty = fingerprint(&mut conn);
    assert_eq!(empty, "", "the database starts empty");

    let applied = run_pending_migrations(&mut conn).unwrap();
    assert_eq!(applied.len(), all_migrations().len());
    assert_eq!(schema_version(&mut conn).unwrap().as_ref(), applied.last());
    let migrated = fingerprint(&mut conn);
    for table in [
        "tasker_task_namespaces",
        "tasker_dependent_systems",
        "tasker_named_tasks",
        "tasker_named_steps",
        "tasker_named_tasks_named_steps",
        "tasker_tasks",
        "tasker_workflow_steps",
        "tasker_workflow_step_edges",
        "tasker_workflow_step_transitions",
        "tasker_task_transitions",
        "tasker_annotation_types",
        "tasker_task_annotations",
        "tasker_dependent_system_object_maps",
    ] {
        assert!(
            migrated.contains(&format!("relation {table} kind r")),
            "{table} missing"
        );
    }

    let reverted = revert_all_migrations(&mut conn).unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert_eq!(
        fingerprint(&mut conn),
        empty,
        "revert_all left objects behind"
    );
    assert_eq!(schema_version(&mut conn).unwrap(), None);
}

#[test]
fn each_migration_reverts_to_the_schema_before_it() {
    let db = empty_database();
    let mut conn = db.connection();
    // Creates Diesel's bookkeeping table, which run_migration expects.
    assert_eq!(schema_version(&mut conn).unwrap(), None);
    let migrations = all_migrations();
    for migration in &migrations {
        let before = fingerprint(&mut conn);
        conn.run_migration(migration).unwrap();
        let after = fingerprint(&mut conn);
        assert_ne!(before, after, "{} changed nothing", migration.name());
        conn.revert_migration(migration).unwrap();
        assert_eq!(
            fingerprint(&mut conn),
            before,
            "{} did not revert cleanly",
            migration.name()
        );
        conn.run_migration(migration).unwrap();
        assert_eq!(
            fingerprint(&mut conn),
            after,
            "{} does not reapply the same",
            migration.name()
        );
    }
}

#[test]
fn concurrent_migration_runs_apply_each_migration_once() {
    let db = empty_database();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = db.url().to_owned();
            thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                run_pending_migrations(&mut conn).unwrap().len()
            })
        })
        .collect();
    let mut applied: Vec<usize> = runs.into_iter().map(|run| run.join().unwrap()).collect();
    applied.sort();
    let total = all_migrations().len();
    assert_eq!(applied, vec![0, 0, total]);
}

#[test]
fn migrating_a_migrated_database_does_nothing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    assert!(run_pending_migrations(&mut conn).unwrap().is_empty());
}

#[derive(QueryableByName)]
struct RedundantIndex {
    #[diesel(sql_type = Text)]
    redundant: String,
    #[diesel(sql_type = Text)]
    covered_by: String,
}

#[test]
fn no_index_repeats_the_leading_columns_of_another() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    // A plain (non-unique, non-partial) index whose columns lead another index
    // of the same table only costs writes: the other index serves its reads.
    // Slicing both key vectors gives both arrays the same bounds, which `=` compares.
    let redundant: Vec<RedundantIndex> = diesel::sql_query(
        "SELECT a.indexrelid::regclass::text AS redundant, b.indexrelid::regclass::text AS covered_by
           FROM pg_index a
           JOIN pg_index b ON b.indrelid = a.indrelid AND b.indexrelid <> a.indexrelid
          WHERE a.indrelid::regclass::text LIKE 'tasker\\_%'
            AND NOT a.indisunique AND a.indpred IS NULL
            AND b.indpred IS NULL
            AND (b.indkey::int2[])[0:array_length(a.indkey::int2[], 1) - 1]
              = (a.indkey::int2[])[0:array_length(a.indkey::int2[], 1) - 1]",
    )
    .load(&mut conn)
    .unwrap();
    let pairs: Vec<String> = redundant
        .iter()
        .map(|pair| format!("{} is covered by {}", pair.redundant, pair.covered_by))
        .collect();
    assert!(pairs.is_empty(), "{pairs:?}");
}

/// The migrations of the releases so far, each with a digest of its `up.sql` and
/// `down.sql`. From the first release on, migrations are append-only: a database
/// migrated by a released version has run these files and never runs them again, so
/// an edit would leave it different from a database migrated afresh. A change to the
/// schema is a new migration, after these; this list grows with each release.
const RELEASED: &[(&str, &str)] = &[
    // 0.1.0
    ("2026-11-26-090000_create_state_types", "e0e6fa2ca82dba19"),
    ("2026-11-26-100000_create_tasker_tables", "19254986de93a32e"),
    (
        "2026-11-26-100050_describe_tasker_tables",
        "1fa44b59a3da14c5",
    ),
    (
        "2026-11-26-100100_enforce_step_dag_integrity",
        "2d2e6494517ee6a1",
    ),
    (
        "2026-11-26-110000_maintain_step_readiness",
        "217d038ce52ff8de",
    ),
    (
        "2026-11-26-120000_create_readiness_functions",
        "438b2ce6d4721127",
    ),
    (
        "2026-11-26-130000_create_write_path_functions",
        "6af350e42a6cc14c",
    ),
    (
        "2026-11-26-140000_serve_the_rails_engine",
        "f9ed958c183b3778",
    ),
];

/// FNV-1a (64 bits) of a migration's `up.sql`, a 0xff byte and its `down.sql`.
fn migration_digest(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(name);
    let read =
        |file: &str| std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in read("up.sql")
        .into_iter()
        .chain([0xff])
        .chain(read("down.sql"))
    {
        digest ^= u64::from(byte);
        digest = digest.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{digest:016x}")
}

#[test]
fn released_migrations_are_never_edited_and_come_first() {
    let names: Vec<String> = all_migrations()
        .iter()
        .map(|migration| migration.name().to_string())
        .collect();
    let released: Vec<&str> = RELEASED.iter().map(|(name, _)| *name).collect();
    assert!(
        names.len() >= released.len() && names[..released.len()] == released[..],
        "a new migration sorts before a released one, or a released one is gone: {names:?}"
    );
    for (name, digest) in RELEASED {
        assert_eq!(
            &migration_digest(name),
            digest,
            "{name} was released and must not change: put the change in a new migration"
        );
    }
}
