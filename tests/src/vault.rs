//! Helpers to run the real `vault` binary (filled in with the vault core).
