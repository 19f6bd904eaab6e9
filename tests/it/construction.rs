//! Building a task from a template: catalog, task, steps and edges in one
//! transaction, idempotent by identity hash, nothing written when invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use serde_json::json;
use tasker_diesel::models::*;
use tasker_diesel::schema::*;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    create_task, create_tasks, CreatedTask, RequestError, RequestField, StepTemplate, TaskRequest,
    TaskTemplate, TemplateError, TemplateField,
};
use tasker_diesel::{Error, IntegrityRule, StepReadinessStatus, StepState};

use crate::support;

/// validate → (reserve_stock, charge_card) → ship, each step with other flags.
fn diamond() -> TaskTemplate {
    TaskTemplate::new("fulfillment", "process_order", "1.0.0")
        .description("validate, reserve and charge, ship")
        .step(StepTemplate::new("validate"))
        .step(
            StepTemplate::new("reserve_stock")
                .dependent_system("inventory")
                .retry_limit(5)
                .depends_on(["validate"]),
        )
        .step(
            StepTemplate::new("charge_card")
                .dependent_system("payments")
                .retryable(false)
                .depends_on(["validate"]),
        )
        .step(
            StepTemplate::new("ship")
                .dependent_system("shipping")
                .skippable(true)
                .retry_limit(1)
                .depends_on(["reserve_stock", "charge_card"]),
        )
}

/// A one-step template of the diamond's namespace.
fn refund() -> TaskTemplate {
    TaskTemplate::new("fulfillment", "refund", "1.0.0").step(StepTemplate::new("pay"))
}

/// Whether `error` says an identity hash belongs to another template.
fn is_duplicate_hash(error: &Error) -> bool {
    matches!(
        error,
        Error::Integrity {
            rule: IntegrityRule::DuplicateIdentityHash,
            ..
        }
    )
}

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct SequenceValue {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_value: Option<i64>,
}

