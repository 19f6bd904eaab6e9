//! Reads routed to PostgreSQL hot standbys (`tasker_diesel::replicas`),
//! against a real primary and a real standby streaming from it: each test
//! that changes the standby (pauses its replay, stops or promotes it) starts
//! a pair of its own ([`ReplicatedCluster`]); the others share one.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::Text;
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::json;
use tasker_diesel::readiness::SystemHealthCounts;
use tasker_diesel::replicas::{
    build_standby_pool, commit_lsn, Freshness, Lsn, Node, RoutedConnection, RoutedPool, SkipReason,
    StandbyStatus,
};
use tasker_diesel::testing::{ReplicatedCluster, TestDatabase};
use tasker_diesel::workflow::{
    claim_ready_steps, complete_step, create_task, transition_task, ClaimRequest, StepTemplate,
    TaskRequest, TaskTemplate, TransitionOptions,
};
use tasker_diesel::{
    build_pool, Error, StepReadinessStatus, StepState, TaskExecutionContext, TaskState,
};

/// How long a standby that failed is skipped in these tests.
const RETRY_AFTER: Duration = Duration::from_millis(300);

const LEASE: Duration = Duration::from_secs(60);

/// A migrated primary and standby pair with a routed pool over them.
struct Pair {
    // Dropped first: its connections go before the servers.
    pool: RoutedPool,
    cluster: ReplicatedCluster,
}

impl Pair {
    fn start() -> Pair {
        let cluster = ReplicatedCluster::start().expect("start a primary and a standby");
        cluster.migrate().expect("migrate the primary");
        let pool = routed_pool(&cluster, build_pool(cluster.primary_url()).unwrap());
        Pair { pool, cluster }
    }

    /// A new task of two steps (`first`, then `second`), created on the
    /// primary, with the WAL position after its commit.
    fn create_task(&self) -> (i64, Lsn) {
        let (created, lsn) = self
            .pool
            .write(|conn| create_task(conn, &task_request(&template())))
            .expect("create a task");
        (created.task.task_id, lsn)
    }
}

fn routed_pool(cluster: &ReplicatedCluster, primary: tasker_diesel::PgPool) -> RoutedPool {
    RoutedPool::builder(primary)
        .standby(build_standby_pool(cluster.standby_url()))
        .standby_retry_after(RETRY_AFTER)
        .build()
}

/// The pair of the tests that leave the standby as it is, one test at a
/// time (a commit of one would change the lag another measures).
fn shared_pair() -> (MutexGuard<'static, ()>, &'static Pair) {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    (turn, PAIR.get_or_init(Pair::start))
}

fn template() -> TaskTemplate {
    TaskTemplate::new("replicas", "two_steps", "1.0.0")
        .step(StepTemplate::new("first"))
        .step(StepTemplate::new("second").depends_on(["first"]))
}

/// A request for a new task each time (the context is part of its identity).
fn task_request(template: &TaskTemplate) -> TaskRequest<'_> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    TaskRequest::new(template).context(json!({ "n": NEXT.fetch_add(1, Ordering::Relaxed) }))
}

fn context(conn: &mut RoutedConnection, task_id: i64) -> Option<TaskExecutionContext> {
    TaskExecutionContext::find(conn, task_id).expect("execution context")
}

fn in_recovery(conn: &mut PgConnection) -> bool {
    StandbyStatus::load(conn).expect("status").in_recovery
}

/// The reason the one standby was passed over.
fn skip_reason(conn: &RoutedConnection) -> &SkipReason {
    match conn.skipped() {
        [skipped] => &skipped.reason,
        other => panic!("expected one skipped standby, got {other:?}"),
    }
}

fn is_read_only_error(error: &Error) -> bool {
    matches!(
        error,
        Error::Query(DieselError::DatabaseError(
            DatabaseErrorKind::ReadOnlyTransaction,
            _
        ))
    )
}

