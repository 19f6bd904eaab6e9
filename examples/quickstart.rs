//! Builds a diamond workflow, moves its steps through their states and prints
//! what the readiness and execution-context functions say after each move.
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

use chrono::Utc;
use diesel::prelude::*;
use tasker_diesel::migrations::schema_version;
use tasker_diesel::models::*;
use tasker_diesel::schema::*;
use tasker_diesel::testing::LocalCluster;
use tasker_diesel::{
    establish_connection, run_pending_migrations, StepReadinessStatus, StepState,
    TaskExecutionContext,
};

const STEPS: [&str; 4] = ["validate", "reserve_stock", "charge_card", "ship_order"];
const EDGES: [(usize, usize); 4] = [(0, 1), (0, 2), (1, 3), (2, 3)];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Kept alive until the end of main: dropping it stops the cluster.
    let mut cluster = None;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            println!("DATABASE_URL is unset: starting a throwaway PostgreSQL cluster");
            cluster.insert(LocalCluster::start()?).url().to_owned()
        }
    };
    let mut conn = establish_connection(&url)?;

    let applied = run_pending_migrations(&mut conn)?;
    println!("applied {} migration(s)", applied.len());
    let version = schema_version(&mut conn)?.unwrap_or_else(|| "none".to_owned());
    println!("schema version: {version}");

    let (task, steps) = create_diamond(&mut conn)?;
    let id = |name: &str| steps[STEPS.iter().position(|step| *step == name).unwrap()];
    show(&mut conn, task.task_id, "created: only the root is ready")?;

    let moves: [(&str, &str, StepState); 9] = [
        ("validate", "in_progress", StepState::InProgress),
        ("validate", "complete", StepState::Complete),
        ("reserve_stock", "in_progress", StepState::InProgress),
        ("charge_card", "in_progress", StepState::InProgress),
        (
            "charge_card",
            "error: card declined, back off",
            StepState::Error,
        ),
        ("reserve_stock", "complete", StepState::Complete),
        ("charge_card", "retried by an operator", StepState::Pending),
        ("charge_card", "in_progress", StepState::InProgress),
        ("charge_card", "complete", StepState::Complete),
    ];
    for (step, what, to) in moves {
        move_step(&mut conn, id(step), to)?;
        show(&mut conn, task.task_id, &format!("{step} -> {what}"))?;
    }
    move_step(&mut conn, id("ship_order"), StepState::InProgress)?;
    move_step(&mut conn, id("ship_order"), StepState::Complete)?;
    show(
        &mut conn,
        task.task_id,
        "ship_order -> in_progress -> complete",
    )?;

    drop(cluster);
    Ok(())
}

