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
    pub annotation_type_id: i32,
    pub name: String,
    pub description: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An annotation type to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_annotation_types)]
pub struct NewAnnotationType<'a> {
    pub name: &'a str,
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
    pub task_annotation_id: i64,
    pub task_id: i64,
    pub annotation_type_id: i32,
    pub annotation: Option<Value>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// An annotation to insert.
#[derive(Debug, Clone, Copy, Insertable, Serialize)]
#[diesel(table_name = tasker_task_annotations)]
pub struct NewTaskAnnotation<'a> {
    pub task_id: i64,
    pub annotation_type_id: i32,
    pub annotation: Option<&'a Value>,
}
