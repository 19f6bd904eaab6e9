//! Typed rows of every `tasker_*` table: a `Queryable` read struct per table
//! and a `NewX<'a>` `Insertable` struct borrowing its fields.
//!
//! In the `NewX` structs an `Option` field left `None` inserts the column's
//! SQL default (Diesel's rule), so defaults are written once, in the migrations.
//!
//! # Reading is the use; writing goes through `workflow`
//!
//! The read structs are for your own queries (`tasker_tasks::table.find(id)`,
//! a dashboard, an export). The `NewX` structs of the workflow tables are raw
//! rows, for fixtures, imports and tools that know what they are doing: an
//! insert checks the table's constraints and its triggers (the DAG's
//! integrity, the maintained readiness), but not the request, the template or
//! the state machines. To build and move work, use the checked calls of
//! [`crate::workflow`]:
//!
//! | Instead of inserting | Call |
//! |---|---|
//! | [`NewTask`], [`NewWorkflowStep`], [`NewWorkflowStepEdge`] | [`create_task`](crate::workflow::create_task), [`create_tasks`](crate::workflow::create_tasks): validated, catalog found or created, idempotent by identity hash, in one transaction |
//! | [`NewWorkflowStepTransition`] | [`transition_workflow_step`](crate::workflow::transition_workflow_step), or the claim and report calls: the state machine checked and the step's flags kept in line (a claim also starts a pending task) |
//! | [`NewTaskTransition`] | [`transition_task`](crate::workflow::transition_task), [`cancel_task`](crate::workflow::cancel_task), [`finalize_task`](crate::workflow::finalize_task) |

mod annotation;
mod catalog;
mod task;
mod transition;
mod workflow_step;

pub use annotation::{AnnotationType, NewAnnotationType, NewTaskAnnotation, TaskAnnotation};
pub use catalog::{
    DependentSystem, DependentSystemObjectMap, NamedStep, NamedTask, NamedTaskNamedStep,
    NewDependentSystem, NewDependentSystemObjectMap, NewNamedStep, NewNamedTask,
    NewNamedTaskNamedStep, NewTaskNamespace, TaskNamespace,
};
pub use task::{NewTask, Task, TaskStepCounts};
pub use transition::{
    NewTaskTransition, NewWorkflowStepTransition, TaskTransition, WorkflowStepTransition,
};
pub use workflow_step::{NewWorkflowStep, NewWorkflowStepEdge, WorkflowStep, WorkflowStepEdge};
