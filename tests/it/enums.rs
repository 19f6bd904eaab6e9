//! The Rust enums list exactly the labels of their SQL enum types, in order
//! (but the step state's comparison-only 'skipped').

use diesel::prelude::*;
use diesel::sql_types::Text;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{ExecutionStatus, HealthStatus, RecommendedAction, StepState, TaskState};

#[derive(QueryableByName)]
struct Label {
    #[diesel(sql_type = Text)]
    label: String,
}

fn sql_labels(conn: &mut PgConnection, sql_type: &str) -> Vec<String> {
    // The type name comes from the list below, never from input.
    diesel::sql_query(format!(
        "SELECT unnest(enum_range(NULL::{sql_type}))::text AS label"
    ))
    .load::<Label>(conn)
    .unwrap()
    .into_iter()
    .map(|row| row.label)
    .collect()
}

fn rust_labels<T: std::fmt::Display>(all: &[T]) -> Vec<String> {
    all.iter().map(ToString::to_string).collect()
}

#[test]
fn rust_labels_match_the_sql_enum_types() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let cases = [
        ("tasker_step_state", rust_labels(&StepState::ALL)),
        ("tasker_task_state", rust_labels(&TaskState::ALL)),
        (
            "tasker_execution_status",
            rust_labels(&ExecutionStatus::ALL),
        ),
        (
            "tasker_recommended_action",
            rust_labels(&RecommendedAction::ALL),
        ),
        ("tasker_health_status", rust_labels(&HealthStatus::ALL)),
    ];
    for (sql_type, mut labels) in cases {
        // 'skipped' is a label for the Rails engine's queries only: no row may
        // hold it, so no Rust state has it (loading it is an error).
        if sql_type == "tasker_step_state" {
            labels.push("skipped".to_owned());
        }
        assert_eq!(sql_labels(&mut conn, sql_type), labels, "{sql_type}");
    }
}

#[test]
fn serde_uses_the_sql_labels() {
    for status in ExecutionStatus::ALL {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
    for action in RecommendedAction::ALL {
        assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
    }
    for health in HealthStatus::ALL {
        assert_eq!(serde_json::to_value(health).unwrap(), health.as_str());
    }
}
