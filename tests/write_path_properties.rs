//! Random sequences of write-path operations on random DAG workflows keep
//! every invariant of the write path (README "Semantics"), checked after
//! each operation.
//!
//! A case builds 1-3 tasks with `create_task` from random templates (random
//! edges to earlier steps, retry limits 0-3, retryable or not, some skippable
//! steps bypassed), then runs a random sequence of claims, reports under old
//! or current claims, lease extensions and expiries, releases, time passing,
//! manual resolutions, cancels, finalizations and operator resumes. After
//! each operation the test checks what the operation must have done (or, for
//! a refusal, that it was the refusal the state implies and wrote nothing),
//! and then the invariants of every step and task, among them that the
//! readiness state kept by triggers has no drift and gives the readiness
//! recomputed from the history (`support::check_maintained_readiness`).
//!
//! One test database and one autocommit connection: each call is its own
//! transaction with its own `now()`, as in production. Which steps a claim
//! must take and what finalizing must do comes from the Rust reference of the
//! readiness rules (`tests/oracle`), evaluated at every instant the call may
//! have seen as `now()` (between two `clock_timestamp()` reads around it), so
//! a backoff ending during the call cannot make the test flaky. Time passes
//! by moving every stored timestamp back by whole minutes, and leases are odd
//! multiples of 30 s, so a lease is always at least 30 s from its end.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use std::rc::Rc;
use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};
use tasker_diesel::functions;
use tasker_diesel::models::{Task, TaskTransition, WorkflowStep, WorkflowStepTransition};
use tasker_diesel::schema::{tasker_workflow_step_edges, tasker_workflow_steps};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, create_task, extend_step_claim, fail_step,
    finalize_task, release_expired_claims, resolve_step_manually, transition_task, Claim,
    ClaimRequest, ClaimedStep, StepTemplate, TaskRequest, TaskTemplate, TransitionOptions,
};
use tasker_diesel::{
    Error, ExecutionStatus, Refusal, StepReadinessStatus, StepState, TaskExecutionContext,
    TaskState,
};

mod oracle;
mod support;

use oracle::{step_move_allowed, task_move_allowed, StepInput, TaskInput, World};

const CASES: u32 = 28;
const MAX_TASKS: usize = 3;
const MAX_STEPS: usize = 8;
const MAX_OPERATIONS: usize = 60;
/// Leases and extensions, in seconds: odd multiples of 30, so that after
/// whole minutes have passed a lease is still 30 s away from its end.
const LEASES: [u32; 4] = [30, 90, 150, 3630];
/// How far "letting time pass" moves every timestamp back: whole minutes,
/// longer than any failure backoff (at most 30 s), and never onto a lease's end.
const TIME_PASSING: [i32; 3] = [60, 120, 600];
/// `retry_after` of `fail_step`, in milliseconds (1500 rounds up to 2 s).
const RETRY_AFTER_MS: [u64; 5] = [0, 1_500, 5_000, 45_000, 90_000];
/// How far `ExpireLease` puts a lease's end into the past.
const EXPIRED_SECONDS_AGO: i64 = 30;

// Generated cases ------------------------------------------------------------------

#[derive(Clone, Debug)]
struct StepSpec {
    retry_limit: i32,
    retryable: bool,
    skippable: bool,
    /// Bypassed at creation (only skippable steps are).
    bypassed: bool,
    /// Indexes of earlier steps of the same task.
    parents: Vec<usize>,
}

/// Which earlier claim a report uses: one whose `in_progress` transition is
/// still the step's most recent (when there is one), or any claim so far,
/// most of them stale. Indexes are taken modulo the number of candidates.
#[derive(Clone, Copy, Debug)]
enum ClaimPick {
    Current(usize),
    Any(usize),
}

/// One operation; task and step indexes are taken modulo the case's counts.
#[derive(Clone, Debug)]
enum Op {
    /// `any_task` when `tasks` is `None`, else `for_tasks`.
    Claim {
        tasks: Option<Vec<usize>>,
        max_steps: u32,
        lease: u32,
    },
    Complete(ClaimPick),
    /// `retry_after` in milliseconds.
    Fail(ClaimPick, Option<u64>),
    /// The new lease in seconds.
    Extend(ClaimPick, u32),
    /// Moves the lease of the claim's step (when in process) into the past.
    ExpireLease(ClaimPick),
    ReleaseExpired(Option<u32>),
    /// Moves every stored timestamp back by this many seconds.
    PassTime(i32),
    Resolve(usize),
    Cancel(usize),
    Finalize(usize),
    /// `transition_task(.., Pending, ..)`, expecting `Error` or not.
    Resume {
        task: usize,
        expect_error: bool,
    },
}

#[derive(Clone, Debug)]
struct Case {
    tasks: Vec<Vec<StepSpec>>,
    ops: Vec<Op>,
}

fn step_spec(index: usize, density: f64) -> impl Strategy<Value = StepSpec> {
    (
        1i32..=3,
        prop::bool::weighted(0.75),
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::collection::vec(prop::bool::weighted(density), index),
    )
        .prop_map(
            |(retry_limit, retryable, skippable, bypass, parent_flags)| StepSpec {
                retry_limit,
                retryable,
                skippable,
                bypassed: skippable && bypass,
                parents: parent_flags
                    .iter()
                    .enumerate()
                    .filter_map(|(parent, &present)| present.then_some(parent))
                    .collect(),
            },
        )
}

fn task_spec() -> impl Strategy<Value = Vec<StepSpec>> {
    (1..=MAX_STEPS, 0.0..=0.6f64).prop_flat_map(|(step_count, density)| {
        (0..step_count)
            .map(|index| step_spec(index, density))
            .collect::<Vec<_>>()
    })
}

fn pick() -> impl Strategy<Value = usize> {
    0usize..24
}

fn claim_pick() -> impl Strategy<Value = ClaimPick> {
    prop_oneof![
        8 => pick().prop_map(ClaimPick::Current),
        1 => pick().prop_map(ClaimPick::Any),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => (
            prop::option::weighted(0.35, prop::collection::vec(pick(), 0..=3)),
            1u32..=4,
            prop::sample::select(LEASES.to_vec()),
        )
            .prop_map(|(tasks, max_steps, lease)| Op::Claim {
                tasks,
                max_steps,
                lease
            }),
        13 => claim_pick().prop_map(Op::Complete),
        7 => (
            claim_pick(),
            prop::option::weighted(0.5, prop::sample::select(RETRY_AFTER_MS.to_vec())),
        )
            .prop_map(|(claim, retry_after)| Op::Fail(claim, retry_after)),
        3 => (claim_pick(), prop::sample::select(LEASES.to_vec()))
            .prop_map(|(claim, lease)| Op::Extend(claim, lease)),
        2 => claim_pick().prop_map(Op::ExpireLease),
        3 => prop::option::of(1u32..=3).prop_map(Op::ReleaseExpired),
        7 => prop::sample::select(TIME_PASSING.to_vec()).prop_map(Op::PassTime),
        2 => pick().prop_map(Op::Resolve),
        1 => pick().prop_map(Op::Cancel),
        5 => pick().prop_map(Op::Finalize),
        2 => (pick(), any::<bool>())
            .prop_map(|(task, expect_error)| Op::Resume { task, expect_error }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(task_spec(), 1..=MAX_TASKS),
        prop::collection::vec(op(), 1..=MAX_OPERATIONS),
    )
        .prop_map(|(tasks, ops)| Case { tasks, ops })
}

// What is stored -------------------------------------------------------------------

/// A transition row of either history.
trait Move: Clone + PartialEq + Debug {
    type State: Copy + Eq + Debug + Default + fmt::Display;
    fn id(&self) -> i64;
    fn to(&self) -> Self::State;
    fn from(&self) -> Option<Self::State>;
    fn sort_key(&self) -> i32;
    fn most_recent(&self) -> bool;
    fn created_at(&self) -> NaiveDateTime;
    fn metadata(&self) -> Option<&Value>;
}

impl Move for WorkflowStepTransition {
    type State = StepState;
    fn id(&self) -> i64 {
        self.id
    }
    fn to(&self) -> StepState {
        self.to_state
    }
    fn from(&self) -> Option<StepState> {
        self.from_state
    }
    fn sort_key(&self) -> i32 {
        self.sort_key
    }
    fn most_recent(&self) -> bool {
        self.most_recent
    }
    fn created_at(&self) -> NaiveDateTime {
        self.created_at
    }
    fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }
}

