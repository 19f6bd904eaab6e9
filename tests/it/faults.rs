//! Faults on the write path: a worker whose connection dies in the middle of a
//! call leaves none of it, one that dies after the call returned leaves all of
//! it, and a claim whose lease passed frees its step and loses its late result.
//!
//! To stop a call deterministically in the middle, each test database gets a
//! test-only trigger: a connection that names step states in the setting
//! `faults.pause_on` sleeps `faults.pause_seconds` right after it wrote a step
//! transition to one of them, inside the write-path function, before commit.
//! Connections that set nothing never pause.

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Bool, Double, Integer, Text};
use serde_json::{json, Value};
use tasker_diesel::models::{Task, TaskTransition, WorkflowStep, WorkflowStepTransition};
use tasker_diesel::schema::*;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::*;
use tasker_diesel::{Error, Refusal, StepState, TaskState};

use crate::support;

/// The pause trigger, installed in one test database only.
const INSTALL_PAUSE_TRIGGER: &str = r#"
CREATE FUNCTION faults_pause_after_step_transition() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.to_state::text = ANY (string_to_array(current_setting('faults.pause_on', true), ','))
    THEN
        PERFORM pg_sleep(coalesce(
            nullif(current_setting('faults.pause_seconds', true), '')::float8, 0));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER faults_pause_after_step_transition
    AFTER INSERT ON tasker_workflow_step_transitions
    FOR EACH ROW EXECUTE FUNCTION faults_pause_after_step_transition();
"#;

/// Makes this session pause after writing a step transition to one of the
/// states `$1` (comma-separated) for `$2` seconds.
const SET_PAUSE: &str = "SELECT set_config('faults.pause_on', $1, false) AS name, \
                         set_config('faults.pause_seconds', $2, false) AS seconds";

/// Whether backend `$1` is sleeping in the pause trigger inside a call of the
/// function `$2`, with a transaction that has written (an xid assigned).
const PAUSED_IN: &str = "SELECT EXISTS (
    SELECT FROM pg_stat_activity
    WHERE pid = $1 AND state = 'active' AND wait_event = 'PgSleep'
      AND backend_xid IS NOT NULL AND query LIKE '%' || $2 || '(%'
) AS flag";

/// Kills backend `$1`.
const TERMINATE: &str = "SELECT pg_terminate_backend($1) AS flag";

/// Whether backend `$1` still exists. It leaves `pg_stat_activity` only after
/// its transaction was rolled back and its locks released.
const BACKEND_ALIVE: &str = "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1) AS flag";

/// Moves a step's last attempt `$2` seconds into the past.
const LAST_ATTEMPT_EARLIER: &str = "UPDATE tasker_workflow_steps \
    SET last_attempted_at = last_attempted_at - make_interval(secs => $2) \
    WHERE workflow_step_id = $1";

/// Moves a step's current transition `$2` seconds into the past.
const CURRENT_TRANSITION_EARLIER: &str = "UPDATE tasker_workflow_step_transitions \
    SET created_at = created_at - make_interval(secs => $2) \
    WHERE workflow_step_id = $1 AND most_recent";

/// Ends a step's lease a moment ago, as if its time had passed.
const LEASE_PASSED: &str = "UPDATE tasker_workflow_steps \
    SET claimed_until = (now() AT TIME ZONE 'UTC') - interval '1 millisecond' \
    WHERE workflow_step_id = $1";

const LEASE: Duration = Duration::from_secs(60);

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// A test database with the pause trigger.
fn database_with_pause_trigger() -> TestDatabase {
    let db = TestDatabase::new();
    db.connection()
        .batch_execute(INSTALL_PAUSE_TRIGGER)
        .expect("install the pause trigger");
    db
}

/// A worker: a connection of its own, whose backend the test can kill.
struct Worker {
    conn: PgConnection,
    pid: i32,
}

