//! Random task histories for property tests: random tasks (random DAGs, step
//! and task transitions, attempts, retry limits, backoff, and times on either
//! side of the backoff gates), written into a test database together with
//! what the reference (`tests/oracle`) needs to know about them, and a
//! session that runs each case in a rolled-back transaction while taking
//! turns at PostgreSQL's plan cache modes and at session time zones far from
//! UTC.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde::Serialize;
use tasker_diesel::schema::tasker_workflow_steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{StepReadinessStatus, StepState, TaskExecutionContext, TaskState};

use crate::oracle::{StepInput, TaskInput, World};
use crate::support;

/// At most this many tasks in a case.
pub const MAX_TASKS: usize = 3;

/// Session time zones far ahead of UTC and far behind it, which the rules
/// must ignore.
pub const TIME_ZONES: [&str; 4] = [
    "UTC",
    "America/Los_Angeles",
    "Pacific/Kiritimati",
    "Asia/Kolkata",
];

const PLAN_CACHE_MODES: [&str; 3] = ["auto", "force_generic_plan", "force_custom_plan"];

// Generated cases -------------------------------------------------------------

/// A point in time, relative to the case's `now`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// `now` plus this many seconds.
    Offset(i64),
    /// This many microseconds after the gate it is used for: the time at
    /// which the gate opens exactly at `now` (0), just before or just after.
    Gate(i64),
}

impl fmt::Debug for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            At::Offset(seconds) => write!(f, "now{seconds:+}s"),
            At::Gate(0) => f.write_str("gate=now"),
            At::Gate(micros) => write!(f, "gate=now{micros:+}us"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct StepSpec {
    pub retryable: bool,
    pub retry_limit: Option<i32>,
    pub attempts: Option<i32>,
    pub processed: bool,
    pub in_process: bool,
    pub backoff_request_seconds: Option<i32>,
    /// `Gate` puts `last_attempted_at + backoff_request_seconds` near `now`.
    pub last_attempted: Option<At>,
    /// Transitions, oldest first; the last one is current. `Gate` puts the
    /// failure backoff's end near `now` (were the transition to `error`).
    pub history: Vec<(StepState, At)>,
}

#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub steps: Vec<StepSpec>,
    /// `(parent, child)` step indexes, parent < child, so acyclic.
    pub edges: Vec<(usize, usize)>,
    /// Task transitions, oldest first.
    pub history: Vec<TaskState>,
}

#[derive(Clone)]
pub struct Case {
    pub tasks: Vec<TaskSpec>,
}

fn opt<T: fmt::Debug>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "NULL".to_owned(), |value| format!("{value:?}"))
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        for (t, task) in self.tasks.iter().enumerate() {
            writeln!(f, "  task t{t}: history {:?}", task.history)?;
            let edges: Vec<String> = task
                .edges
                .iter()
                .map(|(parent, child)| format!("s{parent}->s{child}"))
                .collect();
            writeln!(f, "    edges: [{}]", edges.join(", "))?;
            for (s, step) in task.steps.iter().enumerate() {
                let history: Vec<String> = step
                    .history
                    .iter()
                    .map(|(state, at)| format!("{state}@{at:?}"))
                    .collect();
                writeln!(
                    f,
                    "    t{t}.s{s}: attempts={} retry_limit={} retryable={} processed={} \
                     in_process={} backoff_request_seconds={} last_attempted_at={} history=[{}]",
                    opt(&step.attempts),
                    opt(&step.retry_limit),
                    step.retryable,
                    step.processed,
                    step.in_process,
                    opt(&step.backoff_request_seconds),
                    opt(&step.last_attempted),
                    history.join(", "),
                )?;
            }
        }
        Ok(())
    }
}

pub fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        3 => (-70i64..=10).prop_map(At::Offset),
        2 => prop::sample::select(vec![-1_000_000i64, -1, 0, 0, 1, 1_000_000]).prop_map(At::Gate),
    ]
}

/// Any state, mostly those that readiness distinguishes.
pub fn step_state() -> impl Strategy<Value = StepState> {
    prop_oneof![
        3 => Just(StepState::Pending),
        1 => Just(StepState::InProgress),
        3 => Just(StepState::Complete),
        3 => Just(StepState::Error),
        1 => Just(StepState::Cancelled),
        2 => Just(StepState::ResolvedManually),
    ]
}

