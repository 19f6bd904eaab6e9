//! The benchmark's dataset, generated server-side into a database of its
//! own: `bench/sql/dataset.sql` installs the shapes and one fill function per table, and
//! this module calls them chunk by chunk with a progress bar per phase.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Text};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use indicatif::{ProgressBar, ProgressStyle};
use tasker_diesel::migrations::run_pending_migrations;
use tasker_diesel::testing::url_with_database;

use crate::report::{size_label, DatasetStats, LoadComparison, Phase};
use crate::BoxResult;

const GENERATOR_SQL: &str = include_str!("../sql/dataset.sql");

/// Changes whenever `dataset.sql` changes what it generates, so `--reuse`
/// never reuses data of another kind.
const GENERATOR_VERSION: &str = "mixed-shapes-v3-triggers-on";

/// Steps in a group: one task of each shape.
const STEPS_PER_GROUP: u64 = 216;

/// Groups filled per statement: about 100K steps, a few hundred milliseconds.
const GROUPS_PER_CHUNK: u64 = 500;

/// A dataset ready to be benchmarked.
pub struct Dataset {
    pub url: String,
    pub stats: DatasetStats,
}

/// The database that holds the dataset of `target_steps` steps, named for its size.
pub fn database_name(target_steps: u64) -> String {
    format!("tasker_bench_{target_steps}")
}

/// Parses `10k`, `100K`, `1m`, `10M` or a plain number of steps.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_lowercase();
    let (digits, factor) = match text.strip_suffix('m') {
        Some(digits) => (digits, 1_000_000),
        None => match text.strip_suffix('k') {
            Some(digits) => (digits, 1_000),
            None => (text.as_str(), 1),
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .map(|n| n * factor)
        .filter(|&n| n > 0)
}

/// Generates the dataset of `target_steps` steps on the server at
/// `server_url` (a URL of any database there), into
/// [`database_name`]: dropped and created again, unless `reuse` is set and
/// a complete dataset of this generator and size is there already.
pub fn prepare(server_url: &str, target_steps: u64, reuse: bool) -> BoxResult<Dataset> {
    let name = database_name(target_steps);
    let url = url_with_database(server_url, &name);
    let groups = target_steps.div_ceil(STEPS_PER_GROUP);
    let label = size_label(target_steps);

    if reuse {
        if let Some(phases) = completed_generation(&url, target_steps)? {
            println!("{label}: reusing the dataset in {name}");
            let mut conn = PgConnection::establish(&url)?;
            return Ok(Dataset {
                stats: measure(&mut conn, phases)?,
                url,
            });
        }
    }

    println!(
        "{label}: generating {groups} groups of 5 tasks ({} steps) into {name}",
        groups * STEPS_PER_GROUP
    );
    let mut admin = PgConnection::establish(server_url)?;
    sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin)?;
    sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin)?;

    let mut conn = PgConnection::establish(&url)?;
    let mut phases = Vec::new();
    timed(&mut phases, "schema", || {
        run_pending_migrations(&mut conn)?;
        install_generator(&mut conn, target_steps, groups, Load::Triggers)
    })?;

    phases.extend(fill(&mut conn, groups)?);
    if target_steps <= DRIFT_CHECK_STEPS {
        timed(&mut phases, "drift check", || check_drift(&mut conn))?;
    }

    timed(&mut phases, "vacuum analyze", || {
        let spinner = spinner("VACUUM ANALYZE");
        conn.batch_execute(
            "SELECT setval(pg_get_serial_sequence('tasker_tasks', 'task_id'), max(task_id)) FROM tasker_tasks; \
             SELECT setval(pg_get_serial_sequence('tasker_workflow_steps', 'workflow_step_id'), max(workflow_step_id)) \
                 FROM tasker_workflow_steps;",
        )?;
        conn.batch_execute("VACUUM ANALYZE")?;
        spinner.finish_and_clear();
        Ok(())
    })?;

    let phases_json = serde_json::to_string(&phases)?;
    sql_query(
        "UPDATE bench.dataset SET completed_at = now() AT TIME ZONE 'UTC', phases = $1::jsonb",
    )
    .bind::<Text, _>(phases_json)
    .execute(&mut conn)?;
    let stats = measure(&mut conn, phases)?;
    let total: f64 = stats.phases.iter().map(|phase| phase.seconds).sum();
    println!("{label}: generated in {total:.1} s");
    Ok(Dataset { url, stats })
}

