//! Test support: a freshly migrated database per test, on a real PostgreSQL.
//!
//! ```no_run
//! use tasker_diesel::testing::TestDatabase;
//!
//! let db = TestDatabase::new();
//! let mut conn = db.connection();
//! // ... the database is dropped when `db` goes out of scope.
//! ```
//!
//! Which server the databases live on is decided once per process:
//!
//! 1. `DATABASE_URL`, when set: databases are created beside the one it names
//!    (the role needs `CREATEDB`).
//! 2. Otherwise the local server at `postgres://postgres@127.0.0.1:5432`, when
//!    one answers.
//! 3. Otherwise a throwaway cluster ([`LocalCluster`]) started from the
//!    system's PostgreSQL binaries and removed when the process exits.
//!
//! Each [`TestDatabase`] is cloned from a template database that is migrated
//! once per set of migration files and reused across test runs, so a new
//! database costs one `CREATE DATABASE ... TEMPLATE`, not a migration run.
//!
//! For reads routed to standbys ([`crate::replicas`]), [`ReplicatedCluster`]
//! starts a throwaway primary and a hot standby streaming from it.

mod cluster;
mod database;
mod replication;
mod server;

pub use cluster::LocalCluster;
pub use database::{
    fill_rails_engine_database, url_with_database, TestDatabase, RAILS_ENGINE_SCHEMA,
};
pub use replication::ReplicatedCluster;
pub use server::server_url;

/// A name part unique to this process and call: process id, a counter and
/// the clock's nanoseconds (against pid reuse across runs).
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!(
        "{}_{}_{nanos:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
