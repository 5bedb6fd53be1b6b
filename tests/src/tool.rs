//! One policy for tests that need a program from outside the workspace (chromedriver,
//! chromium, systemd-analyze, sslscan, openssl, python modules): present → the test runs;
//! absent → the test prints a visible `SKIPPED` line and returns locally, but **fails** under
//! `STRONGROOM_REQUIRE_TOOLS=1` (which `.ci/run` sets after installing them), so CI can never
//! pass by skipping.

use std::path::PathBuf;

/// Whether missing tools fail the test: `STRONGROOM_REQUIRE_TOOLS` set to anything but
/// empty or `0`.
pub fn tools_required() -> bool {
    std::env::var_os("STRONGROOM_REQUIRE_TOOLS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first of `names` found as a file on `PATH`, without applying the policy.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Applies the policy to a tool found missing: panics naming it under
/// `STRONGROOM_REQUIRE_TOOLS`, else prints `SKIPPED: <what> is not installed` on stderr.
pub fn missing_tool(what: &str) {
    assert!(
        !tools_required(),
        "{what} is required (STRONGROOM_REQUIRE_TOOLS is set; .ci/run installs it)"
    );
    // Written to the stderr handle, not with `eprintln!`: the test harness captures the print
    // macros of a passing test, and a skip nobody sees is the silent pass this policy forbids.
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} is not installed here, so it checks nothing \
         (.ci/run installs it; STRONGROOM_REQUIRE_TOOLS=1 makes this a failure)"
    );
}

/// `true` when `program` is on `PATH`; otherwise applies [`missing_tool`] and returns `false`,
/// so a test starts with `if !tests::require_tool("sslscan") { return; }`.
pub fn require_tool(program: &str) -> bool {
    require_any_tool(&[program]).is_some()
}

/// The path of the first of `names` on `PATH` (alternative names of one tool, e.g. `chromium`
/// or `chromium-browser`); otherwise applies [`missing_tool`] and returns `None`.
pub fn require_any_tool(names: &[&str]) -> Option<PathBuf> {
    let found = find_program(names);
    if found.is_none() {
        missing_tool(&names.join(" or "));
    }
    found
}