impl Worker {
    fn connect(db: &TestDatabase) -> Self {
        let mut conn = db.connection();
        let pid = support::backend_pid(&mut conn);
        Worker { conn, pid }
    }

    /// A worker that pauses for `pause` after each step transition to one of
    /// `states` (comma-separated) that it writes.
    fn pausing(db: &TestDatabase, states: &str, pause: Duration) -> Self {
        let mut worker = Worker::connect(db);
        sql_query(SET_PAUSE)
            .bind::<Text, _>(states)
            .bind::<Text, _>(pause.as_secs_f64().to_string())
            .execute(&mut worker.conn)
            .expect("set the pause");
        worker
    }

    /// Runs `call` on the worker's connection in a thread of its own. The
    /// thread hands back the connection with the result, so the backend stays
    /// alive (and killable) after the call returned.
    fn start<T, F>(self, call: F) -> Running<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> tasker_diesel::Result<T> + Send + 'static,
    {
        let Worker { mut conn, pid } = self;
        let (started, start) = mpsc::channel();
        let handle = thread::spawn(move || {
            started.send(()).expect("signal the start");
            (call(&mut conn), conn)
        });
        start.recv().expect("worker thread started");
        Running { pid, handle }
    }
}

/// A worker's call under way.
struct Running<T> {
    pid: i32,
    handle: JoinHandle<(tasker_diesel::Result<T>, PgConnection)>,
}

impl<T> Running<T> {
    /// The call's result (the connection is dropped).
    fn outcome(self) -> tasker_diesel::Result<T> {
        self.handle.join().expect("worker thread").0
    }
}

