//! A migrated database of its own for each test, cloned from a template.

use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};

use super::server::server_url;
use crate::error::{Error, Result};
use crate::migrations::run_pending_migrations;
use crate::pool::{build_pool, PgPool};

/// The template is named after the migrations it holds, so a change to any
/// migration file gives a new template and a current one is reused across runs.
const TEMPLATE: &str = concat!("tasker_template_", env!("TASKER_MIGRATIONS_DIGEST"));

/// Advisory lock key under which the template is built, once, whichever of
/// several test processes gets there first.
const TEMPLATE_LOCK_KEY: i64 = 0x7461_736b_6574;

static TEMPLATE_READY: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// The tables, sequences, foreign keys, a sample of the indexes, and the SQL
/// functions and view (by name and argument types only) of a database that the
/// Rails Tasker engine's schema created: the starting point of an adoption.
pub const RAILS_ENGINE_SCHEMA: &str = include_str!("rails_schema.sql");

/// Fills a database that [`TestDatabase::try_rails_engine`] made (or any empty
/// one in the Rails engine's shape) with `tasks` tasks as the engine writes
/// them: a diamond of four steps each, with Statesman histories of five kinds
/// in turn (nothing run; one step complete; a failure to retry and a step
/// running; every step complete; retries exhausted). See `rails_history.sql`.
pub fn fill_rails_engine_database(conn: &mut PgConnection, tasks: i64) -> Result<()> {
    conn.batch_execute(include_str!("rails_history.sql"))?;
    sql_query("SELECT pg_temp.tasker_fill_rails_engine($1)")
        .bind::<BigInt, _>(tasks)
        .execute(conn)?;
    conn.batch_execute(
        "DROP FUNCTION pg_temp.tasker_fill_rails_engine(bigint); \
         DROP FUNCTION pg_temp.tasker_rails_history(bigint, text);",
    )?;
    Ok(())
}

