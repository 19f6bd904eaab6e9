//! The schema migrations, embedded in the crate at build time.
//!
//! They are the files under `migrations/`, the same ones `diesel migration
//! run` applies, so a database migrated either way is the same.

use diesel::pg::PgConnection;
use diesel::sql_types::BigInt;
use diesel::{sql_query, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{Error, Result};

/// Every migration of the crate.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key held while migrating, so services starting together
/// apply each migration once ("tasker" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7461_736b_6572;

/// Applies the pending migrations and returns the versions applied.
///
/// Safe to call from several processes at once: they take turns on a
/// session-level advisory lock, and the later ones find nothing to do.
pub fn run_pending_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    with_migration_lock(conn, apply_pending_migrations)
}

/// Applies the pending migrations; the caller holds the migration lock.
pub(crate) fn apply_pending_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(Error::Migration)?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// Reverts every applied migration, newest first, and returns their versions.
pub fn revert_all_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    with_migration_lock(conn, |conn| {
        let reverted = conn
            .revert_all_migrations(MIGRATIONS)
            .map_err(Error::Migration)?;
        Ok(reverted.iter().map(ToString::to_string).collect())
    })
}

/// The version of the newest applied migration, `None` on an unmigrated database.
pub fn schema_version(conn: &mut PgConnection) -> Result<Option<String>> {
    let applied = conn.applied_migrations().map_err(Error::Migration)?;
    Ok(applied.iter().max().map(ToString::to_string))
}

/// Runs `body` holding the migration lock (see [`run_pending_migrations`]).
pub(crate) fn with_migration_lock<T>(
    conn: &mut PgConnection,
    body: impl FnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)?;
    let outcome = body(conn);
    let unlocked = sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn);
    let value = outcome?;
    unlocked?;
    Ok(value)
}
