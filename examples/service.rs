//! A small service on the worker runtime: three handlers, one of them flaky
//! and one slow, run 20 orders to completion with a progress bar.
//!
//! ```sh
//! cargo run --example service                     # a throwaway PostgreSQL cluster
//! DATABASE_URL=postgres://... cargo run --example service
//! ```
//!
//! - `fetch_order` reads the order from the task's context;
//! - `charge_card` reads its parent's result and fails its first attempt for
//!   one order in three (a gateway timeout, retried after a second);
//! - `render_invoice` takes 3 s, longer than the 2 s lease: the runtime's
//!   heartbeat extends the claim while it runs, so no other worker takes it.
//!
//! The sweeper finalizes each task once its last step is done.

use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::r2d2::ConnectionManager;
use diesel::PgConnection;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tasker_diesel::pool::pool_builder;
use tasker_diesel::testing::LocalCluster;
use tasker_diesel::worker::{Handlers, StepFailure, Worker};
use tasker_diesel::workflow::{create_tasks, StepTemplate, TaskRequest, TaskTemplate};
use tasker_diesel::{establish_connection, run_pending_migrations};

const ORDERS: usize = 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let (url, cluster) = LocalCluster::from_env_or_start()?;
    let mut conn = establish_connection(&url)?;
    run_pending_migrations(&mut conn)?;

    let template = TaskTemplate::new("shop", "checkout", "1")
        .step(StepTemplate::new("fetch_order"))
        .step(StepTemplate::new("charge_card").depends_on(["fetch_order"]))
        .step(StepTemplate::new("render_invoice").depends_on(["charge_card"]));
    // A run id in the context: reruns create new tasks (identity hashes differ).
    let run = Utc::now().timestamp_micros();
    let requests: Vec<TaskRequest<'_>> = (0..ORDERS)
        .map(|order| {
            TaskRequest::new(&template)
                .context(json!({ "run": run, "order_id": order, "amount_cents": 1_000 + order }))
        })
        .collect();
    create_tasks(&mut conn, &requests)?;

    let handlers = Handlers::new()
        .on("fetch_order", |step| {
            let order = step.task_context()?.cloned().unwrap_or_default();
            Ok(json!({ "order_id": order["order_id"], "amount_cents": order["amount_cents"] }))
        })
        .on("charge_card", |step| {
            let order = step
                .parent_result("fetch_order")?
                .cloned()
                .unwrap_or_default();
            let flaky = order["order_id"].as_u64().unwrap_or(0) % 3 == 0;
            if flaky && step.attempt() == 1 {
                return Err(
                    StepFailure::retryable(json!({ "message": "gateway timeout" }))
                        .retry_after(Duration::from_secs(1)),
                );
            }
            Ok(json!({ "charged_cents": order["amount_cents"], "attempt": step.attempt() }))
        })
        .on("render_invoice", |step| {
            thread::sleep(Duration::from_secs(3));
            let charge = step
                .parent_result("charge_card")?
                .cloned()
                .unwrap_or_default();
            Ok(json!({ "invoice_for_cents": charge["charged_cents"] }))
        });

    let pool = pool_builder()
        .max_size(8)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let started = Instant::now();
    let worker = Worker::builder(pool, handlers)
        .threads(6)
        .batch(2)
        .lease(Duration::from_secs(2))
        .sweep_every(Duration::from_millis(500))
        .build()?
        .start();

    let bar = ProgressBar::new(ORDERS as u64).with_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} orders done, {msg}",
    )?);
    while worker.stats().finalized < ORDERS as u64 {
        let stats = worker.stats();
        bar.set_position(stats.finalized);
        bar.set_message(format!(
            "{} steps done, {} failed and retried",
            stats.completed, stats.failed
        ));
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the orders did not finish in 2 minutes".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bar.finish_and_clear();
    let summary = worker.shutdown(Duration::from_secs(10));
    let stats = summary.stats;
    println!(
        "{ORDERS} orders done in {:.1} s: {} steps completed, {} failed and retried, \
         {} claims lost; {:.1} s in handlers",
        started.elapsed().as_secs_f64(),
        stats.completed,
        stats.failed,
        stats.lost,
        stats.handler_time.as_secs_f64()
    );
    drop(cluster);
    Ok(())
}
