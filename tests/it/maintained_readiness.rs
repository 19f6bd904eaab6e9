//! Maintained readiness: the step columns (`current_state`,
//! `last_failure_at`, `total_parents`, `completed_parents` and the generated
//! `retry_eligible`, `next_retry_at`, `runnable`) and `tasker_task_step_counts`
//! that triggers keep in the transaction that changes a history, whoever
//! writes it. Each test checks them with `support::check_maintained_readiness`:
//! no `tasker_readiness_drift`, and `tasker_step_readiness` (which reads them)
//! returns exactly the rows of `tasker_step_readiness_from_history` (which
//! recomputes them from the transitions and edges), in one snapshot.
//!
//! - A property test: random write-path operations on random DAG workflows
//!   from several connections at once, checked while they run and after each
//!   round.
//! - Writes that bypass the crate (plain SQL on transitions, edges, steps,
//!   tasks) leave no drift.
//! - Deliberate corruption is named exactly by `tasker_readiness_drift` and
//!   repaired by `tasker_rebuild_readiness`.
//! - A wide fan-in completed from eight connections at once.
//! - Ignored, because they fail with the current triggers (see each test):
//!   an edge added to or deleted from a live task while its parent changes
//!   state (drift), and a child resolved by hand while its parent completes
//!   (deadlock). Each forces its interleaving, so each fails every time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::json;
use tasker_diesel::models::{NewWorkflowStepEdge, TaskStepCounts};
use tasker_diesel::readiness::{rebuild_readiness, ReadinessDrift};
use tasker_diesel::schema::{tasker_task_step_counts, tasker_workflow_step_edges};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, create_task, fail_step, finalize_task,
    release_expired_claims, resolve_step_manually, transition_task, transition_workflow_step,
    Claim, ClaimRequest, StepTemplate, TaskRequest, TaskTemplate, TransitionOptions,
};
use tasker_diesel::{Error, StepReadinessStatus, StepState, TaskState};

use crate::support;

/// The maintained columns of one step.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
struct Kept {
    #[diesel(sql_type = Text)]
    current_state: String,
    #[diesel(sql_type = Integer)]
    total_parents: i32,
    #[diesel(sql_type = Integer)]
    completed_parents: i32,
    #[diesel(sql_type = Bool)]
    runnable: bool,
    #[diesel(sql_type = Nullable<Timestamp>)]
    last_failure_at: Option<chrono::NaiveDateTime>,
}

fn kept(conn: &mut PgConnection, step_id: i64) -> Kept {
    diesel::sql_query(
        "SELECT current_state::text AS current_state, total_parents, completed_parents,
                runnable, last_failure_at
         FROM tasker_workflow_steps WHERE workflow_step_id = $1",
    )
    .bind::<BigInt, _>(step_id)
    .get_result(conn)
    .unwrap_or_else(|error| panic!("maintained columns of step {step_id}: {error}"))
}

fn counts(conn: &mut PgConnection, task_id: i64) -> Option<TaskStepCounts> {
    tasker_task_step_counts::table
        .find(task_id)
        .select(TaskStepCounts::as_select())
        .first(conn)
        .optional()
        .expect("counts row")
}

fn execute(conn: &mut PgConnection, sql: &str) -> usize {
    diesel::sql_query(sql)
        .execute(conn)
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Runs `sql` and then checks the maintained readiness of every task.
#[track_caller]
fn write_and_check(conn: &mut PgConnection, sql: &str) -> usize {
    let written = execute(conn, sql);
    if let Err(message) = support::check_maintained_readiness(conn, None) {
        panic!("after `{sql}` ({written} rows):\n{message}");
    }
    written
}

// Random operations from several connections ----------------------------------------

const CASES: u32 = 24;
const THREADS: usize = 4;
const MAX_TASKS: usize = 6;
const MAX_STEPS: usize = 10;
const MAX_ROUNDS: usize = 8;
const MAX_OPS_PER_ROUND: usize = 6;
const LEASES: [u64; 3] = [30, 600, 3600];
const RETRY_AFTER_MS: [u64; 3] = [0, 1_500, 60_000];
const BACKDATE_SECONDS: [i32; 2] = [40, 600];
const DEADLOCK: &str = "deadlock detected";

#[derive(Clone, Debug)]
struct StepSpec {
    retry_limit: i32,
    retryable: bool,
    /// Skippable and bypassed at creation: `resolved_manually` from the start.
    bypassed: bool,
    /// Indexes of earlier steps of the same task.
    parents: Vec<usize>,
}

#[derive(Clone, Debug)]
struct TaskSpec {
    steps: Vec<StepSpec>,
    /// Edges inserted by plain SQL after `create_task`, before any claim,
    /// as indexes (taken modulo the step count, from the lower to the higher).
    extra_edges: Vec<(usize, usize)>,
}

/// Which claim a report uses, by index modulo the candidates: one that no
/// report has used yet (most of them still hold), or any claim so far.
#[derive(Clone, Copy, Debug)]
enum ClaimPick {
    Unused(usize),
    Any(usize),
}

/// One operation of one connection; indexes are taken modulo the counts.
#[derive(Clone, Debug)]
enum Op {
    Claim {
        task: Option<usize>,
        max_steps: u32,
        lease: u64,
    },
    /// Reports under a claim handed out earlier to any connection.
    Complete(ClaimPick),
    Fail(ClaimPick, Option<u64>),
    /// Puts the claim's lease in the past (a worker that stopped heartbeating).
    Expire(ClaimPick),
    Release(Option<u32>),
    Resolve(usize),
    /// `transition_workflow_step` without an expected state: often refused.
    Move(usize, StepState),
    Cancel(usize),
    Finalize(usize),
    /// `transition_task(.., Pending, ..)`: the operator's resume.
    Resume(usize),
    /// Moves the transitions and `last_attempted_at` of a task's steps back
    /// by seconds (plain SQL, the steps locked first), so that backoffs pass.
    Backdate(usize, i32),
}

#[derive(Clone, Debug)]
struct Case {
    tasks: Vec<TaskSpec>,
    /// Rounds, each with the operations of each connection.
    rounds: Vec<Vec<Vec<Op>>>,
}

fn step_spec(index: usize, density: f64) -> impl Strategy<Value = StepSpec> {
    (
        prop_oneof![1 => Just(0i32), 8 => 1i32..=3],
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.1),
        prop::collection::vec(prop::bool::weighted(density), index),
    )
        .prop_map(|(retry_limit, retryable, bypassed, flags)| StepSpec {
            retry_limit,
            retryable,
            bypassed,
            parents: flags
                .iter()
                .enumerate()
                .filter_map(|(parent, &present)| present.then_some(parent))
                .collect(),
        })
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (1..=MAX_STEPS, 0.0..=0.6f64).prop_flat_map(|(step_count, density)| {
        (
            (0..step_count)
                .map(|index| step_spec(index, density))
                .collect::<Vec<_>>(),
            prop::collection::vec((0..step_count, 0..step_count), 0..=3),
        )
            .prop_map(|(steps, extra_edges)| TaskSpec { steps, extra_edges })
    })
}

fn pick() -> impl Strategy<Value = usize> {
    0usize..64
}

