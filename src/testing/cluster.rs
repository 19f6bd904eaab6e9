//! A throwaway PostgreSQL cluster started from the system's binaries.

use std::fs;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection};

/// Runs the server and outlives the process that started it by an instant:
/// `read` returns once the pipe from that process closes (it exited, however
/// it died), then the server is stopped (fast shutdown) and its files removed.
/// Arguments: postgres binary, data directory, port, directory to remove.
const SUPERVISOR: &str = r#"
"$1" -D "$2" -p "$3" -c listen_addresses=127.0.0.1 -c unix_socket_directories= \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=200 >"$4/postgres.log" 2>&1 &
server=$!
read -r _ || true
kill -INT "$server" 2>/dev/null
wait "$server"
rm -rf "$4"
"#;

/// How long a new cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL cluster of its own: `initdb` into a temporary directory, then
/// `postgres` on a free port of 127.0.0.1, with durability off (test data only).
///
/// The binaries come from `TASKER_PG_BIN_DIR`, else the directory of the
/// `initdb` found on `PATH`, else the newest `/usr/lib/postgresql/*/bin`. Run
/// as root, the server runs as the `postgres` system user (PostgreSQL refuses
/// root). The superuser is `postgres`, with trust authentication.
///
/// Dropping the value stops the server and deletes its files; so does the
/// exit of the process, even a killed one.
pub struct LocalCluster {
    url: String,
    base_dir: PathBuf,
    supervisor: Child,
    /// Closing this pipe tells the supervisor to shut down.
    lifeline: Option<ChildStdin>,
}

impl LocalCluster {
    /// The database to run against: `DATABASE_URL` when it is set, else a
    /// new throwaway cluster, returned too so the caller keeps it alive (the
    /// examples use this).
    pub fn from_env_or_start() -> io::Result<(String, Option<LocalCluster>)> {
        match std::env::var("DATABASE_URL") {
            Ok(url) => Ok((url, None)),
            Err(_) => {
                println!("DATABASE_URL is unset: starting a throwaway PostgreSQL cluster");
                let cluster = LocalCluster::start()?;
                Ok((cluster.url().to_owned(), Some(cluster)))
            }
        }
    }

    /// Creates and starts a cluster, and waits until it accepts connections.
    pub fn start() -> io::Result<Self> {
        let bin_dir = find_bin_dir()?;
        let owner = server_owner()?;
        let base_dir = make_base_dir(owner)?;
        let data_dir = base_dir.join("data");

        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data_dir)
            .args(["--username=postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"])
            .current_dir(&base_dir);
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let output = initdb.output().inspect_err(|_| remove_dir(&base_dir))?;
        if !output.status.success() {
            remove_dir(&base_dir);
            return Err(io::Error::other(format!(
                "initdb failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }

        let port = free_port().inspect_err(|_| remove_dir(&base_dir))?;
        let mut supervisor = Command::new("/bin/sh");
        supervisor
            .args(["-c", SUPERVISOR, "tasker-diesel-postgres"])
            .arg(bin_dir.join("postgres"))
            .arg(&data_dir)
            .arg(port.to_string())
            .arg(&base_dir)
            .current_dir(&base_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C on the tests must
            // not kill the supervisor before it has cleaned up.
            .process_group(0);
        if let Some((uid, gid)) = owner {
            supervisor.uid(uid).gid(gid);
        }
        let mut child = supervisor.spawn().inspect_err(|_| remove_dir(&base_dir))?;
        let cluster = LocalCluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            base_dir,
            lifeline: child.stdin.take(),
            supervisor: child,
        };
        cluster.wait_until_ready()?;
        Ok(cluster)
    }

    /// URL of the cluster's `postgres` database, as the `postgres` superuser.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory holding the cluster's data and its server log.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    fn wait_until_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let probe = format!("{}?connect_timeout=2", self.url);
        loop {
            match PgConnection::establish(&probe) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline || self.server_stopped() => {
                    return Err(io::Error::other(format!(
                        "PostgreSQL stopped or did not accept connections within \
                         {START_TIMEOUT:?} ({error}); server log:\n{}",
                        self.server_log()
                    )));
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether the server has exited (for example its port was taken).
    fn server_stopped(&self) -> bool {
        self.server_log().contains("database system is shut down")
    }

    fn server_log(&self) -> String {
        let mut log = String::new();
        let _ = fs::File::open(self.base_dir.join("postgres.log"))
            .and_then(|mut file| file.read_to_string(&mut log));
        log
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.supervisor.wait();
    }
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("url", &self.url)
            .field("base_dir", &self.base_dir)
            .finish()
    }
}

/// The directory holding `initdb` and `postgres`.
fn find_bin_dir() -> io::Result<PathBuf> {
    let has_binaries = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("TASKER_PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        if has_binaries(&dir) {
            return Ok(dir);
        }
        return Err(io::Error::other(format!(
            "TASKER_PG_BIN_DIR={} holds no initdb and postgres",
            dir.display()
        )));
    }
    // `initdb` on PATH is often a symlink into the real binary directory.
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|dir| fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| has_binaries(dir));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let newest_packaged = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_binaries(dir))
        .max_by_key(|(major, _)| *major);
    newest_packaged.map(|(_, dir)| dir).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no PostgreSQL server binaries (initdb, postgres) on PATH or under \
             /usr/lib/postgresql/*/bin; install the PostgreSQL server or set TASKER_PG_BIN_DIR",
        )
    })
}

/// The uid and gid to run the server as: `None` to stay the current user,
/// the `postgres` system user's when running as root.
fn server_owner() -> io::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer length is its own.
    let status = unsafe {
        libc::getpwnam_r(
            c"postgres".as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return Err(io::Error::other(
            "running as root, a throwaway PostgreSQL cluster needs a `postgres` system user \
             to run the server as, and there is none",
        ));
    }
    Ok(Some((entry.pw_uid, entry.pw_gid)))
}

/// A new empty directory under the system's temporary directory, owned by the
/// user the server will run as.
fn make_base_dir(owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tasker-diesel-pg-{}", super::unique_suffix()));
    fs::create_dir(&dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).inspect_err(|_| remove_dir(&dir))?;
    }
    Ok(dir)
}

fn remove_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
