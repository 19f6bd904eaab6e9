//! Handing ready steps to workers: claims with a lease, and the results a
//! worker reports under its claim.

use std::thread;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::sql_types::Record;
use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamp};
use diesel::{IntoSql, PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::call::FunctionCall;
use crate::enums::StepState;
use crate::functions;
use crate::jsonb::JsonbText;
use crate::models::WorkflowStepTransition;
use crate::schema::sql_types::TaskerStepState;
use crate::{arguments, Error, Refusal, Result};

/// Which steps to claim: how many, from which tasks, for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaimRequest<'a> {
    /// Only steps of these tasks; `None`: of any task, oldest task first.
    pub task_ids: Option<&'a [i64]>,
    /// At most this many steps (at least 1).
    pub max_steps: u32,
    /// How long each claim holds: whole seconds, rounded up; zero is refused.
    /// Extend it with [`extend_step_claim`] while the work goes on.
    pub lease: Duration,
    /// Stored in the transitions the claim writes (a worker id, say).
    pub metadata: Option<&'a Value>,
    /// Only steps of these kinds; `None`: of every kind. A worker that runs
    /// some kinds only leaves the others to workers that run them.
    pub kinds: Option<&'a [StepKind]>,
}

/// A kind of step a worker runs: a step name, optionally only in tasks of a
/// namespace, a task name and a version (see [`ClaimRequest::kinds`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepKind {
    /// The step's name (its step template's).
    pub step: String,
    /// Only in tasks of this namespace; `None`: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only in tasks of this name; `None`: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Only in tasks of this version; `None`: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl StepKind {
    /// Steps named `step`, in any task.
    pub fn named(step: impl Into<String>) -> Self {
        StepKind {
            step: step.into(),
            namespace: None,
            task: None,
            version: None,
        }
    }

    /// Only in tasks named `task` of namespace `namespace`.
    pub fn in_task(self, namespace: impl Into<String>, task: impl Into<String>) -> Self {
        StepKind {
            namespace: Some(namespace.into()),
            task: Some(task.into()),
            ..self
        }
    }

    /// Only in tasks of version `version`.
    pub fn version(self, version: impl Into<String>) -> Self {
        StepKind {
            version: Some(version.into()),
            ..self
        }
    }

    /// Whether a step named `step` of a task `namespace`/`task`/`version` is
    /// of this kind.
    pub fn matches(&self, step: &str, namespace: &str, task: &str, version: &str) -> bool {
        self.step == step
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.task.as_deref().is_none_or(|t| t == task)
            && self.version.as_deref().is_none_or(|v| v == version)
    }

    /// The kind as the SQL step filter takes it.
    pub(crate) fn to_json(&self) -> Value {
        let mut fields = serde_json::Map::with_capacity(4);
        fields.insert("step".to_owned(), Value::from(self.step.as_str()));
        for (key, value) in [
            ("namespace", &self.namespace),
            ("task", &self.task),
            ("version", &self.version),
        ] {
            if let Some(value) = value {
                fields.insert(key.to_owned(), Value::from(value.as_str()));
            }
        }
        Value::Object(fields)
    }

    /// How many of the optional fields it names: a kind that names more is
    /// more specific.
    pub fn specificity(&self) -> usize {
        [&self.namespace, &self.task, &self.version]
            .iter()
            .filter(|field| field.is_some())
            .count()
    }
}

impl<'a> ClaimRequest<'a> {
    /// Up to `max_steps` ready steps of any task, each leased for `lease`.
    pub fn any_task(max_steps: u32, lease: Duration) -> Self {
        ClaimRequest {
            task_ids: None,
            max_steps,
            lease,
            metadata: None,
            kinds: None,
        }
    }

    /// Up to `max_steps` ready steps of the tasks `task_ids`.
    pub fn for_tasks(task_ids: &'a [i64], max_steps: u32, lease: Duration) -> Self {
        ClaimRequest {
            task_ids: Some(task_ids),
            ..ClaimRequest::any_task(max_steps, lease)
        }
    }

