//! Typed rows of every `tasker_*` table: a `Queryable` read struct per table
//! and a `NewX<'a>` `Insertable` struct borrowing its fields.
//!
//! In the `NewX` structs an `Option` field left `None` inserts the column's
//! SQL default (Diesel's rule), so defaults are written once, in the migrations.

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
