//! What a node says about its replication state, and the primary's WAL
//! position after a commit.

use std::time::Duration;

use diesel::pg::Pg;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, PgLsn};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};

use super::Lsn;
use crate::call::{Cached, StaticSql};

/// A node's replication state, read on the node itself with one query
/// ([`StandbyStatus::load`]).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
#[diesel(check_for_backend(Pg))]
pub struct StandbyStatus {
    /// `pg_is_in_recovery()`: true on a hot standby, false on a primary
    /// (including a promoted standby).
    #[diesel(sql_type = Bool)]
    pub in_recovery: bool,
    /// Whether a WAL receiver is streaming from the primary
    /// (`pg_stat_wal_receiver`).
    #[diesel(sql_type = Bool)]
    pub receiving: bool,
    /// `pg_last_wal_receive_lsn()`: the end of the WAL received and flushed
    /// from the primary; `None` on a primary or before streaming started.
    #[diesel(sql_type = Nullable<PgLsn>)]
    pub received_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`: the end of the WAL replayed, so visible
    /// to queries on the standby; `None` on a primary.
    #[diesel(sql_type = Nullable<PgLsn>)]
    pub replayed_lsn: Option<Lsn>,
    /// Microseconds since the commit time (on the primary's clock) of the
    /// last transaction replayed; `None` when none was replayed since start.
    #[diesel(sql_type = Nullable<BigInt>)]
    last_replay_age_micros: Option<i64>,
}

impl StandbyStatus {
    /// Reads the state of the node `conn` is connected to.
    pub fn load(conn: &mut PgConnection) -> crate::Result<Self> {
        Ok(Cached(StaticSql(include_str!("standby_status.sql"))).get_result(conn)?)
    }

    /// How far behind the primary the standby's data is, as far as the
    /// standby can tell; `None` when it cannot tell (or this is no standby).
    ///
    /// - Zero when a WAL receiver is streaming and everything received has
    ///   been replayed: the standby is as current as the stream. This is what
    ///   makes an idle primary's standby fresh, where `now() -
    ///   pg_last_xact_replay_timestamp()` alone would grow without bound.
    /// - Otherwise (WAL received but not replayed yet, replay paused, or the
    ///   receiver disconnected), the time since the commit of the last
    ///   replayed transaction. That overstates the lag when the primary was
    ///   idle before the commits still to replay (the safe side), and counts
    ///   on the two servers' clocks agreeing.
    ///
    /// Not seen from the standby: WAL the primary wrote but has not sent yet
    /// (a few milliseconds while streaming, up to `wal_receiver_timeout`
    /// when the link silently died). A read that must see a given commit
    /// asks for its LSN ([`super::Freshness::at_least`]) instead.
    pub fn replay_lag(&self) -> Option<Duration> {
        if !self.in_recovery {
            return None;
        }
        let caught_up = matches!(
            (self.received_lsn, self.replayed_lsn),
            (Some(received), Some(replayed)) if replayed >= received
        );
        if self.receiving && caught_up {
            return Some(Duration::ZERO);
        }
        self.last_replay_age()
    }

    /// Time since the commit (on the primary's clock) of the last
    /// transaction replayed, `pg_last_xact_replay_timestamp()`; negative
    /// ages from clock skew count as zero.
    pub fn last_replay_age(&self) -> Option<Duration> {
        self.last_replay_age_micros
            .map(|micros| Duration::from_micros(micros.max(0).unsigned_abs()))
    }
}

/// The primary's WAL position after the caller's last commit: once a standby
/// has replayed up to it ([`StandbyStatus::replayed_lsn`]), it sees that
/// commit. Call it on the connection that committed, after the commit (and
/// outside any transaction), and pass it to [`super::Freshness::at_least`].
///
/// It is `pg_current_wal_insert_lsn()`, not `pg_current_wal_lsn()`: the
/// latter is the position written so far, which with `synchronous_commit =
/// off` can lie before the commit record. When the insert position sits just
/// after a WAL page header, the header is subtracted: the standby's replay
/// position stops at the page boundary until more WAL comes, and would
/// otherwise never reach the value on an idle primary.
pub fn commit_lsn(conn: &mut PgConnection) -> crate::Result<Lsn> {
    let position: InsertPosition = Cached(StaticSql(COMMIT_LSN)).get_result(conn)?;
    Ok(position.end_of_last_record())
}

