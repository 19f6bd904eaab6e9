//! The task contexts and parent results of a claimed batch, read in one query
//! the first time a handler of the batch asks for them.

use std::cell::OnceCell;
use std::collections::HashMap;

use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
use diesel::{IntoSql, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::{Map, Value};

use crate::call::FunctionCall;
use crate::jsonb::JsonbText;
use crate::{Refusal, Result};

/// What a handler may read about its step beyond the claim.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StepInputs {
    pub namespace: String,
    pub task_name: String,
    pub task_version: String,
    /// `Err`: why the context cannot be decoded (it holds JSON `serde_json`
    /// refuses), for this step's handler alone.
    pub task_context: std::result::Result<Option<Value>, String>,
    pub parent_results: std::result::Result<Map<String, Value>, String>,
}

/// The inputs of a batch of claimed steps, loaded at most once.
#[derive(Debug, Default)]
pub(super) struct BatchInputs {
    step_ids: Vec<i64>,
    loaded: OnceCell<HashMap<i64, StepInputs>>,
}

impl BatchInputs {
    pub fn new(step_ids: Vec<i64>) -> Self {
        BatchInputs {
            step_ids,
            loaded: OnceCell::new(),
        }
    }

    /// The inputs of `workflow_step_id`, loading the whole batch's on first use.
    pub fn of(&self, conn: &mut PgConnection, workflow_step_id: i64) -> Result<&StepInputs> {
        let loaded = match self.loaded.get() {
            Some(loaded) => loaded,
            None => {
                let rows = load(conn, &self.step_ids)?;
                self.loaded.get_or_init(|| rows)
            }
        };
        loaded
            .get(&workflow_step_id)
            .ok_or_else(|| Refusal::UnknownStep { workflow_step_id }.into())
    }
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct InputsRow {
    #[diesel(sql_type = BigInt)]
    workflow_step_id: i64,
    #[diesel(sql_type = Text)]
    namespace: String,
    #[diesel(sql_type = Text)]
    task_name: String,
    #[diesel(sql_type = Text)]
    task_version: String,
    #[diesel(sql_type = Nullable<Jsonb>)]
    task_context: Option<JsonbText>,
    #[diesel(sql_type = Jsonb)]
    parent_results: JsonbText,
}

fn load(conn: &mut PgConnection, step_ids: &[i64]) -> Result<HashMap<i64, StepInputs>> {
    let rows: Vec<InputsRow> = FunctionCall::new(
        "tasker_step_work_inputs",
        step_ids.into_sql::<Array<BigInt>>(),
    )
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            // Decoded per step: one task's undecodable context must not cost the
            // other steps of the batch theirs.
            let task_context = row.task_context.as_ref().map(JsonbText::decode).transpose();
            let parent_results = row.parent_results.decode().map(|results| match results {
                Value::Object(map) => map,
                _ => Map::new(),
            });
            (
                row.workflow_step_id,
                StepInputs {
                    namespace: row.namespace,
                    task_name: row.task_name,
                    task_version: row.task_version,
                    task_context,
                    parent_results,
                },
            )
        })
        .collect())
}
