//! Rust enums for the PostgreSQL enum types of the schema.
//!
//! Each maps onto its SQL type: the state enums onto those that `diesel
//! print-schema` generated in [`crate::schema::sql_types`], the status enums
//! onto [`sql_types`] here. The readiness and context rows give states and
//! statuses as `text`, as the original design defines them, so each enum also
//! loads from `text`. A value that is not a variant can neither be stored nor
//! loaded: loading one is an error, never a default.

use std::fmt;

use diesel::deserialize::{self, FromSql, Queryable};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::Text;
use diesel_derive_enum::DbEnum;
use serde::{Deserialize, Serialize};

/// `ALL`, `as_str` and `Display` for an enum whose variants are listed with
/// their SQL labels, in the order of the SQL enum type.
macro_rules! labels {
    ($name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        impl $name {
            /// Every variant, in the order of the SQL enum type.
            pub const ALL: [Self; [$($label),+].len()] = [$(Self::$variant),+];

            /// The label stored in PostgreSQL.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Function rows give the state and the statuses as `text`, as the
        /// original design defines them; a label that is not a variant is an
        /// error, as for the enum type.
        impl FromSql<Text, Pg> for $name {
            fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
                let label = std::str::from_utf8(value.as_bytes())?;
                Self::ALL
                    .into_iter()
                    .find(|variant| variant.as_str() == label)
                    .ok_or_else(|| {
                        format!("{label:?} is not a label of {}", stringify!($name)).into()
                    })
            }
        }

        impl Queryable<Text, Pg> for $name {
            type Row = Self;

            fn build(row: Self) -> deserialize::Result<Self> {
                Ok(row)
            }
        }
    };
}

/// Declares a lifecycle-state enum over one PostgreSQL enum type. Steps and
/// tasks share the six states but have distinct SQL types, hence one macro.
macro_rules! lifecycle_state {
    ($(#[$doc:meta])* $name:ident, $sql_type:tt) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
            DbEnum, Serialize, Deserialize,
        )]
        #[ExistingTypePath = $sql_type]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            /// Not started; also the state of an entity with no transition row.
            #[default]
            Pending,
            /// Being worked on.
            InProgress,
            /// Finished successfully.
            Complete,
            /// Failed; may be retried or resolved manually.
            Error,
            /// Stopped before finishing.
            Cancelled,
            /// Marked as done by an operator.
            ResolvedManually,
        }

        labels!($name {
            Pending => "pending",
            InProgress => "in_progress",
            Complete => "complete",
            Error => "error",
            Cancelled => "cancelled",
            ResolvedManually => "resolved_manually",
        });
    };
}

lifecycle_state!(
    /// State of a workflow step (SQL type `tasker_step_state`).
    StepState,
    "crate::schema::sql_types::TaskerStepState"
);

lifecycle_state!(
    /// State of a task (SQL type `tasker_task_state`).
    TaskState,
    "crate::schema::sql_types::TaskerTaskState"
);

/// SQL types of the enums that only function rows use, so `diesel print-schema`
/// (which follows table columns) does not generate them. `DbEnum` derives their
/// `Clone` and `Copy`.
pub mod sql_types {
    /// The `tasker_execution_status` SQL type.
    #[derive(Debug, diesel::query_builder::QueryId, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "tasker_execution_status"))]
    pub struct TaskerExecutionStatus;

    /// The `tasker_recommended_action` SQL type.
    #[derive(Debug, diesel::query_builder::QueryId, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "tasker_recommended_action"))]
    pub struct TaskerRecommendedAction;

    /// The `tasker_health_status` SQL type.
    #[derive(Debug, diesel::query_builder::QueryId, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "tasker_health_status"))]
    pub struct TaskerHealthStatus;
}

/// What a task is doing, as its execution context reports it (SQL type
/// `tasker_execution_status`). Variants are in the order the rules are tried.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, DbEnum, Serialize, Deserialize,
)]
#[ExistingTypePath = "crate::enums::sql_types::TaskerExecutionStatus"]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// At least one step is ready to run.
    HasReadySteps,
    /// Nothing is ready and some step is in progress.
    Processing,
    /// Nothing is ready or running and a step has failed for good.
    BlockedByFailures,
    /// Every step is complete, resolved manually or cancelled.
    AllComplete,
    /// Steps wait for their parents or for a backoff to pass.
    WaitingForDependencies,
}

labels!(ExecutionStatus {
    HasReadySteps => "has_ready_steps",
    Processing => "processing",
    BlockedByFailures => "blocked_by_failures",
    AllComplete => "all_complete",
    WaitingForDependencies => "waiting_for_dependencies",
});

/// What the orchestrator should do next with a task (SQL type
/// `tasker_recommended_action`); one per [`ExecutionStatus`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, DbEnum, Serialize, Deserialize,
)]
#[ExistingTypePath = "crate::enums::sql_types::TaskerRecommendedAction"]
#[serde(rename_all = "snake_case")]
pub enum RecommendedAction {
    /// Hand the ready steps to workers.
    ExecuteReadySteps,
    /// Wait for the running steps.
    WaitForCompletion,
    /// A step failed for good: resolve it manually or give up on the task.
    HandleFailures,
    /// Mark the task complete.
    FinalizeTask,
    /// Check again later.
    WaitForDependencies,
}

labels!(RecommendedAction {
    ExecuteReadySteps => "execute_ready_steps",
    WaitForCompletion => "wait_for_completion",
    HandleFailures => "handle_failures",
    FinalizeTask => "finalize_task",
    WaitForDependencies => "wait_for_dependencies",
});

/// A task's health (SQL type `tasker_health_status`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, DbEnum, Serialize, Deserialize,
)]
#[ExistingTypePath = "crate::enums::sql_types::TaskerHealthStatus"]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// No step is in error.
    Healthy,
    /// Some step is in error, but it may be retried or other work is ready.
    Recovering,
    /// A step failed for good and nothing is ready.
    Blocked,
}

labels!(HealthStatus {
    Healthy => "healthy",
    Recovering => "recovering",
    Blocked => "blocked",
});
