//! The catalog rows a batch of new tasks needs (namespaces, dependent
//! systems, task and step templates, their memberships), found or inserted
//! for every template of the batch at once: one statement per table.
//!
//! Each statement inserts only the keys it does not find (so a steady state
//! of creation draws no ids from the `INTEGER` sequences: an insert that hits
//! a conflict would still consume one), sorted by key with the tables always
//! in the same order, so concurrent creators wait for each other instead of
//! deadlocking, and returns the id of every key asked for. A key another
//! transaction commits while the statement runs is skipped by `ON CONFLICT DO
//! NOTHING` but is not in the statement's snapshot either, so a statement that
//! comes back short runs once more, in a new snapshot that sees it.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Integer, Nullable, Text};

use super::template::TaskTemplate;

/// Rows of `table` (namespaces, dependent systems: unique by `name`, id
/// column `id`) by name: `(name, id)` for every name of `$1`. The two tables
/// differ only in their names, so they share this one statement.
fn by_name_sql(table: &str, id: &str) -> String {
    format!(
        "WITH wanted AS (SELECT DISTINCT w.name FROM unnest($1::text[]) AS w (name)), \
         inserted AS ( \
             INSERT INTO {table} (name) \
             SELECT w.name FROM wanted AS w \
             WHERE NOT EXISTS (SELECT FROM {table} AS t WHERE t.name = w.name) \
             ORDER BY w.name \
             ON CONFLICT (name) DO NOTHING \
             RETURNING name, {id}) \
         SELECT name, {id} AS id FROM inserted \
         UNION ALL \
         SELECT t.name, t.{id} FROM {table} AS t JOIN wanted USING (name)"
    )
}

/// Task templates by (namespace id `$1`, name `$2`, version `$3`); a new one
/// gets description `$4` (the first given for its key).
const NAMED_TASKS_SQL: &str = "\
    WITH wanted AS ( \
        SELECT DISTINCT ON (w.task_namespace_id, w.name, w.version) w.* \
        FROM unnest($1::integer[], $2::text[], $3::text[], $4::text[]) \
             WITH ORDINALITY AS w (task_namespace_id, name, version, description, position) \
        ORDER BY w.task_namespace_id, w.name, w.version, w.position), \
    inserted AS ( \
        INSERT INTO tasker_named_tasks (task_namespace_id, name, version, description) \
        SELECT w.task_namespace_id, w.name, w.version, w.description FROM wanted AS w \
        WHERE NOT EXISTS (SELECT FROM tasker_named_tasks AS t \
                          WHERE (t.task_namespace_id, t.name, t.version) \
                              = (w.task_namespace_id, w.name, w.version)) \
        ORDER BY w.task_namespace_id, w.name, w.version \
        ON CONFLICT (task_namespace_id, name, version) DO NOTHING \
        RETURNING task_namespace_id, name, version, named_task_id) \
    SELECT task_namespace_id, name, version, named_task_id AS id FROM inserted \
    UNION ALL \
    SELECT t.task_namespace_id, t.name, t.version, t.named_task_id \
    FROM tasker_named_tasks AS t JOIN wanted USING (task_namespace_id, name, version)";

/// Step templates by (dependent system id `$1`, name `$2`).
const NAMED_STEPS_SQL: &str = "\
    WITH wanted AS (SELECT DISTINCT w.dependent_system_id, w.name \
                    FROM unnest($1::integer[], $2::text[]) AS w (dependent_system_id, name)), \
    inserted AS ( \
        INSERT INTO tasker_named_steps (dependent_system_id, name) \
        SELECT w.dependent_system_id, w.name FROM wanted AS w \
        WHERE NOT EXISTS (SELECT FROM tasker_named_steps AS s \
                          WHERE (s.dependent_system_id, s.name) = (w.dependent_system_id, w.name)) \
        ORDER BY w.dependent_system_id, w.name \
        ON CONFLICT (dependent_system_id, name) DO NOTHING \
        RETURNING dependent_system_id, name, named_step_id) \
    SELECT dependent_system_id, name, named_step_id AS id, true AS inserted FROM inserted \
    UNION ALL \
    SELECT s.dependent_system_id, s.name, s.named_step_id, false \
    FROM tasker_named_steps AS s JOIN wanted USING (dependent_system_id, name)";

/// Step templates inserted in one call past which the table's statistics are
/// refreshed (see [`find_or_create_catalogs`]).
const ANALYZE_AFTER_NEW_STEPS: usize = 1_000;

