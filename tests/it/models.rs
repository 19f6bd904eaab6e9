//! Every model round-trips through insert and select.

use chrono::{Duration, NaiveDate, Utc};
use diesel::prelude::*;
use serde_json::json;
use tasker_diesel::models::*;
use tasker_diesel::schema::*;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{StepState, TaskState};

use crate::support;

#[test]
fn catalog_rows_round_trip() {
    let db = TestDatabase::new();
    let mut conn = db.connection();

    let namespace: TaskNamespace = diesel::insert_into(tasker_task_namespaces::table)
        .values(NewTaskNamespace {
            name: "payments",
            description: Some("money in and out"),
        })
        .get_result(&mut conn)
        .unwrap();
    let system: DependentSystem = diesel::insert_into(tasker_dependent_systems::table)
        .values(NewDependentSystem {
            name: "stripe",
            description: None,
        })
        .get_result(&mut conn)
        .unwrap();
    let other_system: DependentSystem = diesel::insert_into(tasker_dependent_systems::table)
        .values(NewDependentSystem {
            name: "ledger",
            description: None,
        })
        .get_result(&mut conn)
        .unwrap();
    let configuration = json!({"timeout_seconds": 30});
    let named_task: NamedTask = diesel::insert_into(tasker_named_tasks::table)
        .values(NewNamedTask {
            task_namespace_id: namespace.task_namespace_id,
            name: "refund",
            version: "2.1.0",
            description: Some("refund an order"),
            configuration: Some(&configuration),
        })
        .get_result(&mut conn)
        .unwrap();
    let named_step: NamedStep = diesel::insert_into(tasker_named_steps::table)
        .values(NewNamedStep {
            dependent_system_id: system.dependent_system_id,
            name: "issue_refund",
            description: None,
        })
        .get_result(&mut conn)
        .unwrap();
    let membership: NamedTaskNamedStep = diesel::insert_into(tasker_named_tasks_named_steps::table)
        .values(NewNamedTaskNamedStep {
            named_task_id: named_task.named_task_id,
            named_step_id: named_step.named_step_id,
            skippable: None,
            default_retryable: Some(false),
            default_retry_limit: None,
        })
        .get_result(&mut conn)
        .unwrap();
    let object_map: DependentSystemObjectMap =
        diesel::insert_into(tasker_dependent_system_object_maps::table)
            .values(NewDependentSystemObjectMap {
                dependent_system_one_id: system.dependent_system_id,
                dependent_system_two_id: other_system.dependent_system_id,
                remote_id_one: "ch_123",
                remote_id_two: "txn_9",
            })
            .get_result(&mut conn)
            .unwrap();

    assert_eq!(namespace.description.as_deref(), Some("money in and out"));
    assert_eq!(named_task.configuration, Some(configuration));
    assert_eq!(
        (
            membership.skippable,
            membership.default_retryable,
            membership.default_retry_limit
        ),
        (false, false, 3),
        "unset fields take the SQL defaults"
    );
    assert_eq!(object_map.remote_id_two, "txn_9");

    let loaded_task = tasker_named_tasks::table
        .find(named_task.named_task_id)
        .select(NamedTask::as_select())
        .first(&mut conn)
        .unwrap();
    assert_eq!(loaded_task, named_task);
    let of_namespace: Vec<NamedTask> = NamedTask::belonging_to(&namespace)
        .select(NamedTask::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(of_namespace, vec![named_task.clone()]);
    let steps_of_task: Vec<NamedTaskNamedStep> = NamedTaskNamedStep::belonging_to(&named_task)
        .select(NamedTaskNamedStep::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(steps_of_task, vec![membership]);
    let default_configuration: NamedTask = diesel::insert_into(tasker_named_tasks::table)
        .values(NewNamedTask {
            task_namespace_id: namespace.task_namespace_id,
            name: "refund",
            version: "2.2.0",
            description: None,
            configuration: None,
        })
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(default_configuration.configuration, Some(json!({})));
}

#[test]
fn task_and_step_rows_round_trip() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 1);
    let context = json!({"order_id": 42});
    let tags = json!(["urgent"]);
    let requested_at = NaiveDate::from_ymd_opt(2026, 1, 2)
        .unwrap()
        .and_hms_micro_opt(3, 4, 5, 6)
        .unwrap();
    let task: Task = diesel::insert_into(tasker_tasks::table)
        .values(NewTask {
            requested_at: Some(requested_at),
            initiator: Some("alice"),
            source_system: Some("web"),
            reason: Some("customer request"),
            tags: Some(&tags),
            context: Some(&context),
            ..NewTask::new(fixture.named_task.named_task_id, "order-42")
        })
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        (
            task.complete,
            task.requested_at,
            task.context.clone(),
            task.tags.clone()
        ),
        (false, requested_at, Some(context), Some(tags))
    );

    let inputs = json!({"amount": 10});
    let step: WorkflowStep = diesel::insert_into(tasker_workflow_steps::table)
        .values(NewWorkflowStep {
            task_id: task.task_id,
            named_step_id: fixture.named_steps[0].named_step_id,
            retryable: Some(false),
            inputs: Some(&inputs),
            ..NewWorkflowStep::default()
        })
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        (
            step.retryable,
            step.retry_limit,
            step.attempts,
            step.in_process,
            step.processed
        ),
        (false, Some(3), Some(0), false, false),
        "unset fields take the SQL defaults"
    );
    assert_eq!(step.inputs, Some(inputs));

    let loaded: Vec<WorkflowStep> = WorkflowStep::belonging_to(&task)
        .select(WorkflowStep::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(loaded, vec![step]);
    let reloaded = tasker_tasks::table
        .find(task.task_id)
        .select(Task::as_select())
        .first(&mut conn)
        .unwrap();
    assert_eq!(reloaded, task);
}

