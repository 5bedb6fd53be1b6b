//! The README's production install recipe as data, for `tests/tests/deploy_recipe.rs` and
//! `tests/tests/deploy_units.rs`.
//!
//! Markers in README.md (an HTML comment on the line before a fenced block):
//! - `<!-- recipe: /abs/path -->`: a file the operator writes with exactly that content;
//! - `<!-- recipe-run: NAME -->`: commands the operator runs as root, in README order.
//!
//! [`Root`] rewrites the recipe's absolute prefixes (`/etc/strongroom`, `/var/lib/strongroom-…`,
//! `/var/backups/strongroom`, `/media/strongroom-keys`) into a temporary folder and runs the
//! command blocks with bash, with small shims for what a test cannot do (`useradd`, `chown`,
//! ownership flags of `install`, `runuser`) and a `systemctl` that asks the test to start or
//! stop the shipped units' `ExecStart=` (with their `Environment=` and `EnvironmentFile=`).

use crate::{Service, bin_path};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The workspace root (where README.md is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of the workspace as text.
pub fn workspace_file(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What a marked block is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// A file at this absolute path.
    File(String),
    /// Commands, run as root.
    Run(String),
}

/// One marked fenced block of the README.
#[derive(Debug, Clone)]
pub struct Block {
    pub kind: BlockKind,
    pub text: String,
}

/// The README section that holds the recipe.
pub const SECTION: &str = "### Production install (both services)";

/// Every marked block of the recipe section, in README order. Panics if the section or a
/// marker's block is missing.
pub fn blocks() -> Vec<Block> {
    let readme = workspace_file("README.md");
    let start = readme
        .find(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let rest = &readme[start + 1 + SECTION.len()..];
    // The section ends at the next heading of the same or a higher level outside code blocks
    // (a `# comment` inside a shell block is not a heading).
    let mut lines: Vec<&str> = Vec::new();
    let mut in_fence = false;
    for line in rest.lines().skip(1) {
        if line.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence
            && (line.starts_with("# ") || line.starts_with("## ") || line.starts_with("### "))
        {
            break;
        }
        lines.push(line);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let kind = if let Some(p) = marker(line, "recipe:") {
            Some(BlockKind::File(p))
        } else {
            marker(line, "recipe-run:").map(BlockKind::Run)
        };
        let Some(kind) = kind else {
            i += 1;
            continue;
        };
        let fence = lines.get(i + 1).copied().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "README marker {line:?} must be followed by a fenced block, found {fence:?}"
        );
        let mut body = String::new();
        let mut j = i + 2;
        while j < lines.len() && !lines[j].starts_with("```") {
            body.push_str(lines[j]);
            body.push('\n');
            j += 1;
        }
        assert!(j < lines.len(), "unterminated block after {line:?}");
        out.push(Block { kind, text: body });
        i = j + 1;
    }
    out
}

fn marker(line: &str, tag: &str) -> Option<String> {
    let inner = line.strip_prefix("<!--")?.strip_suffix("-->")?.trim();
    Some(inner.strip_prefix(tag)?.trim().to_owned())
}

/// The block that writes `path`.
pub fn file_block(path: &str) -> String {
    blocks()
        .into_iter()
        .find(|b| b.kind == BlockKind::File(path.to_owned()))
        .map(|b| b.text)
        .unwrap_or_else(|| panic!("README recipe has no file block for {path}"))
}

/// `key = "value"` of a simple TOML file (top level or under `[table]`), the value unquoted.
/// Enough for the recipe's own files; no dependency on a TOML parser.
pub fn toml_string(text: &str, table: Option<&str>, key: &str) -> Option<String> {
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or_default().trim();
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(t.trim().to_owned());
            continue;
        }
        if current.as_deref() != table {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// The values of `Key=` lines in a systemd unit (in order, repeated keys kept).
pub fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_owned())
        .collect()
}

