//! Eight workers share one r2d2 pool and run 200 random DAG workflows to the
//! end through the write path: claim, complete or fail, finalize. Afterwards
//! the database's histories and the workers' own log must show that no step
//! was ever held by two claims, that no step started before its parents were
//! done, and that every step and task ended in a state the rules allow.
//!
//! The workflows and the workers' choices come from a seed printed at the
//! start (`TASKER_CONCURRENCY_SEED=<seed>` reuses one); how the threads
//! interleave is up to the scheduler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use serde_json::json;
use tasker_diesel::models::{
    Task, TaskTransition, WorkflowStep, WorkflowStepEdge, WorkflowStepTransition,
};
use tasker_diesel::schema::{
    tasker_task_transitions, tasker_tasks, tasker_workflow_step_edges,
    tasker_workflow_step_transitions, tasker_workflow_steps,
};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    claim_ready_steps, complete_step, create_task, fail_step, finalize_task, ClaimRequest,
    StepTemplate, TaskRequest, TaskTemplate,
};
use tasker_diesel::{
    Error, ExecutionStatus, PgPool, RecommendedAction, Refusal, StepReadinessStatus, StepState,
    TaskExecutionContext, TaskState,
};

use crate::oracle;

use oracle::{step_move_allowed, task_move_allowed};

const WORKERS: usize = 8;
const TASKS: usize = 200;
/// Tasks pick their template among these, so templates are shared.
const TEMPLATES: usize = 60;
const MAX_STEPS_PER_TASK: u64 = 50;
const MAX_PARENTS: u64 = 4;
const FAILURE_PERCENT: u64 = 25;
const NON_RETRYABLE_PERCENT: u64 = 10;
const DEPENDENT_SYSTEMS: [&str; 3] = ["default", "billing", "shipping"];
const LEASE: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(180);

/// The final states allowed: a task ends `complete` with every step
/// complete, or `error` with a step failed for good. Every step ends
/// complete, failed for good, or pending (never ran) under a parent that is
/// not complete: `finalize_task` does not give up on a task while a failed
/// step still has a retry left.
#[test]
fn eight_workers_run_random_dags_to_the_end_without_double_claims() {
    let seed = seed();
    println!("seed {seed} (rerun with TASKER_CONCURRENCY_SEED={seed})");
    let db = TestDatabase::new();
    let pool = db.pool();
    assert!(
        pool.max_size() as usize > WORKERS,
        "the pool has {} connections; {WORKERS} workers and the monitor need {}",
        pool.max_size(),
        WORKERS + 1
    );

    let mut rng = Rng::new(seed);
    let creation = Instant::now();
    let plan = create_tasks(&mut pool.get().expect("connection"), &mut rng, seed);
    println!(
        "created {} tasks with {} steps and {} edges in {:.2?}",
        plan.task_ids.len(),
        plan.step_count,
        plan.edges.len(),
        creation.elapsed()
    );

    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let workers: Vec<JoinHandle<Result<WorkerStats, String>>> = (0..WORKERS)
        .map(|index| {
            let pool = pool.clone();
            let shared = Arc::clone(&shared);
            let worker_seed = seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            thread::spawn(move || work(index, worker_seed, &pool, &shared))
        })
        .collect();

    let outcome = monitor(&pool, &plan.task_ids, &shared, started);
    let wall = started.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    if let Err(problem) = outcome {
        let diagnostics = diagnose(&pool, &plan.task_ids);
        let stuck = join_within(workers, Duration::from_secs(10));
        panic!("seed {seed}: {problem}\n{diagnostics}\nworkers: {stuck:?}");
    }
    let stats = match join_within(workers, Duration::from_secs(30)) {
        Ok(stats) => stats,
        Err(problem) => panic!(
            "seed {seed}: {problem}\n{}",
            diagnose(&pool, &plan.task_ids)
        ),
    };

    let log = std::mem::take(&mut *shared.log.lock().unwrap());
    let finalizations = std::mem::take(&mut *shared.finalizations.lock().unwrap());
    let mut conn = pool.get().expect("connection");
    let summary = check_outcome(&mut conn, &plan, &log, &finalizations, seed);
    let left_over = claim_ready_steps(&mut conn, &ClaimRequest::any_task(4, LEASE)).expect("claim");
    assert!(
        left_over.is_empty(),
        "claimable after the end: {left_over:?}"
    );

    let executions = log.len();
    let failures = log.iter().filter(|execution| execution.failed).count();
    let seconds = wall.as_secs_f64();
    let claim_calls = stats.iter().map(|s| s.claim_calls).sum::<usize>();
    let claim_time = stats.iter().map(|s| s.claim_time).sum::<Duration>();
    println!(
        "workers: {claim_calls} claim calls ({} empty, {:.2?} each on average), \
         {} finalize calls ({} refused as not finished)",
        stats.iter().map(|s| s.empty_claims).sum::<usize>(),
        claim_time / claim_calls.max(1) as u32,
        stats.iter().map(|s| s.finalize_calls).sum::<usize>(),
        stats.iter().map(|s| s.not_finished).sum::<usize>(),
    );
    println!("{summary}");
    println!(
        "SUMMARY seed={seed} tasks={TASKS} ({} complete, {} error) steps={} executions={executions} \
         failures={failures} ({:.1}%) wall={seconds:.2}s steps/s={:.0} executions/s={:.0}",
        summary.complete_tasks,
        summary.error_tasks,
        plan.step_count,
        100.0 * failures as f64 / executions.max(1) as f64,
        plan.step_count as f64 / seconds,
        executions as f64 / seconds,
    );
}

