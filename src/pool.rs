//! Connections: single connections and r2d2 pools of [`PgConnection`].

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::Connection;

use crate::error::Result;

/// An r2d2 pool of PostgreSQL connections.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// A connection checked out of a [`PgPool`].
pub type PooledPgConnection = PooledConnection<ConnectionManager<PgConnection>>;

/// Opens one connection to `database_url`.
pub fn establish_connection(database_url: &str) -> Result<PgConnection> {
    Ok(PgConnection::establish(database_url)?)
}

/// A pool builder with r2d2's defaults (10 connections, each checked on
/// checkout, 30 s to get one), to adjust before calling `build`.
pub fn pool_builder() -> diesel::r2d2::Builder<ConnectionManager<PgConnection>> {
    Pool::builder()
}

/// Builds a pool for `database_url`, failing if no connection can be opened.
pub fn build_pool(database_url: &str) -> Result<PgPool> {
    Ok(pool_builder().build(ConnectionManager::new(database_url))?)
}