    /// Stores `metadata` in the transitions the claim writes.
    pub fn with_metadata(self, metadata: &'a Value) -> Self {
        ClaimRequest {
            metadata: Some(metadata),
            ..self
        }
    }

    /// Claims only steps of `kinds` (none at all when `kinds` is empty).
    pub fn only(self, kinds: &'a [StepKind]) -> Self {
        ClaimRequest {
            kinds: Some(kinds),
            ..self
        }
    }

    /// The request as the SQL claim takes it, checked: `max_steps` at least
    /// `min_steps`, the lease and the task ids within their limits, metadata
    /// and kinds that PostgreSQL can store.
    fn binds(&self, min_steps: u32) -> Result<ClaimBinds<'a>, Refusal> {
        arguments::ids("task_ids", self.task_ids.map_or(0, <[i64]>::len))?;
        arguments::metadata("metadata", self.metadata)?;
        let step_filter = match self.kinds {
            None => None,
            Some(kinds) => {
                let filter = Value::Array(kinds.iter().map(StepKind::to_json).collect());
                arguments::json("kinds", &filter)?;
                Some(filter)
            }
        };
        Ok(ClaimBinds {
            task_ids: self.task_ids,
            max_steps: arguments::count("max_steps", self.max_steps, min_steps)?,
            lease_seconds: arguments::seconds("lease", self.lease, 1)?,
            metadata: self.metadata,
            step_filter,
        })
    }
}

/// The arguments of `claim_ready_steps`, checked ([`ClaimRequest::binds`]).
struct ClaimBinds<'a> {
    task_ids: Option<&'a [i64]>,
    max_steps: i32,
    lease_seconds: i32,
    metadata: Option<&'a Value>,
    step_filter: Option<Value>,
}

/// A step claimed for one worker, from a row of `tasker_claim_ready_steps`
/// (whose inputs are decoded row by row, see [`claim_ready_steps`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedStep {
    /// The claimed step.
    pub workflow_step_id: i64,
    /// The task the step belongs to.
    pub task_id: i64,
    /// The step template (`tasker_named_steps`) the step is an instance of.
    pub named_step_id: i32,
    /// The step's name (its step template's): what the worker should run.
    pub name: String,
    /// Which execution of the step this is, counting from 1.
    pub attempt: i32,
    /// Identifies the claim: the id of the step's `in_progress` transition.
    pub claim_id: i64,
    /// The claim holds until then (UTC) unless extended.
    pub claimed_until: NaiveDateTime,
    /// The step's `inputs`.
    pub inputs: Option<Value>,
}

impl ClaimedStep {
    /// The claim, to report the step's result under.
    pub fn claim(&self) -> Claim {
        Claim {
            workflow_step_id: self.workflow_step_id,
            claim_id: self.claim_id,
        }
    }
}

/// A worker's claim on a step. It holds while the step's `in_progress`
/// transition `claim_id` is its most recent one and the lease has not passed.
///
/// Take it from [`ClaimedStep::claim`] (or deserialize the one a worker sent
/// back) rather than building it: the two ids are both `i64`, and this type is
/// what keeps them from being passed the wrong way round to
/// [`complete_step`], [`fail_step`], [`extend_step_claim`] and the reports.
/// Ids elsewhere stay plain `i64`, as the models' columns are: a call takes at
/// most one bare id, so an id newtype would be a conversion at every query
/// without a mistake for it to prevent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The claimed step.
    pub workflow_step_id: i64,
    /// The id of the step's `in_progress` transition that the claim made.
    pub claim_id: i64,
}

