//! The worker runtime against a real PostgreSQL: random workflows run to the
//! end through failures, panics and slow steps; shutdown; lost connections;
//! steps without a handler; kind limits; the shutdown deadline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::ConnectionManager;
use diesel::sql_types::{BigInt, Text};
use proptest::prelude::Rng as _;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::json;
use tasker_diesel::pool::{pool_builder, PgPool};
use tasker_diesel::schema::{tasker_workflow_step_edges as edges, tasker_workflow_steps as steps};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::worker::{HandlerResult, Handlers, StepContext, StepFailure, Worker};
use tasker_diesel::workflow::{
    claim_ready_steps, create_tasks, ClaimRequest, StepKind, StepTemplate, TaskRequest,
    TaskTemplate,
};
use tasker_diesel::{ErrorKind, StepState, TaskExecutionContext};

use crate::support;

fn pool(db: &TestDatabase, size: u32) -> PgPool {
    pool_builder()
        .max_size(size)
        .build(ConnectionManager::new(db.url()))
        .expect("pool")
}

/// What the handlers saw: every execution with when it ran, and the steps
/// whose handler succeeded.
#[derive(Default)]
struct Log {
    runs: Mutex<Vec<(i64, Instant, Instant)>>,
    succeeded: Mutex<HashSet<i64>>,
    early: Mutex<Vec<String>>,
}