#[test]
fn edges_round_trip() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::task_with_steps(&mut conn, 2);
    let (parent, child) = (
        fixture.steps[0].workflow_step_id,
        fixture.steps[1].workflow_step_id,
    );
    let edge = support::add_edge(&mut conn, parent, child).unwrap();
    assert_eq!(
        (edge.from_step_id, edge.to_step_id, edge.name.as_str()),
        (parent, child, "provides")
    );
    let parents: Vec<WorkflowStepEdge> = tasker_workflow_step_edges::table
        .filter(tasker_workflow_step_edges::to_step_id.eq(child))
        .select(WorkflowStepEdge::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(parents, vec![edge]);
}

#[test]
fn every_step_state_round_trips() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let step = support::task_with_steps(&mut conn, 1).steps.remove(0);
    let metadata = json!({"worker": "w1"});
    let rows: Vec<NewWorkflowStepTransition> = StepState::ALL
        .iter()
        .enumerate()
        .map(|(index, &state)| NewWorkflowStepTransition {
            workflow_step_id: step.workflow_step_id,
            to_state: state,
            from_state: index
                .checked_sub(1)
                .map(|previous| StepState::ALL[previous]),
            metadata: Some(&metadata),
            sort_key: index as i32 + 1,
            most_recent: index + 1 == StepState::ALL.len(),
        })
        .collect();
    diesel::insert_into(tasker_workflow_step_transitions::table)
        .values(&rows)
        .execute(&mut conn)
        .unwrap();

    let history: Vec<WorkflowStepTransition> = WorkflowStepTransition::belonging_to(&step)
        .order(tasker_workflow_step_transitions::sort_key)
        .select(WorkflowStepTransition::as_select())
        .load(&mut conn)
        .unwrap();
    let states: Vec<StepState> = history.iter().map(|row| row.to_state).collect();
    assert_eq!(states, StepState::ALL);
    assert_eq!(history[0].from_state, None);
    assert_eq!(history[1].from_state, Some(StepState::Pending));
    assert_eq!(history.iter().filter(|row| row.most_recent).count(), 1);
    assert_eq!(history[5].metadata, Some(metadata));
}