/// Claims ready steps (`tasker_claim_ready_steps`): each returned step is locked
/// against other claimers, moved to `in_progress` (a failed step through
/// `pending`), counted as an attempt and leased. Two callers never get the
/// same step. Ordered by task id, then step id.
///
/// The request is checked first ([`Refusal::InvalidArgument`] naming the
/// argument): `max_steps` from 1 to `i32::MAX`, a lease from 1 s to
/// [`MAX_DURATION`](crate::MAX_DURATION), at most
/// [`MAX_IDS_PER_CALL`](crate::MAX_IDS_PER_CALL) task ids, and metadata and
/// kinds without NUL characters. Each task id costs at most one index probe
/// when its task has nothing to claim (or does not exist).
///
/// The caller gets every step the claim takes. A step whose `inputs` this
/// crate cannot decode (valid jsonb that `serde_json` refuses, such as a
/// number beyond `f64`, written by another writer) is not handed out, and
/// not left claimed either: it is failed permanently right after the claim
/// (in the caller's transaction when there is one), with `{"error":
/// {"message": ..., "undecodable_inputs": true}}`, so its task is blocked
/// and says why. The other steps of the batch are handed out as usual.
pub fn claim_ready_steps(
    conn: &mut PgConnection,
    request: &ClaimRequest<'_>,
) -> Result<Vec<ClaimedStep>> {
    let binds = request.binds(1)?;
    let rows: Vec<ClaimRow> = FunctionCall::new(
        "tasker_claim_ready_steps",
        (
            binds.task_ids.into_sql::<Nullable<Array<BigInt>>>(),
            binds.max_steps.into_sql::<Integer>(),
            binds.lease_seconds.into_sql::<Integer>(),
            binds.metadata.into_sql::<Nullable<Jsonb>>(),
            binds.step_filter.as_ref().into_sql::<Nullable<Jsonb>>(),
        ),
    )
    .load(conn)?;
    received(conn, rows)
}

/// A row of `claim_ready_steps`, its inputs not yet decoded.
#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct ClaimRow {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = BigInt)]
    task_id: i64,
    #[diesel(sql_type = Integer)]
    named_step_id: i32,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    attempt: i32,
    #[diesel(sql_type = BigInt)]
    claim_id: i64,
    #[diesel(sql_type = Timestamp)]
    claimed_until: NaiveDateTime,
    #[diesel(sql_type = Nullable<Jsonb>)]
    inputs: Option<JsonbText>,
}

impl ClaimRow {
    /// The claimed step, or its claim and why its inputs cannot be decoded.
    fn decode(self) -> std::result::Result<ClaimedStep, (Claim, String)> {
        let inputs = match self.inputs.as_ref().map(JsonbText::decode) {
            None => None,
            Some(Ok(inputs)) => Some(inputs),
            Some(Err(why)) => {
                let claim = Claim {
                    workflow_step_id: self.workflow_step_id,
                    claim_id: self.claim_id,
                };
                return Err((claim, why));
            }
        };
        Ok(ClaimedStep {
            workflow_step_id: self.workflow_step_id,
            task_id: self.task_id,
            named_step_id: self.named_step_id,
            name: self.name,
            attempt: self.attempt,
            claim_id: self.claim_id,
            claimed_until: self.claimed_until,
            inputs,
        })
    }
}

/// The steps a claim hands out: those whose inputs cannot be decoded are
/// failed permanently instead (see [`claim_ready_steps`]).
///
/// Every row decodes but for the inputs, which are decoded here one by one,
/// so one undecodable step cannot cost the caller the others. The failure
/// is written by a second statement, only when there is such a step: the
/// claim itself stays one round trip. In the caller's transaction the two
/// commit or roll back together, and an error is returned. Outside one, the
/// claim has committed by then, so the claimed steps are returned even if
/// the second statement fails (the connection was lost, say): the
/// undecodable steps then stay claimed until their lease expires, and are
/// failed when next claimed.
fn received(conn: &mut PgConnection, rows: Vec<ClaimRow>) -> Result<Vec<ClaimedStep>> {
    let mut claimed = Vec::with_capacity(rows.len());
    let mut undecodable = Vec::new();
    for row in rows {
        match row.decode() {
            Ok(step) => claimed.push(step),
            Err((claim, why)) => undecodable.push((
                claim,
                json!({
                    "message": format!("the step's inputs cannot be decoded: {why}"),
                    "undecodable_inputs": true,
                }),
            )),
        }
    }
    if !undecodable.is_empty() {
        let reports: Vec<StepReport<'_>> = undecodable
            .iter()
            .map(|(claim, error)| StepReport::fail_permanently(*claim, error))
            .collect();
        let failed = report_steps(conn, &reports).and_then(|reported| {
            reported
                .into_iter()
                .try_for_each(|step| step.result.map(drop).map_err(Error::Refused))
        });
        if let Err(error) = failed {
            if in_transaction(conn)? {
                return Err(error);
            }
        }
    }
    Ok(claimed)
}

