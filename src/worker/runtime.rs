//! The runtime: threads that claim, run and report in batches, a heartbeat
//! that keeps their leases, a sweeper that releases expired claims and
//! finalizes settled tasks, and the shutdown that stops them.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use diesel::{PgConnection, RunQueryDsl};
use serde_json::{json, Value};
use tracing::{debug, error, info_span, warn};

use super::handler::{Handlers, StepContext, StepFailure};
use super::inputs::BatchInputs;
use super::lease::Leases;
use super::stats::{Counters, Stats};
use crate::pool::{PgPool, PooledPgConnection};
use crate::workflow::{
    extend_step_claim, finalize_settled_tasks, release_expired_claims, release_steps,
    report_and_claim, wait_for_claimable_work, Claim, ClaimRequest, ClaimedStep, ReportedStep,
    StepKind, StepReport,
};
use crate::{arguments, Error, Refusal, Result};

/// Expired claims released, and settled tasks finalized, per sweeper call.
const SWEEP_BATCH: u32 = 500;
/// The sweeper finalizes at most this often however many reports nudge it.
const FINALIZE_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between attempts of a call that failed transiently.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Configures a [`Worker`]: `Worker::builder(pool, handlers).threads(8).build()`.
#[derive(Debug)]
pub struct WorkerBuilder {
    pool: PgPool,
    handlers: Handlers,
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
    threads: usize,
    batch: u32,
    lease: Duration,
    idle_check: Duration,
    sweep_every: Duration,
    sweep: bool,
    finalize: bool,
    metadata: Value,
}

impl WorkerBuilder {
    /// Worker threads, each with a connection of its own (default 4).
    pub fn threads(mut self, threads: usize) -> Self {
        self.config.threads = threads;
        self
    }

    /// Steps a thread claims at a time and runs one after the other before it
    /// reports them together (default 10).
    pub fn batch(mut self, steps: u32) -> Self {
        self.config.batch = steps;
        self
    }

    /// How long each claim holds (default 30 s); the heartbeat extends it by
    /// as much whenever half of it is left, for steps waiting in a batch and
    /// steps running alike.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How long an idle thread sleeps on the wake-up before it looks again,
    /// and so how soon it notices a shutdown (default 250 ms). A commit that
    /// makes steps runnable wakes it at once.
    pub fn idle_check(mut self, wait: Duration) -> Self {
        self.config.idle_check = wait;
        self
    }

    /// How often the sweeper releases expired claims (default 5 s).
    pub fn sweep_every(mut self, every: Duration) -> Self {
        self.config.sweep_every = every;
        self
    }

    /// Whether this worker runs a sweeper (default yes). Each worker process
    /// may: the calls skip what another sweeper holds and are idempotent.
    pub fn sweeper(mut self, on: bool) -> Self {
        self.config.sweep = on;
        self
    }

    /// Whether the sweeper finalizes tasks whose steps are all done or
    /// blocked for good (default yes); off when an orchestrator of your own
    /// finalizes them.
    pub fn finalize_tasks(mut self, on: bool) -> Self {
        self.config.finalize = on;
        self
    }