impl Log {
    /// Runs `body` as step `step`'s execution, checking its parents finished.
    fn run(
        &self,
        step: &StepContext<'_>,
        parents: &HashMap<i64, Vec<i64>>,
        body: impl FnOnce() -> HandlerResult,
    ) -> HandlerResult {
        let id = step.workflow_step_id();
        {
            let succeeded = self.succeeded.lock().unwrap();
            for parent in parents.get(&id).into_iter().flatten() {
                if !succeeded.contains(parent) {
                    self.early
                        .lock()
                        .unwrap()
                        .push(format!("step {id} ran before its parent {parent}"));
                }
            }
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        self.runs
            .lock()
            .unwrap()
            .push((id, started, Instant::now()));
        match result {
            Ok(result) => {
                if result.is_ok() {
                    self.succeeded.lock().unwrap().insert(id);
                }
                result
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Steps run twice at once.
    fn overlaps(&self) -> Vec<i64> {
        let runs = self.runs.lock().unwrap();
        let mut by_step: HashMap<i64, Vec<(Instant, Instant)>> = HashMap::new();
        for &(id, start, end) in runs.iter() {
            by_step.entry(id).or_default().push((start, end));
        }
        by_step
            .into_iter()
            .filter(|(_, runs)| {
                let mut runs = runs.clone();
                runs.sort();
                runs.windows(2).any(|pair| pair[1].0 < pair[0].1)
            })
            .map(|(id, _)| id)
            .collect()
    }

    fn executions(&self) -> HashMap<i64, usize> {
        let mut counts = HashMap::new();
        for &(id, _, _) in self.runs.lock().unwrap().iter() {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }
}

/// Shapes and failures the same on every run: proptest's generator, seeded.
struct Rng(TestRng);

impl Rng {
    fn seeded(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Rng(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0.next_u64() % bound
    }

    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A template of 1 to `max_steps` steps named s00.., each depending on up to
/// two of the four before it.
fn random_template(index: u64, max_steps: u64) -> TaskTemplate {
    let mut rng = Rng::seeded(index);
    let name = |step: u64| format!("s{step:02}");
    let mut template = TaskTemplate::new("worker_test", format!("shape_{index:02}"), "1");
    for step in 0..1 + rng.below(max_steps) {
        let mut depends_on: Vec<u64> = Vec::new();
        for _ in 0..rng.below(3).min(step) {
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

fn create(conn: &mut PgConnection, templates: &[TaskTemplate], tasks: usize) -> Vec<i64> {
    let requests: Vec<TaskRequest<'_>> = (0..tasks)
        .map(|index| {
            TaskRequest::new(&templates[index % templates.len()]).context(json!({ "n": index }))
        })
        .collect();
    create_tasks(conn, &requests)
        .expect("create tasks")
        .into_iter()
        .map(|created| created.task.task_id)
        .collect()
}

fn parents_of(conn: &mut PgConnection) -> HashMap<i64, Vec<i64>> {
    let mut parents: HashMap<i64, Vec<i64>> = HashMap::new();
    for (from, to) in edges::table
        .select((edges::from_step_id, edges::to_step_id))
        .load::<(i64, i64)>(conn)
        .expect("edges")
    {
        parents.entry(to).or_default().push(from);
    }
    parents
}

#[derive(QueryableByName)]
struct StateCount {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Tasks by current state.
fn task_states(conn: &mut PgConnection) -> HashMap<String, i64> {
    diesel::sql_query(
        "SELECT coalesce(tt.to_state::text, 'pending') AS state, count(*) AS n
         FROM tasker_tasks t
         LEFT JOIN tasker_task_transitions tt ON tt.task_id = t.task_id AND tt.most_recent
         GROUP BY 1",
    )
    .load::<StateCount>(conn)
    .expect("task states")
    .into_iter()
    .map(|row| (row.state, row.n))
    .collect()
}

/// Waits until every task is complete or error (finalized), or `limit` passes.
fn wait_until_all_finalized(conn: &mut PgConnection, tasks: i64, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let states = task_states(conn);
        let done = states.get("complete").copied().unwrap_or(0)
            + states.get("error").copied().unwrap_or(0);
        if done == tasks {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_runtime_runs_random_workflows_to_the_end_through_failures_panics_and_slow_steps() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let templates: Vec<TaskTemplate> = (0..20).map(|i| random_template(i, 8)).collect();
    let task_ids = create(&mut conn, &templates, 200);
    let parents = Arc::new(parents_of(&mut conn));
    let log = Arc::new(Log::default());
    let permanent_failures = Arc::new(AtomicUsize::new(0));

    let handler = {
        let (log, parents, permanent_failures) =
            (log.clone(), parents.clone(), permanent_failures.clone());
        move |step: &StepContext<'_>| -> HandlerResult {
            log.run(step, &parents, || {
                let mut rng =
                    Rng::seeded(step.workflow_step_id() as u64 ^ ((step.attempt() as u64) << 40));
                // The parents' results are there for every step that has parents.
                let results = step.parent_results()?;
                let roll = rng.unit();
                if roll < 0.08 {
                    Err(StepFailure::retryable(json!({ "message": "flaky" })))
                } else if roll < 0.10 {
                    permanent_failures.fetch_add(1, Ordering::Relaxed);
                    Err(StepFailure::permanent(json!({ "message": "bad input" })))
                } else if roll < 0.13 {
                    panic!("handler bug in step {}", step.workflow_step_id());
                } else {
                    if roll > 0.995 {
                        // Longer than half the lease: only the heartbeat keeps the claim.
                        thread::sleep(Duration::from_millis(1_800));
                    }
                    Ok(json!({ "parents": results.len(), "attempt": step.attempt() }))
                }
            })
        }
    };
    let handler = Arc::new(handler);
    let mut handlers = Handlers::new();
    for index in 0..8 {
        let handler = handler.clone();
        handlers = handlers.on(format!("s{index:02}"), move |step| handler(step));
    }
    let worker = Worker::builder(pool(&db, 12), handlers)
        .threads(8)
        .batch(5)
        .lease(Duration::from_secs(2))
        .sweep_every(Duration::from_millis(500))
        .build()
        .expect("worker")
        .start();
    let finished =
        wait_until_all_finalized(&mut conn, task_ids.len() as i64, Duration::from_secs(180));
    let summary = worker.shutdown(Duration::from_secs(10));
    assert!(
        finished,
        "not every task was finalized: {:?} {summary:?}",
        task_states(&mut conn)
    );
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(log.overlaps(), Vec::<i64>::new(), "steps run twice at once");
    assert_eq!(log.early.lock().unwrap().clone(), Vec::<String>::new());
    assert!(summary.stats.panicked > 0 && summary.stats.failed > summary.stats.panicked);
    assert_eq!(summary.stats.lost, 0, "no result refused: {summary:?}");
    assert!(summary.stats.finalized > 0);
    // Blocked tasks are the ones a step failed in for good.
    let states = task_states(&mut conn);
    assert!(states.get("error").copied().unwrap_or(0) > 0, "{states:?}");
    let contexts = TaskExecutionContext::find_many(&mut conn, &task_ids).expect("contexts");
    for context in &contexts {
        assert!(
            matches!(
                format!("{:?}", context.execution_status).as_str(),
                "AllComplete" | "BlockedByFailures"
            ),
            "{context:?}"
        );
    }
    // No step holds a claim; none is in progress.
    let in_progress: i64 = steps::table
        .filter(steps::current_state.eq(StepState::InProgress))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(in_progress, 0);
    support::assert_maintained_readiness(&mut conn, None);
}

/// Independent one-step tasks of steps named `name`.
fn one_step_tasks(conn: &mut PgConnection, name: &str, tasks: usize) -> Vec<i64> {
    let template =
        TaskTemplate::new("worker_test", format!("only_{name}"), "1").step(StepTemplate::new(name));
    create(conn, &[template], tasks)
}

fn counting_handlers(name: &str, log: &Arc<Log>, work: Duration) -> Handlers {
    let log = log.clone();
    let parents = Arc::new(HashMap::new());
    Handlers::new().on(name, move |step| {
        log.run(step, &parents, || {
            thread::sleep(work);
            Ok(json!({}))
        })
    })
}

#[test]
fn shutdown_under_load_loses_no_step_and_runs_none_twice() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let tasks = one_step_tasks(&mut conn, "work", 400);
    let log = Arc::new(Log::default());
    let worker = Worker::builder(
        pool(&db, 8),
        counting_handlers("work", &log, Duration::from_millis(5)),
    )
    .threads(4)
    .batch(10)
    .build()
    .expect("worker")
    .start();
    while worker.stats().completed < 50 {
        thread::sleep(Duration::from_millis(5));
    }
    let summary = worker.shutdown(Duration::from_secs(20));
    assert_eq!(summary.abandoned_threads, 0);
    assert_eq!(summary.released_at_deadline, 0);
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    // Every executed step was reported; the claimed ones not started went back.
    let executed = log.executions();
    assert!(executed.values().all(|&n| n == 1), "a step ran twice");
    assert_eq!(summary.stats.completed as usize, executed.len());
    let in_progress: i64 = steps::table
        .filter(steps::current_state.eq(StepState::InProgress))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(in_progress, 0, "a claim was left behind: {summary:?}");
    let complete: i64 = steps::table
        .filter(steps::current_state.eq(StepState::Complete))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(complete as usize, executed.len());
    // Released steps were never counted as attempts: each pending step is new.
    let attempted_pending: i64 = steps::table
        .filter(steps::current_state.eq(StepState::Pending))
        .filter(steps::attempts.gt(0))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(attempted_pending, 0);

    // A second worker finishes the rest, each step once.
    let worker = Worker::builder(
        pool(&db, 8),
        counting_handlers("work", &log, Duration::ZERO),
    )
    .threads(4)
    .build()
    .expect("worker")
    .start();
    let finished = wait_until_all_finalized(&mut conn, tasks.len() as i64, Duration::from_secs(60));
    let summary = worker.shutdown(Duration::from_secs(10));
    assert!(finished, "{summary:?}");
    let executed = log.executions();
    assert_eq!(executed.len(), tasks.len());
    assert!(executed.values().all(|&n| n == 1), "a step ran twice");
}

#[test]
fn a_connection_killed_mid_batch_is_recovered() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let tasks = one_step_tasks(&mut conn, "work", 600);
    let log = Arc::new(Log::default());
    let worker = Worker::builder(
        pool(&db, 8),
        counting_handlers("work", &log, Duration::from_millis(1)),
    )
    .threads(4)
    .batch(10)
    .lease(Duration::from_secs(2))
    .sweep_every(Duration::from_millis(200))
    .build()
    .expect("worker")
    .start();
    // Kill every other backend of the database a few times while it runs.
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(60));
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut conn)
        .expect("terminate");
    }
    let finished = wait_until_all_finalized(&mut conn, tasks.len() as i64, Duration::from_secs(90));
    let summary = worker.shutdown(Duration::from_secs(10));
    assert!(finished, "{summary:?} {:?}", task_states(&mut conn));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(
        summary.stats.transient_errors > 0,
        "no connection was lost: {summary:?}"
    );
    assert_eq!(log.overlaps(), Vec::<i64>::new(), "steps run twice at once");
    support::assert_maintained_readiness(&mut conn, None);
}

#[test]
fn a_step_without_a_handler_is_left_for_a_worker_that_has_one() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = TaskTemplate::new("worker_test", "two_kinds", "1")
        .step(StepTemplate::new("ours"))
        .step(StepTemplate::new("theirs"));
    let tasks = create(&mut conn, &[template], 20);
    let log = Arc::new(Log::default());
    let worker = Worker::builder(
        pool(&db, 6),
        counting_handlers("ours", &log, Duration::ZERO),
    )
    .threads(2)
    .build()
    .expect("worker")
    .start();
    let started = Instant::now();
    while worker.stats().completed < 20 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let summary = worker.shutdown(Duration::from_secs(5));
    assert_eq!(summary.stats.completed, 20);
    assert_eq!(summary.stats.claimed, 20, "only its own kind was claimed");
    // The other kind was never claimed: pending, no attempt.
    let untouched: i64 = steps::table
        .filter(steps::current_state.eq(StepState::Pending))
        .filter(steps::attempts.is_null().or(steps::attempts.eq(0)))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(untouched, 20);

    let worker = Worker::builder(
        pool(&db, 6),
        counting_handlers("theirs", &log, Duration::ZERO),
    )
    .threads(2)
    .build()
    .expect("worker")
    .start();
    let finished = wait_until_all_finalized(&mut conn, tasks.len() as i64, Duration::from_secs(30));
    worker.shutdown(Duration::from_secs(5));
    assert!(finished);
    assert_eq!(log.executions().len(), 40);
}

#[test]
fn a_kind_limit_caps_the_steps_held_at_once() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let tasks = one_step_tasks(&mut conn, "charge_card", 30);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handlers = {
        let (running, most) = (running.clone(), most.clone());
        Handlers::new()
            .on("charge_card", move |_step| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(10));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(json!({}))
            })
            .limit(&StepKind::named("charge_card"), 2)
    };
    let worker = Worker::builder(pool(&db, 8), handlers)
        .threads(4)
        .batch(5)
        .build()
        .expect("worker")
        .start();
    let finished = wait_until_all_finalized(&mut conn, tasks.len() as i64, Duration::from_secs(60));
    let summary = worker.shutdown(Duration::from_secs(5));
    assert!(finished, "{summary:?}");
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} at once",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(summary.stats.completed, 30);
}

#[test]
fn task_scoped_handlers_take_only_the_steps_of_their_task() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let billing = TaskTemplate::new("billing", "invoice", "2").step(StepTemplate::new("send"));
    let support_task = TaskTemplate::new("support", "ticket", "1").step(StepTemplate::new("send"));
    create(&mut conn, &[billing, support_task], 10);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handlers = {
        let seen = seen.clone();
        Handlers::new().on_kind(
            StepKind::named("send")
                .in_task("billing", "invoice")
                .version("2"),
            move |step| {
                seen.lock()
                    .unwrap()
                    .push(step.task_template()?.0.to_owned());
                Ok(json!({}))
            },
        )
    };
    let worker = Worker::builder(pool(&db, 5), handlers)
        .threads(2)
        .build()
        .expect("worker")
        .start();
    let started = Instant::now();
    while worker.stats().completed < 5 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let summary = worker.shutdown(Duration::from_secs(5));
    assert_eq!(summary.stats.claimed, 5, "{summary:?}");
    assert_eq!(*seen.lock().unwrap(), vec!["billing".to_owned(); 5]);
}