/// Whether Diesel has a transaction open on `conn`.
fn in_transaction(conn: &mut PgConnection) -> Result<bool> {
    Ok(AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()?
        .is_some())
}

/// Records a claimed step's `results` and moves it to `complete`
/// (`tasker_complete_step`). Refused with [`crate::Refusal::ClaimLost`] or
/// [`crate::Refusal::ClaimExpired`] when the claim no longer holds.
pub fn complete_step(
    conn: &mut PgConnection,
    claim: Claim,
    results: &Value,
) -> Result<WorkflowStepTransition> {
    arguments::json("results", results)?;
    Ok(FunctionCall::new(
        "tasker_complete_step",
        (
            claim.workflow_step_id.into_sql::<BigInt>(),
            claim.claim_id.into_sql::<BigInt>(),
            results.into_sql::<Jsonb>(),
        ),
    )
    .get_result(conn)?)
}

/// Records a claimed step's failure (`tasker_fail_step`): moves it to `error` with
/// `{"error": error, "error_message": text}` as metadata: `error_message` is
/// what the Rails engine reads, `error` itself when it is a JSON string, its
/// `"message"` when it is an object with one, else its JSON text.
/// `retry_after` asks that the next attempt
/// start no earlier than that long after this one started (a `Retry-After`;
/// whole seconds, rounded up, at most [`MAX_DURATION`](crate::MAX_DURATION));
/// the exponential failure backoff applies as well. Whether the step is
/// retried is then up to its readiness (retry limit, retryable). Refused like
/// [`complete_step`], and with [`Refusal::InvalidArgument`] for a longer
/// delay or an error that PostgreSQL cannot store (a NUL character).
pub fn fail_step(
    conn: &mut PgConnection,
    claim: Claim,
    error: &Value,
    retry_after: Option<Duration>,
) -> Result<WorkflowStepTransition> {
    arguments::json("error", error)?;
    let retry_after = retry_after
        .map(|delay| arguments::seconds("retry_after", delay, 0))
        .transpose()?;
    Ok(FunctionCall::new(
        "tasker_fail_step",
        (
            claim.workflow_step_id.into_sql::<BigInt>(),
            claim.claim_id.into_sql::<BigInt>(),
            error.into_sql::<Jsonb>(),
            retry_after.into_sql::<Nullable<Integer>>(),
        ),
    )
    .get_result(conn)?)
}

/// Extends a claim that still holds to `lease` from now (a heartbeat) and
/// returns the new `claimed_until`. Refused like [`complete_step`], and with
/// [`Refusal::InvalidArgument`] for a lease outside 1 s ..=
/// [`MAX_DURATION`](crate::MAX_DURATION).
pub fn extend_step_claim(
    conn: &mut PgConnection,
    claim: Claim,
    lease: Duration,
) -> Result<NaiveDateTime> {
    let lease_seconds = arguments::seconds("lease", lease, 1)?;
    Ok(diesel::select(functions::tasker_extend_step_claim(
        claim.workflow_step_id,
        claim.claim_id,
        lease_seconds,
    ))
    .get_result(conn)?)
}

/// Moves steps whose claim has expired to `error`, as failed attempts, so
/// they are retried under the usual rules (`tasker_release_expired_claims`); at
/// most `max_steps` when given. Returns the released step ids.
pub fn release_expired_claims(conn: &mut PgConnection, max_steps: Option<u32>) -> Result<Vec<i64>> {
    let max_steps = max_steps
        .map(|max| arguments::count("max_steps", max, 0))
        .transpose()?;
    Ok(diesel::select(functions::tasker_release_expired_claims(max_steps)).load(conn)?)
}

