//! Creating work through the crate's API (C1-C4), on a freshly migrated
//! database of its own, so what it writes never mixes with a dataset.
//!
//! - C1 / C2: `create_tasks` in batches of 100 tasks, of the dataset's five
//!   shapes mixed / of one step each, for a fixed time after a warm-up;
//!   steps created per second, and the latency of a batch.
//! - C3: `create_task` of a 10,000-step chain, a 5,000 -> 1 fan-in and a
//!   100 x 100 layered DAG (each step below the first layer depending on two
//!   of the layer above), once to store the catalog rows, then timed.
//! - C4: `calculate_dependency_levels` on the chain.

use std::time::{Duration, Instant};

use diesel::{sql_query, Connection, PgConnection, RunQueryDsl};
use serde_json::json;
use tasker_diesel::migrations::run_pending_migrations;
use tasker_diesel::readiness::DependencyLevel;
use tasker_diesel::testing::url_with_database;
use tasker_diesel::workflow::{create_task, create_tasks, StepTemplate, TaskRequest, TaskTemplate};

use crate::report::WorkloadResult;
use crate::stats::Latencies;
use crate::workloads::Settings;
use crate::BoxResult;

const DATABASE: &str = "tasker_bench_creation";

/// Tasks per `create_tasks` call in C1 and C2.
const BATCH_TASKS: usize = 100;

/// Timed creations of each C3 graph, after the one that stores its catalog.
const GRAPH_REPEATS: usize = 3;

/// What the creation workloads measured, with remarks for the report.
pub struct CreationRun {
    pub results: Vec<WorkloadResult>,
    pub notes: Vec<String>,
}

pub fn run(server_url: &str, settings: &Settings) -> BoxResult<CreationRun> {
    let mut admin = PgConnection::establish(server_url)?;
    sql_query(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&mut admin)?;
    sql_query(format!("CREATE DATABASE {DATABASE}")).execute(&mut admin)?;
    let mut conn = PgConnection::establish(&url_with_database(server_url, DATABASE))?;
    run_pending_migrations(&mut conn)?;

    let mut run = CreationRun {
        results: Vec::new(),
        notes: Vec::new(),
    };
    let mixed = mixed_shapes();
    let mixed_batch: Vec<&TaskTemplate> = mixed.iter().cycle().take(BATCH_TASKS).collect();
    run.results.push(batches(
        &mut conn,
        settings,
        "C1",
        "create_tasks: 100 tasks per call, 20 of each of the dataset's five shapes (4,320 steps)",
        &mixed_batch,
    )?);
    let single = TaskTemplate::new("bench", "single", "1").step(StepTemplate::new("only"));
    let single_batch = vec![&single; BATCH_TASKS];
    run.results.push(batches(
        &mut conn,
        settings,
        "C2",
        "create_tasks: 100 one-step tasks per call",
        &single_batch,
    )?);

    let long_chain = chain("long_chain", 10_000);
    for (id, description, template) in [
        ("C3 chain", "create_task: a 10,000-step chain", &long_chain),
        (
            "C3 fan-in",
            "create_task: 5,000 roots and their one child",
            &fan_in("wide_fan_in", 5_000),
        ),
        (
            "C3 layered",
            "create_task: 100 layers of 100 steps, two parents each",
            &layered("big_layered", 100, 100),
        ),
    ] {
        let (result, first) = graph(&mut conn, id, description, template)?;
        run.notes.push(format!(
            "{id}: the first creation, which also stores the catalog rows, took {:.3} s",
            first.as_secs_f64()
        ));
        run.results.push(result);
    }

    let chain_task = create_task(
        &mut conn,
        &TaskRequest::new(&long_chain).context(json!({ "levels": true })),
    )?
    .task
    .task_id;
    analyze(&mut conn)?;
    print!("C4 ");
    let mut latencies = Latencies::default();
    let calls = settings.calls.min(200);
    for call in 0..settings.warmup.min(10) + calls {
        let clock = Instant::now();
        let levels = DependencyLevel::load(&mut conn, chain_task)?;
        let elapsed = clock.elapsed();
        if levels.len() != 10_000 {
            return Err(format!("C4: {} levels for a 10,000-step chain", levels.len()).into());
        }
        if call >= settings.warmup.min(10) {
            latencies.push(elapsed);
        }
    }
    run.results.push(record(
        "C4",
        "calculate_dependency_levels on the 10,000-step chain",
        &latencies,
        None,
    ));
    drop(conn);
    sql_query(format!("DROP DATABASE {DATABASE} WITH (FORCE)")).execute(&mut admin)?;
    Ok(run)
}

/// Calls `create_tasks` with one request per template of `batch` (each with a
/// context of its own) until `settings.creation_time` has passed, at least
/// three times.
fn batches(
    conn: &mut PgConnection,
    settings: &Settings,
    id: &str,
    description: &str,
    batch: &[&TaskTemplate],
) -> BoxResult<WorkloadResult> {
    print!("{id} ");
    let steps_per_batch: usize = batch.iter().map(|template| template.steps.len()).sum();
    let mut latencies = Latencies::default();
    let mut serial = 0u64;
    let mut started = Instant::now();
    // The first batches are a warm-up, the statistics analysed after them.
    let warmup = settings.warmup.min(5);
    for call in 0.. {
        if call >= warmup + 3 && started.elapsed() >= settings.creation_time {
            break;
        }
        if call == warmup {
            analyze(conn)?;
            started = Instant::now();
        }
        let requests: Vec<TaskRequest<'_>> = batch
            .iter()
            .map(|template| {
                serial += 1;
                TaskRequest::new(template).context(json!({ "workload": id, "serial": serial }))
            })
            .collect();
        let clock = Instant::now();
        let created = create_tasks(conn, &requests)?;
        if call >= warmup {
            latencies.push(clock.elapsed());
        }
        if created.iter().any(|task| !task.created) {
            return Err(format!("{id}: a new request returned an existing task").into());
        }
    }
    let busy: Duration = latencies.total();
    let rate = (latencies.len() * steps_per_batch) as f64 / busy.as_secs_f64();
    Ok(record(id, description, &latencies, Some(rate)))
}