/// A step; attempts go past 5, where the failure backoff's exponent is
/// capped.
pub fn step_spec() -> impl Strategy<Value = StepSpec> {
    (
        (
            prop::bool::weighted(0.8),
            prop::option::weighted(0.8, 0i32..=5),
            prop::option::weighted(0.85, prop_oneof![3 => 0i32..=2, 1 => 3i32..=8]),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.15),
        ),
        prop::option::weighted(0.6, 0i32..=40),
        prop::option::weighted(0.7, at()),
        prop::collection::vec((step_state(), at()), 0..=3),
    )
        .prop_map(
            |(
                (retryable, retry_limit, attempts, processed, in_process),
                backoff_request_seconds,
                last_attempted,
                history,
            )| StepSpec {
                retryable,
                retry_limit,
                attempts,
                processed,
                in_process,
                backoff_request_seconds,
                last_attempted,
                history,
            },
        )
}

/// A task with up to `max_steps` steps; one in ten has none at all.
pub fn task_spec(max_steps: usize) -> impl Strategy<Value = TaskSpec> {
    (
        prop_oneof![1 => Just(0usize), 9 => 1..=max_steps],
        0.0..=1.0f64,
    )
        .prop_flat_map(|(step_count, density)| {
            (
                prop::collection::vec(step_spec(), step_count),
                prop::collection::vec(
                    prop::bool::weighted(density),
                    step_count * step_count.saturating_sub(1) / 2,
                ),
                prop::collection::vec(prop::sample::select(TaskState::ALL.to_vec()), 0..=2),
            )
        })
        .prop_map(|(steps, edge_flags, history)| {
            let pairs = (0..steps.len())
                .flat_map(|parent| (parent + 1..steps.len()).map(move |child| (parent, child)));
            let edges = pairs
                .zip(edge_flags)
                .filter_map(|(pair, present)| present.then_some(pair))
                .collect();
            TaskSpec {
                steps,
                edges,
                history,
            }
        })
}

/// One to `MAX_TASKS` tasks of up to `max_steps` steps each.
pub fn case(max_steps: usize) -> impl Strategy<Value = Case> {
    prop::collection::vec(task_spec(max_steps), 1..=MAX_TASKS).prop_map(|tasks| Case { tasks })
}

// Writing a case ----------------------------------------------------------------

/// Names for the rows of a case: `t0.s3 (#1234)` for each step id and
/// `t0 (#56)` for each task id. Ids it does not know are shown as `#1234`.
#[derive(Default)]
pub struct Labels {
    pub steps: BTreeMap<i64, String>,
    pub tasks: BTreeMap<i64, String>,
}

/// A case written to the database, with what the reference needs to know.
pub struct Built {
    pub world: World,
    pub task_ids: Vec<i64>,
    pub step_ids: Vec<i64>,
    /// The session's time zone and plan cache mode.
    pub settings: String,
    pub labels: Labels,
}

/// `min(2^exponent, 30)` seconds, for placing times on a failure gate.
fn failure_gate_seconds(exponent: i32) -> i64 {
    (1i64 << exponent.min(5)).min(30)
}

