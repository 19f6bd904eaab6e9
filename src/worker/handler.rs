//! What a worker runs: handlers registered by step kind, the context a
//! handler gets and the failure it may return.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use serde_json::{json, Map, Value};

use diesel::PgConnection;

use super::inputs::{BatchInputs, StepInputs};
use super::lease::Leases;
use crate::workflow::{extend_step_claim, Claim, ClaimedStep, StepKind};
use crate::Result;

/// What a handler returns: the step's results, or why it failed.
pub type HandlerResult = std::result::Result<Value, StepFailure>;

/// A step handler: runs one claimed step. It may run on any of the worker's
/// threads, several at once.
pub type Handler = dyn Fn(&StepContext<'_>) -> HandlerResult + Send + Sync;

/// Why a step failed, and whether to try it again.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    /// Stored as the failure's `{"error": ..., "error_message": ...}` metadata
    /// (see [`fail_step`](crate::workflow::fail_step)).
    pub error: Value,
    /// `false`: the step is not retried (its task is blocked unless someone
    /// resolves the step). `true`: it is retried under its retry limit and
    /// the failure backoff.
    pub retryable: bool,
    /// The next attempt starts no earlier than this long after this one
    /// started (a `Retry-After`); the failure backoff applies as well.
    pub retry_after: Option<Duration>,
}