/// Creates `template` once (storing its catalog rows), then
/// [`GRAPH_REPEATS`] times more, timed; returns those and the first time.
fn graph(
    conn: &mut PgConnection,
    id: &str,
    description: &str,
    template: &TaskTemplate,
) -> BoxResult<(WorkloadResult, Duration)> {
    print!("{id} ");
    let mut latencies = Latencies::default();
    let mut first = Duration::ZERO;
    for repeat in 0..=GRAPH_REPEATS {
        let request = TaskRequest::new(template).context(json!({ "repeat": repeat }));
        let clock = Instant::now();
        let created = create_task(conn, &request)?;
        let elapsed = clock.elapsed();
        if created.steps.len() != template.steps.len() {
            return Err(format!("{id}: {} steps created", created.steps.len()).into());
        }
        if repeat == 0 {
            first = elapsed;
            analyze(conn)?;
        } else {
            latencies.push(elapsed);
        }
    }
    let description = format!("{description}, catalog rows already stored");
    Ok((record(id, &description, &latencies, None), first))
}

/// Autovacuum would analyse the growing tables; on a server where it is off
/// (as on the benchmark's), plans made while the tables were empty would scan
/// them for good.
pub(crate) fn analyze(conn: &mut PgConnection) -> BoxResult<()> {
    sql_query("VACUUM ANALYZE").execute(conn)?;
    Ok(())
}

fn record(
    id: &str,
    description: &str,
    latencies: &Latencies,
    steps_per_second: Option<f64>,
) -> WorkloadResult {
    let result = WorkloadResult {
        id: id.to_owned(),
        description: description.to_owned(),
        calls: latencies.len() as u64,
        p50_ms: latencies.quantile_ms(0.5),
        p99_ms: latencies.quantile_ms(0.99),
        max_ms: latencies.max_ms(),
        mean_ms: latencies.mean_ms(),
        buffers_per_call: None,
        steps_per_second,
        duplicate_claims: None,
    };
    println!(
        "{} calls, p50 {:.3} ms{}",
        result.calls,
        result.p50_ms.unwrap_or(f64::NAN),
        steps_per_second.map_or(String::new(), |rate| format!(", {rate:.0} steps/s"))
    );
    result
}

/// `length` steps, each depending on the one before.
/// The dataset's five shapes, one template each.
pub(crate) fn mixed_shapes() -> [TaskTemplate; 5] {
    [
        chain("chain", 10),
        diamond(),
        layered("layered", 10, 10),
        fan_out(50),
        fan_in("fan_in", 50),
    ]
}

pub(crate) fn chain(name: &str, length: usize) -> TaskTemplate {
    (0..length).fold(TaskTemplate::new("bench", name, "1"), |template, index| {
        let step = StepTemplate::new(format!("s{index}"));
        template.step(match index {
            0 => step,
            _ => step.depends_on([format!("s{}", index - 1)]),
        })
    })
}

/// a -> (b, c) -> d.
pub(crate) fn diamond() -> TaskTemplate {
    TaskTemplate::new("bench", "diamond", "1")
        .step(StepTemplate::new("a"))
        .step(StepTemplate::new("b").depends_on(["a"]))
        .step(StepTemplate::new("c").depends_on(["a"]))
        .step(StepTemplate::new("d").depends_on(["b", "c"]))
}

/// `layers` layers of `width` steps; each step below the first depends on the
/// step above it and on that step's right neighbour (wrapping around).
pub(crate) fn layered(name: &str, layers: usize, width: usize) -> TaskTemplate {
    let step_name = |layer: usize, position: usize| format!("l{layer}_{position}");
    let mut template = TaskTemplate::new("bench", name, "1");
    for layer in 0..layers {
        for position in 0..width {
            let step = StepTemplate::new(step_name(layer, position));
            template = template.step(match layer {
                0 => step,
                _ => step.depends_on([
                    step_name(layer - 1, position),
                    step_name(layer - 1, (position + 1) % width),
                ]),
            });
        }
    }
    template
}

/// One root and its `children`.
pub(crate) fn fan_out(children: usize) -> TaskTemplate {
    (0..children).fold(
        TaskTemplate::new("bench", "fan_out", "1").step(StepTemplate::new("root")),
        |template, index| {
            template.step(StepTemplate::new(format!("c{index}")).depends_on(["root"]))
        },
    )
}

/// `roots` roots and one child depending on all of them.
pub(crate) fn fan_in(name: &str, roots: usize) -> TaskTemplate {
    let names: Vec<String> = (0..roots).map(|index| format!("r{index}")).collect();
    names
        .iter()
        .fold(TaskTemplate::new("bench", name, "1"), |template, root| {
            template.step(StepTemplate::new(root.clone()))
        })
        .step(StepTemplate::new("sink").depends_on(names))
}
