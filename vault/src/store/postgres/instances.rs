//! The instance lock: how a key change on PostgreSQL knows it is the only vault running, so a
//! new key version can never reach one instance's key files while others run with the old ones
//! (they could not open its records, or would fingerprint under an old key and store
//! duplicates). [`Store::key_change_guard`](crate::store::Store::key_change_guard) on this
//! backend. One advisory lock key per database, [`lock_id`]:
//!
//! 1. **Every instance registers.** At open it takes the lock *shared*
//!    (`pg_try_advisory_lock_shared`) on a dedicated session — one connection outside the
//!    request pool, kept on the backend's runtime — and holds it for its whole life. It waits
//!    for it up to [`START_WAIT`] (a key change elsewhere holds it exclusively), then refuses to
//!    start. Registration happens before the custody checks, so an instance never checks its
//!    keys against a key change half done (it would take a pending version for a crashed one).
//! 2. **A key change is exclusive.** It asks `pg_try_advisory_lock` on that same session. A
//!    session's own locks never conflict with its own requests, so this succeeds exactly when
//!    no *other* session — no other instance — holds the lock. The guard holds it for the key
//!    change; while held, new instances wait at 1. Dropping the guard releases the exclusive
//!    lock (the shared one stays).
//! 3. **Sessions die** (database restart, network): session-level locks die with them, every
//!    instance's registration included.
//!    - A change is never granted on a dead session: the exclusive request is a statement on
//!      the session itself, and a broken session is replaced (registered again) first.
//!    - A watcher re-registers a lost session every [`WATCH_EVERY`], so running instances count
//!      again about a second after the database is back. The window before that is closed by
//!      refusing key changes for [`RESTART_GRACE`] after the server started.
//!    - An instance that was unregistered for longer (cut off from the database) may come back
//!      after a key change it missed: every granted change bumps a counter in `vault_meta`
//!      ([`CHANGES_KEY`]); an instance that re-registers and finds it moved fails closed (every
//!      store call refused until it is restarted, when the custody checks judge its key files).
//! 4. **A restart during a change.** The changing instance's session can die while it changes
//!    keys (a database restart after the grant): its exclusive lock is gone, and an instance
//!    that starts then registers, checks its keys against values the change has not replaced
//!    yet, and runs. So the end of every change bumps the counter again (on the session as it
//!    is then, registered again if it was lost; if the database is away, as soon as it is
//!    back), and every registered instance reads the counter each [`WATCH_EVERY`]: a change is
//!    only granted to a sole instance, so a move it did not make itself means it started
//!    inside such a change, and it fails closed as in 3.

use super::bridge::{self, Bridge};
use super::{conn, db_err, pg_err};
use crate::store::{KeyChangeGuard, StoreError};
use deadpool_postgres::{Object, Pool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long a start waits for a key change on another instance to finish.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// How often the watcher checks the dedicated session.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Key changes are refused this long after the database server started: the instances that
/// lost their registration in the restart need a moment to register again.
const RESTART_GRACE: Duration = Duration::from_secs(10);

/// Bound on releasing a guard or unregistering (a database that is gone took the locks along).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// `vault_meta` row counting granted key changes (decimal text).
pub const CHANGES_KEY: &str = "custody/key-changes";

/// The advisory lock key: a fixed hash of a fixed name, the same in every process (the
/// migrations lock hashes the component name the same way; the names differ).
pub fn lock_id() -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, b"strongroom-vault-instances");
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(id)
}

/// The dedicated session and what this instance knows about it.
#[derive(Default)]
struct Session {
    /// Registered (holding the lock shared) while `Some` and open.
    client: Option<Object>,
    /// Bumped at each registration: a guard releases only on the session that granted it.
    generation: u64,
    /// The key-change counter as of this instance's registration (and its own changes since).
    seen_changes: Option<u64>,
    /// This instance ended a key change while the database was away: the end is counted as
    /// soon as the session is back (module header, point 4).
    pending_bump: bool,
}

struct Inner {
    /// A pool of one, used only to make the dedicated connection with the store's settings
    /// (TLS, timeouts); a connection taken from it is never handed back.
    factory: Pool,
    /// Async mutex: held across statements on the session, on the backend's runtime only.
    session: tokio::sync::Mutex<Session>,
    /// This instance missed a key change (see the module header): fail closed.
    stale: AtomicBool,
}

/// This instance's registration on the database.
pub struct Instances {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
    /// [`RESTART_GRACE`]; zero in this crate's unit tests, whose server has just started.
    pub(super) restart_grace: Duration,
}

/// Drops a session's connection for good (out of the pool's accounting, socket closed).
fn discard(client: Option<Object>) {
    if let Some(c) = client {
        drop(Object::take(c));
    }
}