/// Waits until backend `pid` sleeps in the pause trigger inside `function`.
fn wait_until_paused_in(conn: &mut PgConnection, pid: i32, function: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let paused = sql_query(PAUSED_IN)
            .bind::<Integer, _>(pid)
            .bind::<Text, _>(function)
            .get_result::<Flag>(conn)
            .expect("read pg_stat_activity")
            .flag;
        if paused {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never paused in {function}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// `pg_terminate_backend(pid)`, then waits until the backend has exited.
/// (`pg_terminate_backend(pid, timeout)` would wait too, but in steps of
/// 100 ms.)
fn terminate(conn: &mut PgConnection, pid: i32) {
    let terminated = sql_query(TERMINATE)
        .bind::<Integer, _>(pid)
        .get_result::<Flag>(conn)
        .expect("pg_terminate_backend")
        .flag;
    assert!(terminated, "backend {pid} was not terminated");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sql_query(BACKEND_ALIVE)
        .bind::<Integer, _>(pid)
        .get_result::<Flag>(conn)
        .expect("read pg_stat_activity")
        .flag
    {
        assert!(Instant::now() < deadline, "backend {pid} did not exit");
        thread::sleep(Duration::from_millis(2));
    }
}

/// The error of a worker whose connection was killed: a failed query, not a
/// refusal.
fn assert_connection_lost<T: std::fmt::Debug>(outcome: tasker_diesel::Result<T>) {
    match outcome {
        Err(Error::Query(error)) => println!("killed worker got: {error}"),
        other => panic!("expected a lost connection, got {other:?}"),
    }
}

/// Everything the write path may change for a task: the task, its steps and
/// both histories.
#[derive(Debug, Clone, PartialEq)]
struct TaskRecord {
    task: Task,
    steps: Vec<WorkflowStep>,
    step_transitions: Vec<WorkflowStepTransition>,
    task_transitions: Vec<TaskTransition>,
}

impl TaskRecord {
    fn read(conn: &mut PgConnection, task_id: i64) -> Self {
        let task = tasker_tasks::table
            .find(task_id)
            .select(Task::as_select())
            .first(conn)
            .expect("task");
        let steps: Vec<WorkflowStep> = tasker_workflow_steps::table
            .filter(tasker_workflow_steps::task_id.eq(task_id))
            .order(tasker_workflow_steps::workflow_step_id)
            .select(WorkflowStep::as_select())
            .load(conn)
            .expect("steps");
        let step_ids: Vec<i64> = steps.iter().map(|step| step.workflow_step_id).collect();
        let step_transitions = tasker_workflow_step_transitions::table
            .filter(tasker_workflow_step_transitions::workflow_step_id.eq_any(&step_ids))
            .order((
                tasker_workflow_step_transitions::workflow_step_id,
                tasker_workflow_step_transitions::sort_key,
            ))
            .select(WorkflowStepTransition::as_select())
            .load(conn)
            .expect("step transitions");
        let task_transitions = tasker_task_transitions::table
            .filter(tasker_task_transitions::task_id.eq(task_id))
            .order(tasker_task_transitions::sort_key)
            .select(TaskTransition::as_select())
            .load(conn)
            .expect("task transitions");
        TaskRecord {
            task,
            steps,
            step_transitions,
            task_transitions,
        }
    }

    fn step(&self, step_id: i64) -> &WorkflowStep {
        self.steps
            .iter()
            .find(|step| step.workflow_step_id == step_id)
            .expect("step of the task")
    }

    /// The step's states, oldest first.
    fn history(&self, step_id: i64) -> Vec<StepState> {
        self.step_transitions
            .iter()
            .filter(|transition| transition.workflow_step_id == step_id)
            .map(|transition| transition.to_state)
            .collect()
    }

    /// The step's most recent transition.
    fn current(&self, step_id: i64) -> Option<&WorkflowStepTransition> {
        let mut current = self
            .step_transitions
            .iter()
            .filter(|transition| transition.workflow_step_id == step_id && transition.most_recent);
        let first = current.next();
        assert!(current.next().is_none(), "two most recent transitions");
        first
    }

    fn task_history(&self) -> Vec<TaskState> {
        self.task_transitions
            .iter()
            .map(|transition| transition.to_state)
            .collect()
    }

    /// The whole of a first claim of `step_id`: the step's first transition
    /// (in_progress, most recent), in process, one attempt, leased, and the
    /// task started.
    fn is_claimed_once(&self, step_id: i64) -> bool {
        let step = self.step(step_id);
        self.history(step_id) == [StepState::InProgress]
            && self
                .current(step_id)
                .is_some_and(|current| current.to_state == StepState::InProgress)
            && step.in_process
            && !step.processed
            && step.attempts == Some(1)
            && step.last_attempted_at.is_some()
            && step.claimed_until.is_some()
            && self.task_history() == [TaskState::InProgress]
            && self.task_transitions[0].most_recent
    }

    /// The whole of completing `step_id` after its first claim.
    fn is_completed(&self, step_id: i64, results: &Value) -> bool {
        let step = self.step(step_id);
        self.history(step_id) == [StepState::InProgress, StepState::Complete]
            && self
                .current(step_id)
                .is_some_and(|current| current.to_state == StepState::Complete)
            && !step.in_process
            && step.processed
            && step.processed_at.is_some()
            && step.claimed_until.is_none()
            && step.attempts == Some(1)
            && step.results.as_ref() == Some(results)
    }
}

fn claim_one(conn: &mut PgConnection, task_id: i64) -> tasker_diesel::Result<Vec<ClaimedStep>> {
    claim_ready_steps(conn, &ClaimRequest::for_tasks(&[task_id], 1, LEASE))
}

/// Moves a failed step's failure and last attempt `seconds` into the past, so
/// its retry backoff has passed.
fn backoff_passed(conn: &mut PgConnection, step_id: i64, seconds: f64) {
    for statement in [CURRENT_TRANSITION_EARLIER, LAST_ATTEMPT_EARLIER] {
        let moved = sql_query(statement)
            .bind::<BigInt, _>(step_id)
            .bind::<Double, _>(seconds)
            .execute(conn)
            .expect("move the failure into the past");
        assert_eq!(moved, 1);
    }
}

/// A small xorshift generator (no extra dependency); `FAULTS_SEED` repeats a run.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            })
            | 1;
        println!("FAULTS_SEED={seed}");
        Rng(seed)
    }

    /// A number in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % (max + 1)
    }
}