const COMMIT_LSN: &str =
    "SELECT lsn, (pg_walfile_name_offset(lsn)).file_offset AS segment_offset, \
     current_setting('wal_block_size')::integer AS wal_block_size \
     FROM pg_current_wal_insert_lsn() AS lsn";

/// Sizes of the WAL page headers (`XLogPageHeaderData`, and the long form
/// on a segment's first page), MAXALIGNed.
const SHORT_PAGE_HEADER: u64 = 24;
const LONG_PAGE_HEADER: u64 = 40;

#[derive(Debug, QueryableByName)]
struct InsertPosition {
    #[diesel(sql_type = PgLsn)]
    lsn: Lsn,
    /// Offset of `lsn` in its WAL segment.
    #[diesel(sql_type = Integer)]
    segment_offset: i32,
    #[diesel(sql_type = Integer)]
    wal_block_size: i32,
}

impl InsertPosition {
    /// The insert position as the end of the last record inserted: right
    /// after a page header, nothing is on the page yet, so the last record
    /// ended at the page boundary.
    fn end_of_last_record(&self) -> Lsn {
        let offset = u64::from(self.segment_offset.unsigned_abs());
        let block = u64::from(self.wal_block_size.unsigned_abs()).max(1);
        let header = if offset == LONG_PAGE_HEADER {
            LONG_PAGE_HEADER
        } else if offset % block == SHORT_PAGE_HEADER {
            SHORT_PAGE_HEADER
        } else {
            0
        };
        Lsn(self.lsn.0 - header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(receiving: bool, received: u64, replayed: u64, age_ms: Option<i64>) -> StandbyStatus {
        StandbyStatus {
            in_recovery: true,
            receiving,
            received_lsn: Some(Lsn(received)),
            replayed_lsn: Some(Lsn(replayed)),
            last_replay_age_micros: age_ms.map(|ms| ms * 1000),
        }
    }

    #[test]
    fn a_streaming_standby_that_replayed_all_it_received_has_no_lag() {
        assert_eq!(
            status(true, 100, 100, Some(60_000)).replay_lag(),
            Some(Duration::ZERO)
        );
        assert_eq!(
            status(true, 100, 100, None).replay_lag(),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn otherwise_the_lag_is_the_age_of_the_last_replayed_commit() {
        let behind = status(true, 200, 100, Some(1500));
        assert_eq!(behind.replay_lag(), Some(Duration::from_millis(1500)));
        let disconnected = status(false, 100, 100, Some(700));
        assert_eq!(disconnected.replay_lag(), Some(Duration::from_millis(700)));
        assert_eq!(status(true, 200, 100, None).replay_lag(), None);
        assert_eq!(
            status(true, 200, 100, Some(-5)).replay_lag(),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_primary_has_no_replay_lag() {
        let primary = StandbyStatus {
            in_recovery: false,
            receiving: false,
            received_lsn: None,
            replayed_lsn: None,
            last_replay_age_micros: None,
        };
        assert_eq!(primary.replay_lag(), None);
    }

    #[test]
    fn an_insert_position_after_a_page_header_ends_at_the_page_boundary() {
        let at = |lsn: u64, segment_offset: i32| {
            InsertPosition {
                lsn: Lsn(lsn),
                segment_offset,
                wal_block_size: 8192,
            }
            .end_of_last_record()
        };
        // Within a page: unchanged.
        assert_eq!(at(0x0300_1150, 0x1150), Lsn(0x0300_1150));
        // Right after a page's short header.
        assert_eq!(at(0x0300_2018, 0x2018), Lsn(0x0300_2000));
        // Right after a segment's long header.
        assert_eq!(at(0x0400_0028, 0x28), Lsn(0x0400_0000));
        // 40 bytes into a page that is not a segment's first: a record is there.
        assert_eq!(at(0x0300_2028, 0x2028), Lsn(0x0300_2028));
    }
}