/// Row count of every `tasker_` table, by table name.
fn row_counts(conn: &mut PgConnection) -> BTreeMap<String, i64> {
    let tables: Vec<TableName> = diesel::sql_query(
        "SELECT tablename::text AS name FROM pg_tables \
         WHERE schemaname = 'public' AND tablename LIKE 'tasker\\_%' ORDER BY 1",
    )
    .load(conn)
    .expect("list tasker tables");
    assert!(tables.len() >= 13, "tasker tables: {}", tables.len());
    tables
        .into_iter()
        .map(|table| {
            // Identifiers cannot be bound; these come from pg_tables.
            let count =
                diesel::sql_query(format!(r#"SELECT count(*) AS count FROM "{}""#, table.name))
                    .get_result::<Count>(conn)
                    .expect("count rows")
                    .count;
            (table.name, count)
        })
        .collect()
}

/// `last_value` of every `tasker_` sequence: an insert that hit a conflict
/// still moves it.
fn sequence_values(conn: &mut PgConnection) -> BTreeMap<String, Option<i64>> {
    diesel::sql_query(
        "SELECT sequencename::text AS name, last_value FROM pg_sequences \
         WHERE schemaname = 'public' AND sequencename LIKE 'tasker\\_%'",
    )
    .load::<SequenceValue>(conn)
    .expect("sequence values")
    .into_iter()
    .map(|sequence| (sequence.name, sequence.last_value))
    .collect()
}

fn step_names(created: &CreatedTask) -> Vec<&str> {
    created
        .steps
        .iter()
        .map(|step| step.name.as_str())
        .collect()
}

fn step_id(created: &CreatedTask, name: &str) -> i64 {
    created.step(name).expect(name).workflow_step_id
}

#[test]
fn a_diamond_creates_catalog_task_steps_and_edges_with_only_the_root_ready() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = diamond();
    let request = TaskRequest::new(&template)
        .context(json!({"order_id": 42}))
        .initiator("checkout")
        .source_system("web")
        .reason("new order")
        .tags(["priority"])
        .input("charge_card", json!({"amount_cents": 1999}));

    let created = create_task(&mut conn, &request).expect("create task");

    assert!(created.created);
    let task = &created.task;
    assert_eq!(task.context, Some(json!({"order_id": 42})));
    assert_eq!(task.initiator.as_deref(), Some("checkout"));
    assert_eq!(task.source_system.as_deref(), Some("web"));
    assert_eq!(task.reason.as_deref(), Some("new order"));
    assert_eq!(task.tags, Some(json!(["priority"])));
    assert_eq!(task.bypass_steps, None);
    assert!(!task.complete);
    assert_eq!(task.identity_hash.len(), 64);
    assert!(task.identity_hash.bytes().all(|b| b.is_ascii_hexdigit()));
    let stored: Task = tasker_tasks::table
        .find(task.task_id)
        .select(Task::as_select())
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(&stored, task);

    // Catalog.
    let named_task: NamedTask = tasker_named_tasks::table
        .find(task.named_task_id)
        .select(NamedTask::as_select())
        .get_result(&mut conn)
        .unwrap();
    let namespace: TaskNamespace = tasker_task_namespaces::table
        .find(named_task.task_namespace_id)
        .select(TaskNamespace::as_select())
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(namespace.name, "fulfillment");
    assert_eq!(
        (named_task.name.as_str(), named_task.version.as_str()),
        ("process_order", "1.0.0")
    );
    assert_eq!(
        named_task.description.as_deref(),
        Some("validate, reserve and charge, ship")
    );
    let step_systems: BTreeMap<String, String> = tasker_named_steps::table
        .inner_join(tasker_dependent_systems::table)
        .select((tasker_named_steps::name, tasker_dependent_systems::name))
        .load(&mut conn)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        step_systems,
        BTreeMap::from([
            ("validate".into(), "default".into()),
            ("reserve_stock".into(), "inventory".into()),
            ("charge_card".into(), "payments".into()),
            ("ship".into(), "shipping".into()),
        ])
    );
    let memberships: BTreeMap<String, (bool, bool, i32)> = tasker_named_tasks_named_steps::table
        .inner_join(tasker_named_steps::table)
        .filter(tasker_named_tasks_named_steps::named_task_id.eq(named_task.named_task_id))
        .select((
            tasker_named_steps::name,
            (
                tasker_named_tasks_named_steps::skippable,
                tasker_named_tasks_named_steps::default_retryable,
                tasker_named_tasks_named_steps::default_retry_limit,
            ),
        ))
        .load(&mut conn)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        memberships,
        BTreeMap::from([
            ("validate".into(), (false, true, 3)),
            ("reserve_stock".into(), (false, true, 5)),
            ("charge_card".into(), (false, false, 3)),
            ("ship".into(), (true, true, 1)),
        ])
    );

    // Steps, in template order, with the template's flags and the inputs.
    assert_eq!(
        step_names(&created),
        ["validate", "reserve_stock", "charge_card", "ship"]
    );
    let flags = |name: &str| {
        let step = created.step(name).unwrap();
        (step.retryable, step.retry_limit, step.skippable)
    };
    assert_eq!(flags("validate"), (true, Some(3), false));
    assert_eq!(flags("reserve_stock"), (true, Some(5), false));
    assert_eq!(flags("charge_card"), (false, Some(3), false));
    assert_eq!(flags("ship"), (true, Some(1), true));
    assert_eq!(
        created.step("charge_card").unwrap().inputs,
        Some(json!({"amount_cents": 1999}))
    );
    assert_eq!(created.step("validate").unwrap().inputs, None);
    assert!(created.steps.iter().all(|s| s.step.task_id == task.task_id));
    let stored_steps: Vec<WorkflowStep> = tasker_workflow_steps::table
        .filter(tasker_workflow_steps::task_id.eq(task.task_id))
        .order(tasker_workflow_steps::workflow_step_id)
        .select(WorkflowStep::as_select())
        .load(&mut conn)
        .unwrap();
    let returned_steps: Vec<WorkflowStep> = created.steps.iter().map(|s| s.step.clone()).collect();
    assert_eq!(stored_steps, returned_steps);

    // Edges go from the dependency (parent) to the step that waits for it.
    let name_of: BTreeMap<i64, &str> = created
        .steps
        .iter()
        .map(|s| (s.step.workflow_step_id, s.name.as_str()))
        .collect();
    let edges: BTreeSet<(&str, &str, String)> = tasker_workflow_step_edges::table
        .select((
            tasker_workflow_step_edges::from_step_id,
            tasker_workflow_step_edges::to_step_id,
            tasker_workflow_step_edges::name,
        ))
        .load::<(i64, i64, String)>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|(from, to, name)| (name_of[&from], name_of[&to], name))
        .collect();
    let provides = || "provides".to_owned();
    assert_eq!(
        edges,
        BTreeSet::from([
            ("validate", "reserve_stock", provides()),
            ("validate", "charge_card", provides()),
            ("reserve_stock", "ship", provides()),
            ("charge_card", "ship", provides()),
        ])
    );

    // No transitions: every step is pending, and only the root may run.
    let counts = row_counts(&mut conn);
    assert_eq!(counts["tasker_workflow_step_transitions"], 0);
    assert_eq!(counts["tasker_task_transitions"], 0);
    let readiness = StepReadinessStatus::for_task(task.task_id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(readiness.len(), 4);
    assert!(readiness
        .iter()
        .all(|row| row.current_state == StepState::Pending));
    let ready: Vec<&str> = readiness
        .iter()
        .filter(|row| row.ready_for_execution)
        .map(|row| row.name.as_str())
        .collect();
    assert_eq!(ready, ["validate"]);
}

#[test]
fn the_same_request_again_returns_the_existing_task_and_writes_nothing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = diamond();
    let request = TaskRequest::new(&template).context(json!({"order_id": 7}));
    let first = create_task(&mut conn, &request).unwrap();
    let rows_before = row_counts(&mut conn);
    let sequences_before = sequence_values(&mut conn);

    let second = create_task(&mut conn, &request).unwrap();

    assert!(first.created);
    assert!(!second.created);
    assert_eq!(second.task.task_id, first.task.task_id);
    assert_eq!(second.task, first.task);
    assert_eq!(second.steps, first.steps);
    assert_eq!(row_counts(&mut conn), rows_before);
    assert_eq!(sequence_values(&mut conn), sequences_before);
}

