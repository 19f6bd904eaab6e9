//! Catalog rows: namespaces, dependent systems, task and step templates.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schema::{
    tasker_dependent_system_object_maps, tasker_dependent_systems, tasker_named_steps,
    tasker_named_tasks, tasker_named_tasks_named_steps, tasker_task_namespaces,
};

/// A namespace grouping task templates.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, Deserialize,
)]
#[diesel(table_name = tasker_task_namespaces, primary_key(task_namespace_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TaskNamespace {
    /// The namespace's id (primary key).
    pub task_namespace_id: i32,
    /// The namespace's name, unique and at most 64 characters.
    pub name: String,
    /// What the namespace is for, at most 255 characters; `None` when not given.
    pub description: Option<String>,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A namespace to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_task_namespaces)]
pub struct NewTaskNamespace<'a> {
    /// The namespace's name, unique and at most 64 characters.
    pub name: &'a str,
    /// What the namespace is for, at most 255 characters; `None` stores NULL.
    pub description: Option<&'a str>,
}

/// An external system that steps talk to.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, Deserialize,
)]
#[diesel(table_name = tasker_dependent_systems, primary_key(dependent_system_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct DependentSystem {
    /// The dependent system's id (primary key).
    pub dependent_system_id: i32,
    /// The system's name, unique and at most 64 characters.
    pub name: String,
    /// What the system is, at most 255 characters; `None` when not given.
    pub description: Option<String>,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A dependent system to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_dependent_systems)]
pub struct NewDependentSystem<'a> {
    /// The system's name, unique and at most 64 characters.
    pub name: &'a str,
    /// What the system is, at most 255 characters; `None` stores NULL.
    pub description: Option<&'a str>,
}

/// A task template: namespace, name and version identify it.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_named_tasks, primary_key(named_task_id))]
#[diesel(belongs_to(TaskNamespace, foreign_key = task_namespace_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct NamedTask {
    /// The task template's id (primary key).
    pub named_task_id: i32,
    /// The [`TaskNamespace`] the template belongs to.
    pub task_namespace_id: i32,
    /// The template's name within its namespace, at most 64 characters.
    pub name: String,
    /// The template's version (a semantic version string, at most 16 characters); namespace, name and version identify the template.
    pub version: String,
    /// What the template does, at most 255 characters; `None` when not given.
    pub description: Option<String>,
    /// Free-form template configuration owned by the application; an empty object unless set, `None` only when NULL was stored.
    pub configuration: Option<Value>,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A task template to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_named_tasks)]
pub struct NewNamedTask<'a> {
    /// The [`TaskNamespace`] the template belongs to.
    pub task_namespace_id: i32,
    /// The template's name within its namespace, at most 64 characters.
    pub name: &'a str,
    /// The template's version (a semantic version string, at most 16 characters); namespace, name and version must be unique.
    pub version: &'a str,
    /// What the template does, at most 255 characters; `None` stores NULL.
    pub description: Option<&'a str>,
    /// Free-form template configuration owned by the application; `None` stores the default, an empty object.
    pub configuration: Option<&'a Value>,
}

/// A step template: a named unit of work against one dependent system.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Queryable,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_named_steps, primary_key(named_step_id))]
#[diesel(belongs_to(DependentSystem, foreign_key = dependent_system_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct NamedStep {
    /// The step template's id (primary key).
    pub named_step_id: i32,
    /// The [`DependentSystem`] the step works against.
    pub dependent_system_id: i32,
    /// The step template's name, unique within its dependent system and at most 128 characters.
    pub name: String,
    /// What the step does, at most 255 characters; `None` when not given.
    pub description: Option<String>,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A step template to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_named_steps)]
pub struct NewNamedStep<'a> {
    /// The [`DependentSystem`] the step works against.
    pub dependent_system_id: i32,
    /// The step template's name, unique within its dependent system and at most 128 characters.
    pub name: &'a str,
    /// What the step does, at most 255 characters; `None` stores NULL.
    pub description: Option<&'a str>,
}

/// A step template's membership in a task template, with the defaults its
/// step instances start from.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Queryable,
    Selectable,
    Identifiable,
    Associations,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = tasker_named_tasks_named_steps)]
#[diesel(belongs_to(NamedTask, foreign_key = named_task_id))]
#[diesel(belongs_to(NamedStep, foreign_key = named_step_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct NamedTaskNamedStep {
    /// The membership's id (primary key).
    pub id: i32,
    /// The task template ([`NamedTask`]) that has the step.
    pub named_task_id: i32,
    /// The step template ([`NamedStep`]) the task template has, at most once.
    pub named_step_id: i32,
    /// Whether a task may skip (bypass) the instances of this step.
    pub skippable: bool,
    /// The `retryable` that step instances created from this template start with.
    pub default_retryable: bool,
    /// The `retry_limit` (attempts allowed in all, at least 0) that step instances created from this template start with.
    pub default_retry_limit: i32,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// A step template membership to insert; `None` fields take the SQL defaults
/// (not skippable, retryable, retry limit 3).
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_named_tasks_named_steps)]
pub struct NewNamedTaskNamedStep {
    /// The task template ([`NamedTask`]) that gets the step.
    pub named_task_id: i32,
    /// The step template ([`NamedStep`]) added to the task template, at most once.
    pub named_step_id: i32,
    /// Whether a task may bypass the instances of this step; `None` stores the default, false.
    pub skippable: Option<bool>,
    /// The `retryable` its step instances start with; `None` stores the default, true.
    pub default_retryable: Option<bool>,
    /// The `retry_limit` its step instances start with (at least 0); `None` stores the default, 3.
    pub default_retry_limit: Option<i32>,
}

/// Maps an object's id in one dependent system to its id in another. Both
/// `dependent_system_*_id` columns reference [`DependentSystem`].
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, Deserialize,
)]
#[diesel(table_name = tasker_dependent_system_object_maps)]
#[diesel(primary_key(dependent_system_object_map_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct DependentSystemObjectMap {
    /// The map's id (primary key).
    pub dependent_system_object_map_id: i64,
    /// Dependent system one: the system `remote_id_one` belongs to.
    pub dependent_system_one_id: i32,
    /// Dependent system two: the system `remote_id_two` belongs to.
    pub dependent_system_two_id: i32,
    /// The object's id in dependent system one, at most 128 characters.
    pub remote_id_one: String,
    /// The object's id in dependent system two, at most 128 characters.
    pub remote_id_two: String,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// An object map to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_dependent_system_object_maps)]
pub struct NewDependentSystemObjectMap<'a> {
    /// Dependent system one: the [`DependentSystem`] `remote_id_one` belongs to.
    pub dependent_system_one_id: i32,
    /// Dependent system two: the [`DependentSystem`] `remote_id_two` belongs to.
    pub dependent_system_two_id: i32,
    /// The object's id in dependent system one, at most 128 characters.
    pub remote_id_one: &'a str,
    /// The object's id in dependent system two, at most 128 characters.
    pub remote_id_two: &'a str,
}
