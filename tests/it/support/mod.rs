//! Rows that many tests need: a catalog, a task and its steps.

use std::fmt::Debug;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use tasker_diesel::models::*;
use tasker_diesel::schema::*;
use tasker_diesel::{Error, Refusal, StepState, TaskState};

/// A task template with `step_count` step templates, a task of it and one
/// step instance per template.
pub struct Fixture {
    pub named_task: NamedTask,
    pub named_steps: Vec<NamedStep>,
    pub task: Task,
    pub steps: Vec<WorkflowStep>,
}

impl Fixture {
    /// The ids of the task's steps, in creation order.
    pub fn step_ids(&self) -> Vec<i64> {
        self.steps
            .iter()
            .map(|step| step.workflow_step_id)
            .collect()
    }
}

/// Inserts the catalog rows (once per database) and a new task with
/// `step_count` steps and no edges.
pub fn task_with_steps(conn: &mut PgConnection, step_count: usize) -> Fixture {
    let namespace: TaskNamespace = insert_or_find_namespace(conn);
    let system: DependentSystem = diesel::insert_into(tasker_dependent_systems::table)
        .values(NewDependentSystem {
            name: "billing",
            description: None,
        })
        .on_conflict(tasker_dependent_systems::name)
        .do_update()
        .set(tasker_dependent_systems::name.eq(tasker_dependent_systems::name))
        .get_result(conn)
        .expect("dependent system");
    let named_task: NamedTask = diesel::insert_into(tasker_named_tasks::table)
        .values(NewNamedTask {
            task_namespace_id: namespace.task_namespace_id,
            name: "process_order",
            version: "1.0.0",
            description: None,
            configuration: None,
        })
        .on_conflict((
            tasker_named_tasks::task_namespace_id,
            tasker_named_tasks::name,
            tasker_named_tasks::version,
        ))
        .do_update()
        .set(tasker_named_tasks::name.eq(tasker_named_tasks::name))
        .get_result(conn)
        .expect("named task");
    let named_steps: Vec<NamedStep> = (0..step_count)
        .map(|index| {
            diesel::insert_into(tasker_named_steps::table)
                .values(NewNamedStep {
                    dependent_system_id: system.dependent_system_id,
                    name: &format!("step_{index}"),
                    description: None,
                })
                .on_conflict((
                    tasker_named_steps::dependent_system_id,
                    tasker_named_steps::name,
                ))
                .do_update()
                .set(tasker_named_steps::name.eq(tasker_named_steps::name))
                .get_result(conn)
                .expect("named step")
        })
        .collect();
    let identity = format!("task-{}", next_task_number(conn));
    let task: Task = diesel::insert_into(tasker_tasks::table)
        .values(NewTask::new(named_task.named_task_id, &identity))
        .get_result(conn)
        .expect("task");
    let new_steps: Vec<NewWorkflowStep> = named_steps
        .iter()
        .map(|named_step| NewWorkflowStep {
            task_id: task.task_id,
            named_step_id: named_step.named_step_id,
            ..NewWorkflowStep::default()
        })
        .collect();
    let steps = diesel::insert_into(tasker_workflow_steps::table)
        .values(&new_steps)
        .get_results(conn)
        .expect("workflow steps");
    Fixture {
        named_task,
        named_steps,
        task,
        steps,
    }
}

fn insert_or_find_namespace(conn: &mut PgConnection) -> TaskNamespace {
    diesel::insert_into(tasker_task_namespaces::table)
        .values(NewTaskNamespace {
            name: "default",
            description: None,
        })
        .on_conflict(tasker_task_namespaces::name)
        .do_update()
        .set(tasker_task_namespaces::name.eq(tasker_task_namespaces::name))
        .get_result(conn)
        .expect("namespace")
}

fn next_task_number(conn: &mut PgConnection) -> i64 {
    tasker_tasks::table
        .count()
        .get_result(conn)
        .expect("count tasks")
}

/// Inserts the edge `from -> to` (parent to child).
pub fn add_edge(conn: &mut PgConnection, from: i64, to: i64) -> QueryResult<WorkflowStepEdge> {
    diesel::insert_into(tasker_workflow_step_edges::table)
        .values(NewWorkflowStepEdge {
            from_step_id: from,
            to_step_id: to,
            name: "provides",
        })
        .get_result(conn)
}

