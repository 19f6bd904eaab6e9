//! A pool of worker threads runs a batch of workflows to completion through
//! the write path: each worker "executes" the steps it holds, then reports
//! their results and claims the next ready steps of any task in one round
//! trip (`report_and_claim`), sleeps on the wake-up (`wait_for_claimable_work`)
//! while nothing is claimable, and finalizes the tasks whose execution
//! context says nothing is left to run.
//!
//! ```sh
//! cargo run --release --example worker_pool                  # a throwaway PostgreSQL cluster
//! cargo run --release --example worker_pool -- --workers 2 --tasks 500 --fail-rate 0
//! DATABASE_URL=postgres://... cargo run --release --example worker_pool
//! ```
//!
//! Tasks have random-ish DAG shapes (up to 20 steps) from a small
//! deterministic generator. A step fails with probability `--fail-rate` and is
//! then retried under the usual rules: the failure backoff (2 s, then 4 s) and
//! a retry limit of 3 attempts, after which its task is blocked. With
//! failures, the wall time is mostly those backoffs along the longest chains;
//! `--fail-rate 0` measures throughput.
//!
//! Each run creates tasks of its own, so reruns against one database work.
//! Workers claim from any task, as a real pool does: on a database with other
//! live work they would run (and fake) its steps too, so point `DATABASE_URL`
//! at a scratch database.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::r2d2::ConnectionManager;
use diesel::PgConnection;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tasker_diesel::pool::pool_builder;
use tasker_diesel::testing::LocalCluster;
use tasker_diesel::workflow::{
    create_tasks as create_task_batch, finalize_task, release_expired_claims, report_and_claim,
    wait_for_claimable_work, ClaimRequest, ClaimedStep, StepReport, StepTemplate, TaskRequest,
    TaskTemplate,
};
use tasker_diesel::{
    establish_connection, run_pending_migrations, Error, ExecutionStatus, PgPool,
    RecommendedAction, Refusal, StepReadinessStatus, TaskExecutionContext, TaskState,
};

const USAGE: &str = "usage: worker_pool [--workers N] [--tasks N] [--fail-rate F] [--work-us N]";
/// Distinct task templates the tasks are spread over.
const SHAPES: u64 = 16;
/// Most steps in a task.
const MAX_STEPS: u64 = 20;
/// Steps a worker claims at a time.
const CLAIM_BATCH: u32 = 10;
/// How long a claim holds; a step takes microseconds here.
const LEASE: Duration = Duration::from_secs(30);
/// The longest a worker sleeps on the wake-up before it looks again (a
/// notification it missed costs no more).
const IDLE: Duration = Duration::from_millis(500);
/// How often expired claims are released.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// Longer than any backoff here without a step run or a task finalized: a bug.
const STALL: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let options = Options::parse().unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2)
    });
    // The cluster, if one was started, lives until the end of main.
    let (url, cluster) = LocalCluster::from_env_or_start()?;
    let mut conn = establish_connection(&url)?;
    run_pending_migrations(&mut conn)?;

    let created = Instant::now();
    let (tasks, steps) = create_tasks(&mut conn, options.tasks)?;
    println!(
        "created {} tasks ({steps} steps) in {:.1} s; running them with {} workers",
        tasks.len(),
        created.elapsed().as_secs_f64(),
        options.workers
    );

    let pool = pool_builder()
        .max_size(options.workers + 2)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let run = Run {
        finalized: tasks
            .iter()
            .map(|&id| (id, AtomicBool::new(false)))
            .collect(),
        stop: AtomicBool::new(false),
        tally: Tally::default(),
    };
    let bar = ProgressBar::new(tasks.len() as u64).with_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} tasks finalized, {msg}",
    )?);
    let started = Instant::now();
    thread::scope(|scope| {
        let workers: Vec<_> = (0..options.workers)
            .map(|_| {
                scope.spawn(|| {
                    let worked = work(&pool, &run, &options);
                    run.stop.store(true, Relaxed);
                    worked
                })
            })
            .collect();
        let watched = watch(&pool, &run, &bar);
        run.stop.store(true, Relaxed);
        for worker in workers {
            worker.join().expect("a worker panicked")?;
        }
        watched
    })?;
    let wall = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let tally = &run.tally;
    let executed = tally.executed.load(Relaxed);
    println!(
        "{} tasks: {} complete, {} blocked | {executed} steps executed, {} failed, {} retried \
         | {} workers, {wall:.2} s, {:.0} steps/s",
        tasks.len(),
        tally.complete.load(Relaxed),
        tally.blocked.load(Relaxed),
        tally.failed.load(Relaxed),
        tally.retried.load(Relaxed),
        options.workers,
        executed as f64 / wall,
    );
    drop(cluster);
    Ok(())
}

