//! Creating a task instance from a template in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Jsonb, Text};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::template::{check_length, TaskTemplate, TemplateError, TemplateField};
use super::transition::{transition_workflow_step, TransitionOptions};
use crate::enums::StepState;
use crate::error::{Error, IntegrityRule};
use crate::models::{
    NewDependentSystem, NewNamedStep, NewNamedTask, NewNamedTaskNamedStep, NewTask,
    NewTaskNamespace, NewWorkflowStep, NewWorkflowStepEdge, Task, WorkflowStep,
};
use crate::schema::{
    tasker_dependent_systems, tasker_named_steps, tasker_named_tasks,
    tasker_named_tasks_named_steps, tasker_task_namespaces, tasker_tasks,
    tasker_workflow_step_edges, tasker_workflow_steps,
};

/// Longest initiator, source system and reason (`VARCHAR(128)` in `tasker_tasks`).
pub const MAX_REQUEST_FIELD_LENGTH: usize = 128;
/// Longest identity hash (`tasker_tasks.identity_hash VARCHAR(128)`).
pub const MAX_IDENTITY_HASH_LENGTH: usize = 128;

/// The label of every edge [`create_task`] writes, as the Rails engine does.
pub const EDGE_NAME: &str = "provides";

/// The default identity hash: hex SHA-256 of the UTF-8 text of the jsonb
/// array `[namespace, name, version, context]`. jsonb's text form is
/// canonical (key order and whitespace do not matter) and the array keeps
/// the parts apart, so different requests cannot collide by concatenation.
const DEFAULT_IDENTITY_HASH_SQL: &str = "SELECT encode(sha256(convert_to(\
     jsonb_build_array($1::text, $2::text, $3::text, $4::jsonb)::text, 'UTF8')), 'hex') \
     AS identity_hash";

/// A request for one task of a template: the template plus what is specific
/// to this instance.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest<'a> {
    /// Borrowed: one template typically serves many requests.
    pub template: &'a TaskTemplate,
    /// The task's input; `{}` unless set.
    pub context: Value,
    pub initiator: Option<String>,
    pub source_system: Option<String>,
    pub reason: Option<String>,
    /// Stored as a JSON array of strings.
    pub tags: Option<Vec<String>>,
    /// Skippable steps this task bypasses, stored as a JSON array of names;
    /// they start `resolved_manually`.
    pub bypass_steps: Option<Vec<String>>,
    /// `None`: the transaction's time, in UTC.
    pub requested_at: Option<NaiveDateTime>,
    /// `None`: the default hash of namespace, name, version and context
    /// (see [`create_task`]).
    pub identity_hash: Option<String>,
    /// Step-specific input by step name, stored in the step's `inputs`.
    pub inputs: BTreeMap<String, Value>,
}

impl<'a> TaskRequest<'a> {
    /// A request for a task of `template` with an empty context.
    pub fn new(template: &'a TaskTemplate) -> Self {
        TaskRequest {
            template,
            context: Value::Object(Default::default()),
            initiator: None,
            source_system: None,
            reason: None,
            tags: None,
            bypass_steps: None,
            requested_at: None,
            identity_hash: None,
            inputs: BTreeMap::new(),
        }
    }

    /// Sets the task's input.
    pub fn context(mut self, context: Value) -> Self {
        self.context = context;
        self
    }

    /// Sets who or what asks for the task.
    pub fn initiator(mut self, initiator: impl Into<String>) -> Self {
        self.initiator = Some(initiator.into());
        self
    }

    /// Sets the system the request comes from.
    pub fn source_system(mut self, source_system: impl Into<String>) -> Self {
        self.source_system = Some(source_system.into());
        self
    }

    /// Sets why the task is requested.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the task's tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the skippable steps the task bypasses.
    pub fn bypass_steps(mut self, steps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.bypass_steps = Some(steps.into_iter().map(Into::into).collect());
        self
    }

    /// Sets when the task was requested (UTC).
    pub fn requested_at(mut self, requested_at: NaiveDateTime) -> Self {
        self.requested_at = Some(requested_at);
        self
    }

    /// Sets the identity hash instead of the default one.
    pub fn identity_hash(mut self, identity_hash: impl Into<String>) -> Self {
        self.identity_hash = Some(identity_hash.into());
        self
    }