/// Moves the step to `to`: clears the current transition's `most_recent` and
/// appends the new one with the next `sort_key`, as the write path will.
pub fn transition_step(conn: &mut PgConnection, step_id: i64, to: StepState) {
    use tasker_workflow_step_transitions::dsl as t;
    let current: Option<(StepState, i32)> = t::tasker_workflow_step_transitions
        .filter(t::workflow_step_id.eq(step_id).and(t::most_recent))
        .select((t::to_state, t::sort_key))
        .first(conn)
        .optional()
        .expect("current step transition");
    diesel::update(t::tasker_workflow_step_transitions)
        .filter(t::workflow_step_id.eq(step_id).and(t::most_recent))
        .set(t::most_recent.eq(false))
        .execute(conn)
        .expect("clear most_recent");
    diesel::insert_into(t::tasker_workflow_step_transitions)
        .values(NewWorkflowStepTransition {
            workflow_step_id: step_id,
            to_state: to,
            from_state: current.map(|(state, _)| state),
            metadata: None,
            sort_key: current.map_or(1, |(_, key)| key + 1),
            most_recent: true,
        })
        .execute(conn)
        .expect("insert step transition");
}

/// Moves the step through each of `states` in turn.
pub fn step_history(conn: &mut PgConnection, step_id: i64, states: &[StepState]) {
    for state in states {
        transition_step(conn, step_id, *state);
    }
}

/// Moves the task to `to`, like [`transition_step`].
pub fn transition_task(conn: &mut PgConnection, task_id: i64, to: TaskState) {
    use tasker_task_transitions::dsl as t;
    let current: Option<(TaskState, i32)> = t::tasker_task_transitions
        .filter(t::task_id.eq(task_id).and(t::most_recent))
        .select((t::to_state, t::sort_key))
        .first(conn)
        .optional()
        .expect("current task transition");
    diesel::update(t::tasker_task_transitions)
        .filter(t::task_id.eq(task_id).and(t::most_recent))
        .set(t::most_recent.eq(false))
        .execute(conn)
        .expect("clear most_recent");
    diesel::insert_into(t::tasker_task_transitions)
        .values(NewTaskTransition {
            task_id,
            to_state: to,
            from_state: current.map(|(state, _)| state),
            metadata: None,
            sort_key: current.map_or(1, |(_, key)| key + 1),
            most_recent: true,
        })
        .execute(conn)
        .expect("insert task transition");
}

/// Sets the `created_at` of the step's current transition.
pub fn current_transition_at(conn: &mut PgConnection, step_id: i64, at: NaiveDateTime) {
    use tasker_workflow_step_transitions::dsl as t;
    diesel::update(t::tasker_workflow_step_transitions)
        .filter(t::workflow_step_id.eq(step_id).and(t::most_recent))
        .set(t::created_at.eq(at))
        .execute(conn)
        .expect("move current transition in time");
}

/// The transaction's `now()` in UTC, as the readiness functions see it.
pub fn utc_now(conn: &mut PgConnection) -> NaiveDateTime {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Timestamp>(
        "now() AT TIME ZONE 'UTC'",
    ))
    .get_result(conn)
    .expect("now")
}

/// Four steps in a diamond: 0 → 1, 0 → 2, 1 → 3, 2 → 3.
pub fn diamond(conn: &mut PgConnection) -> Fixture {
    let fixture = task_with_steps(conn, 4);
    let id = |index: usize| fixture.steps[index].workflow_step_id;
    for (from, to) in [(0, 1), (0, 2), (1, 3), (2, 3)] {
        add_edge(conn, id(from), id(to)).expect("diamond edge");
    }
    fixture
}

/// A connection inside a transaction that is never committed, so `now()`
/// is the same instant for everything the test writes and reads.
pub fn test_connection(db: &tasker_diesel::testing::TestDatabase) -> PgConnection {
    let mut conn = db.connection();
    conn.begin_test_transaction()
        .expect("begin test transaction");
    conn
}

