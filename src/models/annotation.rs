//! Typed JSON annotations on tasks.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::models::Task;
use crate::schema::{tasker_annotation_types, tasker_task_annotations};

/// A kind of annotation.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, Deserialize,
)]
#[diesel(table_name = tasker_annotation_types, primary_key(annotation_type_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct AnnotationType {
    /// The annotation type's id (primary key).
    pub annotation_type_id: i32,
    /// The type's name, unique and at most 64 characters.
    pub name: String,
    /// What annotations of this type hold, at most 255 characters; `None` when not given.
    pub description: Option<String>,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// An annotation type to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_annotation_types)]
pub struct NewAnnotationType<'a> {
    /// The type's name, unique and at most 64 characters.
    pub name: &'a str,
    /// What annotations of this type hold, at most 255 characters; `None` stores NULL.
    pub description: Option<&'a str>,
}

/// A note of some [`AnnotationType`] attached to a task.
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
#[diesel(table_name = tasker_task_annotations, primary_key(task_annotation_id))]
#[diesel(belongs_to(Task, foreign_key = task_id))]
#[diesel(belongs_to(AnnotationType, foreign_key = annotation_type_id))]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TaskAnnotation {
    /// The annotation's id (primary key).
    pub task_annotation_id: i64,
    /// The [`Task`] the annotation is attached to; it is deleted with the task.
    pub task_id: i64,
    /// The [`AnnotationType`] of the annotation.
    pub annotation_type_id: i32,
    /// The annotation's JSON content; `None` when NULL was stored.
    pub annotation: Option<Value>,
    /// When the row was created (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last updated (UTC); a trigger keeps it current.
    pub updated_at: NaiveDateTime,
}

/// An annotation to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_task_annotations)]
pub struct NewTaskAnnotation<'a> {
    /// The [`Task`] the annotation is attached to.
    pub task_id: i64,
    /// The [`AnnotationType`] of the annotation.
    pub annotation_type_id: i32,
    /// The annotation's JSON content; `None` stores NULL.
    pub annotation: Option<&'a Value>,
}