#[test]
fn tasks_of_the_same_template_reuse_its_catalog_rows() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = diamond();
    let first = create_task(
        &mut conn,
        &TaskRequest::new(&template).context(json!({"order_id": 1})),
    )
    .unwrap();
    let catalog_tables = [
        "tasker_task_namespaces",
        "tasker_dependent_systems",
        "tasker_named_tasks",
        "tasker_named_steps",
        "tasker_named_tasks_named_steps",
    ];
    let catalog = |counts: BTreeMap<String, i64>| -> Vec<i64> {
        catalog_tables.iter().map(|table| counts[*table]).collect()
    };
    let catalog_before = catalog(row_counts(&mut conn));
    let sequences_before = sequence_values(&mut conn);

    let second = create_task(
        &mut conn,
        &TaskRequest::new(&template).context(json!({"order_id": 2})),
    )
    .unwrap();

    assert!(second.created);
    assert_ne!(second.task.task_id, first.task.task_id);
    assert_eq!(second.task.named_task_id, first.task.named_task_id);
    let named_steps = |created: &CreatedTask| -> Vec<i32> {
        created.steps.iter().map(|s| s.step.named_step_id).collect()
    };
    assert_eq!(named_steps(&second), named_steps(&first));
    let counts = row_counts(&mut conn);
    assert_eq!(catalog_before, [1, 4, 1, 4, 4]);
    assert_eq!(catalog(counts.clone()), catalog_before);
    assert_eq!(counts["tasker_tasks"], 2);
    assert_eq!(counts["tasker_workflow_steps"], 8);
    assert_eq!(counts["tasker_workflow_step_edges"], 8);
    // Finding the catalog rows drew no ids from their sequences.
    let sequences_after = sequence_values(&mut conn);
    for table in catalog_tables {
        let catalog_sequence = |values: &BTreeMap<String, Option<i64>>| {
            values
                .iter()
                .filter(|(name, _)| name.starts_with(table) && name.ends_with("_seq"))
                .map(|(name, value)| (name.clone(), *value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            catalog_sequence(&sequences_after),
            catalog_sequence(&sequences_before)
        );
    }
}

#[test]
fn the_default_identity_hash_covers_template_and_context_only() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = diamond();
    let next_version = TaskTemplate {
        version: "1.1.0".into(),
        ..diamond()
    };
    let original = create_task(
        &mut conn,
        &TaskRequest::new(&template).context(json!({"order_id": 1, "rush": true})),
    )
    .unwrap();

    let other_context = create_task(
        &mut conn,
        &TaskRequest::new(&template).context(json!({"order_id": 2, "rush": true})),
    )
    .unwrap();
    let other_version = create_task(
        &mut conn,
        &TaskRequest::new(&next_version).context(json!({"order_id": 1, "rush": true})),
    )
    .unwrap();
    let other_instance_fields = create_task(
        &mut conn,
        &TaskRequest::new(&template)
            .context(json!({"rush": true, "order_id": 1}))
            .initiator("someone else")
            .tags(["other"])
            .input("ship", json!({"carrier": "ups"})),
    )
    .unwrap();

    assert!(other_context.created);
    assert!(other_version.created);
    assert_ne!(
        other_context.task.identity_hash,
        original.task.identity_hash
    );
    assert_ne!(
        other_version.task.identity_hash,
        original.task.identity_hash
    );
    assert!(!other_instance_fields.created);
    assert_eq!(other_instance_fields.task, original.task);
}

#[test]
fn an_explicit_identity_hash_is_stored_and_makes_the_request_unique() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = diamond();
    let first = create_task(
        &mut conn,
        &TaskRequest::new(&template)
            .identity_hash("order-42")
            .context(json!({"attempt": 1})),
    )
    .unwrap();
    let second = create_task(
        &mut conn,
        &TaskRequest::new(&template)
            .identity_hash("order-42")
            .context(json!({"attempt": 2})),
    )
    .unwrap();

    assert_eq!(first.task.identity_hash, "order-42");
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(second.task, first.task);
    assert_eq!(second.task.context, Some(json!({"attempt": 1})));
}

#[test]
fn an_identity_hash_taken_by_another_template_is_an_integrity_error() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = diamond();
    let other = refund();
    create_task(
        &mut conn,
        &TaskRequest::new(&template).identity_hash("shared"),
    )
    .unwrap();
    let rows_before = row_counts(&mut conn);

    let error = create_task(&mut conn, &TaskRequest::new(&other).identity_hash("shared"))
        .expect_err("another template's hash");

    assert!(is_duplicate_hash(&error), "{error:?}");
    assert_eq!(row_counts(&mut conn), rows_before);
}

