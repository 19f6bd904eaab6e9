//! Statements Diesel can cache: constant SQL text with bind parameters.
//!
//! [`diesel::sql_query`] is never cached, so every call would be parsed and
//! planned again. A statement whose text depends only on its shape (never on
//! the values, which are binds) can be kept prepared per connection, keyed by
//! its text: that is [`Cached`], written once for every hand-built statement
//! of the crate ([`FunctionCall`], the readiness scopes, the replication
//! probes).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// A statement that Diesel prepares once per connection and reuses, keyed by
/// the SQL text `F` writes. `F` must write the same text for the same shape,
/// with every value as a bind; its rows load into a `QueryableByName` type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached<F>(pub(crate) F);

impl<F: QueryFragment<Pg>> QueryFragment<Pg> for Cached<F> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

/// Keyed by its SQL text, not by type: one type can write several texts.
impl<F> QueryId for Cached<F> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<F> Query for Cached<F> {
    type SqlType = Untyped;
}

impl<F> RunQueryDsl<PgConnection> for Cached<F> {}

/// SQL text without binds, fixed at compile time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticSql(pub(crate) &'static str);

impl QueryFragment<Pg> for StaticSql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(self.0);
        Ok(())
    }
}

/// `SELECT * FROM function(args)`: a call of one set-returning SQL function.
#[derive(Debug, Clone)]
pub(crate) struct FunctionCall<Args> {
    function: &'static str,
    args: Args,
}

impl<Args> FunctionCall<Args> {
    /// A call of `function` with `args`: bound expressions such as
    /// `id.into_sql::<BigInt>()`, a tuple of them, or `()` for none.
    pub(crate) const fn new(function: &'static str, args: Args) -> Cached<Self> {
        Cached(FunctionCall { function, args })
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
