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
    pub task_namespace_id: i32,
    pub name: String,
    pub description: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A namespace to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_task_namespaces)]
pub struct NewTaskNamespace<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
}

/// An external system that steps talk to.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, Deserialize,
)]
#[diesel(table_name = tasker_dependent_systems, primary_key(dependent_system_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct DependentSystem {
    pub dependent_system_id: i32,
    pub name: String,
    pub description: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A dependent system to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_dependent_systems)]
pub struct NewDependentSystem<'a> {
    pub name: &'a str,
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
    pub named_task_id: i32,
    pub task_namespace_id: i32,
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub configuration: Option<Value>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A task template to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_named_tasks)]
pub struct NewNamedTask<'a> {
    pub task_namespace_id: i32,
    pub name: &'a str,
    pub version: &'a str,
    pub description: Option<&'a str>,
    /// `None` stores the default, an empty object.
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
    pub named_step_id: i32,
    pub dependent_system_id: i32,
    pub name: String,
    pub description: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A step template to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_named_steps)]
pub struct NewNamedStep<'a> {
    pub dependent_system_id: i32,
    pub name: &'a str,
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
    pub id: i32,
    pub named_task_id: i32,
    pub named_step_id: i32,
    pub skippable: bool,
    pub default_retryable: bool,
    pub default_retry_limit: i32,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A step template membership to insert; `None` fields take the SQL defaults
/// (not skippable, retryable, retry limit 3).
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_named_tasks_named_steps)]
pub struct NewNamedTaskNamedStep {
    pub named_task_id: i32,
    pub named_step_id: i32,
    pub skippable: Option<bool>,
    pub default_retryable: Option<bool>,
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
    pub dependent_system_object_map_id: i64,
    pub dependent_system_one_id: i32,
    pub dependent_system_two_id: i32,
    pub remote_id_one: String,
    pub remote_id_two: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An object map to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_dependent_system_object_maps)]
pub struct NewDependentSystemObjectMap<'a> {
    pub dependent_system_one_id: i32,
    pub dependent_system_two_id: i32,
    pub remote_id_one: &'a str,
    pub remote_id_two: &'a str,
}