/// Creates `request` on a fresh database and checks that it fails with
/// `expected` (a template's error as `InvalidTemplate`, the request's own as
/// `InvalidRequest` at index 0) and leaves every `tasker_` table empty and
/// every sequence unused.
fn assert_rejected(request: &TaskRequest<'_>, expected: impl Into<RequestError>) {
    let expected = expected.into();
    let db = TestDatabase::new();
    let mut conn = db.connection();
    match (create_task(&mut conn, request), &expected) {
        (Err(Error::InvalidTemplate(error)), RequestError::Template(template)) => {
            assert_eq!(&error, template)
        }
        (Err(Error::InvalidRequest { index: 0, error }), _) => assert_eq!(error, expected),
        (other, _) => panic!("expected {expected:?}, got {other:?}"),
    }
    let counts = row_counts(&mut conn);
    assert!(counts.values().all(|&count| count == 0), "{counts:?}");
    let sequences = sequence_values(&mut conn);
    assert!(
        sequences.values().all(Option::is_none),
        "sequences used: {sequences:?}"
    );
}

#[test]
fn a_template_without_steps_is_rejected_without_writes() {
    let empty = TaskTemplate::new("fulfillment", "nothing", "1.0.0");
    assert_rejected(
        &TaskRequest::new(&empty),
        TemplateError::Empty {
            template: "fulfillment/nothing@1.0.0".into(),
        },
    );
}

#[test]
fn a_duplicate_step_name_is_rejected_without_writes() {
    let template = diamond().step(StepTemplate::new("charge_card").dependent_system("other"));
    assert_rejected(
        &TaskRequest::new(&template),
        TemplateError::DuplicateStep {
            template: "fulfillment/process_order@1.0.0".into(),
            step: "charge_card".into(),
        },
    );
}

#[test]
fn a_dependency_on_an_unknown_step_is_rejected_without_writes() {
    let template = diamond().step(StepTemplate::new("notify").depends_on(["ship", "shipped"]));
    assert_rejected(
        &TaskRequest::new(&template),
        TemplateError::UnknownDependency {
            step: "notify".into(),
            dependency: "shipped".into(),
        },
    );
}

#[test]
fn a_step_depending_on_itself_is_rejected_as_a_cycle_without_writes() {
    let template = diamond().step(StepTemplate::new("notify").depends_on(["ship", "notify"]));
    assert_rejected(
        &TaskRequest::new(&template),
        TemplateError::Cycle {
            steps: vec!["notify".into(), "notify".into()],
        },
    );
}

#[test]
fn a_three_step_cycle_is_rejected_naming_its_steps_without_writes() {
    let template = TaskTemplate::new("fulfillment", "loop", "1.0.0")
        .step(StepTemplate::new("a").depends_on(["c"]))
        .step(StepTemplate::new("b").depends_on(["a"]))
        .step(StepTemplate::new("c").depends_on(["b"]));
    let expected = TemplateError::Cycle {
        steps: vec!["a".into(), "c".into(), "b".into(), "a".into()],
    };
    assert_eq!(
        expected.to_string(),
        "steps depend on each other in a cycle: a → c → b → a"
    );
    assert_rejected(&TaskRequest::new(&template), expected);
}

#[test]
fn a_negative_retry_limit_is_rejected_without_writes() {
    let template = diamond().step(StepTemplate::new("notify").retry_limit(-1));
    assert_rejected(
        &TaskRequest::new(&template),
        TemplateError::InvalidRetryLimit {
            step: "notify".into(),
            retry_limit: -1,
        },
    );
}

#[test]
fn a_step_name_longer_than_its_column_is_rejected_without_writes() {
    let long_name = "s".repeat(129);
    let template = diamond().step(StepTemplate::new(long_name.as_str()));
    assert_rejected(
        &TaskRequest::new(&template),
        TemplateError::TooLong {
            field: TemplateField::StepName,
            value: long_name,
            max_length: 128,
        },
    );
}

#[test]
fn every_value_longer_than_its_column_is_rejected_before_any_write() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let long = |length: usize| "x".repeat(length);
    let template = |namespace: String, name: String, version: String, system: String| {
        TaskTemplate::new(namespace, name, version)
            .step(StepTemplate::new("only").dependent_system(system))
    };
    let fits = template(long(64), long(64), long(16), long(64));
    assert!(create_task(&mut conn, &TaskRequest::new(&fits)).is_ok());
    let rows_before = row_counts(&mut conn);

    let cases = [
        (
            template(long(65), long(1), long(1), long(1)),
            TemplateField::Namespace,
        ),
        (
            template(long(1), long(65), long(1), long(1)),
            TemplateField::Name,
        ),
        (
            template(long(1), long(1), long(17), long(1)),
            TemplateField::Version,
        ),
        (
            template(long(1), long(1), long(1), long(65)),
            TemplateField::DependentSystem,
        ),
    ];
    for (too_long, field) in &cases {
        let error = create_task(&mut conn, &TaskRequest::new(too_long)).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidTemplate(TemplateError::TooLong { field: f, .. }) if f == field),
            "{field}: {error:?}"
        );
    }
    let error = create_task(&mut conn, &TaskRequest::new(&fits).initiator(long(129))).unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidRequest {
                index: 0,
                error: RequestError::TooLong {
                    field: RequestField::Initiator,
                    ..
                }
            }
        ),
        "{error:?}"
    );
    assert_eq!(row_counts(&mut conn), rows_before);
}

