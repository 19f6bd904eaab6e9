//! Creating a task instance from a template in one transaction.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalog::{find_or_create_catalogs, Catalog};
use super::request::{RequestError, TaskRequest};
use super::template::{StepTemplate, TaskTemplate};
use crate::error::{Error, IntegrityRule, Refusal};
use crate::models::{Task, WorkflowStep};
use crate::schema::{
    tasker_named_steps, tasker_named_tasks, tasker_task_namespaces, tasker_tasks,
    tasker_workflow_steps,
};

/// Statements that insert a batch's tasks before a race that keeps deleting
/// tasks with its hashes is reported (see [`insert_new_tasks`]).
const TASK_ATTEMPTS: usize = 3;

/// The label of every edge [`create_task`] writes, as the Rails engine does.
pub const EDGE_NAME: &str = "provides";

/// The default identity hash of each request, in the order given: hex
/// SHA-256 of the UTF-8 text of the jsonb array `[namespace, name, version,
/// context]`. jsonb's text form is canonical (key order and whitespace do not
/// matter) and the array keeps the parts apart, so different requests cannot
/// collide by concatenation.
const DEFAULT_IDENTITY_HASHES_SQL: &str = "\
    SELECT encode(sha256(convert_to(\
               jsonb_build_array(r.namespace, r.name, r.version, r.context)::text, 'UTF8')), \
           'hex') AS identity_hash \
    FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) \
         WITH ORDINALITY AS r (namespace, name, version, context, position) \
    ORDER BY r.position";

/// Tasks, one per element of the arrays, sorted by identity hash so that
/// batches sharing hashes take their row locks in one order. A hash already
/// committed is skipped (and waited for while it is in flight).
const INSERT_TASKS_SQL: &str = "\
    INSERT INTO tasker_tasks (named_task_id, identity_hash, requested_at, initiator, \
                              source_system, reason, bypass_steps, tags, context) \
    SELECT t.named_task_id, t.identity_hash, \
           coalesce(t.requested_at, now() AT TIME ZONE 'UTC'), \
           t.initiator, t.source_system, t.reason, t.bypass_steps, t.tags, t.context \
    FROM unnest($1::integer[], $2::text[], $3::timestamp[], $4::text[], $5::text[], \
                $6::text[], $7::jsonb[], $8::jsonb[], $9::jsonb[]) \
         AS t (named_task_id, identity_hash, requested_at, initiator, source_system, reason, \
               bypass_steps, tags, context) \
    ORDER BY t.identity_hash \
    ON CONFLICT (identity_hash) DO NOTHING \
    RETURNING task_id, identity_hash";

/// Steps, one per element of the arrays, inserted in array order, each with
/// the number of parents its edges will give it: the edges' trigger then finds
/// the counts right and writes the steps no second time.
const INSERT_STEPS_SQL: &str = "\
    INSERT INTO tasker_workflow_steps (task_id, named_step_id, retryable, retry_limit, \
                                       skippable, inputs, total_parents) \
    SELECT s.task_id, s.named_step_id, s.retryable, s.retry_limit, s.skippable, s.inputs, \
           s.total_parents \
    FROM unnest($1::bigint[], $2::integer[], $3::boolean[], $4::integer[], $5::boolean[], \
                $6::jsonb[], $7::integer[]) \
         WITH ORDINALITY AS s (task_id, named_step_id, retryable, retry_limit, skippable, \
                               inputs, total_parents, position) \
    ORDER BY s.position \
    RETURNING workflow_step_id, task_id, named_step_id";

/// Edges `$1[i] -> $2[i]`, all named `$3`.
const INSERT_EDGES_SQL: &str = "\
    INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name) \
    SELECT e.from_step_id, e.to_step_id, $3 \
    FROM unnest($1::bigint[], $2::bigint[]) AS e (from_step_id, to_step_id)";

/// Moves each step of `$1`, in id order, to `resolved_manually` with metadata
/// `$2`, through the one definition of a step transition.
const BYPASS_STEPS_SQL: &str = "\
    SELECT count(tasker_transition_workflow_step(b.workflow_step_id, 'resolved_manually', $2)) \
    FROM (SELECT id FROM unnest($1::bigint[]) AS id ORDER BY id) AS b (workflow_step_id)";

