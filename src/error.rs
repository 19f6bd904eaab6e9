//! The crate's error type.

use chrono::NaiveDateTime;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Deserialize;

use crate::enums::{ExecutionStatus, StepState, TaskState};
use crate::workflow::{RequestError, TemplateError};

/// Result alias for the crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connection(#[from] diesel::ConnectionError),
    /// The r2d2 pool could not be built or gave no connection in time.
    #[error("connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// Applying or reverting the embedded migrations failed.
    #[error("migrations failed: {0}")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A database holding the Rails engine's tables could not be adopted
    /// ([`crate::adoption`]): its tables are not in the engine's shape, or hold
    /// rows the crate's constraints refuse. Nothing was changed.
    #[error("cannot adopt the database: {problem}")]
    Adoption {
        /// What was wrong, in PostgreSQL's words where it found it.
        problem: String,
    },
    /// The database rejected a write that breaks one of its integrity rules.
    #[error("{rule}: {message}")]
    Integrity {
        /// The rule that was broken.
        rule: IntegrityRule,
        /// PostgreSQL's message, naming the rows involved.
        message: String,
    },
    /// A task template that cannot be built; nothing was written.
    #[error("invalid task template: {0}")]
    InvalidTemplate(#[from] TemplateError),
    /// A task request (at `index` of its batch; 0 for
    /// [`create_task`](crate::workflow::create_task)) that cannot be built: its
    /// template, in a batch, or what the request adds to it. Nothing of the
    /// batch was written.
    #[error("invalid task request {index} of the batch: {error}")]
    InvalidRequest {
        /// The request's position in the batch.
        index: usize,
        /// What is wrong with the request or its template.
        #[source]
        error: RequestError,
    },
    /// The write path refused the change; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Any other failed query.
    #[error("query failed: {0}")]
    Query(#[source] DieselError),
}

/// Why a write-path function refused a change. The SQL functions raise these
/// (SQLSTATE `TK001`, constraint `tasker_refused`) with a JSON detail that
/// names the refusal and its values; this is that detail, typed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// No task has this id.
    #[error("task {task_id} does not exist")]
    UnknownTask {
        /// The task id that was asked for.
        task_id: i64,
    },
    /// No workflow step has this id.
    #[error("workflow step {workflow_step_id} does not exist")]
    UnknownStep {
        /// The workflow step id that was asked for.
        workflow_step_id: i64,
    },
    /// The step state machine does not allow the move.
    #[error("workflow step {workflow_step_id} ({name}) cannot move from {from} to {to}")]
    IllegalStepTransition {
        /// The step that was asked to move.
        workflow_step_id: i64,
        /// The step's name (its step template's).
        name: String,
        /// The step's current state (`Pending` when it has no transition).
        from: StepState,
        /// The state the step was asked to move to.
        to: StepState,
    },
    /// The task state machine does not allow the move.
    #[error("task {task_id} cannot move from {from} to {to}")]
    IllegalTaskTransition {
        /// The task that was asked to move.
        task_id: i64,
        /// The task's current state (`Pending` when it has no transition).
        from: TaskState,
        /// The state the task was asked to move to.
        to: TaskState,
    },
    /// Compare-and-swap: the step is not in the state the caller expected.
    #[error("workflow step {workflow_step_id} is {actual}, not the expected {expected}")]
    StepStateConflict {
        /// The step that was asked to move.
        workflow_step_id: i64,
        /// The state the caller expected the step to be in.
        expected: StepState,
        /// The state the step is in.
        actual: StepState,
    },
    /// Compare-and-swap: the task is not in the state the caller expected.
    #[error("task {task_id} is {actual}, not the expected {expected}")]
    TaskStateConflict {
        /// The task that was asked to move.
        task_id: i64,
        /// The state the caller expected the task to be in.
        expected: TaskState,
        /// The state the task is in.
        actual: TaskState,
    },
    /// The claim no longer holds: the step moved on (its lease was released,
    /// it was claimed again, cancelled, ...).
    #[error(
        "claim {claim_id} on workflow step {workflow_step_id} is lost: the step is now {state}"
    )]
    ClaimLost {
        /// The claimed step.
        workflow_step_id: i64,
        /// The claim: the id of the `in_progress` transition it was handed out with.
        claim_id: i64,
        /// The step's current state.
        state: StepState,
    },
    /// The claim's lease has passed; its result is no longer accepted.
    #[error("claim {claim_id} on workflow step {workflow_step_id} expired at {claimed_until}")]
    ClaimExpired {
        /// The claimed step.
        workflow_step_id: i64,
        /// The claim: the id of the `in_progress` transition it was handed out with.
        claim_id: i64,
        /// When the claim's lease ended (UTC).
        claimed_until: NaiveDateTime,
    },
    /// The task's execution context says work remains, so it cannot be
    /// finalized.
    #[error("task {task_id} cannot be finalized: it is {execution_status}")]
    TaskNotFinished {
        /// The task that was asked to be finalized.
        task_id: i64,
        /// What the task's execution context says of it.
        execution_status: ExecutionStatus,
    },
    /// The task is already finished (`complete`, `resolved_manually` or
    /// `cancelled`): [`cancel_task`](crate::workflow::cancel_task) does not
    /// cancel work that is done. An operator who means it moves the task with
    /// [`transition_task`](crate::workflow::transition_task).
    #[error("task {task_id} is already {state}: there is nothing left to cancel")]
    TaskFinished {
        /// The task that was asked to be cancelled.
        task_id: i64,
        /// The finished state the task is in.
        state: TaskState,
    },
    /// An argument the call cannot take: out of its range (a zero or
    /// 100-year lease, too many ids), or a value PostgreSQL cannot store (a
    /// NUL character in text or JSON). Nothing was written; the message says
    /// what the argument may be.
    #[error("{message}")]
    InvalidArgument {
        /// The argument, as the Rust call or SQL function names it
        /// (`lease`, `metadata`, `reports[3].payload`, ...).
        #[serde(default)]
        argument: String,
        /// What is wrong with the argument and what it may be.
        message: String,
    },
}

