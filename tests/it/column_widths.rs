//! Every `MAX_*_LENGTH` constant of the crate is the width of the `VARCHAR`
//! column it guards, as the migrations create it: validation refuses exactly
//! what PostgreSQL would, so a migration that changes a width fails here until
//! the constant follows (and a new constant fails until it is listed).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use diesel::prelude::*;
use diesel::sql_types::{Integer, Nullable, Text};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    MAX_DEPENDENT_SYSTEM_LENGTH, MAX_DESCRIPTION_LENGTH, MAX_IDENTITY_HASH_LENGTH,
    MAX_NAMESPACE_LENGTH, MAX_REQUEST_FIELD_LENGTH, MAX_STEP_NAME_LENGTH, MAX_TASK_NAME_LENGTH,
    MAX_VERSION_LENGTH,
};

/// A constant's name, its value and the `(table, column)`s it guards.
type Guard = (&'static str, usize, &'static [(&'static str, &'static str)]);

/// Every length constant of the crate.
const GUARDS: &[Guard] = &[
    (
        "MAX_NAMESPACE_LENGTH",
        MAX_NAMESPACE_LENGTH,
        &[("tasker_task_namespaces", "name")],
    ),
    (
        "MAX_TASK_NAME_LENGTH",
        MAX_TASK_NAME_LENGTH,
        &[("tasker_named_tasks", "name")],
    ),
    (
        "MAX_VERSION_LENGTH",
        MAX_VERSION_LENGTH,
        &[("tasker_named_tasks", "version")],
    ),
    (
        "MAX_DESCRIPTION_LENGTH",
        MAX_DESCRIPTION_LENGTH,
        &[("tasker_named_tasks", "description")],
    ),
    (
        "MAX_STEP_NAME_LENGTH",
        MAX_STEP_NAME_LENGTH,
        &[("tasker_named_steps", "name")],
    ),
    (
        "MAX_DEPENDENT_SYSTEM_LENGTH",
        MAX_DEPENDENT_SYSTEM_LENGTH,
        &[("tasker_dependent_systems", "name")],
    ),
    (
        "MAX_REQUEST_FIELD_LENGTH",
        MAX_REQUEST_FIELD_LENGTH,
        &[
            ("tasker_tasks", "initiator"),
            ("tasker_tasks", "source_system"),
            ("tasker_tasks", "reason"),
        ],
    ),
    (
        "MAX_IDENTITY_HASH_LENGTH",
        MAX_IDENTITY_HASH_LENGTH,
        &[("tasker_tasks", "identity_hash")],
    ),
];

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Nullable<Integer>)]
    width: Option<i32>,
}

#[test]
fn every_length_constant_is_the_width_of_the_column_it_guards() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for &(constant, value, columns) in GUARDS {
        for &(table, column) in columns {
            let found: Vec<Column> = diesel::sql_query(
                "SELECT data_type::text AS data_type, \
                        character_maximum_length::integer AS width \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 \
                   AND column_name = $2",
            )
            .bind::<Text, _>(table)
            .bind::<Text, _>(column)
            .load(&mut conn)
            .expect("information_schema.columns");
            let [found] = found.as_slice() else {
                panic!("{constant}: no column {table}.{column}");
            };
            assert_eq!(
                found.data_type, "character varying",
                "{constant}: {table}.{column} is no longer a VARCHAR"
            );
            assert_eq!(
                found.width.and_then(|width| usize::try_from(width).ok()),
                Some(value),
                "{constant} is {value}, but {table}.{column} is VARCHAR({})",
                found
                    .width
                    .map_or_else(|| "no width".to_owned(), |width| width.to_string())
            );
        }
    }
}

/// The `pub const MAX_..._LENGTH` items declared anywhere in `src/`.
fn declared_length_constants(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            declared_length_constants(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let text = fs::read_to_string(&path).expect("source file");
            for line in text.lines() {
                let Some(rest) = line.trim_start().strip_prefix("pub const MAX_") else {
                    continue;
                };
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.ends_with("_LENGTH") {
                    found.insert(format!("MAX_{name}"));
                }
            }
        }
    }
}

#[test]
fn every_length_constant_of_the_crate_is_tied_to_its_column() {
    let mut declared = BTreeSet::new();
    declared_length_constants(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut declared,
    );
    let tied: BTreeSet<String> = GUARDS.iter().map(|&(name, ..)| name.to_owned()).collect();
    assert!(!declared.is_empty(), "no MAX_*_LENGTH found in src/");
    assert_eq!(
        declared, tied,
        "every MAX_*_LENGTH of src/ is listed in GUARDS with its columns"
    );
}