impl StepFailure {
    /// A failure worth another attempt.
    pub fn retryable(error: impl Into<Value>) -> Self {
        StepFailure {
            error: error.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure that another attempt would repeat.
    pub fn permanent(error: impl Into<Value>) -> Self {
        StepFailure {
            error: error.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Asks that the next attempt wait at least `delay` (at most
    /// [`MAX_DURATION`](crate::MAX_DURATION), about 68 years: a longer delay
    /// is taken as that; a failure that must never be retried is
    /// [`StepFailure::permanent`]).
    pub fn retry_after(self, delay: Duration) -> Self {
        StepFailure {
            retry_after: Some(delay),
            ..self
        }
    }
}

/// Any error is a retryable failure with its message, so `?` works in a
/// handler; return [`StepFailure::permanent`] for one that is not.
impl<E: std::error::Error> From<E> for StepFailure {
    fn from(error: E) -> Self {
        StepFailure::retryable(json!({ "message": error.to_string() }))
    }
}

/// Everything a handler knows about the step it runs.
///
/// The task's context and the parents' results are read from the database
/// the first time a handler of the claimed batch asks for them, for the whole
/// batch in one query; a handler that needs neither costs none.
pub struct StepContext<'a> {
    pub(super) step: &'a ClaimedStep,
    pub(super) batch: &'a BatchInputs,
    pub(super) conn: &'a RefCell<&'a mut PgConnection>,
    pub(super) leases: &'a Leases,
    pub(super) stopping: &'a AtomicBool,
}

impl StepContext<'_> {
    /// The step as it was claimed (ids, name, attempt, lease, inputs).
    pub fn step(&self) -> &ClaimedStep {
        self.step
    }

    /// The step's id.
    pub fn workflow_step_id(&self) -> i64 {
        self.step.workflow_step_id
    }

    /// Its task's id.
    pub fn task_id(&self) -> i64 {
        self.step.task_id
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.step.name
    }

    /// Which execution of the step this is, counting from 1.
    pub fn attempt(&self) -> i32 {
        self.step.attempt
    }

    /// The step's own inputs.
    pub fn inputs(&self) -> Option<&Value> {
        self.step.inputs.as_ref()
    }

    fn loaded(&self) -> Result<&StepInputs> {
        let mut conn = self.conn.borrow_mut();
        self.batch.of(&mut conn, self.step.workflow_step_id)
    }

    /// The task's context: the input its steps work on. An error when it
    /// holds JSON `serde_json` cannot decode (written by another writer):
    /// the other steps of the batch are not affected.
    pub fn task_context(&self) -> Result<Option<&Value>> {
        match &self.loaded()?.task_context {
            Ok(context) => Ok(context.as_ref()),
            Err(why) => Err(self.undecodable("task context", why)),
        }
    }

    /// The error for stored JSON of the step that cannot be decoded.
    fn undecodable(&self, what: &str, why: &str) -> crate::Error {
        crate::Error::Query(diesel::result::Error::DeserializationError(
            format!(
                "the {what} of workflow step {} cannot be decoded: {why}",
                self.step.workflow_step_id
            )
            .into(),
        ))
    }

    /// The task's namespace, name and version.
    pub fn task_template(&self) -> Result<(&str, &str, &str)> {
        let inputs = self.loaded()?;
        Ok((&inputs.namespace, &inputs.task_name, &inputs.task_version))
    }

    /// The results of the step's parents, by parent step name (`null` for a
    /// parent that completed without results, or was resolved by hand).
    pub fn parent_results(&self) -> Result<&Map<String, Value>> {
        match &self.loaded()?.parent_results {
            Ok(results) => Ok(results),
            Err(why) => Err(self.undecodable("parent results", why)),
        }
    }

    /// The results of the parent step named `name`.
    pub fn parent_result(&self, name: &str) -> Result<Option<&Value>> {
        Ok(self.parent_results()?.get(name))
    }

    /// Extends the claim to `lease` from now and returns until when it holds
    /// (UTC). The worker's heartbeat already keeps every claim it holds from
    /// running out; this is for a handler that wants a longer lease. Refused
    /// with [`crate::Refusal::ClaimLost`] or [`crate::Refusal::ClaimExpired`]
    /// when the claim no longer holds: the handler may stop, its result would
    /// be refused.
    pub fn extend_lease(&self, lease: Duration) -> Result<NaiveDateTime> {
        let claim: Claim = self.step.claim();
        let asked = Instant::now();
        let until = extend_step_claim(&mut self.conn.borrow_mut(), claim, lease)?;
        self.leases.extended_at(claim, asked, lease);
        Ok(until)
    }

    /// True once the worker is shutting down: a long handler may return
    /// early (with a retryable failure, say) instead of being cut off at the
    /// shutdown deadline.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("step", self.step)
            .finish_non_exhaustive()
    }
}

/// The handlers of a worker, by step kind.
///
/// A step runs under the most specific handler whose [`StepKind`] matches
/// it (one naming its task's namespace, name and version before one naming
/// its name only). The worker claims steps of these kinds only: steps of
/// other kinds stay ready for a worker that has a handler for them.
#[derive(Clone, Default)]
pub struct Handlers {
    pub(super) entries: Vec<Entry>,
}

#[derive(Clone)]
pub(super) struct Entry {
    pub kind: StepKind,
    pub handler: Arc<Handler>,
    /// At most this many steps of the kind held at once by the worker.
    pub limit: Option<usize>,
    /// Steps of the kind the worker holds (claimed, not yet reported).
    pub held: Arc<AtomicUsize>,
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Handlers::default()
    }

    /// Runs steps named `step` (in any task) with `handler`.
    pub fn on<F>(self, step: impl Into<String>, handler: F) -> Self
    where
        F: Fn(&StepContext<'_>) -> HandlerResult + Send + Sync + 'static,
    {
        self.on_kind(StepKind::named(step), handler)
    }

    /// Runs steps of `kind` with `handler`; a kind registered twice keeps the
    /// later handler.
    pub fn on_kind<F>(mut self, kind: StepKind, handler: F) -> Self
    where
        F: Fn(&StepContext<'_>) -> HandlerResult + Send + Sync + 'static,
    {
        self.entries.retain(|entry| entry.kind != kind);
        self.entries.push(Entry {
            kind,
            handler: Arc::new(handler),
            limit: None,
            held: Arc::new(AtomicUsize::new(0)),
        });
        self
    }

    /// This worker holds at most `max` steps of `kind` at once (claimed and
    /// not yet reported, over all its threads); other workers have their own
    /// limits. Ignored for a kind without a handler. At least 1:
    /// [`WorkerBuilder::build`](super::WorkerBuilder::build) refuses 0.
    pub fn limit(mut self, kind: &StepKind, max: usize) -> Self {
        for entry in &mut self.entries {
            if &entry.kind == kind {
                entry.limit = Some(max);
            }
        }
        self
    }

    /// The kinds that have a handler.
    pub fn kinds(&self) -> impl Iterator<Item = &StepKind> {
        self.entries.iter().map(|entry| &entry.kind)
    }

    /// The entry that runs a step named `step` of a task of `template`
    /// (namespace, name, version; `None`: unknown, so only kinds that name no
    /// task match).
    /// Returns the entry's index.
    pub(super) fn entry_for(
        &self,
        step: &str,
        template: Option<(&str, &str, &str)>,
    ) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| match template {
                Some((namespace, task, version)) => {
                    entry.kind.matches(step, namespace, task, version)
                }
                None => entry.kind.specificity() == 0 && entry.kind.step == step,
            })
            .max_by_key(|(_, entry)| entry.kind.specificity())
            .map(|(index, _)| index)
    }

    /// Whether a step's task must be known to find its handler.
    pub(super) fn has_task_scoped_kinds(&self) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.kind.specificity() > 0)
    }
}

impl Entry {
    /// Takes a slot of the kind's limit; false when the limit is reached.
    pub fn try_hold(&self) -> bool {
        match self.limit {
            None => {
                self.held.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => self
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held < max).then_some(held + 1)
                })
                .is_ok(),
        }
    }

    /// Gives a slot back.
    pub fn release(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a claim may take steps of the kind now.
    pub fn has_room(&self) -> bool {
        self.limit
            .is_none_or(|max| self.held.load(Ordering::Acquire) < max)
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|entry| (&entry.kind, entry.limit)))
            .finish()
    }
}
