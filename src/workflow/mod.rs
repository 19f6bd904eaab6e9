//! The write path: building tasks from templates, moving steps and tasks
//! through their state machines, claiming ready steps and recording results.
//!
//! Every operation is one call of a SQL function of the schema (or, for
//! building a task, one transaction), so it is atomic: a refusal
//! ([`crate::Refusal`]) leaves nothing written.

mod catalog;
mod claim;
mod create;
mod lifecycle;
mod request;
mod template;
mod transition;

pub use claim::{
    claim_ready_steps, complete_step, complete_steps, extend_step_claim, fail_step, fail_steps,
    release_expired_claims, release_steps, report_and_claim, report_steps, wait_for_claimable_work,
    Claim, ClaimRequest, ClaimedStep, ReportedStep, StepKind, StepOutcome, StepReport, Wakeup,
};
pub use create::{create_task, create_tasks, CreatedStep, CreatedTask, EDGE_NAME};
pub use lifecycle::{cancel_task, finalize_settled_tasks, finalize_task, FinalizedTask};
// The length limits are API on purpose: they are the widths of the columns a
// request is stored in, so a caller can check input before building a request.
pub use request::{
    RequestError, RequestField, TaskRequest, MAX_IDENTITY_HASH_LENGTH, MAX_REQUEST_FIELD_LENGTH,
};
pub use template::{
    StepTemplate, TaskTemplate, TemplateError, TemplateField, MAX_DEPENDENT_SYSTEM_LENGTH,
    MAX_DESCRIPTION_LENGTH, MAX_NAMESPACE_LENGTH, MAX_STEP_NAME_LENGTH, MAX_TASK_NAME_LENGTH,
    MAX_VERSION_LENGTH,
};
pub use transition::{
    resolve_step_manually, transition_task, transition_workflow_step, TransitionOptions,
};
