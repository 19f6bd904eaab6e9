//! A pool of worker threads runs a batch of workflows to completion through
//! the crate's worker runtime (`tasker_diesel::worker`): handlers by step
//! name, threads that report results and claim the next steps in one round
//! trip, sleep on the wake-up while nothing is claimable, and a sweeper that
//! finalizes every task whose steps are done.
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
//! The workers claim steps named s00 to s19 of any task: point `DATABASE_URL`
//! at a scratch database.

use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::r2d2::ConnectionManager;
use diesel::PgConnection;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tasker_diesel::pool::pool_builder;
use tasker_diesel::testing::LocalCluster;
use tasker_diesel::worker::{Handlers, StepContext, StepFailure, Worker};
use tasker_diesel::workflow::{
    create_tasks as create_task_batch, StepTemplate, TaskRequest, TaskTemplate,
};
use tasker_diesel::{establish_connection, run_pending_migrations, TaskState};

const USAGE: &str = "usage: worker_pool [--workers N] [--tasks N] [--fail-rate F] [--work-us N]";
/// Distinct task templates the tasks are spread over.
const SHAPES: u64 = 16;
/// Most steps in a task.
const MAX_STEPS: u64 = 20;
/// Longer than any backoff here without a task finalized: a bug.
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
    let (task_ids, steps) = create_tasks(&mut conn, options.tasks)?;
    let tasks = task_ids.len();
    println!(
        "created {tasks} tasks ({steps} steps) in {:.1} s; running them with {} workers",
        created.elapsed().as_secs_f64(),
        options.workers
    );

    // Every step name runs the same handler here; a service registers one
    // handler per kind of step.
    let mut handlers = Handlers::new();
    for step in 0..MAX_STEPS {
        let (work, fail_rate) = (options.work, options.fail_rate);
        handlers = handlers.on(step_name(step), move |step| run_step(step, work, fail_rate));
    }
    let pool = pool_builder()
        .max_size(options.workers as u32 + 2)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let started = Instant::now();
    let worker = Worker::builder(pool, handlers)
        .threads(options.workers)
        .sweep_every(Duration::from_secs(1))
        .build()?
        .start();

    let bar = ProgressBar::new(tasks as u64).with_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} tasks finalized, {msg}",
    )?);
    let (mut progressed_at, mut last) = (Instant::now(), (0, 0));
    loop {
        let stats = worker.stats();
        bar.set_position(stats.finalized);
        bar.set_message(format!(
            "{} steps run, {} failed",
            stats.completed + stats.failed,
            stats.failed
        ));
        if stats.finalized >= tasks as u64 {
            break;
        }
        if (stats.completed, stats.finalized) != last {
            (last, progressed_at) = ((stats.completed, stats.finalized), Instant::now());
        } else if progressed_at.elapsed() >= STALL {
            return Err(format!("no step run and no task finalized for {STALL:?}").into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let wall = started.elapsed().as_secs_f64();
    let summary = worker.shutdown(Duration::from_secs(10));
    bar.finish_and_clear();

    let stats = summary.stats;
    let executed = stats.completed + stats.failed;
    let states = final_states(&mut conn, &task_ids)?;
    println!(
        "{tasks} tasks: {} complete, {} blocked | {executed} steps executed, {} failed, {} retried \
         | {} workers, {wall:.2} s, {:.0} steps/s",
        states.0,
        states.1,
        stats.failed,
        stats.retried,
        options.workers,
        executed as f64 / wall,
    );
    drop(cluster);
    Ok(())
}

/// A step's work: a short sleep, and a failure now and then.
fn run_step(
    step: &StepContext<'_>,
    work: Duration,
    fail_rate: f64,
) -> Result<serde_json::Value, StepFailure> {
    thread::sleep(work);
    if fails(step.workflow_step_id(), step.attempt(), fail_rate) {
        // Retried under the failure backoff.
        return Err(StepFailure::retryable(
            json!({ "message": "simulated failure" }),
        ));
    }
    Ok(json!({ "attempt": step.attempt() }))
}

/// How many of `task_ids` ended complete, and how many blocked.
fn final_states(
    conn: &mut PgConnection,
    task_ids: &[i64],
) -> tasker_diesel::Result<(usize, usize)> {
    use diesel::prelude::*;
    use tasker_diesel::schema::tasker_task_transitions as transitions;
    let states: Vec<TaskState> = transitions::table
        .filter(transitions::most_recent.eq(true))
        .filter(transitions::task_id.eq_any(task_ids))
        .select(transitions::to_state)
        .load(conn)?;
    let complete = states.iter().filter(|s| **s == TaskState::Complete).count();
    let blocked = states.iter().filter(|s| **s == TaskState::Error).count();
    Ok((complete, blocked))
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

/// The name of step `index` of a template.
fn step_name(index: u64) -> String {
    format!("s{index:02}")
}

/// Template `index`: 1 to 20 steps, each depending on none to two of the four
/// steps before it.
fn shape(index: u64) -> TaskTemplate {
    let mut rng = SplitMix64(index);
    let name = step_name;
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
fn fails(workflow_step_id: i64, attempt: i32, fail_rate: f64) -> bool {
    let mut rng = SplitMix64(workflow_step_id as u64 ^ (u64::from(attempt as u32) << 48));
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
    workers: usize,
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