impl Move for TaskTransition {
    type State = TaskState;
    fn id(&self) -> i64 {
        self.id
    }
    fn to(&self) -> TaskState {
        self.to_state
    }
    fn from(&self) -> Option<TaskState> {
        self.from_state
    }
    fn sort_key(&self) -> i32 {
        self.sort_key
    }
    fn most_recent(&self) -> bool {
        self.most_recent
    }
    fn created_at(&self) -> NaiveDateTime {
        self.created_at
    }
    fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }
}

/// Whether two versions of a transition agree on everything no later write
/// may change (`most_recent` and `updated_at` change when the next transition
/// is appended).
fn same_fixed_part<M: Move>(old: &M, new: &M) -> bool {
    old.id() == new.id()
        && old.to() == new.to()
        && old.from() == new.from()
        && old.sort_key() == new.sort_key()
        && old.metadata() == new.metadata()
        && old.created_at() == new.created_at()
}

/// The current state: the most recent transition's, else pending.
fn current<M: Move>(history: &[M]) -> M::State {
    history
        .iter()
        .find(|transition| transition.most_recent())
        .map_or_else(M::State::default, Move::to)
}

/// Every row of the tables the write path touches, by entity.
struct View {
    raw: support::Snapshot,
    steps: BTreeMap<i64, WorkflowStep>,
    /// Ordered by `sort_key`.
    step_history: BTreeMap<i64, Vec<WorkflowStepTransition>>,
    tasks: BTreeMap<i64, Task>,
    task_history: BTreeMap<i64, Vec<TaskTransition>>,
}

impl View {
    fn load(conn: &mut PgConnection) -> View {
        let raw = support::snapshot(conn);
        let steps: BTreeMap<i64, WorkflowStep> = raw
            .steps
            .iter()
            .map(|step| (step.workflow_step_id, step.clone()))
            .collect();
        let mut step_history: BTreeMap<i64, Vec<WorkflowStepTransition>> =
            steps.keys().map(|&id| (id, Vec::new())).collect();
        for transition in &raw.step_transitions {
            step_history
                .entry(transition.workflow_step_id)
                .or_default()
                .push(transition.clone());
        }
        let tasks: BTreeMap<i64, Task> = raw
            .tasks
            .iter()
            .map(|task| (task.task_id, task.clone()))
            .collect();
        let mut task_history: BTreeMap<i64, Vec<TaskTransition>> =
            tasks.keys().map(|&id| (id, Vec::new())).collect();
        for transition in &raw.task_transitions {
            task_history
                .entry(transition.task_id)
                .or_default()
                .push(transition.clone());
        }
        for history in step_history.values_mut() {
            history.sort_by_key(|transition| transition.sort_key);
        }
        for history in task_history.values_mut() {
            history.sort_by_key(|transition| transition.sort_key);
        }
        View {
            raw,
            steps,
            step_history,
            tasks,
            task_history,
        }
    }

    fn step_state(&self, step_id: i64) -> StepState {
        current(&self.step_history[&step_id])
    }

    fn task_state(&self, task_id: i64) -> TaskState {
        current(&self.task_history[&task_id])
    }

    fn latest_step_transition(&self, step_id: i64) -> Option<&WorkflowStepTransition> {
        self.step_history[&step_id]
            .iter()
            .find(|transition| transition.most_recent)
    }
}

// Helpers ----------------------------------------------------------------------------

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

/// A call's result: its value, or the refusal; any other error fails the case.
fn outcome<T: Debug>(
    what: &str,
    result: tasker_diesel::Result<T>,
) -> Result<Result<T, Refusal>, TestCaseError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(Error::Refused(refusal)) => Ok(Err(refusal)),
        Err(other) => Err(fail(format!("{what}: unexpected error: {other}"))),
    }
}

/// `clock_timestamp()` in UTC: the moment of the read, not the transaction's.
fn clock(conn: &mut PgConnection) -> NaiveDateTime {
    diesel::select(diesel::dsl::sql::<Timestamp>(
        "clock_timestamp() AT TIME ZONE 'UTC'",
    ))
    .get_result(conn)
    .expect("clock_timestamp")
}

fn seconds(n: u32) -> StdDuration {
    StdDuration::from_secs(u64::from(n))
}

/// The instants a call made between the clock reads `before` and `after` may
/// have seen as `now()` that matter to readiness: `before` and every
/// `next_retry_at` in `(before, after]` (readiness only changes there).
fn candidate_times(
    rows: &[StepReadinessStatus],
    before: NaiveDateTime,
    after: NaiveDateTime,
) -> Vec<NaiveDateTime> {
    let mut times = vec![before];
    times.extend(
        rows.iter()
            .filter_map(|row| row.next_retry_at)
            .filter(|&at| at > before && at <= after),
    );
    times.sort_unstable();
    times.dedup();
    times
}

/// Each history is a walk of its state machine from `pending`: `from_state`
/// is the previous `to_state` (NULL first), every move allowed, `sort_key`
/// 1, 2, 3, ..., ids and times in the same order, and exactly one
/// `most_recent`, the last (none without rows).
fn check_walk<M: Move>(
    label: &str,
    history: &[M],
    allowed: fn(M::State, M::State) -> bool,
) -> Result<(), TestCaseError> {
    let mut state = M::State::default();
    let mut previous: Option<&M> = None;
    for (position, transition) in history.iter().enumerate() {
        let expected_from = previous.map(Move::to);
        prop_assert_eq!(
            transition.from(),
            expected_from,
            "{}: transition {} (sort_key {}) has from_state {:?} after {:?}",
            label,
            transition.id(),
            transition.sort_key(),
            transition.from(),
            expected_from
        );
        prop_assert!(
            allowed(state, transition.to()),
            "{}: illegal move {} -> {} (transition {})",
            label,
            state,
            transition.to(),
            transition.id()
        );
        prop_assert_eq!(
            transition.sort_key(),
            position as i32 + 1,
            "{}: sort_keys {:?}",
            label,
            history.iter().map(Move::sort_key).collect::<Vec<_>>()
        );
        prop_assert_eq!(
            transition.most_recent(),
            position + 1 == history.len(),
            "{}: most_recent flags {:?}",
            label,
            history.iter().map(Move::most_recent).collect::<Vec<_>>()
        );
        if let Some(previous) = previous {
            prop_assert!(
                transition.id() > previous.id() && transition.created_at() >= previous.created_at(),
                "{}: transition {} at {} follows transition {} at {}",
                label,
                transition.id(),
                transition.created_at(),
                previous.id(),
                previous.created_at()
            );
        }
        state = transition.to();
        previous = Some(transition);
    }
    Ok(())
}

/// `new` is `old` (up to the most recent flags and `updated_at`) followed by
/// transitions to `states`; returns those.
fn appended<'a, M: Move>(
    label: &str,
    old: &[M],
    new: &'a [M],
    states: &[M::State],
) -> Result<&'a [M], TestCaseError> {
    let old_states: Vec<M::State> = old.iter().map(Move::to).collect();
    let new_states: Vec<M::State> = new.iter().map(Move::to).collect();
    prop_assert_eq!(
        new.len(),
        old.len() + states.len(),
        "{}: history {:?} became {:?}, expected {:?} appended",
        label,
        old_states,
        new_states,
        states
    );
    for (before, after) in old.iter().zip(new) {
        prop_assert!(
            same_fixed_part(before, after),
            "{}: an old transition changed: {:?} became {:?}",
            label,
            before,
            after
        );
    }
    let added = &new[old.len()..];
    let added_states: Vec<M::State> = added.iter().map(Move::to).collect();
    prop_assert_eq!(
        &added_states[..],
        states,
        "{}: history {:?} became {:?}",
        label,
        old_states,
        new_states
    );
    Ok(added)
}

/// What `finalize_task` must do, from the task's context and readiness.
#[derive(Debug, Clone, PartialEq)]
enum Finalized {
    /// Returns the state, after appending these task transitions.
    State(TaskState, Vec<TaskState>),
    Refused(Refusal),
}

