//! Dispatching work (W7j, W7b, W7m, W8, W9, W10): workers claiming steps and
//! reporting their results through the crate's API, each workload on a
//! freshly migrated database of its own holding only its tasks.
//!
//! - W7j: one-step tasks (the job-queue shape), `claim_ready_steps` of one
//!   step then `complete_step`: two round trips and two commits per step.
//! - W7b: the same tasks through `report_and_claim`, ten steps per call: one
//!   round trip and one commit per ten steps.
//! - W7m: W7b on the dataset's five shapes mixed.
//! - W8: the 5,000 parents of one fan-in child; W9: one task of 10,000
//!   independent steps; each with 1 and with 8 workers.
//! - W10: a 50-step chain run by 4 workers that sleep in
//!   `wait_for_claimable_work` while idle: the latency of each hop, from the
//!   parent's completion (its commit returned) to the child's claim.
//!
//! Idle workers never poll: they sleep in `wait_for_claimable_work`. Server
//! time comes from `pg_stat_user_functions` (track_functions = all for the
//! database), commits from `pg_stat_database`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Double, Text};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tasker_diesel::migrations::run_pending_migrations;
use tasker_diesel::pool::{pool_builder, PgPool};
use tasker_diesel::testing::url_with_database;
use tasker_diesel::worker::{Handlers, StepFailure, Worker};
use tasker_diesel::workflow::{
    claim_ready_steps, complete_step, create_tasks, report_and_claim, wait_for_claimable_work,
    Claim, ClaimRequest, StepReport, StepTemplate, TaskRequest, TaskTemplate,
};

use crate::creation::{analyze, chain, fan_in, mixed_shapes};
use crate::stats::Latencies;
use crate::BoxResult;

const DATABASE: &str = "tasker_bench_dispatch";

/// How long a worker sleeps in `wait_for_claimable_work` at most before it
/// looks again (a missed notification costs no more).
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Steps claimed per `report_and_claim` in the batched workloads.
const BATCH: u32 = 10;

/// A workload stops after this long even when work is left (the report says
/// how many steps it moved).
const TIME_LIMIT: Duration = Duration::from_secs(30);

/// The figures of one dispatch workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchResult {
    /// "W7j", "W7b", "W7m", "W8", "W9" (with "-1" for one worker), "W10".
    pub id: String,
    pub description: String,
    pub workers: usize,
    /// Steps completed.
    pub steps: u64,
    /// From the start to the last completion.
    pub seconds: f64,
    pub steps_per_second: f64,
    /// Server time of the crate's calls (their top-level functions) per step.
    pub server_ms_per_step: Option<f64>,
    /// Server time per call of each top-level function, with its calls.
    pub server_ms_per_call: Vec<FunctionTime>,
    /// Commits of the database per step completed (every autocommit
    /// statement counts, the idle waits' included).
    pub commits_per_step: Option<f64>,
    /// Steps completed more than once; must be 0.
    pub duplicates: u64,
    /// W10: hop latency.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The mean server time of one SQL function's calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTime {
    pub function: String,
    pub calls: u64,
    pub ms_per_call: f64,
}

/// How the workers call the crate.
#[derive(Debug, Clone, Copy)]
enum Calls {
    /// `claim_ready_steps` of one step, then `complete_step`.
    OneByOne,
    /// `report_and_claim` of [`BATCH`] steps, reporting the previous ones.
    Batched,
    /// The worker runtime (`tasker_diesel::worker`), [`BATCH`] steps per
    /// call, its sweeper finalizing the tasks or not.
    Runtime { finalize: bool },
}

impl Calls {
    fn functions(self) -> &'static [&'static str] {
        match self {
            Calls::OneByOne => &["tasker_claim_ready_steps", "tasker_complete_step"],
            Calls::Batched | Calls::Runtime { finalize: false } => &["tasker_report_and_claim"],
            Calls::Runtime { finalize: true } => {
                &["tasker_report_and_claim", "tasker_finalize_settled_tasks"]
            }
        }
    }
}

