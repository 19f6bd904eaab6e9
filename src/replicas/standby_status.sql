-- What a standby knows about its own freshness, in one round trip. On a
-- primary the WAL functions give NULL and pg_stat_wal_receiver has no row.
-- Roles without pg_read_all_stats see the receiver's row but not its status,
-- so a receiver whose status is hidden counts as streaming.
SELECT pg_is_in_recovery() AS in_recovery,
       EXISTS (SELECT FROM pg_stat_wal_receiver
               WHERE coalesce(status, 'streaming') = 'streaming') AS receiving,
       pg_last_wal_receive_lsn() AS received_lsn,
       pg_last_wal_replay_lsn() AS replayed_lsn,
       (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
           * 1000000)::bigint AS last_replay_age_micros
