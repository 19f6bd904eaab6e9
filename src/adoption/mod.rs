//! Adopting a database that the Rails Tasker engine created.
//!
//! Teams moving from the Rails engine to Rust keep the database they have, with
//! its rows, and may keep the engine writing to it. Two calls bring such a
//! database to the crate's schema in place:
//!
//! 1. [`adopt_rails_schema`] converts the engine's tables to the crate's shape
//!    (state columns to the state enums, the crate's defaults, constraints and
//!    indexes in place of the engine's), replaces the engine's SQL functions and
//!    view with the crate's, under the same names, and applies the remaining
//!    migrations. It runs in a few transactions that hold the tables, and costs
//!    one rewrite of each table whose column types change (the transitions, the
//!    tasks, the edges, the steps for their maintained columns).
//! 2. [`backfill_readiness`] then fills the maintained readiness of the tasks
//!    that existed before, a bounded batch of tasks per transaction, reporting
//!    progress after each batch. Between batches the tables are open: the engine
//!    and the crate's writers go on writing, and the triggers keep every change.
//!
//! Until the backfill reaches a task, none of its steps is runnable (claims and
//! readiness never hand them out) and the task has no execution context; once
//! it has, the task reads as on any database. The backfill is resumable: it
//! picks up the tasks that still have no maintained counts, so a run that was
//! stopped is started again with the same call.
//!
//! On a database the crate created, or one with no Tasker tables,
//! [`adopt_rails_schema`] applies the pending migrations and nothing more, and
//! [`backfill_readiness`] finds nothing to do: both are safe to call at every
//! start-up.
//!
//! What the engine sees afterwards: its tables and columns, with the states as
//! enums that accept the text it binds (assignment casts) and the label
//! `skipped` its `Task.active` scope names; its functions (`get_step_readiness_status`,
//! `get_task_execution_context`, the `*_v01` analytics) and the
//! `tasker_step_dag_relationships` view, with the columns and types it reads.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::PgConnection;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Text};
use diesel::{sql_query, Connection, QueryableByName, RunQueryDsl};
use diesel_migrations::MigrationHarness;

use crate::arguments;
use crate::error::{Error, Result};
use crate::migrations::{apply_pending_migrations, with_migration_lock, MIGRATIONS};

/// What turns the engine's tables into those of the crate's table migration.
const RAILS_TABLES_SQL: &str = include_str!("rails_tables.sql");

/// The migration that creates the tables; on an adopted database
/// [`RAILS_TABLES_SQL`] takes its place.
const TABLES_MIGRATION: &str = "create_tasker_tables";

/// What [`adopt_rails_schema`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Whether the engine's tables were converted (false: the crate's schema
    /// or no Tasker tables were there, and only pending migrations ran).
    pub converted: bool,
    /// The migrations applied, oldest first.
    pub migrations: Vec<String>,
    /// Tasks whose maintained readiness [`backfill_readiness`] has yet to fill.
    pub tasks_to_backfill: i64,
}

/// Brings a database the Rails engine created to the crate's schema, keeping
/// every row, and applies the crate's migrations; see the [module
/// docs](self). On any other database it applies the pending migrations.
///
/// Holds the migration lock, so services starting together adopt once.
/// Refuses with [`Error::Adoption`] (and changes nothing) when the engine's
/// tables are not in its shape or hold rows the crate's constraints refuse (a
/// state the enums lack, a self edge, duplicate names), naming what it found.
pub fn adopt_rails_schema(conn: &mut PgConnection) -> Result<Adoption> {
    let (converted, migrations) = with_migration_lock(conn, |conn| {
        if !holds_foreign_tasker_tables(conn)? {
            return Ok((false, apply_pending_migrations(conn)?));
        }
        let mut pending = conn
            .pending_migrations(MIGRATIONS)
            .map_err(Error::Migration)?;
        pending.sort_by_key(|m| m.name().version().as_owned());
        let Some(tables) = pending
            .iter()
            .position(|m| m.name().to_string().ends_with(TABLES_MIGRATION))
        else {
            return Err(Error::Adoption {
                problem: format!("the migration {TABLES_MIGRATION} is not pending"),
            });
        };
        // The migrations before the tables (the state types), the conversion in
        // place of the tables' migration, and its record: all or nothing.
        let mut applied = conn
            .transaction(|conn| {
                let mut applied = Vec::new();
                for earlier in &pending[..tables] {
                    // Carried out of the transaction as Diesel's error type.
                    let version = conn
                        .run_migration(earlier.as_ref())
                        .map_err(diesel::result::Error::QueryBuilderError)?;
                    applied.push(version.to_string());
                }
                conn.batch_execute(RAILS_TABLES_SQL)?;
                let version = pending[tables].name().version().as_owned().to_string();
                sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
                    .bind::<Text, _>(&version)
                    .execute(conn)?;
                applied.push(version);
                Ok::<_, diesel::result::Error>(applied)
            })
            .map_err(|error| Error::Adoption {
                problem: error.to_string(),
            })?;
        applied.extend(apply_pending_migrations(conn)?);
        Ok((true, applied))
    })?;
    Ok(Adoption {
        converted,
        migrations,
        tasks_to_backfill: tasks_to_backfill(conn)?,
    })
}