/// What a worker reports for a step it claimed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome<'a> {
    /// The step succeeded: record `results` and complete it.
    Complete {
        /// What the step produced, stored as its `results`.
        results: &'a Value,
    },
    /// The step failed: move it to `error` with `{"error": error,
    /// "error_message": ...}` (see [`fail_step`]) as
    /// metadata; `retry_after` as for [`fail_step`]. A `permanent` failure
    /// is not retried: the step is marked not retryable, so its task is
    /// blocked unless someone resolves the step.
    Fail {
        /// The error, stored as `error` in the transition's metadata.
        error: &'a Value,
        /// The earliest the next attempt may start, counted from the start of this one; `None` leaves only the failure backoff.
        retry_after: Option<Duration>,
        /// True: the step is marked not retryable and is not retried.
        permanent: bool,
    },
    /// The worker gives the step back unfinished (it is shutting down, say):
    /// the step moves to `error` with `{"error": reason, "error_message": ...,
    /// "released": true}`
    /// and on to `pending`, its attempt is not counted, and another worker
    /// may claim it at once.
    Release {
        /// Why the step is given back, stored as `error` in the transition's metadata.
        reason: &'a Value,
    },
}

/// A result to report under a claim (see [`report_steps`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport<'a> {
    /// The claim the result is reported under.
    pub claim: Claim,
    /// What the worker reports.
    pub outcome: StepOutcome<'a>,
}

impl<'a> StepReport<'a> {
    /// The step succeeded with `results`.
    pub fn complete(claim: Claim, results: &'a Value) -> Self {
        StepReport {
            claim,
            outcome: StepOutcome::Complete { results },
        }
    }

    /// The step failed with `error`; retry no earlier than `retry_after`.
    pub fn fail(claim: Claim, error: &'a Value, retry_after: Option<Duration>) -> Self {
        StepReport {
            claim,
            outcome: StepOutcome::Fail {
                error,
                retry_after,
                permanent: false,
            },
        }
    }

    /// The step failed with `error` for good: do not retry it.
    pub fn fail_permanently(claim: Claim, error: &'a Value) -> Self {
        StepReport {
            claim,
            outcome: StepOutcome::Fail {
                error,
                retry_after: None,
                permanent: true,
            },
        }
    }

    /// Give the step back unfinished, for `reason` (see
    /// [`StepOutcome::Release`]).
    pub fn release(claim: Claim, reason: &'a Value) -> Self {
        StepReport {
            claim,
            outcome: StepOutcome::Release { reason },
        }
    }
}

/// What became of one reported result: the id of the transition it wrote, or
/// why it was refused (the claim was lost or expired, the step is unknown, a
/// negative delay). A refused result wrote nothing; the others of its batch
/// are written all the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedStep {
    /// The claim the result was reported under.
    pub claim: Claim,
    /// `Ok` with the id of the transition written, or why the result was refused.
    pub result: std::result::Result<i64, Refusal>,
}