fn claim_pick() -> impl Strategy<Value = ClaimPick> {
    prop_oneof![
        6 => pick().prop_map(ClaimPick::Unused),
        1 => pick().prop_map(ClaimPick::Any),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let states = prop::sample::select(StepState::ALL.to_vec());
    prop_oneof![
        20 => (
            prop::option::weighted(0.5, pick()),
            1u32..=4,
            prop::sample::select(LEASES.to_vec()),
        )
            .prop_map(|(task, max_steps, lease)| Op::Claim { task, max_steps, lease }),
        16 => claim_pick().prop_map(Op::Complete),
        8 => (claim_pick(), prop::option::of(prop::sample::select(RETRY_AFTER_MS.to_vec())))
            .prop_map(|(claim, retry_after)| Op::Fail(claim, retry_after)),
        2 => claim_pick().prop_map(Op::Expire),
        2 => prop::option::of(1u32..=3).prop_map(Op::Release),
        2 => pick().prop_map(Op::Resolve),
        2 => (pick(), states).prop_map(|(step, state)| Op::Move(step, state)),
        1 => pick().prop_map(Op::Cancel),
        3 => pick().prop_map(Op::Finalize),
        2 => pick().prop_map(Op::Resume),
        4 => (pick(), prop::sample::select(BACKDATE_SECONDS.to_vec()))
            .prop_map(|(task, seconds)| Op::Backdate(task, seconds)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(task_spec(), 2..=MAX_TASKS),
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(op(), 0..=MAX_OPS_PER_ROUND), THREADS),
            1..=MAX_ROUNDS,
        ),
    )
        .prop_map(|(tasks, rounds)| Case { tasks, rounds })
}

/// What the connections share: the case's ids and the claims handed out.
struct Shared {
    task_ids: Vec<i64>,
    step_ids: Vec<i64>,
    /// Every claim so far.
    claims: Mutex<Vec<Claim>>,
    /// The claims no report has used yet.
    unused: Mutex<Vec<Claim>>,
}

impl Shared {
    fn task(&self, pick: usize) -> i64 {
        self.task_ids[pick % self.task_ids.len()]
    }

    fn step(&self, pick: usize) -> i64 {
        self.step_ids[pick % self.step_ids.len()]
    }

    fn claim(&self, pick: ClaimPick) -> Option<Claim> {
        let (claims, index) = match pick {
            ClaimPick::Unused(index) => (&self.unused, index),
            ClaimPick::Any(index) => (&self.claims, index),
        };
        let claims = claims.lock().expect("claims");
        (!claims.is_empty()).then(|| claims[index % claims.len()])
    }

    fn add_claims(&self, claims: impl IntoIterator<Item = Claim> + Clone) {
        self.claims.lock().expect("claims").extend(claims.clone());
        self.unused.lock().expect("claims").extend(claims);
    }

    fn used(&self, claim: Claim) {
        self.unused.lock().expect("claims").retain(|c| *c != claim);
    }
}

/// A call's outcome for the trace; any error but a refusal is unexpected
/// (a deadlock, a constraint the maintenance broke, ...).
fn outcome<T>(what: String, result: tasker_diesel::Result<T>) -> Result<String, String> {
    match result {
        Ok(_) => Ok(format!("{what}: ok")),
        Err(Error::Refused(refusal)) => Ok(format!("{what}: refused ({refusal})")),
        Err(other) => Err(format!("{what}: unexpected error: {other}")),
    }
}

fn query_outcome<T>(what: String, result: QueryResult<T>) -> Result<String, String> {
    result
        .map(|_| format!("{what}: ok"))
        .map_err(|error| format!("{what}: unexpected error: {error}"))
}

fn run_op(conn: &mut PgConnection, shared: &Shared, op: &Op) -> Result<String, String> {
    match *op {
        Op::Claim {
            task,
            max_steps,
            lease,
        } => {
            let tasks = task.map(|pick| [shared.task(pick)]);
            let lease = Duration::from_secs(lease);
            let request = match &tasks {
                Some(tasks) => ClaimRequest::for_tasks(tasks, max_steps, lease),
                None => ClaimRequest::any_task(max_steps, lease),
            };
            let what = format!("claim({tasks:?}, {max_steps}, {lease:?})");
            match claim_ready_steps(conn, &request) {
                Ok(claimed) => {
                    let ids: Vec<i64> = claimed.iter().map(|c| c.workflow_step_id).collect();
                    shared.add_claims(claimed.iter().map(|c| c.claim()));
                    Ok(format!("{what}: claimed {ids:?}"))
                }
                Err(error) => outcome(what, Err::<(), _>(error)),
            }
        }
        Op::Complete(pick) => match shared.claim(pick) {
            None => Ok("complete: no claim yet".to_owned()),
            Some(claim) => {
                let result = complete_step(conn, claim, &json!({"done": true}));
                shared.used(claim);
                outcome(format!("complete({claim:?})"), result)
            }
        },
        Op::Fail(pick, retry_after) => match shared.claim(pick) {
            None => Ok("fail: no claim yet".to_owned()),
            Some(claim) => {
                let retry = retry_after.map(Duration::from_millis);
                let result = fail_step(conn, claim, &json!("boom"), retry);
                shared.used(claim);
                outcome(format!("fail({claim:?}, retry_after {retry:?})"), result)
            }
        },
        Op::Expire(pick) => match shared.claim(pick) {
            None => Ok("expire: no claim yet".to_owned()),
            Some(claim) => query_outcome(
                format!("expire lease of step {}", claim.workflow_step_id),
                diesel::sql_query(
                    "UPDATE tasker_workflow_steps
                     SET claimed_until = (now() AT TIME ZONE 'UTC') - interval '30 seconds'
                     WHERE workflow_step_id = $1 AND in_process",
                )
                .bind::<BigInt, _>(claim.workflow_step_id)
                .execute(conn),
            ),
        },
        Op::Release(max_steps) => match release_expired_claims(conn, max_steps) {
            Ok(released) => Ok(format!("release({max_steps:?}): released {released:?}")),
            Err(error) => outcome(format!("release({max_steps:?})"), Err::<(), _>(error)),
        },
        Op::Resolve(pick) => {
            let step = shared.step(pick);
            outcome(
                format!("resolve(step {step})"),
                resolve_step_manually(conn, step, None),
            )
        }
        Op::Move(pick, state) => {
            let step = shared.step(pick);
            outcome(
                format!("transition_workflow_step(step {step}, {state})"),
                transition_workflow_step(conn, step, state, TransitionOptions::default()),
            )
        }
        Op::Cancel(pick) => {
            let task = shared.task(pick);
            outcome(
                format!("cancel(task {task})"),
                cancel_task(conn, task, None),
            )
        }
        Op::Finalize(pick) => {
            let task = shared.task(pick);
            match finalize_task(conn, task, None) {
                Ok(state) => Ok(format!("finalize(task {task}): {state}")),
                Err(error) => outcome(format!("finalize(task {task})"), Err::<(), _>(error)),
            }
        }
        Op::Resume(pick) => {
            let task = shared.task(pick);
            outcome(
                format!("resume(task {task})"),
                transition_task(conn, task, TaskState::Pending, TransitionOptions::default()),
            )
        }
        Op::Backdate(pick, seconds) => {
            let task = shared.task(pick);
            query_outcome(
                format!("backdate(task {task}, {seconds} s)"),
                conn.transaction(|conn| {
                    // The steps first, in id order, as the write path locks them.
                    diesel::sql_query(
                        "SELECT 1 FROM tasker_workflow_steps WHERE task_id = $1
                         ORDER BY workflow_step_id FOR NO KEY UPDATE",
                    )
                    .bind::<BigInt, _>(task)
                    .execute(conn)?;
                    diesel::sql_query(
                        "UPDATE tasker_workflow_step_transitions AS t
                         SET created_at = t.created_at - $2 * interval '1 second'
                         FROM tasker_workflow_steps AS s
                         WHERE s.workflow_step_id = t.workflow_step_id AND s.task_id = $1",
                    )
                    .bind::<BigInt, _>(task)
                    .bind::<Integer, _>(seconds)
                    .execute(conn)?;
                    diesel::sql_query(
                        "UPDATE tasker_workflow_steps
                         SET last_attempted_at = last_attempted_at - $2 * interval '1 second'
                         WHERE task_id = $1",
                    )
                    .bind::<BigInt, _>(task)
                    .bind::<Integer, _>(seconds)
                    .execute(conn)
                }),
            )
        }
    }
}

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