struct Workload<'a> {
    id: &'static str,
    description: String,
    templates: Vec<&'a TaskTemplate>,
    tasks: usize,
    workers: usize,
    calls: Calls,
    /// Claim only from the workload's tasks (W8, W9: one task).
    own_tasks_only: bool,
}

pub fn run(server_url: &str, only: &[String]) -> BoxResult<Vec<DispatchResult>> {
    let single = TaskTemplate::new("bench", "job", "1").step(StepTemplate::new("run"));
    let mixed = mixed_shapes();
    let wide = fan_in("wide_fan_in", 5_000);
    let flat = independent(10_000);
    let job_queue = |id, tasks, workers, calls| Workload {
        id,
        description: format!(
            "{tasks} one-step tasks, {workers} worker{}, {}",
            if workers == 1 { "" } else { "s" },
            match calls {
                Calls::OneByOne => "claim_ready_steps (1 step) + complete_step",
                Calls::Batched => "report_and_claim (10 steps per call)",
                Calls::Runtime { finalize: false } =>
                    "the worker runtime (10 steps per call), tasks left unfinalized as in W7b",
                Calls::Runtime { finalize: true } =>
                    "the worker runtime (10 steps per call), its sweeper finalizing every task",
            }
        ),
        templates: vec![&single],
        tasks,
        workers,
        calls,
        own_tasks_only: false,
    };
    fn one_task<'t>(
        id: &'static str,
        what: &str,
        workers: usize,
        steps: &'t TaskTemplate,
    ) -> Workload<'t> {
        Workload {
            id,
            description: format!(
                "{what}, {workers} worker{}, report_and_claim (10 steps per call)",
                if workers == 1 { "" } else { "s" }
            ),
            templates: vec![steps],
            tasks: 1,
            workers,
            calls: Calls::Batched,
            own_tasks_only: true,
        }
    }
    let workloads = [
        job_queue("W7j-1", 2_000, 1, Calls::OneByOne),
        job_queue("W7b-1", 5_000, 1, Calls::Batched),
        job_queue("W7j", 8_000, 4, Calls::OneByOne),
        job_queue("W7b", 30_000, 4, Calls::Batched),
        job_queue("W7r", 30_000, 4, Calls::Runtime { finalize: false }),
        job_queue("W7rf", 30_000, 4, Calls::Runtime { finalize: true }),
        Workload {
            id: "W7m",
            description: "400 tasks of the dataset's five shapes (17,280 steps), 4 workers, \
                          report_and_claim (10 steps per call)"
                .to_owned(),
            templates: mixed.iter().collect(),
            tasks: 400,
            workers: 4,
            calls: Calls::Batched,
            own_tasks_only: false,
        },
        one_task("W8-1", "the 5,000 parents of one fan-in child", 1, &wide),
        one_task("W8", "the 5,000 parents of one fan-in child", 8, &wide),
        one_task("W9-1", "one task of 10,000 independent steps", 1, &flat),
        one_task("W9", "one task of 10,000 independent steps", 8, &flat),
    ];
    // `dispatch W7b,W10` runs only those.
    let wanted = |id: &str| only.is_empty() || only.iter().any(|wanted| wanted == id);
    let mut results = Vec::new();
    for workload in workloads.iter().filter(|w| wanted(w.id)) {
        results.push(throughput(server_url, workload)?);
    }
    if wanted("W10") {
        results.push(hop_latency(server_url)?);
    }
    let mut admin = PgConnection::establish(server_url)?;
    sql_query(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&mut admin)?;
    Ok(results)
}

/// `steps` steps without edges.
fn independent(steps: usize) -> TaskTemplate {
    (0..steps).fold(
        TaskTemplate::new("bench", "independent", "1"),
        |template, index| template.step(StepTemplate::new(format!("s{index}"))),
    )
}

