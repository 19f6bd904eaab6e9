//! The manual: how the crate behaves, section by section. These pages hold
//! no items; every example in them is compiled, and run against a real
//! database by the crate's tests.
//!
//! The pages are Markdown files under `src/guide/`, readable on their own;
//! here, a name written as a link (`` [`StepReadinessStatus`] ``) resolves to
//! the item of that name.

// The pages describe the worker runtime, a default feature; built without
// it, their links to its items have nothing to point at.
#![cfg_attr(not(feature = "worker"), allow(rustdoc::broken_intra_doc_links))]

// Every public item a page may name, so that its links resolve by the
// item's own name. Rustdoc resolves the links of a module's outer doc in the
// scope around the module, this one; so the pages' own names (`readiness`,
// `schema`, ...) shadow the crate's modules, which pages link by path.
#[cfg(all(doc, feature = "worker"))]
#[allow(unused_imports)]
use crate::worker::*;
#[cfg(doc)]
#[allow(unused_imports)]
use crate::{adoption::*, error::*, models::*, readiness::*, replicas::*, workflow::*, *};

/// A doc-only module for a page.
macro_rules! page {
    ($name:ident, $file:literal) => {
        #[doc = include_str!($file)]
        pub mod $name {}
    };
}

page!(readiness, "guide/readiness.md");
page!(workflows, "guide/workflows.md");
page!(scaling, "guide/scaling.md");
page!(semantics, "guide/semantics.md");
page!(rails, "guide/rails.md");
page!(schema, "guide/schema.md");