    /// Sets the inputs of the step called `step`.
    pub fn input(mut self, step: impl Into<String>, inputs: Value) -> Self {
        self.inputs.insert(step.into(), inputs);
        self
    }

    /// Checks the template ([`TaskTemplate::validate`]), then that inputs
    /// and bypasses name steps of the template (bypassed ones skippable) and
    /// that the request's own fields fit their columns.
    pub fn validate(&self) -> Result<(), TemplateError> {
        self.template.validate()?;
        if let Some(step) = self
            .inputs
            .keys()
            .find(|step| self.template.find_step(step).is_none())
        {
            return Err(TemplateError::UnknownStepInput { step: step.clone() });
        }
        for name in self.bypass_steps.iter().flatten() {
            match self.template.find_step(name) {
                None => return Err(TemplateError::UnknownBypassStep { step: name.clone() }),
                Some(step) if !step.skippable => {
                    return Err(TemplateError::NotSkippable { step: name.clone() })
                }
                Some(_) => {}
            }
        }
        for (field, value) in [
            (TemplateField::Initiator, &self.initiator),
            (TemplateField::SourceSystem, &self.source_system),
            (TemplateField::Reason, &self.reason),
        ] {
            if let Some(value) = value {
                check_length(field, value, MAX_REQUEST_FIELD_LENGTH)?;
            }
        }
        if let Some(identity_hash) = &self.identity_hash {
            if identity_hash.trim().is_empty() {
                return Err(TemplateError::Blank {
                    field: TemplateField::IdentityHash,
                });
            }
            check_length(
                TemplateField::IdentityHash,
                identity_hash,
                MAX_IDENTITY_HASH_LENGTH,
            )?;
        }
        Ok(())
    }
}

/// A task with its steps, as [`create_task`] found or created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedTask {
    pub task: Task,
    /// Ordered by `workflow_step_id`.
    pub steps: Vec<CreatedStep>,
    /// False when a task with the same identity hash already existed and was
    /// returned as it is.
    pub created: bool,
}

/// A step of a [`CreatedTask`] with its step template's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedStep {
    pub name: String,
    pub step: WorkflowStep,
}

impl CreatedTask {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&WorkflowStep> {
        self.steps
            .iter()
            .find(|created| created.name == name)
            .map(|created| &created.step)
    }
}

/// Creates a task of `request.template` with its steps and their dependency
/// edges, or returns the task that already has the request's identity hash.
///
/// The request is validated first ([`TaskRequest::validate`]); an invalid one
/// is [`Error::InvalidTemplate`] without any round trip. Everything else
/// happens in one transaction:
///
/// 1. The identity hash: the request's, or by default the hex SHA-256 of the
///    UTF-8 text of the jsonb array `[namespace, name, version, context]`,
///    computed by PostgreSQL. Initiator, source system, reason, tags,
///    bypasses, inputs and `requested_at` are not part of it.
/// 2. A task with that hash is returned with `created: false` and nothing is
///    written. If it belongs to another template, the result is
///    [`Error::Integrity`] with [`IntegrityRule::DuplicateIdentityHash`].
/// 3. The catalog rows (namespace, dependent systems, task template, step
///    templates, their memberships) are found by their unique keys or
///    inserted, in a fixed order so concurrent creators cannot deadlock.
///    Existing catalog rows are not updated: step instances take their
///    flags from the request's template, not from the stored membership.
/// 4. The task, then all steps in one statement and all edges (parent to
///    child, named [`EDGE_NAME`]) in another. No transition is written (a
///    step without one is pending) except for the bypassed steps, which are
///    moved to `resolved_manually` with `{"bypassed": true}`: they never run,
///    and their children count them as complete.
///
/// Two connections creating the same identity hash at once both succeed
/// with the same task, one `created: true`: the second `INSERT` waits for
/// the first transaction and then finds its task. That relies on `READ
/// COMMITTED` (PostgreSQL's default); under `REPEATABLE READ` the loser gets
/// a serialization failure instead.
pub fn create_task(
    conn: &mut PgConnection,
    request: &TaskRequest<'_>,
) -> crate::Result<CreatedTask> {
    request.validate()?;
    conn.transaction(|conn| create_in_transaction(conn, request))
}