/// What a caller should do about an [`Error`] ([`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The connection was lost or could not be had, or PostgreSQL gave up on
    /// the transaction to resolve a conflict (serialization failure, deadlock,
    /// lock or statement timeout, the server shutting down). Nothing of the call
    /// committed, or (a connection lost while the answer was on its way) all
    /// of it did: the same call may be made again, on a new connection. A
    /// result reported again under the same claim is taken as the first one.
    Transient,
    /// The write path or an integrity rule refused the change: asking again
    /// gets the same answer until something else changes.
    Refused,
    /// Bad input or a bug: an invalid template or request, a failed
    /// migration, a query that should not fail.
    Fatal,
}

impl Error {
    /// Whether the call may be made again as it is ([`ErrorKind::Transient`]),
    /// must not be ([`ErrorKind::Refused`]), or points at a bug
    /// ([`ErrorKind::Fatal`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connection(_) | Error::Pool(_) => ErrorKind::Transient,
            Error::Refused(_) | Error::Integrity { .. } => ErrorKind::Refused,
            Error::Query(error) if is_transient(error) => ErrorKind::Transient,
            Error::Migration(_)
            | Error::Adoption { .. }
            | Error::InvalidTemplate(_)
            | Error::InvalidRequest { .. }
            | Error::Query(_) => ErrorKind::Fatal,
        }
    }

    /// [`ErrorKind::Transient`]: safe to retry the same call.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// [`ErrorKind::Refused`]: do not retry.
    pub fn is_refusal(&self) -> bool {
        self.kind() == ErrorKind::Refused
    }
}

impl Error {
    /// An answer of the database that does not fit what was asked (a row
    /// missing, one too many, one at a place that was not asked for): a
    /// [`Error::Query`] with a deserialization error naming what did not fit.
    pub(crate) fn unexpected_rows(message: String) -> Self {
        Error::Query(DieselError::DeserializationError(message.into()))
    }