#[test]
fn inputs_for_an_unknown_step_are_rejected_without_writes() {
    let template = diamond();
    assert_rejected(
        &TaskRequest::new(&template)
            .input("ship", json!({}))
            .input("gift_wrap", json!({"paper": "red"})),
        RequestError::UnknownStepInput {
            step: "gift_wrap".into(),
        },
    );
}

#[test]
fn only_skippable_steps_of_the_template_can_be_bypassed() {
    let template = diamond();
    assert_rejected(
        &TaskRequest::new(&template).bypass_steps(["gift_wrap"]),
        RequestError::UnknownBypassStep {
            step: "gift_wrap".into(),
        },
    );
    assert_rejected(
        &TaskRequest::new(&template).bypass_steps(["ship", "charge_card"]),
        RequestError::NotSkippable {
            step: "charge_card".into(),
        },
    );
}

#[test]
fn a_bypassed_step_starts_resolved_manually_and_its_children_do_not_wait_for_it() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = TaskTemplate::new("fulfillment", "gift_order", "1.0.0")
        .step(StepTemplate::new("wrap").skippable(true))
        .step(StepTemplate::new("ship").depends_on(["wrap"]));
    let created = create_task(
        &mut conn,
        &TaskRequest::new(&template).bypass_steps(["wrap"]),
    )
    .expect("create");

    let wrap = created.step("wrap").expect("wrap");
    assert!(wrap.processed && !wrap.in_process, "{wrap:?}");
    let history = support::step_transitions(&mut conn, wrap.workflow_step_id);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].to_state, StepState::ResolvedManually);
    assert_eq!(history[0].metadata, Some(json!({"bypassed": true})));
    let ready: Vec<String> = StepReadinessStatus::for_task(created.task.task_id)
        .ready_for_execution()
        .load(&mut conn)
        .expect("readiness")
        .into_iter()
        .map(|row| row.name)
        .collect();
    assert_eq!(ready, ["ship"]);
    assert_eq!(created.task.bypass_steps, Some(json!(["wrap"])));
}

#[test]
fn an_invalid_request_is_rejected_before_any_round_trip() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let empty = TaskTemplate::new("fulfillment", "nothing", "1.0.0");
    // In an aborted transaction every statement fails, so only an error
    // raised before the first statement can be InvalidTemplate.
    let outcome = conn.transaction::<_, Error, _>(|conn| {
        assert!(diesel::sql_query("SELECT 1 / 0").execute(conn).is_err());
        Ok(create_task(conn, &TaskRequest::new(&empty)))
    });
    assert!(
        matches!(
            outcome,
            Ok(Err(Error::InvalidTemplate(TemplateError::Empty { .. })))
        ),
        "{outcome:?}"
    );
}

#[test]
fn a_catalog_row_committed_while_creation_runs_is_found_on_the_next_attempt() {
    // Another transaction inserts the template's namespace first and commits
    // while the creator's statement waits on it: ON CONFLICT skips the row,
    // and the statement's snapshot does not see it, so the creator's first
    // answer is short and its second, in a new snapshot, finds the row.
    let db = TestDatabase::new();
    let template = diamond();
    let mut holder = db.connection();
    diesel::sql_query("BEGIN").execute(&mut holder).unwrap();
    let namespace_id: i32 = diesel::insert_into(tasker_task_namespaces::table)
        .values(tasker_task_namespaces::name.eq(&template.namespace))
        .returning(tasker_task_namespaces::task_namespace_id)
        .get_result(&mut holder)
        .unwrap();

    let (pid_sender, pid) = mpsc::channel();
    let created = thread::scope(|scope| {
        let creator = scope.spawn(|| {
            let mut conn = db.connection();
            pid_sender.send(support::backend_pid(&mut conn)).unwrap();
            create_task(&mut conn, &TaskRequest::new(&template))
        });
        let pid = pid.recv().unwrap();
        support::wait_until_blocked(&mut db.connection(), pid);
        diesel::sql_query("COMMIT").execute(&mut holder).unwrap();
        creator.join().expect("creator thread")
    })
    .expect("creation finds the namespace committed meanwhile");

    assert!(created.created);
    let mut conn = db.connection();
    let named_task: NamedTask = tasker_named_tasks::table
        .find(created.task.named_task_id)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(named_task.task_namespace_id, namespace_id);
    assert_eq!(row_counts(&mut conn)["tasker_task_namespaces"], 1);
}