/// A task with its steps, as [`create_task`] found or created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedTask {
    /// The task row.
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
    /// The step template's name.
    pub name: String,
    /// The step row.
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
/// edges, or returns the task that already has the request's identity hash:
/// [`create_tasks`] with one request.
///
/// The request is validated first ([`TaskRequest::validate`]), without any
/// round trip: an invalid template is [`Error::InvalidTemplate`], anything
/// else wrong with the request [`Error::InvalidRequest`] with index 0.
pub fn create_task(
    conn: &mut PgConnection,
    request: &TaskRequest<'_>,
) -> crate::Result<CreatedTask> {
    request.validate().map_err(|error| match error {
        RequestError::Template(error) => Error::InvalidTemplate(error),
        error => Error::InvalidRequest { index: 0, error },
    })?;
    conn.transaction(|conn| create_in_transaction(conn, &[request]))?
        .pop()
        .ok_or_else(|| Error::unexpected_rows("no task for the request".to_owned()))
}

/// Creates many tasks, of one template or several, with their steps and
/// dependency edges, in one transaction: one result per request, in request
/// order. All or nothing: on any error no task of the batch is written.
///
/// Every request is validated first ([`TaskRequest::validate`]); the first
/// invalid one is [`Error::InvalidRequest`] with its index, without any round
/// trip. Then, in one transaction, with a number of statements that does not
/// grow with the number of tasks, steps or edges (arrays are bound, one per
/// column, so there is no limit on the size of a batch or a template short of
/// memory):
///
/// 1. The identity hashes: each request's own, or by default the hex SHA-256
///    of the UTF-8 text of the jsonb array `[namespace, name, version,
///    context]`, computed by PostgreSQL. Initiator, source system, reason,
///    tags, bypasses, inputs and `requested_at` are not part of it.
/// 2. A task that already has a request's hash is returned with `created:
///    false`, as is the task of an earlier request of the same batch with the
///    same hash; nothing is written for either. If that task is of another
///    template, the result is [`Error::Integrity`] with
///    [`IntegrityRule::DuplicateIdentityHash`].
/// 3. The catalog rows (namespace, dependent systems, task template, step
///    templates, their memberships) of every template of the batch are found
///    by their unique keys or inserted, one statement per table, in a fixed
///    order so concurrent creators cannot deadlock. Existing catalog rows are
///    not updated: step instances take their flags from the request's
///    template, not from the stored membership.
/// 4. The tasks in one statement (sorted by identity hash, so two batches
///    that share hashes wait for each other instead of deadlocking), then all
///    their steps in one statement (each with its final parent count, so
///    the edges need not write it again) and all edges (parent to child,
///    named [`EDGE_NAME`]) in another, whose triggers check the whole graph
///    in one topological pass. No transition is written (a step without one is pending) except
///    for the bypassed steps, which are moved to `resolved_manually` with
///    `{"bypassed": true}`: they never run, and their children count them as
///    complete.
///
/// Creators of different tasks do not wait for each other (only for catalog
/// rows both insert). Two connections creating the same identity hash at once
/// both succeed with the same task, one `created: true`: the second `INSERT`
/// waits for the first transaction and then finds its task. That relies on
/// `READ COMMITTED` (PostgreSQL's default); under `REPEATABLE READ` the loser
/// gets a serialization failure instead.
pub fn create_tasks(
    conn: &mut PgConnection,
    requests: &[TaskRequest<'_>],
) -> crate::Result<Vec<CreatedTask>> {
    for (index, request) in requests.iter().enumerate() {
        request
            .validate()
            .map_err(|error| Error::InvalidRequest { index, error })?;
    }
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let requests: Vec<&TaskRequest<'_>> = requests.iter().collect();
    conn.transaction(|conn| create_in_transaction(conn, &requests))
}

/// What becomes of one request of a batch.
enum Outcome {
    /// A task to insert, of the distinct template at this index.
    New { template: usize },
    /// The task already stored with the request's hash.
    Existing { task_id: i64 },
    /// The same task as the earlier request at this index.
    SameAs(usize),
}

fn create_in_transaction(
    conn: &mut PgConnection,
    requests: &[&TaskRequest<'_>],
) -> crate::Result<Vec<CreatedTask>> {
    let hashes = identity_hashes(conn, requests)?;
    // Looked up before the catalog is touched, so repeated requests write
    // nothing at all.
    let mut stored = find_tasks(conn, &hashes)?;

    let mut templates: Vec<&TaskTemplate> = Vec::new();
    let mut first_with_hash: HashMap<&str, usize> = HashMap::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    for (index, (request, hash)) in requests.iter().zip(&hashes).enumerate() {
        let outcome = if let Some(stored) = stored.remove(hash.as_str()) {
            let task = check_template(request.template, stored)?;
            first_with_hash.insert(hash, index);
            Outcome::Existing {
                task_id: task.task_id,
            }
        } else if let Some(&earlier) = first_with_hash.get(hash.as_str()) {
            if request.template.key() != requests[earlier].template.key() {
                return Err(duplicate_hash(
                    hash,
                    requests[earlier].template,
                    request.template,
                ));
            }
            Outcome::SameAs(earlier)
        } else {
            first_with_hash.insert(hash, index);
            let template = match templates.iter().position(|&known| {
                std::ptr::eq(known, request.template) || known == request.template
            }) {
                Some(position) => position,
                None => {
                    templates.push(request.template);
                    templates.len() - 1
                }
            };
            Outcome::New { template }
        };
        outcomes.push(outcome);
    }

    let catalogs = find_or_create_catalogs(conn, &templates)?;
    let mut new: Vec<NewRequest<'_, '_>> = Vec::new();
    for (outcome, (&request, hash)) in outcomes.iter().zip(requests.iter().zip(&hashes)) {
        if let Outcome::New { template } = outcome {
            let catalog = catalogs.get(*template).ok_or_else(|| {
                Error::unexpected_rows(format!(
                    "no catalog for template {}",
                    request.template.key()
                ))
            })?;
            new.push((request, hash.as_str(), catalog));
        }
    }
    let task_ids = insert_new_tasks(conn, requests, &hashes, &mut outcomes, &new)?;
    let created: Vec<(&TaskRequest<'_>, i64, &Catalog)> = new
        .iter()
        .filter_map(|&(request, hash, catalog)| {
            task_ids
                .get(hash)
                .map(|&task_id| (request, task_id, catalog))
        })
        .collect();
    insert_steps_and_edges(conn, &created)?;

    // Edges and bypasses changed the tasks (updated_at) and the steps'
    // maintained readiness: read everything back as it now is.
    let mut ids: Vec<i64> = created.iter().map(|&(_, task_id, _)| task_id).collect();
    ids.extend(outcomes.iter().filter_map(|outcome| match outcome {
        Outcome::Existing { task_id } => Some(*task_id),
        _ => None,
    }));
    let tasks: HashMap<i64, Task> = tasker_tasks::table
        .filter(tasker_tasks::task_id.eq_any(&ids))
        .select(Task::as_select())
        .load(conn)?
        .into_iter()
        .map(|task| (task.task_id, task))
        .collect();
    let mut steps: HashMap<i64, Vec<CreatedStep>> = HashMap::new();
    for (name, step) in tasker_workflow_steps::table
        .inner_join(tasker_named_steps::table)
        .filter(tasker_workflow_steps::task_id.eq_any(&ids))
        .order((
            tasker_workflow_steps::task_id,
            tasker_workflow_steps::workflow_step_id,
        ))
        .select((tasker_named_steps::name, WorkflowStep::as_select()))
        .load::<(String, WorkflowStep)>(conn)?
    {
        steps
            .entry(step.task_id)
            .or_default()
            .push(CreatedStep { name, step });
    }

    let mut results: Vec<CreatedTask> = Vec::with_capacity(requests.len());
    for (index, outcome) in outcomes.iter().enumerate() {
        let (task_id, created) = match outcome {
            Outcome::New { .. } => match task_ids.get(&hashes[index]) {
                Some(&task_id) => (task_id, true),
                None => {
                    return Err(Error::unexpected_rows(format!(
                        "no task was inserted or found for identity hash {}",
                        hashes[index]
                    )))
                }
            },
            Outcome::Existing { task_id } => (*task_id, false),
            Outcome::SameAs(earlier) => (results[*earlier].task.task_id, false),
        };
        // Only a task found here, not created here, can be deleted meanwhile.
        let task = tasks
            .get(&task_id)
            .cloned()
            .ok_or(Refusal::UnknownTask { task_id })?;
        let steps = steps.get(&task_id).cloned().unwrap_or_default();
        results.push(CreatedTask {
            task,
            steps,
            created,
        });
    }
    Ok(results)
}

/// Inserts the tasks of `new`; the ids of those inserted, by hash. A hash
/// another transaction committed while this one waited for it is that
/// transaction's task: its request's outcome becomes
/// [`Outcome::Existing`]. One deleted again before this transaction could
/// see it is inserted anew, up to [`TASK_ATTEMPTS`] statements in all, after
/// which the race is reported ([`Error::lost_race`]).
fn insert_new_tasks(
    conn: &mut PgConnection,
    requests: &[&TaskRequest<'_>],
    hashes: &[String],
    outcomes: &mut [Outcome],
    new: &[NewRequest<'_, '_>],
) -> crate::Result<HashMap<String, i64>> {
    let mut task_ids = HashMap::new();
    let mut pending: Vec<NewRequest<'_, '_>> = new.to_vec();
    for _ in 0..TASK_ATTEMPTS {
        if pending.is_empty() {
            return Ok(task_ids);
        }
        task_ids.extend(insert_tasks(conn, &pending)?);
        let raced: Vec<String> = pending
            .iter()
            .filter(|&&(_, hash, _)| !task_ids.contains_key(hash))
            .map(|&(_, hash, _)| hash.to_owned())
            .collect();
        if raced.is_empty() {
            return Ok(task_ids);
        }
        let mut found = find_tasks(conn, &raced)?;
        pending.retain(|&(_, hash, _)| !task_ids.contains_key(hash) && !found.contains_key(hash));
        // The first request with a found hash was to create it; later ones
        // with the same hash are `SameAs` that one.
        for ((request, hash), outcome) in requests.iter().zip(hashes).zip(outcomes.iter_mut()) {
            if let Some(stored) = found.remove(hash.as_str()) {
                *outcome = Outcome::Existing {
                    task_id: check_template(request.template, stored)?.task_id,
                };
            }
        }
    }
    if pending.is_empty() {
        return Ok(task_ids);
    }
    Err(Error::lost_race(format!(
        "the tasks of identity hashes {} were committed by other transactions and deleted          again each of {TASK_ATTEMPTS} times this one tried to insert them",
        pending
            .iter()
            .map(|&(_, hash, _)| hash)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

#[derive(QueryableByName)]
struct IdentityHash {
    #[diesel(sql_type = Text)]
    identity_hash: String,
}

/// The identity hash of each request, in request order: its own, or the
/// default one (computed for all such requests in one statement).
fn identity_hashes(
    conn: &mut PgConnection,
    requests: &[&TaskRequest<'_>],
) -> crate::Result<Vec<String>> {
    let defaulted: Vec<&TaskRequest<'_>> = requests
        .iter()
        .copied()
        .filter(|request| request.identity_hash.is_none())
        .collect();
    let mut defaults = Vec::new().into_iter();
    if !defaulted.is_empty() {
        let part = |part: fn(&TaskTemplate) -> &str| -> Vec<&str> {
            defaulted
                .iter()
                .map(|request| part(request.template))
                .collect()
        };
        let contexts: Vec<&Value> = defaulted.iter().map(|request| &request.context).collect();
        defaults = diesel::sql_query(DEFAULT_IDENTITY_HASHES_SQL)
            .bind::<Array<Text>, _>(part(|template| &template.namespace))
            .bind::<Array<Text>, _>(part(|template| &template.name))
            .bind::<Array<Text>, _>(part(|template| &template.version))
            .bind::<Array<Jsonb>, _>(contexts)
            .load::<IdentityHash>(conn)?
            .into_iter();
    }
    let answered = defaults.len();
    let hashes = requests
        .iter()
        .map(|request| match &request.identity_hash {
            Some(hash) => Ok(hash.clone()),
            None => defaults.next().map(|row| row.identity_hash).ok_or_else(|| {
                Error::unexpected_rows(format!(
                    "{answered} default identity hashes for {} requests",
                    defaulted.len()
                ))
            }),
        })
        .collect::<crate::Result<Vec<_>>>()?;
    if defaults.len() > 0 {
        return Err(Error::unexpected_rows(format!(
            "{answered} default identity hashes for {} requests",
            defaulted.len()
        )));
    }
    Ok(hashes)
}

/// A stored task with the namespace, name and version of its template.
type TaskWithTemplateKey = (Task, String, String, String);

/// The stored tasks with these identity hashes, by hash.
fn find_tasks(
    conn: &mut PgConnection,
    identity_hashes: &[String],
) -> QueryResult<HashMap<String, TaskWithTemplateKey>> {
    Ok(tasker_tasks::table
        .inner_join(tasker_named_tasks::table.inner_join(tasker_task_namespaces::table))
        .filter(tasker_tasks::identity_hash.eq_any(identity_hashes))
        .select((
            Task::as_select(),
            tasker_task_namespaces::name,
            tasker_named_tasks::name,
            tasker_named_tasks::version,
        ))
        .load::<TaskWithTemplateKey>(conn)?
        .into_iter()
        .map(|found| (found.0.identity_hash.clone(), found))
        .collect())
}

/// The stored task, if it is a task of `template`.
fn check_template(
    template: &TaskTemplate,
    (task, namespace, name, version): TaskWithTemplateKey,
) -> crate::Result<Task> {
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
    Ok(task)
}

/// Two requests of one batch with the same identity hash and different
/// templates.
fn duplicate_hash(identity_hash: &str, first: &TaskTemplate, second: &TaskTemplate) -> Error {
    Error::Integrity {
        rule: IntegrityRule::DuplicateIdentityHash,
        message: format!(
            "identity hash {identity_hash} is asked for by a task of {} and by one of {} \
             in the same batch",
            first.key(),
            second.key()
        ),
    }
}

#[derive(QueryableByName)]
struct InsertedTask {
    #[diesel(sql_type = BigInt)]
    task_id: i64,
    #[diesel(sql_type = Text)]
    identity_hash: String,
}

/// A request to create, with the catalog of its template.
type NewRequest<'r, 'a> = (&'r TaskRequest<'a>, &'r str, &'r Catalog);

/// Inserts the tasks; the ids of those inserted, by hash (a hash another
/// transaction committed meanwhile is missing).
fn insert_tasks<'r, 'a>(
    conn: &mut PgConnection,
    new: &[NewRequest<'r, 'a>],
) -> QueryResult<HashMap<String, i64>> {
    if new.is_empty() {
        return Ok(HashMap::new());
    }
    let text = |field: fn(&'r TaskRequest<'a>) -> Option<&'r str>| -> Vec<Option<&'r str>> {
        new.iter().map(|&(request, _, _)| field(request)).collect()
    };
    let names = |field: fn(&'r TaskRequest<'a>) -> &'r Option<Vec<String>>| -> Vec<Option<Value>> {
        new.iter()
            .map(|&(request, _, _)| {
                field(request)
                    .as_ref()
                    .map(|names| Value::from(names.clone()))
            })
            .collect()
    };
    let rows = diesel::sql_query(INSERT_TASKS_SQL)
        .bind::<Array<Integer>, _>(
            new.iter()
                .map(|&(_, _, catalog)| catalog.named_task_id)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(new.iter().map(|&(_, hash, _)| hash).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamp>>, _>(
            new.iter()
                .map(|&(request, _, _)| request.requested_at)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(text(|request| request.initiator.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(text(|request| request.source_system.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(text(|request| request.reason.as_deref()))
        .bind::<Array<Nullable<Jsonb>>, _>(names(|request| &request.bypass_steps))
        .bind::<Array<Nullable<Jsonb>>, _>(names(|request| &request.tags))
        .bind::<Array<Jsonb>, _>(
            new.iter()
                .map(|&(request, _, _)| &request.context)
                .collect::<Vec<_>>(),
        )
        .load::<InsertedTask>(conn)?;
    Ok(rows
        .into_iter()
        .map(|row| (row.identity_hash, row.task_id))
        .collect())
}

#[derive(QueryableByName)]
struct InsertedStep {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = BigInt)]
    task_id: i64,
    #[diesel(sql_type = Integer)]
    named_step_id: i32,
}

/// Inserts the steps of the new tasks (request, task id, catalog), then
/// their edges, then settles their bypassed steps: three statements in all.
fn insert_steps_and_edges(
    conn: &mut PgConnection,
    tasks: &[(&TaskRequest<'_>, i64, &Catalog)],
) -> crate::Result<()> {
    let steps = || {
        tasks.iter().flat_map(|&(request, task_id, catalog)| {
            request
                .template
                .steps
                .iter()
                .zip(&catalog.named_step_ids)
                .map(move |(step, &named_step_id)| (request, task_id, step, named_step_id))
        })
    };
    if steps().next().is_none() {
        return Ok(());
    }
    let inserted = diesel::sql_query(INSERT_STEPS_SQL)
        .bind::<Array<BigInt>, _>(
            steps()
                .map(|(_, task_id, _, _)| task_id)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Integer>, _>(steps().map(|(_, _, _, id)| id).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(
            steps()
                .map(|(_, _, step, _)| step.retryable)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Integer>, _>(
            steps()
                .map(|(_, _, step, _)| step.retry_limit)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Bool>, _>(
            steps()
                .map(|(_, _, step, _)| step.skippable)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Jsonb>>, _>(
            steps()
                .map(|(request, _, step, _)| request.inputs.get(&step.name))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Integer>, _>(
            steps()
                .map(|(_, _, step, _)| parent_count(step))
                .collect::<Vec<_>>(),
        )
        .load::<InsertedStep>(conn)?;
    // RETURNING order is not promised; named_step_id is unique per task.
    let step_ids: HashMap<(i64, i32), i64> = inserted
        .into_iter()
        .map(|step| ((step.task_id, step.named_step_id), step.workflow_step_id))
        .collect();

    let mut parents = Vec::new();
    let mut children = Vec::new();
    let mut bypassed = Vec::new();
    for &(request, task_id, catalog) in tasks {
        let template = request.template;
        let positions: HashMap<&str, usize> = template
            .steps
            .iter()
            .enumerate()
            .map(|(position, step)| (step.name.as_str(), position))
            .collect();
        // Validation made every name here one of the template's steps, and
        // each step was inserted above: a step not answered is the database's
        // answer not fitting the statement.
        let step_id_of = |name: &str| {
            positions
                .get(name)
                .and_then(|&position| catalog.named_step_ids.get(position))
                .and_then(|&named_step_id| step_ids.get(&(task_id, named_step_id)))
                .copied()
                .ok_or_else(|| {
                    Error::unexpected_rows(format!(
                        "step {name} of task {task_id} was not among the steps inserted"
                    ))
                })
        };
        for step in &template.steps {
            let child = step_id_of(&step.name)?;
            for parent in &step.depends_on {
                parents.push(step_id_of(parent)?);
                children.push(child);
            }
        }
        for name in request.bypass_steps.iter().flatten() {
            bypassed.push(step_id_of(name)?);
        }
    }
    if !parents.is_empty() {
        diesel::sql_query(INSERT_EDGES_SQL)
            .bind::<Array<BigInt>, _>(parents)
            .bind::<Array<BigInt>, _>(children)
            .bind::<Text, _>(EDGE_NAME)
            .execute(conn)?;
    }
    // A bypassed step is settled at once: resolved manually, which its
    // children count as complete, with the reason in the transition.
    if !bypassed.is_empty() {
        bypassed.sort_unstable();
        bypassed.dedup();
        diesel::sql_query(BYPASS_STEPS_SQL)
            .bind::<Array<BigInt>, _>(bypassed)
            .bind::<Jsonb, _>(serde_json::json!({ "bypassed": true }))
            .execute(conn)?;
    }
    Ok(())
}

/// The parents of a template step (validation allows each once; no template
/// that fits in memory has more than `i32::MAX`).
fn parent_count(step: &StepTemplate) -> i32 {
    i32::try_from(step.depends_on.len()).unwrap_or(i32::MAX)
}