/// Memberships (task template `$1`, step template `$2`) not stored yet, with
/// the flags `$3..$5` of the first request for them; existing ones keep
/// theirs. Nothing is returned, so a lost race needs no second look.
const MEMBERSHIPS_SQL: &str = "\
    INSERT INTO tasker_named_tasks_named_steps (named_task_id, named_step_id, skippable, \
                                                default_retryable, default_retry_limit) \
    SELECT w.named_task_id, w.named_step_id, w.skippable, w.retryable, w.retry_limit \
    FROM (SELECT DISTINCT ON (w.named_task_id, w.named_step_id) w.* \
          FROM unnest($1::integer[], $2::integer[], $3::boolean[], $4::boolean[], \
                      $5::integer[]) \
               WITH ORDINALITY AS w (named_task_id, named_step_id, skippable, retryable, \
                                     retry_limit, position) \
          ORDER BY w.named_task_id, w.named_step_id, w.position) AS w \
    WHERE NOT EXISTS (SELECT FROM tasker_named_tasks_named_steps AS m \
                      WHERE (m.named_task_id, m.named_step_id) \
                          = (w.named_task_id, w.named_step_id)) \
    ORDER BY w.named_task_id, w.named_step_id \
    ON CONFLICT (named_task_id, named_step_id) DO NOTHING";

/// The catalog ids a task of a template needs.
pub(super) struct Catalog {
    pub(super) named_task_id: i32,
    /// The step template of each template step, by position.
    pub(super) named_step_ids: Vec<i32>,
}