/// One worker: execute what it holds, report it and claim more in one call,
/// finalize, until the run stops. It keeps its connection, which listens for
/// the wake-up.
fn work(pool: &PgPool, run: &Run, options: &Options) -> tasker_diesel::Result<()> {
    let mut conn = pool.get()?;
    let request = ClaimRequest::any_task(CLAIM_BATCH, LEASE);
    let failure = json!({ "message": "simulated failure" });
    let mut held: Vec<ClaimedStep> = Vec::new();
    let mut touched = Vec::new();
    loop {
        let stopping = run.stop.load(Relaxed);
        let results: Vec<_> = held
            .iter()
            .map(|step| {
                thread::sleep(options.work);
                json!({ "attempt": step.attempt })
            })
            .collect();
        let reports: Vec<StepReport<'_>> = held
            .iter()
            .zip(&results)
            .map(|(step, results)| {
                let tally = &run.tally;
                tally.executed.fetch_add(1, Relaxed);
                if step.attempt > 1 {
                    tally.retried.fetch_add(1, Relaxed);
                }
                if fails(step, options.fail_rate) {
                    tally.failed.fetch_add(1, Relaxed);
                    // Retry under the failure backoff alone.
                    StepReport::fail(step.claim(), &failure, Some(Duration::ZERO))
                } else {
                    StepReport::complete(step.claim(), results)
                }
            })
            .collect();
        // Once stopping, report what is held and claim nothing more.
        let request = ClaimRequest {
            max_steps: if stopping { 0 } else { CLAIM_BATCH },
            ..request
        };
        let (reported, claimed) = report_and_claim(&mut conn, &reports, &request)?;
        touched.clear();
        for (step, outcome) in held.iter().zip(&reported) {
            match &outcome.result {
                Ok(_) => {}
                // The lease ran out and the step was released: its result is dropped
                // and the step runs again.
                Err(Refusal::ClaimLost { .. } | Refusal::ClaimExpired { .. }) => {}
                Err(refusal) => return Err(Error::Refused(refusal.clone())),
            }
            if !touched.contains(&step.task_id) {
                touched.push(step.task_id);
            }
        }
        finalize_finished(&mut conn, run, &touched)?;
        held = claimed;
        if stopping {
            return Ok(());
        }
        if held.is_empty() {
            wait_for_claimable_work(&mut conn, IDLE)?;
        }
    }
}