/// Reports many results in one round trip and one transaction
/// (`tasker_report_steps`), one [`ReportedStep`] per report in the same order.
///
/// Each result is checked against its own claim: a refused one (claim lost,
/// expired, ...) is reported as refused and writes nothing, and the others
/// are written all the same, so one lost claim does not cost a batch its
/// work. A step may appear once per call; repeating one, like a bad
/// argument, refuses the whole call with [`Refusal::InvalidArgument`].
///
/// Reporting is idempotent per claim: a result reported again under the same
/// claim with the same outcome and payload (a retry after the connection was
/// lost before the answer arrived) is not written twice and comes back `Ok`
/// with the transition the first report wrote.
pub fn report_steps(
    conn: &mut PgConnection,
    reports: &[StepReport<'_>],
) -> Result<Vec<ReportedStep>> {
    let binds = ReportBinds::new(reports)?;
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<ReportRow> = FunctionCall::new(
        "tasker_report_steps",
        (
            binds.step_ids.into_sql::<Array<BigInt>>(),
            binds.claim_ids.into_sql::<Array<BigInt>>(),
            binds.outcomes.into_sql::<Array<TaskerStepState>>(),
            binds.payloads.into_sql::<Array<Jsonb>>(),
            binds.retry_after.into_sql::<Array<Nullable<Integer>>>(),
            None::<&Value>.into_sql::<Nullable<Jsonb>>(),
            binds.permanent.into_sql::<Array<Bool>>(),
        ),
    )
    .load(conn)?;
    Ok(rows.into_iter().map(ReportRow::into_reported).collect())
}

/// Completes many claimed steps in one round trip: [`report_steps`] with
/// every outcome [`StepOutcome::Complete`].
pub fn complete_steps(
    conn: &mut PgConnection,
    completed: &[(Claim, &Value)],
) -> Result<Vec<ReportedStep>> {
    let reports: Vec<StepReport<'_>> = completed
        .iter()
        .map(|&(claim, results)| StepReport::complete(claim, results))
        .collect();
    report_steps(conn, &reports)
}

/// Fails many claimed steps in one round trip: [`report_steps`] with every
/// outcome [`StepOutcome::Fail`].
pub fn fail_steps(
    conn: &mut PgConnection,
    failed: &[(Claim, &Value, Option<Duration>)],
) -> Result<Vec<ReportedStep>> {
    let reports: Vec<StepReport<'_>> = failed
        .iter()
        .map(|&(claim, error, retry_after)| StepReport::fail(claim, error, retry_after))
        .collect();
    report_steps(conn, &reports)
}

/// Gives claimed steps back unfinished in one round trip: [`report_steps`]
/// with every outcome [`StepOutcome::Release`]. Another worker may claim them
/// at once; their attempts are not counted.
pub fn release_steps(
    conn: &mut PgConnection,
    claims: &[Claim],
    reason: &Value,
) -> Result<Vec<ReportedStep>> {
    let reports: Vec<StepReport<'_>> = claims
        .iter()
        .map(|&claim| StepReport::release(claim, reason))
        .collect();
    report_steps(conn, &reports)
}

/// A worker's loop in one round trip and one transaction
/// (`tasker_report_and_claim`): reports `reports` as [`report_steps`] does, then
/// claims as [`claim_ready_steps`] does (children the reports made ready
/// included). Returns the reports' outcomes, in order, and the claimed steps.
/// Claims nothing when `request.max_steps` is 0, which makes it a batch of
/// results alone. `request.metadata` goes into the transitions of the claims
/// and of the completions (a failure's metadata is its error).
pub fn report_and_claim(
    conn: &mut PgConnection,
    reports: &[StepReport<'_>],
    request: &ClaimRequest<'_>,
) -> Result<(Vec<ReportedStep>, Vec<ClaimedStep>)> {
    let binds = ReportBinds::new(reports)?;
    let claim = request.binds(0)?;
    let rows: Vec<ReportOrClaimRow> = FunctionCall::new(
        "tasker_report_and_claim",
        (
            binds.step_ids.into_sql::<Array<BigInt>>(),
            binds.claim_ids.into_sql::<Array<BigInt>>(),
            binds.outcomes.into_sql::<Array<TaskerStepState>>(),
            binds.payloads.into_sql::<Array<Jsonb>>(),
            binds.retry_after.into_sql::<Array<Nullable<Integer>>>(),
            claim.task_ids.into_sql::<Nullable<Array<BigInt>>>(),
            claim.max_steps.into_sql::<Integer>(),
            claim.lease_seconds.into_sql::<Integer>(),
            claim.metadata.into_sql::<Nullable<Jsonb>>(),
            binds.permanent.into_sql::<Array<Bool>>(),
            claim.step_filter.as_ref().into_sql::<Nullable<Jsonb>>(),
        ),
    )
    .load(conn)?;
    split_rows(conn, rows, reports.len())
}

/// The reports' outcomes and the claimed steps of `report_and_claim`'s rows
/// (see [`received`]).
fn split_rows(
    conn: &mut PgConnection,
    rows: Vec<ReportOrClaimRow>,
    reports: usize,
) -> Result<(Vec<ReportedStep>, Vec<ClaimedStep>)> {
    let mut reported = Vec::with_capacity(reports);
    let mut claimed = Vec::new();
    for row in rows {
        if let Some((workflow_step_id, claim_id, transition_id, refusal)) = row.reported {
            reported.push(
                ReportRow {
                    workflow_step_id,
                    claim_id,
                    transition_id,
                    refusal,
                }
                .into_reported(),
            );
        }
        if let Some((
            workflow_step_id,
            task_id,
            named_step_id,
            name,
            attempt,
            claim_id,
            claimed_until,
            inputs,
        )) = row.claimed
        {
            claimed.push(ClaimRow {
                workflow_step_id,
                task_id,
                named_step_id,
                name,
                attempt,
                claim_id,
                claimed_until,
                inputs,
            });
        }
    }
    Ok((reported, received(conn, claimed)?))
}

/// Why [`wait_for_claimable_work`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// A step was claimable when the wait began.
    Ready,
    /// A commit made steps runnable (`NOTIFY tasker_runnable_steps`).
    Notified,
    /// The backoff of a failed step ended: it may be claimable now.
    BackoffEnded,
    /// The timeout passed with none of these.
    TimedOut,
}

/// How often [`wait_for_claimable_work`] looks for a notification that has
/// arrived on the connection (a read of its socket, not a query).
const NOTIFICATION_CHECK: Duration = Duration::from_millis(1);

/// How long after the end of a backoff [`wait_for_claimable_work`] wakes.
const BACKOFF_MARGIN: Duration = Duration::from_millis(5);

/// Blocks until work may be claimable, or `timeout` passes: an idle worker's
/// wait, instead of polling with claims.
///
/// The first call LISTENs on the connection (`tasker_listen_for_work`), so it
/// is best kept for a connection of its own or one kept out of the pool's
/// rotation; every commit that makes steps runnable (creation, a parent's
/// completion, a failure with retries left, a released claim) notifies it.
/// Returns at once when a step is claimable now; sleeps no longer than until
/// the earliest backoff of a failed step ends. A notification missed (the
/// connection was lost, or it arrived before the first LISTEN took effect)
/// costs at most the timeout. Waiting for a notification reads the socket
/// every millisecond; it sends nothing to the server. Refused with
/// [`Refusal::InvalidArgument`] inside a transaction, where notifications
/// are not delivered.
pub fn wait_for_claimable_work(conn: &mut PgConnection, timeout: Duration) -> Result<Wakeup> {
    if in_transaction(conn)? {
        return Err(Error::Refused(Refusal::InvalidArgument {
            argument: "conn".to_owned(),
            message: "wait_for_claimable_work needs a connection outside a transaction: \
                      notifications arrive between transactions"
                .to_owned(),
        }));
    }
    let started = Instant::now();
    // None: a timeout too long for the clock (Duration::MAX) waits for ever.
    let deadline = started.checked_add(timeout);
    // Notifications received before the check below are older than what it sees.
    for notification in conn.notifications_iter() {
        notification?;
    }
    let next_seconds: Option<f64> =
        diesel::select(functions::tasker_listen_for_work()).get_result(conn)?;
    if next_seconds.is_some_and(|seconds| seconds <= 0.0) {
        return Ok(Wakeup::Ready);
    }
    // A little after the gate, so that the claim that follows finds it passed.
    let backoff_ends = next_seconds
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .and_then(|wait| started.checked_add(wait + BACKOFF_MARGIN));
    loop {
        if let Some(notification) = conn.notifications_iter().next() {
            notification?;
            return Ok(Wakeup::Notified);
        }
        let now = Instant::now();
        if backoff_ends.is_some_and(|ends| now >= ends) {
            return Ok(Wakeup::BackoffEnded);
        }
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(Wakeup::TimedOut);
        }
        let until = [backoff_ends, deadline].into_iter().flatten().min();
        thread::sleep(until.map_or(NOTIFICATION_CHECK, |until| {
            NOTIFICATION_CHECK.min(until - now)
        }));
    }
}