    /// Stored in the transitions the worker writes (a worker id, say).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.config.metadata = metadata;
        self
    }

    /// Checks the configuration: at least one thread, handler and step per
    /// batch, a lease between a second and [`MAX_DURATION`](crate::MAX_DURATION), and a pool with room for every
    /// thread plus the heartbeat and the sweeper.
    pub fn build(self) -> Result<Worker> {
        let config = &self.config;
        let needed = config.threads.saturating_add(2);
        let problem = if config.threads == 0 {
            Some("threads must be at least 1".to_owned())
        } else if config.batch == 0 || config.batch > i32::MAX as u32 {
            Some(format!(
                "batch must be between 1 and {}, got {}",
                i32::MAX,
                config.batch
            ))
        } else if config.lease < Duration::from_secs(1) || config.lease > crate::MAX_DURATION {
            Some(format!(
                "lease must be between 1 s and {} s, got {:?}",
                crate::MAX_DURATION.as_secs(),
                config.lease
            ))
        } else if self.handlers.entries.is_empty() {
            Some("handlers: a worker needs at least one".to_owned())
        } else if let Some(problem) = arguments::json_problem(&Value::Array(
            self.handlers.kinds().map(StepKind::to_json).collect(),
        )) {
            // Every claim would be refused.
            Some(format!("the handlers' step kinds: the filter {problem}"))
        } else if let Some(entry) = self.handlers.entries.iter().find(|e| e.limit == Some(0)) {
            Some(format!(
                "the limit of {:?} is 0: its steps would never run here (leave the kind out instead)",
                entry.kind
            ))
        } else if let Err(refused) = arguments::metadata("metadata", Some(&config.metadata)) {
            Some(refused.to_string())
        } else if (self.pool.max_size() as usize) < needed {
            Some(format!(
                "the pool holds {} connections; {} threads need {needed} (one each, one for \
                 the heartbeat and one for the sweeper)",
                self.pool.max_size(),
                config.threads
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(Refusal::InvalidArgument {
                argument: "Worker::builder".to_owned(),
                message: format!("Worker::build: {message}"),
            }
            .into());
        }
        Ok(Worker {
            shared: Arc::new(Shared {
                leases: Leases::new(self.config.lease),
                pool: self.pool,
                handlers: self.handlers,
                config: self.config,
                counters: Counters::default(),
                stopping: AtomicBool::new(false),
                deadline: Mutex::new(None),
                background_stop: AtomicBool::new(false),
                touched: Mutex::new(Vec::new()),
                nudge: Condvar::new(),
                errors: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// A configured worker runtime; [`Worker::start`] runs it.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
}

/// What the threads share.
#[derive(Debug)]
struct Shared {
    pool: PgPool,
    handlers: Handlers,
    config: Config,
    leases: Leases,
    counters: Counters,
    /// Set by the shutdown: claim nothing more.
    stopping: AtomicBool,
    /// When the shutdown gives up waiting for handlers.
    deadline: Mutex<Option<Instant>>,
    /// Stops the heartbeat and the sweeper.
    background_stop: AtomicBool,
    /// The tasks of steps that reports completed or failed since the sweeper
    /// last looked: it finalizes those that are settled.
    touched: Mutex<Vec<i64>>,
    nudge: Condvar,
    /// Errors that stopped a thread.
    errors: Mutex<Vec<String>>,
}

impl Worker {
    /// A worker for `handlers` on connections of `pool` (default settings:
    /// see [`WorkerBuilder`]).
    pub fn builder(pool: PgPool, handlers: Handlers) -> WorkerBuilder {
        WorkerBuilder {
            pool,
            handlers,
            config: Config {
                threads: 4,
                batch: 10,
                lease: Duration::from_secs(30),
                idle_check: Duration::from_millis(250),
                sweep_every: Duration::from_secs(5),
                sweep: true,
                finalize: true,
                metadata: json!({}),
            },
        }
    }

    /// Starts the threads and returns at once; the handle reads the counters
    /// and shuts the worker down.
    pub fn start(self) -> WorkerHandle {
        let spawn = |name: String, body: fn(&Shared)| {
            let shared = Arc::clone(&self.shared);
            thread::Builder::new()
                .name(name)
                .spawn(move || body(&shared))
                .expect("spawning a worker thread")
        };
        let workers = (0..self.shared.config.threads)
            .map(|index| spawn(format!("tasker-worker-{index}"), work))
            .collect();
        let mut background = vec![spawn("tasker-heartbeat".to_owned(), heartbeat)];
        if self.shared.config.sweep {
            background.push(spawn("tasker-sweeper".to_owned(), sweep));
        }
        WorkerHandle {
            shared: self.shared,
            workers,
            background,
        }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

/// What a worker did, returned by [`WorkerHandle::shutdown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The counters at the end.
    pub stats: Stats,
    /// Claims given back at the deadline: of handlers still running, and of
    /// the steps their threads had not started. Another worker may claim them
    /// at once; the results of those handlers, should they finish, are
    /// dropped.
    pub released_at_deadline: usize,
    /// Threads still inside a handler at the deadline, left to finish it on
    /// their own.
    pub abandoned_threads: usize,
    /// Errors that stopped a thread (a bug or a refusal, not a lost
    /// connection: those are retried).
    pub errors: Vec<String>,
}

impl WorkerHandle {
    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Errors that stopped a thread so far.
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Stops claiming, lets the handlers in flight finish for up to `grace`
    /// and reports their results; steps claimed but not started are released.
    /// At the deadline the claims still held are released so that another
    /// worker may take them at once, and the threads still in a handler are
    /// left to finish it (its result is dropped). Returns what the worker did.
    pub fn shutdown(self, grace: Duration) -> Summary {
        let shared = &self.shared;
        let deadline = arguments::deadline_after(grace);
        if let Ok(mut slot) = shared.deadline.lock() {
            *slot = Some(deadline);
        }
        shared.stopping.store(true, Ordering::SeqCst);
        while Instant::now() < deadline && self.workers.iter().any(|w| !w.is_finished()) {
            thread::sleep(Duration::from_millis(2));
        }
        let unfinished = self.workers.iter().filter(|w| !w.is_finished()).count();
        // Marked released first: the heartbeat stops extending them and their
        // threads drop their results.
        let left = if unfinished > 0 {
            shared.leases.release_all()
        } else {
            Vec::new()
        };
        shared.background_stop.store(true, Ordering::SeqCst);
        shared.nudge.notify_all();
        for thread in self.background {
            let _ = thread.join();
        }
        let released_at_deadline = release_at_deadline(shared, &left);
        for worker in self.workers {
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        Summary {
            stats: shared.counters.snapshot(),
            released_at_deadline,
            abandoned_threads: unfinished,
            errors: shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

/// Gives back the claims still held at the shutdown deadline; returns how
/// many were released (the others had moved on already).
fn release_at_deadline(shared: &Shared, claims: &[Claim]) -> usize {
    if claims.is_empty() {
        return 0;
    }
    let reason = json!({ "message": "worker shut down before the step finished" });
    let released = shared
        .pool
        .get()
        .map_err(Error::from)
        .and_then(|mut conn| release_steps(&mut conn, claims, &reason));
    match released {
        Ok(reported) => {
            let count = reported.iter().filter(|r| r.result.is_ok()).count();
            shared.counters.released(count);
            count
        }
        Err(error) => {
            error!(%error, claims = claims.len(), "releasing claims at the shutdown deadline failed; they expire with their lease");
            0
        }
    }
}

/// A result to report, owned.
struct Outcome {
    claim: Claim,
    task_id: i64,
    /// The kind whose slot the step holds.
    entry: Option<usize>,
    result: OutcomeKind,
}

enum OutcomeKind {
    Complete(Value),
    Fail(StepFailure),
    Release(Value),
}

impl Outcome {
    fn release(step: &ClaimedStep, entry: Option<usize>, why: &str) -> Self {
        Outcome {
            claim: step.claim(),
            task_id: step.task_id,
            entry,
            result: OutcomeKind::Release(json!({ "message": why })),
        }
    }

    fn report(&self) -> StepReport<'_> {
        match &self.result {
            OutcomeKind::Complete(results) => StepReport::complete(self.claim, results),
            OutcomeKind::Fail(failure) if failure.retryable => {
                StepReport::fail(self.claim, &failure.error, failure.retry_after)
            }
            OutcomeKind::Fail(failure) => StepReport::fail_permanently(self.claim, &failure.error),
            OutcomeKind::Release(reason) => StepReport::release(self.claim, reason),
        }
    }
}

/// What a handler returned, made something the database takes, so that one
/// step's result cannot cost its batch the report: results or an error that
/// jsonb cannot hold (a NUL character) become a permanent failure that says
/// so, and a delay beyond the longest the schema takes
/// ([`MAX_DURATION`](crate::MAX_DURATION)) is that longest delay.
fn storable(result: OutcomeKind) -> OutcomeKind {
    let unstorable = |what: &str, problem: String| {
        warn!(%problem, "a step handler returned {what} that cannot be stored");
        OutcomeKind::Fail(StepFailure::permanent(json!({
            "message": format!("the handler returned {what} that cannot be stored: it {problem}"),
            "unstorable": true,
        })))
    };
    match result {
        OutcomeKind::Complete(results) => match arguments::json_problem(&results) {
            Some(problem) => unstorable("results", problem),
            None => OutcomeKind::Complete(results),
        },
        OutcomeKind::Fail(failure) => match arguments::json_problem(&failure.error) {
            Some(problem) => unstorable("an error", problem),
            None => OutcomeKind::Fail(StepFailure {
                retry_after: failure
                    .retry_after
                    .map(|delay| delay.min(crate::MAX_DURATION)),
                ..failure
            }),
        },
        release @ OutcomeKind::Release(_) => release,
    }
}

/// Claimed steps to run, each with the kind that runs it.
struct Batch {
    steps: Vec<(ClaimedStep, usize)>,
    inputs: BatchInputs,
}

/// One worker thread: run what it holds, report it and claim more in one
/// call, sleep on the wake-up while nothing is claimable, until the shutdown.
fn work(shared: &Shared) {
    let mut conn: Option<PooledPgConnection> = None;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut batch: Option<Batch> = None;
    let stopped = loop {
        if let Some(claimed) = batch.take() {
            match connected(shared, &mut conn) {
                Ok(c) => run_batch(shared, c, &claimed, &mut outcomes),
                Err(error) => {
                    // Past the shutdown deadline with no connection: the claims are
                    // released below if the database comes back, else by the
                    // shutdown (or they expire).
                    batch = Some(claimed);
                    break Err(error);
                }
            }
        }
        let stopping = shared.stopping.load(Ordering::SeqCst);
        match report_and_claim_more(shared, &mut conn, &mut outcomes, stopping) {
            Ok(claimed) if claimed.is_empty() => {
                if stopping {
                    break Ok(());
                }
                let waited = with_retry(shared, &mut conn, |c| {
                    wait_for_claimable_work(c, shared.config.idle_check)
                });
                if let Err(error) = waited {
                    break Err(error);
                }
            }
            Ok(claimed) => batch = Some(prepare(shared, &mut conn, claimed, &mut outcomes)),
            Err(error) => break Err(error),
        }
    };
    if let Err(error) = stopped {
        error!(%error, "a worker thread stopped");
        if let Ok(mut errors) = shared.errors.lock() {
            errors.push(error.to_string());
        }
        // What it still holds goes back, if the database can be reached.
        let held: Vec<Claim> = outcomes
            .iter()
            .map(|o| o.claim)
            .chain(
                batch
                    .iter()
                    .flat_map(|b| b.steps.iter().map(|(s, _)| s.claim())),
            )
            .collect();
        if connection_lost(&mut conn) {
            conn = None;
        }
        if let Ok(c) = connected(shared, &mut conn) {
            let reason = json!({ "message": "worker thread stopped by an error" });
            let _ = release_steps(c, &held, &reason);
        }
        // Its kinds' slots go back to the other threads.
        for outcome in &outcomes {
            finish(shared, outcome);
        }
        for (step, index) in batch.iter().flat_map(|b| b.steps.iter()) {
            shared.leases.finish(step.claim());
            shared.handlers.entries[*index].release();
        }
    }
}

/// Reports `outcomes` (and drops them) and claims the next batch, unless
/// `stopping` or every kind is at its limit.
fn report_and_claim_more(
    shared: &Shared,
    conn: &mut Option<PooledPgConnection>,
    outcomes: &mut Vec<Outcome>,
    stopping: bool,
) -> Result<Vec<ClaimedStep>> {
    let handlers = &shared.handlers;
    // Results of claims the shutdown deadline released are not reported.
    outcomes.retain(|outcome| {
        let keep = !shared.leases.was_released(outcome.claim);
        if !keep {
            finish(shared, outcome);
        }
        keep
    });
    let kinds: Vec<StepKind> = handlers
        .entries
        .iter()
        .filter(|entry| entry.has_room())
        .map(|entry| entry.kind.clone())
        .collect();
    let max_steps = if stopping || kinds.is_empty() {
        0
    } else {
        shared.config.batch
    };
    if max_steps == 0 && outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let request = ClaimRequest::any_task(max_steps, shared.config.lease)
        .with_metadata(&shared.config.metadata)
        .only(&kinds);
    let _span = info_span!("tasker_batch", reports = outcomes.len(), max_steps).entered();
    let reports: Vec<StepReport<'_>> = outcomes.iter().map(Outcome::report).collect();
    let (reported, claimed) =
        with_retry(shared, conn, |c| report_and_claim(c, &reports, &request))?;
    drop(reports);
    let mut touched = Vec::new();
    for (outcome, reported) in outcomes.iter().zip(&reported) {
        if account(shared, outcome, reported) {
            touched.push(outcome.task_id);
        }
        finish(shared, outcome);
    }
    outcomes.clear();
    if !touched.is_empty() && shared.config.finalize {
        if let Ok(mut pending) = shared.touched.lock() {
            pending.extend(touched);
            shared.nudge.notify_one();
        }
    }
    let retries = claimed.iter().filter(|step| step.attempt > 1).count();
    shared.counters.claimed(claimed.len(), retries);
    for step in &claimed {
        shared.leases.hold(step.claim());
    }
    debug!(claimed = claimed.len(), "claimed");
    Ok(claimed)
}

/// Counts a reported result; true when it completed or failed a step.
fn account(shared: &Shared, outcome: &Outcome, reported: &ReportedStep) -> bool {
    let counters = &shared.counters;
    match (&reported.result, &outcome.result) {
        (Ok(_), OutcomeKind::Complete(_)) => {
            counters.completed();
            true
        }
        (Ok(_), OutcomeKind::Fail(_)) => {
            counters.failed();
            true
        }
        (Ok(_), OutcomeKind::Release(_)) => {
            counters.released(1);
            false
        }
        (Err(refusal), _) => {
            counters.lost();
            warn!(%refusal, workflow_step_id = outcome.claim.workflow_step_id, "result refused");
            false
        }
    }
}

/// The step is no longer held: its lease and its kind's slot go.
fn finish(shared: &Shared, outcome: &Outcome) {
    shared.leases.finish(outcome.claim);
    if let Some(index) = outcome.entry {
        shared.handlers.entries[index].release();
    }
}

/// Finds the kind of each claimed step and takes a slot of its limit; a step
/// over its kind's limit (or, after a race with a catalog change, of no kind
/// this worker runs) is released at the next report.
fn prepare(
    shared: &Shared,
    conn: &mut Option<PooledPgConnection>,
    claimed: Vec<ClaimedStep>,
    outcomes: &mut Vec<Outcome>,
) -> Batch {
    let handlers = &shared.handlers;
    let inputs = BatchInputs::new(claimed.iter().map(|s| s.workflow_step_id).collect());
    let mut steps = Vec::with_capacity(claimed.len());
    for step in claimed {
        let template = if handlers.has_task_scoped_kinds() {
            connected(shared, conn)
                .and_then(|c| inputs.of(c, step.workflow_step_id))
                .ok()
                .map(|i| {
                    (
                        i.namespace.clone(),
                        i.task_name.clone(),
                        i.task_version.clone(),
                    )
                })
        } else {
            None
        };
        let template = template
            .as_ref()
            .map(|(n, t, v)| (n.as_str(), t.as_str(), v.as_str()));
        let index = handlers.entry_for(&step.name, template);
        match index {
            Some(index) if handlers.entries[index].try_hold() => steps.push((step, index)),
            Some(_) => outcomes.push(Outcome::release(
                &step,
                None,
                "this worker holds as many steps of the kind as its limit allows",
            )),
            None => outcomes.push(Outcome::release(
                &step,
                None,
                "this worker has no handler for the step",
            )),
        }
    }
    Batch { steps, inputs }
}

/// Runs the batch's handlers one after the other; once the worker is
/// stopping, the steps not yet started are released instead.
fn run_batch(shared: &Shared, conn: &mut PgConnection, batch: &Batch, outcomes: &mut Vec<Outcome>) {
    let conn = RefCell::new(conn);
    for (step, index) in &batch.steps {
        let claim = step.claim();
        if shared.stopping.load(Ordering::SeqCst) {
            outcomes.push(Outcome::release(step, Some(*index), "worker shutting down"));
            continue;
        }
        let _span = info_span!(
            "tasker_step",
            workflow_step_id = step.workflow_step_id,
            task_id = step.task_id,
            name = %step.name,
            attempt = step.attempt
        )
        .entered();
        let context = StepContext {
            step,
            batch: &batch.inputs,
            conn: &conn,
            leases: &shared.leases,
            stopping: &shared.stopping,
        };
        let entry = &shared.handlers.entries[*index];
        let started = Instant::now();
        let ran = catch_unwind(AssertUnwindSafe(|| (entry.handler)(&context)));
        shared.counters.handler_time(started.elapsed());
        let result = match ran {
            Ok(Ok(results)) => OutcomeKind::Complete(results),
            Ok(Err(failure)) => {
                debug!(error = %failure.error, retryable = failure.retryable, "step failed");
                OutcomeKind::Fail(failure)
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                shared.counters.panicked();
                warn!(%message, "step handler panicked");
                OutcomeKind::Fail(StepFailure::retryable(json!({
                    "message": format!("the handler panicked: {message}"),
                    "panicked": true,
                })))
            }
        };
        let result = storable(result);
        outcomes.push(Outcome {
            claim,
            task_id: step.task_id,
            entry: Some(*index),
            result,
        });
    }
}

/// The thread's connection, opened again if it was lost.
fn connected<'c>(
    shared: &Shared,
    conn: &'c mut Option<PooledPgConnection>,
) -> Result<&'c mut PgConnection> {
    with_retry(shared, conn, |_| Ok(()))?;
    match conn {
        Some(c) => Ok(c),
        None => Err(Error::Refused(Refusal::InvalidArgument {
            argument: "connection".to_owned(),
            message: "no connection".to_owned(),
        })),
    }
}

/// Runs `call` on the connection, getting a new one and calling again after
/// a lost connection or a transient error, with a growing pause; gives up
/// with the error once the shutdown deadline has passed. A call made again
/// is the same call: results reported twice under one claim count once.
fn with_retry<T>(
    shared: &Shared,
    conn: &mut Option<PooledPgConnection>,
    mut call: impl FnMut(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    let mut pause = Duration::from_millis(10);
    loop {
        let attempt = match conn {
            Some(c) => call(c),
            None => match shared.pool.get() {
                Ok(c) => call(conn.insert(c)),
                Err(error) => Err(error.into()),
            },
        };
        match attempt {
            Ok(value) => return Ok(value),
            Err(error)
                if (error.is_transient() || connection_lost(conn)) && !past_deadline(shared) =>
            {
                shared.counters.transient_error();
                warn!(%error, "retrying after a transient error");
                *conn = None;
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether the connection is gone: some errors on a dead connection do not
/// say so (Diesel's lookup of a custom type's oid, say), so it is asked.
fn connection_lost(conn: &mut Option<PooledPgConnection>) -> bool {
    conn.as_mut()
        .is_some_and(|c| diesel::sql_query("SELECT 1").execute(&mut **c).is_err())
}

fn past_deadline(shared: &Shared) -> bool {
    shared
        .deadline
        .lock()
        .ok()
        .and_then(|deadline| *deadline)
        .is_some_and(|deadline| Instant::now() >= deadline)
}

/// Sleeps up to `time`, waking early when the background threads stop.
fn pause(shared: &Shared, time: Duration) {
    let until = arguments::deadline_after(time);
    while !shared.background_stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        thread::sleep((until - now).min(Duration::from_millis(10)));
    }
}

/// Extends every claim the worker holds whose lease is half gone, waiting
/// steps and running ones alike.
fn heartbeat(shared: &Shared) {
    let lease = shared.config.lease;
    let tick = (lease / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut conn: Option<PooledPgConnection> = None;
    while !shared.background_stop.load(Ordering::SeqCst) {
        for claim in shared.leases.due(lease / 2) {
            let asked = Instant::now();
            match with_retry(shared, &mut conn, |c| extend_step_claim(c, claim, lease)) {
                Ok(_) => shared.leases.extended_at(claim, asked, lease),
                Err(error) if error.is_refusal() => {
                    // The claim moved on (cancelled, released): its result will be
                    // refused too.
                    debug!(%error, "lease not extended");
                    shared.leases.lost(claim);
                }
                Err(error) => {
                    warn!(%error, "heartbeat failed");
                    conn = None;
                    break;
                }
            }
        }
        pause(shared, tick);
    }
}

/// Releases expired claims every `sweep_every`; finalizes the settled tasks
/// among those reports touched as they come (at most every
/// `FINALIZE_PAUSE`), and every settled task in progress on every sweep (the
/// tasks whose last step another process ran, or whose worker died between
/// its report and this).
fn sweep(shared: &Shared) {
    let config = &shared.config;
    let mut conn: Option<PooledPgConnection> = None;
    let mut swept_at: Option<Instant> = None;
    while !shared.background_stop.load(Ordering::SeqCst) {
        if swept_at.is_none_or(|at| at.elapsed() >= config.sweep_every) {
            if let Err(error) = release_all_expired(shared, &mut conn) {
                warn!(%error, "releasing expired claims failed");
                conn = None;
            }
            if config.finalize {
                if let Err(error) = finalize_settled(shared, &mut conn, None) {
                    warn!(%error, "finalizing settled tasks failed");
                    conn = None;
                }
            }
            swept_at = Some(Instant::now());
        }
        let mut touched = shared
            .touched
            .lock()
            .map(|mut touched| std::mem::take(&mut *touched))
            .unwrap_or_default();
        if !touched.is_empty() {
            touched.sort_unstable();
            touched.dedup();
            for chunk in touched.chunks(SWEEP_BATCH as usize) {
                if let Err(error) = finalize_settled(shared, &mut conn, Some(chunk)) {
                    warn!(%error, "finalizing settled tasks failed");
                    conn = None;
                }
            }
            pause(shared, FINALIZE_PAUSE);
        }
        // Until a report touches tasks, or the next sweep is due.
        let Ok(pending) = shared.touched.lock() else {
            return;
        };
        let wait = config
            .sweep_every
            .saturating_sub(swept_at.map_or(Duration::ZERO, |at| at.elapsed()));
        let _ = shared.nudge.wait_timeout_while(pending, wait, |pending| {
            pending.is_empty() && !shared.background_stop.load(Ordering::SeqCst)
        });
    }
}

fn release_all_expired(shared: &Shared, conn: &mut Option<PooledPgConnection>) -> Result<()> {
    loop {
        let released = with_retry(shared, conn, |c| {
            release_expired_claims(c, Some(SWEEP_BATCH))
        })?;
        if !released.is_empty() {
            shared.counters.expired_released(released.len());
            debug!(steps = released.len(), "released expired claims");
        }
        if released.len() < SWEEP_BATCH as usize {
            return Ok(());
        }
    }
}

/// Finalizes the settled tasks in progress (`among` them), in calls of
/// `SWEEP_BATCH` until fewer come back.
fn finalize_settled(
    shared: &Shared,
    conn: &mut Option<PooledPgConnection>,
    among: Option<&[i64]>,
) -> Result<()> {
    let metadata = &shared.config.metadata;
    loop {
        let finalized = with_retry(shared, conn, |c| {
            finalize_settled_tasks(c, SWEEP_BATCH, among, Some(metadata))
        })?;
        if !finalized.is_empty() {
            shared.counters.finalized(finalized.len());
            debug!(tasks = finalized.len(), "finalized tasks");
        }
        if finalized.len() < SWEEP_BATCH as usize {
            return Ok(());
        }
    }
}