/// Applies `changes` (a column assignment or a tuple of them) to one step.
pub fn update_step<Changes>(conn: &mut PgConnection, step_id: i64, changes: Changes)
where
    Changes: AsChangeset<Target = tasker_workflow_steps::table>,
    diesel::dsl::Update<diesel::dsl::Find<tasker_workflow_steps::table, i64>, Changes>:
        diesel::query_dsl::methods::ExecuteDsl<PgConnection>,
{
    diesel::update(tasker_workflow_steps::table.find(step_id))
        .set(changes)
        .execute(conn)
        .expect("update step");
}

/// Everything the write path can touch, to prove that a refusal wrote nothing.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub tasks: Vec<Task>,
    pub steps: Vec<WorkflowStep>,
    pub step_transitions: Vec<WorkflowStepTransition>,
    pub task_transitions: Vec<TaskTransition>,
}

/// Every row of the tables the write path touches.
pub fn snapshot(conn: &mut PgConnection) -> Snapshot {
    Snapshot {
        tasks: tasker_tasks::table
            .order(tasker_tasks::task_id)
            .select(Task::as_select())
            .load(conn)
            .expect("tasks"),
        steps: tasker_workflow_steps::table
            .order(tasker_workflow_steps::workflow_step_id)
            .select(WorkflowStep::as_select())
            .load(conn)
            .expect("steps"),
        step_transitions: tasker_workflow_step_transitions::table
            .order(tasker_workflow_step_transitions::id)
            .select(WorkflowStepTransition::as_select())
            .load(conn)
            .expect("step transitions"),
        task_transitions: tasker_task_transitions::table
            .order(tasker_task_transitions::id)
            .select(TaskTransition::as_select())
            .load(conn)
            .expect("task transitions"),
    }
}

/// Row counts first (a clearer failure), then every row.
pub fn assert_nothing_written(before: &Snapshot, after: &Snapshot, what: &str) {
    assert_eq!(
        after.step_transitions.len(),
        before.step_transitions.len(),
        "{what}: step transition rows"
    );
    assert_eq!(
        after.task_transitions.len(),
        before.task_transitions.len(),
        "{what}: task transition rows"
    );
    assert_eq!(after, before, "{what}: rows changed");
}

