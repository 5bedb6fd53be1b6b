//! The subscription lifecycle in end-to-end tests, on sled (`renewals.rs`) and on the PostgreSQL
//! dev cluster (`accounts_cluster.rs`): time moves through `accounts-api dev`'s test clock
//! (`STRONGROOM_DEV_CLOCK_FILE`: an offset in ms added to the system clock, read at every use by
//! dev and by every instance of a dev cluster), never by sleeping through a period; the sandbox
//! processor's ledger is the witness of what was charged.

use crate::accounts::{Merchant, System, start_cluster_with_env, start_system_with_env};
use crate::{sandbox, temp_dir};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DAY_MS: i64 = 86_400_000;

/// A dev clock: the offset file and the environment that points `accounts-api dev` at it.
pub struct TestClock {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClock {
    pub fn new() -> Self {
        let dir = temp_dir("strongroom-clock-");
        let file = dir.path().join("offset-ms");
        std::fs::write(&file, "0").unwrap_or_else(|e| panic!("{e}"));
        Self { _dir: dir, file }
    }

    /// The environment of a system on this clock, its renewal job(s) running every second.
    fn env(&self) -> [(&str, &str); 2] {
        [
            (
                "STRONGROOM_DEV_CLOCK_FILE",
                self.file.to_str().unwrap_or_default(),
            ),
            ("STRONGROOM_RENEWALS_INTERVAL_SECS", "1"),
        ]
    }

    /// `accounts-api dev` (sled) on this clock in a fresh folder named `prefix…`.
    pub fn start_system(&self, prefix: &str) -> System {
        start_system_with_env(Arc::new(temp_dir(prefix)), &self.env())
    }

    /// `accounts-api dev --database-url url --instances n` with every instance on this clock.
    pub fn start_cluster(&self, url: &str, n: usize) -> System {
        start_cluster_with_env(url, n, &self.env())
    }

    /// Moves the lifecycle's "now" to `at` (ms).
    pub fn set(&self, at: i64) {
        let offset = at - accounts_api::model::now_ms();
        std::fs::write(&self.file, offset.to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `GET /subscriptions/{sub}` through `m`; the object (a failed read fails the test).
pub async fn subscription_of(m: &Merchant, sub: &str) -> Value {
    let a = m.get_subscription(sub).await;
    assert!(a.status.is_success(), "{}", a.text);
    a.json
}

/// Polls `GET /subscriptions/{sub}` through `m` until `done` holds (the renewal jobs run every
/// second); at most 20 s.
pub async fn wait_for(m: &Merchant, sub: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = subscription_of(m, sub).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The processor's charges for `sub` (its idempotency keys are `{store}:{sub}:…`).
pub async fn charges_of(processor: &str, store: &str, sub: &str) -> Vec<Value> {
    let prefix = format!("{store}:{sub}:");
    sandbox::charges(processor).await["charges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c["idempotencyKey"]
                .as_str()
                .is_some_and(|k| k.starts_with(&prefix))
        })
        .collect()
}

/// Moves the clock to `at`, lets the jobs run, and checks that `sub` is still `state` and
/// `active: true` (nothing ended it early).
pub async fn still_running_at(clock: &TestClock, m: &Merchant, sub: &str, at: i64, state: &str) {
    clock.set(at);
    some_job_runs().await;
    let s = subscription_of(m, sub).await;
    assert_eq!(
        (&s["state"], &s["active"]),
        (&Value::from(state), &Value::Bool(true)),
        "{s}"
    );
}

/// Lets the renewal job (every second) run a few times.
pub async fn some_job_runs() {
    tokio::time::sleep(Duration::from_millis(3_500)).await;
}

/// The end of a pause of monthly `sub` whose resume date is `resume`: a day before it (the jobs
/// having run) nothing is charged and it is still paused; at it, it becomes active, moves one
/// month on and — the jobs running on — is charged exactly once, with the resume period's
/// processor key.
pub async fn through_a_pause_to_its_resume_date(
    clock: &TestClock,
    m: &Merchant,
    processor: &str,
    sub: &str,
    resume: i64,
) {
    use accounts_api::model::{IntervalUnit, add_interval};
    let store = m.creds.store.as_str();
    clock.set(resume - DAY_MS);
    some_job_runs().await;
    assert!(
        charges_of(processor, store, sub).await.is_empty(),
        "no charge while paused"
    );
    assert_eq!(subscription_of(m, sub).await["state"], "paused");

    clock.set(resume + 60_000);
    let s = wait_for(m, sub, "resumed and charged", |s| {
        s["state"] == "active" && s["next"].as_i64() > Some(resume)
    })
    .await;
    assert_eq!(s["next"], add_interval(resume, IntervalUnit::Month, 1));
    some_job_runs().await;
    let charged = charges_of(processor, store, sub).await;
    assert_eq!(charged.len(), 1, "{charged:?}");
    assert_eq!(
        charged[0]["idempotencyKey"],
        format!("{store}:{sub}:{resume}")
    );
    assert_eq!(charged[0]["status"], "succeeded");
}