/// `KEY=VALUE` lines of an environment file as systemd reads them (comments and blank lines
/// skipped, one level of surrounding quotes removed).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// The shipped units: (unit name, repository path, binary, readiness line prefix).
pub const UNITS: [(&str, &str, &str, &str); 2] = [
    (
        "strongroom-vault",
        "vault/deploy/strongroom-vault.service",
        "vault",
        "VAULT_LISTENING ",
    ),
    (
        "strongroom-accounts-api",
        "accounts-api/deploy/strongroom-accounts-api.service",
        "accounts-api",
        "ACCOUNTS_API_LISTENING ",
    ),
];

/// Absolute prefixes of the recipe that a test moves into its temporary root.
pub const PREFIXES: [&str; 4] = [
    "/etc/strongroom",
    "/var/lib/strongroom-",
    "/var/backups/strongroom",
    "/media/strongroom-keys",
];

/// A temporary root the recipe runs in, with its shims and a `systemctl` served by the test.
pub struct Root {
    pub dir: tempfile::TempDir,
    /// Extra literal replacements applied after the prefix rewrite (ports, URLs, secrets).
    pub replacements: Vec<(String, String)>,
    control: Arc<Control>,
}

#[derive(Default)]
struct Control {
    /// Running units by name.
    running: Mutex<BTreeMap<String, Service>>,
    /// Output of every unit process that has ended (for failure messages).
    past: Mutex<Vec<String>>,
    /// Replacements for unit files, set by [`Root`].
    rewrite: Mutex<Vec<(String, String)>>,
}