/// `finalize_task` locks the task's unfinished steps before it reads the
/// execution context, so no claim can take a step between that read and the
/// finalization's commit. Here a pending step's requested backoff ends while
/// the finalization's transaction is held open: a claim made then still sees
/// the task in progress and the step ready by its own clock, and must find it
/// locked.
#[test]
fn a_claim_cannot_slip_in_while_a_task_is_being_finalized() {
    let db = TestDatabase::new();
    let mut finalizer = db.connection();
    let mut claimer = db.connection();
    let template = TaskTemplate::new("concurrency", "finalize_race", "1.0.0")
        .step(StepTemplate::new("fails_for_good").retry_limit(1))
        .step(StepTemplate::new("backs_off"));
    let task = create_task(&mut claimer, &TaskRequest::new(&template)).expect("task");
    let task_id = task.task.task_id;
    let failing = task.step("fails_for_good").expect("step").workflow_step_id;
    let backing_off = task.step("backs_off").expect("step").workflow_step_id;
    let claimed = claim_ready_steps(&mut claimer, &ClaimRequest::for_tasks(&[task_id], 1, LEASE))
        .expect("claim");
    assert_eq!(claimed[0].workflow_step_id, failing);
    fail_step(&mut claimer, claimed[0].claim(), &json!({}), None).expect("fail");
    // The other step asked to wait 2 s from an attempt that started 1.7 s ago.
    diesel::sql_query(REQUESTED_BACKOFF_ENDING_SOON_SQL)
        .bind::<BigInt, _>(backing_off)
        .execute(&mut claimer)
        .expect("requested backoff");

    finalizer
        .transaction(|finalizer| {
            assert_eq!(finalize_task(finalizer, task_id, None)?, TaskState::Error);
            thread::sleep(Duration::from_millis(600));
            let slipped = claim_ready_steps(&mut claimer, &ClaimRequest::any_task(5, LEASE))?;
            assert!(
                slipped.is_empty(),
                "claimed while task {task_id} was being finalized as error: {slipped:?}"
            );
            Ok::<_, Error>(())
        })
        .expect("finalize");
    assert!(
        claim_ready_steps(&mut claimer, &ClaimRequest::any_task(5, LEASE))
            .expect("claim after")
            .is_empty(),
        "a task in error is not claimed from"
    );
}

const REQUESTED_BACKOFF_ENDING_SOON_SQL: &str = "\
    UPDATE tasker_workflow_steps \
    SET backoff_request_seconds = 2, \
        last_attempted_at = (now() AT TIME ZONE 'UTC') - interval '1700 milliseconds' \
    WHERE workflow_step_id = $1";

// Workflows ---------------------------------------------------------------------------

/// The tasks as created, and the edges their templates asked for.
struct Plan {
    task_ids: Vec<i64>,
    step_count: usize,
    /// (parent step id, child step id).
    edges: BTreeSet<(i64, i64)>,
}

fn random_template(rng: &mut Rng, index: usize) -> TaskTemplate {
    let step_count = rng.range(1, MAX_STEPS_PER_TASK);
    let mut template = TaskTemplate::new("concurrency", format!("random_dag_{index}"), "1.0.0");
    for position in 0..step_count {
        let mut parents = BTreeSet::new();
        let wanted = rng.range(0, position.min(MAX_PARENTS));
        while (parents.len() as u64) < wanted {
            // Half of the parents among the latest steps, for long chains.
            let parent = if rng.percent(50) {
                position - 1 - rng.below(position.min(5))
            } else {
                rng.below(position)
            };
            parents.insert(parent);
        }
        let system = DEPENDENT_SYSTEMS[rng.below(DEPENDENT_SYSTEMS.len() as u64) as usize];
        template = template.step(
            StepTemplate::new(format!("step_{position}"))
                .dependent_system(system)
                .retry_limit(rng.range(1, 4) as i32)
                .retryable(!rng.percent(NON_RETRYABLE_PERCENT))
                .depends_on(parents.iter().map(|parent| format!("step_{parent}"))),
        );
    }
    template
}