/// Creates the case's tasks (from templates, then the extra edges by plain
/// SQL) on `conn`, after emptying the tables.
fn create_case_tasks(
    conn: &mut PgConnection,
    case: &Case,
    number: u64,
    trace: &mut Vec<String>,
) -> Result<Shared, TestCaseError> {
    execute(conn, "TRUNCATE tasker_tasks CASCADE");
    let mut task_ids = Vec::new();
    let mut step_ids = Vec::new();
    for (t, spec) in case.tasks.iter().enumerate() {
        let name = |s: usize| format!("s{s}");
        let template = spec.steps.iter().enumerate().fold(
            TaskTemplate::new("maintained", format!("workflow_{t}"), "1.0.0"),
            |template, (s, step)| {
                template.step(
                    StepTemplate::new(name(s))
                        // The crate refuses a limit of 0; another writer's is set below.
                        .retry_limit(step.retry_limit.max(1))
                        .retryable(step.retryable)
                        .skippable(step.bypassed)
                        .depends_on(step.parents.iter().map(|&parent| name(parent))),
                )
            },
        );
        let bypassed: Vec<String> = spec
            .steps
            .iter()
            .enumerate()
            .filter(|(_, step)| step.bypassed)
            .map(|(s, _)| name(s))
            .collect();
        let request = TaskRequest::new(&template)
            .context(json!({"case": number, "task": t}))
            .bypass_steps(bypassed);
        let created =
            create_task(conn, &request).map_err(|error| fail(format!("create_task: {error}")))?;
        let ids: Vec<i64> = (0..spec.steps.len())
            .map(|s| {
                created
                    .step(&name(s))
                    .map(|step| step.workflow_step_id)
                    .expect("created step")
            })
            .collect();
        for (s, step) in spec.steps.iter().enumerate() {
            if step.retry_limit == 0 {
                execute(
                    conn,
                    &format!(
                        "UPDATE tasker_workflow_steps SET retry_limit = 0 WHERE workflow_step_id = {}",
                        ids[s]
                    ),
                );
            }
        }
        let mut extra: Vec<(i64, i64)> = Vec::new();
        for &(a, b) in &spec.extra_edges {
            let (from, to) = (a.min(b), a.max(b));
            let duplicate =
                spec.steps[to].parents.contains(&from) || extra.contains(&(ids[from], ids[to]));
            if from != to && !duplicate {
                extra.push((ids[from], ids[to]));
            }
        }
        if !extra.is_empty() {
            let rows: Vec<NewWorkflowStepEdge> = extra
                .iter()
                .map(|&(from, to)| NewWorkflowStepEdge {
                    from_step_id: from,
                    to_step_id: to,
                    name: "extra",
                })
                .collect();
            diesel::insert_into(tasker_workflow_step_edges::table)
                .values(&rows)
                .execute(conn)
                .map_err(|error| fail(format!("extra edges {extra:?}: {error}")))?;
        }
        trace.push(format!(
            "task {} steps {ids:?}, template {:?}, extra edges {extra:?}",
            created.task.task_id, spec.steps
        ));
        task_ids.push(created.task.task_id);
        step_ids.extend(ids);
    }
    Ok(Shared {
        task_ids,
        step_ids,
        claims: Mutex::new(Vec::new()),
        unused: Mutex::new(Vec::new()),
    })
}

/// Runs one round: each connection its operations, all starting together,
/// while `monitor` checks the maintained readiness of every snapshot it
/// gets. Returns the trace lines, or the problems found.
fn run_round(
    monitor: &mut PgConnection,
    workers: &mut [PgConnection],
    shared: &Shared,
    round: usize,
    ops: &[Vec<Op>],
) -> Result<Vec<String>, Vec<String>> {
    let barrier = Barrier::new(workers.len());
    let finished = AtomicUsize::new(0);
    let mut problems = Vec::new();
    let results: Vec<(Vec<String>, Vec<String>)> = thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(ops)
            .enumerate()
            .map(|(worker, (conn, ops))| {
                let (barrier, finished) = (&barrier, &finished);
                scope.spawn(move || {
                    barrier.wait();
                    let mut lines = Vec::new();
                    let mut unexpected = Vec::new();
                    for op in ops {
                        match run_op(conn, shared, op) {
                            Ok(line) => lines.push(format!("round {round} conn {worker}: {line}")),
                            Err(line) => {
                                let line = format!("round {round} conn {worker}: {line}");
                                lines.push(line.clone());
                                unexpected.push(line);
                            }
                        }
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    (lines, unexpected)
                })
            })
            .collect();
        // Every committed state has no drift: the triggers write in the
        // transaction that changes the history.
        while finished.load(Ordering::SeqCst) < handles.len() {
            if let Err(message) = support::check_maintained_readiness(monitor, None) {
                problems.push(format!("round {round}, while it ran: {message}"));
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        handles
            .into_iter()
            .map(|handle| handle.join().expect("worker panicked"))
            .collect()
    });
    let mut lines = Vec::new();
    for (worker_lines, unexpected) in results {
        lines.extend(worker_lines);
        problems.extend(unexpected);
    }
    if let Err(message) = support::check_maintained_readiness(monitor, None) {
        problems.push(format!("after round {round}: {message}"));
    }
    if problems.is_empty() {
        Ok(lines)
    } else {
        problems.push(format!(
            "operations of round {round}:\n  {}",
            lines.join("\n  ")
        ));
        Err(problems)
    }
}

/// What the operations of the cases did, to see that they do something.
#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    operations: u64,
    refused: u64,
    claimed_steps: u64,
    completed: u64,
    failed: u64,
    deadlocks: u64,
}

impl Tally {
    fn add(&mut self, lines: &[String]) {
        for line in lines {
            self.operations += 1;
            if line.contains(DEADLOCK) {
                self.deadlocks += 1;
            } else if line.contains(": refused") {
                self.refused += 1;
            } else if let Some(ids) = line.split(": claimed ").nth(1) {
                self.claimed_steps += ids.split(',').filter(|id| id.trim() != "[]").count() as u64;
            } else if line.contains(": complete(") && line.ends_with(": ok") {
                self.completed += 1;
            } else if line.contains(": fail(") && line.ends_with(": ok") {
                self.failed += 1;
            }
        }
    }
}

fn run_case(
    db: &TestDatabase,
    case: &Case,
    number: u64,
    tally: &Mutex<Tally>,
) -> Result<(), TestCaseError> {
    let mut monitor = db.connection();
    let mut trace = Vec::new();
    let shared = create_case_tasks(&mut monitor, case, number, &mut trace)?;
    let explain = |problem: String, trace: &[String]| {
        fail(format!("{problem}\ncase so far:\n  {}", trace.join("\n  ")))
    };
    if let Err(message) = support::check_maintained_readiness(&mut monitor, None) {
        return Err(explain(format!("after creation: {message}"), &trace));
    }
    let mut workers: Vec<PgConnection> = (0..THREADS).map(|_| db.connection()).collect();
    for (round, ops) in case.rounds.iter().enumerate() {
        match run_round(&mut monitor, &mut workers, &shared, round, ops) {
            Ok(lines) => {
                tally.lock().expect("tally").add(&lines);
                trace.extend(lines);
            }
            Err(problems) => return Err(explain(problems.join("\n"), &trace)),
        }
    }
    // At the end a rebuild finds nothing to correct.
    let corrected = rebuild_readiness(&mut monitor, None)
        .map_err(|error| fail(format!("tasker_rebuild_readiness: {error}")))?;
    if corrected != 0 {
        return Err(explain(
            format!("tasker_rebuild_readiness corrected {corrected} values at the end"),
            &trace,
        ));
    }
    Ok(())
}