fn expected_finalize(
    task_id: i64,
    context: &TaskExecutionContext,
    rows: &[&StepReadinessStatus],
) -> Finalized {
    let status = context.status;
    // Finished otherwise: left as it is, whatever the steps' context says.
    if matches!(status, TaskState::Cancelled | TaskState::ResolvedManually) {
        return Finalized::State(status, Vec::new());
    }
    let walk = |path: Vec<TaskState>, result: TaskState| {
        let mut from = status;
        for &to in &path {
            if !task_move_allowed(from, to) {
                return Finalized::Refused(Refusal::IllegalTaskTransition { task_id, from, to });
            }
            from = to;
        }
        Finalized::State(result, path)
    };
    match context.execution_status {
        ExecutionStatus::AllComplete => match status {
            TaskState::Complete => Finalized::State(TaskState::Complete, Vec::new()),
            TaskState::Error => walk(
                vec![
                    TaskState::Pending,
                    TaskState::InProgress,
                    TaskState::Complete,
                ],
                TaskState::Complete,
            ),
            TaskState::Pending => walk(
                vec![TaskState::InProgress, TaskState::Complete],
                TaskState::Complete,
            ),
            _ => walk(vec![TaskState::Complete], TaskState::Complete),
        },
        ExecutionStatus::BlockedByFailures if status == TaskState::Error => {
            Finalized::State(TaskState::Error, Vec::new())
        }
        ExecutionStatus::BlockedByFailures
            if !rows
                .iter()
                .any(|row| row.current_state == StepState::Error && row.retry_eligible) =>
        {
            walk(vec![TaskState::Error], TaskState::Error)
        }
        execution_status => Finalized::Refused(Refusal::TaskNotFinished {
            task_id,
            execution_status,
        }),
    }
}

/// Whether a report under a claim must be accepted.
enum Verdict {
    Holds,
    Refused(Refusal),
    /// The lease ends between the clock reads around the call.
    HoldsOrRefused(Refusal),
}

// A run ------------------------------------------------------------------------------

/// One case being run: the ids it created and what it did so far.
struct Run<'c> {
    conn: &'c mut PgConnection,
    task_ids: Vec<i64>,
    /// Every step, task by task, in template order.
    step_ids: Vec<i64>,
    /// `t0.s3 #1234` by step id, `t0 #56` by task id.
    step_labels: BTreeMap<i64, String>,
    task_labels: BTreeMap<i64, String>,
    /// The step template name (`s3`) by step id.
    names: BTreeMap<i64, String>,
    edges: Vec<(i64, i64)>,
    /// Every claim handed out so far, oldest first.
    claims: Vec<Claim>,
    /// Every row as the last operation left them (the connection is the only
    /// writer, so also as the next one finds them).
    current: Rc<View>,
    /// What the operation being run loaded after its call.
    latest: Option<Rc<View>>,
    workflows: String,
    trace: Vec<String>,
}

impl<'c> Run<'c> {
    /// Empties the tables and creates the case's tasks.
    fn create(
        conn: &'c mut PgConnection,
        case: &Case,
        case_number: u64,
    ) -> Result<Run<'c>, TestCaseError> {
        // Claims from any task must only see this case's tasks.
        diesel::sql_query("TRUNCATE tasker_tasks CASCADE")
            .execute(conn)
            .expect("truncate tasks");
        let nothing = Rc::new(View::load(conn));
        let mut run = Run {
            conn,
            task_ids: Vec::new(),
            step_ids: Vec::new(),
            step_labels: BTreeMap::new(),
            task_labels: BTreeMap::new(),
            names: BTreeMap::new(),
            edges: Vec::new(),
            claims: Vec::new(),
            current: Rc::clone(&nothing),
            latest: None,
            workflows: String::new(),
            trace: Vec::new(),
        };
        let mut expected_edges = Vec::new();
        for (t, specs) in case.tasks.iter().enumerate() {
            let name = |s: usize| format!("s{s}");
            let template = specs.iter().enumerate().fold(
                TaskTemplate::new("write_path", format!("workflow_{t}"), "1.0.0"),
                |template, (s, spec)| {
                    template.step(
                        StepTemplate::new(name(s))
                            .retryable(spec.retryable)
                            .retry_limit(spec.retry_limit)
                            .skippable(spec.skippable)
                            .depends_on(spec.parents.iter().map(|&parent| name(parent))),
                    )
                },
            );
            let bypassed: Vec<String> = specs
                .iter()
                .enumerate()
                .filter(|(_, spec)| spec.bypassed)
                .map(|(s, _)| name(s))
                .collect();
            let request = TaskRequest::new(&template)
                .context(json!({"case": case_number, "task": t}))
                .bypass_steps(bypassed);
            let created = create_task(run.conn, &request)
                .map_err(|error| fail(format!("create_task: {error}")))?;
            prop_assert!(created.created, "task {} was not created", t);
            let task_id = created.task.task_id;
            run.task_ids.push(task_id);
            run.task_labels.insert(task_id, format!("t{t} #{task_id}"));
            let mut description = format!("  t{t} #{task_id}:");
            let mut ids = Vec::new();
            for (s, spec) in specs.iter().enumerate() {
                let step = created
                    .step(&name(s))
                    .ok_or_else(|| fail(format!("t{t}: no step {}", name(s))))?;
                let id = step.workflow_step_id;
                prop_assert_eq!(
                    (step.retry_limit, step.retryable, step.skippable),
                    (Some(spec.retry_limit), spec.retryable, spec.skippable),
                    "t{}.s{}: flags as in the template",
                    t,
                    s
                );
                ids.push(id);
                run.step_ids.push(id);
                run.step_labels.insert(id, format!("t{t}.s{s} #{id}"));
                run.names.insert(id, name(s));
                let parents: Vec<String> = spec.parents.iter().map(|&p| name(p)).collect();
                description.push_str(&format!(
                    " s{s}#{id}(limit {}{}{}{}{})",
                    spec.retry_limit,
                    if spec.retryable {
                        ""
                    } else {
                        ", not retryable"
                    },
                    if spec.skippable { ", skippable" } else { "" },
                    if spec.bypassed { ", bypassed" } else { "" },
                    if parents.is_empty() {
                        String::new()
                    } else {
                        format!(", after {}", parents.join("+"))
                    },
                ));
                for &parent in &spec.parents {
                    expected_edges.push((ids[parent], id));
                }
            }
            run.workflows.push_str(&description);
            run.workflows.push('\n');
        }
        run.edges = tasker_workflow_step_edges::table
            .select((
                tasker_workflow_step_edges::from_step_id,
                tasker_workflow_step_edges::to_step_id,
            ))
            .load(run.conn)
            .expect("edges");
        run.edges.sort_unstable();
        expected_edges.sort_unstable();
        prop_assert_eq!(&run.edges, &expected_edges, "edges as in the templates");

