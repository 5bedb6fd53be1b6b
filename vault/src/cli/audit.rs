//! `vault audit verify|export|archive` on the segment files. They need no lock: closed segments
//! never change and the active one only grows, so they work while the vault runs. A folder
//! written before segment files and not started since keeps its entries in the sled `audit`
//! tree: verify and export read them there (on a stopped vault: sled locks its folder).

use super::CliResult;
use crate::audit::segment::AuditKey;
use crate::audit::{Verdict, archive as arch, segment, walk};
use crate::config::{Config, KeySource, Overrides};
use std::path::Path;
use std::process::ExitCode;

fn load(config_path: &Path) -> CliResult<Config> {
    Ok(Config::load(config_path, Overrides::from_env(), None)?)
}

/// The audit key, read only (the vault creates it at its first start).
fn audit_key(config: &Config) -> CliResult<AuditKey> {
    let key = match &config.audit_key {
        KeySource::Env(v) => crate::keys::parse_audit_env(v)?,
        KeySource::File(p) => crate::keys::load_audit_key(p)?,
    };
    Ok(AuditKey::new(&key))
}

fn has_segments(config: &Config) -> CliResult<bool> {
    Ok(!segment::list(&config.audit.dir)?.is_empty())
}

/// Opens a stopped vault's data folder (sled refuses, by name, one a running vault holds).
/// `None` on PostgreSQL: its audit entries were never in a store (segment files from the start),
/// and opening sled there would create a database in the audit folder.
fn open_stopped_db(config: &Config) -> CliResult<Option<crate::store::StoppedFolder>> {
    if !config.data_dir.is_dir() {
        return Err(format!("data folder {} does not exist", config.data_dir.display()).into());
    }
    if config.database.is_some() {
        return Ok(None);
    }
    Ok(Some(crate::store::StoppedFolder::open(
        &config.data_dir,
        config.storage.cache_capacity_bytes,
        config.storage.flush_every_ms,
    )?))
}

fn print_verdict(verdict: Verdict, note: &str) -> ExitCode {
    match verdict {
        Verdict::Ok { entries } => {
            println!("audit chain: {entries} entries ok{note}");
            ExitCode::SUCCESS
        }
        Verdict::Broken { position, reason } => {
            println!("audit chain BROKEN at entry {position}: {reason}");
            ExitCode::from(2)
        }
    }
}

/// `vault audit verify --config FILE [--archive DIR]`.
pub fn verify(config_path: &Path, archive: Option<&Path>) -> CliResult<ExitCode> {
    let config = load(config_path)?;
    if !has_segments(&config)? {
        let verdict = match open_stopped_db(&config)? {
            Some(folder) if folder.has_legacy_audit() => folder.verify_legacy_audit()?,
            _ => Verdict::Ok { entries: 0 },
        };
        return Ok(print_verdict(
            verdict,
            " (in the data store: written before segment files)",
        ));
    }
    let key = audit_key(&config)?;
    let archive = archive.or(config.audit.archive_dir.as_deref());
    let r = walk::verify(&config.audit.dir, archive, &key, None)?;
    let mut note = format!(" ({} segments", r.segments);
    if r.from_archive > 0 {
        note.push_str(&format!(", {} from the archive", r.from_archive));
    }
    if r.checked_from > 1 {
        note.push_str(&format!(
            "; entries 1-{} are in archived segments not read here (pass --archive DIR), the \
             chain starts from their signed checkpoint",
            r.checked_from - 1
        ));
    }
    note.push(')');
    Ok(print_verdict(r.verdict, &note))
}

/// `vault audit export --config FILE --since <seq | RFC 3339>`: JSON lines on stdout (the same
/// bytes as `--online` for the same range).
pub fn export(config_path: &Path, since: &str) -> CliResult<ExitCode> {
    let since = crate::audit_export::Since::parse(since)?;
    let config = load(config_path)?;
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    let mut write = |chunk: Vec<u8>| match out.write_all(&chunk) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    };
    let found = if has_segments(&config)? {
        let (dir, archive) = (&config.audit.dir, config.audit.archive_dir.as_deref());
        match walk::first_since(dir, archive, &since, u64::MAX)? {
            Some(from) => {
                // Entries of pruned segments are only in the archive.
                let held = walk::first_held(dir, archive)?.unwrap_or(from);
                if held > from {
                    eprintln!(
                        "entries {from}-{} are in archived segments no longer in the data \
                         folder (set [audit] archive_dir to read them)",
                        held - 1
                    );
                }
                let start = from.max(held);
                Some((
                    start,
                    walk::export(dir, archive, start, u64::MAX, &mut write)?,
                ))
            }
            None => None,
        }
    } else {
        match open_stopped_db(&config)? {
            Some(folder) if folder.has_legacy_audit() => {
                folder.export_legacy_audit(&since, &mut write)?
            }
            _ => None,
        }
    };
    let Some((start, n)) = found else {
        eprintln!("exported 0 audit entries");
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(e) = failed {
        return Err(e.into());
    }
    out.flush()?;
    eprintln!("exported {n} audit entries from seq {start}");
    Ok(ExitCode::SUCCESS)
}

/// `vault audit archive --config FILE [--to DIR]`.
pub fn archive(config_path: &Path, to: Option<&Path>) -> CliResult<ExitCode> {
    let config = load(config_path)?;
    let Some(to) = to.or(config.audit.archive_dir.as_deref()) else {
        return Err("give --to DIR or set [audit] archive_dir".into());
    };
    let key = audit_key(&config)?;
    let r = match arch::archive(&config.audit.dir, to, &key) {
        Ok(r) => r,
        Err(crate::audit::AuditError::Refused(reason)) => {
            println!("audit archive REFUSED: {reason}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let pruned = arch::prune(&config.audit, &key)?;
    println!(
        "archived {} segments to {} ({} already archived); pruned {pruned} from the data folder",
        r.copied,
        to.display(),
        r.already
    );
    Ok(ExitCode::SUCCESS)
}