/// Each case empties the tables, creates 2-6 tasks from random DAG templates
/// (random retry limits, retryable or not, some steps bypassed) and adds a
/// few more edges by plain SQL before anything runs. Then, round by round,
/// four connections run their random operations at once (claims, reports
/// under fresh or stale claims, expired leases and their release, manual
/// resolutions and transitions, cancels, finalizations, resumes, time
/// moved back by plain SQL), while a fifth checks every snapshot it gets;
/// after each round the state is checked again, and at the end a rebuild
/// must find nothing to correct. Refusals are expected; any other error
/// fails the case.
#[test]
fn concurrent_random_operations_keep_maintained_readiness_exact() {
    let db = TestDatabase::new();
    let config = ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        // Shrinking replays interleavings that differ from run to run; a few
        // steps are enough to drop the operations that do not matter.
        max_shrink_iters: 64,
        max_shrink_time: 20_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let tally = Mutex::new(Tally::default());
    let result = runner.run(&case(), |case| {
        let number = {
            let mut tally = tally.lock().expect("tally");
            tally.cases += 1;
            tally.cases
        };
        run_case(&db, &case, number, &tally)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let tally = tally.into_inner().expect("tally");
    println!("{tally:?}");
    assert!(
        tally.claimed_steps > 0 && tally.completed > 0 && tally.failed > 0,
        "the cases should claim, complete and fail steps: {tally:?}"
    );
}

// Writes that bypass the crate ---------------------------------------------------------

/// Plain SQL on every table the triggers watch, one statement at a time,
/// each followed by the check; a few maintained values are checked by hand
/// as well, so that the writes are seen to move them.
#[test]
fn plain_sql_writes_keep_maintained_readiness_exact() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let a = support::task_with_steps(&mut conn, 6);
    let b = support::diamond(&mut conn);
    let s = a.step_ids();
    let conn = &mut conn;
    support::assert_maintained_readiness(conn, None);

    // Edges, several in one statement: s0 -> s1, s0 -> s2, s1 -> s3, s2 -> s3, s3 -> s4.
    write_and_check(
        conn,
        &format!(
            "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
             VALUES ({0}, {1}, 'e'), ({0}, {2}, 'e'), ({1}, {3}, 'e'), ({2}, {3}, 'e'),
                    ({3}, {4}, 'e')",
            s[0], s[1], s[2], s[3], s[4]
        ),
    );
    assert_eq!(
        (
            kept(conn, s[3]).total_parents,
            kept(conn, s[3]).completed_parents
        ),
        (2, 0)
    );

    // Transitions inserted by hand, two in one statement: s0 is complete.
    write_and_check(
        conn,
        &format!(
            "INSERT INTO tasker_workflow_step_transitions
                 (workflow_step_id, to_state, from_state, sort_key, most_recent)
             VALUES ({0}, 'in_progress', NULL, 1, false), ({0}, 'complete', 'in_progress', 2, true)",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "complete");
    assert_eq!(kept(conn, s[1]).completed_parents, 1);
    assert!(kept(conn, s[1]).runnable);

    // most_recent flipped by hand: no current transition (pending), then the first one.
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET most_recent = false
             WHERE workflow_step_id = {}",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "pending");
    assert_eq!(kept(conn, s[1]).completed_parents, 0);
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET most_recent = true
             WHERE workflow_step_id = {} AND sort_key = 1",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "in_progress");
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET most_recent = false
             WHERE workflow_step_id = {} AND sort_key = 1",
            s[0]
        ),
    );
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET most_recent = true
             WHERE workflow_step_id = {} AND sort_key = 2",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "complete");

    // The current transition's state and time rewritten: s0 failed, an hour ago.
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET to_state = 'error'
             WHERE workflow_step_id = {} AND most_recent",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "error");
    assert!(kept(conn, s[0]).last_failure_at.is_some());
    assert_eq!(kept(conn, s[2]).completed_parents, 0);
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions
             SET created_at = created_at - interval '1 hour'
             WHERE workflow_step_id = {}",
            s[0]
        ),
    );
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET to_state = 'complete'
             WHERE workflow_step_id = {} AND most_recent",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[2]).completed_parents, 1);

    // The current transition deleted: s0 has none left that is most recent.
    write_and_check(
        conn,
        &format!(
            "DELETE FROM tasker_workflow_step_transitions
             WHERE workflow_step_id = {} AND most_recent",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "pending");
    assert_eq!(kept(conn, s[1]).completed_parents, 0);
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET to_state = 'resolved_manually',
                 most_recent = true
             WHERE workflow_step_id = {}",
            s[0]
        ),
    );
    assert_eq!(kept(conn, s[1]).completed_parents, 1);

    // Two steps resolved in one statement: s3 has both parents done.
    write_and_check(
        conn,
        &format!(
            "INSERT INTO tasker_workflow_step_transitions
                 (workflow_step_id, to_state, sort_key, most_recent)
             VALUES ({}, 'resolved_manually', 1, true), ({}, 'resolved_manually', 1, true)",
            s[1], s[2]
        ),
    );
    assert_eq!(kept(conn, s[3]).completed_parents, 2);
    assert!(kept(conn, s[3]).runnable);

    // A transition moved to another step: s2 loses its history, s5 gets it.
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_transitions SET workflow_step_id = {}
             WHERE workflow_step_id = {}",
            s[5], s[2]
        ),
    );
    assert_eq!(kept(conn, s[2]).current_state, "pending");
    assert_eq!(kept(conn, s[5]).current_state, "resolved_manually");
    assert_eq!(kept(conn, s[3]).completed_parents, 1);

    // Edges changed: one added from a done step, one deleted, one re-pointed.
    write_and_check(
        conn,
        &format!(
            "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
             VALUES ({}, {}, 'e')",
            s[5], s[4]
        ),
    );
    assert_eq!(
        (
            kept(conn, s[4]).total_parents,
            kept(conn, s[4]).completed_parents
        ),
        (2, 1)
    );
    write_and_check(
        conn,
        &format!(
            "DELETE FROM tasker_workflow_step_edges WHERE from_step_id = {} AND to_step_id = {}",
            s[2], s[3]
        ),
    );
    assert_eq!(
        (
            kept(conn, s[3]).total_parents,
            kept(conn, s[3]).completed_parents
        ),
        (1, 1)
    );
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_step_edges SET to_step_id = {}
             WHERE from_step_id = {} AND to_step_id = {}",
            s[3], s[0], s[2]
        ),
    );
    assert_eq!(
        (
            kept(conn, s[2]).total_parents,
            kept(conn, s[2]).completed_parents
        ),
        (0, 0)
    );
    assert_eq!(
        (
            kept(conn, s[3]).total_parents,
            kept(conn, s[3]).completed_parents
        ),
        (2, 2)
    );

    // Step columns that readiness reads, written directly.
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET attempts = retry_limit WHERE workflow_step_id = {}",
            s[3]
        ),
    );
    assert!(!kept(conn, s[3]).runnable);
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET in_process = true WHERE workflow_step_id = {}",
            s[2]
        ),
    );
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET processed = true, retryable = false
             WHERE task_id = {}",
            b.task.task_id
        ),
    );
    write_and_check(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET processed = false, attempts = 1,
                 last_attempted_at = (now() AT TIME ZONE 'UTC'), backoff_request_seconds = 60
             WHERE task_id = {}",
            b.task.task_id
        ),
    );

    // A step inserted into an existing task, then steps deleted: a done parent
    // (its edges go with it) and a step with a history.
    write_and_check(
        conn,
        &format!(
            "INSERT INTO tasker_workflow_steps (task_id, named_step_id)
             SELECT {}, named_step_id FROM tasker_named_steps WHERE name = 'step_5'",
            b.task.task_id
        ),
    );
    write_and_check(
        conn,
        &format!(
            "DELETE FROM tasker_workflow_steps WHERE workflow_step_id = {}",
            s[5]
        ),
    );
    assert_eq!(
        (
            kept(conn, s[4]).total_parents,
            kept(conn, s[4]).completed_parents
        ),
        (1, 0)
    );
    write_and_check(
        conn,
        &format!(
            "DELETE FROM tasker_workflow_steps WHERE workflow_step_id = {}",
            s[1]
        ),
    );

    // Every transition of a task deleted in one statement, then the task itself.
    write_and_check(
        conn,
        &format!(
            "DELETE FROM tasker_workflow_step_transitions
             WHERE workflow_step_id IN (SELECT workflow_step_id FROM tasker_workflow_steps
                                        WHERE task_id = {})",
            a.task.task_id
        ),
    );
    assert_eq!(kept(conn, s[0]).current_state, "pending");
    write_and_check(
        conn,
        &format!(
            "DELETE FROM tasker_tasks WHERE task_id = {}",
            b.task.task_id
        ),
    );
    assert!(counts(conn, b.task.task_id).is_none());

    // Writes rolled back leave what was there.
    conn.transaction::<(), diesel::result::Error, _>(|conn| {
        write_and_check(
            conn,
            &format!(
                "INSERT INTO tasker_workflow_step_transitions
                     (workflow_step_id, to_state, sort_key, most_recent)
                 VALUES ({}, 'complete', 1, true)",
                s[0]
            ),
        );
        Err(diesel::result::Error::RollbackTransaction)
    })
    .expect_err("rolled back");
    support::assert_maintained_readiness(conn, None);
    assert_eq!(kept(conn, s[0]).current_state, "pending");
}