#[test]
fn at_the_shutdown_deadline_a_running_step_is_released_for_another_worker_at_once() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    one_step_tasks(&mut conn, "slow", 1);
    let handlers = Handlers::new().on("slow", |_step| {
        thread::sleep(Duration::from_secs(3));
        Ok(json!({ "late": true }))
    });
    let worker = Worker::builder(pool(&db, 4), handlers)
        .threads(1)
        .build()
        .expect("worker")
        .start();
    while worker.stats().claimed < 1 {
        thread::sleep(Duration::from_millis(5));
    }
    let summary = worker.shutdown(Duration::from_millis(200));
    assert_eq!(summary.released_at_deadline, 1, "{summary:?}");
    assert_eq!(summary.abandoned_threads, 1);
    // Claimable at once, its first attempt given back.
    let claimed = claim_ready_steps(
        &mut conn,
        &ClaimRequest::any_task(1, Duration::from_secs(30)),
    )
    .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 1);
    // The abandoned handler's late result is dropped, not reported.
    thread::sleep(Duration::from_secs(3));
    let step: (StepState, Option<serde_json::Value>) = steps::table
        .select((steps::current_state, steps::results))
        .first(&mut conn)
        .expect("step");
    assert_eq!(step, (StepState::InProgress, None));
}

#[test]
fn errors_say_whether_to_retry() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let refused = claim_ready_steps(
        &mut conn,
        &ClaimRequest::any_task(0, Duration::from_secs(1)),
    )
    .expect_err("zero steps");
    assert_eq!(refused.kind(), ErrorKind::Refused);
    let mut victim = db.connection();
    let pid: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(&mut victim)
    .expect("pid");
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
        .execute(&mut conn)
        .expect("terminate");
    thread::sleep(Duration::from_millis(100));
    let lost = claim_ready_steps(
        &mut victim,
        &ClaimRequest::any_task(1, Duration::from_secs(1)),
    )
    .expect_err("a dead connection");
    assert_eq!(lost.kind(), ErrorKind::Transient, "{lost:?}");
    let bug = diesel::sql_query("SELECT no_such_column FROM tasker_tasks")
        .execute(&mut conn)
        .map_err(tasker_diesel::Error::from)
        .expect_err("a bad query");
    assert_eq!(bug.kind(), ErrorKind::Fatal);
}

