//! The manual: how the crate behaves, section by section. These pages hold
//! no items; every example in them is compiled, and run against a real
//! database by the crate's tests.

#[doc = include_str!("guide/readiness.md")]
pub mod readiness {}

#[doc = include_str!("guide/workflows.md")]
pub mod workflows {}

#[doc = include_str!("guide/scaling.md")]
pub mod scaling {}

#[doc = include_str!("guide/semantics.md")]
pub mod semantics {}

#[doc = include_str!("guide/rails.md")]
pub mod rails {}

#[doc = include_str!("guide/schema.md")]
pub mod schema {}