// Drift and repair ----------------------------------------------------------------------

fn drift(
    task_id: i64,
    step_id: Option<i64>,
    field: &str,
    kept: Option<&str>,
    recounted: Option<&str>,
) -> ReadinessDrift {
    ReadinessDrift {
        task_id,
        workflow_step_id: step_id,
        field: field.to_owned(),
        maintained: kept.map(str::to_owned),
        recomputed: recounted.map(str::to_owned),
    }
}

/// Drift rows in a fixed order (the function orders fields by the
/// database's collation).
fn sorted(mut rows: Vec<ReadinessDrift>) -> Vec<ReadinessDrift> {
    rows.sort_by(|x, y| {
        (x.task_id, x.workflow_step_id, &x.field).cmp(&(y.task_id, y.workflow_step_id, &y.field))
    });
    rows
}

#[test]
fn drift_names_each_corrupted_value_and_rebuild_repairs_it() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let conn = &mut conn;
    let t1 = support::diamond(conn);
    let t2 = support::diamond(conn);
    let t3 = support::diamond(conn);
    let s = t1.step_ids();
    let (t1, t2, t3) = (t1.task.task_id, t2.task.task_id, t3.task.task_id);
    for to in [StepState::InProgress, StepState::Complete] {
        transition_workflow_step(conn, s[0], to, TransitionOptions::default()).expect("s0 moves");
    }
    support::assert_maintained_readiness(conn, None);
    assert!(ReadinessDrift::load(conn, None).expect("drift").is_empty());
    assert_eq!(rebuild_readiness(conn, None).expect("rebuild"), 0);
    assert_eq!(kept(conn, s[1]).completed_parents, 1);

    // Corruptions that stick: the triggers keep the rest consistent with them
    // (a step's counts and its children follow its maintained state), so
    // each shows as exactly one wrong value, or one missing counts row.
    execute(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET completed_parents = 0 WHERE workflow_step_id = {}",
            s[1]
        ),
    );
    execute(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET current_state = 'complete' WHERE workflow_step_id = {}",
            s[2]
        ),
    );
    execute(
        conn,
        &format!(
            "UPDATE tasker_workflow_steps SET last_failure_at = '2000-01-01 00:00:00'
             WHERE workflow_step_id = {}",
            s[3]
        ),
    );
    execute(
        conn,
        &format!(
            "UPDATE tasker_task_step_counts SET pending_steps = pending_steps + 5
             WHERE task_id = {t2}"
        ),
    );
    execute(
        conn,
        &format!("DELETE FROM tasker_task_step_counts WHERE task_id = {t3}"),
    );

    let mut expected = vec![
        drift(t1, Some(s[1]), "completed_parents", Some("0"), Some("1")),
        drift(
            t1,
            Some(s[2]),
            "current_state",
            Some("complete"),
            Some("pending"),
        ),
        drift(
            t1,
            Some(s[3]),
            "last_failure_at",
            Some("2000-01-01 00:00:00"),
            None,
        ),
        drift(t2, None, "pending_steps", Some("9"), Some("4")),
        drift(t3, None, "counts_row", Some("false"), Some("true")),
    ];
    // A diamond of four pending steps, its root runnable.
    for (field, value) in [
        ("total_steps", "4"),
        ("pending_steps", "4"),
        ("in_progress_steps", "0"),
        ("complete_steps", "0"),
        ("resolved_manually_steps", "0"),
        ("failed_steps", "0"),
        ("cancelled_steps", "0"),
        ("permanently_failed_steps", "0"),
        ("runnable_steps", "1"),
    ] {
        expected.push(drift(t3, None, field, None, Some(value)));
    }
    let found = ReadinessDrift::load(conn, None).expect("drift");
    assert_eq!(
        sorted(found.clone()),
        sorted(expected.clone()),
        "drift of every task"
    );
    // Ordered by task, then step (the counts first), as documented.
    let order: Vec<(i64, Option<i64>)> = found
        .iter()
        .map(|d| (d.task_id, d.workflow_step_id))
        .collect();
    let mut in_order = order.clone();
    in_order.sort_by_key(|&(task, step)| (task, step.is_some(), step));
    assert_eq!(
        order, in_order,
        "drift rows ordered by task, counts first, then step"
    );
    let of_t2: Vec<ReadinessDrift> = expected
        .iter()
        .filter(|d| d.task_id == t2)
        .cloned()
        .collect();
    assert_eq!(
        ReadinessDrift::load(conn, Some(&[t2])).expect("drift of t2"),
        of_t2
    );
    // The helper of the other tests reports it too, and what readiness says.
    let message = support::check_maintained_readiness(conn, None).expect_err("drift is reported");
    for needle in [
        "completed_parents: maintained 0, recomputed 1",
        "maintained only",
        "recomputed only",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from:\n{message}"
        );
    }

    // A rebuild of one task repairs that task only.
    assert_eq!(rebuild_readiness(conn, Some(&[t2])).expect("rebuild t2"), 1);
    let rest: Vec<ReadinessDrift> = expected
        .iter()
        .filter(|d| d.task_id != t2)
        .cloned()
        .collect();
    assert_eq!(
        sorted(ReadinessDrift::load(conn, None).expect("drift")),
        sorted(rest)
    );

    // A rebuild of every task repairs the rest, and a second one finds nothing.
    let corrected = rebuild_readiness(conn, None).expect("rebuild");
    assert!(corrected > 0, "the rebuild corrected {corrected} values");
    assert_eq!(ReadinessDrift::load(conn, None).expect("drift"), Vec::new());
    support::assert_maintained_readiness(conn, None);
    assert_eq!(rebuild_readiness(conn, None).expect("second rebuild"), 0);
    assert_eq!(kept(conn, s[1]).completed_parents, 1);
    assert_eq!(kept(conn, s[2]).current_state, "pending");
    assert_eq!(kept(conn, s[3]).completed_parents, 0);
    assert_eq!(kept(conn, s[3]).last_failure_at, None);
    assert_eq!(counts(conn, t2).expect("t2 counts").pending_steps, 4);
    assert_eq!(counts(conn, t3).expect("t3 counts").total_steps, 4);

    // TRUNCATE fires no row or statement trigger: whatever the triggers
    // missed, a rebuild puts right.
    execute(
        conn,
        "TRUNCATE tasker_workflow_step_transitions, tasker_workflow_step_edges",
    );
    rebuild_readiness(conn, None).expect("rebuild after truncate");
    support::assert_maintained_readiness(conn, None);
    assert_eq!(rebuild_readiness(conn, None).expect("second rebuild"), 0);
    assert_eq!(kept(conn, s[0]).current_state, "pending");
    assert_eq!(kept(conn, s[3]).total_parents, 0);
}

