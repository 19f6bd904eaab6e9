//! The PostgreSQL core of a workflow engine for synchronous Rust services.
//!
//! The crate owns the Tasker schema (its Diesel migrations, embedded in
//! [`migrations::MIGRATIONS`]), typed models of every table ([`models`]) and
//! the state enums ([`enums`]), plus connection helpers ([`pool`]). With the
//! `testing` feature, `testing` hands each test a freshly migrated database.
//!
//! The README follows; its Rust examples are compiled as doc tests.
#![doc = ""]
#![doc = include_str!("../README.md")]

pub mod enums;
pub mod error;
pub mod migrations;
pub mod models;
pub mod pool;
#[rustfmt::skip]
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;

pub use enums::{StepState, TaskState};
pub use error::{Error, IntegrityRule, Result};
pub use migrations::{run_pending_migrations, MIGRATIONS};
pub use pool::{build_pool, establish_connection, PgPool, PooledPgConnection};