impl Root {
    pub fn new() -> Root {
        let dir = crate::temp_dir("strongroom-recipe-");
        let control = Arc::new(Control::default());
        let root = Root {
            dir,
            replacements: Vec::new(),
            control,
        };
        for sub in ["work", "shims", "media/strongroom-keys"] {
            std::fs::create_dir_all(root.dir.path().join(sub))
                .unwrap_or_else(|e| panic!("{sub}: {e}"));
        }
        root.write_shims();
        root
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where an absolute recipe path lives under this root.
    pub fn at(&self, recipe_path: &str) -> PathBuf {
        PathBuf::from(self.rewrite(recipe_path))
    }

    /// Rewrites the recipe's prefixes into the root, then applies [`Root::replacements`].
    pub fn rewrite(&self, text: &str) -> String {
        let root = self.path().display().to_string();
        let mut out = text.to_owned();
        for p in PREFIXES {
            out = out.replace(p, &format!("{root}{p}"));
        }
        for (from, to) in &self.replacements {
            out = out.replace(from.as_str(), to);
        }
        out
    }

    /// Writes every `recipe:` file block under the root (the folders must exist: the recipe's
    /// `folders` step makes them). Every replacement must have matched some file or block.
    pub fn write_files(&self) {
        for b in blocks() {
            if let BlockKind::File(p) = &b.kind {
                let dest = self.at(p);
                std::fs::write(&dest, self.rewrite(&b.text))
                    .unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
            }
        }
    }

    /// Runs the `recipe-run: NAME` block with bash (`set -euo pipefail`), as the operator would
    /// paste it; returns its stdout. Panics with the output and the services' logs on failure.
    pub fn run(&self, name: &str) -> String {
        self.try_run(name, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Root::run`], with `edits` applied to the block's README text first (each must
    /// match: an operator's documented choice, such as another backup), and the failure as an
    /// error (script, stdout, stderr, services' logs).
    pub fn try_run(&self, name: &str, edits: &[(&str, &str)]) -> Result<String, String> {
        let block = blocks()
            .into_iter()
            .find(|b| b.kind == BlockKind::Run(name.to_owned()))
            .unwrap_or_else(|| panic!("README recipe has no run block {name:?}"));
        let mut text = block.text;
        for (from, to) in edits {
            assert!(text.contains(from), "step {name:?} has no {from:?}");
            text = text.replace(from, to);
        }
        let script = self.rewrite(&text);
        let work = self.path().join("work");
        let file = work.join(format!("{name}.sh"));
        // A root shell's usual umask, whatever the test runner's is (folders that `install -d`
        // creates as parents, such as /etc/strongroom, must be searchable by the service users).
        std::fs::write(&file, format!("umask 0022\n{script}")).unwrap_or_else(|e| panic!("{e}"));
        let shims = self.path().join("shims");
        let out = Command::new("timeout")
            .arg("90")
            .arg("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg(&file)
            .current_dir(&work)
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                    shims.display()
                ),
            )
            .env("HOME", &work)
            .env("LANG", "C")
            .env("RECIPE_OWNERS", self.path().join("owners.log"))
            .output()
            .unwrap_or_else(|e| panic!("bash {name}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(format!(
            "recipe step {name:?} failed ({}):\n--- script\n{script}--- stdout\n{stdout}--- stderr\n{stderr}--- services\n{}",
            out.status,
            self.logs()
        ))
    }

    /// `systemctl ARGS` as the recipe's shim does it (for steps the README gives in prose).
    pub fn systemctl(&self, args: &str) -> Result<(), String> {
        self.control.handle(args)
    }

    /// Owner and group of each path as the recipe set them (`install -o/-g`, `chown`); a path
    /// the recipe never gave away is root's (the operator runs the recipe as root).
    pub fn owner_of(&self, path: &Path) -> (String, String) {
        let log = std::fs::read_to_string(self.path().join("owners.log")).unwrap_or_default();
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut found = ("root".to_owned(), "root".to_owned());
        for line in log.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(o), Some(g), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if Path::new(p) == path {
                let g = if g == "=" {
                    found.1.clone()
                } else {
                    g.to_owned()
                };
                found = (o.to_owned(), g);
            }
        }
        found
    }

    /// Whether system user `user` (whose only group is its own) may `access` (`'r'`, `'w'`)
    /// the recipe path, by the ownership the recipe set and the real modes: every folder from
    /// `/etc` or `/var` down must be searchable, then the bit on the path itself.
    pub fn may(&self, user: &str, access: char, recipe_path: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        let bit = |path: &Path, want: char| -> bool {
            let Ok(meta) = std::fs::metadata(path) else {
                return false;
            };
            let mode = meta.permissions().mode();
            let (owner, group) = self.owner_of(path);
            let shift = if user == owner {
                6
            } else if user == group {
                3
            } else {
                0
            };
            let mask = match want {
                'r' => 4,
                'w' => 2,
                _ => 1,
            };
            (mode >> shift) & mask != 0
        };
        let target = self.at(recipe_path);
        let top = self.path().to_owned();
        let mut dirs = Vec::new();
        let mut cur = target.parent();
        while let Some(d) = cur {
            if d == top {
                break;
            }
            dirs.push(d.to_owned());
            cur = d.parent();
        }
        dirs.iter().all(|d| bit(d, 'x')) && bit(&target, access)
    }

    /// Everything the unit processes printed (running and ended ones).
    pub fn logs(&self) -> String {
        let mut s = self
            .control
            .past
            .lock()
            .map(|p| p.join("\n"))
            .unwrap_or_default();
        if let Ok(r) = self.control.running.lock() {
            for (name, svc) in r.iter() {
                s.push_str(&format!("\n[{name} (running)]\n{}", svc.output()));
            }
        }
        s
    }

    /// The readiness line's rest of a running unit (its listening address).
    pub fn ready_line(&self, unit: &str) -> Option<String> {
        let running = self.control.running.lock().ok()?;
        let svc = running.get(unit)?;
        let prefix = UNITS.iter().find(|u| u.0 == unit)?.3;
        svc.output()
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()))
    }

    /// Sets the replacements (also used for the unit files the `systemctl` shim starts).
    pub fn set_replacements(&mut self, r: Vec<(String, String)>) {
        self.replacements = r;
        if let Ok(mut w) = self.control.rewrite.lock() {
            *w = self.unit_rewrites();
        }
    }

    /// The shipped unit file with the recipe's prefixes moved into the root and `/usr/local/bin`
    /// pointed at this build's binaries.
    pub fn unit_text(&self, rel: &str) -> String {
        let mut text = self.rewrite(&workspace_file(rel));
        for (_, _, bin, _) in UNITS {
            text = text.replace(
                &format!("/usr/local/bin/{bin} "),
                &format!("{} ", bin_path(bin).display()),
            );
        }
        text
    }

    fn unit_rewrites(&self) -> Vec<(String, String)> {
        UNITS
            .iter()
            .map(|(name, rel, _, _)| ((*name).to_owned(), self.unit_text(rel)))
            .collect()
    }

    fn write_shims(&self) {
        let shims = self.path().join("shims");
        let script = |name: &str, body: &str| {
            let p = shims.join(name);
            std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        // The test cannot create system users or give files away; everything else is real. The
        // ownership the recipe asks for is recorded in $RECIPE_OWNERS ("owner group path" lines)
        // so the test can check who may read what (`Root::owners`, `Root::may`).
        script("useradd", "exit 0");
        script(
            "chown",
            r#"spec="$1"; shift
owner="${spec%%:*}"; group="${spec#*:}"
[ "$group" = "$spec" ] && group=""
[ -z "$group" ] && [ "$spec" != "$owner" ] && group="$owner"
for p in "$@"; do
  printf '%s %s %s\n' "$owner" "${group:-=}" "$(realpath -m "$p")" >> "$RECIPE_OWNERS"
done"#,
        );
        script(
            "install",
            r#"args=(); pos=(); owner=root; group=root; dir=0
while [ $# -gt 0 ]; do
  case "$1" in
    -o) owner="$2"; shift 2 ;;
    -g) group="$2"; shift 2 ;;
    -m) args+=("$1" "$2"); shift 2 ;;
    -d) dir=1; args+=("$1"); shift ;;
    -*) args+=("$1"); shift ;;
    *) pos+=("$1"); shift ;;
  esac
done
/usr/bin/install "${args[@]}" "${pos[@]}" || exit
record() { printf '%s %s %s\n' "$owner" "$group" "$(realpath -m "$1")" >> "$RECIPE_OWNERS"; }
if [ "$dir" = 1 ]; then
  for p in "${pos[@]}"; do record "$p"; done
else
  dest="${pos[-1]}"
  if [ -d "$dest" ]; then
    for src in "${pos[@]:0:${#pos[@]}-1}"; do record "$dest/$(basename "$src")"; done
  else
    record "$dest"
  fi
fi"#,
        );
        script(
            "runuser",
            r#"[ "$1" = -u ] || { echo "runuser shim: expected -u USER -- CMD" >&2; exit 2; }
shift 2
[ "$1" = -- ] && shift
exec "$@""#,
        );
        for (_, _, bin, _) in UNITS {
            std::os::unix::fs::symlink(bin_path(bin), shims.join(bin))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // systemctl: one request line to the test's control port, "ok" or an error back.
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("control port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        script(
            "systemctl",
            &format!(
                r#"exec 3<>/dev/tcp/127.0.0.1/{port}
printf '%s\n' "$*" >&3
IFS= read -r reply <&3
[ "$reply" = ok ] || {{ printf 'systemctl %s: %s\n' "$*" "$reply" >&2; exit 1; }}"#
            ),
        );
        let control = Arc::clone(&self.control);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut line = String::new();
                let Ok(reader) = conn.try_clone() else {
                    continue;
                };
                if BufReader::new(reader).read_line(&mut line).is_err() {
                    continue;
                }
                let reply = match control.handle(line.trim()) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => e.replace('\n', " | "),
                };
                let _ = writeln!(conn, "{reply}");
            }
        });
    }
}

impl Drop for Root {
    /// The units' processes are owned by the control thread, which never ends: stop them here
    /// (also when a step panicked), or they would outlive the test.
    fn drop(&mut self) {
        let mut guard = self
            .control
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let running = std::mem::take(&mut *guard);
        drop(guard);
        drop(running);
    }
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    /// `systemctl [enable --now|start|stop|restart|daemon-reload] UNIT...`
    fn handle(&self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, rest) = words.split_first().ok_or("empty systemctl command")?;
        let now = rest.contains(&"--now");
        let units: Vec<String> = rest
            .iter()
            .filter(|w| !w.starts_with('-'))
            .map(|w| w.trim_end_matches(".service").to_owned())
            .collect();
        for u in &units {
            if !UNITS.iter().any(|k| k.0 == u) {
                return Err(format!("unknown unit {u}"));
            }
        }
        // Dependency order: the vault first on start, last on stop (After= in the accounts unit).
        let ordered = |rev: bool| {
            let mut v: Vec<&str> = UNITS
                .iter()
                .map(|k| k.0)
                .filter(|n| units.iter().any(|u| u == n))
                .collect();
            if rev {
                v.reverse();
            }
            v
        };
        match *verb {
            "daemon-reload" => Ok(()),
            "enable" if !now => Ok(()),
            "start" | "enable" => ordered(false).into_iter().try_for_each(|u| self.start(u)),
            "stop" => {
                ordered(true).into_iter().for_each(|u| self.stop(u));
                Ok(())
            }
            "restart" => {
                ordered(true).into_iter().for_each(|u| self.stop(u));
                ordered(false).into_iter().try_for_each(|u| self.start(u))
            }
            other => Err(format!("systemctl shim: {other} not supported")),
        }
    }

    fn start(&self, unit: &str) -> Result<(), String> {
        if self
            .running
            .lock()
            .map(|r| r.contains_key(unit))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let text = self
            .rewrite
            .lock()
            .map_err(|_| "poisoned")?
            .iter()
            .find(|(n, _)| n == unit)
            .map(|(_, t)| t.clone())
            .ok_or("unit text not prepared (set_replacements first)")?;
        let (_, _, _, ready) = UNITS.iter().find(|k| k.0 == unit).ok_or("unknown unit")?;
        let exec = unit_values(&text, "ExecStart")
            .pop()
            .ok_or("no ExecStart")?;
        // As systemd does: a clean environment, Environment= then EnvironmentFile= (later wins),
        // the unit's UMask.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in unit_values(&text, "Environment") {
            env.extend(e.split_whitespace().filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            }));
        }
        for f in unit_values(&text, "EnvironmentFile") {
            let (optional, path) = match f.strip_prefix('-') {
                Some(p) => (true, p.to_owned()),
                None => (false, f.clone()),
            };
            match std::fs::read_to_string(&path) {
                Ok(t) => env.extend(parse_env_file(&t)),
                Err(e) if !optional => return Err(format!("EnvironmentFile {path}: {e}")),
                Err(_) => {}
            }
        }
        let umask = unit_values(&text, "UMask")
            .pop()
            .unwrap_or_else(|| "0022".into());
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("umask {umask} && exec {exec}"))
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let svc = Service::spawn(unit, cmd);
        match svc.try_wait_for_line(ready, Duration::from_secs(30)) {
            Ok(_) => {
                if let Ok(mut r) = self.running.lock() {
                    r.insert(unit.to_owned(), svc);
                }
                Ok(())
            }
            Err(e) => {
                if let Ok(mut p) = self.past.lock() {
                    p.push(format!("[{unit} (failed to start)]\n{}", svc.output()));
                }
                Err(format!("{unit} did not start: {e}"))
            }
        }
    }

    fn stop(&self, unit: &str) {
        let svc = self.running.lock().ok().and_then(|mut r| r.remove(unit));
        let Some(mut svc) = svc else { return };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(svc.pid().to_string())
            .status();
        if svc.wait(Duration::from_secs(15)).is_none() {
            svc.kill();
        }
        if let Ok(mut p) = self.past.lock() {
            p.push(format!("[{unit} (stopped)]\n{}", svc.output()));
        }
    }
}
