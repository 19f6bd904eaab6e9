//! `SELECT * FROM function(args)` as a statement Diesel can cache.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// A call of one set-returning SQL function, loaded into a `QueryableByName`
/// row type.
///
/// Unlike [`diesel::sql_query`], which Diesel never caches, this statement is
/// constant text with binds: Diesel keeps it prepared per connection, keyed
/// by its SQL, and PostgreSQL skips parsing on every call after the first.
#[derive(Debug, Clone)]
pub(crate) struct FunctionCall<Args> {
    function: &'static str,
    args: Args,
}

impl<Args> FunctionCall<Args> {
    /// A call of `function` with `args`: bound expressions such as
    /// `id.into_sql::<BigInt>()`, a tuple of them, or `()` for none.
    pub(crate) const fn new(function: &'static str, args: Args) -> Self {
        FunctionCall { function, args }
    }
}

impl<Args: QueryFragment<Pg>> QueryFragment<Pg> for FunctionCall<Args> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT * FROM ");
        out.push_sql(self.function);
        out.push_sql("(");
        self.args.walk_ast(out.reborrow())?;
        out.push_sql(")");
        Ok(())
    }
}

/// Keyed by its SQL text, which depends only on the function's name.
impl<Args> QueryId for FunctionCall<Args> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Args> Query for FunctionCall<Args> {
    type SqlType = Untyped;
}

impl<Args> RunQueryDsl<PgConnection> for FunctionCall<Args> {}