/// Progress of [`backfill_readiness`], reported after each batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    /// Tasks filled so far.
    pub tasks: i64,
    /// Their steps.
    pub steps: i64,
    /// Tasks that had yet to be filled when the backfill started (tasks that
    /// are created meanwhile have their readiness from the start).
    pub tasks_total: i64,
    /// Batches committed so far.
    pub batches: i64,
}

/// Fills the maintained readiness of every task that has none (the tasks of
/// an adopted database), `batch_tasks` tasks per transaction, in task id
/// order, calling `progress` after each batch commits; returns the final
/// progress. See the [module docs](self) for what holds meanwhile.
///
/// Each batch is [`crate::readiness::rebuild_readiness`] of its tasks: it locks
/// their steps and then the tasks for its duration, so writers of those tasks
/// wait for it and writers of others do not. `batch_tasks` must be between 1
/// and [`crate::MAX_IDS_PER_CALL`]; a few hundred to a few thousand keep each
/// transaction well under a second.
pub fn backfill_readiness(
    conn: &mut PgConnection,
    batch_tasks: u32,
    mut progress: impl FnMut(&BackfillProgress),
) -> Result<BackfillProgress> {
    let limit = arguments::count("batch_tasks", batch_tasks, 1)?;
    arguments::ids("batch_tasks", batch_tasks as usize)?;
    let mut done = BackfillProgress {
        tasks_total: tasks_to_backfill(conn)?,
        ..BackfillProgress::default()
    };
    let mut after = 0_i64;
    loop {
        let batch = conn.transaction(|conn| {
            let ids: Vec<i64> = sql_query(
                "SELECT t.task_id AS id FROM tasker_tasks AS t \
                 WHERE t.task_id > $1 \
                   AND NOT EXISTS (SELECT FROM tasker_task_step_counts AS c \
                                   WHERE c.task_id = t.task_id) \
                 ORDER BY t.task_id LIMIT $2",
            )
            .bind::<BigInt, _>(after)
            .bind::<Integer, _>(limit)
            .load::<Id>(conn)?
            .into_iter()
            .map(|row| row.id)
            .collect();
            if ids.is_empty() {
                return Ok::<_, Error>(None);
            }
            sql_query("SELECT tasker_rebuild_readiness($1) AS id")
                .bind::<Array<BigInt>, _>(&ids)
                .get_result::<Id>(conn)?;
            let steps = sql_query(
                "SELECT coalesce(sum(c.total_steps), 0)::bigint AS id \
                 FROM tasker_task_step_counts AS c WHERE c.task_id = ANY ($1)",
            )
            .bind::<Array<BigInt>, _>(&ids)
            .get_result::<Id>(conn)?
            .id;
            Ok(Some((ids, steps)))
        })?;
        let Some((ids, steps)) = batch else {
            return Ok(done);
        };
        after = ids.last().copied().unwrap_or(after);
        done.tasks += ids.len() as i64;
        done.steps += steps;
        done.batches += 1;
        progress(&done);
    }
}

/// Tasks that have no maintained counts yet: those [`backfill_readiness`]
/// will fill.
pub fn tasks_to_backfill(conn: &mut PgConnection) -> Result<i64> {
    Ok(sql_query(
        "SELECT count(*) AS id FROM tasker_tasks AS t \
         WHERE NOT EXISTS (SELECT FROM tasker_task_step_counts AS c WHERE c.task_id = t.task_id)",
    )
    .get_result::<Id>(conn)?
    .id)
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// Whether Tasker tables are there that the crate's migrations did not create.
fn holds_foreign_tasker_tables(conn: &mut PgConnection) -> Result<bool> {
    if !sql_query("SELECT to_regclass('tasker_tasks') IS NOT NULL AS flag")
        .get_result::<Flag>(conn)?
        .flag
    {
        return Ok(false);
    }
    let applied = conn.applied_migrations().map_err(Error::Migration)?;
    let tables = tables_version()?;
    Ok(!applied.iter().any(|v| v.to_string() == tables))
}

fn tables_version() -> Result<String> {
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(Error::Migration)?
        .iter()
        .find(|m| m.name().to_string().ends_with(TABLES_MIGRATION))
        .map(|m| m.name().version().to_string())
        .ok_or_else(|| Error::Adoption {
            problem: format!("no migration {TABLES_MIGRATION}"),
        })
}