/// The array binds of a batch of reports, one element per report.
struct ReportBinds<'a> {
    step_ids: Vec<i64>,
    claim_ids: Vec<i64>,
    outcomes: Vec<StepState>,
    payloads: Vec<&'a Value>,
    retry_after: Vec<Option<i32>>,
    permanent: Vec<bool>,
}

impl<'a> ReportBinds<'a> {
    /// Checked: at most [`MAX_IDS_PER_CALL`](crate::MAX_IDS_PER_CALL)
    /// reports, payloads PostgreSQL can store and delays within
    /// [`MAX_DURATION`](crate::MAX_DURATION), each named by its position.
    fn new(reports: &[StepReport<'a>]) -> Result<Self, Refusal> {
        arguments::ids("reports", reports.len())?;
        let mut binds = ReportBinds {
            step_ids: Vec::with_capacity(reports.len()),
            claim_ids: Vec::with_capacity(reports.len()),
            outcomes: Vec::with_capacity(reports.len()),
            payloads: Vec::with_capacity(reports.len()),
            retry_after: Vec::with_capacity(reports.len()),
            permanent: Vec::with_capacity(reports.len()),
        };
        for (index, report) in reports.iter().enumerate() {
            binds.step_ids.push(report.claim.workflow_step_id);
            binds.claim_ids.push(report.claim.claim_id);
            let (outcome, payload, retry_after, permanent) = match report.outcome {
                StepOutcome::Complete { results } => (StepState::Complete, results, None, false),
                StepOutcome::Fail {
                    error,
                    retry_after,
                    permanent,
                } => (
                    StepState::Error,
                    error,
                    retry_after
                        .map(|delay| {
                            arguments::seconds(&format!("reports[{index}].retry_after"), delay, 0)
                        })
                        .transpose()?,
                    permanent,
                ),
                // report_steps reads the outcome pending as a release.
                StepOutcome::Release { reason } => (StepState::Pending, reason, None, false),
            };
            arguments::json(&format!("reports[{index}].payload"), payload)?;
            binds.outcomes.push(outcome);
            binds.payloads.push(payload);
            binds.retry_after.push(retry_after);
            binds.permanent.push(permanent);
        }
        Ok(binds)
    }
}

/// A row of `report_steps`.
#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct ReportRow {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = BigInt)]
    claim_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    transition_id: Option<i64>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    refusal: Option<Value>,
}