fn create_in_transaction(
    conn: &mut PgConnection,
    request: &TaskRequest<'_>,
) -> crate::Result<CreatedTask> {
    let template = request.template;
    let identity_hash = match &request.identity_hash {
        Some(identity_hash) => identity_hash.clone(),
        None => default_identity_hash(conn, request)?,
    };
    // Looked up before the catalog is touched, so a repeated request writes
    // nothing at all.
    if let Some(existing) = find_task(conn, &identity_hash)? {
        return existing_task(conn, template, existing);
    }

    let catalog = find_or_create_catalog(conn, template)?;
    let tags = request.tags.as_ref().map(|tags| Value::from(tags.clone()));
    let bypass_steps = request
        .bypass_steps
        .as_ref()
        .map(|steps| Value::from(steps.clone()));
    let inserted: Option<Task> = diesel::insert_into(tasker_tasks::table)
        .values(NewTask {
            requested_at: request.requested_at,
            initiator: request.initiator.as_deref(),
            source_system: request.source_system.as_deref(),
            reason: request.reason.as_deref(),
            bypass_steps: bypass_steps.as_ref(),
            tags: tags.as_ref(),
            context: Some(&request.context),
            ..NewTask::new(catalog.named_task_id, &identity_hash)
        })
        .on_conflict(tasker_tasks::identity_hash)
        .do_nothing()
        .returning(Task::as_returning())
        .get_result(conn)
        .optional()?;
    let Some(task) = inserted else {
        // Another transaction committed the same hash while this one waited.
        let existing = find_task(conn, &identity_hash)?.ok_or(diesel::NotFound)?;
        return existing_task(conn, template, existing);
    };

    let new_steps: Vec<NewWorkflowStep> = template
        .steps
        .iter()
        .zip(&catalog.named_step_ids)
        .map(|(step, &named_step_id)| NewWorkflowStep {
            task_id: task.task_id,
            named_step_id,
            retryable: Some(step.retryable),
            retry_limit: Some(step.retry_limit),
            skippable: Some(step.skippable),
            inputs: request.inputs.get(&step.name),
            ..NewWorkflowStep::default()
        })
        .collect();
    let mut steps: Vec<WorkflowStep> = diesel::insert_into(tasker_workflow_steps::table)
        .values(&new_steps)
        .returning(WorkflowStep::as_returning())
        .get_results(conn)?;
    steps.sort_by_key(|step| step.workflow_step_id);

    // RETURNING order is not promised; named_step_id is unique per task.
    let step_ids: HashMap<i32, i64> = steps
        .iter()
        .map(|step| (step.named_step_id, step.workflow_step_id))
        .collect();
    let positions: HashMap<&str, usize> = template
        .steps
        .iter()
        .enumerate()
        .map(|(position, step)| (step.name.as_str(), position))
        .collect();
    let step_id_of = |name: &str| step_ids[&catalog.named_step_ids[positions[name]]];
    let edges: Vec<NewWorkflowStepEdge> = template
        .steps
        .iter()
        .flat_map(|step| {
            step.depends_on.iter().map(|parent| NewWorkflowStepEdge {
                from_step_id: step_id_of(parent),
                to_step_id: step_id_of(&step.name),
                name: EDGE_NAME,
            })
        })
        .collect();
    let task = if edges.is_empty() {
        task
    } else {
        diesel::insert_into(tasker_workflow_step_edges::table)
            .values(&edges)
            .execute(conn)?;
        // The edge trigger locks the task and bumps its updated_at.
        tasker_tasks::table
            .find(task.task_id)
            .select(Task::as_select())
            .get_result(conn)?
    };

    // A bypassed step is settled at once: resolved manually, which its
    // children count as complete, with the reason in the transition.
    let bypassed: BTreeSet<i64> = request
        .bypass_steps
        .iter()
        .flatten()
        .map(|name| step_id_of(name))
        .collect();
    if !bypassed.is_empty() {
        let metadata = serde_json::json!({ "bypassed": true });
        for &step_id in &bypassed {
            transition_workflow_step(
                conn,
                step_id,
                StepState::ResolvedManually,
                TransitionOptions::default().with_metadata(&metadata),
            )?;
        }
    }
    // Edges and bypasses change the steps' maintained readiness columns.
    if !edges.is_empty() || !bypassed.is_empty() {
        steps = tasker_workflow_steps::table
            .filter(tasker_workflow_steps::task_id.eq(task.task_id))
            .order(tasker_workflow_steps::workflow_step_id)
            .select(WorkflowStep::as_select())
            .load(conn)?;
    }

    let names: HashMap<i32, &str> = catalog
        .named_step_ids
        .iter()
        .zip(&template.steps)
        .map(|(&named_step_id, step)| (named_step_id, step.name.as_str()))
        .collect();
    let steps = steps
        .into_iter()
        .map(|step| CreatedStep {
            name: names[&step.named_step_id].to_owned(),
            step,
        })
        .collect();
    Ok(CreatedTask {
        task,
        steps,
        created: true,
    })
}

