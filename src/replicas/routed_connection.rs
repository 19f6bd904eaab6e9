//! A connection checked out for a read, and the node that serves it.

use std::fmt;
use std::ops::{Deref, DerefMut};

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::PgConnection;

use super::SkippedStandby;
use crate::pool::PooledPgConnection;

/// The node that serves a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// The primary.
    Primary,
    /// The standby at this position in the order the standbys were given.
    Standby(usize),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Primary => f.write_str("primary"),
            Node::Standby(index) => write!(f, "standby {index}"),
        }
    }
}

/// A pooled connection for reads ([`super::RoutedPool::read`]), to a standby
/// or to the primary; it dereferences to [`PgConnection`], so the readiness
/// API takes it as it is.
///
/// It is read-only either way: a standby refuses writes, and a primary
/// connection handed out for a read has `default_transaction_read_only` on
/// until it goes back to the pool. So code that writes through a read
/// connection fails on every run, not only when a standby happens to serve
/// it; writes take [`super::RoutedPool::primary`].
pub struct RoutedConnection {
    conn: PooledPgConnection,
    node: Node,
    skipped: Vec<SkippedStandby>,
}

/// Turns the session of a primary connection read-only; [`RESET_READ_WRITE`]
/// undoes it.
pub(super) const SET_READ_ONLY: &str = "SET default_transaction_read_only = on";
const RESET_READ_WRITE: &str = "RESET default_transaction_read_only";

impl RoutedConnection {
    pub(super) fn new(conn: PooledPgConnection, node: Node, skipped: Vec<SkippedStandby>) -> Self {
        RoutedConnection {
            conn,
            node,
            skipped,
        }
    }

    /// The node serving the read.
    pub fn node(&self) -> Node {
        self.node
    }

    /// Whether a standby serves the read.
    pub fn is_standby(&self) -> bool {
        matches!(self.node, Node::Standby(_))
    }

    /// The standbys passed over before this node was chosen, and why: empty
    /// when the first standby tried served the read.
    pub fn skipped(&self) -> &[SkippedStandby] {
        &self.skipped
    }
}

impl Deref for RoutedConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for RoutedConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for RoutedConnection {
    /// Gives a primary connection its read-write default back before it
    /// returns to the pool; one that cannot be reset is discarded.
    fn drop(&mut self) {
        if self.node == Node::Primary && self.conn.batch_execute(RESET_READ_WRITE).is_err() {
            mark_broken(&mut self.conn);
        }
    }
}

impl fmt::Debug for RoutedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedConnection")
            .field("node", &self.node)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// Makes r2d2 discard the connection instead of pooling it again (Diesel's
/// pool manager drops connections whose transaction manager is in error).
pub(super) fn mark_broken(conn: &mut PgConnection) {
    AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

#[cfg(test)]
mod tests {
    use super::super::{RoutedPool, SkipReason};
    use super::RoutedConnection;

    #[test]
    fn pools_are_shared_and_read_connections_sent_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<RoutedPool>();
        send_sync::<SkipReason>();
        send::<RoutedConnection>();
    }
}