pub fn build(conn: &mut PgConnection, case: &Case) -> Built {
    use tasker_workflow_steps::dsl as ws;

    let now = support::utc_now(conn);
    let mut built = Built {
        world: World {
            tasks: Vec::new(),
            steps: Vec::new(),
            edges: Vec::new(),
            now,
        },
        task_ids: Vec::new(),
        step_ids: Vec::new(),
        settings: diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "'TimeZone ' || current_setting('TimeZone') \
             || ', plan_cache_mode ' || current_setting('plan_cache_mode')",
        ))
        .get_result(conn)
        .expect("session settings"),
        labels: Labels::default(),
    };
    for (t, task_spec) in case.tasks.iter().enumerate() {
        let fixture = support::task_with_steps(conn, task_spec.steps.len());
        let task_id = fixture.task.task_id;
        let ids: Vec<i64> = fixture
            .steps
            .iter()
            .map(|step| step.workflow_step_id)
            .collect();
        for (s, (spec, step)) in task_spec.steps.iter().zip(&fixture.steps).enumerate() {
            let id = step.workflow_step_id;
            let last_attempted_at = spec.last_attempted.map(|at| match at {
                At::Offset(seconds) => now + Duration::seconds(seconds),
                At::Gate(micros) => {
                    now - Duration::seconds(i64::from(spec.backoff_request_seconds.unwrap_or(0)))
                        + Duration::microseconds(micros)
                }
            });
            diesel::update(ws::tasker_workflow_steps.filter(ws::workflow_step_id.eq(id)))
                .set((
                    ws::retryable.eq(spec.retryable),
                    ws::retry_limit.eq(spec.retry_limit),
                    ws::attempts.eq(spec.attempts),
                    ws::processed.eq(spec.processed),
                    ws::in_process.eq(spec.in_process),
                    ws::backoff_request_seconds.eq(spec.backoff_request_seconds),
                    ws::last_attempted_at.eq(last_attempted_at),
                ))
                .execute(conn)
                .expect("update step");
            let mut current_transition = None;
            for &(state, at) in &spec.history {
                let created_at = match at {
                    At::Offset(seconds) => now + Duration::seconds(seconds),
                    At::Gate(micros) => {
                        now - Duration::seconds(failure_gate_seconds(spec.attempts.unwrap_or(1)))
                            + Duration::microseconds(micros)
                    }
                };
                support::transition_step(conn, id, state);
                support::current_transition_at(conn, id, created_at);
                current_transition = Some((state, created_at));
            }
            built.world.steps.push(StepInput {
                workflow_step_id: id,
                task_id,
                named_step_id: step.named_step_id,
                name: fixture.named_steps[s].name.clone(),
                retryable: spec.retryable,
                retry_limit: spec.retry_limit,
                attempts: spec.attempts,
                processed: spec.processed,
                in_process: spec.in_process,
                backoff_request_seconds: spec.backoff_request_seconds,
                last_attempted_at,
                current_transition,
            });
            built.step_ids.push(id);
            built.labels.steps.insert(id, format!("t{t}.s{s} (#{id})"));
        }
        for &(parent, child) in &task_spec.edges {
            support::add_edge(conn, ids[parent], ids[child]).expect("add edge");
            built.world.edges.push((ids[parent], ids[child]));
        }
        for &state in &task_spec.history {
            support::transition_task(conn, task_id, state);
        }
        built.world.tasks.push(TaskInput {
            task_id,
            named_task_id: fixture.task.named_task_id,
            current_state: task_spec.history.last().copied(),
        });
        built.task_ids.push(task_id);
        built
            .labels
            .tasks
            .insert(task_id, format!("t{t} (#{task_id})"));
    }
    built
}

// Running cases -----------------------------------------------------------------

/// One test database and a connection to it that is kept from case to case,
/// so the statements Diesel keeps prepared reach PostgreSQL's generic plans.
pub struct Session {
    db: TestDatabase,
    conn: RefCell<Option<PgConnection>>,
    cases: Cell<usize>,
}

impl Session {
    /// A session on a new test database.
    pub fn new() -> Self {
        Session::on(TestDatabase::new())
    }

    /// A session on `db`.
    pub fn on(db: TestDatabase) -> Self {
        Session {
            db,
            conn: RefCell::new(None),
            cases: Cell::new(0),
        }
    }

