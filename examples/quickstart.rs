//! Builds a diamond workflow from a template, runs its steps through the
//! write path (claim, complete, fail and retry, finalize) and prints what the
//! readiness and execution-context functions say after each move.
//!
//! ```sh
//! cargo run --example quickstart                       # a throwaway PostgreSQL cluster
//! DATABASE_URL=postgres://... cargo run --example quickstart   # an existing database
//! ```
//!
//! ```text
//!            validate
//!           /        \
//!   reserve_stock   charge_card
//!           \        /
//!            ship_order
//! ```

use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::PgConnection;
use serde_json::json;
use tasker_diesel::migrations::schema_version;
use tasker_diesel::testing::LocalCluster;
use tasker_diesel::workflow::{
    claim_ready_steps, complete_step, create_task, fail_step, finalize_task, ClaimRequest,
    ClaimedStep, StepTemplate, TaskRequest, TaskTemplate,
};
use tasker_diesel::{
    establish_connection, run_pending_migrations, StepReadinessStatus, TaskExecutionContext,
};

/// How long each claim holds; every step here finishes well within it.
const LEASE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The cluster, if one was started, lives until the end of main.
    let (url, cluster) = LocalCluster::from_env_or_start()?;
    let mut conn = establish_connection(&url)?;

    let applied = run_pending_migrations(&mut conn)?;
    println!("applied {} migration(s)", applied.len());
    let version = schema_version(&mut conn)?.unwrap_or_else(|| "none".to_owned());
    println!("schema version: {version}");

    let template = TaskTemplate::new("shop", "fulfil_order", "1.0.0")
        .step(StepTemplate::new("validate"))
        .step(StepTemplate::new("reserve_stock").depends_on(["validate"]))
        .step(StepTemplate::new("charge_card").depends_on(["validate"]))
        .step(StepTemplate::new("ship_order").depends_on(["reserve_stock", "charge_card"]));
    // The context is part of the task's identity hash: a new order number per
    // run gives a new task, where the same one would find the existing task.
    let order = Utc::now().timestamp_micros();
    let request = TaskRequest::new(&template).context(json!({ "order": order }));
    let created = create_task(&mut conn, &request)?;
    let task_id = created.task.task_id;
    let title = format!("created task {task_id} (created: {})", created.created);
    show(&mut conn, task_id, &title)?;

    let validate = claim(&mut conn, task_id)?.remove(0);
    complete_step(&mut conn, validate.claim(), &json!({ "valid": true }))?;
    show(
        &mut conn,
        task_id,
        "validate -> complete: both branches are ready",
    )?;

    let branches = claim(&mut conn, task_id)?;
    let [reserve, charge] = ["reserve_stock", "charge_card"]
        .map(|name| branches.iter().find(|step| step.name == name).unwrap());
    show(&mut conn, task_id, "claimed reserve_stock and charge_card")?;

    let declined = json!({ "message": "card declined" });
    fail_step(
        &mut conn,
        charge.claim(),
        &declined,
        Some(Duration::from_secs(1)),
    )?;
    complete_step(&mut conn, reserve.claim(), &json!({ "reserved": 1 }))?;
    show(
        &mut conn,
        task_id,
        "charge_card -> error (retry after 1 s; the 2 s failure backoff is later), \
         reserve_stock -> complete",
    )?;

    // Nothing is claimable until the backoff has passed: poll as a worker would.
    let waiting = Instant::now();
    let retry = loop {
        match claim(&mut conn, task_id)?.pop() {
            Some(step) => break step,
            None => thread::sleep(Duration::from_millis(100)),
        }
    };
    let title = format!(
        "claimed {} again after waiting {:.1} s for its backoff (attempt {})",
        retry.name,
        waiting.elapsed().as_secs_f64(),
        retry.attempt
    );
    show(&mut conn, task_id, &title)?;
    complete_step(&mut conn, retry.claim(), &json!({ "charged": true }))?;

    let ship = claim(&mut conn, task_id)?.remove(0);
    complete_step(&mut conn, ship.claim(), &json!({ "tracking": "TRK-1" }))?;
    show(
        &mut conn,
        task_id,
        "charge_card, then ship_order -> complete",
    )?;

    let state = finalize_task(&mut conn, task_id, None)?;
    show(
        &mut conn,
        task_id,
        &format!("finalize_task: the task is {state}"),
    )?;

    drop(cluster);
    Ok(())
}

/// Claims the task's ready steps, as a worker would.
fn claim(conn: &mut PgConnection, task_id: i64) -> tasker_diesel::Result<Vec<ClaimedStep>> {
    claim_ready_steps(conn, &ClaimRequest::for_tasks(&[task_id], 4, LEASE))
}

/// Prints the readiness of every step and the task's execution context.
fn show(conn: &mut PgConnection, task_id: i64, title: &str) -> tasker_diesel::Result<()> {
    println!("\n== {title}");
    println!(
        "{:<14} {:<12} {:>7} {:>8} {:>5} {:>8}  next retry at (UTC)",
        "step", "state", "parents", "attempts", "ready", "eligible"
    );
    for row in StepReadinessStatus::for_task(task_id).load(conn)? {
        let next_retry = row.next_retry_at.map_or_else(
            || "-".to_owned(),
            |at| at.format("%H:%M:%S%.3f").to_string(),
        );
        println!(
            "{:<14} {:<12} {:>7} {:>8} {:>5} {:>8}  {next_retry}",
            row.name,
            row.current_state.as_str(),
            format!("{}/{}", row.completed_parents, row.total_parents),
            format!("{}/{}", row.attempts, row.retry_limit),
            yes_no(row.ready_for_execution),
            yes_no(row.retry_eligible),
        );
    }
    let context = TaskExecutionContext::find(conn, task_id)?.expect("the task exists");
    // next_action: the recommended action, or none once the task is finished.
    let next = context.next_action().map_or_else(
        || "nothing left to do".to_owned(),
        |action| action.to_string(),
    );
    println!(
        "task {} ({}): {} -> {}, {}% complete, {} (ready {}, in progress {}, failed {})",
        context.task_id,
        context.status,
        context.execution_status,
        next,
        context.completion_percentage,
        context.health_status,
        context.ready_steps,
        context.in_progress_steps,
        context.failed_steps,
    );
    Ok(())
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}
