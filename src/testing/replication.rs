//! A primary and a hot standby streaming from it, for tests of reads routed
//! to standbys.

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use diesel::{sql_query, Connection, PgConnection, RunQueryDsl};

use super::cluster::{run, LocalCluster, PgBinaries, SupervisedServer};
use crate::migrations::run_pending_migrations;
use crate::replicas::{commit_lsn, Lsn, StandbyStatus};

/// The database created on the primary, which the URLs name.
const DATABASE: &str = "tasker";

/// How long the standby may take to replay, reconnect or be promoted.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(30);

/// A throwaway primary ([`LocalCluster`]) and a hot standby made from it with
/// `pg_basebackup --write-recovery-conf`, streaming on a port of its own,
/// both from the system's PostgreSQL binaries and with the same rules (run
/// as the `postgres` system user when root, removed on drop or process exit).
///
/// The primary's defaults (`wal_level = replica`, `max_wal_senders = 10`,
/// `hot_standby = on`) and `initdb --auth=trust` (which allows replication
/// connections from 127.0.0.1) are all replication needs. Both URLs name
/// the database `tasker`, empty until [`ReplicatedCluster::migrate`].
///
/// The standby can be stopped and started again, its replay paused and
/// resumed, and it can be promoted, to test what readers do then.
pub struct ReplicatedCluster {
    // Dropped first, so the standby does not outlive its primary.
    standby: Mutex<SupervisedServer>,
    standby_url: String,
    primary_url: String,
    primary: LocalCluster,
}

impl ReplicatedCluster {
    /// Starts the primary, creates the `tasker` database, clones the primary
    /// into the standby and starts it, and waits until it has replayed
    /// everything.
    pub fn start() -> io::Result<Self> {
        let binaries = PgBinaries::find()?;
        let primary = LocalCluster::start_with(&binaries)?;
        sql_query(format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut connect(primary.url())?)
            .map_err(io::Error::other)?;

        let mut standby = SupervisedServer::spawn(&binaries)?;
        let mut backup = binaries.command("pg_basebackup");
        backup
            .arg("--pgdata")
            .arg(standby.data_dir())
            .args(["--write-recovery-conf", "--checkpoint=fast", "--no-sync"])
            .args(["--host=127.0.0.1", "--username=postgres"])
            .arg(format!("--port={}", primary.server().port()))
            .current_dir(standby.base_dir());
        run(backup, "pg_basebackup")?;
        standby.start()?;

        let cluster = ReplicatedCluster {
            standby_url: standby.url(DATABASE),
            primary_url: primary.server().url(DATABASE),
            standby: Mutex::new(standby),
            primary,
        };
        cluster.wait_for_replay()?;
        Ok(cluster)
    }

    /// URL of the `tasker` database on the primary, as the `postgres` superuser.
    pub fn primary_url(&self) -> &str {
        &self.primary_url
    }

    /// URL of the `tasker` database on the standby, as the `postgres` superuser.
    pub fn standby_url(&self) -> &str {
        &self.standby_url
    }

    /// The primary cluster.
    pub fn primary(&self) -> &LocalCluster {
        &self.primary
    }

    /// Applies the crate's migrations to the primary's `tasker` database and
    /// waits until the standby has replayed them.
    pub fn migrate(&self) -> io::Result<Vec<String>> {
        let applied =
            run_pending_migrations(&mut connect(&self.primary_url)?).map_err(io::Error::other)?;
        self.wait_for_replay()?;
        Ok(applied)
    }

    /// The primary's WAL position now ([`commit_lsn`]).
    pub fn primary_lsn(&self) -> io::Result<Lsn> {
        commit_lsn(&mut connect(&self.primary_url)?).map_err(io::Error::other)
    }

    /// Waits until the standby has replayed everything the primary has
    /// committed so far, and returns that position.
    pub fn wait_for_replay(&self) -> io::Result<Lsn> {
        let lsn = self.primary_lsn()?;
        self.wait_for_standby(|status| status.replayed_lsn >= Some(lsn))?;
        Ok(lsn)
    }

    /// Waits until the standby has received (not necessarily replayed)
    /// everything the primary has committed so far, and returns that position.
    pub fn wait_for_receipt(&self) -> io::Result<Lsn> {
        let lsn = self.primary_lsn()?;
        self.wait_for_standby(|status| status.received_lsn >= Some(lsn))?;
        Ok(lsn)
    }

    /// Polls the standby's status until `done` says so.
    pub fn wait_for_standby(
        &self,
        done: impl Fn(&StandbyStatus) -> bool,
    ) -> io::Result<StandbyStatus> {
        let deadline = Instant::now() + STANDBY_TIMEOUT;
        let mut conn = connect(&self.standby_url)?;
        loop {
            let status = StandbyStatus::load(&mut conn).map_err(io::Error::other)?;
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "the standby did not get there within {STANDBY_TIMEOUT:?}: {status:?}"
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the standby (fast shutdown); its files stay.
    pub fn stop_standby(&self) -> io::Result<()> {
        self.standby().stop()
    }

    /// Starts the stopped standby again and waits until it streams from the
    /// primary.
    pub fn start_standby(&self) -> io::Result<()> {
        self.standby().start()?;
        self.wait_for_standby(|status| status.receiving)?;
        Ok(())
    }

    /// Pauses WAL replay on the standby (`pg_wal_replay_pause()`): it keeps
    /// receiving WAL but applies none of it, so its data stays as it is.
    pub fn pause_replay(&self) -> io::Result<()> {
        self.on_standby("SELECT pg_wal_replay_pause()")
    }

    /// Resumes WAL replay on the standby (`pg_wal_replay_resume()`).
    pub fn resume_replay(&self) -> io::Result<()> {
        self.on_standby("SELECT pg_wal_replay_resume()")
    }

    /// Promotes the standby to a primary of its own (`pg_promote()`) and
    /// waits until it has left recovery.
    pub fn promote_standby(&self) -> io::Result<()> {
        self.on_standby("SELECT pg_promote()")?;
        self.wait_for_standby(|status| !status.in_recovery)?;
        Ok(())
    }

    /// The standby's server log.
    pub fn standby_log(&self) -> String {
        self.standby().log_since(0)
    }

    fn on_standby(&self, statement: &'static str) -> io::Result<()> {
        sql_query(statement)
            .execute(&mut connect(&self.standby_url)?)
            .map(drop)
            .map_err(io::Error::other)
    }

    fn standby(&self) -> MutexGuard<'_, SupervisedServer> {
        self.standby
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for ReplicatedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedCluster")
            .field("primary_url", &self.primary_url)
            .field("standby_url", &self.standby_url)
            .finish()
    }
}

fn connect(url: &str) -> io::Result<PgConnection> {
    PgConnection::establish(url).map_err(io::Error::other)
}