/// A database of the workload's own, migrated, with function timing on.
fn fresh_database(server_url: &str) -> BoxResult<String> {
    let mut admin = PgConnection::establish(server_url)?;
    sql_query(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&mut admin)?;
    sql_query(format!("CREATE DATABASE {DATABASE}")).execute(&mut admin)?;
    sql_query(format!(
        "ALTER DATABASE {DATABASE} SET track_functions = 'all'"
    ))
    .execute(&mut admin)?;
    let url = url_with_database(server_url, DATABASE);
    let mut conn = PgConnection::establish(&url)?;
    run_pending_migrations(&mut conn)?;
    Ok(url)
}

/// Creates `tasks` tasks cycling through `templates`, 500 per call, and
/// returns their ids.
fn create(
    conn: &mut PgConnection,
    templates: &[&TaskTemplate],
    tasks: usize,
) -> BoxResult<Vec<i64>> {
    // Distinct contexts, so no request is taken for one made before
    // (creation is idempotent by identity hash).
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let mut ids = Vec::with_capacity(tasks);
    let mut index = 0usize;
    while ids.len() < tasks {
        let requests: Vec<TaskRequest<'_>> = (0..(tasks - ids.len()).min(500))
            .map(|_| {
                index += 1;
                let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
                TaskRequest::new(templates[index % templates.len()])
                    .context(json!({ "serial": serial }))
            })
            .collect();
        ids.extend(
            create_tasks(conn, &requests)?
                .iter()
                .map(|created| created.task.task_id),
        );
    }
    Ok(ids)
}

/// Cumulative statistics of the database, to take differences of.
#[derive(Debug, Default)]
struct Counters {
    commits: i64,
    functions: HashMap<String, (i64, f64)>,
}

#[derive(QueryableByName)]
struct FunctionRow {
    #[diesel(sql_type = Text)]
    funcname: String,
    #[diesel(sql_type = BigInt)]
    calls: i64,
    #[diesel(sql_type = Double)]
    total_time: f64,
}

#[derive(QueryableByName)]
struct CommitRow {
    #[diesel(sql_type = BigInt)]
    xact_commit: i64,
}

