//! The catalog rows a batch of new tasks needs (namespaces, dependent
//! systems, task and step templates, their memberships), found or inserted
//! for every template of the batch at once: one statement per table, all of
//! them made by [`statement`] from a description of the table
//! ([`CatalogTable`]).
//!
//! Each statement inserts only the keys it does not find (so a steady state
//! of creation draws no ids from the `INTEGER` sequences: an insert that hits
//! a conflict would still consume one), sorted by key with the tables always
//! in the same order, so concurrent creators wait for each other instead of
//! deadlocking, and answers the id of every row asked for, by its position.
//! A key another transaction commits while the statement runs is skipped by
//! `ON CONFLICT DO NOTHING` but is not in the statement's snapshot either, so
//! a statement that comes back short runs again, in a new snapshot that sees
//! it (a key deleted meanwhile is then inserted anew); after [`ATTEMPTS`]
//! short answers the race is reported ([`Error::lost_race`]).

use std::collections::HashSet;

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text};

use super::template::{StepTemplate, TaskTemplate};
use crate::error::Error;

/// Statements run for one table before a race that keeps taking its rows
/// away is reported: the first, and two in new snapshots.
const ATTEMPTS: usize = 3;

/// Step templates inserted in one call past which the table's statistics are
/// refreshed (see [`find_or_create_catalogs`]).
const ANALYZE_AFTER_NEW_STEPS: usize = 1_000;

/// A catalog table as [`statement`] needs it.
struct CatalogTable {
    name: &'static str,
    /// The columns of its unique key (the conflict target).
    key: &'static [&'static str],
    /// Columns an inserted row takes from the first row asked for with its
    /// key; an existing row keeps its own.
    extra: &'static [&'static str],
    /// Its `INTEGER` id column.
    id: &'static str,
}

const NAMESPACES: CatalogTable = CatalogTable {
    name: "tasker_task_namespaces",
    key: &["name"],
    extra: &[],
    id: "task_namespace_id",
};

const DEPENDENT_SYSTEMS: CatalogTable = CatalogTable {
    name: "tasker_dependent_systems",
    key: &["name"],
    extra: &[],
    id: "dependent_system_id",
};

const NAMED_TASKS: CatalogTable = CatalogTable {
    name: "tasker_named_tasks",
    key: &["task_namespace_id", "name", "version"],
    extra: &["description"],
    id: "named_task_id",
};

const NAMED_STEPS: CatalogTable = CatalogTable {
    name: "tasker_named_steps",
    key: &["dependent_system_id", "name"],
    extra: &[],
    id: "named_step_id",
};

const MEMBERSHIPS: CatalogTable = CatalogTable {
    name: "tasker_named_tasks_named_steps",
    key: &["named_task_id", "named_step_id"],
    extra: &["skippable", "default_retryable", "default_retry_limit"],
    id: "id",
};

/// What a statement answers.
#[derive(Clone, Copy)]
enum Answer {
    /// `(position, id, inserted)` for every row asked for: its position in
    /// the arrays (from 1), its row's id, and whether this statement inserted
    /// that row.
    Ids,
    /// Nothing: the rows are only made to exist.
    Nothing,
}

