//! Process set-up at start: no core dumps (a dump would contain keys and tokens in clear), and a
//! bounded number of glibc malloc arenas (memory budget).
//!
//! Both knobs through rustix, no `unsafe`: RLIMIT_CORE = 0 (soft and hard), and on Linux
//! `PR_SET_DUMPABLE = 0`, which also keeps other same-user processes from ptrace-attaching.

/// Turns core dumps off for this process (`shared::hardening`, which accounts-api applies too).
pub fn disable_core_dumps() -> std::io::Result<()> {
    shared::hardening::disable_core_dumps()
}

/// Environment variable glibc reads once, at process start.
const ARENA_VAR: &str = "MALLOC_ARENA_MAX";

/// glibc gives threads that contend on malloc their own arena (up to 8 per core); with tokio
/// workers, the blocking pool and sled's threads each holding partly-used arenas, resident
/// memory grows well past the page cache budget (measured: ~72 MiB instead of ~57 MiB at 100k
/// records). glibc only reads `MALLOC_ARENA_MAX` at start, so if it is unset the vault re-executes
/// itself once with `MALLOC_ARENA_MAX=2` (same PID, same arguments, same stdout). An operator
/// who sets the variable (any value) keeps full control; nothing happens on non-Linux systems.
pub fn cap_malloc_arenas() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(ARENA_VAR).is_some() {
            return Ok(());
        }
        let exe = std::env::current_exe()?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(ARENA_VAR, "2")
            .exec();
        // `exec` only returns on failure; carry on with the default allocator settings.
        tracing::warn!(error = %err, "could not re-execute with MALLOC_ARENA_MAX=2");
    }
    Ok(())
}
