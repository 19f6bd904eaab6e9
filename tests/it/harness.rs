//! The test harness itself: isolation, cleanup and the throwaway cluster.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use tasker_diesel::migrations::schema_version;
use tasker_diesel::testing::{server_url, LocalCluster, TestDatabase};

use crate::support;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::establish(server_url()).expect("admin connection");
    diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .get_result::<Count>(&mut admin)
        .expect("query pg_database")
        .count
        == 1
}

#[test]
fn each_test_database_is_migrated_and_isolated() {
    let first = TestDatabase::new();
    let second = TestDatabase::new();
    assert_ne!(first.name(), second.name());

    let mut first_conn = first.connection();
    let mut second_conn = second.connection();
    assert!(schema_version(&mut first_conn).unwrap().is_some());
    support::task_with_steps(&mut first_conn, 2);

    use tasker_diesel::schema::tasker_tasks::dsl::*;
    let in_first: i64 = tasker_tasks.count().get_result(&mut first_conn).unwrap();
    let in_second: i64 = tasker_tasks.count().get_result(&mut second_conn).unwrap();
    assert_eq!((in_first, in_second), (1, 0));
}

#[test]
fn dropping_a_test_database_removes_it_even_with_open_connections() {
    let db = TestDatabase::new();
    let name = db.name().to_owned();
    let _still_open = db.connection();
    let pool = db.pool();
    let _pooled = pool.get().expect("pooled connection");
    assert!(database_exists(&name));
    drop(db);
    assert!(!database_exists(&name));
}

#[test]
fn a_throwaway_cluster_starts_serves_and_cleans_up() {
    let cluster = LocalCluster::start().expect("start a throwaway cluster");
    let base_dir = cluster.base_dir().to_path_buf();
    let mut conn = PgConnection::establish(cluster.url()).expect("connect to the cluster");

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        fsync: String,
    }
    let setting: Setting = diesel::sql_query("SHOW fsync")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(setting.fsync, "off");

    drop(conn);
    drop(cluster);
    assert!(!base_dir.exists(), "{} was not removed", base_dir.display());
}
