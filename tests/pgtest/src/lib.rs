//! A throwaway PostgreSQL for tests: one server per test process, started on first use on
//! 127.0.0.1 with a free port and a private socket folder, and a fresh database per call of
//! [`fresh_database`] (`CREATE DATABASE`, ~70 ms). The server runs with `fsync=off` (a test
//! server; `synchronous_commit` stays on, which the backends require).
//!
//! Why a watcher process: the server is a child the test process never reaps (the handle lives
//! in a static), so a small `sh` loop started beside it stops the server and removes its folder
//! once the test process is gone, whatever way it ended (a panic, a kill, the harness's exit).
//!
//! `initdb` refuses to run as root: as root the server runs as the `postgres` user through
//! `setpriv` (which execs, so the child's pid is the postmaster's). The binaries are found in
//! `STRONGROOM_PG_BIN`, else on `PATH`, else in the newest `/usr/lib/postgresql/*/bin`.
//!
//! Missing PostgreSQL follows the tests' tool policy: [`require`] prints a visible `SKIPPED`
//! line and answers `None`, or fails under `STRONGROOM_REQUIRE_TOOLS=1` (which `.ci/run` sets).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running server: this test process's shared one ([`require`]), or a private one
/// ([`private`]) that a test may kill and restart.
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    socket_dir: PathBuf,
    data: PathBuf,
    root: bool,
    /// Kept for the life of the process (the watcher stops it when the process is gone).
    child: Mutex<Child>,
}

