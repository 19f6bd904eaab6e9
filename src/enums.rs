//! Rust enums for the PostgreSQL enum types of the schema.
//!
//! Each maps onto the SQL type that `diesel print-schema` generated in
//! [`crate::schema::sql_types`], so a value that is not a variant can neither
//! be stored nor loaded.

use std::fmt;

use diesel_derive_enum::DbEnum;
use serde::{Deserialize, Serialize};

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

        impl $name {
            /// Every state, in the order of the SQL enum type.
            pub const ALL: [Self; 6] = [
                Self::Pending,
                Self::InProgress,
                Self::Complete,
                Self::Error,
                Self::Cancelled,
                Self::ResolvedManually,
            ];

            /// The label stored in PostgreSQL.
            pub const fn as_str(self) -> &'static str {
                match self {
                    Self::Pending => "pending",
                    Self::InProgress => "in_progress",
                    Self::Complete => "complete",
                    Self::Error => "error",
                    Self::Cancelled => "cancelled",
                    Self::ResolvedManually => "resolved_manually",
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
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
