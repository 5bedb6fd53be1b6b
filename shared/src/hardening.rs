//! Process hardening both services apply at start: no core dumps (a dump would hold payment
//! tokens, keys and API passwords in clear: the vault holds them all, accounts-api holds a raw
//! token during checkout and every store's password check), and on Linux `PR_SET_DUMPABLE = 0`,
//! which also keeps other processes of the same user from ptrace-attaching or reading
//! `/proc/<pid>/mem`.
//!
//! Through rustix, no `unsafe`: RLIMIT_CORE = 0 (soft and hard).

/// Turns core dumps off for this process. Failure is returned so the caller can refuse to start.
pub fn disable_core_dumps() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}
