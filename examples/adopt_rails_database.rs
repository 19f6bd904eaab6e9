//! Adopts a database that the Rails Tasker engine created and measures it.
//!
//! Builds a database in the engine's shape (`tasker_diesel::testing::RAILS_ENGINE_SCHEMA`)
//! holding `STEPS` steps (default 1,000,000: 250,000 four-step tasks with
//! Statesman histories), then times [`adopt_rails_schema`] and
//! [`backfill_readiness`], printing the backfill's progress, and checks the
//! result against the from-history oracle on a sample of tasks.
//!
//! ```text
//! cargo run --release --example adopt_rails_database            # 1M steps
//! STEPS=100000 BATCH=2000 cargo run --release --example adopt_rails_database
//! ```
//!
//! The database lives on `DATABASE_URL`'s server, or the local one, or a
//! throwaway cluster, as for the tests, and is dropped at the end.

use std::time::Instant;

use diesel::connection::SimpleConnection;
use tasker_diesel::adoption::{adopt_rails_schema, backfill_readiness};
use tasker_diesel::readiness::ReadinessDrift;
use tasker_diesel::testing::{fill_rails_engine_database, TestDatabase};

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = env_number("STEPS", 1_000_000);
    let batch = env_number("BATCH", 2_000);
    let tasks = i64::from(steps / 4);

    let db = TestDatabase::try_rails_engine()?;
    let mut conn = db.connection();
    let started = Instant::now();
    fill_rails_engine_database(&mut conn, tasks)?;
    conn.batch_execute("VACUUM ANALYZE")?;
    println!(
        "a Rails engine database with {tasks} tasks and {} steps, written in {:.1} s",
        tasks * 4,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let adoption = adopt_rails_schema(&mut conn)?;
    let converted = started.elapsed();
    println!(
        "adopt_rails_schema: {:.1} s ({} migrations; {} tasks to backfill)",
        converted.as_secs_f64(),
        adoption.migrations.len(),
        adoption.tasks_to_backfill
    );

    let started = Instant::now();
    let mut slowest = 0.0_f64;
    let mut last = Instant::now();
    let done = backfill_readiness(&mut conn, batch, |progress| {
        slowest = slowest.max(last.elapsed().as_secs_f64());
        last = Instant::now();
        if progress.batches % 25 == 0 || progress.tasks == progress.tasks_total {
            println!(
                "  backfill: {}/{} tasks, {} steps, {:.1} s",
                progress.tasks,
                progress.tasks_total,
                progress.steps,
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    let backfilled = started.elapsed();
    println!(
        "backfill_readiness: {:.1} s for {} tasks and {} steps in {} batches of {batch} \
         (longest batch {:.2} s)",
        backfilled.as_secs_f64(),
        done.tasks,
        done.steps,
        done.batches,
        slowest
    );
    let total = converted + backfilled;
    println!(
        "adoption: {:.1} s in all, {:.1} s per million steps",
        total.as_secs_f64(),
        total.as_secs_f64() * 1e6 / (tasks * 4) as f64
    );

    let sample: Vec<i64> = (1..=tasks)
        .step_by((tasks as usize / 1000).max(1))
        .collect();
    let drift = ReadinessDrift::load(&mut conn, Some(&sample))?;
    println!(
        "drift on {} sampled tasks: {} values",
        sample.len(),
        drift.len()
    );
    if !drift.is_empty() {
        return Err(format!(
            "the adopted readiness drifts: {:?}",
            &drift[..drift.len().min(5)]
        )
        .into());
    }
    Ok(())
}