/// What a handler returns that the database cannot take fails its step, not
/// its batch: results with a NUL become a permanent failure that says so, and
/// a delay beyond the schema's longest is that longest delay.
#[test]
fn results_the_database_cannot_store_fail_their_step_not_the_batch() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = TaskTemplate::new("worker_test", "unstorable", "1")
        .step(StepTemplate::new("nul"))
        .step(StepTemplate::new("forever"))
        .step(StepTemplate::new("fine"));
    create(&mut conn, &[template], 5);
    let handlers = Handlers::new()
        .on("nul", |_| Ok(json!({ "text": "a\u{0}b" })))
        .on("forever", |_| {
            Err(StepFailure::retryable(json!("later")).retry_after(Duration::MAX))
        })
        .on("fine", |_| Ok(json!({ "ok": true })));
    let worker = Worker::builder(pool(&db, 5), handlers)
        .threads(1)
        .batch(15)
        .build()
        .expect("worker")
        .start();
    let started = Instant::now();
    while worker.stats().completed + worker.stats().failed < 15
        && started.elapsed() < Duration::from_secs(30)
    {
        thread::sleep(Duration::from_millis(10));
    }
    let summary = worker.shutdown(Duration::from_secs(5));
    assert_eq!(summary.stats.lost, 0, "{summary:?}");
    assert_eq!(summary.stats.completed, 5, "{summary:?}");
    let mut by_state = |state: StepState, retryable: bool| -> i64 {
        steps::table
            .filter(steps::current_state.eq(state))
            .filter(steps::retryable.eq(retryable))
            .count()
            .get_result(&mut conn)
            .expect("count")
    };
    // nul: failed for good; forever: failed, retryable, after the longest delay.
    assert_eq!(by_state(StepState::Error, false), 5);
    assert_eq!(by_state(StepState::Error, true), 5);
    let delays: Vec<Option<i32>> = steps::table
        .filter(steps::retryable.eq(true))
        .filter(steps::current_state.eq(StepState::Error))
        .select(steps::backoff_request_seconds)
        .load(&mut conn)
        .expect("delays");
    assert!(
        delays.iter().all(|delay| *delay == Some(i32::MAX)),
        "{delays:?}"
    );
}

