//! The integration tests: one binary, so the crate, the test harness and the shared
//! helpers below are compiled and linked once. Each module is one area of behaviour;
//! every test gets its own database cloned from a migrated template
//! (`tasker_diesel::testing`).

// Shared by the modules below.
mod histories;
mod oracle;
mod support;

mod adoption;
mod claims;
mod column_widths;
mod concurrency;
mod construction;
mod dag_properties;
mod dispatch;
mod enums;
mod execution_context;
mod faults;
mod hardening;
mod harness;
mod integrity;
mod legacy_views;
mod lifecycle;
mod maintained_readiness;
mod migrations;
mod models;
mod plans;
mod rails_engine;
mod readiness;
mod readiness_properties;
mod readme;
mod replicas;
mod transitions;
mod worker;
mod write_path_properties;