/// Inserts the catalog rows (found again on a second run), a task and its
/// steps and edges, in one transaction.
fn create_diamond(conn: &mut PgConnection) -> QueryResult<(Task, Vec<i64>)> {
    conn.transaction(|conn| {
        let namespace: TaskNamespace = diesel::insert_into(tasker_task_namespaces::table)
            .values(NewTaskNamespace {
                name: "shop",
                description: None,
            })
            .on_conflict(tasker_task_namespaces::name)
            .do_update()
            .set(tasker_task_namespaces::name.eq(tasker_task_namespaces::name))
            .get_result(conn)?;
        let system: DependentSystem = diesel::insert_into(tasker_dependent_systems::table)
            .values(NewDependentSystem {
                name: "shop_api",
                description: None,
            })
            .on_conflict(tasker_dependent_systems::name)
            .do_update()
            .set(tasker_dependent_systems::name.eq(tasker_dependent_systems::name))
            .get_result(conn)?;
        let named_task: NamedTask = diesel::insert_into(tasker_named_tasks::table)
            .values(NewNamedTask {
                task_namespace_id: namespace.task_namespace_id,
                name: "fulfil_order",
                version: "1.0.0",
                description: None,
                configuration: None,
            })
            .on_conflict((
                tasker_named_tasks::task_namespace_id,
                tasker_named_tasks::name,
                tasker_named_tasks::version,
            ))
            .do_update()
            .set(tasker_named_tasks::name.eq(tasker_named_tasks::name))
            .get_result(conn)?;
        let identity = format!("quickstart-{}", Utc::now().timestamp_micros());
        let task: Task = diesel::insert_into(tasker_tasks::table)
            .values(NewTask::new(named_task.named_task_id, &identity))
            .get_result(conn)?;

        let mut step_ids = Vec::new();
        for name in STEPS {
            let named_step: NamedStep = diesel::insert_into(tasker_named_steps::table)
                .values(NewNamedStep {
                    dependent_system_id: system.dependent_system_id,
                    name,
                    description: None,
                })
                .on_conflict((
                    tasker_named_steps::dependent_system_id,
                    tasker_named_steps::name,
                ))
                .do_update()
                .set(tasker_named_steps::name.eq(tasker_named_steps::name))
                .get_result(conn)?;
            let step: WorkflowStep = diesel::insert_into(tasker_workflow_steps::table)
                .values(NewWorkflowStep {
                    task_id: task.task_id,
                    named_step_id: named_step.named_step_id,
                    ..NewWorkflowStep::default()
                })
                .get_result(conn)?;
            step_ids.push(step.workflow_step_id);
        }
        let edges: Vec<NewWorkflowStepEdge> = EDGES
            .iter()
            .map(|&(from, to)| NewWorkflowStepEdge {
                from_step_id: step_ids[from],
                to_step_id: step_ids[to],
                name: "provides",
            })
            .collect();
        diesel::insert_into(tasker_workflow_step_edges::table)
            .values(&edges)
            .execute(conn)?;
        Ok((task, step_ids))
    })
}

/// Records a step transition with the typed models and keeps the step's
/// flags in line, as a worker would. (The crate's write path will do this in
/// one SQL call.)
fn move_step(conn: &mut PgConnection, step_id: i64, to: StepState) -> QueryResult<()> {
    use tasker_workflow_step_transitions::dsl as t;
    use tasker_workflow_steps::dsl as s;
    conn.transaction(|conn| {
        let current: Option<WorkflowStepTransition> = t::tasker_workflow_step_transitions
            .filter(t::workflow_step_id.eq(step_id).and(t::most_recent))
            .select(WorkflowStepTransition::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        diesel::update(t::tasker_workflow_step_transitions)
            .filter(t::workflow_step_id.eq(step_id).and(t::most_recent))
            .set(t::most_recent.eq(false))
            .execute(conn)?;
        diesel::insert_into(t::tasker_workflow_step_transitions)
            .values(NewWorkflowStepTransition {
                workflow_step_id: step_id,
                to_state: to,
                from_state: current.as_ref().map(|row| row.to_state),
                metadata: None,
                sort_key: current.as_ref().map_or(1, |row| row.sort_key + 1),
                most_recent: true,
            })
            .execute(conn)?;
        let now = Utc::now().naive_utc();
        let step = diesel::update(s::tasker_workflow_steps.find(step_id));
        match to {
            StepState::InProgress => step
                .set((
                    s::in_process.eq(true),
                    s::attempts.eq(s::attempts + 1),
                    s::last_attempted_at.eq(now),
                ))
                .execute(conn)?,
            StepState::Complete => step
                .set((
                    s::in_process.eq(false),
                    s::processed.eq(true),
                    s::processed_at.eq(now),
                ))
                .execute(conn)?,
            _ => step.set(s::in_process.eq(false)).execute(conn)?,
        };
        Ok(())
    })
}

/// Prints the readiness of every step and the task's execution context.
fn show(conn: &mut PgConnection, task_id: i64, title: &str) -> QueryResult<()> {
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
    println!(
        "task {}: {} -> {}, {}% complete, {} (ready {}, in progress {}, failed {})",
        context.task_id,
        context.execution_status,
        context.recommended_action,
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
