//! Tests of the PostgreSQL backend on a throwaway server (`pgtest`: skipped with a visible line
//! where PostgreSQL is not installed, a failure under `STRONGROOM_REQUIRE_TOOLS=1`). The shared
//! contract runs unchanged in `store::conformance`; these add what only a shared database has:
//! several processes ("instances") on one database.

use super::*;
use crate::store::conformance;
use std::sync::{Arc, Barrier};

fn settings(url: &str) -> shared::pg::PgSettings {
    shared::pg::PgSettings {
        url: shared::SecretString::new(url.to_owned()),
        pool_size: shared::pg::DEFAULT_POOL_SIZE,
        ca: None,
        client_cert: None,
        connect_timeout: std::time::Duration::from_secs(5),
    }
}

fn open(url: &str) -> PgStore {
    PgStore::open(&settings(url)).unwrap()
}

/// The storage contract, run against PostgreSQL (each case on a fresh database).
#[test]
fn postgres_passes_the_store_conformance_suite() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let first = std::sync::Mutex::new(Some(url));
    conformance::run_all(&|| {
        let url = first.lock().unwrap().take();
        let url = url.unwrap_or_else(|| pgtest::fresh_database().unwrap());
        Arc::new(open(&url))
    });
}

#[test]
fn four_instances_opening_one_empty_database_at_once_migrate_it_once() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let barrier = Barrier::new(4);
    let opened: Vec<(PgStore, usize)> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (barrier, url) = (&barrier, &url);
                t.spawn(move || {
                    barrier.wait();
                    PgStore::connect(&settings(url)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied: Vec<usize> = opened.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        applied.iter().sum::<usize>(),
        MIGRATIONS.len(),
        "one instance migrates, the others find the schema current: {applied:?}"
    );
    // Every instance serves, and they share one database.
    let r = conformance::record("pm_shared", "s1", "a1");
    opened[0].0.insert(r, &[[1; 32]]).unwrap();
    for (s, _) in &opened {
        assert_eq!(s.record_count().unwrap(), 1);
    }
    // A later start migrates nothing.
    assert_eq!(PgStore::connect(&settings(&url)).unwrap().1, 0);
}

#[test]
fn two_instances_storing_one_token_concurrently_make_one_record() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let (a, b) = (open(&url), open(&url));
    assert!(
        !a.single_process(),
        "a shared database is never single-process"
    );
    let fp = [42u8; 32];
    let barrier = Barrier::new(16);
    let results: Vec<(bool, String)> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s: &dyn Store = if i % 2 == 0 { &a } else { &b };
                let barrier = &barrier;
                t.spawn(move || {
                    barrier.wait();
                    let r = conformance::record(&format!("pm_{i:032x}"), "s1", "a1");
                    match s.insert(r, &[fp]).unwrap() {
                        Stored::Created(r) => (true, r.id),
                        Stored::Existing(r) => (false, r.id),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<_> = results.iter().filter(|(c, _)| *c).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(_, id)| *id == created[0].1),
        "{results:?}"
    );
    for s in [&a, &b] {
        assert_eq!(s.record_count().unwrap(), 1);
        assert_eq!(
            s.find_fingerprint(&[fp]).unwrap().map(|r| r.id),
            Some(created[0].1.clone())
        );
    }
}

#[test]
fn a_rewrap_batch_walks_ids_in_byte_order_and_rewraps_only_older_versions() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let s = open(&url);
    // Byte order: upper case sorts before lower case ("C" collation, as sled's keys).
    for (n, id) in ["pm_b", "pm_A", "pm_a", "pm_B"].iter().enumerate() {
        let mut r = conformance::record(id, "s1", "a1");
        r.key_version = if n == 0 { 2 } else { 1 };
        s.insert(r, &[[n as u8; 32]]).unwrap();
    }
    let ids: Vec<Vec<u8>> = s.record_ids_after(None, 10).unwrap();
    assert_eq!(
        ids,
        vec![
            b"pm_A".to_vec(),
            b"pm_B".to_vec(),
            b"pm_a".to_vec(),
            b"pm_b".to_vec()
        ]
    );
    let first = s
        .rewrap_batch(None, 2, 2, &|r| Some((format!("{}ff", r.wrapped_dek), 2)))
        .unwrap();
    assert_eq!((first.scanned, first.rewrapped, first.failed), (2, 2, 0));
    assert_eq!(first.next_after.as_deref(), Some(&b"pm_B"[..]));
    let rest = s
        .rewrap_batch(first.next_after.as_deref(), 2, 2, &|_| None)
        .unwrap();
    // pm_a is below the target and `rewrap` refuses it; pm_b is already at version 2.
    assert_eq!((rest.scanned, rest.rewrapped, rest.failed), (2, 0, 1));
    let (counts, corrupt) = s.count_by(&StoredRecord::wrap_version).unwrap();
    assert_eq!(
        (counts.get(&1), counts.get(&2), corrupt),
        (Some(&1), Some(&3), 0)
    );
    // pm_A was inserted second (under fingerprint [1; 32]).
    let a = s.find_fingerprint(&[[1; 32]]).unwrap().unwrap();
    assert_eq!(a.id, "pm_A");
    assert_eq!((a.wrapped_dek.as_str(), a.wrap_version()), ("00ff", 2));
}