#[derive(QueryableByName)]
struct IdentityHash {
    #[diesel(sql_type = Text)]
    identity_hash: String,
}

fn default_identity_hash(
    conn: &mut PgConnection,
    request: &TaskRequest<'_>,
) -> QueryResult<String> {
    let template = request.template;
    diesel::sql_query(DEFAULT_IDENTITY_HASH_SQL)
        .bind::<Text, _>(template.namespace.as_str())
        .bind::<Text, _>(template.name.as_str())
        .bind::<Text, _>(template.version.as_str())
        .bind::<Jsonb, _>(&request.context)
        .get_result::<IdentityHash>(conn)
        .map(|row| row.identity_hash)
}

/// A stored task with the namespace, name and version of its template.
type TaskWithTemplateKey = (Task, String, String, String);

fn find_task(
    conn: &mut PgConnection,
    identity_hash: &str,
) -> QueryResult<Option<TaskWithTemplateKey>> {
    tasker_tasks::table
        .inner_join(tasker_named_tasks::table.inner_join(tasker_task_namespaces::table))
        .filter(tasker_tasks::identity_hash.eq(identity_hash))
        .select((
            Task::as_select(),
            tasker_task_namespaces::name,
            tasker_named_tasks::name,
            tasker_named_tasks::version,
        ))
        .get_result(conn)
        .optional()
}

/// The existing task with its steps, if it is a task of `template`.
fn existing_task(
    conn: &mut PgConnection,
    template: &TaskTemplate,
    (task, namespace, name, version): TaskWithTemplateKey,
) -> crate::Result<CreatedTask> {
    if (namespace.as_str(), name.as_str(), version.as_str())
        != (
            template.namespace.as_str(),
            template.name.as_str(),
            template.version.as_str(),
        )
    {
        return Err(Error::Integrity {
            rule: IntegrityRule::DuplicateIdentityHash,
            message: format!(
                "identity hash {} belongs to task {} of template {namespace}/{name}@{version}, \
                 not of {}",
                task.identity_hash,
                task.task_id,
                template.key()
            ),
        });
    }
    let steps = tasker_workflow_steps::table
        .inner_join(tasker_named_steps::table)
        .filter(tasker_workflow_steps::task_id.eq(task.task_id))
        .order(tasker_workflow_steps::workflow_step_id)
        .select((tasker_named_steps::name, WorkflowStep::as_select()))
        .load::<(String, WorkflowStep)>(conn)?
        .into_iter()
        .map(|(name, step)| CreatedStep { name, step })
        .collect();
    Ok(CreatedTask {
        task,
        steps,
        created: false,
    })
}

/// The catalog ids a task of a template needs.
struct Catalog {
    named_task_id: i32,
    /// The step template of each template step, by position.
    named_step_ids: Vec<i32>,
}

// Each catalog row is first looked up, then inserted only when missing with
// `ON CONFLICT DO NOTHING` (a concurrent creator may have inserted it since),
// then looked up again if the insert lost that race. Looking up first keeps
// a steady state of task creation from drawing ids from the INTEGER
// sequences: an insert that hits a conflict still consumes one.
// Rows are inserted sorted by their unique key, the tables always in the
// same order, so two creators wait for each other instead of deadlocking.