/// Runs `statement` (binding the first and last group of a chunk) over all groups.
fn fill_in_chunks(
    conn: &mut PgConnection,
    phase: &str,
    statement: &str,
    groups: u64,
) -> BoxResult<()> {
    let bar = ProgressBar::new(groups).with_style(
        ProgressStyle::with_template(
            "{msg:>28} [{bar:40}] {pos}/{len} groups, {elapsed}, eta {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(phase.to_owned());
    for first in (0..groups).step_by(GROUPS_PER_CHUNK as usize) {
        let last = (first + GROUPS_PER_CHUNK).min(groups) - 1;
        sql_query(statement)
            .bind::<BigInt, _>(first as i64)
            .bind::<BigInt, _>(last as i64)
            .execute(conn)?;
        bar.set_position(last + 1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn spinner(message: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

fn timed(
    phases: &mut Vec<Phase>,
    name: &str,
    work: impl FnOnce() -> BoxResult<()>,
) -> BoxResult<()> {
    let started = Instant::now();
    work()?;
    let seconds = started.elapsed().as_secs_f64();
    println!("  {name}: {seconds:.1} s");
    phases.push(Phase {
        name: name.to_owned(),
        seconds,
    });
    Ok(())
}

/// The phases of a complete generation of this size and generator in the
/// database at `url`, if there is one.
fn completed_generation(url: &str, target_steps: u64) -> BoxResult<Option<Vec<Phase>>> {
    #[derive(QueryableByName)]
    struct Done {
        #[diesel(sql_type = Text)]
        phases: String,
    }
    let Ok(mut conn) = PgConnection::establish(url) else {
        return Ok(None);
    };
    let done: Vec<Done> = sql_query(
        "SELECT phases::text AS phases FROM bench.dataset \
         WHERE target_steps = $1 AND generator = $2 AND completed_at IS NOT NULL",
    )
    .bind::<BigInt, _>(target_steps as i64)
    .bind::<Text, _>(GENERATOR_VERSION)
    .load(&mut conn)
    .unwrap_or_default();
    match done.into_iter().next() {
        Some(done) => Ok(Some(serde_json::from_str(&done.phases)?)),
        None => Ok(None),
    }
}

/// Counts what the database holds.
fn measure(conn: &mut PgConnection, phases: Vec<Phase>) -> BoxResult<DatasetStats> {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        tasks: i64,
        #[diesel(sql_type = BigInt)]
        active_tasks: i64,
        #[diesel(sql_type = BigInt)]
        steps: i64,
        #[diesel(sql_type = BigInt)]
        edges: i64,
        #[diesel(sql_type = BigInt)]
        step_transitions: i64,
        #[diesel(sql_type = BigInt)]
        task_transitions: i64,
        #[diesel(sql_type = BigInt)]
        database_bytes: i64,
    }
    let counts: Counts = sql_query(
        "SELECT (SELECT count(*) FROM tasker_tasks) AS tasks, \
                (SELECT count(*) FROM tasker_tasks WHERE NOT complete) AS active_tasks, \
                (SELECT count(*) FROM tasker_workflow_steps) AS steps, \
                (SELECT count(*) FROM tasker_workflow_step_edges) AS edges, \
                (SELECT count(*) FROM tasker_workflow_step_transitions) AS step_transitions, \
                (SELECT count(*) FROM tasker_task_transitions) AS task_transitions, \
                pg_database_size(current_database()) AS database_bytes",
    )
    .get_result(conn)?;
    Ok(DatasetStats {
        tasks: counts.tasks as u64,
        active_tasks: counts.active_tasks as u64,
        steps: counts.steps as u64,
        edges: counts.edges as u64,
        step_transitions: counts.step_transitions as u64,
        task_transitions: counts.task_transitions as u64,
        database_bytes: counts.database_bytes as u64,
        phases,
    })
}

/// Sizes up to this are checked against the history after generation (the
/// check reads every step's history: minutes at 10M).
const DRIFT_CHECK_STEPS: u64 = 1_000_000;

/// The phases of a generation that load data (not the schema, the drift
/// check or `VACUUM ANALYZE`).
pub const FILL_PHASES: [&str; 4] = [
    "tasks and their transitions",
    "steps",
    "edges",
    "step transitions",
];

/// How the generator's fill writes: as any writer of the Tasker schema would,
/// one `INSERT … SELECT` per table and chunk, the maintained columns left to
/// the triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// The crate's triggers on: they check the DAGs and derive the readiness
    /// state from the edges and transitions as they arrive.
    Triggers,
    /// The same statements with the crate's triggers off (foreign keys still
    /// checked): what the load costs on the bare Tasker schema.
    Bare,
}

/// Installs the generator into a freshly migrated database and records the
/// dataset it is about to fill.
fn install_generator(
    conn: &mut PgConnection,
    target_steps: u64,
    groups: u64,
    load: Load,
) -> BoxResult<()> {
    conn.batch_execute(GENERATOR_SQL)?;
    // No JIT: each fill is planned again for every chunk, on tables without
    // statistics, and the compilation those estimates call for costs more than
    // it saves.
    conn.batch_execute("SET synchronous_commit = off; SET jit = off;")?;
    if load == Load::Bare {
        conn.batch_execute(
            "DO $$ DECLARE t text; BEGIN \
                 FOR t IN SELECT tablename FROM pg_tables \
                          WHERE schemaname = 'public' AND tablename LIKE 'tasker\\_%' LOOP \
                     EXECUTE format('ALTER TABLE %I DISABLE TRIGGER USER', t); \
                 END LOOP; \
             END $$",
        )?;
    }
    sql_query(
        "INSERT INTO bench.dataset (target_steps, groups, generator, started_at) \
         VALUES ($1, $2, $3, now() AT TIME ZONE 'UTC')",
    )
    .bind::<BigInt, _>(target_steps as i64)
    .bind::<BigInt, _>(groups as i64)
    .bind::<Text, _>(GENERATOR_VERSION)
    .execute(conn)?;
    Ok(())
}

/// Fills the tables, one phase per table (see [`FILL_PHASES`]), each an
/// `INSERT … SELECT` per chunk of groups.
fn fill(conn: &mut PgConnection, groups: u64) -> BoxResult<Vec<Phase>> {
    let fills = [
        "bench.insert_tasks($1, $2, d.groups, d.started_at)",
        "bench.insert_steps($1, $2, d.groups, d.started_at)",
        "bench.insert_edges($1, $2)",
        "bench.insert_step_transitions($1, $2, d.groups, d.started_at)",
    ];
    let mut phases = Vec::new();
    for (phase, fill) in FILL_PHASES.into_iter().zip(fills) {
        let statement = format!("SELECT {fill} FROM bench.dataset AS d");
        timed(&mut phases, phase, || {
            fill_in_chunks(conn, phase, &statement, groups)
        })?;
    }
    Ok(phases)
}

/// Fails unless the state the triggers maintained matches the history.
fn check_drift(conn: &mut PgConnection) -> BoxResult<()> {
    let spinner = spinner("checking the maintained readiness against the history");
    let drift: Vec<Count> =
        sql_query("SELECT count(*) AS count FROM tasker_readiness_drift(NULL)").load(conn)?;
    spinner.finish_and_clear();
    match drift.first().map_or(0, |row| row.count) {
        0 => Ok(()),
        drift => Err(format!("{drift} maintained values differ from the history").into()),
    }
}

/// C5: the load of `dataset` (generated with the triggers on) against the
/// same statements on the bare schema, in a database of its own, dropped
/// afterwards.
pub fn load_comparison(
    server_url: &str,
    dataset: &DatasetStats,
    target_steps: u64,
) -> BoxResult<LoadComparison> {
    let groups = target_steps.div_ceil(STEPS_PER_GROUP);
    let name = "tasker_bench_load_bare";
    let url = url_with_database(server_url, name);
    println!(
        "{}: C5 loading {} steps without the crate's triggers into {name}",
        size_label(target_steps),
        groups * STEPS_PER_GROUP
    );
    let mut admin = PgConnection::establish(server_url)?;
    sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin)?;
    sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin)?;
    let bare = {
        let mut conn = PgConnection::establish(&url)?;
        run_pending_migrations(&mut conn)?;
        install_generator(&mut conn, target_steps, groups, Load::Bare)?;
        fill(&mut conn, groups)?
    };
    sql_query(format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin)?;
    let triggers = dataset
        .phases
        .iter()
        .filter(|phase| FILL_PHASES.contains(&phase.name.as_str()))
        .cloned()
        .collect();
    Ok(LoadComparison {
        steps: groups * STEPS_PER_GROUP,
        triggers,
        bare,
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}