/// A freshly migrated database that exists until this value is dropped.
///
/// Created on the server chosen by [`server_url`](super::server_url), as a
/// clone of a template database migrated once, so tests can run in parallel,
/// each with as many connections as it likes.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates the database.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the database cannot be created;
    /// use [`TestDatabase::try_new`] to get the error instead.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|error| panic!("cannot create a test database: {error}"))
    }

    /// Creates the database, or says why it could not.
    pub fn try_new() -> Result<Self> {
        let server = server_url();
        TEMPLATE_READY
            .get_or_init(|| create_template(server).map_err(|error| error.to_string()))
            .clone()
            .map_err(|message| Error::Migration(message.into()))?;
        Self::create(server, TEMPLATE)
    }

    /// Creates an empty database, with no migration applied (to test the
    /// migrations themselves).
    pub fn try_empty() -> Result<Self> {
        Self::create(server_url(), "template0")
    }

    /// Creates a database as the Rails Tasker engine's schema leaves it
    /// ([`RAILS_ENGINE_SCHEMA`]), with no row and none of the crate's
    /// migrations: what [`crate::adoption`] adopts.
    pub fn try_rails_engine() -> Result<Self> {
        let db = Self::try_empty()?;
        db.connection().batch_execute(RAILS_ENGINE_SCHEMA)?;
        Ok(db)
    }

    /// A database the Rails engine created, adopted by the crate
    /// ([`crate::adoption::adopt_rails_schema`]) and backfilled: a crate
    /// database that took the adoption path.
    ///
    /// # Panics
    ///
    /// When the database cannot be created or adopted.
    pub fn adopted_from_rails() -> Self {
        let adopt = || -> Result<Self> {
            let db = Self::try_rails_engine()?;
            let mut conn = db.connection();
            crate::adoption::adopt_rails_schema(&mut conn)?;
            crate::adoption::backfill_readiness(&mut conn, 1000, |_| {})?;
            Ok(db)
        };
        adopt().unwrap_or_else(|error| panic!("cannot adopt a Rails engine database: {error}"))
    }

    fn create(server: &str, template: &str) -> Result<Self> {
        let name = format!("tasker_test_{}", super::unique_suffix());
        let mut admin = PgConnection::establish(server)?;
        // Identifiers cannot be bound; both names are made in this module from [a-z0-9_].
        retry_while_in_use(|| {
            sql_query(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#))
                .execute(&mut admin)
        })?;
        Ok(TestDatabase {
            url: url_with_database(server, &name),
            name,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the database.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub fn connection(&self) -> PgConnection {
        PgConnection::establish(&self.url).unwrap_or_else(|error| {
            panic!("cannot connect to test database {}: {error}", self.name)
        })
    }

    /// A new r2d2 pool of connections to the database.
    ///
    /// # Panics
    ///
    /// When the pool cannot be built.
    pub fn pool(&self) -> PgPool {
        build_pool(&self.url)
            .unwrap_or_else(|error| panic!("cannot pool test database {}: {error}", self.name))
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // FORCE ends the connections a test left open.
        let dropped = PgConnection::establish(server_url()).map(|mut admin| {
            sql_query(format!(
                r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                self.name
            ))
            .execute(&mut admin)
        });
        if !matches!(dropped, Ok(Ok(_))) && !thread::panicking() {
            eprintln!("tasker-diesel: could not drop test database {}", self.name);
        }
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Makes sure the template exists, migrating it under an advisory lock when
/// it does not. It is built under another name and renamed when complete, so
/// an interrupted build never leaves a half-migrated template.
fn create_template(server: &str) -> Result<()> {
    let mut admin = PgConnection::establish(server)?;
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)?;
    let built = build_template_unless_present(server, &mut admin);
    let unlocked = sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin);
    built?;
    unlocked?;
    Ok(())
}

fn build_template_unless_present(server: &str, admin: &mut PgConnection) -> Result<()> {
    let present = sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(TEMPLATE)
        .get_result::<Count>(admin)?;
    if present.count > 0 {
        return Ok(());
    }
    let building = format!("{TEMPLATE}_building");
    sql_query(format!(
        r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#
    ))
    .execute(admin)?;
    sql_query(format!(r#"CREATE DATABASE "{building}""#)).execute(admin)?;
    {
        let mut conn = PgConnection::establish(&url_with_database(server, &building))?;
        run_pending_migrations(&mut conn)?;
    }
    retry_while_in_use(|| {
        sql_query(format!(
            r#"ALTER DATABASE "{building}" RENAME TO "{TEMPLATE}""#
        ))
        .execute(admin)
    })?;
    Ok(())
}

/// Runs `statement` again while PostgreSQL says the database is in use: a
/// backend whose client just disconnected takes a moment to exit.
fn retry_while_in_use(mut statement: impl FnMut() -> diesel::QueryResult<usize>) -> Result<()> {
    let mut attempts = 0;
    loop {
        match statement() {
            Err(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info))
                if attempts < 100 && info.message().contains("being accessed by other users") =>
            {
                attempts += 1;
                thread::sleep(Duration::from_millis(20));
            }
            outcome => return outcome.map(drop).map_err(Error::from),
        }
    }
}

/// `url` with its database replaced by `database`. Handles URLs
/// (`postgres://user@host/db?params`) and key=value connection strings.
pub fn url_with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // In a key=value string the last occurrence of a keyword wins.
        return format!("{url} dbname={database}");
    };
    let authority_start = scheme_end + 3;
    let query_start = url.find('?').unwrap_or(url.len());
    let path_start = url[authority_start..query_start]
        .find('/')
        .map_or(query_start, |offset| authority_start + offset);
    format!("{}/{database}{}", &url[..path_start], &url[query_start..])
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn url_with_database_replaces_only_the_database() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/t1"),
            (
                "postgres://u@h:5432/postgres?sslmode=disable",
                "postgres://u@h:5432/t1?sslmode=disable",
            ),
            ("postgres://u@h", "postgres://u@h/t1"),
            (
                "postgres://u@h?connect_timeout=5",
                "postgres://u@h/t1?connect_timeout=5",
            ),
            (
                "host=h user=u dbname=postgres",
                "host=h user=u dbname=postgres dbname=t1",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(url_with_database(url, "t1"), expected, "from {url}");
        }
    }
}