/// Finalizes those of `task_ids` whose execution context says nothing is
/// left to run: all complete, or blocked by a step that failed for good.
fn finalize_finished(
    conn: &mut PgConnection,
    run: &Run,
    task_ids: &[i64],
) -> tasker_diesel::Result<()> {
    for context in TaskExecutionContext::find_many(conn, task_ids)? {
        if context.recommended_action != RecommendedAction::FinalizeTask
            && context.execution_status != ExecutionStatus::BlockedByFailures
        {
            continue;
        }
        match finalize_task(conn, context.task_id, None) {
            Ok(state) => run.count_finalized(context.task_id, state),
            // A step of the task changed since its context was read.
            Err(Error::Refused(Refusal::TaskNotFinished { .. })) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Updates the progress bar and releases expired claims until every task is
/// finalized or a worker stops.
fn watch(pool: &PgPool, run: &Run, bar: &ProgressBar) -> Result<(), BoxError> {
    let mut conn = pool.get()?;
    let (mut released_at, mut progressed_at, mut last_progress) =
        (Instant::now(), Instant::now(), 0);
    while !run.stop.load(Relaxed) {
        let tally = &run.tally;
        let finalized = tally.complete.load(Relaxed) + tally.blocked.load(Relaxed);
        let executed = tally.executed.load(Relaxed);
        bar.set_position(finalized);
        bar.set_message(format!(
            "{executed} steps executed, {} failed",
            tally.failed.load(Relaxed)
        ));
        if finalized == run.finalized.len() as u64 {
            return Ok(());
        }
        if released_at.elapsed() >= RELEASE_EVERY {
            // A released step may have been its task's last chance.
            let released = release_expired_claims(&mut conn, None)?;
            let mut task_ids: Vec<i64> = StepReadinessStatus::for_steps(&released)
                .load(&mut conn)?
                .into_iter()
                .map(|step| step.task_id)
                .collect();
            task_ids.dedup();
            finalize_finished(&mut conn, run, &task_ids)?;
            released_at = Instant::now();
        }
        if executed + finalized != last_progress {
            (last_progress, progressed_at) = (executed + finalized, Instant::now());
        } else if progressed_at.elapsed() >= STALL {
            return Err(format!("no step run and no task finalized for {STALL:?}").into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// What the workers share.
struct Run {
    /// This run's tasks, and whether each has been counted as finalized.
    finalized: HashMap<i64, AtomicBool>,
    /// Set when every task is finalized or a worker has failed.
    stop: AtomicBool,
    tally: Tally,
}

#[derive(Default)]
struct Tally {
    executed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    complete: AtomicU64,
    blocked: AtomicU64,
}

impl Run {
    /// Counts a task of this run the first time it is finalized (two workers
    /// may both finalize it: the call is idempotent).
    fn count_finalized(&self, task_id: i64, state: TaskState) {
        let Some(seen) = self.finalized.get(&task_id) else {
            return; // a task of another run on the same database
        };
        if !seen.swap(true, Relaxed) {
            let tally = &self.tally;
            match state {
                TaskState::Complete => tally.complete.fetch_add(1, Relaxed),
                _ => tally.blocked.fetch_add(1, Relaxed),
            };
        }
    }
}

/// Creates `count` tasks spread over the templates, 500 per call; returns
/// their ids and how many steps they have. A run id in each task's context
/// makes the identity hashes new on every run.
fn create_tasks(conn: &mut PgConnection, count: usize) -> tasker_diesel::Result<(Vec<i64>, usize)> {
    let templates: Vec<TaskTemplate> = (0..SHAPES).map(shape).collect();
    let run_id = Utc::now().timestamp_micros();
    let requests: Vec<TaskRequest<'_>> = templates
        .iter()
        .cycle()
        .take(count)
        .enumerate()
        .map(|(index, template)| {
            TaskRequest::new(template).context(json!({ "run": run_id, "task": index }))
        })
        .collect();
    let mut task_ids = Vec::with_capacity(count);
    let mut steps = 0;
    for batch in requests.chunks(500) {
        for created in create_task_batch(conn, batch)? {
            task_ids.push(created.task.task_id);
            steps += created.steps.len();
        }
    }
    Ok((task_ids, steps))
}

/// Template `index`: 1 to 20 steps, each depending on none to two of the four
/// steps before it.
fn shape(index: u64) -> TaskTemplate {
    let mut rng = SplitMix64(index);
    let name = |step: u64| format!("s{step:02}");
    let mut template = TaskTemplate::new("worker_pool", format!("shape_{index:02}"), "1");
    for step in 0..1 + rng.below(MAX_STEPS) {
        let parents = match rng.below(6) {
            0 => 0,
            1..=3 => 1,
            _ => 2,
        };
        let mut depends_on: Vec<u64> = Vec::new();
        for _ in 0..parents.min(step) {
            let parent = step - 1 - rng.below(step.min(4));
            if !depends_on.contains(&parent) {
                depends_on.push(parent);
            }
        }
        template = template
            .step(StepTemplate::new(name(step)).depends_on(depends_on.into_iter().map(name)));
    }
    template
}

/// Whether this attempt of the step fails: the same answer for the same step
/// and attempt, whichever worker runs it.
fn fails(step: &ClaimedStep, fail_rate: f64) -> bool {
    let mut rng = SplitMix64(step.workflow_step_id as u64 ^ (u64::from(step.attempt as u32) << 48));
    // The top 53 bits as a fraction in [0, 1).
    let unit = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    unit < fail_rate
}

/// SplitMix64: a tiny deterministic generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

struct Options {
    workers: u32,
    tasks: usize,
    fail_rate: f64,
    /// The simulated work of one step.
    work: Duration,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut options = Options {
            workers: 8,
            tasks: 200,
            fail_rate: 0.1,
            work: Duration::from_micros(300),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--workers" => options.workers = parse(&flag, &value()?)?,
                "--tasks" => options.tasks = parse(&flag, &value()?)?,
                "--fail-rate" => options.fail_rate = parse(&flag, &value()?)?,
                "--work-us" => options.work = Duration::from_micros(parse(&flag, &value()?)?),
                _ => return Err(USAGE.to_owned()),
            }
        }
        if options.workers == 0 || options.tasks == 0 || !(0.0..=1.0).contains(&options.fail_rate) {
            return Err(format!(
                "need workers >= 1, tasks >= 1, 0 <= fail-rate <= 1\n{USAGE}"
            ));
        }
        Ok(options)
    }
}

fn parse<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for {flag}\n{USAGE}"))
}
