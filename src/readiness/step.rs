//! Step readiness rows and the scopes that select them.

use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel::{PgConnection, QueryResult, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};

use crate::arguments;
use crate::call::Cached;
use crate::enums::StepState;

/// One row of `get_step_readiness_status` and its companions: whether a step
/// may run now, and why not.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct StepReadinessStatus {
    /// The step (`tasker_workflow_steps.workflow_step_id`).
    #[diesel(sql_type = BigInt)]
    pub workflow_step_id: i64,
    /// The task the step belongs to.
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    /// The step template (`tasker_named_steps`) the step is an instance of.
    #[diesel(sql_type = Integer)]
    pub named_step_id: i32,
    /// The step template's name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The state of the latest transition; `Pending` when there is none
    /// (`text` in SQL).
    #[diesel(sql_type = Text)]
    pub current_state: StepState,
    /// Every parent is `Complete` or `ResolvedManually` (true for a root).
    #[diesel(sql_type = Bool)]
    pub dependencies_satisfied: bool,
    /// Attempts are below the limit, and a non-retryable step has none.
    #[diesel(sql_type = Bool)]
    pub retry_eligible: bool,
    /// The step may be handed to a worker now.
    #[diesel(sql_type = Bool)]
    pub ready_for_execution: bool,
    /// When the step entered its current `Error` state; `None` otherwise.
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub last_failure_at: Option<NaiveDateTime>,
    /// The later of the requested and the failure backoff (UTC), if any applies.
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub next_retry_at: Option<NaiveDateTime>,
    /// The step's parents (the edges to it); -1 for a step of an adopted database that the readiness backfill has not reached yet.
    #[diesel(sql_type = Integer)]
    pub total_parents: i32,
    /// Parents that are `Complete` or `ResolvedManually`.
    #[diesel(sql_type = Integer)]
    pub completed_parents: i32,
    /// Stored attempts, NULL read as 0.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Stored retry limit, NULL read as 3.
    #[diesel(sql_type = Integer)]
    pub retry_limit: i32,
    /// Delay the step asked for (for example from a `Retry-After`), in seconds from `last_attempted_at`; `None` when it asked for none.
    #[diesel(sql_type = Nullable<Integer>)]
    pub backoff_request_seconds: Option<i32>,
    /// When the latest execution started (UTC); `None` before the first.
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub last_attempted_at: Option<NaiveDateTime>,
}

impl StepReadinessStatus {
    /// Readiness of the given steps (`get_step_readiness_status(step_ids)`):
    /// one row per existing step, unknown ids skipped, duplicates once.
    pub fn for_steps(step_ids: &[i64]) -> StepReadinessQuery {
        StepReadinessQuery::new(Source::Steps(step_ids.to_vec()))
    }

    /// Readiness of every step of one task (`get_step_readiness_status(task_id)`).
    pub fn for_task(task_id: i64) -> StepReadinessQuery {
        StepReadinessQuery::new(Source::Task {
            task_id,
            step_ids: None,
        })
    }

    /// Readiness of those `step_ids` that belong to `task_id`, the
    /// Tasker-compatible `get_step_readiness_status(task_id, step_ids)`.
    pub fn for_task_steps(task_id: i64, step_ids: &[i64]) -> StepReadinessQuery {
        StepReadinessQuery::new(Source::Task {
            task_id,
            step_ids: Some(step_ids.to_vec()),
        })
    }

    /// Readiness of every step of the given tasks
    /// (`get_step_readiness_status_batch(task_ids)`).
    pub fn for_tasks(task_ids: &[i64]) -> StepReadinessQuery {
        StepReadinessQuery::new(Source::Tasks(task_ids.to_vec()))
    }

    /// Readiness of the given steps recomputed from their transitions and
    /// edges (`tasker_step_readiness_from_history`), ignoring the maintained
    /// state the other queries read: the same rows when nothing has drifted.
    /// It explains a step (which gate holds it, from the history) and checks
    /// the maintained state; it costs index probes per step and parent.
    pub fn from_history(step_ids: &[i64]) -> StepReadinessQuery {
        StepReadinessQuery::new(Source::History(step_ids.to_vec()))
    }
}

/// Which SQL function chooses the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Steps(Vec<i64>),
    Task {
        task_id: i64,
        step_ids: Option<Vec<i64>>,
    },
    Tasks(Vec<i64>),
    History(Vec<i64>),
}

/// A condition on readiness rows, evaluated in SQL. The order of the variants
/// is the order in the statement, so the same set of filters always gives
/// the same SQL text (and one prepared statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Filter {
    ReadyForExecution,
    BlockedByDependencies,
    WaitingForBackoff,
    PermanentlyFailed,
    InState(StepState),
}