/// The one find-or-insert statement of `table`: `$1..$n` are arrays, one per
/// column of `table.key` then `table.extra` (each of the SQL type in
/// `types`), element `i` of each making row `i`.
fn statement(table: &CatalogTable, types: &[&str], answer: Answer) -> String {
    let list = |columns: &[&str], prefix: &str| -> String {
        columns
            .iter()
            .map(|column| format!("{prefix}{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let columns: Vec<&str> = table.key.iter().chain(table.extra).copied().collect();
    let arrays = types
        .iter()
        .enumerate()
        .map(|(index, sql_type)| format!("${}::{sql_type}[]", index + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let (name, id) = (table.name, table.id);
    let key = list(table.key, "");
    let t_key = list(table.key, "t.");
    let w_key = list(table.key, "w.");
    let given = format!(
        "given AS (SELECT * FROM unnest({arrays}) WITH ORDINALITY AS g ({}, position)), \
         wanted AS (SELECT DISTINCT ON ({key}) * FROM given ORDER BY {key}, position)",
        list(&columns, "")
    );
    let insert = format!(
        "INSERT INTO {name} ({}) \
         SELECT {} FROM wanted AS w \
         WHERE NOT EXISTS (SELECT FROM {name} AS t WHERE ({t_key}) = ({w_key})) \
         ORDER BY {w_key} \
         ON CONFLICT ({key}) DO NOTHING",
        list(&columns, ""),
        list(&columns, "w."),
    );
    match answer {
        Answer::Nothing => format!("WITH {given} {insert}"),
        Answer::Ids => format!(
            "WITH {given}, \
             inserted AS ({insert} RETURNING {key}, {id}), \
             found AS (SELECT {key}, {id} AS id, true AS inserted FROM inserted \
                       UNION ALL \
                       SELECT {key}, t.{id}, false FROM {name} AS t JOIN wanted USING ({key})) \
             SELECT g.position, f.id, f.inserted FROM given AS g JOIN found AS f USING ({key})"
        ),
    }
}

/// One column of the rows asked for.
enum Column<'a> {
    Integer(Vec<i32>),
    Text(Vec<&'a str>),
    NullableText(Vec<Option<&'a str>>),
    Bool(Vec<bool>),
}

impl<'a> Column<'a> {
    fn len(&self) -> usize {
        match self {
            Column::Integer(values) => values.len(),
            Column::Text(values) => values.len(),
            Column::NullableText(values) => values.len(),
            Column::Bool(values) => values.len(),
        }
    }

    /// The SQL type of its elements.
    fn sql_type(&self) -> &'static str {
        match self {
            Column::Integer(_) => "integer",
            Column::Text(_) | Column::NullableText(_) => "text",
            Column::Bool(_) => "boolean",
        }
    }

    /// `query` with this column bound as its next array.
    fn bind<'f>(&'f self, query: BoxedSqlQuery<'f, Pg, SqlQuery>) -> BoxedSqlQuery<'f, Pg, SqlQuery>
    where
        'a: 'f,
    {
        match self {
            Column::Integer(values) => query.bind::<Array<Integer>, _>(values),
            Column::Text(values) => query.bind::<Array<Text>, _>(values),
            Column::NullableText(values) => query.bind::<Array<Nullable<Text>>, _>(values),
            Column::Bool(values) => query.bind::<Array<Bool>, _>(values),
        }
    }
}

/// The number of rows `columns` asks for. Columns that do not fit the table
/// are a bug, reported as a query that could not be built.
fn rows(table: &CatalogTable, columns: &[Column<'_>]) -> crate::Result<usize> {
    let rows = columns.first().map_or(0, Column::len);
    if columns.len() != table.key.len() + table.extra.len()
        || columns.iter().any(|column| column.len() != rows)
    {
        return Err(Error::Query(diesel::result::Error::QueryBuilderError(
            format!(
                "{} takes {} columns of equal length, not {:?}",
                table.name,
                table.key.len() + table.extra.len(),
                columns.iter().map(Column::len).collect::<Vec<_>>()
            )
            .into(),
        )));
    }
    Ok(rows)
}

/// `table`'s statement for `columns`, with its binds.
fn query<'f>(
    table: &CatalogTable,
    columns: &'f [Column<'_>],
    answer: Answer,
) -> BoxedSqlQuery<'f, Pg, SqlQuery> {
    let types: Vec<&str> = columns.iter().map(Column::sql_type).collect();
    columns.iter().fold(
        diesel::sql_query(statement(table, &types, answer)).into_boxed::<Pg>(),
        |query, column| column.bind(query),
    )
}

#[derive(QueryableByName)]
struct FoundRow {
    #[diesel(sql_type = BigInt)]
    position: i64,
    #[diesel(sql_type = Integer)]
    id: i32,
    #[diesel(sql_type = Bool)]
    inserted: bool,
}

/// The rows of one table a call found or inserted.
struct Found {
    /// The id of each row asked for, in the order asked.
    ids: Vec<i32>,
    /// Rows this call inserted (each counted once, however often asked for).
    inserted: usize,
}

/// The id of every row of `columns` in `table`, found or inserted (see the
/// module's documentation).
fn find_or_create(
    conn: &mut PgConnection,
    table: &CatalogTable,
    columns: &[Column<'_>],
) -> crate::Result<Found> {
    let rows = rows(table, columns)?;
    if rows == 0 {
        return Ok(Found {
            ids: Vec::new(),
            inserted: 0,
        });
    }
    let mut inserted = HashSet::new();
    let mut missing = rows;
    for _ in 0..ATTEMPTS {
        let mut ids: Vec<Option<i32>> = vec![None; rows];
        for row in query(table, columns, Answer::Ids).load::<FoundRow>(conn)? {
            let slot = usize::try_from(row.position)
                .ok()
                .and_then(|position| position.checked_sub(1))
                .and_then(|index| ids.get_mut(index))
                .filter(|slot| slot.is_none())
                .ok_or_else(|| {
                    Error::unexpected_rows(format!(
                        "{} answered position {} of {rows} rows asked for, or twice",
                        table.name, row.position
                    ))
                })?;
            *slot = Some(row.id);
            if row.inserted {
                inserted.insert(row.id);
            }
        }
        let found: Option<Vec<i32>> = ids.iter().copied().collect();
        match found {
            Some(ids) => {
                return Ok(Found {
                    ids,
                    inserted: inserted.len(),
                })
            }
            None => missing = ids.iter().filter(|id| id.is_none()).count(),
        }
    }
    Err(Error::lost_race(format!(
        "{missing} of the {rows} rows of {} asked for were neither found nor inserted in \
         {ATTEMPTS} attempts: other transactions kept inserting and deleting them",
        table.name
    )))
}

/// Inserts the rows of `columns` that `table` does not have yet; existing
/// ones are left as they are. Nothing is read back, so a lost race needs no
/// second look: the row exists either way.
fn create_missing(
    conn: &mut PgConnection,
    table: &CatalogTable,
    columns: &[Column<'_>],
) -> crate::Result<()> {
    if rows(table, columns)? > 0 {
        query(table, columns, Answer::Nothing).execute(conn)?;
    }
    Ok(())
}

/// The catalog ids a task of a template needs.
pub(super) struct Catalog {
    pub(super) named_task_id: i32,
    /// The step template of each template step, by position.
    pub(super) named_step_ids: Vec<i32>,
}

/// The catalog of each template, in the order given. Existing catalog rows
/// are not updated: step instances take their flags from the request's
/// template, not from the stored membership, and a new task template or
/// membership takes the description or flags of the first template given
/// for it.
pub(super) fn find_or_create_catalogs(
    conn: &mut PgConnection,
    templates: &[&TaskTemplate],
) -> crate::Result<Vec<Catalog>> {
    // Every step of every template, in order.
    let steps: Vec<&StepTemplate> = templates.iter().flat_map(|t| &t.steps).collect();
    let of_templates = |field: fn(&TaskTemplate) -> &str| -> Vec<&str> {
        templates.iter().map(|&template| field(template)).collect()
    };
    let of_steps = |field: fn(&StepTemplate) -> &str| -> Vec<&str> {
        steps.iter().map(|&step| field(step)).collect()
    };

    let namespace_ids = find_or_create(
        conn,
        &NAMESPACES,
        &[Column::Text(of_templates(|t| &t.namespace))],
    )?
    .ids;
    let system_ids = find_or_create(
        conn,
        &DEPENDENT_SYSTEMS,
        &[Column::Text(of_steps(|step| &step.dependent_system))],
    )?
    .ids;
    let task_ids = find_or_create(
        conn,
        &NAMED_TASKS,
        &[
            Column::Integer(namespace_ids),
            Column::Text(of_templates(|t| &t.name)),
            Column::Text(of_templates(|t| &t.version)),
            Column::NullableText(templates.iter().map(|t| t.description.as_deref()).collect()),
        ],
    )?
    .ids;
    let named_steps = find_or_create(
        conn,
        &NAMED_STEPS,
        &[
            Column::Integer(system_ids),
            Column::Text(of_steps(|step| &step.name)),
        ],
    )?;
    // Every step row checks its step template by a foreign key, through a
    // plan each session keeps until the table's statistics change. Planned
    // while the table was small, it scans the table, which is no longer small
    // once a big template has been added: 10,000 new step templates made the
    // steps of their first task take seconds instead of a tenth of one.
    // ANALYZE counts this transaction's own rows and makes the plans anew.
    if named_steps.inserted >= ANALYZE_AFTER_NEW_STEPS {
        diesel::sql_query("ANALYZE tasker_named_steps").execute(conn)?;
    }

    // `task_ids` and `named_steps.ids` answer every row asked for, in order:
    // the task template of each step is its template's.
    let step_task_ids: Vec<i32> = templates
        .iter()
        .zip(&task_ids)
        .flat_map(|(template, &id)| std::iter::repeat_n(id, template.steps.len()))
        .collect();
    create_missing(
        conn,
        &MEMBERSHIPS,
        &[
            Column::Integer(step_task_ids),
            Column::Integer(named_steps.ids.clone()),
            Column::Bool(steps.iter().map(|step| step.skippable).collect()),
            Column::Bool(steps.iter().map(|step| step.retryable).collect()),
            Column::Integer(steps.iter().map(|step| step.retry_limit).collect()),
        ],
    )?;

    // Split the steps of all templates back into each template's.
    let mut step_ids = named_steps.ids.into_iter();
    Ok(templates
        .iter()
        .zip(task_ids)
        .map(|(template, named_task_id)| Catalog {
            named_task_id,
            named_step_ids: step_ids.by_ref().take(template.steps.len()).collect(),
        })
        .collect())
}
