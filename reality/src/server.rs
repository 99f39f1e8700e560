//! A private PostgreSQL server for one check: a temporary data directory;
//! the postmaster a child of this process that dies with the thread that
//! started it; a Unix socket in the directory (no TCP listener);
//! `wal_level=logical`; the C locale (so text compares bytewise, as the
//! engine and the oracle assume: written down in ARCHITECTURE.md, "Reality
//! checks"); `fsync=off` (the checks never crash this server); autovacuum
//! off (an automatic ANALYZE takes an xid, and the model comparison maps
//! xids one to one). It is stopped when the value is dropped.
//!
//! PostgreSQL refuses to run as root; as root (CI), `initdb` and the
//! server run as the `postgres` system user that Debian's package
//! creates, and the data directory is handed to it.

use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why no server could be started: the binaries are missing (a skip outside
/// CI) or they failed (always an error).
#[derive(Debug)]
pub enum ServerError {
    NotInstalled(String),
    Failed(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::NotInstalled(m) => write!(
                f,
                "PostgreSQL is not installed ({m}); install Debian's `postgresql` package \
                 (`apt-get install -y postgresql`) or set PG_BIN to the directory holding initdb"
            ),
            ServerError::Failed(m) => write!(f, "could not start PostgreSQL: {m}"),
        }
    }
}

pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
    /// The postmaster, once started: dropping the value stops it.
    postmaster: Option<Child>,
}

/// How long a new server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The oldest PostgreSQL with `pg_current_snapshot`, `pg_current_xact_id`
/// and `pg_visible_in_snapshot`.
const MIN_VERSION_NUM: i32 = 130_000;