// 1. Killed in the middle of a call: none of it. -------------------------------------

#[test]
fn worker_killed_mid_claim_leaves_none_of_the_claim() {
    let db = database_with_pause_trigger();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let task_id = fixture.task.task_id;
    let root = fixture.steps[0].workflow_step_id;
    let before = TaskRecord::read(&mut conn, task_id);

    let worker = Worker::pausing(&db, "in_progress", Duration::from_secs(5)).start(move |conn| {
        claim_ready_steps(
            conn,
            &ClaimRequest::for_tasks(&[task_id], 10, LEASE)
                .with_metadata(&json!({"worker": "doomed"})),
        )
    });
    // Paused after the task's and the root step's transitions were written.
    wait_until_paused_in(&mut conn, worker.pid, "claim_ready_steps");
    terminate(&mut conn, worker.pid);
    assert_connection_lost(worker.outcome());

    let mut fresh = db.connection();
    let after = TaskRecord::read(&mut fresh, task_id);
    assert!(after.step_transitions.is_empty(), "{after:?}");
    assert!(after.task_transitions.is_empty(), "{after:?}");
    let step = after.step(root);
    assert_eq!(step.attempts, Some(0));
    assert!(!step.in_process);
    assert_eq!(step.claimed_until, None);
    assert_eq!(after, before, "the killed claim left something behind");

    let claimed = claim_one(&mut fresh, task_id).expect("claim after the kill");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].workflow_step_id, root);
    assert_eq!(claimed[0].attempt, 1);
    assert!(TaskRecord::read(&mut fresh, task_id).is_claimed_once(root));
}

#[test]
fn worker_killed_mid_complete_leaves_no_results_and_its_claim_valid() {
    let db = database_with_pause_trigger();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let task_id = fixture.task.task_id;
    let root = fixture.steps[0].workflow_step_id;
    let claim = claim_one(&mut conn, task_id).expect("claim")[0].claim();
    let before = TaskRecord::read(&mut conn, task_id);
    let results = json!({"answer": 42});

    let sent = results.clone();
    let worker = Worker::pausing(&db, "complete", Duration::from_secs(5))
        .start(move |conn| complete_step(conn, claim, &sent));
    // Paused after the results and the complete transition were written.
    wait_until_paused_in(&mut conn, worker.pid, "complete_step");
    terminate(&mut conn, worker.pid);
    assert_connection_lost(worker.outcome());

    let mut fresh = db.connection();
    let after = TaskRecord::read(&mut fresh, task_id);
    let step = after.step(root);
    assert_eq!(step.results, None);
    assert_eq!(after.history(root), [StepState::InProgress]);
    assert_eq!(
        after.current(root).map(|current| current.id),
        Some(claim.claim_id)
    );
    assert!(step.in_process && !step.processed);
    assert!(step.claimed_until > Some(support::utc_now(&mut fresh)));
    assert_eq!(after, before, "the killed complete left something behind");

    let completed = complete_step(&mut fresh, claim, &results).expect("complete again");
    assert_eq!(completed.to_state, StepState::Complete);
    assert!(TaskRecord::read(&mut fresh, task_id).is_completed(root, &results));
}

