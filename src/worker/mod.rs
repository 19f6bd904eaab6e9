//! A worker runtime on the write path: handlers by step kind, run by a pool
//! of threads that claim in batches, report in batches, keep their leases
//! alive, sleep on the wake-up when idle and shut down without losing a step.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde_json::json;
//! use tasker_diesel::worker::{Handlers, StepFailure, Worker};
//!
//! # fn main() -> tasker_diesel::Result<()> {
//! let pool = tasker_diesel::build_pool("postgres://localhost/app")?;
//! let handlers = Handlers::new()
//!     .on("fetch_order", |step| Ok(json!({ "order": step.task_context()?.cloned() })))
//!     .on("charge_card", |step| {
//!         let order = step.parent_result("fetch_order")?;
//!         match order {
//!             Some(order) => Ok(json!({ "charged": order })),
//!             None => Err(StepFailure::permanent("no order to charge")),
//!         }
//!     });
//! let worker = Worker::builder(pool, handlers).threads(4).batch(10).build()?.start();
//! // ... until the service stops:
//! let summary = worker.shutdown(Duration::from_secs(30));
//! println!("{:?}", summary.stats);
//! # Ok(())
//! # }
//! ```
//!
//! - **Which steps**: a worker claims only steps of the kinds it has
//!   handlers for ([`crate::workflow::StepKind`]: a step name, optionally of
//!   one task namespace, name and version); steps of other kinds stay ready
//!   for workers that run them. A kind may be limited to a number of steps
//!   held at once by the worker ([`Handlers::limit`]).
//! - **Handlers** return results or a [`StepFailure`] (retryable or not, with
//!   an optional `retry_after`). A panic is caught and recorded as a
//!   retryable failure with its message; the thread goes on.
//! - **Leases**: a heartbeat thread extends every claim the worker holds when
//!   half its lease is left, so a long step, or one waiting behind others in
//!   its batch, keeps its claim.
//! - **Sweeping and finalizing**: a sweeper thread releases expired claims
//!   (of any worker, one that died say) and finalizes every task whose steps
//!   are all done or blocked for good, whoever ran its last step
//!   ([`crate::workflow::finalize_settled_tasks`]).
//! - **Faults**: a lost connection or a transient error (deadlock,
//!   serialization failure) is retried with the same call on a new
//!   connection; reporting is idempotent per claim, so a result that had
//!   committed before the connection dropped is not written twice. Claims
//!   made by a call whose answer was lost expire and are released by a
//!   sweeper (the attempt counts).
//! - **Shutdown** ([`WorkerHandle::shutdown`]): no more claims; handlers in
//!   flight finish and their results are reported; steps not started are
//!   released at once (their attempt not counted). At the deadline every
//!   claim still held is released, so another worker takes it at once: a
//!   step is run at least once, and twice only when its handler outlives the
//!   deadline.
//! - **Observability**: [`WorkerHandle::stats`] and `tracing` spans
//!   `tasker_batch` (per report-and-claim call) and `tasker_step` (per step),
//!   with events for failures, panics, refused results and retries.
//!
//! The pool needs a connection per thread plus two (the heartbeat and the
//! sweeper); each thread keeps its own, which listens for the wake-up.

mod handler;
mod inputs;
mod lease;
mod runtime;
mod stats;

pub use handler::{Handler, HandlerResult, Handlers, StepContext, StepFailure};
pub use runtime::{Summary, Worker, WorkerBuilder, WorkerHandle};
pub use stats::Stats;