// Wide fan-in ------------------------------------------------------------------------

const FAN_IN: usize = 200;
const COMPLETERS: usize = 8;

/// 200 parents of one child, completed from eight connections at once: each
/// completion adds one to the child's `completed_parents`, so they queue on
/// the child's row; none may fail or deadlock, and none may be lost.
#[test]
fn a_wide_fan_in_completed_from_eight_connections_counts_every_parent() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let parents: Vec<String> = (0..FAN_IN).map(|i| format!("p{i:03}")).collect();
    let template = parents
        .iter()
        .fold(
            TaskTemplate::new("maintained", "fan_in", "1.0.0"),
            |template, name| template.step(StepTemplate::new(name.clone())),
        )
        .step(StepTemplate::new("child").depends_on(parents.iter().cloned()));
    let created = create_task(&mut conn, &TaskRequest::new(&template)).expect("create fan-in");
    let task_id = created.task.task_id;
    let child = created.step("child").expect("child").workflow_step_id;
    let claimed = claim_ready_steps(
        &mut conn,
        &ClaimRequest::for_tasks(&[task_id], FAN_IN as u32 + 1, Duration::from_secs(3600)),
    )
    .expect("claim the parents");
    assert_eq!(
        claimed.len(),
        FAN_IN,
        "every parent and only the parents are claimed"
    );
    assert!(claimed.iter().all(|c| c.workflow_step_id != child));
    assert_eq!(
        (
            kept(&mut conn, child).total_parents,
            kept(&mut conn, child).completed_parents
        ),
        (FAN_IN as i32, 0)
    );
    support::assert_maintained_readiness(&mut conn, None);

    let claims: Vec<Claim> = claimed.iter().map(|c| c.claim()).collect();
    let barrier = Barrier::new(COMPLETERS);
    let finished = AtomicUsize::new(0);
    let mut monitor_problem = None;
    let started = Instant::now();
    let errors: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..COMPLETERS)
            .map(|k| {
                let (barrier, finished, claims, db) = (&barrier, &finished, &claims, &db);
                scope.spawn(move || {
                    let mut conn = db.connection();
                    barrier.wait();
                    let mut errors = Vec::new();
                    for claim in claims.iter().skip(k).step_by(COMPLETERS) {
                        if let Err(error) = complete_step(&mut conn, *claim, &json!({"k": k})) {
                            errors.push(format!("complete {claim:?}: {error}"));
                        }
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    errors
                })
            })
            .collect();
        while finished.load(Ordering::SeqCst) < COMPLETERS && monitor_problem.is_none() {
            if let Err(message) = support::check_maintained_readiness(&mut conn, None) {
                monitor_problem = Some(message);
            }
            thread::sleep(Duration::from_millis(5));
        }
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("completer panicked"))
            .collect()
    });
    let elapsed = started.elapsed();
    assert_eq!(errors, Vec::<String>::new(), "completions failed");
    if let Some(message) = monitor_problem {
        panic!("while the parents completed: {message}");
    }
    let child_kept = kept(&mut conn, child);
    assert_eq!(
        (
            child_kept.total_parents,
            child_kept.completed_parents,
            child_kept.runnable
        ),
        (FAN_IN as i32, FAN_IN as i32, true),
        "the child after {FAN_IN} completions in {elapsed:?}"
    );
    let row = StepReadinessStatus::for_steps(&[child])
        .load(&mut conn)
        .expect("child readiness");
    assert!(
        row[0].dependencies_satisfied && row[0].ready_for_execution,
        "{row:?}"
    );
    let task_counts = counts(&mut conn, task_id).expect("counts");
    assert_eq!(
        (
            task_counts.complete_steps,
            task_counts.pending_steps,
            task_counts.runnable_steps
        ),
        (FAN_IN as i64, 1, 1)
    );
    support::assert_maintained_readiness(&mut conn, None);
    assert_eq!(rebuild_readiness(&mut conn, None).expect("rebuild"), 0);
}

// Edges changed on a live task ---------------------------------------------------------

/// Runs `change` on `writer` in a transaction and, while it is open,
/// `resolve_step_manually(parent)` on another connection; commits once the
/// other connection has finished or waits for a lock, then waits for it.
fn race_edge_change_with_resolution(
    db: &TestDatabase,
    writer: &mut PgConnection,
    change: &str,
    parent: i64,
) {
    let mut other = db.connection();
    let mut watcher = db.connection();
    let other_pid: i32 = diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))
        .get_result(&mut other)
        .expect("pid");
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        let mut resolver = None;
        writer
            .transaction::<_, diesel::result::Error, _>(|writer| {
                execute(writer, change);
                let done = &done;
                let other = &mut other;
                resolver = Some(scope.spawn(move || {
                    let result = resolve_step_manually(other, parent, None);
                    done.store(true, Ordering::SeqCst);
                    result
                }));
                wait_for_lock_or_end(&mut watcher, other_pid, done);
                Ok(())
            })
            .expect("the edge change commits");
        resolver
            .expect("spawned")
            .join()
            .expect("resolver panicked")
            .expect("resolve_step_manually");
    });
}

/// Waits until the backend `pid` waits for a lock, or `done` is set.
fn wait_for_lock_or_end(watcher: &mut PgConnection, pid: i32, done: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = diesel::sql_query(
            "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) AS waiting
             FROM pg_stat_activity WHERE pid = $1",
        )
        .bind::<Integer, _>(pid)
        .get_result::<Waiting>(watcher)
        .expect("pg_stat_activity")
        .waiting;
        if waiting || done.load(Ordering::SeqCst) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never waited nor ended"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[derive(QueryableByName)]
struct Waiting {
    #[diesel(sql_type = Bool)]
    waiting: bool,
}

/// An edge inserted into a live task while its parent is resolved on another
/// connection: the child must count the parent as done.
///
/// Without care neither side counts the parent: the resolution looks up the
/// parent's children in a snapshot without the uncommitted edge, and the
/// edge's recount would run before the parent changed. The edge triggers lock
/// the edges' parents `FOR SHARE` before recounting, so they queue behind the
/// state change in flight and see it.
#[test]
fn an_edge_added_while_its_parent_is_resolved_counts_the_parent() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let [parent, child] = [fixture.step_ids()[0], fixture.step_ids()[1]];
    race_edge_change_with_resolution(
        &db,
        &mut conn,
        &format!(
            "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
             VALUES ({parent}, {child}, 'late')"
        ),
        parent,
    );
    support::assert_maintained_readiness(&mut conn, None);
    assert_eq!(kept(&mut conn, child).completed_parents, 1);
}