/// Creates the tasks, each of a random template with a context of its own,
/// and checks that each step got its template's flags.
fn create_tasks(conn: &mut PgConnection, rng: &mut Rng, seed: u64) -> Plan {
    let templates: Vec<TaskTemplate> = (0..TEMPLATES)
        .map(|index| random_template(rng, index))
        .collect();
    let mut plan = Plan {
        task_ids: Vec::with_capacity(TASKS),
        step_count: 0,
        edges: BTreeSet::new(),
    };
    for number in 0..TASKS {
        let template = &templates[rng.below(TEMPLATES as u64) as usize];
        let request = TaskRequest::new(template)
            .context(json!({"task_number": number, "seed": seed}))
            .initiator("concurrency test");
        let created = create_task(conn, &request)
            .unwrap_or_else(|error| panic!("seed {seed}: create_task {number}: {error:?}"));
        assert!(created.created, "task {number} already existed");
        assert_eq!(created.steps.len(), template.steps.len());
        let ids: HashMap<&str, i64> = created
            .steps
            .iter()
            .map(|step| (step.name.as_str(), step.step.workflow_step_id))
            .collect();
        for step in &template.steps {
            let row = created.step(&step.name).expect("created step");
            assert_eq!(
                (row.retryable, row.retry_limit),
                (step.retryable, Some(step.retry_limit)),
                "flags of {} in task {}",
                step.name,
                created.task.task_id
            );
            for parent in &step.depends_on {
                plan.edges
                    .insert((ids[parent.as_str()], ids[step.name.as_str()]));
            }
        }
        plan.step_count += created.steps.len();
        plan.task_ids.push(created.task.task_id);
    }
    plan
}

// Workers -----------------------------------------------------------------------------

/// One execution of a step by a worker, as the worker saw it. `claimed` is
/// taken right after the claim returned (committed), `ended` right before the
/// result is reported, so for one step an execution's `ended` must come
/// before the next execution's `claimed`.
#[derive(Debug, Clone)]
struct Execution {
    worker: usize,
    task_id: i64,
    step_id: i64,
    claim_id: i64,
    attempt: i32,
    claimed: u64,
    ended: u64,
    failed: bool,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    sequence: AtomicU64,
    log: Mutex<Vec<Execution>>,
    /// (task id, the state finalize_task returned).
    finalizations: Mutex<Vec<(i64, TaskState)>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn next(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::SeqCst)
    }
}

#[derive(Debug, Default)]
struct WorkerStats {
    claim_calls: usize,
    claim_time: Duration,
    empty_claims: usize,
    finalize_calls: usize,
    not_finished: usize,
}

fn work(index: usize, seed: u64, pool: &PgPool, shared: &Shared) -> Result<WorkerStats, String> {
    let outcome = work_until_stopped(index, seed, pool, shared);
    if let Err(error) = &outcome {
        shared.errors.lock().unwrap().push(error.clone());
        shared.stop.store(true, Ordering::SeqCst);
    }
    outcome
}

fn work_until_stopped(
    index: usize,
    seed: u64,
    pool: &PgPool,
    shared: &Shared,
) -> Result<WorkerStats, String> {
    let mut rng = Rng::new(seed);
    let mut stats = WorkerStats::default();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut conn = pool
            .get()
            .map_err(|error| format!("worker {index}: no connection: {error}"))?;
        let max_steps = rng.range(1, 4) as u32;
        let claiming = Instant::now();
        let claimed = claim_ready_steps(&mut conn, &ClaimRequest::any_task(max_steps, LEASE))
            .map_err(|error| format!("worker {index}: claim_ready_steps: {error:?}"))?;
        stats.claim_time += claiming.elapsed();
        stats.claim_calls += 1;
        if claimed.is_empty() {
            stats.empty_claims += 1;
            drop(conn);
            thread::sleep(Duration::from_millis(rng.range(50, 200)));
            continue;
        }
        let claimed_at: Vec<u64> = claimed.iter().map(|_| shared.next()).collect();
        for (step, claimed) in claimed.iter().zip(claimed_at) {
            // The work itself: a moment, so that overlapping claims would show.
            thread::sleep(Duration::from_micros(rng.below(2_000)));
            let failed = rng.percent(FAILURE_PERCENT);
            let ended = shared.next();
            shared.log.lock().unwrap().push(Execution {
                worker: index,
                task_id: step.task_id,
                step_id: step.workflow_step_id,
                claim_id: step.claim_id,
                attempt: step.attempt,
                claimed,
                ended,
                failed,
            });
            let reported = if failed {
                let retry_after = rng.percent(50).then_some(Duration::ZERO);
                fail_step(
                    &mut conn,
                    step.claim(),
                    &json!({"message": "simulated failure", "worker": index,
                            "attempt": step.attempt}),
                    retry_after,
                )
            } else {
                complete_step(
                    &mut conn,
                    step.claim(),
                    &json!({"worker": index, "attempt": step.attempt}),
                )
            };
            reported.map_err(|error| {
                format!(
                    "worker {index}: reporting {} of step {} (claim {}, attempt {}): {error:?}",
                    if failed { "failure" } else { "success" },
                    step.workflow_step_id,
                    step.claim_id,
                    step.attempt
                )
            })?;
            finalize_if_finished(&mut conn, index, step.task_id, shared, &mut stats)?;
        }
    }
    Ok(stats)
}

