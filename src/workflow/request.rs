//! A request for a task of a template, and its validation: everything
//! [`create_task`](super::create_task) and [`create_tasks`](super::create_tasks)
//! check before the first round trip.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDateTime;
use serde_json::Value;

use super::template::{fit, TaskTemplate, TemplateError, Unfit};
use crate::arguments;

/// Longest initiator, source system and reason (`VARCHAR(128)` in `tasker_tasks`).
pub const MAX_REQUEST_FIELD_LENGTH: usize = 128;
/// Longest identity hash (`tasker_tasks.identity_hash VARCHAR(128)`).
pub const MAX_IDENTITY_HASH_LENGTH: usize = 128;

/// A request for one task of a template: the template plus what is specific
/// to this instance.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest<'a> {
    /// Borrowed: one template typically serves many requests.
    pub template: &'a TaskTemplate,
    /// The task's input; `{}` unless set.
    pub context: Value,
    /// Who or what asks for the task (a user, a service), at most 128 characters.
    pub initiator: Option<String>,
    /// The system the request comes from, at most 128 characters.
    pub source_system: Option<String>,
    /// Why the task is requested, at most 128 characters.
    pub reason: Option<String>,
    /// Stored as a JSON array of strings.
    pub tags: Option<Vec<String>>,
    /// Skippable steps this task bypasses, stored as a JSON array of names;
    /// they start `resolved_manually`.
    pub bypass_steps: Option<Vec<String>>,
    /// `None`: the transaction's time, in UTC.
    pub requested_at: Option<NaiveDateTime>,
    /// `None`: the default hash of namespace, name, version and context
    /// (see [`create_task`](super::create_task)).
    pub identity_hash: Option<String>,
    /// Step-specific input by step name, stored in the step's `inputs`.
    pub inputs: BTreeMap<String, Value>,
}

impl<'a> TaskRequest<'a> {
    /// A request for a task of `template` with an empty context.
    pub fn new(template: &'a TaskTemplate) -> Self {
        TaskRequest {
            template,
            context: Value::Object(Default::default()),
            initiator: None,
            source_system: None,
            reason: None,
            tags: None,
            bypass_steps: None,
            requested_at: None,
            identity_hash: None,
            inputs: BTreeMap::new(),
        }
    }

    /// Sets the task's input.
    pub fn context(mut self, context: Value) -> Self {
        self.context = context;
        self
    }

    /// Sets who or what asks for the task.
    pub fn initiator(mut self, initiator: impl Into<String>) -> Self {
        self.initiator = Some(initiator.into());
        self
    }

    /// Sets the system the request comes from.
    pub fn source_system(mut self, source_system: impl Into<String>) -> Self {
        self.source_system = Some(source_system.into());
        self
    }

    /// Sets why the task is requested.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the task's tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the skippable steps the task bypasses.
    pub fn bypass_steps(mut self, steps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.bypass_steps = Some(steps.into_iter().map(Into::into).collect());
        self
    }

    /// Sets when the task was requested (UTC).
    pub fn requested_at(mut self, requested_at: NaiveDateTime) -> Self {
        self.requested_at = Some(requested_at);
        self
    }

    /// Sets the identity hash instead of the default one.
    pub fn identity_hash(mut self, identity_hash: impl Into<String>) -> Self {
        self.identity_hash = Some(identity_hash.into());
        self
    }

    /// Sets the inputs of the step called `step`.
    pub fn input(mut self, step: impl Into<String>, inputs: Value) -> Self {
        self.inputs.insert(step.into(), inputs);
        self
    }