/// An edge deleted from a live task while its parent is resolved on another
/// connection: the child must not count the parent any more.
///
/// Without the parents' `FOR SHARE` lock in the edge triggers, the resolution
/// would find the child through the edge in its snapshot, wait for the
/// child's row and add one to the recount the deletion had committed: the
/// child would have `completed_parents` 1 of `total_parents` 0, never ready.
#[test]
fn an_edge_deleted_while_its_parent_is_resolved_uncounts_the_parent() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let [parent, child] = [fixture.step_ids()[0], fixture.step_ids()[1]];
    support::add_edge(&mut conn, parent, child).expect("edge");
    race_edge_change_with_resolution(
        &db,
        &mut conn,
        &format!(
            "DELETE FROM tasker_workflow_step_edges
             WHERE from_step_id = {parent} AND to_step_id = {child}"
        ),
        parent,
    );
    support::assert_maintained_readiness(&mut conn, None);
    assert_eq!(kept(&mut conn, child).completed_parents, 0);
}

// A child moved by hand while its parent completes ---------------------------------------

/// A worker completes a parent while an operator resolves its pending child
/// on another connection; the operator's transaction has just locked the
/// child (as `transition_workflow_step` does first) when the completion
/// starts. Both must go through.
///
/// This deadlocked when `transition_workflow_step` cleared the parent's
/// `most_recent` and inserted the new transition in two statements: the
/// parent's maintained state passed through `pending`, which locked the
/// task's counts row before the child's row (against the lock order: steps,
/// then the task's counts). It now writes both in one statement.
#[test]
fn a_parent_completing_while_its_child_is_resolved_does_not_deadlock() {
    let db = TestDatabase::new();
    let mut operator = db.connection();
    let fixture = support::task_with_steps(&mut operator, 2);
    let [parent, child] = [fixture.step_ids()[0], fixture.step_ids()[1]];
    support::add_edge(&mut operator, parent, child).expect("edge");
    let claimed = claim_ready_steps(
        &mut operator,
        &ClaimRequest::for_tasks(&[fixture.task.task_id], 2, Duration::from_secs(600)),
    )
    .expect("claim");
    assert_eq!(claimed.len(), 1, "only the parent is ready");
    let claim = claimed[0].claim();

    let mut worker = db.connection();
    let mut watcher = db.connection();
    let worker_pid: i32 = diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))
        .get_result(&mut worker)
        .expect("pid");
    let done = AtomicBool::new(false);
    let (completed, resolved) = thread::scope(|scope| {
        let mut completion = None;
        let resolved = operator.transaction::<_, Error, _>(|operator| {
            diesel::sql_query(
                "SELECT 1 FROM tasker_workflow_steps WHERE workflow_step_id = $1 FOR NO KEY UPDATE",
            )
            .bind::<BigInt, _>(child)
            .execute(operator)?;
            let (done, worker) = (&done, &mut worker);
            completion = Some(scope.spawn(move || {
                let result = complete_step(worker, claim, &json!({}));
                done.store(true, Ordering::SeqCst);
                result
            }));
            wait_for_lock_or_end(&mut watcher, worker_pid, done);
            resolve_step_manually(operator, child, None)
        });
        let completed = completion
            .expect("spawned")
            .join()
            .expect("worker panicked");
        (completed, resolved)
    });
    assert!(completed.is_ok(), "complete_step: {completed:?}");
    assert!(resolved.is_ok(), "resolve_step_manually: {resolved:?}");
    support::assert_maintained_readiness(&mut operator, None);
}

#[derive(QueryableByName)]
struct StepId {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
}

/// Steps created in the same transaction as their edges: counted right
/// whether they were written with their final parent counts (as
/// `create_tasks` writes them, so the edges need no second write) or with
/// none, edges arriving all at once or one statement at a time (as
/// ActiveRecord saves them), even when a count written in advance happens to
/// equal what one statement brings.
#[test]
fn steps_created_with_their_edges_in_one_transaction_are_counted_exactly() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = support::task_with_steps(&mut conn, 8);
    let task = template.task.task_id;
    let conn = &mut conn;
    let ids: Vec<i64> = conn
        .transaction::<_, diesel::result::Error, _>(|conn| {
            // A second task of the same template, created here, its steps with
            // total_parents 0, except n6 (written as if it had its 2 parents).
            let new_task: StepId = diesel::sql_query(format!(
                "INSERT INTO tasker_tasks (named_task_id, identity_hash, requested_at)
                 SELECT named_task_id, 'created-here', now() FROM tasker_tasks WHERE task_id = {task}
                 RETURNING task_id AS workflow_step_id"
            ))
            .get_result(conn)?;
            let ids: Vec<i64> = diesel::sql_query(format!(
                "INSERT INTO tasker_workflow_steps (task_id, named_step_id, total_parents)
                 SELECT {}, named_step_id,
                        CASE WHEN row_number() OVER (ORDER BY workflow_step_id) = 7 THEN 2 ELSE 0 END
                 FROM tasker_workflow_steps WHERE task_id = {task} ORDER BY workflow_step_id
                 RETURNING workflow_step_id",
                new_task.workflow_step_id
            ))
            .load::<StepId>(conn)?
            .into_iter()
            .map(|row| row.workflow_step_id)
            .collect();
            let mut ids = ids;
            ids.sort_unstable();
            support::transition_step(conn, ids[0], StepState::InProgress);
            support::transition_step(conn, ids[0], StepState::Complete);
            // One edge per statement into n5, from the complete n0 last: its
            // second statement finds total_parents 1 = the one edge it brings.
            for parent in [ids[1], ids[2], ids[3], ids[4], ids[0]] {
                support::add_edge(conn, parent, ids[5])?;
            }
            // Both of n6's edges in one statement, its count written already.
            execute(
                conn,
                &format!(
                    "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
                     VALUES ({0}, {2}, 'e'), ({1}, {2}, 'e')",
                    ids[0], ids[1], ids[6]
                ),
            );
            // n7: one edge, then one more in a second statement.
            support::add_edge(conn, ids[2], ids[7])?;
            support::add_edge(conn, ids[0], ids[7])?;
            Ok(ids)
        })
        .unwrap();
    let parents = |conn: &mut PgConnection, id: i64| {
        let kept = kept(conn, id);
        (kept.total_parents, kept.completed_parents)
    };
    assert_eq!(parents(conn, ids[5]), (5, 1));
    assert_eq!(parents(conn, ids[6]), (2, 1));
    assert_eq!(parents(conn, ids[7]), (2, 1));
    support::assert_maintained_readiness(conn, None);
}

// Multi-row statements of every kind -------------------------------------------------

/// What one case of [`multi_row_statements_keep_maintained_readiness_exact`]
/// writes: per task of ten steps, the edges (`i < j`, so acyclic) and, per
/// step, a fate and membership in the subsets the later statements touch.
#[derive(Debug, Clone)]
struct MultiRowCase {
    edges: [Vec<(usize, usize)>; 2],
    /// 0: no transition; 1: in_progress; 2: complete; 3: error.
    fates: [Vec<u8>; 2],
    /// Steps whose counters the multi-row UPDATE of steps changes.
    updated: [Vec<bool>; 2],
    /// Steps whose error is rewritten to complete, and whose current
    /// transition is then unmarked.
    rewritten: [Vec<bool>; 2],
    /// Edges deleted (by index into `edges`).
    deleted_edges: [Vec<bool>; 2],
    /// Steps whose last transition is deleted.
    undone: [Vec<bool>; 2],
    /// Steps deleted, then inserted again with edges from the remaining roots.
    replaced: [Vec<bool>; 2],
}