fn parse_count(value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(StoreError::Corrupt("key-change counter"))
}

async fn changes(c: &Object) -> Result<u64, StoreError> {
    let row = c
        .query_opt(
            "SELECT value FROM vault_meta WHERE name = $1",
            &[&CHANGES_KEY],
        )
        .await
        .map_err(db_err)?;
    match row {
        None => Ok(0),
        Some(r) => parse_count(r.try_get(0).map_err(db_err)?),
    }
}

/// Makes sure the session is open and registered; `false` when the lock is held exclusively
/// by another instance (a key change there). Replacing a lost session re-checks the counter.
async fn ensure(inner: &Inner, s: &mut Session) -> Result<bool, StoreError> {
    if s.client.as_ref().is_some_and(|c| !c.is_closed()) {
        return Ok(true);
    }
    discard(s.client.take());
    let c = conn(&inner.factory).await?;
    let row = c
        .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&lock_id()])
        .await
        .map_err(db_err)?;
    if !row.try_get::<_, bool>(0).map_err(db_err)? {
        discard(Some(c));
        return Ok(false);
    }
    let now = changes(&c).await?;
    check_changes(inner, s, now);
    s.seen_changes = Some(now);
    if s.pending_bump {
        s.seen_changes = Some(bump(&c).await?);
        s.pending_bump = false;
    }
    s.generation += 1;
    s.client = Some(c);
    Ok(true)
}

/// Fails this instance closed if the key-change counter moved from what it last saw: another
/// instance changed keys that this one does not hold (module header, points 3 and 4).
fn check_changes(inner: &Inner, s: &Session, now: u64) {
    if let Some(seen) = s.seen_changes
        && seen != now
        && !inner.stale.swap(true, Ordering::SeqCst)
    {
        tracing::error!(
            "another vault instance changed keys that this one does not hold (it was cut off \
             from the database, or started while the change ran): refusing every request; \
             restart this instance with the changed key files copied from that instance"
        );
    }
}

/// Re-registers a lost session (module header, point 3). Stops when the store is gone.
async fn watch(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut s = inner.session.lock().await;
        let lost = s.client.as_ref().is_none_or(|c| c.is_closed());
        if !lost {
            // Registered: the counter must not move under it (module header, point 4). A
            // failed read is a session about to be found lost.
            if let Some(c) = s.client.as_ref()
                && let Ok(now) = changes(c).await
            {
                check_changes(&inner, &s, now);
            }
            continue;
        }
        match ensure(&inner, &mut s).await {
            Ok(true) => tracing::info!("vault instance registered again on the database"),
            Ok(false) => tracing::warn!(
                "cannot register this vault instance again: a key change is in progress on \
                 another instance"
            ),
            // The database is still away; the next turn tries again.
            Err(e) => tracing::debug!(error = %e, "vault instance not registered yet"),
        }
    }
}

impl Instances {
    /// Registers this instance (module header, point 1), waiting up to `wait`.
    pub fn register(
        bridge: &Bridge,
        settings: &shared::pg::PgSettings,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        let one = shared::pg::PgSettings {
            pool_size: 1,
            ..settings.clone()
        };
        let factory = bridge.enter(|| shared::pg::pool(&one))?.map_err(pg_err)?;
        let inner = Arc::new(Inner {
            factory,
            session: tokio::sync::Mutex::new(Session::default()),
            stale: AtomicBool::new(false),
        });
        let started = Instant::now();
        let mut warned = false;
        loop {
            let i = inner.clone();
            let registered = bridge.run(async move {
                let mut s = i.session.lock().await;
                ensure(&i, &mut s).await
            })?;
            if registered {
                break;
            }
            if started.elapsed() >= wait {
                return Err(StoreError::KeyChangeElsewhere {
                    waited_secs: wait.as_secs(),
                });
            }
            if !warned {
                tracing::warn!(
                    "waiting to start: a key change is in progress on another vault instance"
                );
                warned = true;
            }
            bridge::wait(|| std::thread::sleep(Duration::from_millis(100)));
        }
        let runtime = bridge.handle()?;
        runtime.spawn(watch(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            runtime,
            restart_grace: if cfg!(test) {
                Duration::ZERO
            } else {
                RESTART_GRACE
            },
        })
    }

    /// Whether this instance missed a key change (it then refuses every store call).
    pub fn is_stale(&self) -> bool {
        self.inner.stale.load(Ordering::SeqCst)
    }