#[test]
fn a_worker_configuration_that_every_claim_would_refuse_is_refused_at_build() {
    let db = TestDatabase::new();
    let handlers = || Handlers::new().on("a", |_| Ok(json!({})));
    let refused = |builder: tasker_diesel::worker::WorkerBuilder| match builder.build() {
        Err(tasker_diesel::Error::Refused(tasker_diesel::Refusal::InvalidArgument {
            message,
            ..
        })) => message,
        Err(other) => panic!("expected InvalidArgument, got {other:?}"),
        Ok(_) => panic!("built"),
    };
    let message = refused(Worker::builder(pool(&db, 6), handlers()).lease(Duration::MAX));
    assert!(message.contains("lease"), "{message}");
    let message = refused(Worker::builder(pool(&db, 6), handlers()).threads(usize::MAX));
    assert!(message.contains("pool"), "{message}");
    let message = refused(Worker::builder(
        pool(&db, 6),
        Handlers::new().on("a\u{0}", |_| Ok(json!({}))),
    ));
    assert!(message.contains("NUL"), "{message}");
    let message =
        refused(Worker::builder(pool(&db, 6), handlers()).metadata(json!({ "worker": "\u{0}" })));
    assert!(message.contains("metadata"), "{message}");
    let never = handlers().limit(&StepKind::named("a"), 0);
    let message = refused(Worker::builder(pool(&db, 6), never));
    assert!(message.contains("limit"), "{message}");
}