/// Finalizes the task when its context says so. Refused as not finished:
/// someone else's work changed the picture meanwhile, fine.
fn finalize_if_finished(
    conn: &mut PgConnection,
    worker: usize,
    task_id: i64,
    shared: &Shared,
    stats: &mut WorkerStats,
) -> Result<(), String> {
    let context = TaskExecutionContext::find(conn, task_id)
        .map_err(|error| format!("worker {worker}: context of task {task_id}: {error:?}"))?
        .ok_or_else(|| format!("worker {worker}: task {task_id} has no context"))?;
    if context.recommended_action != RecommendedAction::FinalizeTask
        && context.execution_status != ExecutionStatus::BlockedByFailures
    {
        return Ok(());
    }
    stats.finalize_calls += 1;
    match finalize_task(conn, task_id, Some(&json!({"worker": worker}))) {
        Ok(state) => {
            shared.finalizations.lock().unwrap().push((task_id, state));
            Ok(())
        }
        Err(Error::Refused(Refusal::TaskNotFinished { .. })) => {
            stats.not_finished += 1;
            Ok(())
        }
        Err(error) => Err(format!(
            "worker {worker}: finalize_task({task_id}) after {context:?}: {error:?}"
        )),
    }
}

/// Waits until every task is complete or in error, a worker reports an error
/// or the time is up.
fn monitor(
    pool: &PgPool,
    task_ids: &[i64],
    shared: &Shared,
    started: Instant,
) -> Result<(), String> {
    let mut conn = pool.get().map_err(|error| format!("monitor: {error}"))?;
    let mut last_report = Instant::now();
    loop {
        if let Some(error) = shared.errors.lock().unwrap().first() {
            return Err(format!("a worker failed: {error}"));
        }
        let contexts = TaskExecutionContext::find_many(&mut conn, task_ids)
            .map_err(|error| format!("monitor: find_many: {error:?}"))?;
        let finished = contexts
            .iter()
            .filter(|context| matches!(context.status, TaskState::Complete | TaskState::Error))
            .count();
        if finished == task_ids.len() {
            return Ok(());
        }
        if started.elapsed() > TIMEOUT {
            return Err(format!(
                "timeout after {TIMEOUT:?}: {finished} of {} tasks finalized",
                task_ids.len()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            println!(
                "[{:>6.1?}] {finished}/{} tasks finalized, {} executions",
                started.elapsed(),
                task_ids.len(),
                shared.log.lock().unwrap().len()
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Joins the workers, giving up on those still running after `patience`.
fn join_within(
    workers: Vec<JoinHandle<Result<WorkerStats, String>>>,
    patience: Duration,
) -> Result<Vec<WorkerStats>, String> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline && !workers.iter().all(JoinHandle::is_finished) {
        thread::sleep(Duration::from_millis(50));
    }
    let running: Vec<usize> = (0..workers.len())
        .filter(|&index| !workers[index].is_finished())
        .collect();
    if !running.is_empty() {
        return Err(format!(
            "workers {running:?} still running {patience:?} after the stop"
        ));
    }
    workers
        .into_iter()
        .enumerate()
        .map(|(index, worker)| match worker.join() {
            Ok(outcome) => outcome,
            Err(panic) => Err(format!("worker {index} panicked: {panic:?}")),
        })
        .collect()
}

// Diagnostics ---------------------------------------------------------------------------

#[derive(Debug, QueryableByName)]
struct Backend {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Nullable<Text>)]
    state: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    wait_event_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    wait_event: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    seconds: Option<f64>,
    #[diesel(sql_type = Text)]
    blocked_by: String,
    #[diesel(sql_type = Nullable<Text>)]
    query: Option<String>,
}

const BACKENDS_SQL: &str = "\
    SELECT pid, state, wait_event_type, wait_event, \
           extract(epoch FROM clock_timestamp() - query_start)::float8 AS seconds, \
           pg_blocking_pids(pid)::text AS blocked_by, left(query, 200) AS query \
    FROM pg_stat_activity \
    WHERE datname = current_database() AND pid <> pg_backend_pid() \
    ORDER BY pid";

#[derive(Debug, QueryableByName)]
struct WaitingLock {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    locktype: String,
    #[diesel(sql_type = Text)]
    mode: String,
    #[diesel(sql_type = Text)]
    target: String,
}

const WAITING_LOCKS_SQL: &str = "\
    SELECT pid, locktype, mode, \
           coalesce(relation::regclass::text, transactionid::text, virtualxid, '') AS target \
    FROM pg_locks WHERE NOT granted ORDER BY pid";

/// What the database looks like when the run went wrong: the backends, the
/// locks waited for, and the tasks that did not finish.
fn diagnose(pool: &PgPool, task_ids: &[i64]) -> String {
    let Ok(mut conn) = pool.get_timeout(Duration::from_secs(5)) else {
        return "diagnostics: no connection left in the pool".to_owned();
    };
    let mut out = String::from("backends:\n");
    match diesel::sql_query(BACKENDS_SQL).load::<Backend>(&mut conn) {
        Ok(backends) => {
            for b in backends {
                out += &format!(
                    "  pid {} {:?} wait {:?}/{:?} for {:.1?}s blocked by {} : {:?}\n",
                    b.pid,
                    b.state,
                    b.wait_event_type,
                    b.wait_event,
                    b.seconds,
                    b.blocked_by,
                    b.query
                );
            }
        }
        Err(error) => out += &format!("  pg_stat_activity: {error}\n"),
    }
    out += "locks waited for:\n";
    match diesel::sql_query(WAITING_LOCKS_SQL).load::<WaitingLock>(&mut conn) {
        Ok(locks) => {
            for lock in locks {
                out += &format!(
                    "  pid {} waits for {} {} on {}\n",
                    lock.pid, lock.mode, lock.locktype, lock.target
                );
            }
        }
        Err(error) => out += &format!("  pg_locks: {error}\n"),
    }
    let contexts = TaskExecutionContext::find_many(&mut conn, task_ids).unwrap_or_default();
    let unfinished: Vec<&TaskExecutionContext> = contexts
        .iter()
        .filter(|context| !matches!(context.status, TaskState::Complete | TaskState::Error))
        .collect();
    out += &format!("{} unfinished tasks; the first ones:\n", unfinished.len());
    for context in unfinished.iter().take(5) {
        out += &format!("  {context:?}\n");
        let steps = StepReadinessStatus::for_task(context.task_id)
            .load(&mut conn)
            .unwrap_or_default();
        for step in steps
            .iter()
            .filter(|step| step.current_state != StepState::Complete)
        {
            out += &format!("    {step:?}\n");
        }
    }
    out
}

// Checks --------------------------------------------------------------------------------

/// A transition of a step or a task.
#[derive(Debug, Clone, Copy)]
struct Move<S> {
    id: i64,
    from: Option<S>,
    to: S,
    sort_key: i32,
    most_recent: bool,
    at: NaiveDateTime,
}

impl From<&WorkflowStepTransition> for Move<StepState> {
    fn from(t: &WorkflowStepTransition) -> Self {
        Move {
            id: t.id,
            from: t.from_state,
            to: t.to_state,
            sort_key: t.sort_key,
            most_recent: t.most_recent,
            at: t.created_at,
        }
    }
}

impl From<&TaskTransition> for Move<TaskState> {
    fn from(t: &TaskTransition) -> Self {
        Move {
            id: t.id,
            from: t.from_state,
            to: t.to_state,
            sort_key: t.sort_key,
            most_recent: t.most_recent,
            at: t.created_at,
        }
    }
}

#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, holds: bool, describe: impl FnOnce() -> String) {
        if !holds {
            self.0.push(describe());
        }
    }
}

/// Sort keys increasing, each move starting where the previous one ended and
/// allowed by `allowed`, exactly one most recent move: the last one.
fn check_history<S: Copy + Eq + Debug + Default>(
    entity: &str,
    moves: &[Move<S>],
    allowed: fn(S, S) -> bool,
    violations: &mut Violations,
) {
    let mut previous: Option<&Move<S>> = None;
    for current in moves {
        let expected_from = previous.map(|p| p.to);
        violations.check(current.from == expected_from, || {
            format!(
                "{entity}: transition {} comes from {:?}, \
                 the previous one went to {expected_from:?}",
                current.id, current.from
            )
        });
        let from = current.from.unwrap_or_default();
        violations.check(allowed(from, current.to), || {
            format!(
                "{entity}: transition {} moves {from:?} -> {:?}, which the state machine forbids",
                current.id, current.to
            )
        });
        if let Some(previous) = previous {
            violations.check(previous.sort_key < current.sort_key, || {
                format!(
                    "{entity}: sort keys {} then {}",
                    previous.sort_key, current.sort_key
                )
            });
            violations.check(previous.at <= current.at, || {
                format!(
                    "{entity}: transition {} at {} is earlier than the one before it at {}",
                    current.id, current.at, previous.at
                )
            });
        }
        previous = Some(current);
    }
    let most_recent: Vec<i64> = moves
        .iter()
        .filter(|m| m.most_recent)
        .map(|m| m.id)
        .collect();
    let last = moves.last().map(|m| m.id);
    violations.check(
        (moves.is_empty() && most_recent.is_empty())
            || most_recent == last.into_iter().collect::<Vec<_>>(),
        || format!("{entity}: most recent transitions {most_recent:?}, the last one is {last:?}"),
    );
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Summary {
    complete_tasks: usize,
    error_tasks: usize,
    complete_steps: usize,
    permanently_failed_steps: usize,
    /// Pending under an ancestor in error.
    pending_steps: usize,
    /// Final execution status of each (task state, execution status).
    final_contexts: BTreeMap<(TaskState, ExecutionStatus), usize>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "final steps: {} complete, {} permanently failed, {} pending under a failed \
             ancestor; final contexts: {:?}",
            self.complete_steps,
            self.permanently_failed_steps,
            self.pending_steps,
            self.final_contexts
        )
    }
}