#[test]
fn a_reindexed_record_is_found_under_its_new_fingerprint_only() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let s = open(&url);
    let r = conformance::record("pm_x", "s1", "a1");
    let old_fp = hex::decode(&r.fingerprint).unwrap();
    let old_fp: [u8; 32] = old_fp.try_into().unwrap();
    s.insert(r.clone(), &[old_fp]).unwrap();
    assert!(
        !s.reindex_one(b"pm_x", "beef", [5; 32], 2).unwrap(),
        "moved meanwhile"
    );
    assert!(s.reindex_one(b"pm_x", &r.fingerprint, [5; 32], 2).unwrap());
    assert!(s.find_fingerprint(&[old_fp]).unwrap().is_none());
    let moved = s.find_fingerprint(&[[5; 32]]).unwrap().unwrap();
    assert_eq!(
        (moved.fp_version(), moved.fingerprint),
        (2, hex::encode([5u8; 32]))
    );
    assert!(!s.reindex_one(b"pm_gone", "00", [6; 32], 2).unwrap());
}

#[test]
fn an_unreachable_database_is_a_backend_error_without_the_password() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://vault:hunter2@127.0.0.1:{port}/vault");
    let mut s = settings(&url);
    s.connect_timeout = std::time::Duration::from_millis(500);
    let e = PgStore::open(&s).err().expect("nothing listens there");
    let text = format!("{e} {e:?}");
    assert!(matches!(e, StoreError::Backend(_)), "{text}");
    assert!(!text.contains("hunter2") && !text.contains(&url), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_a_multi_thread_runtime_worker_answer_and_the_store_drops_there() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let s = Arc::new(open(&url));
    // Inline in a task (the way handlers call the port) and in the test's own body.
    let task = {
        let s = s.clone();
        tokio::spawn(async move { s.meta_apply(&[("k", b"v")], &[]).unwrap() })
    };
    task.await.unwrap();
    assert_eq!(s.meta_get("k").unwrap(), Some(b"v".to_vec()));
    s.durable().await.unwrap();
    // Dropped inside the runtime: its own runtime shuts down without blocking (no panic).
    drop(s);
}

#[tokio::test(flavor = "current_thread")]
async fn calls_from_a_current_thread_runtime_answer() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let s = open(&url);
    s.meta_apply(&[("k", b"v")], &[]).unwrap();
    assert_eq!(
        s.meta_scan("").unwrap(),
        vec![("k".to_owned(), b"v".to_vec())]
    );
}