        // Bypassed steps start resolved_manually, everything else has no history.
        let view = Rc::new(View::load(run.conn));
        for t in 0..case.tasks.len() {
            prop_assert!(
                view.task_history[&run.task_ids[t]].is_empty(),
                "a new task has no transitions"
            );
        }
        let specs: Vec<&StepSpec> = case.tasks.iter().flatten().collect();
        for (&id, spec) in run.step_ids.iter().zip(specs) {
            let history = &view.step_history[&id];
            if spec.bypassed {
                prop_assert_eq!(history.len(), 1, "{}: bypassed", run.step_label(id));
                prop_assert_eq!(history[0].to_state, StepState::ResolvedManually);
                prop_assert_eq!(history[0].metadata.clone(), Some(json!({"bypassed": true})));
            } else {
                prop_assert!(
                    history.is_empty(),
                    "{}: a new step has no transitions",
                    run.step_label(id)
                );
            }
        }
        run.check_state(&view)?;
        run.current = view;
        Ok(run)
    }

    /// Loads every row after a call, for the checks of the call and then of
    /// the invariants.
    fn load_after(&mut self) -> Rc<View> {
        let view = Rc::new(View::load(self.conn));
        self.latest = Some(Rc::clone(&view));
        view
    }

    fn step_label(&self, step_id: i64) -> String {
        self.step_labels
            .get(&step_id)
            .cloned()
            .unwrap_or_else(|| format!("#{step_id}"))
    }

    fn task_label(&self, task_id: i64) -> String {
        self.task_labels
            .get(&task_id)
            .cloned()
            .unwrap_or_else(|| format!("#{task_id}"))
    }

    fn step_list(&self, ids: &[i64]) -> String {
        let labels: Vec<String> = ids.iter().map(|&id| self.step_label(id)).collect();
        format!("[{}]", labels.join(", "))
    }

    fn note(&mut self, line: String) {
        self.trace.push(line);
    }

    /// Appends to the current operation's line of the trace.
    fn result(&mut self, text: String) {
        if let Some(line) = self.trace.last_mut() {
            line.push_str(" -> ");
            line.push_str(&text);
        }
    }

    /// The failure with the workflows and the operations that led to it.
    fn explain(&self, error: TestCaseError) -> TestCaseError {
        match error {
            TestCaseError::Fail(reason) => fail(format!(
                "{reason}\nworkflows:\n{}operations:\n  {}",
                self.workflows,
                self.trace.join("\n  ")
            )),
            other => other,
        }
    }

    /// What the rules see of `view` at `now`.
    fn world(&self, view: &View, now: NaiveDateTime) -> World {
        World {
            tasks: view
                .tasks
                .values()
                .map(|task| TaskInput {
                    task_id: task.task_id,
                    named_task_id: task.named_task_id,
                    current_state: view.task_history[&task.task_id]
                        .iter()
                        .find(|transition| transition.most_recent)
                        .map(|transition| transition.to_state),
                })
                .collect(),
            steps: view
                .steps
                .values()
                .map(|step| StepInput {
                    workflow_step_id: step.workflow_step_id,
                    task_id: step.task_id,
                    named_step_id: step.named_step_id,
                    name: self.names[&step.workflow_step_id].clone(),
                    retryable: step.retryable,
                    retry_limit: step.retry_limit,
                    attempts: step.attempts,
                    processed: step.processed,
                    in_process: step.in_process,
                    backoff_request_seconds: step.backoff_request_seconds,
                    last_attempted_at: step.last_attempted_at,
                    current_transition: view
                        .latest_step_transition(step.workflow_step_id)
                        .map(|transition| (transition.to_state, transition.created_at)),
                })
                .collect(),
            edges: self.edges.clone(),
            now,
        }
    }

    /// Readiness at `now`, one line per step, for failure messages.
    fn describe_readiness(&self, view: &View, now: NaiveDateTime) -> String {
        oracle::readiness(&self.world(view, now))
            .iter()
            .map(|row| {
                format!(
                    "    {} ({}, task {}): {} ready={} deps={} eligible={} attempts={}/{} next_retry_at={:?}\n",
                    self.step_label(row.workflow_step_id),
                    view.task_state(row.task_id),
                    self.task_label(row.task_id),
                    row.current_state,
                    row.ready_for_execution,
                    row.dependencies_satisfied,
                    row.retry_eligible,
                    row.attempts,
                    row.retry_limit,
                    row.next_retry_at.map(|at| (at - now).num_milliseconds() as f64 / 1000.0),
                )
            })
            .collect()
    }

    // Invariants -------------------------------------------------------------------

    /// The invariants of every step and task, and the readiness and context
    /// functions against the reference.
    fn check_state(&mut self, view: &View) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            view.step_history.len(),
            view.steps.len(),
            "transitions of unknown steps"
        );
        prop_assert_eq!(
            view.task_history.len(),
            view.tasks.len(),
            "transitions of unknown tasks"
        );
        for (&id, step) in &view.steps {
            let label = self.step_label(id);
            let history = &view.step_history[&id];
            check_walk(&label, history, step_move_allowed)?;
            let state = view.step_state(id);
            prop_assert_eq!(
                step.in_process,
                state == StepState::InProgress,
                "{}: in_process with state {}",
                label,
                state
            );
            let finished = matches!(
                state,
                StepState::Complete | StepState::Cancelled | StepState::ResolvedManually
            );
            prop_assert_eq!(
                step.processed,
                finished,
                "{}: processed with state {}",
                label,
                state
            );
            prop_assert_eq!(
                step.processed_at,
                if finished {
                    history.last().map(|t| t.created_at)
                } else {
                    None
                },
                "{}: processed_at with state {}",
                label,
                state
            );
            // Every step in progress was claimed here, so it has a lease.
            prop_assert_eq!(
                step.claimed_until.is_some(),
                state == StepState::InProgress,
                "{}: claimed_until {:?} with state {}",
                label,
                step.claimed_until,
                state
            );
            let starts: Vec<&WorkflowStepTransition> = history
                .iter()
                .filter(|transition| transition.to_state == StepState::InProgress)
                .collect();
            prop_assert_eq!(
                step.attempts.unwrap_or(0),
                starts.len() as i32,
                "{}: attempts vs in_progress transitions",
                label
            );
            prop_assert_eq!(
                step.last_attempted_at,
                starts.last().map(|transition| transition.created_at),
                "{}: last_attempted_at is the last start",
                label
            );
        }
        for (&id, task) in &view.tasks {
            let label = self.task_label(id);
            check_walk(&label, &view.task_history[&id], task_move_allowed)?;
            let state = view.task_state(id);
            prop_assert_eq!(
                task.complete,
                state == TaskState::Complete,
                "{}: complete flag with state {}",
                label,
                state
            );
        }

        // The maintained readiness (step columns and task counts, kept by
        // triggers) agrees with its recomputation from the history.
        support::check_maintained_readiness(self.conn, None).map_err(fail)?;

        // The SQL readiness and contexts agree with the reference, at one now().
        let task_ids = self.task_ids.clone();
        let (now, rows, contexts) = self
            .conn
            .transaction::<_, tasker_diesel::Error, _>(|conn| {
                let now = support::utc_now(conn);
                let rows = StepReadinessStatus::for_tasks(&task_ids).load(conn)?;
                let contexts = TaskExecutionContext::find_many(conn, &task_ids)?;
                Ok((now, rows, contexts))
            })
            .expect("readiness and contexts");
        let world = self.world(view, now);
        prop_assert_eq!(rows, oracle::readiness(&world), "readiness at {}", now);
        prop_assert_eq!(contexts, oracle::contexts(&world), "contexts at {}", now);
        Ok(())
    }

    /// No row of a step or task outside `steps` and `tasks` changed, except
    /// for a child of a step in `steps`: its `completed_parents` (and so
    /// `runnable`) is kept by triggers from its parents' states, which
    /// stamps its `updated_at` (`check_state` checks the maintained columns
    /// against the history).
    fn unchanged_except(
        &self,
        what: &str,
        before: &View,
        after: &View,
        steps: &BTreeSet<i64>,
        tasks: &BTreeSet<i64>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            before.steps.keys().collect::<Vec<_>>(),
            after.steps.keys().collect::<Vec<_>>(),
            "{}: the set of steps changed",
            what
        );
        let children: BTreeSet<i64> = self
            .edges
            .iter()
            .filter(|(parent, _)| steps.contains(parent))
            .map(|&(_, child)| child)
            .collect();
        for (id, row) in &before.steps {
            if steps.contains(id) {
                continue;
            }
            let mut expected = row.clone();
            if children.contains(id) {
                let now = &after.steps[id];
                expected.completed_parents = now.completed_parents;
                expected.runnable = now.runnable;
                expected.updated_at = now.updated_at;
            }
            prop_assert_eq!(
                &expected,
                &after.steps[id],
                "{}: {} changed",
                what,
                self.step_label(*id)
            );
            prop_assert_eq!(
                &before.step_history[id],
                &after.step_history[id],
                "{}: history of {} changed",
                what,
                self.step_label(*id)
            );
        }
        for (id, row) in &before.tasks {
            if tasks.contains(id) {
                continue;
            }
            prop_assert_eq!(
                row,
                &after.tasks[id],
                "{}: {} changed",
                what,
                self.task_label(*id)
            );
            prop_assert_eq!(
                &before.task_history[id],
                &after.task_history[id],
                "{}: history of {} changed",
                what,
                self.task_label(*id)
            );
        }
        Ok(())
    }

    /// A refusal: the one expected, and nothing written.
    fn check_refused(
        &self,
        what: &str,
        got: &Refusal,
        expected: &Refusal,
        before: &View,
        after: &View,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(got, expected, "{}: refusal", what);
        self.unchanged_except(what, before, after, &BTreeSet::new(), &BTreeSet::new())?;
        prop_assert!(
            before.raw == after.raw,
            "{}: refused, yet rows changed",
            what
        );
        Ok(())
    }

    // Operations -------------------------------------------------------------------

    fn apply(&mut self, number: usize, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Claim {
                tasks,
                max_steps,
                lease,
            } => self.claim(number, tasks.as_deref(), *max_steps, *lease),
            Op::Complete(pick) | Op::Fail(pick, _) | Op::Extend(pick, _) => {
                self.report(number, *pick, op)
            }
            Op::ExpireLease(pick) => self.expire_lease(number, *pick),
            Op::ReleaseExpired(max_steps) => self.release(number, *max_steps),
            Op::PassTime(by) => self.pass_time(number, *by),
            Op::Resolve(step) => self.resolve(number, *step),
            Op::Cancel(task) => self.cancel(number, *task),
            Op::Finalize(task) => self.finalize(number, *task),
            Op::Resume { task, expect_error } => self.resume(number, *task, *expect_error),
        }
    }

    fn task_at(&self, pick: usize) -> i64 {
        self.task_ids[pick % self.task_ids.len()]
    }

    fn step_at(&self, pick: usize) -> i64 {
        self.step_ids[pick % self.step_ids.len()]
    }

    fn claim_at(&self, view: &View, pick: ClaimPick) -> Option<Claim> {
        let current: Vec<Claim> = self
            .claims
            .iter()
            .copied()
            .filter(|claim| {
                view.latest_step_transition(claim.workflow_step_id)
                    .is_some_and(|latest| latest.id == claim.claim_id)
            })
            .collect();
        match pick {
            ClaimPick::Current(index) if !current.is_empty() => {
                Some(current[index % current.len()])
            }
            ClaimPick::Current(index) | ClaimPick::Any(index) if !self.claims.is_empty() => {
                Some(self.claims[index % self.claims.len()])
            }
            _ => None,
        }
    }

    fn describe_claim(&self, claim: Claim) -> String {
        let position = self.claims.iter().position(|c| *c == claim).unwrap_or(0);
        format!(
            "claim {} of {} (transition {})",
            position + 1,
            self.step_label(claim.workflow_step_id),
            claim.claim_id
        )
    }

    fn claim(
        &mut self,
        number: usize,
        tasks: Option<&[usize]>,
        max_steps: u32,
        lease: u32,
    ) -> Result<(), TestCaseError> {
        let requested: Option<Vec<i64>> =
            tasks.map(|picks| picks.iter().map(|&pick| self.task_at(pick)).collect());
        let request = match &requested {
            Some(ids) => ClaimRequest::for_tasks(ids, max_steps, seconds(lease)),
            None => ClaimRequest::any_task(max_steps, seconds(lease)),
        };
        let tasks_text = match &requested {
            Some(ids) => {
                let labels: Vec<String> = ids.iter().map(|&id| self.task_label(id)).collect();
                format!("for_tasks [{}]", labels.join(", "))
            }
            None => "any_task".to_owned(),
        };
        self.note(format!(
            "{number}: claim_ready_steps({tasks_text}, max_steps {max_steps}, lease {lease}s)"
        ));
        let before = Rc::clone(&self.current);
        let t0 = clock(self.conn);
        let result = claim_ready_steps(self.conn, &request);
        let t1 = clock(self.conn);
        let claimed: Vec<ClaimedStep> = outcome("claim_ready_steps", result)?
            .map_err(|refusal| fail(format!("claim_ready_steps refused: {refusal}")))?;
        let after = self.load_after();
        let got: Vec<i64> = claimed.iter().map(|step| step.workflow_step_id).collect();
        self.result(format!("claimed {}", self.step_list(&got)));

        // Exactly the first max_steps steps ready right before the claim, of
        // the requested tasks that are pending or in progress.
        let rows_at_t0 = oracle::readiness(&self.world(&before, t0));
        let claimable_task = |task_id: i64| {
            matches!(
                before.task_state(task_id),
                TaskState::Pending | TaskState::InProgress
            )
        };
        let expectations: Vec<Vec<i64>> = candidate_times(&rows_at_t0, t0, t1)
            .into_iter()
            .map(|now| {
                oracle::readiness(&self.world(&before, now))
                    .iter()
                    .filter(|row| {
                        row.ready_for_execution
                            && claimable_task(row.task_id)
                            && requested
                                .as_ref()
                                .is_none_or(|ids| ids.contains(&row.task_id))
                    })
                    .take(max_steps as usize)
                    .map(|row| row.workflow_step_id)
                    .collect()
            })
            .collect();
        for step in &claimed {
            prop_assert!(
                claimable_task(step.task_id),
                "claimed {} of a task in state {}",
                self.step_label(step.workflow_step_id),
                before.task_state(step.task_id)
            );
        }
        prop_assert!(
            expectations.contains(&got),
            "claim took {} but the first {} ready steps of the tasks {} that are pending or in \
             progress were {}\n  readiness right before the claim:\n{}",
            self.step_list(&got),
            max_steps,
            tasks_text,
            expectations
                .iter()
                .map(|ids| self.step_list(ids))
                .collect::<Vec<_>>()
                .join(" or "),
            self.describe_readiness(&before, t0)
        );

        // Each claimed step is now in progress, one attempt more, leased.
        let mut started_tasks = BTreeSet::new();
        for step in &claimed {
            let id = step.workflow_step_id;
            let label = self.step_label(id);
            let old = &before.steps[&id];
            let new = &after.steps[&id];
            prop_assert_eq!(step.task_id, old.task_id, "{}: task_id", label);
            prop_assert_eq!(
                step.named_step_id,
                old.named_step_id,
                "{}: named_step_id",
                label
            );
            prop_assert_eq!(&step.name, &self.names[&id], "{}: name", label);
            prop_assert_eq!(&step.inputs, &old.inputs, "{}: inputs", label);
            prop_assert_eq!(
                step.attempt,
                old.attempts.unwrap_or(0) + 1,
                "{}: attempt",
                label
            );
            prop_assert_eq!(
                new.attempts,
                Some(step.attempt),
                "{}: stored attempts",
                label
            );
            let path: &[StepState] = if before.step_state(id) == StepState::Error {
                &[StepState::Pending, StepState::InProgress]
            } else {
                &[StepState::InProgress]
            };
            let added = appended(
                &label,
                &before.step_history[&id],
                &after.step_history[&id],
                path,
            )?;
            let start = added.last().expect("a start");
            prop_assert_eq!(step.claim_id, start.id, "{}: claim_id", label);
            prop_assert_eq!(
                step.claimed_until,
                start.created_at + Duration::seconds(i64::from(lease)),
                "{}: claimed_until is the start plus the lease",
                label
            );
            prop_assert_eq!(
                new.claimed_until,
                Some(step.claimed_until),
                "{}: stored lease",
                label
            );
            prop_assert_eq!(
                new.backoff_request_seconds,
                None,
                "{}: backoff cleared",
                label
            );
            prop_assert_eq!(
                after.task_state(step.task_id),
                TaskState::InProgress,
                "{}: its task is in progress",
                label
            );
            if before.task_state(step.task_id) == TaskState::Pending {
                started_tasks.insert(step.task_id);
            }
        }
        for &task_id in &started_tasks {
            appended(
                &self.task_label(task_id),
                &before.task_history[&task_id],
                &after.task_history[&task_id],
                &[TaskState::InProgress],
            )?;
        }
        self.unchanged_except(
            "claim_ready_steps",
            &before,
            &after,
            &got.iter().copied().collect(),
            &started_tasks,
        )?;
        self.claims.extend(claimed.iter().map(ClaimedStep::claim));
        Ok(())
    }

    /// Whether a report under `claim` must be accepted, made between the
    /// clock reads `t0` and `t1`.
    fn verdict(before: &View, claim: Claim, t0: NaiveDateTime, t1: NaiveDateTime) -> Verdict {
        let step_id = claim.workflow_step_id;
        let latest = before.latest_step_transition(step_id);
        if latest.map(|transition| transition.id) != Some(claim.claim_id) {
            return Verdict::Refused(Refusal::ClaimLost {
                workflow_step_id: step_id,
                claim_id: claim.claim_id,
                state: before.step_state(step_id),
            });
        }
        match before.steps[&step_id].claimed_until {
            Some(until) if until <= t1 => {
                let expired = Refusal::ClaimExpired {
                    workflow_step_id: step_id,
                    claim_id: claim.claim_id,
                    claimed_until: until,
                };
                if until <= t0 {
                    Verdict::Refused(expired)
                } else {
                    Verdict::HoldsOrRefused(expired)
                }
            }
            _ => Verdict::Holds,
        }
    }

    /// `complete_step`, `fail_step` or `extend_step_claim` under a claim.
    fn report(&mut self, number: usize, pick: ClaimPick, op: &Op) -> Result<(), TestCaseError> {
        let before = Rc::clone(&self.current);
        let Some(claim) = self.claim_at(&before, pick) else {
            self.note(format!("{number}: {op:?}: no claim yet, skipped"));
            return Ok(());
        };
        let step_id = claim.workflow_step_id;
        let label = self.step_label(step_id);
        let payload = json!({"operation": number});
        let what = match op {
            Op::Complete(_) => "complete_step".to_owned(),
            Op::Fail(_, retry_after) => format!("fail_step(retry_after {retry_after:?} ms)"),
            Op::Extend(_, lease) => format!("extend_step_claim({lease}s)"),
            _ => unreachable!("not a report"),
        };
        self.note(format!(
            "{number}: {what} under {}",
            self.describe_claim(claim)
        ));
        let t0 = clock(self.conn);
        let result = match op {
            Op::Complete(_) => complete_step(self.conn, claim, &payload).map(Done::Transition),
            Op::Fail(_, retry_after) => fail_step(
                self.conn,
                claim,
                &payload,
                retry_after.map(StdDuration::from_millis),
            )
            .map(Done::Transition),
            Op::Extend(_, lease) => {
                extend_step_claim(self.conn, claim, seconds(*lease)).map(Done::Extended)
            }
            _ => unreachable!("not a report"),
        };
        let t1 = clock(self.conn);
        let after = self.load_after();
        let got = outcome(&what, result)?;
        let done = match (Self::verdict(&before, claim, t0, t1), got) {
            (Verdict::Refused(expected) | Verdict::HoldsOrRefused(expected), Err(refusal)) => {
                self.result(format!("refused: {refusal}"));
                return self.check_refused(&what, &refusal, &expected, &before, &after);
            }
            (Verdict::Refused(expected), Ok(done)) => {
                return Err(fail(format!(
                    "{what} under {}: accepted ({done:?}), but the claim no longer holds: \
                     expected {expected:?}",
                    self.describe_claim(claim)
                )));
            }
            (Verdict::Holds, Err(refusal)) => {
                return Err(fail(format!(
                    "{what} under {}: refused ({refusal:?}) though the claim holds",
                    self.describe_claim(claim)
                )));
            }
            (Verdict::Holds | Verdict::HoldsOrRefused(_), Ok(done)) => done,
        };
        self.result("accepted".to_owned());
        let old = &before.steps[&step_id];
        let new = &after.steps[&step_id];
        let old_history = &before.step_history[&step_id];
        let new_history = &after.step_history[&step_id];
        match (op, done) {
            (Op::Complete(_), Done::Transition(transition)) => {
                let added = appended(&label, old_history, new_history, &[StepState::Complete])?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                prop_assert_eq!(&new.results, &Some(payload), "{}: results stored", label);
                prop_assert_eq!(
                    new.processed_at,
                    Some(transition.created_at),
                    "{}: processed_at",
                    label
                );
                prop_assert_eq!(new.attempts, old.attempts, "{}: attempts", label);
            }
            (Op::Fail(_, retry_after), Done::Transition(transition)) => {
                let added = appended(&label, old_history, new_history, &[StepState::Error])?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                let metadata = transition.metadata.clone().unwrap_or_default();
                prop_assert_eq!(
                    &metadata["error"],
                    &payload,
                    "{}: the error is in the metadata",
                    label
                );
                prop_assert!(
                    metadata["error_message"].is_string(),
                    "{}: the error's text for the Rails engine, in {}",
                    label,
                    metadata
                );
                prop_assert_eq!(
                    new.backoff_request_seconds,
                    retry_after.map(|ms| ms.div_ceil(1000) as i32),
                    "{}: backoff_request_seconds is the requested delay, rounded up",
                    label
                );
                prop_assert_eq!(&new.results, &old.results, "{}: results kept", label);
                prop_assert_eq!(new.attempts, old.attempts, "{}: attempts", label);
            }
            (Op::Extend(_, lease), Done::Extended(until)) => {
                let lease = Duration::seconds(i64::from(*lease));
                prop_assert!(
                    until >= t0 + lease && until <= t1 + lease,
                    "{}: extended to {} (now between {} and {})",
                    label,
                    until,
                    t0,
                    t1
                );
                let mut expected = old.clone();
                expected.claimed_until = Some(until);
                expected.updated_at = new.updated_at;
                prop_assert_eq!(new, &expected, "{}: only the lease moved", label);
                prop_assert_eq!(old_history, new_history, "{}: history kept", label);
            }
            (op, done) => unreachable!("{op:?} gave {done:?}"),
        }
        self.unchanged_except(
            &what,
            &before,
            &after,
            &BTreeSet::from([step_id]),
            &BTreeSet::new(),
        )
    }

    /// Puts the lease of the claim's step, when it is in process, 30 s into
    /// the past (not a library call: a worker that stopped heartbeating).
    fn expire_lease(&mut self, number: usize, pick: ClaimPick) -> Result<(), TestCaseError> {
        let before = Rc::clone(&self.current);
        let Some(claim) = self.claim_at(&before, pick) else {
            self.note(format!("{number}: expire a lease: no claim yet, skipped"));
            return Ok(());
        };
        let step_id = claim.workflow_step_id;
        if !before.steps[&step_id].in_process {
            self.note(format!(
                "{number}: expire the lease of {}: not in process, skipped",
                self.step_label(step_id)
            ));
            return Ok(());
        }
        self.note(format!(
            "{number}: expire the lease of {} ({EXPIRED_SECONDS_AGO}s ago)",
            self.step_label(step_id)
        ));
        let until = support::utc_now(self.conn) - Duration::seconds(EXPIRED_SECONDS_AGO);
        support::update_step(
            self.conn,
            step_id,
            tasker_workflow_steps::claimed_until.eq(Some(until)),
        );
        Ok(())
    }

    fn release(&mut self, number: usize, max_steps: Option<u32>) -> Result<(), TestCaseError> {
        self.note(format!("{number}: release_expired_claims({max_steps:?})"));
        let before = Rc::clone(&self.current);
        let t0 = clock(self.conn);
        let result = release_expired_claims(self.conn, max_steps);
        let t1 = clock(self.conn);
        let after = self.load_after();
        let released = outcome("release_expired_claims", result)?
            .map_err(|refusal| fail(format!("release_expired_claims refused: {refusal}")))?;
        self.result(format!("released {}", self.step_list(&released)));
        // In process with a lease passed, by lease end then id, at most max_steps.
        let expired_at = |now: NaiveDateTime| -> Vec<i64> {
            let mut expired: Vec<(NaiveDateTime, i64)> = before
                .steps
                .values()
                .filter(|step| step.in_process)
                .filter_map(|step| {
                    step.claimed_until
                        .filter(|&until| until <= now)
                        .map(|until| (until, step.workflow_step_id))
                })
                .collect();
            expired.sort_unstable();
            expired.truncate(max_steps.map_or(usize::MAX, |max| max as usize));
            expired.into_iter().map(|(_, id)| id).collect()
        };
        let expected = expired_at(t0);
        prop_assert!(
            released == expected || released == expired_at(t1),
            "release_expired_claims released {}, expected {}",
            self.step_list(&released),
            self.step_list(&expected)
        );
        for &id in &released {
            let label = self.step_label(id);
            let claim_id = before.latest_step_transition(id).map(|t| t.id);
            let added = appended(
                &label,
                &before.step_history[&id],
                &after.step_history[&id],
                &[StepState::Error],
            )?;
            let error = added[0]
                .metadata
                .as_ref()
                .and_then(|metadata| metadata.get("error"));
            prop_assert_eq!(
                error.and_then(|error| error.get("message")),
                Some(&json!("claim expired")),
                "{}: release metadata {:?}",
                label,
                added[0].metadata
            );
            prop_assert_eq!(
                error.and_then(|error| error.get("claim_id")).cloned(),
                claim_id.map(Value::from),
                "{}: the released claim is named",
                label
            );
            prop_assert_eq!(
                after.steps[&id].attempts,
                before.steps[&id].attempts,
                "{}: attempts",
                label
            );
        }
        self.unchanged_except(
            "release_expired_claims",
            &before,
            &after,
            &released.iter().copied().collect(),
            &BTreeSet::new(),
        )
    }

    /// Moves every stored timestamp back by `by` seconds, in one transaction,
    /// as if that much time had passed.
    fn pass_time(&mut self, number: usize, by: i32) -> Result<(), TestCaseError> {
        const SHIFTS: [&str; 4] = [
            "UPDATE tasker_workflow_step_transitions SET \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
            "UPDATE tasker_task_transitions SET \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
            "UPDATE tasker_workflow_steps SET \
             last_attempted_at = last_attempted_at - $1 * interval '1 second', \
             claimed_until = claimed_until - $1 * interval '1 second', \
             processed_at = processed_at - $1 * interval '1 second', \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
            "UPDATE tasker_tasks SET \
             requested_at = requested_at - $1 * interval '1 second', \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
        ];
        self.note(format!("{number}: {by}s pass"));
        self.conn
            .transaction::<_, diesel::result::Error, _>(|conn| {
                for statement in SHIFTS {
                    diesel::sql_query(statement)
                        .bind::<Integer, _>(by)
                        .execute(conn)?;
                }
                Ok(())
            })
            .expect("let time pass");
        Ok(())
    }

    fn resolve(&mut self, number: usize, pick: usize) -> Result<(), TestCaseError> {
        let step_id = self.step_at(pick);
        let label = self.step_label(step_id);
        self.note(format!("{number}: resolve_step_manually({label})"));
        let before = Rc::clone(&self.current);
        let result = resolve_step_manually(self.conn, step_id, None);
        let after = self.load_after();
        let state = before.step_state(step_id);
        match outcome("resolve_step_manually", result)? {
            Err(refusal) => {
                self.result(format!("refused: {refusal}"));
                let expected = Refusal::IllegalStepTransition {
                    workflow_step_id: step_id,
                    name: self.names[&step_id].clone(),
                    from: state,
                    to: StepState::ResolvedManually,
                };
                prop_assert!(
                    !step_move_allowed(state, StepState::ResolvedManually),
                    "resolve_step_manually({}) refused from {}",
                    label,
                    state
                );
                self.check_refused(
                    "resolve_step_manually",
                    &refusal,
                    &expected,
                    &before,
                    &after,
                )
            }
            Ok(transition) => {
                self.result(format!("resolved from {state}"));
                prop_assert!(
                    step_move_allowed(state, StepState::ResolvedManually),
                    "resolve_step_manually({}) accepted from {}",
                    label,
                    state
                );
                let added = appended(
                    &label,
                    &before.step_history[&step_id],
                    &after.step_history[&step_id],
                    &[StepState::ResolvedManually],
                )?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                self.unchanged_except(
                    "resolve_step_manually",
                    &before,
                    &after,
                    &BTreeSet::from([step_id]),
                    &BTreeSet::new(),
                )
            }
        }
    }

    fn cancel(&mut self, number: usize, pick: usize) -> Result<(), TestCaseError> {
        let task_id = self.task_at(pick);
        let label = self.task_label(task_id);
        self.note(format!("{number}: cancel_task({label})"));
        let before = Rc::clone(&self.current);
        let result = cancel_task(self.conn, task_id, None);
        let after = self.load_after();
        let state = before.task_state(task_id);
        match outcome("cancel_task", result)? {
            Err(refusal) => {
                self.result(format!("refused: {refusal}"));
                // Finished work is not cancelled, although the state machine allows it.
                let expected = if task_finished(state) {
                    Refusal::TaskFinished { task_id, state }
                } else {
                    Refusal::IllegalTaskTransition {
                        task_id,
                        from: state,
                        to: TaskState::Cancelled,
                    }
                };
                self.check_refused("cancel_task", &refusal, &expected, &before, &after)
            }
            Ok(transition) => {
                prop_assert!(
                    !task_finished(state) && task_move_allowed(state, TaskState::Cancelled),
                    "cancel_task({}) accepted from {}",
                    label,
                    state
                );
                let added = appended(
                    &label,
                    &before.task_history[&task_id],
                    &after.task_history[&task_id],
                    &[TaskState::Cancelled],
                )?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                // Its pending and running steps are cancelled, the others stay.
                let cancelled: Vec<i64> = before
                    .steps
                    .values()
                    .filter(|step| step.task_id == task_id)
                    .map(|step| step.workflow_step_id)
                    .filter(|&id| {
                        matches!(
                            before.step_state(id),
                            StepState::Pending | StepState::InProgress
                        )
                    })
                    .collect();
                self.result(format!("cancelled with {}", self.step_list(&cancelled)));
                for &id in &cancelled {
                    appended(
                        &self.step_label(id),
                        &before.step_history[&id],
                        &after.step_history[&id],
                        &[StepState::Cancelled],
                    )?;
                }
                self.unchanged_except(
                    "cancel_task",
                    &before,
                    &after,
                    &cancelled.iter().copied().collect(),
                    &BTreeSet::from([task_id]),
                )
            }
        }
    }

    fn finalize(&mut self, number: usize, pick: usize) -> Result<(), TestCaseError> {
        let task_id = self.task_at(pick);
        let label = self.task_label(task_id);
        self.note(format!("{number}: finalize_task({label})"));
        let before = Rc::clone(&self.current);
        let t0 = clock(self.conn);
        let result = finalize_task(self.conn, task_id, None);
        let t1 = clock(self.conn);
        let after = self.load_after();
        let rows_at_t0 = oracle::readiness(&self.world(&before, t0));
        let expectations: Vec<Finalized> = candidate_times(&rows_at_t0, t0, t1)
            .into_iter()
            .map(|now| {
                let world = self.world(&before, now);
                let rows = oracle::readiness(&world);
                let task_rows: Vec<&StepReadinessStatus> =
                    rows.iter().filter(|row| row.task_id == task_id).collect();
                let context = oracle::contexts(&world)
                    .into_iter()
                    .find(|context| context.task_id == task_id)
                    .expect("the task's context");
                expected_finalize(task_id, &context, &task_rows)
            })
            .collect();
        let task_steps: Vec<i64> = before
            .steps
            .values()
            .filter(|step| step.task_id == task_id)
            .map(|step| step.workflow_step_id)
            .collect();
        match outcome("finalize_task", result)? {
            Err(refusal) => {
                self.result(format!("refused: {refusal}"));
                let expected = expectations.iter().find_map(|expected| match expected {
                    Finalized::Refused(expected) if *expected == refusal => Some(expected),
                    _ => None,
                });
                let Some(expected) = expected else {
                    return Err(fail(format!(
                        "finalize_task({label}) refused with {refusal:?}, expected {expectations:?}\
                         \n  readiness:\n{}",
                        self.describe_readiness(&before, t0)
                    )));
                };
                self.check_refused("finalize_task", &refusal, expected, &before, &after)
            }
            Ok(state) => {
                self.result(format!("{state}"));
                let path = expectations.iter().find_map(|expected| match expected {
                    Finalized::State(expected, path) if *expected == state => Some(path),
                    _ => None,
                });
                let Some(path) = path else {
                    return Err(fail(format!(
                        "finalize_task({label}) returned {state}, expected {expectations:?}\
                         \n  readiness:\n{}",
                        self.describe_readiness(&before, t0)
                    )));
                };
                // The README's reading: Complete only when every step is done; Error
                // only when a step failed for good and nothing can run or retry.
                let states: Vec<StepState> =
                    task_steps.iter().map(|&id| before.step_state(id)).collect();
                match state {
                    TaskState::Complete => prop_assert!(
                        states.iter().all(|state| matches!(
                            state,
                            StepState::Complete
                                | StepState::ResolvedManually
                                | StepState::Cancelled
                        )),
                        "finalize_task({}) returned complete with steps {:?}",
                        label,
                        states
                    ),
                    TaskState::Error => {
                        let rows: Vec<StepReadinessStatus> = rows_at_t0
                            .iter()
                            .filter(|row| row.task_id == task_id)
                            .cloned()
                            .collect();
                        prop_assert!(
                            rows.iter().any(oracle::is_permanently_failed)
                                && !rows.iter().any(|row| {
                                    row.current_state == StepState::InProgress
                                        || (row.current_state == StepState::Error
                                            && row.retry_eligible)
                                }),
                            "finalize_task({}) returned error with steps {:?}",
                            label,
                            rows
                        );
                    }
                    // Finished otherwise: returned as it was, nothing written.
                    TaskState::Cancelled | TaskState::ResolvedManually => prop_assert_eq!(
                        before.task_state(task_id),
                        state,
                        "finalize_task({}) returned {} for a task that was not",
                        label,
                        state
                    ),
                    other => return Err(fail(format!("finalize_task({label}) returned {other}"))),
                }
                appended(
                    &label,
                    &before.task_history[&task_id],
                    &after.task_history[&task_id],
                    path,
                )?;
                let changed_tasks = if path.is_empty() {
                    BTreeSet::new()
                } else {
                    BTreeSet::from([task_id])
                };
                self.unchanged_except(
                    "finalize_task",
                    &before,
                    &after,
                    &BTreeSet::new(),
                    &changed_tasks,
                )
            }
        }
    }

    /// The operator's resume: `transition_task` to pending, with or without
    /// `expected: Error`.
    fn resume(
        &mut self,
        number: usize,
        pick: usize,
        expect_error: bool,
    ) -> Result<(), TestCaseError> {
        let task_id = self.task_at(pick);
        let label = self.task_label(task_id);
        self.note(format!(
            "{number}: transition_task({label}, pending{})",
            if expect_error {
                ", expecting error"
            } else {
                ""
            }
        ));
        let options = if expect_error {
            TransitionOptions::expecting(TaskState::Error)
        } else {
            TransitionOptions::default()
        };
        let before = Rc::clone(&self.current);
        let result = transition_task(self.conn, task_id, TaskState::Pending, options);
        let after = self.load_after();
        let state = before.task_state(task_id);
        let expected = if expect_error && state != TaskState::Error {
            Some(Refusal::TaskStateConflict {
                task_id,
                expected: TaskState::Error,
                actual: state,
            })
        } else if !task_move_allowed(state, TaskState::Pending) {
            Some(Refusal::IllegalTaskTransition {
                task_id,
                from: state,
                to: TaskState::Pending,
            })
        } else {
            None
        };
        match (outcome("transition_task", result)?, expected) {
            (Err(refusal), Some(expected)) => {
                self.result(format!("refused: {refusal}"));
                self.check_refused("transition_task", &refusal, &expected, &before, &after)
            }
            (Ok(transition), None) => {
                self.result(format!("pending again (was {state})"));
                let added = appended(
                    &label,
                    &before.task_history[&task_id],
                    &after.task_history[&task_id],
                    &[TaskState::Pending],
                )?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                self.unchanged_except(
                    "transition_task",
                    &before,
                    &after,
                    &BTreeSet::new(),
                    &BTreeSet::from([task_id]),
                )
            }
            (got, expected) => Err(fail(format!(
                "transition_task({label}, pending) from {state}: got {got:?}, expected {expected:?}"
            ))),
        }
    }
}