/// Everything the run left behind, read back from the database.
struct Outcome {
    tasks: Vec<Task>,
    steps: HashMap<i64, WorkflowStep>,
    /// Child step id -> its parents.
    parents: HashMap<i64, Vec<i64>>,
    step_moves: HashMap<i64, Vec<Move<StepState>>>,
    task_moves: HashMap<i64, Vec<Move<TaskState>>>,
    contexts: HashMap<i64, TaskExecutionContext>,
}

fn load_outcome(conn: &mut PgConnection, plan: &Plan, violations: &mut Violations) -> Outcome {
    let tasks: Vec<Task> = tasker_tasks::table
        .filter(tasker_tasks::task_id.eq_any(&plan.task_ids))
        .order(tasker_tasks::task_id)
        .select(Task::as_select())
        .load(conn)
        .expect("tasks");
    let steps: Vec<WorkflowStep> = tasker_workflow_steps::table
        .filter(tasker_workflow_steps::task_id.eq_any(&plan.task_ids))
        .select(WorkflowStep::as_select())
        .load(conn)
        .expect("steps");
    let step_ids: Vec<i64> = steps.iter().map(|step| step.workflow_step_id).collect();
    let edges: Vec<WorkflowStepEdge> = tasker_workflow_step_edges::table
        .filter(tasker_workflow_step_edges::to_step_id.eq_any(&step_ids))
        .select(WorkflowStepEdge::as_select())
        .load(conn)
        .expect("edges");
    let step_transitions: Vec<WorkflowStepTransition> = tasker_workflow_step_transitions::table
        .filter(tasker_workflow_step_transitions::workflow_step_id.eq_any(&step_ids))
        .order((
            tasker_workflow_step_transitions::workflow_step_id,
            tasker_workflow_step_transitions::sort_key,
        ))
        .select(WorkflowStepTransition::as_select())
        .load(conn)
        .expect("step transitions");
    let task_transitions: Vec<TaskTransition> = tasker_task_transitions::table
        .filter(tasker_task_transitions::task_id.eq_any(&plan.task_ids))
        .order((
            tasker_task_transitions::task_id,
            tasker_task_transitions::sort_key,
        ))
        .select(TaskTransition::as_select())
        .load(conn)
        .expect("task transitions");
    let contexts = TaskExecutionContext::find_many(conn, &plan.task_ids).expect("contexts");

    let stored: BTreeSet<(i64, i64)> = edges
        .iter()
        .map(|edge| (edge.from_step_id, edge.to_step_id))
        .collect();
    violations.check(stored == plan.edges, || {
        format!(
            "edges differ from the templates': {} stored, {} asked for",
            stored.len(),
            plan.edges.len()
        )
    });
    violations.check(steps.len() == plan.step_count, || {
        format!("{} steps stored, {} created", steps.len(), plan.step_count)
    });
    let mut parents: HashMap<i64, Vec<i64>> = HashMap::new();
    for &(parent, child) in &stored {
        parents.entry(child).or_default().push(parent);
    }
    let mut step_moves: HashMap<i64, Vec<Move<StepState>>> = HashMap::new();
    for transition in &step_transitions {
        step_moves
            .entry(transition.workflow_step_id)
            .or_default()
            .push(transition.into());
    }
    let mut task_moves: HashMap<i64, Vec<Move<TaskState>>> = HashMap::new();
    for transition in &task_transitions {
        task_moves
            .entry(transition.task_id)
            .or_default()
            .push(transition.into());
    }
    Outcome {
        tasks,
        steps: steps
            .into_iter()
            .map(|step| (step.workflow_step_id, step))
            .collect(),
        parents,
        step_moves,
        task_moves,
        contexts: contexts
            .into_iter()
            .map(|context| (context.task_id, context))
            .collect(),
    }
}