#[test]
fn a_data_folder_is_held_by_one_instance_also_on_postgres() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.toml");
    std::fs::write(&path, "[storage]\nbackend = \"postgres\"\n").unwrap();
    let overrides = || crate::config::Overrides {
        database_url: Some(shared::SecretString::new(url.clone())),
        ..Default::default()
    };
    let cfg = crate::config::Config::load(&path, overrides(), None).unwrap();
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let first = crate::store::open(&cfg, false).unwrap();
    assert!(!first.single_process());
    match crate::store::open(&cfg, false) {
        Err(StoreError::Locked { path }) => assert!(path.contains("data"), "{path}"),
        other => panic!(
            "a second process on one data folder must be refused: {:?}",
            other.err()
        ),
    }
    // Another data folder (another instance) on the same database is fine.
    let other = crate::config::Config::load(
        &path,
        crate::config::Overrides {
            data_dir: Some(dir.path().join("data2")),
            ..overrides()
        },
        None,
    )
    .unwrap();
    std::fs::create_dir_all(&other.data_dir).unwrap();
    let second = crate::store::open(&other, false).unwrap();
    drop(first);
    assert!(crate::store::open(&cfg, false).is_ok(), "released on drop");
    drop(second);
}

/// Runs `sql` in the database of `url` (the last segment of a `pgtest` URL) as the superuser.
fn psql_in(url: &str, sql: &str) -> String {
    let db = url.rsplit('/').next().unwrap();
    pgtest::require().unwrap().psql_in(db, sql).unwrap()
}