#[test]
fn worker_killed_mid_fail_leaves_no_failure_and_its_claim_valid() {
    let db = database_with_pause_trigger();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let task_id = fixture.task.task_id;
    let root = fixture.steps[0].workflow_step_id;
    let claim = claim_one(&mut conn, task_id).expect("claim")[0].claim();
    let before = TaskRecord::read(&mut conn, task_id);
    let retry_after = Some(Duration::from_secs(7));

    let worker = Worker::pausing(&db, "error", Duration::from_secs(5))
        .start(move |conn| fail_step(conn, claim, &json!({"boom": 1}), retry_after));
    // Paused after backoff_request_seconds and the error transition were written.
    wait_until_paused_in(&mut conn, worker.pid, "fail_step");
    terminate(&mut conn, worker.pid);
    assert_connection_lost(worker.outcome());

    let mut fresh = db.connection();
    let after = TaskRecord::read(&mut fresh, task_id);
    let step = after.step(root);
    assert_eq!(step.backoff_request_seconds, None);
    assert_eq!(after.history(root), [StepState::InProgress]);
    assert_eq!(
        after.current(root).map(|current| current.id),
        Some(claim.claim_id)
    );
    assert!(step.in_process && !step.processed);
    assert!(step.claimed_until > Some(support::utc_now(&mut fresh)));
    assert_eq!(after, before, "the killed fail left something behind");

    let failed =
        fail_step(&mut fresh, claim, &json!({"boom": 2}), retry_after).expect("fail again");
    assert_eq!(failed.to_state, StepState::Error);
    assert_eq!(
        failed.metadata,
        Some(json!({"error": {"boom": 2}, "error_message": "{\"boom\": 2}"}))
    );
    let after = TaskRecord::read(&mut fresh, task_id);
    assert_eq!(
        after.history(root),
        [StepState::InProgress, StepState::Error]
    );
    let step = after.step(root);
    assert_eq!(step.backoff_request_seconds, Some(7));
    assert!(!step.in_process && !step.processed);
    assert_eq!(step.claimed_until, None);
}

// 2. Killed after the call returned: all of it. --------------------------------------

#[test]
fn worker_killed_after_the_call_returned_keeps_the_whole_change() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let task_id = fixture.task.task_id;
    let root = fixture.steps[0].workflow_step_id;

    let claimer = Worker::connect(&db).start(move |conn| claim_one(conn, task_id));
    let pid = claimer.pid;
    let (claimed, claimer_conn) = claimer.handle.join().expect("claimer thread");
    let claimed = claimed.expect("claim");
    terminate(&mut conn, pid);
    drop(claimer_conn);
    assert_eq!(claimed.len(), 1);
    let after = TaskRecord::read(&mut conn, task_id);
    assert!(after.is_claimed_once(root), "{after:?}");
    assert_eq!(
        after.current(root).map(|current| current.id),
        Some(claimed[0].claim_id)
    );
    assert_eq!(
        after.step(root).claimed_until,
        Some(claimed[0].claimed_until)
    );

    let claim = claimed[0].claim();
    let results = json!({"answer": 42});
    let sent = results.clone();
    let completer = Worker::connect(&db).start(move |conn| complete_step(conn, claim, &sent));
    let pid = completer.pid;
    let (completed, completer_conn) = completer.handle.join().expect("completer thread");
    completed.expect("complete");
    terminate(&mut conn, pid);
    drop(completer_conn);
    let after = TaskRecord::read(&mut conn, task_id);
    assert!(after.is_completed(root, &results), "{after:?}");
}

// 3. Killed at a random moment: all or nothing. ---------------------------------------

const ROUNDS: usize = 30;

#[test]
fn worker_killed_at_a_random_moment_of_a_claim_leaves_all_or_none_of_it() {
    let db = database_with_pause_trigger();
    let mut conn = db.connection();
    let mut rng = Rng::seeded();
    let (mut claimed, mut untouched, mut returned) = (0, 0, 0);
    for _ in 0..ROUNDS {
        let fixture = support::task_with_steps(&mut conn, 1);
        let task_id = fixture.task.task_id;
        let step_id = fixture.steps[0].workflow_step_id;
        let before = TaskRecord::read(&mut conn, task_id);
        let pause = Duration::from_millis(rng.up_to(50));
        let kill_after = Duration::from_millis(rng.up_to(60));

        let worker =
            Worker::pausing(&db, "in_progress", pause).start(move |conn| claim_one(conn, task_id));
        thread::sleep(kill_after);
        terminate(&mut conn, worker.pid);
        let outcome = worker.outcome();

        let after = TaskRecord::read(&mut conn, task_id);
        if after.is_claimed_once(step_id) {
            claimed += 1;
        } else {
            assert_eq!(
                after, before,
                "neither claimed nor untouched (pause {pause:?}, kill after {kill_after:?})"
            );
            untouched += 1;
        }
        if let Ok(steps) = outcome {
            returned += 1;
            assert_eq!(steps.len(), 1);
            assert!(after.is_claimed_once(step_id), "returned but not claimed");
        }
    }
    println!(
        "claim killed at random: {claimed} fully claimed, {untouched} untouched \
         ({returned} returned before the kill)"
    );
}

