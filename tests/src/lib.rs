//! Test harness shared by the end-to-end tests in `tests/tests/`: locate the workspace's real
//! binaries, run them as child processes on 127.0.0.1 with OS-chosen ports, wait for their
//! readiness lines, and keep everything they print so tests can scan logs for secrets; or
//! (`inproc`) run accounts-api's router in the test process for tests that need no process.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub mod accounts;
pub mod inproc;
pub mod lifecycle;
pub mod localstripe;
pub mod pages;
pub mod receiver;
pub mod recipe;
pub mod renewals;
pub mod sandbox;
pub mod tool;
pub mod vault;

pub use tool::{require_any_tool, require_tool};

/// Path of a binary built from this workspace (`target/<profile>/<name>`). `cargo test
/// --workspace` builds every binary before running tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A fresh private temporary folder, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"))
}

#[derive(Default)]
struct Output {
    text: String,
    closed_streams: u8,
}

/// A running child process whose stdout and stderr are captured (and echoed to the test's
/// stderr when `STRONGROOM_TEST_ECHO` is set). Killed on drop.
pub struct Service {
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    name: String,
}

impl Service {
    /// Starts `cmd` with piped stdout/stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Service {
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let echo = std::env::var_os("STRONGROOM_TEST_ECHO").is_some();
        let readers: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap_or_else(|| unreachable!())),
            Box::new(child.stderr.take().unwrap_or_else(|| unreachable!())),
        ];
        for r in readers {
            let out = Arc::clone(&output);
            let tag = name.to_owned();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(r);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if echo {
                                eprint!("[{tag}] {line}");
                            }
                            let (lock, cv) = &*out;
                            if let Ok(mut o) = lock.lock() {
                                o.text.push_str(&line);
                            }
                            cv.notify_all();
                        }
                    }
                }
                let (lock, cv) = &*out;
                if let Ok(mut o) = lock.lock() {
                    o.closed_streams += 1;
                }
                cv.notify_all();
            });
        }
        Service {
            child,
            output,
            name: name.to_owned(),
        }
    }

    /// Waits until a line starting with `prefix` appears; returns the rest of that line.
    /// Panics with everything the process printed if it exits or the timeout passes first.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        self.try_wait_for_line(prefix, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Service::wait_for_line`], but returns the failure (with the output) as an error.
    pub fn try_wait_for_line(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.output;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = guard.text.lines().find(|l| l.starts_with(prefix)) {
                return Ok(line[prefix.len()..].trim().to_owned());
            }
            let now = Instant::now();
            if guard.closed_streams >= 2 || now >= deadline {
                return Err(format!(
                    "{}: no line starting {prefix:?} ({}); output so far:\n{}",
                    self.name,
                    if guard.closed_streams >= 2 {
                        "process exited"
                    } else {
                        "timed out"
                    },
                    guard.text
                ));
            }
            guard = cv
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything the process has printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output
            .0
            .lock()
            .map(|o| o.text.clone())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most `timeout`) until both output streams reached end of file.
    fn drain_output(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.output;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while guard.closed_streams < 2 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            guard = cv
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the process to exit by itself; returns its exit status.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader threads may still hold the last lines (seen under load: a refusal
                // message missing from `output()`); give them a moment to reach end of stream.
                self.drain_output(Duration::from_secs(2));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The process runs in its own process group (see `spawn`), which its children (the
        // vault and sandbox that `accounts-api dev` starts) inherit: kill the whole group so a
        // test that SIGKILLed only the parent leaves no orphan behind.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

/// Runs a command to completion and returns (exit success, stdout, stderr).
pub fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `dir`, recursively, with its bytes (for secret scans of data folders).
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

/// True if `needle` occurs anywhere in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
