//! Reads routed to PostgreSQL hot standbys: a workflow is written on the
//! primary, and its readiness and execution context are read from a standby
//! when one is fresh enough, else from the primary.
//!
//! ```sh
//! cargo run --example read_replicas      # a throwaway primary and hot standby
//! DATABASE_URL=postgres://app@primary/tasker \
//! TASKER_STANDBY_URLS=postgres://app@standby-1/tasker,postgres://app@standby-2/tasker \
//!     cargo run --example read_replicas  # your own servers
//! ```
//!
//! With the throwaway pair it also pauses the standby's replay, to show a
//! stale standby passed over, and stops it, to show it skipped.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use tasker_diesel::readiness::SystemHealthCounts;
use tasker_diesel::replicas::{Freshness, RoutedConnection, RoutedPool};
use tasker_diesel::testing::ReplicatedCluster;
use tasker_diesel::workflow::{
    claim_ready_steps, create_task, ClaimRequest, StepTemplate, TaskRequest, TaskTemplate,
};
use tasker_diesel::{establish_connection, run_pending_migrations, TaskExecutionContext};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The pair, if one was started, lives until the end of main.
    let (primary_url, standby_urls, cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let standbys = std::env::var("TASKER_STANDBY_URLS").unwrap_or_default();
            let standbys = standbys
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect();
            (url, standbys, None)
        }
        Err(_) => {
            println!("DATABASE_URL is unset: starting a throwaway primary and hot standby");
            let cluster = ReplicatedCluster::start()?;
            let primary_url = cluster.primary_url().to_owned();
            let standby_urls = vec![cluster.standby_url().to_owned()];
            (primary_url, standby_urls, Some(cluster))
        }
    };
    let applied = run_pending_migrations(&mut establish_connection(&primary_url)?)?;
    println!("applied {} migration(s) on the primary", applied.len());
    println!("{} standby(s)", standby_urls.len());
    let pool = RoutedPool::connect(&primary_url, &standby_urls)?;

    // Writes take the primary; `write` also returns the WAL position after
    // the commit, for reads that must see it.
    let template = TaskTemplate::new("shop", "fulfil_order", "1.0.0")
        .step(StepTemplate::new("validate"))
        .step(StepTemplate::new("ship_order").depends_on(["validate"]));
    let request =
        TaskRequest::new(&template).context(json!({ "order": Utc::now().timestamp_micros() }));
    let (created, lsn) = pool.write(|conn| create_task(conn, &request))?;
    let task_id = created.task.task_id;
    println!("\ncreated task {task_id} on the primary; its commit ends at WAL position {lsn}");

    let own_write = Freshness::any()
        .at_least(lsn)
        .wait_up_to(Duration::from_secs(1));
    show(
        &pool,
        &own_write,
        task_id,
        "read-your-writes, waiting up to 1 s",
    )?;
    let dashboard = Freshness::within(Duration::from_secs(5));
    show(&pool, &dashboard, task_id, "at most 5 s behind")?;
    let mut conn = pool.read(&dashboard)?;
    let health = SystemHealthCounts::load(&mut conn)?;
    drop(conn);
    println!(
        "    health: {} tasks, {} steps",
        health.total_tasks, health.total_steps
    );

    let Some(cluster) = cluster else {
        return Ok(());
    };

    println!("\n== the standby's replay paused; a claim is committed on the primary");
    cluster.pause_replay()?;
    let claim = ClaimRequest::for_tasks(std::slice::from_ref(&task_id), 1, Duration::from_secs(60));
    let (claimed, lsn) = pool.write(|conn| claim_ready_steps(conn, &claim))?;
    println!("claimed {} at WAL position {lsn}", claimed[0].name);
    cluster.wait_for_receipt()?;
    std::thread::sleep(Duration::from_millis(300));
    let tight = Freshness::within(Duration::from_millis(100));
    show(&pool, &tight, task_id, "at most 100 ms behind")?;
    show(
        &pool,
        &Freshness::any(),
        task_id,
        "any lag (stale: no step in progress)",
    )?;
    show(
        &pool,
        &Freshness::any().at_least(lsn),
        task_id,
        "read-your-writes",
    )?;
    cluster.resume_replay()?;
    cluster.wait_for_replay()?;
    println!("\n== replay resumed");
    show(&pool, &tight, task_id, "at most 100 ms behind")?;

    println!("\n== the standby stopped");
    cluster.stop_standby()?;
    show(&pool, &Freshness::any(), task_id, "any lag")?;
    show(&pool, &Freshness::any(), task_id, "any lag, again")?;
    drop(pool);
    drop(cluster);
    Ok(())
}

/// Reads the task's execution context with `freshness` and prints who
/// served it, how fast, and which standbys were passed over.
fn show(
    pool: &RoutedPool,
    freshness: &Freshness,
    task_id: i64,
    title: &str,
) -> tasker_diesel::Result<()> {
    let started = Instant::now();
    let mut conn = pool.read(freshness)?;
    let checkout = started.elapsed();
    let context = TaskExecutionContext::find(&mut conn, task_id)?;
    println!(
        "  {title}: {} in {:.1} ms{}",
        conn.node(),
        checkout.as_secs_f64() * 1000.0,
        skipped(&conn)
    );
    match context {
        Some(context) => println!(
            "    task {task_id}: {} steps, {} in progress, {} ready, {}",
            context.total_steps,
            context.in_progress_steps,
            context.ready_steps,
            context.execution_status
        ),
        None => println!("    task {task_id}: not there yet"),
    }
    Ok(())
}

fn skipped(conn: &RoutedConnection) -> String {
    conn.skipped()
        .iter()
        .map(|skip| format!("; skipped standby {}: {}", skip.standby, skip.reason))
        .collect()
}