    /// Runs `body` inside a transaction that is rolled back. The plan cache
    /// mode takes turns (automatic, always generic, always custom), and so
    /// does the session's time zone, which the rules must ignore. A case that
    /// panics drops its connection, and the next case opens one.
    pub fn rolled_back<T>(&self, body: impl FnOnce(&mut PgConnection) -> T) -> T {
        let mut conn = self.conn.take().unwrap_or_else(|| self.db.connection());
        let case = self.cases.get();
        self.cases.set(case + 1);
        let plan_cache_mode = PLAN_CACHE_MODES[case % PLAN_CACHE_MODES.len()];
        let time_zone = TIME_ZONES[case / PLAN_CACHE_MODES.len() % TIME_ZONES.len()];
        let mut output = None;
        let outcome = conn.transaction::<(), diesel::result::Error, _>(|conn| {
            diesel::sql_query(format!("SET LOCAL plan_cache_mode = {plan_cache_mode}"))
                .execute(conn)?;
            diesel::sql_query(format!("SET LOCAL TimeZone = '{time_zone}'")).execute(conn)?;
            output = Some(body(conn));
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert!(
            matches!(outcome, Err(diesel::result::Error::RollbackTransaction)),
            "rollback: {outcome:?}"
        );
        self.conn.replace(Some(conn));
        output.expect("the transaction ran")
    }
}

/// Runs `check` on `cases` generated cases, panicking with the minimal
/// failing case and the reason when one fails.
pub fn run_property<S: Strategy>(
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = ProptestConfig {
        cases,
        // No regression files: the test writes nothing into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(error) = runner.run(&strategy, check) {
        panic!("{error}");
    }
}

/// `Ok` when there are no problems, else a failure that shows them with the
/// case's `now` and session settings.
pub fn failure(built: &Built, problems: &[String]) -> Result<(), TestCaseError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(TestCaseError::fail(format!(
        "\nnow = {} (UTC; session: {})\n{}",
        built.world.now,
        built.settings,
        problems.join("")
    )))
}

// Comparing rows ----------------------------------------------------------------

/// A row that can be named after the case's steps or tasks.
pub trait Row: Serialize + PartialEq + fmt::Debug {
    fn label(&self, labels: &Labels) -> String;
}

impl Row for StepReadinessStatus {
    fn label(&self, labels: &Labels) -> String {
        labels
            .steps
            .get(&self.workflow_step_id)
            .cloned()
            .unwrap_or_else(|| format!("#{}", self.workflow_step_id))
    }
}

impl Row for TaskExecutionContext {
    fn label(&self, labels: &Labels) -> String {
        labels
            .tasks
            .get(&self.task_id)
            .cloned()
            .unwrap_or_else(|| format!("#{}", self.task_id))
    }
}

/// A JSON value of a row, with timestamps also shown relative to `now`.
pub fn show(value: &serde_json::Value, now: NaiveDateTime) -> String {
    if let Some(text) = value.as_str() {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
            let micros = (at - now).num_microseconds().unwrap_or(i64::MAX);
            return format!("{text} (now{:+}s)", micros as f64 / 1e6);
        }
    }
    value.to_string()
}

/// `Ok` when `actual == expected`; otherwise a description of the difference,
/// field by field for the rows both sides have. `sides` names the two sides
/// (such as `["SQL", "expected"]`).
pub fn compare<T: Row>(
    what: &str,
    sides: [&str; 2],
    labels: &Labels,
    now: NaiveDateTime,
    actual: &[T],
    expected: &[T],
) -> Result<(), String> {
    if actual == expected {
        return Ok(());
    }
    let [ours, theirs] = sides;
    let mut out = format!("{what}: {ours} and {theirs} rows differ\n");
    let actual_keys: Vec<String> = actual.iter().map(|row| row.label(labels)).collect();
    let expected_keys: Vec<String> = expected.iter().map(|row| row.label(labels)).collect();
    if actual_keys != expected_keys {
        let _ = writeln!(out, "  {ours} rows: {actual_keys:?}");
        let _ = writeln!(out, "  {theirs} rows: {expected_keys:?}");
    }
    for row in actual {
        let label = row.label(labels);
        let Some(wanted) = expected.iter().find(|wanted| wanted.label(labels) == label) else {
            continue;
        };
        if row == wanted {
            continue;
        }
        let got = serde_json::to_value(row).expect("row as JSON");
        let want = serde_json::to_value(wanted).expect("row as JSON");
        let (Some(got), Some(want)) = (got.as_object(), want.as_object()) else {
            let _ = writeln!(out, "  {label}: {ours} {row:?}, {theirs} {wanted:?}");
            continue;
        };
        for (field, want_value) in want {
            let got_value = &got[field];
            if got_value != want_value {
                let _ = writeln!(
                    out,
                    "  {label}: {field}: {ours} {}, {theirs} {}",
                    show(got_value, now),
                    show(want_value, now)
                );
            }
        }
        let fields: Vec<String> = want
            .iter()
            .map(|(field, value)| format!("{field}: {}", show(value, now)))
            .collect();
        let _ = writeln!(out, "    {theirs} row: {{ {} }}", fields.join(", "));
    }
    Err(out)
}