impl Filter {
    fn walk_ast<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        match self {
            Filter::ReadyForExecution => out.push_sql("readiness.ready_for_execution"),
            Filter::BlockedByDependencies => out.push_sql("NOT readiness.dependencies_satisfied"),
            // Runnable (the schema's rule, applied to the row's state and
            // parent counts, whichever source computed them) and gated.
            Filter::WaitingForBackoff => out.push_sql(
                "(readiness.next_retry_at > (now() AT TIME ZONE 'UTC') AND EXISTS (\
                 SELECT FROM tasker_workflow_steps AS step \
                 WHERE step.workflow_step_id = readiness.workflow_step_id \
                 AND tasker_step_runnable(readiness.current_state::tasker_step_state, \
                 step.processed, step.in_process, readiness.total_parents, \
                 readiness.completed_parents, readiness.attempts, readiness.retry_limit, \
                 step.retryable)))",
            ),
            Filter::PermanentlyFailed => {
                out.push_sql("(readiness.current_state = 'error' AND NOT readiness.retry_eligible)")
            }
            Filter::InState(state) => {
                out.push_sql("readiness.current_state = ");
                out.push_bind_param::<Text, _>(state.as_str())?;
            }
        }
        Ok(())
    }
}

/// Readiness rows of some steps, narrowed by filters that run in SQL; load
/// them with [`StepReadinessQuery::load`]. Rows come ordered by
/// `(task_id, workflow_step_id)`.
///
/// ```no_run
/// # fn demo(conn: &mut diesel::PgConnection) -> tasker_diesel::Result<()> {
/// use tasker_diesel::readiness::StepReadinessStatus;
///
/// let ready = StepReadinessStatus::for_task(42).ready_for_execution().load(conn)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a query does nothing until it is loaded"]
pub struct StepReadinessQuery {
    source: Source,
    filters: Vec<Filter>,
}

impl StepReadinessQuery {
    fn new(source: Source) -> Self {
        StepReadinessQuery {
            source,
            filters: Vec::new(),
        }
    }

    fn with(mut self, filter: Filter) -> Self {
        if let Err(position) = self.filters.binary_search(&filter) {
            self.filters.insert(position, filter);
        }
        self
    }

    /// Only steps that may run now.
    pub fn ready_for_execution(self) -> Self {
        self.with(Filter::ReadyForExecution)
    }

    /// Only steps with a parent that is not yet complete or resolved.
    pub fn blocked_by_dependencies(self) -> Self {
        self.with(Filter::BlockedByDependencies)
    }

    /// Only steps that a time gate alone holds back: every other condition of
    /// `ready_for_execution` holds (the schema's `tasker_step_runnable`:
    /// `Pending` or `Error`, not processed, not in process, parents done,
    /// retry eligible) and `next_retry_at` is still in the future. A step
    /// that also waits for a parent is [`blocked_by_dependencies`]
    /// instead.
    ///
    /// [`blocked_by_dependencies`]: Self::blocked_by_dependencies
    pub fn waiting_for_backoff(self) -> Self {
        self.with(Filter::WaitingForBackoff)
    }

    /// Only steps in `Error` that may not be retried.
    pub fn permanently_failed(self) -> Self {
        self.with(Filter::PermanentlyFailed)
    }

    /// Only steps whose current state is `state`.
    pub fn in_state(self, state: StepState) -> Self {
        self.with(Filter::InState(state))
    }

    /// Runs the query. An id list longer than
    /// [`MAX_IDS_PER_CALL`](crate::MAX_IDS_PER_CALL) is refused with
    /// [`Refusal::InvalidArgument`](crate::Refusal::InvalidArgument).
    pub fn load(self, conn: &mut PgConnection) -> crate::Result<Vec<StepReadinessStatus>> {
        match &self.source {
            Source::Steps(ids) | Source::History(ids) => arguments::ids("step_ids", ids.len())?,
            Source::Task { step_ids, .. } => {
                arguments::ids("step_ids", step_ids.as_ref().map_or(0, Vec::len))?
            }
            Source::Tasks(ids) => arguments::ids("task_ids", ids.len())?,
        }
        Ok(Cached(self).load(conn)?)
    }
}

/// The statement's text depends only on the source and the set of filters,
/// so each such shape is one prepared statement per connection.
impl QueryFragment<Pg> for StepReadinessQuery {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT readiness.* FROM ");
        match &self.source {
            Source::Steps(step_ids) => {
                out.push_sql("get_step_readiness_status(");
                out.push_bind_param::<Array<BigInt>, _>(step_ids)?;
            }
            Source::Task { task_id, step_ids } => {
                out.push_sql("get_step_readiness_status(");
                out.push_bind_param::<BigInt, _>(task_id)?;
                out.push_sql(", ");
                out.push_bind_param::<Nullable<Array<BigInt>>, _>(step_ids)?;
            }
            Source::Tasks(task_ids) => {
                out.push_sql("get_step_readiness_status_batch(");
                out.push_bind_param::<Array<BigInt>, _>(task_ids)?;
            }
            Source::History(step_ids) => {
                out.push_sql("tasker_step_readiness_from_history(NULL, ");
                out.push_bind_param::<Array<BigInt>, _>(step_ids)?;
            }
        }
        out.push_sql(") AS readiness");
        for (index, filter) in self.filters.iter().enumerate() {
            out.push_sql(if index == 0 { " WHERE " } else { " AND " });
            filter.walk_ast(&mut out)?;
        }
        out.push_sql(" ORDER BY readiness.task_id, readiness.workflow_step_id");
        Ok(())
    }
}