#[test]
fn every_task_state_round_trips() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = support::task_with_steps(&mut conn, 0).task;
    let rows: Vec<NewTaskTransition> = TaskState::ALL
        .iter()
        .enumerate()
        .map(|(index, &state)| NewTaskTransition {
            task_id: task.task_id,
            to_state: state,
            from_state: None,
            metadata: None,
            sort_key: index as i32 + 1,
            most_recent: false,
        })
        .collect();
    diesel::insert_into(tasker_task_transitions::table)
        .values(&rows)
        .execute(&mut conn)
        .unwrap();
    let states: Vec<TaskState> = TaskTransition::belonging_to(&task)
        .order(tasker_task_transitions::sort_key)
        .select(tasker_task_transitions::to_state)
        .load(&mut conn)
        .unwrap();
    assert_eq!(states, TaskState::ALL);
    let metadata: Option<serde_json::Value> = tasker_task_transitions::table
        .select(tasker_task_transitions::metadata)
        .first(&mut conn)
        .unwrap();
    assert_eq!(
        metadata,
        Some(json!({})),
        "metadata defaults to an empty object"
    );
}

#[test]
fn annotations_round_trip() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = support::task_with_steps(&mut conn, 0).task;
    let kind: AnnotationType = diesel::insert_into(tasker_annotation_types::table)
        .values(NewAnnotationType {
            name: "audit",
            description: Some("who did what"),
        })
        .get_result(&mut conn)
        .unwrap();
    let note = json!({"by": "ops"});
    let annotation: TaskAnnotation = diesel::insert_into(tasker_task_annotations::table)
        .values(NewTaskAnnotation {
            task_id: task.task_id,
            annotation_type_id: kind.annotation_type_id,
            annotation: Some(&note),
        })
        .get_result(&mut conn)
        .unwrap();
    let of_task: Vec<TaskAnnotation> = TaskAnnotation::belonging_to(&task)
        .select(TaskAnnotation::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(of_task, vec![annotation.clone()]);
    assert_eq!(annotation.annotation, Some(note));
}

#[test]
fn states_serialize_as_their_sql_labels() {
    for state in StepState::ALL {
        assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
        assert_eq!(
            serde_json::from_value::<StepState>(json!(state.to_string())).unwrap(),
            state
        );
    }
    assert_eq!(TaskState::default(), TaskState::Pending);
    assert_eq!(TaskState::ResolvedManually.to_string(), "resolved_manually");
}

#[test]
fn models_serialize_to_json_and_back() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let step = support::task_with_steps(&mut conn, 1).steps.remove(0);
    let text = serde_json::to_string(&step).unwrap();
    assert_eq!(serde_json::from_str::<WorkflowStep>(&text).unwrap(), step);
}

#[test]
fn timestamps_are_utc_whatever_the_session_time_zone() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    diesel::sql_query("SET TIME ZONE 'America/New_York'")
        .execute(&mut conn)
        .unwrap();
    let before = Utc::now().naive_utc();
    let task = support::task_with_steps(&mut conn, 0).task;
    let after = Utc::now().naive_utc();
    // now() is the transaction's start, which may be a little before `before`.
    let slack = Duration::seconds(5);
    for stamp in [task.created_at, task.updated_at, task.requested_at] {
        assert!(
            before - slack <= stamp && stamp <= after,
            "{stamp} is not UTC now"
        );
    }
}

#[test]
fn updated_at_follows_updates_unless_set_explicitly() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let step = support::task_with_steps(&mut conn, 1).steps.remove(0);
    let long_ago = NaiveDate::from_ymd_opt(2001, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();

    let explicit: WorkflowStep = diesel::update(&step)
        .set((
            tasker_workflow_steps::attempts.eq(1),
            tasker_workflow_steps::updated_at.eq(long_ago),
        ))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(explicit.updated_at, long_ago, "an explicit value is kept");

    let implicit: WorkflowStep = diesel::update(&step)
        .set(tasker_workflow_steps::attempts.eq(2))
        .get_result(&mut conn)
        .unwrap();
    assert!(
        implicit.updated_at > long_ago,
        "an update that leaves updated_at alone refreshes it"
    );
}
