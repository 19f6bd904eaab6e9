//! jsonb values as PostgreSQL sent them, decoded row by row: valid jsonb that
//! `serde_json` refuses (a number beyond `f64`, nesting deeper than it
//! allows), written by another writer, must not fail a whole result set.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::Jsonb;
use serde_json::Value;

/// The text of a jsonb value, not yet decoded.
#[derive(Debug, FromSqlRow)]
pub(crate) struct JsonbText(Vec<u8>);

impl FromSql<Jsonb, Pg> for JsonbText {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        // jsonb's binary form: a version byte (1), then the text.
        match value.as_bytes().split_first() {
            Some((1, text)) => Ok(JsonbText(text.to_vec())),
            _ => Err("jsonb in a binary format other than version 1".into()),
        }
    }
}

impl JsonbText {
    /// The value, or why `serde_json` cannot hold it.
    pub(crate) fn decode(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.0).map_err(|error| error.to_string())
    }
}
