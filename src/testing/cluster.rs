//! A throwaway PostgreSQL cluster started from the system's binaries, and the
//! pieces it is made of ([`PgBinaries`], [`SupervisedServer`]), which
//! [`ReplicatedCluster`](super::ReplicatedCluster) reuses for its standby.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection};

/// Runs the server and outlives the process that started it by an instant.
/// It reads commands from its stdin, one a line: `start` starts the server
/// and `stop` stops it (fast shutdown), each answered with a line on stdout
/// once done. When the pipe from the starting process closes (it exited,
/// however it died), the server is stopped and the directory removed. It is
/// spawned before the data directory is made (`initdb`, `pg_basebackup`), so
/// that a process killed meanwhile leaves nothing behind either.
/// Arguments: postgres binary, data directory, port, directory to remove
/// (which holds `postgres.log`).
const SUPERVISOR: &str = r#"
postgres=$1 data=$2 port=$3 base=$4
start() {
    "$postgres" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 -c unix_socket_directories= \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=200 >>"$base/postgres.log" 2>&1 &
    server=$!
}
stop() {
    if [ -n "$server" ]; then
        kill -INT "$server" 2>/dev/null
        wait "$server"
        server=
    fi
}
while read -r command; do
    case "$command" in
        stop) stop; echo stopped ;;
        start) stop; start; echo started ;;
    esac
done
stop
rm -rf "$base"
"#;

/// How long a new cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL cluster of its own: `initdb` into a temporary directory, then
/// `postgres` on a free port of 127.0.0.1, with durability off (test data only).
///
/// The binaries come from `TASKER_PG_BIN_DIR`, else the directory of the
/// `initdb` found on `PATH`, else the newest `/usr/lib/postgresql/*/bin`. Run
/// as root, the server runs as the `postgres` system user (PostgreSQL refuses
/// root). The superuser is `postgres`, with trust authentication (replication
/// connections from 127.0.0.1 included).
///
/// Dropping the value stops the server and deletes its files; so does the
/// exit of the process, even a killed one.
pub struct LocalCluster {
    url: String,
    server: SupervisedServer,
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
        Self::start_with(&PgBinaries::find()?)
    }

    /// [`LocalCluster::start`] with binaries already found.
    pub(super) fn start_with(binaries: &PgBinaries) -> io::Result<Self> {
        let mut server = SupervisedServer::spawn(binaries)?;
        let mut initdb = binaries.command("initdb");
        initdb
            .arg("--pgdata")
            .arg(server.data_dir())
            .args(["--username=postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"])
            .current_dir(server.base_dir());
        run(initdb, "initdb")?;
        server.start()?;
        Ok(LocalCluster {
            url: server.url("postgres"),
            server,
        })
    }

    /// URL of the cluster's `postgres` database, as the `postgres` superuser.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory holding the cluster's data and its server log.
    pub fn base_dir(&self) -> &Path {
        self.server.base_dir()
    }

    /// The running server.
    pub(super) fn server(&self) -> &SupervisedServer {
        &self.server
    }
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("url", &self.url)
            .field("base_dir", &self.base_dir())
            .finish()
    }
}

/// The system's PostgreSQL binaries and the user to run them as.
#[derive(Debug, Clone)]
pub(super) struct PgBinaries {
    dir: PathBuf,
    /// The uid and gid to run the server as: `None` to stay the current
    /// user, the `postgres` system user's when running as root.
    owner: Option<(u32, u32)>,
}

impl PgBinaries {
    /// Finds the binaries and the user to run them as.
    pub(super) fn find() -> io::Result<Self> {
        Ok(PgBinaries {
            dir: find_bin_dir()?,
            owner: server_owner()?,
        })
    }

    /// A command running `program` of the binary directory as the server's user.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.dir.join(program));
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// A new empty directory under the system's temporary directory, owned
    /// by the user the server will run as.
    fn make_base_dir(&self) -> io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("tasker-diesel-pg-{}", super::unique_suffix()));
        fs::create_dir(&dir)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .inspect_err(|_| remove_dir(&dir))?;
        }
        Ok(dir)
    }
}

/// A `postgres` server on a free port of 127.0.0.1, run by a supervisor
/// shell ([`SUPERVISOR`]) that starts and stops it on request and removes
/// its base directory when this value is dropped or the process exits.
pub(super) struct SupervisedServer {
    port: u16,
    base_dir: PathBuf,
    data_dir: PathBuf,
    supervisor: Child,
    /// Commands to the supervisor; closing this pipe tells it to shut down.
    lifeline: Option<ChildStdin>,
    /// The supervisor's answers to commands.
    answers: BufReader<ChildStdout>,
}