    /// Module header, point 2.
    pub fn grant(&self, bridge: &Bridge) -> Result<Option<KeyChangeGuard>, StoreError> {
        if self.is_stale() {
            return Ok(None);
        }
        let (inner, grace) = (self.inner.clone(), self.restart_grace.as_secs_f64());
        let granted = bridge.run(async move {
            let mut s = inner.session.lock().await;
            // Twice at most: a session found broken under the request is replaced (registered
            // again) and asked once more; it is never granted on the word of a dead one.
            let mut attempt = 0;
            let row = loop {
                attempt += 1;
                if !ensure(&inner, &mut s).await? {
                    return Ok(None);
                }
                let Some(c) = s.client.as_ref() else {
                    return Ok(None);
                };
                let asked = c
                    .query_one(
                        "SELECT pg_try_advisory_lock($1), \
                         extract(epoch FROM now() - pg_postmaster_start_time())::float8",
                        &[&lock_id()],
                    )
                    .await;
                match asked {
                    Ok(row) => break row,
                    Err(e) => {
                        let broken = c.is_closed();
                        discard(s.client.take());
                        if !broken || attempt > 1 {
                            return Err(db_err(e));
                        }
                    }
                }
            };
            let Some(c) = s.client.as_ref() else {
                return Ok(None);
            };
            let (got, age): (bool, f64) = (
                row.try_get(0).map_err(db_err)?,
                row.try_get(1).map_err(db_err)?,
            );
            if !got {
                return Ok(None);
            }
            let unlock = "SELECT pg_advisory_unlock($1)";
            if age < grace {
                tracing::warn!(
                    "key change refused: the database restarted moments ago and other vault \
                     instances may not have registered again yet"
                );
                let _ = c.execute(unlock, &[&lock_id()]).await;
                return Ok(None);
            }
            match bump(c).await {
                Ok(n) => {
                    s.seen_changes = Some(n);
                    Ok(Some(s.generation))
                }
                Err(e) => {
                    let _ = c.execute(unlock, &[&lock_id()]).await;
                    Err(e)
                }
            }
        })?;
        let Some(generation) = granted else {
            return Ok(None);
        };
        let (inner, runtime) = (self.inner.clone(), self.runtime.clone());
        Ok(Some(KeyChangeGuard::releasing(move || {
            let released = bridge::spawn_on(&runtime, RELEASE_TIMEOUT, async move {
                let mut s = inner.session.lock().await;
                // The end of the change is counted before the lock goes (module header,
                // point 4), on the session as it is now: one replaced since (a database
                // restart) took the exclusive lock away with it, and is registered again
                // first. Away: counted when it is back.
                s.pending_bump = true;
                if !ensure(&inner, &mut s).await? {
                    return Ok(());
                }
                let Some(c) = s.client.as_ref() else {
                    return Ok(());
                };
                if s.pending_bump {
                    match bump(c).await {
                        Ok(n) => {
                            s.seen_changes = Some(n);
                            s.pending_bump = false;
                        }
                        Err(e) => {
                            discard(s.client.take());
                            return Err(e);
                        }
                    }
                }
                if s.generation != generation {
                    return Ok(());
                }
                let Some(c) = s.client.as_ref() else {
                    return Ok(());
                };
                if let Err(e) = c
                    .execute("SELECT pg_advisory_unlock($1)", &[&lock_id()])
                    .await
                {
                    discard(s.client.take());
                    return Err(db_err(e));
                }
                Ok(())
            })
            .wait();
            if let Err(e) = released {
                // A session that failed here is discarded: its locks are gone with it.
                tracing::warn!(error = %e, "key-change lock release failed");
            }
        })))
    }
}

/// Counts one granted key change; the new count.
async fn bump(c: &Object) -> Result<u64, StoreError> {
    let next = changes(c).await?.saturating_add(1);
    c.execute(
        "INSERT INTO vault_meta (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        &[&CHANGES_KEY, &next.to_string().into_bytes()],
    )
    .await
    .map_err(db_err)?;
    Ok(next)
}

impl Drop for Instances {
    /// Unregisters at once (not when the server notices the closed socket), so an instance
    /// that was stopped no longer counts when the caller goes on to change keys.
    fn drop(&mut self) {
        let inner = self.inner.clone();
        let done = bridge::spawn_on(&self.runtime, RELEASE_TIMEOUT, async move {
            let mut s = inner.session.lock().await;
            let client = s.client.take();
            // A closed session holds nothing any more: no statement to wait for.
            if let Some(c) = client.as_ref().filter(|c| !c.is_closed()) {
                let _ = c.execute("SELECT pg_advisory_unlock_all()", &[]).await;
            }
            discard(client);
            Ok(())
        })
        .wait();
        if let Err(e) = done {
            tracing::debug!(error = %e, "unregistering from the database");
        }
    }
}
