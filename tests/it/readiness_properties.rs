//! The readiness and execution-context functions agree with a plain Rust
//! reading of the README's rules (`tests/oracle`), and their single
//! and batch forms, and the scopes' filters, agree with each other, over many
//! random tasks.
//!
//! Each property uses one test database. Each case runs in a transaction that
//! is rolled back, so cases do not see each other and `now()` is fixed within
//! a case. Cases share a connection, so Diesel's prepared statements are
//! reused, and take turns at PostgreSQL's generic and custom plans and at
//! session time zones far from UTC.

use std::collections::BTreeSet;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{StepReadinessQuery, StepReadinessStatus, StepState, TaskExecutionContext};

use crate::histories;
use crate::oracle;
use crate::support;

use histories::{build, failure, run_property, Built, Case, Row, Session, MAX_TASKS};
use oracle::{TaskInput, World};

const MAX_STEPS: usize = 12;
const READINESS_CASES: u32 = 40;
const BATCH_CASES: u32 = 32;

// Comparing rows ----------------------------------------------------------------

/// `Ok` when the SQL's rows are the expected ones; otherwise a description of
/// the difference.
fn compare<T: Row>(what: &str, built: &Built, actual: &[T], expected: &[T]) -> Result<(), String> {
    histories::compare(
        what,
        ["SQL", "expected"],
        &built.labels,
        built.world.now,
        actual,
        expected,
    )
}

fn load(query: StepReadinessQuery, conn: &mut PgConnection) -> Vec<StepReadinessStatus> {
    query.load(conn).expect("load readiness rows")
}

// Property a: the SQL follows the rules ------------------------------------------

fn check_against_reference(session: &Session, case: &Case) -> Result<(), TestCaseError> {
    session.rolled_back(|conn| {
        let built = build(conn, case);
        let mut problems = Vec::new();

        let rows = load(StepReadinessStatus::for_tasks(&built.task_ids), conn);
        let expected_rows = oracle::readiness(&built.world);
        problems.extend(compare("readiness", &built, &rows, &expected_rows).err());

        let contexts =
            TaskExecutionContext::find_many(conn, &built.task_ids).expect("load contexts");
        let expected_contexts = oracle::contexts(&built.world);
        problems.extend(compare("execution context", &built, &contexts, &expected_contexts).err());
        failure(&built, &problems)
    })
}

#[test]
fn sql_readiness_matches_the_reference_rules() {
    let session = Session::new();
    run_property(READINESS_CASES, histories::case(MAX_STEPS), |case| {
        check_against_reference(&session, &case)
    });
}

// Property b: every form and filter agrees ---------------------------------------