#[test]
fn worker_killed_at_a_random_moment_of_a_complete_leaves_all_or_none_of_it() {
    let db = database_with_pause_trigger();
    let mut conn = db.connection();
    let mut rng = Rng::seeded();
    let results = json!({"answer": 42});
    let (mut completed, mut untouched, mut returned) = (0, 0, 0);
    for _ in 0..ROUNDS {
        let fixture = support::task_with_steps(&mut conn, 1);
        let task_id = fixture.task.task_id;
        let step_id = fixture.steps[0].workflow_step_id;
        let claim = claim_one(&mut conn, task_id).expect("claim")[0].claim();
        let before = TaskRecord::read(&mut conn, task_id);
        let pause = Duration::from_millis(rng.up_to(50));
        let kill_after = Duration::from_millis(rng.up_to(60));

        let sent = results.clone();
        let worker = Worker::pausing(&db, "complete", pause)
            .start(move |conn| complete_step(conn, claim, &sent));
        thread::sleep(kill_after);
        terminate(&mut conn, worker.pid);
        let outcome = worker.outcome();

        let after = TaskRecord::read(&mut conn, task_id);
        if after.is_completed(step_id, &results) {
            completed += 1;
        } else {
            assert_eq!(
                after, before,
                "neither completed nor untouched (pause {pause:?}, kill after {kill_after:?})"
            );
            untouched += 1;
        }
        if outcome.is_ok() {
            returned += 1;
            assert!(
                after.is_completed(step_id, &results),
                "returned but not complete"
            );
        }
    }
    println!(
        "complete killed at random: {completed} fully complete, {untouched} still claimed \
         ({returned} returned before the kill)"
    );
}

// 4. Leases. ---------------------------------------------------------------------------