/// Reads the counters once every backend that wrote them has gone (a backend
/// flushes its statistics when it exits).
fn counters(conn: &mut PgConnection) -> BoxResult<Counters> {
    thread::sleep(Duration::from_millis(300));
    sql_query("SELECT pg_stat_clear_snapshot()").execute(conn)?;
    let functions: Vec<FunctionRow> =
        sql_query("SELECT funcname::text, calls, total_time FROM pg_stat_user_functions")
            .load(conn)?;
    let commits: CommitRow =
        sql_query("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .get_result(conn)?;
    Ok(Counters {
        commits: commits.xact_commit,
        functions: functions
            .into_iter()
            .map(|row| (row.funcname, (row.calls, row.total_time)))
            .collect(),
    })
}

fn throughput(server_url: &str, workload: &Workload<'_>) -> BoxResult<DispatchResult> {
    print!("{}: ", workload.id);
    let url = fresh_database(server_url)?;
    let mut conn = PgConnection::establish(&url)?;
    let task_ids = create(&mut conn, &workload.templates, workload.tasks)?;
    let expected: usize = workload.tasks / workload.templates.len()
        * workload
            .templates
            .iter()
            .map(|t| t.steps.len())
            .sum::<usize>()
        + workload.templates[..workload.tasks % workload.templates.len()]
            .iter()
            .map(|t| t.steps.len())
            .sum::<usize>();
    // W8: the parents only; the child runs once they are all done.
    let expected = if workload.id.starts_with("W8") {
        expected - 1
    } else {
        expected
    };
    analyze(&mut conn)?;
    let before = counters(&mut conn)?;

    let pool = pool_builder()
        .max_size(workload.workers as u32 + 2)
        .build(diesel::r2d2::ConnectionManager::new(url.as_str()))?;
    let (completed, last) = match workload.calls {
        Calls::Runtime { finalize } => {
            through_runtime(&pool, workload.workers, finalize, expected)?
        }
        calls => {
            let done = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let only = workload.own_tasks_only.then(|| task_ids.clone());
            let handles: Vec<_> = (0..workload.workers)
                .map(|_| {
                    let pool = pool.clone();
                    let done = Arc::clone(&done);
                    let only = only.clone();
                    thread::spawn(move || {
                        worker(&pool, calls, only.as_deref(), &done, expected, started)
                    })
                })
                .collect();
            let mut completed = Vec::new();
            let mut last = Duration::ZERO;
            for handle in handles {
                let (steps, finished) =
                    handle.join().map_err(|_| "a dispatch worker panicked")??;
                completed.extend(steps);
                last = last.max(finished);
            }
            (completed, last)
        }
    };
    drop(pool);
    let after = counters(&mut conn)?;
    drop(conn);

    let distinct: HashSet<i64> = completed.iter().copied().collect();
    let steps = completed.len() as u64;
    let seconds = last.as_secs_f64().max(f64::EPSILON);
    let per_call: Vec<FunctionTime> = workload
        .calls
        .functions()
        .iter()
        .filter_map(|&function| {
            let (calls_before, time_before) =
                before.functions.get(function).copied().unwrap_or_default();
            let (calls, time) = *after.functions.get(function)?;
            let calls = calls - calls_before;
            (calls > 0).then(|| FunctionTime {
                function: function.to_owned(),
                calls: calls as u64,
                ms_per_call: (time - time_before) / calls as f64,
            })
        })
        .collect();
    let server_ms: f64 = per_call
        .iter()
        .map(|f| f.ms_per_call * f.calls as f64)
        .sum();
    let result = DispatchResult {
        id: workload.id.to_owned(),
        description: workload.description.clone(),
        workers: workload.workers,
        steps,
        seconds,
        steps_per_second: steps as f64 / seconds,
        server_ms_per_step: (!per_call.is_empty() && steps > 0).then(|| server_ms / steps as f64),
        server_ms_per_call: per_call,
        commits_per_step: (steps > 0)
            .then(|| (after.commits - before.commits) as f64 / steps as f64),
        duplicates: steps - distinct.len() as u64,
        p50_ms: None,
        p99_ms: None,
    };
    println!(
        "{} steps in {:.2} s: {:.0} steps/s, {:.3} server ms and {:.2} commits per step, {} duplicates",
        result.steps,
        result.seconds,
        result.steps_per_second,
        result.server_ms_per_step.unwrap_or(f64::NAN),
        result.commits_per_step.unwrap_or(f64::NAN),
        result.duplicates
    );
    if steps < expected as u64 {
        println!(
            "  ({} of {expected} steps in the {} s limit)",
            steps,
            TIME_LIMIT.as_secs()
        );
    }
    Ok(result)
}

/// One worker: claims and completes until `expected` steps are done (by all
/// workers) or the time limit passes; sleeps on the wake-up while idle.
/// Returns the steps it completed and when it completed the last one.
fn worker(
    pool: &PgPool,
    calls: Calls,
    only: Option<&[i64]>,
    done: &AtomicUsize,
    expected: usize,
    started: Instant,
) -> BoxResult<(Vec<i64>, Duration)> {
    let mut conn = pool.get()?;
    let results = json!({"ok": true});
    let lease = Duration::from_secs(300);
    let max_steps = match calls {
        Calls::OneByOne => 1,
        Calls::Batched | Calls::Runtime { .. } => BATCH,
    };
    let request = ClaimRequest {
        task_ids: only,
        ..ClaimRequest::any_task(max_steps, lease)
    };
    let mut completed = Vec::new();
    let mut last = Duration::ZERO;
    let mut held: Vec<Claim> = Vec::new();
    loop {
        let finished = done.load(Ordering::Relaxed) >= expected || started.elapsed() >= TIME_LIMIT;
        let claimed = match calls {
            Calls::OneByOne => {
                if finished {
                    break;
                }
                let claimed = claim_ready_steps(&mut conn, &request)?;
                for step in &claimed {
                    complete_step(&mut conn, step.claim(), &results)?;
                    completed.push(step.workflow_step_id);
                    done.fetch_add(1, Ordering::Relaxed);
                    last = started.elapsed();
                }
                claimed.len()
            }
            Calls::Runtime { .. } => return Err("the runtime runs its own threads".into()),
            Calls::Batched => {
                let reports: Vec<StepReport<'_>> = held
                    .iter()
                    .map(|&claim| StepReport::complete(claim, &results))
                    .collect();
                let request = if finished {
                    ClaimRequest {
                        max_steps: 0,
                        ..request
                    }
                } else {
                    request
                };
                let (reported, claimed) = report_and_claim(&mut conn, &reports, &request)?;
                if let Some(refused) = reported.iter().find(|r| r.result.is_err()) {
                    return Err(format!("a result was refused: {refused:?}").into());
                }
                if !reported.is_empty() {
                    completed.extend(reported.iter().map(|r| r.claim.workflow_step_id));
                    done.fetch_add(reported.len(), Ordering::Relaxed);
                    last = started.elapsed();
                }
                held = claimed.iter().map(|step| step.claim()).collect();
                if finished && held.is_empty() {
                    break;
                }
                claimed.len()
            }
        };
        if claimed == 0 && done.load(Ordering::Relaxed) < expected {
            wait_for_claimable_work(&mut conn, IDLE_WAIT)?;
        }
    }
    Ok((completed, last))
}

/// W7r: the one-step tasks through the worker runtime, with a handler that
/// returns at once; until `expected` steps are complete (the runtime's
/// counter) or the time limit. Returns the steps the handler ran and when the
/// last one was reported.
fn through_runtime(
    pool: &PgPool,
    threads: usize,
    finalize: bool,
    expected: usize,
) -> BoxResult<(Vec<i64>, Duration)> {
    let ran = Arc::new(Mutex::new(Vec::with_capacity(expected)));
    let handlers = {
        let ran = Arc::clone(&ran);
        Handlers::new().on("run", move |step| {
            ran.lock()
                .map_err(|_| StepFailure::retryable("lock"))?
                .push(step.workflow_step_id());
            Ok(json!({"ok": true}))
        })
    };
    let started = Instant::now();
    let worker = Worker::builder(pool.clone(), handlers)
        .threads(threads)
        .batch(BATCH)
        .lease(Duration::from_secs(300))
        .finalize_tasks(finalize)
        .build()?
        .start();
    let mut last = Duration::ZERO;
    let mut seen = 0;
    while started.elapsed() < TIME_LIMIT {
        let completed = worker.stats().completed;
        if completed as usize != seen {
            (seen, last) = (completed as usize, started.elapsed());
        }
        if seen >= expected {
            break;
        }
        thread::sleep(Duration::from_micros(200));
    }
    let summary = worker.shutdown(Duration::from_secs(10));
    if let Some(error) = summary.errors.first() {
        return Err(format!("the worker runtime failed: {error}").into());
    }
    let ran = std::mem::take(&mut *ran.lock().map_err(|_| "poisoned")?);
    Ok((ran, last))
}

/// W10: chains of 50 steps run by 4 workers that sleep while idle; the time
/// from a parent's completion to its child's claim.
fn hop_latency(server_url: &str) -> BoxResult<DispatchResult> {
    const CHAINS: usize = 4;
    const LENGTH: usize = 50;
    const WORKERS: usize = 4;
    print!("W10: ");
    let url = fresh_database(server_url)?;
    let mut conn = PgConnection::establish(&url)?;
    let template = chain("hops", LENGTH);
    // Warm the catalog and the plans on one chain first, then time the others
    // one after another.
    create(&mut conn, &[&template], 1)?;
    analyze(&mut conn)?;
    let completed_at: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let claimed_at: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let expected = LENGTH * (CHAINS + 1);
    let handles: Vec<_> = (0..WORKERS)
        .map(|_| {
            let url = url.clone();
            let done = Arc::clone(&done);
            let completed_at = Arc::clone(&completed_at);
            let claimed_at = Arc::clone(&claimed_at);
            thread::spawn(move || -> BoxResult<()> {
                let mut conn = PgConnection::establish(&url)?;
                let results = json!({"ok": true});
                let request = ClaimRequest::any_task(1, Duration::from_secs(60));
                while done.load(Ordering::Relaxed) < expected {
                    let claimed = claim_ready_steps(&mut conn, &request)?;
                    let Some(step) = claimed.first() else {
                        wait_for_claimable_work(&mut conn, IDLE_WAIT)?;
                        continue;
                    };
                    claimed_at
                        .lock()
                        .expect("claims")
                        .insert(step.workflow_step_id, Instant::now());
                    complete_step(&mut conn, step.claim(), &results)?;
                    completed_at
                        .lock()
                        .expect("completions")
                        .insert(step.workflow_step_id, Instant::now());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut chains = Vec::new();
    for _ in 0..CHAINS {
        // The next chain once the previous one is done, so the workers are idle
        // between hops of one chain only.
        while done.load(Ordering::Relaxed) < LENGTH * (chains.len() + 1) {
            thread::sleep(Duration::from_millis(5));
        }
        chains.push(create(&mut conn, &[&template], 1)?[0]);
    }
    for handle in handles {
        handle.join().map_err(|_| "a W10 worker panicked")??;
    }
    let steps: Vec<(i64, i64, String)> = diesel::sql_query(
        "SELECT s.workflow_step_id, s.task_id, n.name::text AS name
         FROM tasker_workflow_steps AS s JOIN tasker_named_steps AS n USING (named_step_id)
         WHERE s.task_id = ANY ($1)",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(&chains)
    .load::<StepName>(&mut conn)?
    .into_iter()
    .map(|row| (row.workflow_step_id, row.task_id, row.name))
    .collect();
    let by_position: HashMap<(i64, usize), i64> = steps
        .iter()
        .map(|(id, task, name)| {
            (
                (*task, name[1..].parse::<usize>().unwrap_or(usize::MAX)),
                *id,
            )
        })
        .collect();
    let completed_at = completed_at.lock().expect("completions");
    let claimed_at = claimed_at.lock().expect("claims");
    let mut hops = Latencies::default();
    for &task in &chains {
        for position in 1..LENGTH {
            let (Some(parent), Some(child)) = (
                by_position.get(&(task, position - 1)),
                by_position.get(&(task, position)),
            ) else {
                return Err(format!("W10: chain {task} lacks step {position}").into());
            };
            let (Some(&completed), Some(&claimed)) =
                (completed_at.get(parent), claimed_at.get(child))
            else {
                return Err(format!("W10: step {position} of chain {task} was not run").into());
            };
            hops.push(claimed.saturating_duration_since(completed));
        }
    }
    let result = DispatchResult {
        id: "W10".to_owned(),
        description: format!(
            "{CHAINS} chains of {LENGTH} steps, one after another, {WORKERS} workers sleeping in \
             wait_for_claimable_work while idle: parent's completion to child's claim"
        ),
        workers: WORKERS,
        steps: hops.len() as u64,
        seconds: 0.0,
        steps_per_second: 0.0,
        server_ms_per_step: None,
        server_ms_per_call: Vec::new(),
        commits_per_step: None,
        duplicates: 0,
        p50_ms: hops.quantile_ms(0.5),
        p99_ms: hops.quantile_ms(0.99),
    };
    println!(
        "{} hops: p50 {:.2} ms, p99 {:.2} ms",
        result.steps,
        result.p50_ms.unwrap_or(f64::NAN),
        result.p99_ms.unwrap_or(f64::NAN)
    );
    Ok(result)
}

#[derive(QueryableByName)]
struct StepName {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = BigInt)]
    task_id: i64,
    #[diesel(sql_type = Text)]
    name: String,
}