    /// Checks the template ([`TaskTemplate::validate`]), then that inputs
    /// and bypasses name steps of the template (bypassed ones skippable) and
    /// that the request's own fields fit their columns: text and JSON without
    /// NUL characters (which PostgreSQL cannot store), `requested_at` within
    /// PostgreSQL's range.
    ///
    /// The first problem found is returned, in that order, so the same
    /// request always gives the same error.
    pub fn validate(&self) -> Result<(), RequestError> {
        self.template.validate()?;
        if let Some(step) = self
            .inputs
            .keys()
            .find(|step| self.template.find_step(step).is_none())
        {
            return Err(RequestError::UnknownStepInput { step: step.clone() });
        }
        for name in self.bypass_steps.iter().flatten() {
            match self.template.find_step(name) {
                None => return Err(RequestError::UnknownBypassStep { step: name.clone() }),
                Some(step) if !step.skippable => {
                    return Err(RequestError::NotSkippable { step: name.clone() })
                }
                Some(_) => {}
            }
        }
        for (field, value) in [
            (RequestField::Initiator, &self.initiator),
            (RequestField::SourceSystem, &self.source_system),
            (RequestField::Reason, &self.reason),
        ] {
            if let Some(value) = value {
                check_length(field, value, MAX_REQUEST_FIELD_LENGTH)?;
            }
        }
        for tag in self.tags.iter().flatten() {
            if let Some(problem) = arguments::text_problem(tag) {
                return Err(RequestError::Unstorable {
                    field: RequestField::Tags,
                    problem: format!("hold {tag:?}, which {problem}"),
                });
            }
        }
        if let Some(problem) = arguments::json_problem(&self.context) {
            return Err(RequestError::Unstorable {
                field: RequestField::Context,
                problem,
            });
        }
        for (step, inputs) in &self.inputs {
            if let Some(problem) = arguments::json_problem(inputs) {
                return Err(RequestError::Unstorable {
                    field: RequestField::Inputs,
                    problem: format!("of step {step} {problem}"),
                });
            }
        }
        if let Some(problem) = self.requested_at.and_then(arguments::timestamp_problem) {
            return Err(RequestError::Unstorable {
                field: RequestField::RequestedAt,
                problem,
            });
        }
        if let Some(identity_hash) = &self.identity_hash {
            if identity_hash.trim().is_empty() {
                return Err(RequestError::Blank {
                    field: RequestField::IdentityHash,
                });
            }
            check_length(
                RequestField::IdentityHash,
                identity_hash,
                MAX_IDENTITY_HASH_LENGTH,
            )?;
        }
        Ok(())
    }
}

/// A text field of the request that fits its column ([`fit`]).
fn check_length(field: RequestField, value: &str, max_length: usize) -> Result<(), RequestError> {
    fit(value, max_length).map_err(|unfit| match unfit {
        Unfit::Unstorable(problem) => RequestError::Unstorable { field, problem },
        Unfit::TooLong => RequestError::TooLong {
            field,
            value: value.to_owned(),
            max_length,
        },
    })
}

/// A field of a task request (its own, not its template's) that has a limit
/// or must not be blank: the column of `tasker_tasks` (or, for inputs,
/// `tasker_workflow_steps`) it is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestField {
    /// `tasker_tasks.initiator`.
    Initiator,
    /// `tasker_tasks.source_system`.
    SourceSystem,
    /// `tasker_tasks.reason`.
    Reason,
    /// `tasker_tasks.identity_hash`.
    IdentityHash,
    /// `tasker_tasks.context`.
    Context,
    /// A step's `tasker_workflow_steps.inputs`.
    Inputs,
    /// `tasker_tasks.tags`.
    Tags,
    /// `tasker_tasks.requested_at`.
    RequestedAt,
}

impl fmt::Display for RequestField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestField::Initiator => "initiator",
            RequestField::SourceSystem => "source system",
            RequestField::Reason => "reason",
            RequestField::IdentityHash => "identity hash",
            RequestField::Context => "context",
            RequestField::Inputs => "inputs",
            RequestField::Tags => "tags",
            RequestField::RequestedAt => "requested_at",
        })
    }
}

/// Why a task request cannot be built ([`TaskRequest::validate`]): its
/// template, or what the request adds to it. Nothing has been written when it
/// is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request's template cannot be built.
    #[error("invalid task template: {0}")]
    Template(#[from] TemplateError),
    /// An empty (or whitespace-only) identity hash.
    #[error("{field} is blank")]
    Blank {
        /// The blank field.
        field: RequestField,
    },
    /// A value longer than its column.
    #[error(
        "{field} {value:?} has {} characters, at most {max_length} fit",
        value.chars().count()
    )]
    TooLong {
        /// The field that is too long.
        field: RequestField,
        /// The value given.
        value: String,
        /// The most characters its column holds.
        max_length: usize,
    },
    /// A value PostgreSQL cannot store: text or JSON with a NUL character,
    /// or a timestamp outside PostgreSQL's range.
    #[error("{field} {problem}")]
    Unstorable {
        /// The field holding the value.
        field: RequestField,
        /// What is wrong, and where in a JSON value.
        problem: String,
    },
    /// Inputs for a step the template does not have.
    #[error("inputs given for {step}, which is not a step of the template")]
    UnknownStepInput {
        /// The step name the inputs were given for.
        step: String,
    },
    /// A bypassed step the template does not have.
    #[error("bypass of {step}, which is not a step of the template")]
    UnknownBypassStep {
        /// The step name given in `bypass_steps`.
        step: String,
    },
    /// A bypassed step that is not skippable.
    #[error("step {step} is not skippable and cannot be bypassed")]
    NotSkippable {
        /// The step's name.
        step: String,
    },
}