#[test]
fn expired_lease_frees_the_step_and_the_old_claims_late_result_is_refused() {
    let db = TestDatabase::new();
    let mut first_worker = db.connection();
    let mut second_worker = db.connection();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;
    let step_id = fixture.steps[0].workflow_step_id;

    let first = claim_ready_steps(
        &mut first_worker,
        &ClaimRequest::for_tasks(&[task_id], 1, Duration::from_secs(1)),
    )
    .expect("first claim")
    .remove(0);
    assert_eq!(first.attempt, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::utc_now(&mut conn) <= first.claimed_until {
        assert!(Instant::now() < deadline, "the lease never passed");
        thread::sleep(Duration::from_millis(50));
    }

    let expired = TaskRecord::read(&mut conn, task_id);
    let late = complete_step(&mut first_worker, first.claim(), &json!({"late": 1})).unwrap_err();
    assert!(
        matches!(
            late,
            Error::Refused(Refusal::ClaimExpired { workflow_step_id, claim_id, claimed_until })
                if workflow_step_id == step_id && claim_id == first.claim_id
                    && claimed_until == first.claimed_until
        ),
        "{late:?}"
    );
    assert_eq!(
        TaskRecord::read(&mut conn, task_id),
        expired,
        "a refusal wrote something"
    );

    let released = release_expired_claims(&mut conn, None).expect("release");
    assert_eq!(released, [step_id]);
    let after = TaskRecord::read(&mut conn, task_id);
    assert_eq!(
        after.history(step_id),
        [StepState::InProgress, StepState::Error]
    );
    assert!(!after.step(step_id).in_process);
    assert_eq!(after.step(step_id).claimed_until, None);
    // The failure backoff holds the step back for a moment.
    assert!(claim_one(&mut second_worker, task_id)
        .expect("claim")
        .is_empty());

    backoff_passed(&mut conn, step_id, 60.0);
    let second = claim_one(&mut second_worker, task_id)
        .expect("second claim")
        .remove(0);
    assert_eq!(second.workflow_step_id, step_id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.claim_id, first.claim_id);

    let lost = complete_step(&mut first_worker, first.claim(), &json!({"late": 2})).unwrap_err();
    assert!(
        matches!(
            lost,
            Error::Refused(Refusal::ClaimLost { workflow_step_id, claim_id, state: StepState::InProgress })
                if workflow_step_id == step_id && claim_id == first.claim_id
        ),
        "{lost:?}"
    );
    let results = json!({"on_time": true});
    complete_step(&mut second_worker, second.claim(), &results).expect("second complete");
    let after = TaskRecord::read(&mut conn, task_id);
    assert_eq!(
        after.history(step_id),
        [
            StepState::InProgress,
            StepState::Error,
            StepState::Pending,
            StepState::InProgress,
            StepState::Complete
        ]
    );
    let step = after.step(step_id);
    assert_eq!(step.results.as_ref(), Some(&results));
    assert_eq!(step.attempts, Some(2));
    assert!(step.processed && !step.in_process);
}

#[test]
fn crashed_worker_holds_its_step_until_the_lease_expires_then_release_frees_it() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let task_id = fixture.task.task_id;
    let step_id = fixture.steps[0].workflow_step_id;

    let worker = Worker::connect(&db).start(move |conn| claim_one(conn, task_id));
    let pid = worker.pid;
    let (claimed, worker_conn) = worker.handle.join().expect("worker thread");
    let claimed = claimed.expect("claim").remove(0);
    // The worker crashes while it holds the claim.
    terminate(&mut conn, pid);
    drop(worker_conn);

    let held = TaskRecord::read(&mut conn, task_id);
    assert!(held.is_claimed_once(step_id), "{held:?}");
    assert_eq!(
        held.step(step_id).claimed_until,
        Some(claimed.claimed_until)
    );
    assert_eq!(
        release_expired_claims(&mut conn, None).expect("release"),
        Vec::<i64>::new()
    );
    assert!(claim_one(&mut conn, task_id).expect("claim").is_empty());
    assert_eq!(TaskRecord::read(&mut conn, task_id), held);

    let ended = sql_query(LEASE_PASSED)
        .bind::<BigInt, _>(step_id)
        .execute(&mut conn)
        .expect("end the lease");
    assert_eq!(ended, 1);
    assert_eq!(
        release_expired_claims(&mut conn, None).expect("release"),
        [step_id]
    );
    let released = TaskRecord::read(&mut conn, task_id);
    assert_eq!(
        released.history(step_id),
        [StepState::InProgress, StepState::Error]
    );
    let error = released.current(step_id).expect("error transition");
    assert_eq!(
        error
            .metadata
            .as_ref()
            .and_then(|metadata| metadata["error"].get("claim_id")),
        Some(&json!(claimed.claim_id))
    );
    let step = released.step(step_id);
    assert!(!step.in_process && !step.processed);
    assert_eq!(step.claimed_until, None);
    assert_eq!(step.attempts, Some(1));

    backoff_passed(&mut conn, step_id, 60.0);
    let again = claim_one(&mut conn, task_id).expect("claim again");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(
        complete_step(&mut conn, claimed.claim(), &json!({}))
            .unwrap_err()
            .to_string(),
        Error::Refused(Refusal::ClaimLost {
            workflow_step_id: step_id,
            claim_id: claimed.claim_id,
            state: StepState::InProgress,
        })
        .to_string()
    );
}
