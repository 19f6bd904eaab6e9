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

pub use claim::*;
pub use create::*;
pub use lifecycle::*;
pub use request::*;
pub use template::*;
pub use transition::*;