/// The catalog of each template, in the order given. Existing catalog rows
/// are not updated: step instances take their flags from the request's
/// template, not from the stored membership.
pub(super) fn find_or_create_catalogs(
    conn: &mut PgConnection,
    templates: &[&TaskTemplate],
) -> QueryResult<Vec<Catalog>> {
    let namespaces: Vec<&str> = templates.iter().map(|t| t.namespace.as_str()).collect();
    let namespace_ids = ids_by_name(
        conn,
        "tasker_task_namespaces",
        "task_namespace_id",
        &namespaces,
    )?;
    let systems: Vec<&str> = templates
        .iter()
        .flat_map(|t| t.steps.iter().map(|step| step.dependent_system.as_str()))
        .collect();
    let system_ids = ids_by_name(
        conn,
        "tasker_dependent_systems",
        "dependent_system_id",
        &systems,
    )?;

    let task_keys: Vec<(i32, &str, &str)> = templates
        .iter()
        .map(|t| {
            (
                namespace_ids[&t.namespace.as_str()],
                t.name.as_str(),
                t.version.as_str(),
            )
        })
        .collect();
    let task_ids = keyed_ids(conn, &task_keys, |conn| {
        diesel::sql_query(NAMED_TASKS_SQL)
            .bind::<Array<Integer>, _>(task_keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(task_keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(task_keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind::<Array<Nullable<Text>>, _>(
                templates
                    .iter()
                    .map(|t| t.description.as_deref())
                    .collect::<Vec<_>>(),
            )
            .load::<NamedTaskRow>(conn)
            .map(|rows| {
                rows.into_iter()
                    .map(|row| ((row.task_namespace_id, row.name, row.version), row.id))
                    .collect()
            })
    })?;

    let step_keys: Vec<(i32, &str)> = templates
        .iter()
        .flat_map(|t| t.steps.iter())
        .map(|step| {
            (
                system_ids[&step.dependent_system.as_str()],
                step.name.as_str(),
            )
        })
        .collect();
    let mut new_steps = 0;
    let step_ids = keyed_ids(conn, &step_keys, |conn| {
        diesel::sql_query(NAMED_STEPS_SQL)
            .bind::<Array<Integer>, _>(step_keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(step_keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .load::<NamedStepRow>(conn)
            .map(|rows| {
                new_steps += rows.iter().filter(|row| row.inserted).count();
                rows.into_iter()
                    .map(|row| ((row.dependent_system_id, row.name), row.id))
                    .collect()
            })
    })?;
    // Every step row checks its step template by a foreign key, through a
    // plan each session keeps until the table's statistics change. Planned
    // while the table was small, it scans the table, which is no longer small
    // once a big template has been added: 10,000 new step templates made the
    // steps of their first task take seconds instead of a tenth of one.
    // ANALYZE counts this transaction's own rows and makes the plans anew.
    if new_steps >= ANALYZE_AFTER_NEW_STEPS {
        diesel::sql_query("ANALYZE tasker_named_steps").execute(conn)?;
    }

    // `step_keys` lists the steps of all templates in order: split it back.
    let mut step_keys = step_keys.iter();
    let catalogs: Vec<Catalog> = templates
        .iter()
        .zip(&task_keys)
        .map(|(template, task_key)| Catalog {
            named_task_id: task_ids[task_key],
            named_step_ids: step_keys
                .by_ref()
                .take(template.steps.len())
                .map(|step_key| step_ids[step_key])
                .collect(),
        })
        .collect();

    let memberships = || {
        templates
            .iter()
            .zip(&catalogs)
            .flat_map(|(template, catalog)| {
                template
                    .steps
                    .iter()
                    .zip(&catalog.named_step_ids)
                    .map(|(step, &named_step_id)| (catalog.named_task_id, named_step_id, step))
            })
    };
    diesel::sql_query(MEMBERSHIPS_SQL)
        .bind::<Array<Integer>, _>(memberships().map(|m| m.0).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(memberships().map(|m| m.1).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(memberships().map(|m| m.2.skippable).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(memberships().map(|m| m.2.retryable).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(memberships().map(|m| m.2.retry_limit).collect::<Vec<_>>())
        .execute(conn)?;
    Ok(catalogs)
}

/// The ids of `names` in `table` (see [`by_name_sql`]), found or inserted.
fn ids_by_name(
    conn: &mut PgConnection,
    table: &str,
    id: &str,
    names: &[&str],
) -> QueryResult<Keyed<String>> {
    let sql = by_name_sql(table, id);
    keyed_ids(conn, names, |conn| {
        diesel::sql_query(&sql)
            .bind::<Array<Text>, _>(names)
            .load::<NamedRow>(conn)
            .map(|rows| rows.into_iter().map(|row| (row.name, row.id)).collect())
    })
}

/// The id of every key of `wanted`, keyed by the owned form of the key, from
/// `run` (a find-or-insert statement), run a second time when the first
/// comes back short (see the module's documentation). The map answers every
/// key of `wanted`, or this is an error.
fn keyed_ids<K, O>(
    conn: &mut PgConnection,
    wanted: &[K],
    mut run: impl FnMut(&mut PgConnection) -> QueryResult<HashMap<O, i32>>,
) -> QueryResult<Keyed<O>>
where
    K: ToOwnedKey<Owned = O> + Ord,
    O: Eq + Hash,
{
    let distinct: BTreeSet<&K> = wanted.iter().collect();
    let mut ids = run(conn)?;
    if ids.len() < distinct.len() {
        ids = run(conn)?;
    }
    // Short twice: a catalog row was deleted while this ran.
    if ids.len() < distinct.len() {
        return Err(diesel::NotFound);
    }
    Ok(Keyed(ids))
}

/// Ids by owned key, indexed by the borrowed form of the key.
struct Keyed<O>(HashMap<O, i32>);

impl<K: ToOwnedKey<Owned = O>, O: Eq + Hash> std::ops::Index<&K> for Keyed<O> {
    type Output = i32;
    fn index(&self, key: &K) -> &i32 {
        &self.0[&key.to_owned_key()]
    }
}

/// A borrowed catalog key and its owned form, as rows return it.
trait ToOwnedKey {
    type Owned;
    fn to_owned_key(&self) -> Self::Owned;
}

impl ToOwnedKey for &str {
    type Owned = String;
    fn to_owned_key(&self) -> String {
        (*self).to_owned()
    }
}

impl ToOwnedKey for (i32, &str) {
    type Owned = (i32, String);
    fn to_owned_key(&self) -> (i32, String) {
        (self.0, self.1.to_owned())
    }
}

impl ToOwnedKey for (i32, &str, &str) {
    type Owned = (i32, String, String);
    fn to_owned_key(&self) -> (i32, String, String) {
        (self.0, self.1.to_owned(), self.2.to_owned())
    }
}

#[derive(QueryableByName)]
struct NamedRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    id: i32,
}

#[derive(QueryableByName)]
struct NamedTaskRow {
    #[diesel(sql_type = Integer)]
    task_namespace_id: i32,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Integer)]
    id: i32,
}

#[derive(QueryableByName)]
struct NamedStepRow {
    #[diesel(sql_type = Integer)]
    dependent_system_id: i32,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    id: i32,
    #[diesel(sql_type = Bool)]
    inserted: bool,
}