/// What a report returned, reduced to what is checked.
#[derive(Debug)]
enum Done {
    Transition(WorkflowStepTransition),
    Extended(NaiveDateTime),
}

/// Runs one case on `conn`: creates its tasks, then applies each operation
/// and checks the invariants after it.
fn run_case(conn: &mut PgConnection, case: &Case, case_number: u64) -> Result<(), TestCaseError> {
    let mut run = Run::create(conn, case, case_number)?;
    for (number, op) in case.ops.iter().enumerate() {
        let checked = run.apply(number, op).and_then(|()| {
            // The state the operation left: what it loaded, else read anew.
            let view = match run.latest.take() {
                Some(view) => view,
                None => Rc::new(View::load(run.conn)),
            };
            run.current = Rc::clone(&view);
            run.check_state(&view)
        });
        checked.map_err(|error| run.explain(error))?;
    }
    Ok(())
}

/// One test database and a connection kept from case to case. A case that
/// panics drops its connection (it may be inside a transaction), and the
/// next case opens a new one.
struct Session {
    db: TestDatabase,
    conn: RefCell<Option<PgConnection>>,
    cases: Cell<u64>,
}

impl Session {
    fn new() -> Self {
        Session {
            db: TestDatabase::new(),
            conn: RefCell::new(None),
            cases: Cell::new(0),
        }
    }