impl PgServer {
    /// Initializes and starts a server; waits until it accepts connections.
    pub fn start() -> Result<PgServer, ServerError> {
        let bin = find_bin()?;
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix("reality-pg.")
            .tempdir_in("/tmp")
            .map_err(|e| ServerError::Failed(format!("temporary directory: {e}")))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root { Some(postgres_user()?) } else { None };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| ServerError::Failed(format!("chown {}: {e}", dir.path().display())))?;
        }
        let mut server = PgServer {
            bin,
            dir,
            user,
            postmaster: None,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        server.launch()?;
        let version: i32 = server
            .connect()
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .map_err(|e| ServerError::Failed(format!("server version: {e}")))?
            .get(0);
        if version < MIN_VERSION_NUM {
            return Err(ServerError::NotInstalled(format!(
                "PostgreSQL {version} in {} is older than 13",
                server.bin.display()
            )));
        }
        Ok(server)
    }

    /// Runs the postmaster as a child that dies with the thread that
    /// started it (`PR_SET_PDEATHSIG`), so a test killed midway leaves no
    /// server behind; waits until it accepts connections.
    fn launch(&mut self) -> Result<(), ServerError> {
        let socket_dir = self.socket_dir();
        let log_path = format!("{socket_dir}/server.log");
        let failed = |what: &str, e: std::io::Error| ServerError::Failed(format!("{what}: {e}"));
        let log = File::create(&log_path).map_err(|e| failed("server log", e))?;
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .args(["-D", &self.data(), "-c", "listen_addresses="])
            .args(["-c", &format!("unix_socket_directories={socket_dir}")])
            .args(["-c", "wal_level=logical", "-c", "fsync=off"])
            .args(["-c", "max_replication_slots=8", "-c", "max_wal_senders=8"])
            .args(["-c", "autovacuum=off"])
            .env("LC_ALL", "C")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| failed("server log", e))?)
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        // SAFETY: the closure calls prctl only, which is async-signal-safe.
        unsafe {
            command.pre_exec(
                || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                },
            );
        }
        let child = command.spawn().map_err(|e| failed("postgres", e))?;
        let config = self.config();
        let postmaster = self.postmaster.insert(child);
        let started = Instant::now();
        loop {
            if postgres::Client::connect(&config, postgres::NoTls).is_ok() {
                return Ok(());
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = postmaster.try_wait().map_err(|e| failed("postgres", e))? {
                return Err(ServerError::Failed(format!(
                    "postgres exited ({status}): {}",
                    log()
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(ServerError::Failed(format!(
                    "postgres did not accept connections within {START_TIMEOUT:?}: {}",
                    log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self) -> String {
        format!("host={} user=postgres dbname=postgres", self.socket_dir())
    }

    /// A new connection to the `postgres` database.
    pub fn connect(&self) -> postgres::Client {
        let config = self.config();
        postgres::Client::connect(&config, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the private server at {config}: {e}"))
    }

    fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn data(&self) -> String {
        format!("{}/data", self.socket_dir())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, ServerError> {
        let mut command = Command::new(self.bin.join(program));
        // PostgreSQL up to 15 changes back to the working directory it was
        // started in: as root that must be one the `postgres` user can read.
        command
            .args(args)
            .env("LC_ALL", "C")
            .current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .map_err(|e| ServerError::Failed(format!("{program}: {e}")))?;
        if !output.status.success() {
            return Err(ServerError::Failed(format!(
                "{program} {}: {}\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(output)
    }
}

impl Drop for PgServer {
    /// Stops the server (SIGQUIT: an immediate shutdown, nothing of it is
    /// kept) and waits for it. A failed stop is reported, never hidden.
    fn drop(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        let pid = postmaster.id() as libc::pid_t;
        // SAFETY: kill has no preconditions; the pid is our unreaped child.
        if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
            eprintln!(
                "reality: stopping the private PostgreSQL server failed: {}",
                std::io::Error::last_os_error()
            );
        }
        if let Err(e) = postmaster.wait() {
            eprintln!("reality: waiting for the private PostgreSQL server failed: {e}");
        }
    }
}

/// Removes the directories of servers whose process was killed before it
/// could clean up (their postmaster died with it): older than ten minutes,
/// no live postmaster. A younger one may be a parallel test's, starting.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_string_lossy()
            .starts_with("reality-pg.");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(600)));
        if !ours || !old {
            continue;
        }
        let pid: Option<libc::pid_t> = std::fs::read_to_string(path.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive && let Err(e) = std::fs::remove_dir_all(&path) {
            eprintln!(
                "reality: could not remove the stale {}: {e}",
                path.display()
            );
        }
    }
}

/// `initdb`'s directory: `PG_BIN`, else the newest Debian
/// `/usr/lib/postgresql/<major>/bin`, else `initdb` on the PATH.
fn find_bin() -> Result<PathBuf, ServerError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        return match dir.join("initdb").is_file() {
            true => Ok(dir),
            false => Err(ServerError::NotInstalled(format!(
                "PG_BIN={} has no initdb",
                dir.display()
            ))),
        };
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    if let Some((_, bin)) = majors.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file());
    on_path.ok_or_else(|| {
        ServerError::NotInstalled("no /usr/lib/postgresql/*/bin/initdb, none on PATH".into())
    })
}

/// The `postgres` system user's uid and gid.
fn postgres_user() -> Result<(u32, u32), ServerError> {
    let id = |flag: &str| -> Result<u32, ServerError> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| ServerError::Failed(format!("id {flag} postgres: {e}")))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                ServerError::NotInstalled(
                    "running as root and there is no `postgres` user to run the server as".into(),
                )
            })
    };
    Ok((id("-u")?, id("-g")?))
}

/// Starts a server for a test, or decides that the test is skipped: a
/// missing PostgreSQL is a failure in CI (`CI=true`), a printed skip
/// elsewhere.
pub fn server_for_test(test: &str) -> Option<PgServer> {
    match PgServer::start() {
        Ok(server) => Some(server),
        Err(ServerError::NotInstalled(m)) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED {test}: {}", ServerError::NotInstalled(m));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}