impl SupervisedServer {
    /// A new base directory and its supervisor, with no server running yet:
    /// make the data directory ([`SupervisedServer::data_dir`]), then
    /// [`SupervisedServer::start`] the server.
    pub(super) fn spawn(binaries: &PgBinaries) -> io::Result<Self> {
        let base_dir = binaries.make_base_dir()?;
        let data_dir = base_dir.join("data");
        let spawned = free_port().and_then(|port| {
            let mut supervisor = Command::new("/bin/sh");
            supervisor
                .args(["-c", SUPERVISOR, "tasker-diesel-postgres"])
                .arg(binaries.dir.join("postgres"))
                .arg(&data_dir)
                .arg(port.to_string())
                .arg(&base_dir)
                .current_dir(&base_dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                // Out of the terminal's process group: Ctrl-C on the tests must
                // not kill the supervisor before it has cleaned up.
                .process_group(0);
            if let Some((uid, gid)) = binaries.owner {
                supervisor.uid(uid).gid(gid);
            }
            Ok((port, supervisor.spawn()?))
        });
        let (port, mut child) = spawned.inspect_err(|_| remove_dir(&base_dir))?;
        let answers = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(SupervisedServer {
            port,
            base_dir,
            data_dir,
            lifeline: child.stdin.take(),
            supervisor: child,
            answers,
        })
    }

    /// The server's port on 127.0.0.1.
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// URL of `database` on this server, as the `postgres` superuser.
    pub(super) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory holding the data directory and `postgres.log`.
    pub(super) fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The server's data directory (`data` in the base directory).
    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server (fast shutdown) and returns once it has exited.
    pub(super) fn stop(&mut self) -> io::Result<()> {
        self.command("stop")
    }

    /// Starts the server (stopping it first if it runs) and waits until it
    /// accepts connections.
    pub(super) fn start(&mut self) -> io::Result<()> {
        let log_offset = self.log_len();
        self.command("start")?;
        self.wait_until_ready(log_offset)
    }

    fn command(&mut self, command: &str) -> io::Result<()> {
        let lifeline = self
            .lifeline
            .as_mut()
            .ok_or_else(|| io::Error::other("the supervisor is gone"))?;
        writeln!(lifeline, "{command}")?;
        lifeline.flush()?;
        let mut answer = String::new();
        if self.answers.read_line(&mut answer)? == 0 {
            return Err(io::Error::other(format!(
                "the supervisor exited instead of answering `{command}`"
            )));
        }
        Ok(())
    }

    /// Waits until the server accepts connections, reading the log written
    /// after `log_offset` to notice a server that stopped instead.
    fn wait_until_ready(&self, log_offset: u64) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let probe = format!("{}?connect_timeout=2", self.url("postgres"));
        loop {
            match PgConnection::establish(&probe) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline || self.stopped_since(log_offset) => {
                    return Err(io::Error::other(format!(
                        "PostgreSQL stopped or did not accept connections within \
                         {START_TIMEOUT:?} ({error}); server log:\n{}",
                        self.log_since(log_offset)
                    )));
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether the server has exited (for example its port was taken).
    fn stopped_since(&self, log_offset: u64) -> bool {
        self.log_since(log_offset)
            .contains("database system is shut down")
    }

    fn log_path(&self) -> PathBuf {
        self.base_dir.join("postgres.log")
    }

    fn log_len(&self) -> u64 {
        fs::metadata(self.log_path()).map_or(0, |metadata| metadata.len())
    }

    /// The server log from `offset` on.
    pub(super) fn log_since(&self, offset: u64) -> String {
        let mut log = String::new();
        let _ = fs::File::open(self.log_path()).and_then(|mut file| {
            file.seek(SeekFrom::Start(offset))?;
            file.read_to_string(&mut log)
        });
        log
    }
}

impl Drop for SupervisedServer {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.supervisor.wait();
    }
}

/// Runs `command` to completion; its output is the error when it fails.
pub(super) fn run(mut command: Command, what: &str) -> io::Result<()> {
    let output = command.output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
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

fn remove_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}

/// A TCP port of 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before. The kernel may hand a released port out again
/// at once, so two clusters starting side by side could otherwise be given
/// the same one: the second server then fails to bind, and its readiness
/// probe reaches the first (once a standby, which refused `CREATE DATABASE`).
fn free_port() -> io::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
}