/// A step or task id to ask for: one of the case's, or one that does not exist.
#[derive(Clone, Copy, Debug)]
enum Pick {
    Known(Index),
    Unknown(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterSpec {
    Ready,
    BlockedByDependencies,
    WaitingForBackoff,
    PermanentlyFailed,
    InState(StepState),
}

impl FilterSpec {
    fn every() -> Vec<FilterSpec> {
        let mut every = vec![
            FilterSpec::Ready,
            FilterSpec::BlockedByDependencies,
            FilterSpec::WaitingForBackoff,
            FilterSpec::PermanentlyFailed,
        ];
        every.extend(
            StepState::ALL
                .iter()
                .map(|&state| FilterSpec::InState(state)),
        );
        every
    }

    fn apply(self, query: StepReadinessQuery) -> StepReadinessQuery {
        match self {
            FilterSpec::Ready => query.ready_for_execution(),
            FilterSpec::BlockedByDependencies => query.blocked_by_dependencies(),
            FilterSpec::WaitingForBackoff => query.waiting_for_backoff(),
            FilterSpec::PermanentlyFailed => query.permanently_failed(),
            FilterSpec::InState(state) => query.in_state(state),
        }
    }

    /// The predicate the scope documents, for `row` of a step of `world`.
    fn holds(self, row: &StepReadinessStatus, world: &World, now: NaiveDateTime) -> bool {
        match self {
            FilterSpec::Ready => row.ready_for_execution,
            FilterSpec::BlockedByDependencies => !row.dependencies_satisfied,
            FilterSpec::WaitingForBackoff => {
                let step = world
                    .steps
                    .iter()
                    .find(|step| step.workflow_step_id == row.workflow_step_id)
                    .expect("every row is of a step of the world");
                oracle::is_waiting_for_backoff(row, step, now)
            }
            FilterSpec::PermanentlyFailed => oracle::is_permanently_failed(row),
            FilterSpec::InState(state) => row.current_state == state,
        }
    }
}

#[derive(Clone, Debug)]
enum SourceSpec {
    Steps(Vec<Pick>),
    Task(Index),
    TaskSteps(Index, Vec<Pick>),
    Tasks(Vec<Pick>),
}

#[derive(Clone, Debug)]
struct BatchCase {
    case: Case,
    /// Steps for `for_steps`.
    step_picks: Vec<Pick>,
    /// Steps for `for_task_steps`, one list per task (cycled).
    task_step_picks: Vec<Vec<Pick>>,
    /// Extra tasks for `find_many` and `for_tasks`.
    task_picks: Vec<Pick>,
    /// Random sources with random sets of filters.
    filtered: Vec<(SourceSpec, Vec<FilterSpec>)>,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        4 => any::<Index>().prop_map(Pick::Known),
        1 => (0u8..20).prop_map(Pick::Unknown),
    ]
}

fn picks() -> impl Strategy<Value = Vec<Pick>> {
    prop::collection::vec(pick(), 1..16)
}

fn filter_spec() -> impl Strategy<Value = FilterSpec> {
    prop::sample::select(FilterSpec::every())
}

fn source_spec() -> impl Strategy<Value = SourceSpec> {
    prop_oneof![
        picks().prop_map(SourceSpec::Steps),
        any::<Index>().prop_map(SourceSpec::Task),
        (any::<Index>(), picks()).prop_map(|(task, steps)| SourceSpec::TaskSteps(task, steps)),
        prop::collection::vec(pick(), 0..5).prop_map(SourceSpec::Tasks),
    ]
}

fn batch_case() -> impl Strategy<Value = BatchCase> {
    (
        histories::case(MAX_STEPS),
        picks(),
        prop::collection::vec(picks(), MAX_TASKS),
        prop::collection::vec(pick(), 0..6),
        prop::collection::vec(
            (source_spec(), prop::collection::vec(filter_spec(), 1..=3)),
            1..=4,
        ),
    )
        .prop_map(
            |(case, step_picks, task_step_picks, task_picks, filtered)| BatchCase {
                case,
                step_picks,
                task_step_picks,
                task_picks,
                filtered,
            },
        )
}

/// The ids `picks` stand for: known ones from `ids`, unknown ones beyond
/// `max(ids)` or not positive. With no `ids` (a case whose tasks have no
/// steps), a known pick is unknown too.
fn resolve(picks: &[Pick], ids: &[i64]) -> Vec<i64> {
    let max = ids.iter().copied().max().unwrap_or(0);
    picks
        .iter()
        .map(|pick| match *pick {
            Pick::Known(index) if !ids.is_empty() => *index.get(ids),
            Pick::Known(_) => max + 1000,
            Pick::Unknown(0) => 0,
            Pick::Unknown(1) => -1,
            Pick::Unknown(n) => max + 1000 + i64::from(n),
        })
        .collect()
}

fn check_forms_agree(session: &Session, batch: &BatchCase) -> Result<(), TestCaseError> {
    session.rolled_back(|conn| {
        let built = build(conn, &batch.case);
        let now = support::utc_now(conn);
        let mut problems = Vec::new();
        // The unfiltered rows, all forms. The ids go in backwards and twice:
        // rows come out once each, ordered by (task_id, workflow_step_id).
        let mut every_step_twice: Vec<i64> = built.step_ids.iter().rev().copied().collect();
        every_step_twice.extend(&built.step_ids);
        let all = load(StepReadinessStatus::for_steps(&every_step_twice), conn);
        let keys: Vec<(i64, i64)> = all
            .iter()
            .map(|row| (row.task_id, row.workflow_step_id))
            .collect();
        let mut expected_keys: Vec<(i64, i64)> = built
            .world
            .steps
            .iter()
            .map(|step| (step.task_id, step.workflow_step_id))
            .collect();
        expected_keys.sort_unstable();
        if keys != expected_keys {
            problems.push(format!(
                "for_steps(every step, backwards and twice): rows (task_id, workflow_step_id) \
                 {keys:?}, expected {expected_keys:?}\n"
            ));
        }
        let mut check =
            |what: String, actual: &[StepReadinessStatus], expected: &[StepReadinessStatus]| {
                problems.extend(compare(&what, &built, actual, expected).err());
            };

        let by_tasks = load(StepReadinessStatus::for_tasks(&built.task_ids), conn);
        check(
            "for_tasks(every task) vs for_steps(every step)".into(),
            &by_tasks,
            &all,
        );
        let mut messy_task_ids = resolve(&batch.task_picks, &built.task_ids);
        messy_task_ids.extend(built.task_ids.iter().rev());
        let by_messy_tasks = load(StepReadinessStatus::for_tasks(&messy_task_ids), conn);
        check(
            format!("for_tasks({messy_task_ids:?}) vs for_steps(every step)"),
            &by_messy_tasks,
            &all,
        );
        let mut concatenated = Vec::new();
        for &task_id in &built.task_ids {
            concatenated.extend(load(StepReadinessStatus::for_task(task_id), conn));
        }
        check(
            "for_task(t) for each t, concatenated, vs for_steps(every step)".into(),
            &concatenated,
            &all,
        );

        // Subsets, with duplicates and unknown ids.
        let subset = resolve(&batch.step_picks, &built.step_ids);
        let wanted: BTreeSet<i64> = subset.iter().copied().collect();
        let expected: Vec<StepReadinessStatus> = all
            .iter()
            .filter(|row| wanted.contains(&row.workflow_step_id))
            .cloned()
            .collect();
        check(
            format!("for_steps({subset:?})"),
            &load(StepReadinessStatus::for_steps(&subset), conn),
            &expected,
        );
        for (position, &task_id) in built.task_ids.iter().enumerate() {
            let picks = &batch.task_step_picks[position % batch.task_step_picks.len()];
            let subset = resolve(picks, &built.step_ids);
            let wanted: BTreeSet<i64> = subset.iter().copied().collect();
            let expected: Vec<StepReadinessStatus> = all
                .iter()
                .filter(|row| row.task_id == task_id && wanted.contains(&row.workflow_step_id))
                .cloned()
                .collect();
            check(
                format!("for_task_steps({task_id}, {subset:?})"),
                &load(StepReadinessStatus::for_task_steps(task_id, &subset), conn),
                &expected,
            );
        }
        check(
            "for_steps([])".into(),
            &load(StepReadinessStatus::for_steps(&[]), conn),
            &[],
        );
        check(
            "for_tasks([])".into(),
            &load(StepReadinessStatus::for_tasks(&[]), conn),
            &[],
        );

        // Every filter alone, then random sources with random filter sets.
        for filter in FilterSpec::every() {
            let expected: Vec<StepReadinessStatus> = all
                .iter()
                .filter(|row| filter.holds(row, &built.world, now))
                .cloned()
                .collect();
            check(
                format!("for_tasks(every task) filtered by {filter:?}"),
                &load(
                    filter.apply(StepReadinessStatus::for_tasks(&built.task_ids)),
                    conn,
                ),
                &expected,
            );
        }
        for (source, filters) in &batch.filtered {
            let (query, unfiltered): (StepReadinessQuery, Vec<StepReadinessStatus>) = match source {
                SourceSpec::Steps(picks) => {
                    let ids = resolve(picks, &built.step_ids);
                    let wanted: BTreeSet<i64> = ids.iter().copied().collect();
                    (
                        StepReadinessStatus::for_steps(&ids),
                        all.iter()
                            .filter(|row| wanted.contains(&row.workflow_step_id))
                            .cloned()
                            .collect(),
                    )
                }
                SourceSpec::Task(index) => {
                    let task_id = *index.get(&built.task_ids);
                    (
                        StepReadinessStatus::for_task(task_id),
                        all.iter()
                            .filter(|row| row.task_id == task_id)
                            .cloned()
                            .collect(),
                    )
                }
                SourceSpec::TaskSteps(index, picks) => {
                    let task_id = *index.get(&built.task_ids);
                    let ids = resolve(picks, &built.step_ids);
                    let wanted: BTreeSet<i64> = ids.iter().copied().collect();
                    (
                        StepReadinessStatus::for_task_steps(task_id, &ids),
                        all.iter()
                            .filter(|row| {
                                row.task_id == task_id && wanted.contains(&row.workflow_step_id)
                            })
                            .cloned()
                            .collect(),
                    )
                }
                SourceSpec::Tasks(picks) => {
                    let ids = resolve(picks, &built.task_ids);
                    let wanted: BTreeSet<i64> = ids.iter().copied().collect();
                    (
                        StepReadinessStatus::for_tasks(&ids),
                        all.iter()
                            .filter(|row| wanted.contains(&row.task_id))
                            .cloned()
                            .collect(),
                    )
                }
            };
            let query = filters
                .iter()
                .fold(query, |query, filter| filter.apply(query));
            let expected: Vec<StepReadinessStatus> = unfiltered
                .into_iter()
                .filter(|row| {
                    filters
                        .iter()
                        .all(|filter| filter.holds(row, &built.world, now))
                })
                .collect();
            check(
                format!("{source:?} filtered by {filters:?}"),
                &load(query, conn),
                &expected,
            );
        }

        // Execution contexts: single and batch forms.
        let contexts = TaskExecutionContext::find_many(conn, &built.task_ids).expect("find_many");
        let mut context_problems = Vec::new();
        let messy_contexts =
            TaskExecutionContext::find_many(conn, &messy_task_ids).expect("find_many");
        context_problems.extend(
            compare(
                &format!("find_many({messy_task_ids:?}) vs find_many(every task)"),
                &built,
                &messy_contexts,
                &contexts,
            )
            .err(),
        );
        let mut singles = Vec::new();
        for &task_id in &built.task_ids {
            singles.extend(TaskExecutionContext::find(conn, task_id).expect("find"));
        }
        context_problems.extend(
            compare(
                "find(t) for each t vs find_many(every task)",
                &built,
                &singles,
                &contexts,
            )
            .err(),
        );
        let unknown = resolve(&[Pick::Unknown(7)], &built.task_ids)[0];
        let single_unknown: Vec<TaskExecutionContext> = TaskExecutionContext::find(conn, unknown)
            .expect("find")
            .into_iter()
            .collect();
        context_problems
            .extend(compare(&format!("find({unknown})"), &built, &single_unknown, &[]).err());
        let none = TaskExecutionContext::find_many(conn, &[]).expect("find_many");
        context_problems.extend(compare("find_many([])", &built, &none, &[]).err());

        problems.extend(context_problems);
        failure(&built, &problems)
    })
}

#[test]
fn single_and_batch_forms_agree() {
    let session = Session::new();
    run_property(BATCH_CASES, batch_case(), |batch| {
        check_forms_agree(&session, &batch)
    });
}

// Fixed cases the random ones rarely reach ----------------------------------------

/// Percentages that need rounding at the third decimal (1/32 = 3.125%) and a
/// task without steps, against the reference.
#[test]
fn completion_percentage_rounds_like_the_reference() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    conn.test_transaction::<_, tasker_diesel::Error, _>(|conn| {
        let fixture = support::task_with_steps(conn, 32);
        let task = TaskInput {
            task_id: fixture.task.task_id,
            named_task_id: fixture.task.named_task_id,
            current_state: None,
        };
        for completed in 0..=fixture.steps.len() {
            if completed > 0 {
                let state = if completed % 2 == 0 {
                    StepState::Complete
                } else {
                    StepState::ResolvedManually
                };
                support::transition_step(
                    conn,
                    fixture.steps[completed - 1].workflow_step_id,
                    state,
                );
            }
            let context =
                TaskExecutionContext::find(conn, task.task_id)?.expect("the task's context");
            let expected = oracle::completion_percentage(completed as i64, 32);
            assert_eq!(
                context.completion_percentage, expected,
                "{completed} of 32 complete"
            );
            assert_eq!(context.completed_steps, completed as i64);
        }

        let empty = support::task_with_steps(conn, 0);
        let world = World {
            tasks: vec![TaskInput {
                task_id: empty.task.task_id,
                named_task_id: empty.task.named_task_id,
                current_state: None,
            }],
            steps: Vec::new(),
            edges: Vec::new(),
            now: support::utc_now(conn),
        };
        let context = TaskExecutionContext::find(conn, empty.task.task_id)?;
        assert_eq!(
            context.into_iter().collect::<Vec<_>>(),
            oracle::contexts(&world)
        );
        Ok(())
    });
}