fn current<S: Copy + Default>(moves: Option<&Vec<Move<S>>>) -> S {
    moves
        .and_then(|moves| moves.last())
        .map_or_else(S::default, |m| m.to)
}

fn permanently_failed(step: &WorkflowStep, state: StepState) -> bool {
    let attempts = step.attempts.unwrap_or(0);
    state == StepState::Error
        && (attempts >= step.retry_limit.unwrap_or(3) || (!step.retryable && attempts >= 1))
}

fn check_outcome(
    conn: &mut PgConnection,
    plan: &Plan,
    log: &[Execution],
    finalizations: &[(i64, TaskState)],
    seed: u64,
) -> Summary {
    let mut violations = Violations::default();
    let outcome = load_outcome(conn, plan, &mut violations);
    let mut summary = Summary::default();
    let no_moves = Vec::new();
    let no_task_moves = Vec::new();
    let state_of = |step_id: i64| current(outcome.step_moves.get(&step_id));

    // When each step finished (its move to complete or resolved_manually).
    let done_at: HashMap<i64, NaiveDateTime> = outcome
        .step_moves
        .iter()
        .filter_map(|(&step_id, moves)| {
            moves
                .iter()
                .find(|m| matches!(m.to, StepState::Complete | StepState::ResolvedManually))
                .map(|m| (step_id, m.at))
        })
        .collect();

    for (&step_id, step) in &outcome.steps {
        let entity = format!("step {step_id} of task {}", step.task_id);
        let moves = outcome.step_moves.get(&step_id).unwrap_or(&no_moves);
        // 5. A valid walk of the step state machine.
        check_history(&entity, moves, step_move_allowed, &mut violations);

        // 1. Each in_progress is left by exactly one move before the next one.
        let starts: Vec<usize> = (0..moves.len())
            .filter(|&i| moves[i].to == StepState::InProgress)
            .collect();
        for (n, &start) in starts.iter().enumerate() {
            let until = starts.get(n + 1).copied().unwrap_or(moves.len());
            let exits = moves[start + 1..until]
                .iter()
                .filter(|m| m.from == Some(StepState::InProgress))
                .count();
            violations.check(exits == 1, || {
                format!(
                    "{entity}: in_progress transition {} is left by {exits} moves \
                     before the next start",
                    moves[start].id
                )
            });
        }

        // 2. No start before every parent finished.
        for &start in &starts {
            for &parent in outcome.parents.get(&step_id).unwrap_or(&Vec::new()) {
                let finished = done_at.get(&parent);
                violations.check(finished.is_some_and(|&at| at <= moves[start].at), || {
                    format!(
                        "{entity}: started at {} (transition {}) \
                         but parent {parent} finished at {finished:?}",
                        moves[start].at, moves[start].id
                    )
                });
            }
        }

        // 6. One attempt per start.
        violations.check(step.attempts.unwrap_or(0) as usize == starts.len(), || {
            format!(
                "{entity}: {:?} attempts, {} in_progress transitions",
                step.attempts,
                starts.len()
            )
        });

        // 3. Flags and final state.
        let state = current(Some(moves));
        violations.check(!step.in_process && step.claimed_until.is_none(), || {
            format!(
                "{entity}: ends {state:?} with in_process {} and claimed_until {:?}",
                step.in_process, step.claimed_until
            )
        });
        violations.check(step.processed == (state == StepState::Complete), || {
            format!("{entity}: ends {state:?} with processed {}", step.processed)
        });
        match state {
            StepState::Complete => summary.complete_steps += 1,
            StepState::Error if permanently_failed(step, state) => {
                summary.permanently_failed_steps += 1
            }
            StepState::Error => violations.0.push(format!(
                "{entity}: ends in error with a retry left ({:?} of {:?} attempts)",
                step.attempts, step.retry_limit
            )),
            StepState::Pending => {
                summary.pending_steps += 1;
                violations.check(moves.is_empty(), || {
                    format!("{entity}: ends pending after {} transitions", moves.len())
                });
                // A parent not complete is pending or in error, and so on up:
                // some ancestor is in error.
                let parents = outcome.parents.get(&step_id).cloned().unwrap_or_default();
                violations.check(
                    parents
                        .iter()
                        .any(|&parent| state_of(parent) != StepState::Complete),
                    || {
                        format!(
                            "{entity}: ends pending although its parents {parents:?} are complete"
                        )
                    },
                );
            }
            other => violations.0.push(format!("{entity}: ends {other:?}")),
        }
    }

    let mut steps_by_task: HashMap<i64, Vec<&WorkflowStep>> = HashMap::new();
    for step in outcome.steps.values() {
        steps_by_task.entry(step.task_id).or_default().push(step);
    }

    for task in &outcome.tasks {
        let entity = format!("task {}", task.task_id);
        let moves = outcome
            .task_moves
            .get(&task.task_id)
            .unwrap_or(&no_task_moves);
        // 5. A valid walk of the task state machine.
        check_history(&entity, moves, task_move_allowed, &mut violations);
        let state = current(Some(moves));
        let steps = steps_by_task
            .get(&task.task_id)
            .cloned()
            .unwrap_or_default();
        let states: Vec<StepState> = steps
            .iter()
            .map(|step| state_of(step.workflow_step_id))
            .collect();
        // 4. Complete with every step complete, or error with a step failed for good.
        match state {
            TaskState::Complete => {
                summary.complete_tasks += 1;
                violations.check(states.iter().all(|&s| s == StepState::Complete), || {
                    format!("{entity}: complete with steps in {states:?}")
                });
            }
            TaskState::Error => {
                summary.error_tasks += 1;
                violations.check(
                    steps
                        .iter()
                        .zip(&states)
                        .any(|(step, &s)| permanently_failed(step, s)),
                    || format!("{entity}: error without a permanently failed step"),
                );
            }
            other => violations.0.push(format!("{entity}: ends {other:?}")),
        }
        violations.check(task.complete == (state == TaskState::Complete), || {
            format!("{entity}: ends {state:?} with complete = {}", task.complete)
        });

        // The task started before its steps and was finalized after them.
        let step_moves = steps.iter().flat_map(|step| {
            outcome
                .step_moves
                .get(&step.workflow_step_id)
                .unwrap_or(&no_moves)
        });
        let first_step_move = step_moves.clone().map(|m| m.at).min();
        let last_step_move = step_moves.map(|m| m.at).max();
        let task_started = moves.first().map(|m| m.at);
        let finalized = moves.last().map(|m| m.at);
        violations.check(task_started <= first_step_move, || {
            format!(
                "{entity}: started at {task_started:?}, \
                 its first step moved at {first_step_move:?}"
            )
        });
        violations.check(finalized >= last_step_move, || {
            format!(
                "{entity}: finalized at {finalized:?}, a step moved later at {last_step_move:?}"
            )
        });

        if let Some(context) = outcome.contexts.get(&task.task_id) {
            *summary
                .final_contexts
                .entry((state, context.execution_status))
                .or_default() += 1;
        }
    }

    // What finalize_task answered agrees with where the task ended.
    let final_state: HashMap<i64, TaskState> = outcome
        .tasks
        .iter()
        .map(|task| (task.task_id, current(outcome.task_moves.get(&task.task_id))))
        .collect();
    for &(task_id, returned) in finalizations {
        violations.check(final_state.get(&task_id) == Some(&returned), || {
            format!(
                "finalize_task({task_id}) returned {returned:?}, the task ends {:?}",
                final_state.get(&task_id)
            )
        });
    }

    check_log(&outcome, log, &mut violations);

    if !violations.0.is_empty() {
        let shown: Vec<&String> = violations.0.iter().take(30).collect();
        panic!(
            "seed {seed}: {} violations, the first ones:\n{}\n{summary}",
            violations.0.len(),
            shown
                .iter()
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    summary
}

/// The workers' log against the database: per step, claims one after the
/// other, each the step's in_progress transition in order and ending the way
/// the worker reported; each claim after every parent's successful run ended.
fn check_log(outcome: &Outcome, log: &[Execution], violations: &mut Violations) {
    let mut by_step: HashMap<i64, Vec<&Execution>> = HashMap::new();
    for execution in log {
        by_step
            .entry(execution.step_id)
            .or_default()
            .push(execution);
    }
    let succeeded: HashMap<i64, u64> = log
        .iter()
        .filter(|execution| !execution.failed)
        .map(|execution| (execution.step_id, execution.ended))
        .collect();
    let no_moves = Vec::new();
    for (&step_id, step) in &outcome.steps {
        let mut executions = by_step.remove(&step_id).unwrap_or_default();
        executions.sort_by_key(|execution| execution.claimed);
        let entity = format!("step {step_id} of task {}", step.task_id);
        for pair in executions.windows(2) {
            violations.check(pair[0].ended < pair[1].claimed, || {
                format!("{entity}: two live claims: {:?} and {:?}", pair[0], pair[1])
            });
        }
        let moves = outcome.step_moves.get(&step_id).unwrap_or(&no_moves);
        let starts: Vec<(usize, i64)> = moves
            .iter()
            .enumerate()
            .filter(|(_, m)| m.to == StepState::InProgress)
            .map(|(i, m)| (i, m.id))
            .collect();
        let claim_ids: Vec<i64> = executions.iter().map(|e| e.claim_id).collect();
        let start_ids: Vec<i64> = starts.iter().map(|&(_, id)| id).collect();
        violations.check(claim_ids == start_ids, || {
            format!("{entity}: workers held claims {claim_ids:?}, the history starts {start_ids:?}")
        });
        for (n, execution) in executions.iter().enumerate() {
            violations.check(execution.attempt as usize == n + 1, || {
                format!(
                    "{entity}: execution #{} was told attempt {}",
                    n + 1,
                    execution.attempt
                )
            });
            violations.check(execution.task_id == step.task_id, || {
                format!("{entity}: claimed as a step of task {}", execution.task_id)
            });
            let Some(&(index, _)) = starts.iter().find(|&&(_, id)| id == execution.claim_id) else {
                continue;
            };
            let expected = if execution.failed {
                StepState::Error
            } else {
                StepState::Complete
            };
            let next = moves.get(index + 1).map(|m| m.to);
            violations.check(next == Some(expected), || {
                format!(
                    "{entity}: worker {} reported {expected:?} under claim {}, \
                     the history moved to {next:?}",
                    execution.worker, execution.claim_id
                )
            });
            for &parent in outcome.parents.get(&step_id).unwrap_or(&Vec::new()) {
                let parent_ended = succeeded.get(&parent);
                violations.check(
                    parent_ended.is_some_and(|&ended| ended < execution.claimed),
                    || {
                        format!(
                            "{entity}: claimed at {} (claim {}) \
                         but parent {parent} ran to success until {parent_ended:?}",
                            execution.claimed, execution.claim_id
                        )
                    },
                );
            }
        }
    }
    violations.check(by_step.is_empty(), || {
        format!(
            "executions of unknown steps: {:?}",
            by_step.keys().collect::<Vec<_>>()
        )
    });
}

// Randomness ------------------------------------------------------------------------------

/// The seed: `TASKER_CONCURRENCY_SEED`, else the clock.
fn seed() -> u64 {
    match std::env::var("TASKER_CONCURRENCY_SEED") {
        Ok(seed) => seed
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TASKER_CONCURRENCY_SEED={seed:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64),
    }
}

/// xorshift64*, seeded through splitmix64 so that close seeds differ.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..bound` (`bound` > 0; the modulo bias is negligible here).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