impl ReportRow {
    /// Never fails: the claims of a `report_and_claim` call have committed by the
    /// time its rows are read, so no row may cost the caller them. A refusal
    /// this crate does not know (a newer schema) is kept as its message.
    fn into_reported(self) -> ReportedStep {
        let claim = Claim {
            workflow_step_id: self.workflow_step_id,
            claim_id: self.claim_id,
        };
        let result = match (self.transition_id, self.refusal) {
            (Some(transition_id), None) => Ok(transition_id),
            (_, Some(refusal)) => Err(serde_json::from_value::<Refusal>(refusal.clone())
                .unwrap_or_else(|_| Refusal::InvalidArgument {
                    argument: "reports".to_owned(),
                    message: format!("report_steps refused the result: {refusal}"),
                })),
            (None, None) => Err(Refusal::InvalidArgument {
                argument: "reports".to_owned(),
                message: "report_steps wrote no transition and gave no refusal".to_owned(),
            }),
        };
        ReportedStep { claim, result }
    }
}

type ReportRecord = Record<(BigInt, BigInt, Nullable<BigInt>, Nullable<Jsonb>)>;
type ClaimRecord = Record<(
    BigInt,
    BigInt,
    Integer,
    Text,
    Integer,
    BigInt,
    Timestamp,
    Nullable<Jsonb>,
)>;

/// A row of `report_and_claim`: a reported result or a claimed step.
#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct ReportOrClaimRow {
    #[diesel(sql_type = Nullable<ReportRecord>)]
    reported: Option<(i64, i64, Option<i64>, Option<Value>)>,
    #[diesel(sql_type = Nullable<ClaimRecord>)]
    #[allow(clippy::type_complexity)]
    claimed: Option<(
        i64,
        i64,
        i32,
        String,
        i32,
        i64,
        NaiveDateTime,
        Option<JsonbText>,
    )>,
}
