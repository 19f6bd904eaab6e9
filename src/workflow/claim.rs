//! Handing ready steps to workers: claims with a lease, and the results a
//! worker reports under its claim.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamp};
use diesel::{IntoSql, PgConnection, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::FunctionCall;
use crate::functions;
use crate::models::WorkflowStepTransition;
use crate::Result;

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
}

impl<'a> ClaimRequest<'a> {
    /// Up to `max_steps` ready steps of any task, each leased for `lease`.
    pub fn any_task(max_steps: u32, lease: Duration) -> Self {
        ClaimRequest {
            task_ids: None,
            max_steps,
            lease,
            metadata: None,
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
}

/// A step claimed for one worker: a row of `claim_ready_steps`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
#[diesel(check_for_backend(Pg))]
pub struct ClaimedStep {
    #[diesel(sql_type = BigInt)]
    pub workflow_step_id: i64,
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    #[diesel(sql_type = Integer)]
    pub named_step_id: i32,
    /// The step's name (its step template's): what the worker should run.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Which execution of the step this is, counting from 1.
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// Identifies the claim: the id of the step's `in_progress` transition.
    #[diesel(sql_type = BigInt)]
    pub claim_id: i64,
    /// The claim holds until then (UTC) unless extended.
    #[diesel(sql_type = Timestamp)]
    pub claimed_until: NaiveDateTime,
    /// The step's `inputs`.
    #[diesel(sql_type = Nullable<Jsonb>)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    pub workflow_step_id: i64,
    pub claim_id: i64,
}

/// Claims ready steps (`claim_ready_steps`): each returned step is locked
/// against other claimers, moved to `in_progress` (a failed step through
/// `pending`), counted as an attempt and leased. Two callers never get the
/// same step. Ordered by task id, then step id.
pub fn claim_ready_steps(
    conn: &mut PgConnection,
    request: &ClaimRequest<'_>,
) -> Result<Vec<ClaimedStep>> {
    Ok(FunctionCall::new(
        "claim_ready_steps",
        (
            request.task_ids.into_sql::<Nullable<Array<BigInt>>>(),
            saturating_i32(request.max_steps.into()).into_sql::<Integer>(),
            lease_seconds(request.lease).into_sql::<Integer>(),
            request.metadata.into_sql::<Nullable<Jsonb>>(),
        ),
    )
    .load(conn)?)
}

/// Records a claimed step's `results` and moves it to `complete`
/// (`complete_step`). Refused with [`crate::Refusal::ClaimLost`] or
/// [`crate::Refusal::ClaimExpired`] when the claim no longer holds.
pub fn complete_step(
    conn: &mut PgConnection,
    claim: Claim,
    results: &Value,
) -> Result<WorkflowStepTransition> {
    Ok(FunctionCall::new(
        "complete_step",
        (
            claim.workflow_step_id.into_sql::<BigInt>(),
            claim.claim_id.into_sql::<BigInt>(),
            results.into_sql::<Jsonb>(),
        ),
    )
    .get_result(conn)?)
}

/// Records a claimed step's failure (`fail_step`): moves it to `error` with
/// `{"error": error}` as metadata. `retry_after` asks that the next attempt
/// start no earlier than that long after this one started (a `Retry-After`;
/// whole seconds, rounded up); the exponential failure backoff applies as well. Whether
/// the step is retried is then up to its readiness (retry limit, retryable).
/// Refused like [`complete_step`].
pub fn fail_step(
    conn: &mut PgConnection,
    claim: Claim,
    error: &Value,
    retry_after: Option<Duration>,
) -> Result<WorkflowStepTransition> {
    Ok(FunctionCall::new(
        "fail_step",
        (
            claim.workflow_step_id.into_sql::<BigInt>(),
            claim.claim_id.into_sql::<BigInt>(),
            error.into_sql::<Jsonb>(),
            retry_after
                .map(lease_seconds)
                .into_sql::<Nullable<Integer>>(),
        ),
    )
    .get_result(conn)?)
}

/// Extends a claim that still holds to `lease` from now (a heartbeat) and
/// returns the new `claimed_until`. Refused like [`complete_step`].
pub fn extend_step_claim(
    conn: &mut PgConnection,
    claim: Claim,
    lease: Duration,
) -> Result<NaiveDateTime> {
    Ok(diesel::select(functions::extend_step_claim(
        claim.workflow_step_id,
        claim.claim_id,
        lease_seconds(lease),
    ))
    .get_result(conn)?)
}

/// Moves steps whose claim has expired to `error`, as failed attempts, so
/// they are retried under the usual rules (`release_expired_claims`); at
/// most `max_steps` when given. Returns the released step ids.
pub fn release_expired_claims(conn: &mut PgConnection, max_steps: Option<u32>) -> Result<Vec<i64>> {
    Ok(diesel::select(functions::release_expired_claims(
        max_steps.map(|max| saturating_i32(max.into())),
    ))
    .load(conn)?)
}

/// Whole seconds, as the SQL functions take them, rounded up so that a lease
/// or a requested delay is never shorter than asked.
fn lease_seconds(duration: Duration) -> i32 {
    let rounded_up = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    saturating_i32(rounded_up)
}

fn saturating_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}