#[test]
fn concurrent_creators_of_the_same_request_end_with_one_task() {
    const CREATORS: usize = 4;
    const ROUNDS: i64 = 5;
    let db = TestDatabase::new();
    let template = diamond();

    // The first round also races on creating the catalog rows.
    for round in 0..ROUNDS {
        let request = TaskRequest::new(&template).context(json!({"order_id": round}));
        let start = Barrier::new(CREATORS);
        let results: Vec<CreatedTask> = thread::scope(|scope| {
            let creators: Vec<_> = (0..CREATORS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut conn = db.connection();
                        start.wait();
                        create_task(&mut conn, &request).expect("concurrent create")
                    })
                })
                .collect();
            creators
                .into_iter()
                .map(|creator| creator.join().expect("creator thread"))
                .collect()
        });

        let created = results.iter().filter(|result| result.created).count();
        assert_eq!(created, 1, "round {round}");
        let task_ids: BTreeSet<i64> = results.iter().map(|r| r.task.task_id).collect();
        assert_eq!(task_ids.len(), 1, "round {round}");
        let step_ids: BTreeSet<Vec<i64>> = results
            .iter()
            .map(|r| {
                ["validate", "reserve_stock", "charge_card", "ship"]
                    .map(|name| step_id(r, name))
                    .to_vec()
            })
            .collect();
        assert_eq!(step_ids.len(), 1, "round {round}");
    }

    let counts = row_counts(&mut db.connection());
    assert_eq!(counts["tasker_tasks"], ROUNDS);
    assert_eq!(counts["tasker_workflow_steps"], 4 * ROUNDS);
    assert_eq!(counts["tasker_workflow_step_edges"], 4 * ROUNDS);
    assert_eq!(counts["tasker_task_namespaces"], 1);
    assert_eq!(counts["tasker_dependent_systems"], 4);
    assert_eq!(counts["tasker_named_tasks"], 1);
    assert_eq!(counts["tasker_named_steps"], 4);
    assert_eq!(counts["tasker_named_tasks_named_steps"], 4);
}

/// Waits until some session of database `name` waits for a lock.
fn wait_for_a_blocked_session(observer: &mut PgConnection, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked = diesel::sql_query(
            "SELECT count(*) AS count FROM pg_stat_activity \
             WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind::<Text, _>(name)
        .get_result::<Count>(observer)
        .expect("pg_stat_activity")
        .count;
        if blocked > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no session blocked");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Creates `request` in a transaction that commits only once a second
/// creator of the same request is blocked by it; returns (first, second).
fn create_while_another_creation_is_uncommitted(
    db: &TestDatabase,
    request: &TaskRequest<'_>,
) -> (CreatedTask, CreatedTask) {
    let mut first_conn = db.connection();
    let mut second_conn = db.connection();
    let mut observer = db.connection();
    thread::scope(|scope| {
        let (created_tx, created_rx) = mpsc::channel();
        let first = scope.spawn(move || {
            first_conn.transaction::<_, Error, _>(|conn| {
                let created = create_task(conn, request)?;
                created_tx.send(()).expect("signal creation");
                wait_for_a_blocked_session(&mut observer, db.name());
                Ok(created)
            })
        });
        created_rx.recv().expect("first creation");
        let second = scope.spawn(move || create_task(&mut second_conn, request));
        (
            first.join().unwrap().expect("first create"),
            second.join().unwrap().expect("second create"),
        )
    })
}

#[test]
fn a_creator_blocked_by_an_uncommitted_creation_returns_that_task() {
    let db = TestDatabase::new();
    let template = diamond();

    // New catalog: the second creator waits on the namespace insert.
    let request = TaskRequest::new(&template).context(json!({"order_id": 1}));
    let (first, second) = create_while_another_creation_is_uncommitted(&db, &request);
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(second.task, first.task);
    assert_eq!(second.steps, first.steps);

    // Known catalog: the second creator waits on the task insert itself.
    let request = TaskRequest::new(&template).context(json!({"order_id": 2}));
    let (first, second) = create_while_another_creation_is_uncommitted(&db, &request);
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(second.task, first.task);
    assert_eq!(second.steps, first.steps);

    let counts = row_counts(&mut db.connection());
    assert_eq!(counts["tasker_tasks"], 2);
    assert_eq!(counts["tasker_workflow_steps"], 8);
    assert_eq!(counts["tasker_named_steps"], 4);
}

/// a -> b -> ... : `length` steps, each depending on the one before.
fn chain(name: &str, length: usize) -> TaskTemplate {
    let mut template = TaskTemplate::new("batch", name, "1.0.0");
    for index in 0..length {
        let mut step = StepTemplate::new(format!("s{index}"));
        if index > 0 {
            step = step.depends_on([format!("s{}", index - 1)]);
        }
        template = template.step(step);
    }
    template
}

fn ready_step_names(conn: &mut PgConnection, created: &CreatedTask) -> BTreeSet<String> {
    StepReadinessStatus::for_task(created.task.task_id)
        .load(conn)
        .unwrap()
        .into_iter()
        .filter(|status| status.ready_for_execution)
        .map(|status| status.name)
        .collect()
}

#[test]
fn a_batch_creates_tasks_of_several_templates_in_request_order() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let diamond = diamond();
    let chain = chain("chain", 3);
    let single = TaskTemplate::new("other", "single", "2.0.0").step(StepTemplate::new("only"));
    let stored = create_task(
        &mut conn,
        &TaskRequest::new(&chain).context(json!({"n": 0})),
    )
    .unwrap();

    let requests = [
        TaskRequest::new(&diamond).context(json!({"order_id": 1})),
        TaskRequest::new(&chain).context(json!({"n": 0})),
        TaskRequest::new(&single).initiator("batch"),
        TaskRequest::new(&diamond).context(json!({"order_id": 2})),
        TaskRequest::new(&diamond).context(json!({"order_id": 1})),
        TaskRequest::new(&chain).context(json!({"n": 1})),
    ];
    let created = create_tasks(&mut conn, &requests).unwrap();

    assert_eq!(created.len(), requests.len());
    let flags: Vec<bool> = created.iter().map(|c| c.created).collect();
    assert_eq!(flags, [true, false, true, true, false, true]);
    // An existing hash gives back the stored task; a hash repeated in the
    // batch gives back the task of its first request.
    assert_eq!(created[1].task.task_id, stored.task.task_id);
    assert_eq!(created[1].steps, stored.steps);
    assert_eq!(created[4].task, created[0].task);
    assert_eq!(created[4].steps, created[0].steps);
    let distinct: BTreeSet<i64> = created.iter().map(|c| c.task.task_id).collect();
    assert_eq!(distinct.len(), 5);

    for (created, request) in created.iter().zip(&requests) {
        let template = request.template;
        let names: BTreeSet<&str> = step_names(created).into_iter().collect();
        let expected: BTreeSet<&str> = template.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, expected, "{}", template.key());
        assert_eq!(created.task.context.as_ref(), Some(&request.context));
        let roots: BTreeSet<String> = template
            .steps
            .iter()
            .filter(|s| s.depends_on.is_empty())
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(ready_step_names(&mut conn, created), roots);
    }
    assert_eq!(created[2].task.initiator.as_deref(), Some("batch"));

    let counts = row_counts(&mut conn);
    assert_eq!(counts["tasker_tasks"], 5);
    assert_eq!(counts["tasker_workflow_steps"], 4 + 4 + 3 + 3 + 1);
    assert_eq!(counts["tasker_workflow_step_edges"], 4 + 4 + 2 + 2);
    assert_eq!(counts["tasker_task_namespaces"], 3);
    assert_eq!(counts["tasker_named_tasks"], 3);
    assert_eq!(counts["tasker_named_tasks_named_steps"], 4 + 3 + 1);
    support::assert_maintained_readiness(&mut conn, None);

    // The same batch again: the same tasks, nothing written, no id drawn.
    let rows_before = row_counts(&mut conn);
    let sequences_before = sequence_values(&mut conn);
    let again = create_tasks(&mut conn, &requests).unwrap();
    assert!(again.iter().all(|c| !c.created));
    let ids = |tasks: &[CreatedTask]| tasks.iter().map(|c| c.task.task_id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&created));
    assert_eq!(row_counts(&mut conn), rows_before);
    assert_eq!(sequence_values(&mut conn), sequences_before);

    assert!(create_tasks(&mut conn, &[]).unwrap().is_empty());
}