/// Backend pids holding the instance lock shared (registered instances) in `url`'s database.
fn registered_sessions(url: &str) -> Vec<String> {
    let id = instances::lock_id();
    // A bigint advisory key shows as (classid, objid) = (high, low) 32 bits, objsubid 1.
    let (high, low) = ((id >> 32) as u32, id as u32);
    let out = psql_in(
        url,
        &format!(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' \
             AND granted AND classid = {high} AND objid = {low} AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    );
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Ends the instance sessions of `url`'s database from the server side (as a database restart
/// does to every session), and waits until they are gone.
fn terminate_registrations(url: &str) {
    let pids = registered_sessions(url);
    assert!(!pids.is_empty(), "an instance is registered");
    for pid in &pids {
        psql_in(url, &format!("SELECT pg_terminate_backend({pid})"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|p| {
        !psql_in(
            url,
            &format!("SELECT 1 FROM pg_stat_activity WHERE pid = {p}"),
        )
        .is_empty()
    }) {
        assert!(std::time::Instant::now() < deadline, "sessions did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_key_change_is_granted_only_to_the_sole_instance_and_holds_new_ones_at_start() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let wait = std::time::Duration::from_millis(500);
    let a = open(&url);
    let guard = a.key_change_guard().unwrap().expect("the only instance");
    // A start during the change waits, then refuses with what is going on.
    let e = PgStore::connect_waiting(&settings(&url), wait)
        .err()
        .expect("held at start");
    assert!(matches!(e, StoreError::KeyChangeElsewhere { .. }), "{e}");
    assert!(e.to_string().contains("key change is in progress"), "{e}");
    // A start that is still waiting when the change ends goes on.
    let late = std::thread::scope(|t| {
        let starting = t.spawn(|| PgStore::connect_waiting(&settings(&url), 20 * wait));
        std::thread::sleep(wait);
        drop(guard);
        starting.join().unwrap()
    });
    let (b, _) = late.unwrap();
    assert_eq!(registered_sessions(&url).len(), 2);
    assert!(a.key_change_guard().unwrap().is_none(), "b is running");
    assert!(b.key_change_guard().unwrap().is_none(), "a is running");
    drop(b);
    assert_eq!(registered_sessions(&url).len(), 1, "unregistered on drop");
    let again = a.key_change_guard().unwrap();
    assert!(again.is_some(), "sole instance again");
    // Two grants in a row on one session: each release gives back exactly its own.
    drop(again);
    drop(a.key_change_guard().unwrap().expect("granted again"));
    let counted = psql_in(
        &url,
        &format!(
            "SELECT convert_from(value, 'UTF8') FROM vault_meta WHERE name = '{}'",
            instances::CHANGES_KEY
        ),
    );
    assert_eq!(
        counted.trim(),
        "6",
        "every grant is counted, and the end of every change"
    );
    assert!(
        PgStore::connect_waiting(&settings(&url), wait).is_ok(),
        "released after the change: a start goes through"
    );
}

#[test]
fn a_lost_session_registers_again_before_a_change_and_on_its_own() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let a = open(&url);
    terminate_registrations(&url);
    // Another instance starts while a's registration is gone: a change on a is refused (its
    // session is replaced and registered again first, and then b counts).
    let b = open(&url);
    assert!(a.key_change_guard().unwrap().is_none());
    assert_eq!(registered_sessions(&url).len(), 2);
    drop(b);
    // Lost again, nobody asking: the watcher registers a again within moments, so a newcomer
    // cannot take a for stopped.
    terminate_registrations(&url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while registered_sessions(&url).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a never registered again"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let c = open(&url);
    assert!(c.key_change_guard().unwrap().is_none(), "a counts again");
    drop(c);
    assert!(a.key_change_guard().unwrap().is_some());
}

/// Waits (at most 10 s) until `s` knows it missed a key change, then checks that it refuses
/// store calls and key changes.
fn fails_closed(s: &PgStore, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.instances.is_stale() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(matches!(s.meta_get("x"), Err(StoreError::MissedKeyChange)));
    assert!(s.key_change_guard().unwrap().is_none());
}

#[test]
fn an_instance_that_missed_a_key_change_while_cut_off_refuses_every_call() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let a = open(&url);
    assert!(!a.instances.is_stale(), "nothing missed yet");
    // Another instance's key change while a was cut off (its registration gone) shows as the
    // counter every granted change bumps having moved since a registered; a learns it when it
    // registers again (or, registered again first, at its next reading of the counter).
    terminate_registrations(&url);
    psql_in(
        &url,
        &format!(
            "INSERT INTO vault_meta (name, value) VALUES ('{}', convert_to('99', 'UTF8'))",
            instances::CHANGES_KEY
        ),
    );
    fails_closed(&a, "the watcher never came back");
    // A fresh start (what the error asks for) works: the custody checks judge its keys.
    assert!(open(&url).meta_get("x").is_ok());
}

#[test]
fn no_key_change_right_after_a_database_restart() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let mut a = open(&url);
    // This server started less than an hour ago.
    a.instances.restart_grace = std::time::Duration::from_secs(3600);
    assert!(a.key_change_guard().unwrap().is_none());
    a.instances.restart_grace = std::time::Duration::ZERO;
    assert!(a.key_change_guard().unwrap().is_some());
}

#[test]
fn an_instance_that_started_while_a_key_change_lost_its_lock_fails_closed_when_the_change_ends() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let a = open(&url);
    let guard = a.key_change_guard().unwrap().expect("the only instance");
    // A database restart during the change: a's session, and the exclusive lock with it, is
    // gone, so an instance starting now is not held; it checks keys the change has not
    // replaced yet and runs.
    terminate_registrations(&url);
    let b = open(&url);
    assert!(b.meta_get("x").is_ok(), "b runs");
    // The change ends (a's key files now differ from b's): b learns it missed it.
    drop(guard);
    fails_closed(&b, "b never learnt of the change");
    // The instance that changed keys holds them: it goes on, and a restarted b is judged by
    // its custody checks.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!a.instances.is_stale(), "a made the change itself");
    assert!(a.meta_get("x").is_ok());
    drop(b);
    assert!(open(&url).meta_get("x").is_ok());
}