    /// Rows other transactions kept changing under a statement that was run
    /// again for them until it gave up: a [`Error::Query`] with a
    /// serialization failure that names the rows, [`ErrorKind::Transient`] as
    /// PostgreSQL's own conflicts are, since the same call made again runs in
    /// a new transaction.
    pub(crate) fn lost_race(message: String) -> Self {
        Error::Query(DieselError::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new(message),
        ))
    }
}

/// Whether a failed query may succeed when made again. Diesel gives the
/// SQLSTATE only for some classes (a lost connection, a serialization
/// failure); for the others PostgreSQL's message is matched (as the server
/// words it with `lc_messages` in English, its default).
fn is_transient(error: &DieselError) -> bool {
    /// Deadlock (40P01), statement and lock timeouts (57014, 55P03), the server
    /// shutting down or starting (57P01, 57P03), too many connections (53300).
    const TRANSIENT_MESSAGES: [&str; 9] = [
        "deadlock detected",
        "canceling statement due to statement timeout",
        "canceling statement due to lock timeout",
        "could not obtain lock",
        "terminating connection",
        "the database system is shutting down",
        "the database system is starting up",
        "sorry, too many clients already",
        "server closed the connection",
    ];
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::SerializationFailure,
            _,
        )
        | DieselError::BrokenTransactionManager => true,
        DieselError::DatabaseError(_, info) => TRANSIENT_MESSAGES
            .iter()
            .any(|text| info.message().contains(text)),
        _ => false,
    }
}

impl From<DieselError> for Error {
    /// Sorts database errors raised by one of the schema's integrity rules
    /// into [`Error::Integrity`] and the write path's refusals into
    /// [`Error::Refused`]; everything else stays a [`Error::Query`].
    fn from(error: DieselError) -> Self {
        if let DieselError::DatabaseError(kind, info) = &error {
            if info.constraint_name() == Some(REFUSED) {
                if let Some(refusal) = info
                    .details()
                    .and_then(|detail| serde_json::from_str::<Refusal>(detail).ok())
                {
                    return Error::Refused(refusal);
                }
            }
            let rule = info
                .constraint_name()
                .and_then(|constraint| IntegrityRule::raised_by(constraint, kind));
            if let Some(rule) = rule {
                return Error::Integrity {
                    rule,
                    message: info.message().to_owned(),
                };
            }
        }
        Error::Query(error)
    }
}

/// The constraint name the write-path functions raise refusals with.
const REFUSED: &str = "tasker_refused";

/// The integrity rules the schema enforces itself, whoever writes the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IntegrityRule {
    /// An edge from a step to itself.
    #[error("a step cannot depend on itself")]
    SelfEdge,
    /// The same parent and child joined twice.
    #[error("duplicate edge between two steps")]
    DuplicateEdge,
    /// An edge between steps of two different tasks.
    #[error("an edge must join steps of the same task")]
    CrossTaskEdge,
    /// An edge that would make the step graph cyclic.
    #[error("the step graph must stay acyclic")]
    Cycle,
    /// A change of a step's `task_id`.
    #[error("a step cannot move to another task")]
    StepMovedToAnotherTask,
    /// A step template used twice in one task.
    #[error("a step template appears at most once per task")]
    DuplicateStepInTask,
    /// A second `most_recent` transition for one step.
    #[error("a step has at most one most recent transition")]
    SecondCurrentStepTransition,
    /// A `sort_key` used twice in one step's history.
    #[error("step transition sort keys are unique per step")]
    DuplicateStepSortKey,
    /// A second `most_recent` transition for one task.
    #[error("a task has at most one most recent transition")]
    SecondCurrentTaskTransition,
    /// A `sort_key` used twice in one task's history.
    #[error("task transition sort keys are unique per task")]
    DuplicateTaskSortKey,
    /// A second task with the same identity hash.
    #[error("a task's identity hash is unique")]
    DuplicateIdentityHash,
    /// Step transition metadata that is not a JSON object.
    #[error("a step transition's metadata is a JSON object")]
    StepTransitionMetadataNotObject,
    /// Task transition metadata that is not a JSON object.
    #[error("a task transition's metadata is a JSON object")]
    TaskTransitionMetadataNotObject,
}