/// One task whose context `serde_json` cannot decode (written by another
/// writer) fails its own step, not the others of the batch.
#[test]
fn an_undecodable_task_context_fails_its_step_only() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template =
        TaskTemplate::new("worker_test", "contexts", "1").step(StepTemplate::new("read"));
    let tasks = create(&mut conn, &[template], 4);
    diesel::sql_query(
        "UPDATE tasker_tasks SET context = '{\"amount\": 1e400}'::jsonb WHERE task_id = $1",
    )
    .bind::<BigInt, _>(tasks[0])
    .execute(&mut conn)
    .expect("poison");
    let handlers = Handlers::new().on("read", |step| {
        Ok(json!({ "context": step.task_context()?.cloned() }))
    });
    let worker = Worker::builder(pool(&db, 5), handlers)
        .threads(1)
        .batch(10)
        .build()
        .expect("worker")
        .start();
    let started = Instant::now();
    while worker.stats().completed < 3 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(10));
    }
    let summary = worker.shutdown(Duration::from_secs(5));
    assert_eq!(summary.stats.completed, 3, "{summary:?}");
    let failed: Vec<Option<serde_json::Value>> =
        tasker_diesel::schema::tasker_workflow_step_transitions::table
            .inner_join(steps::table)
            .filter(steps::task_id.eq(tasks[0]))
            .filter(
                tasker_diesel::schema::tasker_workflow_step_transitions::to_state
                    .eq(StepState::Error),
            )
            .select(tasker_diesel::schema::tasker_workflow_step_transitions::metadata)
            .load(&mut conn)
            .expect("failures");
    assert!(!failed.is_empty());
    let message = failed[0].as_ref().unwrap()["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("cannot be decoded"), "{message}");
}