fn find_or_create_catalog(
    conn: &mut PgConnection,
    template: &TaskTemplate,
) -> QueryResult<Catalog> {
    let namespace_id = find_or_create_namespace(conn, &template.namespace)?;
    let system_ids = find_or_create_dependent_systems(conn, template)?;
    let named_task_id = find_or_create_named_task(conn, namespace_id, template)?;
    let named_step_ids = find_or_create_named_steps(conn, template, &system_ids)?;
    add_missing_memberships(conn, named_task_id, template, &named_step_ids)?;
    Ok(Catalog {
        named_task_id,
        named_step_ids,
    })
}

fn find_or_create_namespace(conn: &mut PgConnection, name: &str) -> QueryResult<i32> {
    use tasker_task_namespaces::dsl as ns;
    let find = |conn: &mut PgConnection| {
        ns::tasker_task_namespaces
            .filter(ns::name.eq(name))
            .select(ns::task_namespace_id)
            .get_result(conn)
    };
    if let Some(id) = find(conn).optional()? {
        return Ok(id);
    }
    let inserted = diesel::insert_into(ns::tasker_task_namespaces)
        .values(NewTaskNamespace {
            name,
            description: None,
        })
        .on_conflict(ns::name)
        .do_nothing()
        .returning(ns::task_namespace_id)
        .get_result(conn)
        .optional()?;
    match inserted {
        Some(id) => Ok(id),
        None => find(conn),
    }
}

/// Ids of the template's dependent systems by name.
fn find_or_create_dependent_systems<'t>(
    conn: &mut PgConnection,
    template: &'t TaskTemplate,
) -> QueryResult<HashMap<&'t str, i32>> {
    use tasker_dependent_systems::dsl as ds;
    // Sorted and unique: the insert order.
    let names: BTreeSet<&'t str> = template
        .steps
        .iter()
        .map(|step| step.dependent_system.as_str())
        .collect();
    let load = |conn: &mut PgConnection, names: Vec<&str>| {
        ds::tasker_dependent_systems
            .filter(ds::name.eq_any(names))
            .select((ds::name, ds::dependent_system_id))
            .load::<(String, i32)>(conn)
    };
    let mut found: HashMap<String, i32> = load(conn, names.iter().copied().collect())?
        .into_iter()
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|&name| !found.contains_key(name))
        .collect();
    if !missing.is_empty() {
        let new_systems: Vec<NewDependentSystem> = missing
            .iter()
            .map(|&name| NewDependentSystem {
                name,
                description: None,
            })
            .collect();
        let inserted: Vec<(String, i32)> = diesel::insert_into(ds::tasker_dependent_systems)
            .values(&new_systems)
            .on_conflict(ds::name)
            .do_nothing()
            .returning((ds::name, ds::dependent_system_id))
            .get_results(conn)?;
        found.extend(inserted);
        let raced: Vec<&str> = missing
            .into_iter()
            .filter(|&name| !found.contains_key(name))
            .collect();
        if !raced.is_empty() {
            found.extend(load(conn, raced)?);
        }
    }
    names
        .into_iter()
        .map(|name| {
            found
                .get(name)
                .map(|&id| (name, id))
                .ok_or(diesel::NotFound)
        })
        .collect()
}

fn find_or_create_named_task(
    conn: &mut PgConnection,
    namespace_id: i32,
    template: &TaskTemplate,
) -> QueryResult<i32> {
    use tasker_named_tasks::dsl as nt;
    let find = |conn: &mut PgConnection| {
        nt::tasker_named_tasks
            .filter(nt::task_namespace_id.eq(namespace_id))
            .filter(nt::name.eq(&template.name))
            .filter(nt::version.eq(&template.version))
            .select(nt::named_task_id)
            .get_result(conn)
    };
    if let Some(id) = find(conn).optional()? {
        return Ok(id);
    }
    let inserted = diesel::insert_into(nt::tasker_named_tasks)
        .values(NewNamedTask {
            task_namespace_id: namespace_id,
            name: &template.name,
            version: &template.version,
            description: template.description.as_deref(),
            configuration: None,
        })
        .on_conflict((nt::task_namespace_id, nt::name, nt::version))
        .do_nothing()
        .returning(nt::named_task_id)
        .get_result(conn)
        .optional()?;
    match inserted {
        Some(id) => Ok(id),
        None => find(conn),
    }
}