/// Each rule with the constraint (or unique index) that enforces it and the
/// kind of error PostgreSQL raises for it.
const CONSTRAINTS: &[(&str, IntegrityRule, RuleKind)] = &[
    (
        "tasker_workflow_step_edges_not_self_check",
        IntegrityRule::SelfEdge,
        RuleKind::Check,
    ),
    (
        "tasker_workflow_step_edges_from_to_key",
        IntegrityRule::DuplicateEdge,
        RuleKind::Unique,
    ),
    (
        "tasker_workflow_step_edges_same_task",
        IntegrityRule::CrossTaskEdge,
        RuleKind::Check,
    ),
    (
        "tasker_workflow_step_edges_acyclic",
        IntegrityRule::Cycle,
        RuleKind::Check,
    ),
    (
        "tasker_workflow_steps_task_id_fixed",
        IntegrityRule::StepMovedToAnotherTask,
        RuleKind::Check,
    ),
    (
        "tasker_workflow_steps_task_named_step_key",
        IntegrityRule::DuplicateStepInTask,
        RuleKind::Unique,
    ),
    (
        "tasker_workflow_step_transitions_most_recent_idx",
        IntegrityRule::SecondCurrentStepTransition,
        RuleKind::Unique,
    ),
    (
        "tasker_workflow_step_transitions_step_sort_key_key",
        IntegrityRule::DuplicateStepSortKey,
        RuleKind::Unique,
    ),
    (
        "tasker_task_transitions_most_recent_idx",
        IntegrityRule::SecondCurrentTaskTransition,
        RuleKind::Unique,
    ),
    (
        "tasker_task_transitions_task_sort_key_key",
        IntegrityRule::DuplicateTaskSortKey,
        RuleKind::Unique,
    ),
    (
        "tasker_tasks_identity_hash_key",
        IntegrityRule::DuplicateIdentityHash,
        RuleKind::Unique,
    ),
    (
        "tasker_workflow_step_transitions_metadata_object_check",
        IntegrityRule::StepTransitionMetadataNotObject,
        RuleKind::Check,
    ),
    (
        "tasker_task_transitions_metadata_object_check",
        IntegrityRule::TaskTransitionMetadataNotObject,
        RuleKind::Check,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Unique,
    Check,
}

impl IntegrityRule {
    /// The rule a constraint or unique index of the schema enforces.
    pub fn from_constraint(name: &str) -> Option<Self> {
        CONSTRAINTS
            .iter()
            .find(|(constraint, ..)| *constraint == name)
            .map(|&(_, rule, _)| rule)
    }

    /// The name of the constraint or unique index that enforces the rule.
    pub fn constraint_name(self) -> &'static str {
        CONSTRAINTS
            .iter()
            .find(|&&(_, rule, _)| rule == self)
            .map(|&(name, ..)| name)
            .expect("every rule has a constraint")
    }

    /// The rule behind an error of `kind` that names `constraint`.
    fn raised_by(constraint: &str, kind: &DatabaseErrorKind) -> Option<Self> {
        CONSTRAINTS
            .iter()
            .find(|&&(name, _, rule_kind)| {
                name == constraint
                    && matches!(
                        (rule_kind, kind),
                        (RuleKind::Unique, DatabaseErrorKind::UniqueViolation)
                            | (RuleKind::Check, DatabaseErrorKind::CheckViolation)
                    )
            })
            .map(|&(_, rule, _)| rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_one_constraint_and_back() {
        for &(name, rule, _) in CONSTRAINTS {
            assert_eq!(IntegrityRule::from_constraint(name), Some(rule));
            assert_eq!(rule.constraint_name(), name);
        }
        assert_eq!(IntegrityRule::from_constraint("tasker_tasks_pkey"), None);
    }
}