#[test]
fn an_invalid_request_anywhere_in_a_batch_is_named_by_index_before_any_write() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let diamond = diamond();
    let empty = TaskTemplate::new("batch", "empty", "1.0.0");
    let requests = [
        TaskRequest::new(&diamond),
        TaskRequest::new(&diamond).context(json!({"order_id": 2})),
        TaskRequest::new(&diamond).input("no_such_step", json!({})),
        TaskRequest::new(&empty),
    ];
    match create_tasks(&mut conn, &requests) {
        Err(Error::InvalidRequest { index: 2, error }) => assert_eq!(
            error,
            RequestError::UnknownStepInput {
                step: "no_such_step".into()
            }
        ),
        other => panic!("expected request 2 to be refused, got {other:?}"),
    }
    match create_tasks(&mut conn, &requests[3..]) {
        Err(
            error @ Error::InvalidRequest {
                index: 0,
                error: RequestError::Template(TemplateError::Empty { .. }),
            },
        ) => {
            assert!(error.to_string().contains("request 0"), "{error}")
        }
        other => panic!("expected request 0 to be refused, got {other:?}"),
    }
    let counts = row_counts(&mut conn);
    assert!(counts.values().all(|&count| count == 0), "{counts:?}");
    assert!(sequence_values(&mut conn).values().all(Option::is_none));
}

