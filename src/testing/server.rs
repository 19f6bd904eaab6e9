//! Chooses, once per process, the server that test databases are made on.

use std::sync::OnceLock;

use diesel::{Connection, PgConnection};

use super::cluster::LocalCluster;

/// The local server tried when `DATABASE_URL` is unset.
const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?connect_timeout=5";

enum Server {
    External(String),
    Throwaway(LocalCluster),
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The URL of the maintenance database on the server that test databases are
/// created on: `DATABASE_URL`, else the local server, else a throwaway cluster
/// started on first use.
///
/// # Panics
///
/// When no server is configured, none answers locally and no cluster can be
/// started; the message says why.
pub fn server_url() -> &'static str {
    let server = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Server::External(url);
        }
        if PgConnection::establish(LOCAL_SERVER_URL).is_ok() {
            return Server::External(LOCAL_SERVER_URL.to_owned());
        }
        match LocalCluster::start() {
            Ok(cluster) => Server::Throwaway(cluster),
            Err(error) => panic!(
                "no PostgreSQL for the tests: DATABASE_URL is unset, nothing answers at \
                 127.0.0.1:5432, and a throwaway cluster could not be started: {error}"
            ),
        }
    });
    match server {
        Server::External(url) => url,
        Server::Throwaway(cluster) => cluster.url(),
    }
}