#[test]
fn a_standby_serves_readiness_context_and_health_once_it_has_replayed_the_commit() {
    let (_turn, pair) = shared_pair();
    let (task_id, _) = pair.create_task();
    pair.cluster.wait_for_replay().unwrap();

    let mut conn = pair.pool.read(&Freshness::any()).unwrap();
    assert_eq!(conn.node(), Node::Standby(0));
    assert!(in_recovery(&mut conn), "served by a node in recovery");
    let context = context(&mut conn, task_id).expect("the standby sees the task");
    assert_eq!(context.total_steps, 2);
    let ready: Vec<String> = StepReadinessStatus::for_task(task_id)
        .ready_for_execution()
        .load(&mut conn)
        .unwrap()
        .into_iter()
        .map(|step| step.name)
        .collect();
    assert_eq!(ready, ["first"]);
    assert!(SystemHealthCounts::load(&mut conn).unwrap().total_tasks >= 1);
}

#[test]
fn an_idle_caught_up_standby_counts_as_fresh() {
    let (_turn, pair) = shared_pair();
    pair.create_task();
    pair.cluster.wait_for_replay().unwrap();
    // Longer than the bound below: the time since the last replayed commit
    // is not the lag of a standby that has replayed all it received.
    thread::sleep(Duration::from_millis(1200));
    let status = pair
        .cluster
        .wait_for_standby(|status| status.receiving)
        .unwrap();
    assert_eq!(status.replay_lag(), Some(Duration::ZERO), "{status:?}");
    assert!(status.last_replay_age() > Some(Duration::from_secs(1)));

    let conn = pair
        .pool
        .read(&Freshness::within(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(conn.node(), Node::Standby(0), "{:?}", conn.skipped());
}

#[test]
fn with_replay_paused_a_tight_lag_bound_reads_the_primary_and_a_loose_one_the_stale_standby() {
    let pair = Pair::start();
    let (replayed_task, _) = pair.create_task();
    pair.cluster.wait_for_replay().unwrap();
    pair.cluster.pause_replay().unwrap();
    thread::sleep(Duration::from_millis(200));
    let (new_task, _) = pair.create_task();
    // The standby has the new commit's WAL but does not apply it.
    pair.cluster.wait_for_receipt().unwrap();

    let tight = Freshness::within(Duration::from_millis(100));
    let mut conn = pair.pool.read(&tight).unwrap();
    assert_eq!(conn.node(), Node::Primary);
    match skip_reason(&conn) {
        SkipReason::TooFarBehind { lag: Some(lag), .. } => {
            assert!(*lag >= Duration::from_millis(200), "lag {lag:?}")
        }
        other => panic!("skipped for {other:?}"),
    }
    assert!(!in_recovery(&mut conn));
    assert!(
        context(&mut conn, new_task).is_some(),
        "the primary is current"
    );
    drop(conn);

    for loose in [
        Freshness::within(Duration::from_secs(3600)),
        Freshness::any(),
    ] {
        let mut conn = pair.pool.read(&loose).unwrap();
        assert_eq!(conn.node(), Node::Standby(0), "{loose:?}");
        assert!(context(&mut conn, replayed_task).is_some());
        assert!(
            context(&mut conn, new_task).is_none(),
            "the standby is stale"
        );
    }

    pair.cluster.resume_replay().unwrap();
    pair.cluster.wait_for_replay().unwrap();
    let mut conn = pair.pool.read(&tight).unwrap();
    assert_eq!(conn.node(), Node::Standby(0), "{:?}", conn.skipped());
    assert!(context(&mut conn, new_task).is_some());
}

#[test]
fn read_your_writes_falls_back_to_the_primary_until_the_standby_has_replayed_the_write() {
    let pair = Pair::start();
    pair.cluster.pause_replay().unwrap();
    let (task_id, lsn) = pair.create_task();
    let own_write = Freshness::any().at_least(lsn);

    // The standby really lacks the write...
    let mut conn = pair.pool.read(&Freshness::any()).unwrap();
    assert_eq!(conn.node(), Node::Standby(0));
    assert!(context(&mut conn, task_id).is_none());
    drop(conn);

    // ...so a read that must see it goes to the primary at once...
    let mut conn = pair.pool.read(&own_write).unwrap();
    assert_eq!(conn.node(), Node::Primary);
    assert!(
        matches!(skip_reason(&conn), SkipReason::NotReplayed { wanted, .. } if *wanted == lsn),
        "{:?}",
        conn.skipped()
    );
    assert!(context(&mut conn, task_id).is_some());
    drop(conn);

    // ...or after waiting for the standby as long as it may.
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let mut conn = pair.pool.read(&own_write.wait_up_to(wait)).unwrap();
    let waited = started.elapsed();
    assert_eq!(conn.node(), Node::Primary);
    // At least the wait; the upper bound only catches a hang, not slowness.
    assert!(
        wait <= waited && waited < wait + Duration::from_secs(10),
        "waited {waited:?}"
    );
    assert!(context(&mut conn, task_id).is_some());
    drop(conn);

    // A standby that replays the write while the read waits serves it.
    thread::scope(|scope| {
        let resumer = scope.spawn(|| {
            thread::sleep(Duration::from_millis(300));
            pair.cluster.resume_replay()
        });
        let started = Instant::now();
        let mut conn = pair
            .pool
            .read(&own_write.wait_up_to(Duration::from_secs(20)))
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(conn.node(), Node::Standby(0));
        assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
        assert!(context(&mut conn, task_id).is_some());
        resumer.join().unwrap().expect("resume replay");
    });

    // Once replayed, the standby serves it without waiting.
    let mut conn = pair.pool.read(&own_write).unwrap();
    assert_eq!(conn.node(), Node::Standby(0));
    assert!(context(&mut conn, task_id).is_some());
}

#[test]
fn a_stopped_standby_is_skipped_quickly_without_an_error_and_used_again_once_back() {
    let pair = Pair::start();
    let (task_id, _) = pair.create_task();
    pair.cluster.wait_for_replay().unwrap();
    // Pooled standby connections now exist, and the stop breaks them.
    assert_eq!(
        pair.pool.read(&Freshness::any()).unwrap().node(),
        Node::Standby(0)
    );
    pair.cluster.stop_standby().unwrap();

    let started = Instant::now();
    let mut conn = pair.pool.read(&Freshness::any()).unwrap();
    let first = started.elapsed();
    assert_eq!(conn.node(), Node::Primary);
    assert!(
        matches!(skip_reason(&conn), SkipReason::Unavailable(_)),
        "{:?}",
        conn.skipped()
    );
    assert!(context(&mut conn, task_id).is_some());
    drop(conn);
    // Bounded by the standby pool's connection timeout (500 ms), not r2d2's
    // default of 30 s; the bound only catches a hang, not slowness.
    eprintln!("stopped standby: first read {first:?}");
    assert!(first < Duration::from_secs(15), "first read took {first:?}");

    // Within the retry delay the standby is not even tried.
    let conn = pair.pool.read(&Freshness::any()).unwrap();
    assert_eq!(conn.node(), Node::Primary);
    assert!(matches!(skip_reason(&conn), SkipReason::BackingOff { .. }));
    drop(conn);

    pair.cluster.start_standby().unwrap();
    thread::sleep(RETRY_AFTER);
    let mut conn = pair.pool.read(&Freshness::any()).unwrap();
    assert_eq!(conn.node(), Node::Standby(0), "{:?}", conn.skipped());
    assert!(context(&mut conn, task_id).is_some());
}

#[test]
fn a_promoted_standby_is_never_used() {
    let pair = Pair::start();
    pair.cluster.promote_standby().unwrap();
    // A task only the promoted node has: a read that sees it was served there.
    let mut promoted = PgConnection::establish(pair.cluster.standby_url()).unwrap();
    let diverged = create_task(&mut promoted, &task_request(&template()))
        .unwrap()
        .task
        .task_id;

    for freshness in [
        Freshness::any(),
        Freshness::within(Duration::from_secs(3600)),
    ] {
        let mut conn = pair.pool.read(&freshness).unwrap();
        assert_eq!(conn.node(), Node::Primary);
        assert!(matches!(
            skip_reason(&conn),
            SkipReason::NotInRecovery | SkipReason::BackingOff { .. }
        ));
        assert!(context(&mut conn, diverged).is_none());
    }
    // Checked again after the retry delay, and still refused.
    thread::sleep(RETRY_AFTER);
    let conn = pair.pool.read(&Freshness::any()).unwrap();
    assert!(matches!(skip_reason(&conn), SkipReason::NotInRecovery));
}

#[test]
fn claims_and_transitions_go_to_the_primary_and_read_connections_refuse_writes() {
    let pair = Pair::start();
    // One primary connection, so the read below and the writes after it
    // share it.
    let primary_pool = diesel::r2d2::Pool::builder()
        .max_size(1)
        .build(diesel::r2d2::ConnectionManager::new(
            pair.cluster.primary_url(),
        ))
        .unwrap();
    let pool = routed_pool(&pair.cluster, primary_pool);
    // A standby that sees nothing new: anything run there would miss the task.
    pair.cluster.pause_replay().unwrap();
    let (created, _) = pool
        .write(|conn| create_task(conn, &task_request(&template())))
        .unwrap();
    let task_id = created.task.task_id;
    let claim = ClaimRequest::for_tasks(std::slice::from_ref(&task_id), 2, LEASE);

    // Read connections refuse writes, whichever node serves them.
    let mut on_standby = pool.read(&Freshness::any()).unwrap();
    assert_eq!(on_standby.node(), Node::Standby(0));
    let error = claim_ready_steps(&mut on_standby, &claim).unwrap_err();
    assert!(is_read_only_error(&error), "{error:?}");
    drop(on_standby);
    let mut on_primary = pool
        .read(&Freshness::any().at_least(Lsn(u64::MAX)))
        .unwrap();
    assert_eq!(on_primary.node(), Node::Primary);
    let error = claim_ready_steps(&mut on_primary, &claim).unwrap_err();
    assert!(is_read_only_error(&error), "{error:?}");
    drop(on_primary);

    // Writes take the primary, which is current, and its connection is
    // read-write again.
    let mut conn = pool.primary().unwrap();
    assert!(!in_recovery(&mut conn));
    let claimed = claim_ready_steps(&mut conn, &claim).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].name, "first");
    complete_step(&mut conn, claimed[0].claim(), &json!({ "done": true })).unwrap();
    transition_task(
        &mut conn,
        task_id,
        TaskState::Cancelled,
        TransitionOptions::expecting(TaskState::InProgress),
    )
    .unwrap();
    drop(conn);

    // The standby, paused all along, saw none of it.
    let mut on_standby = pool.read(&Freshness::any()).unwrap();
    assert_eq!(on_standby.node(), Node::Standby(0));
    assert!(context(&mut on_standby, task_id).is_none());
    drop(on_standby);
    pair.cluster.resume_replay().unwrap();
    pair.cluster.wait_for_replay().unwrap();
    let mut on_standby = pool.read(&Freshness::any()).unwrap();
    let steps = StepReadinessStatus::for_task(task_id)
        .load(&mut on_standby)
        .unwrap();
    assert_eq!(steps[0].current_state, StepState::Complete);
    let context = context(&mut on_standby, task_id).unwrap();
    assert_eq!(context.status, TaskState::Cancelled);
}

#[test]
fn lsn_text_is_postgresql_pg_lsn_text() {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::PgLsn)]
        lsn: Lsn,
        #[diesel(sql_type = Text)]
        text: String,
    }
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for text in ["0/0", "0/3001150", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
        let row: Row = sql_query("SELECT $1::pg_lsn AS lsn, $1::pg_lsn::text AS text")
            .bind::<Text, _>(text)
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(row.lsn, text.parse().unwrap());
        assert_eq!(row.lsn.to_string(), row.text);
    }
    let before = commit_lsn(&mut conn).unwrap();
    sql_query("CREATE TABLE lsn_probe (id int)")
        .execute(&mut conn)
        .unwrap();
    assert!(commit_lsn(&mut conn).unwrap() > before);
}