impl PgServer {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser (trust authentication on loopback).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL statement as the superuser through `psql` (database `postgres`); its
    /// unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        psql(&self.bin, &self.socket_dir, self.port, sql)
    }

    /// [`PgServer::psql`] in database `db` (the last path segment of a [`fresh_database`] URL).
    pub fn psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_db(&self.bin, &self.socket_dir, self.port, db, sql)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok().map(|c| c.id())
    }

    /// `kill -9` of the postmaster: the database goes away at once, as in a crash.
    pub fn kill(&self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same folder and port after [`PgServer::kill`] (crash
    /// recovery replays the WAL); waits until it answers.
    pub fn restart(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The killed postmaster's backends notice its death and exit within moments; until
            // then the new one refuses to start on their shared memory.
            let mut child = spawn_postgres(
                &self.bin,
                self.root,
                &self.data,
                &self.socket_dir,
                self.port,
            )?;
            match wait_ready(
                &self.bin,
                &self.socket_dir,
                self.port,
                &mut child,
                Duration::from_secs(10),
            ) {
                Ok(()) => {
                    if let Ok(mut c) = self.child.lock() {
                        *c = child;
                    }
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for PgServer {
    /// A private server ends with its test (the shared one lives in a static: never dropped).
    fn drop(&mut self) {
        self.kill();
    }
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// Whether `STRONGROOM_REQUIRE_TOOLS` makes a missing tool a failure (the tests' policy).
fn tools_required() -> bool {
    std::env::var_os("STRONGROOM_REQUIRE_TOOLS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// This process's server, started on first use; `None` (after a visible `SKIPPED` line) when
/// PostgreSQL is not installed, a panic when it is required or installed but does not start.
pub fn require() -> Option<&'static PgServer> {
    let server = SERVER.get_or_init(|| match find_bin() {
        None => Err(String::new()),
        Some(bin) => start(&bin, None),
    });
    match server {
        Ok(s) => Some(s),
        Err(e) if e.is_empty() => {
            assert!(
                !tools_required(),
                "PostgreSQL (initdb, postgres) is required (STRONGROOM_REQUIRE_TOOLS is set; \
                 .ci/run installs it)"
            );
            use std::io::Write as _;
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: PostgreSQL is not installed here, so it checks nothing \
                 (.ci/run installs it; STRONGROOM_REQUIRE_TOOLS=1 makes this a failure)"
            );
            None
        }
        Err(e) => panic!("the test PostgreSQL did not start: {e}"),
    }
}

/// A server of the caller's own (not shared with other tests of the process), for tests that
/// kill and restart the database. `None` as [`require`].
pub fn private() -> Option<PgServer> {
    require()?;
    let bin = find_bin()?;
    Some(
        start(&bin, None)
            .unwrap_or_else(|e| panic!("a private test PostgreSQL did not start: {e}")),
    )
}

/// A private server that also speaks TLS (`ssl = on`) with this certificate chain and key
/// (PEM); plain-text connections stay allowed, so a test can tell what the client insisted on.
pub fn private_tls(cert_pem: &str, key_pem: &str) -> Option<PgServer> {
    require()?;
    let bin = find_bin()?;
    Some(
        start(&bin, Some((cert_pem, key_pem)))
            .unwrap_or_else(|e| panic!("a private TLS test PostgreSQL did not start: {e}")),
    )
}

/// A new, empty database on this process's server; its URL. `None` as [`require`].
pub fn fresh_database() -> Option<String> {
    let server = require()?;
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = server.psql(&format!("CREATE DATABASE {name}")) {
        panic!("{e}");
    }
    Some(server.url(&name))
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STRONGROOM_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    // On PATH the binaries may be links into the version's folder (which also holds psql).
    if let Some(path) = std::env::var_os("PATH")
        && let Some(d) = std::env::split_paths(&path).find(|d| has(d))
    {
        return std::fs::canonicalize(d.join("initdb"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .or(Some(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    // The real uid, from /proc (no libc call: the workspace forbids unsafe code).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `cmd` as the `postgres` user when we are root (initdb and postgres refuse root).
fn as_pg_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start(bin: &Path, tls: Option<(&str, &str)>) -> Result<PgServer, String> {
    let root = is_root();
    // Not a TempDir: the watcher removes it after this process is gone.
    let dir = tempfile::Builder::new()
        .prefix("strongroom-pg-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?
        .keep();
    let data = dir.join("data");
    std::fs::create_dir(&data).map_err(|e| format!("mkdir: {e}"))?;
    if root {
        for p in [&dir, &data] {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(p)
                .status()
                .map_err(|e| format!("chown: {e}"))?
                .success();
            if !ok {
                return Err(format!("chown postgres {} failed", p.display()));
            }
        }
    }
    let out = as_pg_user(&bin.join("initdb"), root)
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .args(["--locale=C"])
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if let Some((cert, key)) = tls {
        // The server reads them as its own user and wants the key private.
        for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
            let path = data.join(name);
            std::fs::write(&path, pem).map_err(|e| format!("{name}: {e}"))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{name}: {e}"))?;
            if root {
                let ok = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&path)
                    .status()
                    .map_err(|e| format!("chown: {e}"))?
                    .success();
                if !ok {
                    return Err(format!("chown postgres {} failed", path.display()));
                }
            }
        }
    }
    watch(&dir);
    // A port can be taken between the probe and the bind: try a few.
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        let mut child = spawn_postgres(bin, root, &data, &dir, port)?;
        match wait_ready(bin, &dir, port, &mut child, Duration::from_secs(30)) {
            Ok(()) => {
                return Ok(PgServer {
                    port,
                    bin: bin.to_owned(),
                    socket_dir: dir.clone(),
                    data,
                    root,
                    child: Mutex::new(child),
                });
            }
            Err(e) => last = e,
        }
    }
    Err(format!("postgres did not start: {last}"))
}

fn spawn_postgres(
    bin: &Path,
    root: bool,
    data: &Path,
    dir: &Path,
    port: u16,
) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    // `ssl = on` when the folder holds a certificate (`private_tls`).
    let ssl = if data.join("server.crt").exists() {
        "ssl=on"
    } else {
        "ssl=off"
    };
    as_pg_user(&bin.join("postgres"), root)
        .args(["-c", ssl])
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("postgres: {e}"))
}

/// Waits until the server answers a query; on failure (it exited, or `timeout`) kills it and
/// returns its log.
fn wait_ready(
    bin: &Path,
    dir: &Path,
    port: u16,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match psql(bin, dir, port, "SELECT 1") {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{err}\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn psql(bin: &Path, socket_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
    psql_db(bin, socket_dir, port, "postgres", sql)
}

fn psql_db(
    bin: &Path,
    socket_dir: &Path,
    port: u16,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts the watcher: once this process is gone, stop the server (fast shutdown; its pid is
/// read then from `postmaster.pid`, so a restarted server is stopped too) and remove its folder.
fn watch(dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
         pid=$(head -n 1 '{dir}/data/postmaster.pid' 2>/dev/null); \
         if [ -n \"$pid\" ]; then kill -INT \"$pid\" 2>/dev/null; \
         for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.5; done; \
         kill -KILL \"$pid\" 2>/dev/null; fi; rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_fresh_database_is_empty_and_separate() {
        let Some(a) = fresh_database() else { return };
        let b = fresh_database().unwrap();
        assert_ne!(a, b);
        let s = require().unwrap();
        let n: u32 = s
            .psql("SELECT count(*) FROM pg_database WHERE datname LIKE 't%'")
            .unwrap()
            .parse()
            .unwrap();
        assert!(n >= 2);
        assert_eq!(s.psql("SHOW synchronous_commit").unwrap(), "on");
    }

    #[test]
    fn a_private_server_killed_and_restarted_keeps_its_committed_rows() {
        let Some(s) = private() else { return };
        s.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (7)")
            .unwrap();
        let before = s.pid();
        s.kill();
        assert!(s.psql("SELECT 1").is_err(), "the server is gone");
        s.restart().unwrap();
        assert_ne!(s.pid(), before);
        assert_eq!(s.psql("SELECT n FROM t").unwrap(), "7");
    }
}