    fn run(&self, case: &Case) -> Result<(), TestCaseError> {
        let mut conn = self.conn.take().unwrap_or_else(|| self.db.connection());
        let number = self.cases.get();
        self.cases.set(number + 1);
        let outcome = run_case(&mut conn, case, number);
        self.conn.replace(Some(conn));
        outcome
    }
}

// Properties -------------------------------------------------------------------------

#[test]
fn random_write_path_operations_keep_every_invariant() {
    let session = Session::new();
    let config = ProptestConfig {
        cases: CASES,
        // No regression files: the test writes nothing into the source tree.
        failure_persistence: None,
        // Bounds the time a failure takes to shrink.
        max_shrink_iters: 512,
        max_shrink_time: 10_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(error) = runner.run(&case(), |case| session.run(&case)) {
        panic!("{error}");
    }
}

/// The operator's path out of a task in `error` (README "Semantics"):
/// resolve the failed step, move the task back to pending, and claims resume
/// it. The shrunk form of a failure of the property above.
#[test]
fn a_task_resumed_to_pending_is_claimed_again() {
    let step = |parents: Vec<usize>| StepSpec {
        retry_limit: 1,
        retryable: true,
        skippable: false,
        bypassed: false,
        parents,
    };
    let claim = Op::Claim {
        tasks: None,
        max_steps: 1,
        lease: 30,
    };
    let case = Case {
        tasks: vec![vec![step(vec![]), step(vec![0])]],
        ops: vec![
            claim.clone(),                         // s0
            Op::Fail(ClaimPick::Current(0), None), // its only attempt
            Op::Finalize(0),                       // the task is in error
            Op::Resolve(0),                        // the operator resolves s0
            Op::Resume {
                task: 0,
                expect_error: true,
            }, // and resumes the task
            claim,                                 // s1 is ready and its task pending: claimed
        ],
    };
    let session = Session::new();
    if let Err(error) = session.run(&case) {
        panic!("{error}");
    }
}

/// The state machines written out above are the schema's.
#[test]
fn the_state_machine_tables_of_this_test_match_the_schema() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for from in StepState::ALL {
        for to in StepState::ALL {
            let allowed: bool = diesel::select(functions::tasker_step_transition_allowed(from, to))
                .get_result(&mut conn)
                .expect("tasker_step_transition_allowed");
            assert_eq!(allowed, step_move_allowed(from, to), "step {from} -> {to}");
        }
    }
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            let allowed: bool = diesel::select(functions::tasker_task_transition_allowed(from, to))
                .get_result(&mut conn)
                .expect("tasker_task_transition_allowed");
            assert_eq!(allowed, task_move_allowed(from, to), "task {from} -> {to}");
        }
    }
}

/// A task `cancel_task` refuses to cancel: its work is done.
fn task_finished(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Complete | TaskState::ResolvedManually | TaskState::Cancelled
    )
}