fn multi_row_case() -> impl Strategy<Value = MultiRowCase> {
    let edges = proptest::collection::btree_set((0usize..10, 0usize..10), 0..25)
        .prop_map(|set| set.into_iter().filter(|(a, b)| a < b).collect::<Vec<_>>());
    let bits = || proptest::collection::vec(any::<bool>(), 10);
    let edge_bits = || proptest::collection::vec(any::<bool>(), 25);
    (
        [edges.clone(), edges],
        [
            proptest::collection::vec(0u8..4, 10),
            proptest::collection::vec(0u8..4, 10),
        ],
        [bits(), bits()],
        [bits(), bits()],
        [edge_bits(), edge_bits()],
        [bits(), bits()],
        [bits(), bits()],
    )
        .prop_map(
            |(edges, fates, updated, rewritten, deleted_edges, undone, replaced)| MultiRowCase {
                edges,
                fates,
                updated,
                rewritten,
                deleted_edges,
                undone,
                replaced,
            },
        )
}

/// `ids` where `bits` is set, as a SQL list (None when empty).
fn chosen(ids: &[i64], bits: &[bool]) -> Option<String> {
    let list: Vec<String> = ids
        .iter()
        .zip(bits)
        .filter(|(_, &bit)| bit)
        .map(|(id, _)| id.to_string())
        .collect();
    (!list.is_empty()).then(|| list.join(", "))
}

/// Each statement writes rows of both tasks at once, and the check runs
/// after each: inserts, updates and deletes of edges, transitions and steps,
/// many rows per statement.
fn run_multi_row_case(case: &MultiRowCase) -> Result<(), TestCaseError> {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let conn = &mut conn;
    let tasks = [
        support::task_with_steps(conn, 10),
        support::task_with_steps(conn, 10),
    ];
    let ids: Vec<Vec<i64>> = tasks.iter().map(|t| t.step_ids()).collect();
    let check = |conn: &mut PgConnection, what: &str| {
        support::check_maintained_readiness(conn, None)
            .map_err(|message| TestCaseError::fail(format!("after {what}: {message}")))
    };

    let values: Vec<String> = (0..2)
        .flat_map(|t| {
            let ids = &ids[t];
            case.edges[t]
                .iter()
                .map(move |&(a, b)| format!("({}, {}, 'e')", ids[a], ids[b]))
        })
        .collect();
    if !values.is_empty() {
        execute(
            conn,
            &format!(
                "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name) VALUES {}",
                values.join(", ")
            ),
        );
        check(conn, "inserting edges")?;
    }

    let mut rows = Vec::new();
    for (task_ids, fates) in ids.iter().zip(&case.fates) {
        for (step, &fate) in task_ids.iter().zip(fates) {
            if fate == 0 {
                continue;
            }
            rows.push(format!(
                "({step}, 'in_progress', 'pending', 1, {})",
                fate == 1
            ));
            if fate > 1 {
                let to = if fate == 2 { "complete" } else { "error" };
                rows.push(format!("({step}, '{to}', 'in_progress', 2, true)"));
            }
        }
    }
    if !rows.is_empty() {
        execute(
            conn,
            &format!(
                "INSERT INTO tasker_workflow_step_transitions
                     (workflow_step_id, to_state, from_state, sort_key, most_recent)
                 VALUES {}",
                rows.join(", ")
            ),
        );
        check(conn, "inserting transitions")?;
    }

    let all: Vec<i64> = ids.concat();
    let pick = |subsets: &[Vec<bool>; 2]| chosen(&all, &subsets.concat());
    if let Some(list) = pick(&case.updated) {
        execute(
            conn,
            &format!(
                "UPDATE tasker_workflow_steps
                 SET attempts = coalesce(attempts, 0) + 1, retryable = NOT retryable,
                     backoff_request_seconds = 5, last_attempted_at = now() AT TIME ZONE 'UTC'
                 WHERE workflow_step_id IN ({list})"
            ),
        );
        check(conn, "updating steps")?;
    }
    if let Some(list) = pick(&case.rewritten) {
        execute(
            conn,
            &format!(
                "UPDATE tasker_workflow_step_transitions SET to_state = 'complete'
                 WHERE most_recent AND to_state = 'error' AND workflow_step_id IN ({list})"
            ),
        );
        check(conn, "rewriting transitions")?;
        execute(
            conn,
            &format!(
                "UPDATE tasker_workflow_step_transitions SET most_recent = false
                 WHERE most_recent AND workflow_step_id IN ({list})"
            ),
        );
        check(conn, "unmarking current transitions")?;
    }
    let edge_ids: Vec<(i64, i64)> = (0..2)
        .flat_map(|t| {
            let ids = &ids[t];
            case.edges[t]
                .iter()
                .zip(&case.deleted_edges[t])
                .filter(|(_, &bit)| bit)
                .map(move |(&(a, b), _)| (ids[a], ids[b]))
        })
        .collect();
    if !edge_ids.is_empty() {
        let pairs: Vec<String> = edge_ids
            .iter()
            .map(|(a, b)| format!("({a}, {b})"))
            .collect();
        execute(
            conn,
            &format!(
                "DELETE FROM tasker_workflow_step_edges
                 WHERE (from_step_id, to_step_id) IN ({})",
                pairs.join(", ")
            ),
        );
        check(conn, "deleting edges")?;
    }
    if let Some(list) = pick(&case.undone) {
        execute(
            conn,
            &format!(
                "DELETE FROM tasker_workflow_step_transitions AS t
                 WHERE t.workflow_step_id IN ({list})
                   AND t.sort_key = (SELECT max(sort_key) FROM tasker_workflow_step_transitions AS l
                                     WHERE l.workflow_step_id = t.workflow_step_id)"
            ),
        );
        check(conn, "deleting transitions")?;
    }
    if let Some(list) = pick(&case.replaced) {
        // Deleted with their edges and transitions, then inserted again in one
        // statement, then given edges from every step left of their task.
        execute(
            conn,
            &format!("DELETE FROM tasker_workflow_steps WHERE workflow_step_id IN ({list})"),
        );
        check(conn, "deleting steps")?;
        let back: Vec<StepId> = diesel::sql_query(
            "INSERT INTO tasker_workflow_steps (task_id, named_step_id)
             SELECT t.task_id, n.named_step_id
             FROM tasker_tasks AS t CROSS JOIN tasker_named_steps AS n
             WHERE NOT EXISTS (SELECT FROM tasker_workflow_steps AS s
                               WHERE s.task_id = t.task_id AND s.named_step_id = n.named_step_id)
             RETURNING workflow_step_id",
        )
        .load(conn)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(conn, "inserting steps")?;
        if !back.is_empty() {
            let list: Vec<String> = back
                .iter()
                .map(|s| s.workflow_step_id.to_string())
                .collect();
            execute(
                conn,
                &format!(
                    "INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
                     SELECT parent.workflow_step_id, child.workflow_step_id, 'again'
                     FROM tasker_workflow_steps AS child
                     JOIN tasker_workflow_steps AS parent
                       ON parent.task_id = child.task_id
                      AND parent.workflow_step_id NOT IN ({0})
                     WHERE child.workflow_step_id IN ({0})",
                    list.join(", ")
                ),
            );
            check(conn, "inserting edges to the new steps")?;
        }
    }
    Ok(())
}

#[test]
fn multi_row_statements_keep_maintained_readiness_exact() {
    let config = ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&multi_row_case(), |case| run_multi_row_case(&case))
        .unwrap();
}