/// The step template id of each template step, by position.
fn find_or_create_named_steps(
    conn: &mut PgConnection,
    template: &TaskTemplate,
    system_ids: &HashMap<&str, i32>,
) -> QueryResult<Vec<i32>> {
    use tasker_named_steps::dsl as ns;
    let keys: Vec<(i32, &str)> = template
        .steps
        .iter()
        .map(|step| {
            (
                system_ids[step.dependent_system.as_str()],
                step.name.as_str(),
            )
        })
        .collect();
    // Selects a superset (every system with every name), narrowed in Rust.
    let load = |conn: &mut PgConnection, keys: &[(i32, &str)]| {
        let systems: Vec<i32> = keys.iter().map(|&(system, _)| system).collect();
        let names: Vec<&str> = keys.iter().map(|&(_, name)| name).collect();
        ns::tasker_named_steps
            .filter(ns::dependent_system_id.eq_any(systems))
            .filter(ns::name.eq_any(names))
            .select((ns::dependent_system_id, ns::name, ns::named_step_id))
            .load::<(i32, String, i32)>(conn)
    };
    let mut ids: HashMap<(i32, String), i32> = load(conn, &keys)?
        .into_iter()
        .map(|(system, name, id)| ((system, name), id))
        .collect();
    let known = |ids: &HashMap<(i32, String), i32>, &(system, name): &(i32, &str)| {
        ids.contains_key(&(system, name.to_owned()))
    };
    let mut missing: Vec<(i32, &str)> = keys
        .iter()
        .filter(|key| !known(&ids, key))
        .copied()
        .collect();
    if !missing.is_empty() {
        missing.sort_unstable();
        let new_steps: Vec<NewNamedStep> = missing
            .iter()
            .map(|&(dependent_system_id, name)| NewNamedStep {
                dependent_system_id,
                name,
                description: None,
            })
            .collect();
        let inserted = diesel::insert_into(ns::tasker_named_steps)
            .values(&new_steps)
            .on_conflict((ns::dependent_system_id, ns::name))
            .do_nothing()
            .returning((ns::dependent_system_id, ns::name, ns::named_step_id))
            .get_results::<(i32, String, i32)>(conn)?;
        ids.extend(
            inserted
                .into_iter()
                .map(|(system, name, id)| ((system, name), id)),
        );
        let raced: Vec<(i32, &str)> = missing
            .into_iter()
            .filter(|key| !known(&ids, key))
            .collect();
        if !raced.is_empty() {
            ids.extend(
                load(conn, &raced)?
                    .into_iter()
                    .map(|(system, name, id)| ((system, name), id)),
            );
        }
    }
    keys.iter()
        .map(|&(system, name)| {
            ids.get(&(system, name.to_owned()))
                .copied()
                .ok_or(diesel::NotFound)
        })
        .collect()
}

/// Adds the template's step templates to the task template where missing;
/// existing memberships keep their flags.
fn add_missing_memberships(
    conn: &mut PgConnection,
    named_task_id: i32,
    template: &TaskTemplate,
    named_step_ids: &[i32],
) -> QueryResult<()> {
    use tasker_named_tasks_named_steps::dsl as m;
    let existing: BTreeSet<i32> = m::tasker_named_tasks_named_steps
        .filter(m::named_task_id.eq(named_task_id))
        .filter(m::named_step_id.eq_any(named_step_ids))
        .select(m::named_step_id)
        .load::<i32>(conn)?
        .into_iter()
        .collect();
    let mut missing: Vec<NewNamedTaskNamedStep> = template
        .steps
        .iter()
        .zip(named_step_ids)
        .filter(|(_, id)| !existing.contains(id))
        .map(|(step, &named_step_id)| NewNamedTaskNamedStep {
            named_task_id,
            named_step_id,
            skippable: Some(step.skippable),
            default_retryable: Some(step.retryable),
            default_retry_limit: Some(step.retry_limit),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_unstable_by_key(|membership| membership.named_step_id);
    // The ids are not needed, so a lost race needs no second look-up.
    diesel::insert_into(m::tasker_named_tasks_named_steps)
        .values(&missing)
        .on_conflict((m::named_task_id, m::named_step_id))
        .do_nothing()
        .execute(conn)?;
    Ok(())
}