#[test]
fn a_batch_refused_by_the_database_writes_none_of_its_tasks() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let diamond = diamond();
    let other = refund();
    create_task(
        &mut conn,
        &TaskRequest::new(&diamond).identity_hash("taken"),
    )
    .unwrap();
    let rows_before = row_counts(&mut conn);

    // The stored hash is of another template.
    let error = create_tasks(
        &mut conn,
        &[
            TaskRequest::new(&other).context(json!({"fresh": 1})),
            TaskRequest::new(&other).identity_hash("taken"),
        ],
    )
    .expect_err("a hash of another template");
    assert!(is_duplicate_hash(&error), "{error:?}");
    assert_eq!(row_counts(&mut conn), rows_before);

    // Two requests of the batch share a hash but not a template.
    let error = create_tasks(
        &mut conn,
        &[
            TaskRequest::new(&other).identity_hash("new"),
            TaskRequest::new(&diamond).context(json!({"fresh": 2})),
            TaskRequest::new(&diamond).identity_hash("new"),
        ],
    )
    .expect_err("one hash, two templates");
    match &error {
        Error::Integrity {
            rule: IntegrityRule::DuplicateIdentityHash,
            message,
        } => assert!(
            message.contains("new") && message.contains("fulfillment/refund@1.0.0"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(row_counts(&mut conn), rows_before);
}

#[test]
fn a_template_beyond_the_bind_parameter_limit_is_created_whole() {
    // More steps (22,000) and edges (21,999) than one bind per value allows
    // (65,535 binds: 13,107 steps of five values, 21,845 edges of three).
    const STEPS: usize = 22_000;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let mut template =
        TaskTemplate::new("batch", "fan_out", "1.0.0").step(StepTemplate::new("root"));
    for index in 1..STEPS {
        template = template.step(
            StepTemplate::new(format!("leaf_{index}"))
                .dependent_system(format!("system_{}", index % 7))
                .depends_on(["root"]),
        );
    }
    let created = create_task(&mut conn, &TaskRequest::new(&template)).unwrap();
    assert!(created.created);
    assert_eq!(created.steps.len(), STEPS);
    let counts = row_counts(&mut conn);
    assert_eq!(counts["tasker_workflow_step_edges"], STEPS as i64 - 1);
    assert_eq!(counts["tasker_named_steps"], STEPS as i64);
    assert_eq!(counts["tasker_named_tasks_named_steps"], STEPS as i64);
    assert_eq!(counts["tasker_dependent_systems"], 8);
    let levels =
        tasker_diesel::readiness::DependencyLevel::load(&mut conn, created.task.task_id).unwrap();
    assert_eq!(levels.len(), STEPS);
    assert_eq!(
        levels.iter().filter(|l| l.dependency_level == 1).count(),
        STEPS - 1
    );

    let again = create_task(&mut conn, &TaskRequest::new(&template)).unwrap();
    assert!(!again.created);
    assert_eq!(again.steps, created.steps);
}

#[test]
fn a_long_chain_is_created_with_every_step_one_level_below_its_parent() {
    const STEPS: usize = 10_000;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let template = chain("long_chain", STEPS);
    let created = create_task(&mut conn, &TaskRequest::new(&template)).unwrap();
    assert_eq!(
        ready_step_names(&mut conn, &created),
        BTreeSet::from(["s0".to_string()])
    );
    let levels =
        tasker_diesel::readiness::DependencyLevel::load(&mut conn, created.task.task_id).unwrap();
    let by_id: BTreeMap<i64, i32> = levels
        .iter()
        .map(|l| (l.workflow_step_id, l.dependency_level))
        .collect();
    for index in 0..STEPS {
        assert_eq!(
            by_id[&step_id(&created, &format!("s{index}"))],
            index as i32,
            "s{index}"
        );
    }
}

#[test]
fn concurrent_batches_sharing_identity_hashes_end_with_one_task_per_hash() {
    const CREATORS: usize = 4;
    const TASKS: i64 = 30;
    let db = TestDatabase::new();
    let diamond = diamond();
    let chain = chain("chain", 4);
    // Each creator asks for every task, in its own order, half of them of
    // each template: overlapping batches must neither deadlock nor double.
    let batches: Vec<Vec<TaskRequest<'_>>> = (0..CREATORS)
        .map(|creator| {
            let mut order: Vec<i64> = (0..TASKS).collect();
            order.rotate_left(creator * 7);
            if creator % 2 == 1 {
                order.reverse();
            }
            order
                .into_iter()
                .map(|n| {
                    let template = if n % 2 == 0 { &diamond } else { &chain };
                    TaskRequest::new(template).context(json!({ "n": n }))
                })
                .collect()
        })
        .collect();
    let start = Barrier::new(CREATORS);
    let results: Vec<Vec<CreatedTask>> = thread::scope(|scope| {
        let creators: Vec<_> = batches
            .iter()
            .map(|batch| {
                let start = &start;
                let db = &db;
                scope.spawn(move || {
                    let mut conn = db.connection();
                    start.wait();
                    create_tasks(&mut conn, batch).expect("concurrent batch")
                })
            })
            .collect();
        creators
            .into_iter()
            .map(|creator| creator.join().expect("creator thread"))
            .collect()
    });

    let mut by_context: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut created = 0;
    for (batch, result) in batches.iter().zip(&results) {
        assert_eq!(batch.len(), result.len());
        for (request, task) in batch.iter().zip(result) {
            assert_eq!(task.task.context.as_ref(), Some(&request.context));
            assert_eq!(task.steps.len(), request.template.steps.len());
            by_context
                .entry(request.context.to_string())
                .or_default()
                .insert(task.task.task_id);
            created += usize::from(task.created);
        }
    }
    assert_eq!(by_context.len(), TASKS as usize);
    assert!(
        by_context.values().all(|ids| ids.len() == 1),
        "{by_context:?}"
    );
    assert_eq!(created, TASKS as usize);
    let counts = row_counts(&mut db.connection());
    assert_eq!(counts["tasker_tasks"], TASKS);
    assert_eq!(counts["tasker_workflow_steps"], TASKS * 4);
    assert_eq!(counts["tasker_named_tasks"], 2);
    assert_eq!(counts["tasker_named_steps"], 8);
    support::assert_maintained_readiness(&mut db.connection(), None);
}