/// The refusal inside a result that must be one.
pub fn refusal<T: Debug>(result: tasker_diesel::Result<T>) -> Refusal {
    match result {
        Err(Error::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The step's row as stored.
pub fn step_row(conn: &mut PgConnection, step_id: i64) -> WorkflowStep {
    tasker_workflow_steps::table
        .find(step_id)
        .select(WorkflowStep::as_select())
        .first(conn)
        .expect("step row")
}

/// The task's row as stored.
pub fn task_row(conn: &mut PgConnection, task_id: i64) -> Task {
    tasker_tasks::table
        .find(task_id)
        .select(Task::as_select())
        .first(conn)
        .expect("task row")
}

/// The step's transitions, oldest first.
pub fn step_transitions(conn: &mut PgConnection, step_id: i64) -> Vec<WorkflowStepTransition> {
    tasker_workflow_step_transitions::table
        .filter(tasker_workflow_step_transitions::workflow_step_id.eq(step_id))
        .order(tasker_workflow_step_transitions::sort_key)
        .select(WorkflowStepTransition::as_select())
        .load(conn)
        .expect("step history")
}

/// The task's transitions, oldest first.
pub fn task_transitions(conn: &mut PgConnection, task_id: i64) -> Vec<TaskTransition> {
    tasker_task_transitions::table
        .filter(tasker_task_transitions::task_id.eq(task_id))
        .order(tasker_task_transitions::sort_key)
        .select(TaskTransition::as_select())
        .load(conn)
        .expect("task history")
}

/// One way in which maintained readiness is wrong, as [`readiness_discrepancies`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Discrepancy {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub task_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub workflow_step_id: Option<i64>,
    /// `drift`, `maintained only`, `recomputed only` or `row count`.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub detail: String,
}

/// Everything that disagrees between the maintained readiness and its
/// recomputation from the history, for the steps of `task_ids` (`None`: of
/// every task): the rows of `tasker_readiness_drift`, the rows of
/// `tasker_step_readiness` that `tasker_step_readiness_from_history` does not
/// return and the other way round (`EXCEPT ALL` both ways), and a row when
/// `tasker_step_readiness` does not return exactly one row per step.
///
/// One statement, so one snapshot and one `now()` whatever the isolation
/// level, and consistent even while other connections write.
pub fn readiness_discrepancies(
    conn: &mut PgConnection,
    task_ids: Option<&[i64]>,
) -> QueryResult<Vec<Discrepancy>> {
    use diesel::sql_types::{Array, BigInt, Nullable};
    diesel::sql_query(
        "WITH steps AS (
             SELECT coalesce(array_agg(s.workflow_step_id), '{}') AS ids, count(*) AS n
             FROM tasker_workflow_steps AS s
             WHERE $1::bigint[] IS NULL OR s.task_id = ANY ($1::bigint[])
         ), maintained AS (
             SELECT * FROM tasker_step_readiness(NULL, (SELECT ids FROM steps))
         ), recomputed AS (
             SELECT * FROM tasker_step_readiness_from_history(NULL, (SELECT ids FROM steps))
         )
         SELECT task_id, workflow_step_id, kind, detail FROM (
             SELECT 0 AS part, d.task_id, d.workflow_step_id, 'drift' AS kind,
                    format('%s: maintained %s, recomputed %s', d.field,
                           coalesce(d.maintained, 'NULL'), coalesce(d.recomputed, 'NULL'))
                        AS detail
             FROM tasker_readiness_drift($1::bigint[]) AS d
             UNION ALL
             SELECT 1, x.task_id, x.workflow_step_id, 'maintained only', row_to_json(x)::text
             FROM (SELECT * FROM maintained EXCEPT ALL SELECT * FROM recomputed) AS x
             UNION ALL
             SELECT 2, x.task_id, x.workflow_step_id, 'recomputed only', row_to_json(x)::text
             FROM (SELECT * FROM recomputed EXCEPT ALL SELECT * FROM maintained) AS x
             UNION ALL
             SELECT 3, NULL, NULL, 'row count',
                    format('tasker_step_readiness returned %s rows for %s steps',
                           (SELECT count(*) FROM maintained), steps.n)
             FROM steps
             WHERE (SELECT count(*) FROM maintained) <> steps.n
         ) AS found
         ORDER BY part = 0 DESC, task_id, workflow_step_id NULLS FIRST, part, detail",
    )
    .bind::<Nullable<Array<BigInt>>, _>(task_ids)
    .load(conn)
}

/// Ok when the maintained readiness of the steps of `task_ids` (`None`: of
/// every task) has no drift and equals its recomputation from the history
/// (see [`readiness_discrepancies`]); else a message listing what is wrong.
pub fn check_maintained_readiness(
    conn: &mut PgConnection,
    task_ids: Option<&[i64]>,
) -> Result<(), String> {
    let found = readiness_discrepancies(conn, task_ids)
        .map_err(|error| format!("checking maintained readiness: {error}"))?;
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found
        .iter()
        .map(|d| {
            let task = d
                .task_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string());
            let step = d
                .workflow_step_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string());
            format!("  task {task} step {step} {}: {}", d.kind, d.detail)
        })
        .collect();
    Err(format!(
        "maintained readiness disagrees with the history ({} findings):\n{}",
        found.len(),
        lines.join("\n")
    ))
}

/// Panics with the findings when [`check_maintained_readiness`] finds any.
#[track_caller]
pub fn assert_maintained_readiness(conn: &mut PgConnection, task_ids: Option<&[i64]>) {
    if let Err(message) = check_maintained_readiness(conn, task_ids) {
        panic!("{message}");
    }
}

/// The server process id of `conn`'s session.
pub fn backend_pid(conn: &mut PgConnection) -> i32 {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(conn)
    .expect("backend pid")
}

/// Waits until backend `pid` is blocked on a lock (at most 30 s), so a test
/// can release the lock knowing the other session is inside its statement.
pub fn wait_until_blocked(conn: &mut PgConnection, pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: bool = diesel::select(
            diesel::dsl::sql::<diesel::sql_types::Bool>(
                "EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid = ",
            )
            .bind::<diesel::sql_types::Integer, _>(pid)
            .sql(")"),
        )
        .get_result(conn)
        .expect("pg_stat_activity");
        if waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid} never blocked on a lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
