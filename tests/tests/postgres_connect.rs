//! What accounts-api requires of the PostgreSQL it connects to (issue 11): with a database `ca`,
//! TLS, the server's certificate chaining to that CA — a server whose certificate another CA
//! signed, or one without TLS, refuses the start (without `ca`, plain text only to this machine:
//! unit-tested in `shared::pg`); and durable commits — a database with `synchronous_commit =
//! off` refuses the start. And what the start does to a database an older version wrote (its
//! migrations). The servers are throwaway ones on 127.0.0.1 (`pgtest`).

use accounts_api::storage::{PgStorage, Storage as _};
use shared::pg::PgSettings;
use shared::pki::DevCa;
use std::path::Path;
use std::time::Duration;

fn settings(url: String, ca: Option<&Path>) -> PgSettings {
    PgSettings {
        url: shared::SecretString::new(url),
        pool_size: 2,
        ca: ca.map(Path::to_path_buf),
        client_cert: None,
        connect_timeout: Duration::from_secs(5),
    }
}

fn write_ca(dir: &Path, name: &str, ca: &DevCa) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, ca.cert_pem()).unwrap_or_else(|e| panic!("{e}"));
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_tls_only_with_the_ca_that_signed_its_certificate() {
    shared::tls::install_crypto_provider();
    let ca = DevCa::generate("Database CA").unwrap_or_else(|e| panic!("{e}"));
    let cert = ca
        .issue_server("database", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(pg) = pgtest::private_tls(&cert.cert_pem, &cert.key_pem) else {
        return;
    };
    let dir = tests::temp_dir("strongroom-pg-tls-");
    let right = write_ca(dir.path(), "ca.pem", &ca);
    let other = DevCa::generate("Another CA").unwrap_or_else(|e| panic!("{e}"));
    let wrong = write_ca(dir.path(), "other-ca.pem", &other);
    let url = pg.url("postgres");

    // The configured CA: the storage opens (migrations ran over the connection) and works, and
    // the session is encrypted.
    let s = settings(url.clone(), Some(&right));
    let storage = PgStorage::open(&s)
        .await
        .unwrap_or_else(|e| panic!("TLS with the right CA: {e}"));
    assert!(storage.sweep_expired(0).await.is_ok());
    let pool = shared::pg::pool(&s).unwrap_or_else(|e| panic!("{e}"));
    let conn = shared::pg::connection(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let row = conn
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let encrypted: bool = row.get(0);
    assert!(encrypted, "the session is TLS");

    // Another CA: the server's certificate is not trusted, the start is refused.
    let refused = PgStorage::open(&settings(url.clone(), Some(&wrong))).await;
    let err = refused
        .err()
        .unwrap_or_else(|| panic!("a foreign CA must not be trusted"));
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_configured_a_database_without_tls_is_refused_not_used_in_plain_text() {
    shared::tls::install_crypto_provider();
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let dir = tests::temp_dir("strongroom-pg-tls-");
    let ca = DevCa::generate("Database CA").unwrap_or_else(|e| panic!("{e}"));
    let path = write_ca(dir.path(), "ca.pem", &ca);
    // The shared test server runs without TLS.
    let refused = PgStorage::open(&settings(url.clone(), Some(&path))).await;
    assert!(refused.is_err(), "TLS was required");
    // The same server in plain text (it is on this machine) works.
    assert!(PgStorage::open(&settings(url, None)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_would_lose_acknowledged_commits_is_refused_at_start() {
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let server = pgtest::require().unwrap_or_else(|| panic!("the server runs"));
    let db = url.rsplit('/').next().unwrap_or_default();
    server
        .psql(&format!("ALTER DATABASE {db} SET synchronous_commit = off"))
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = PgStorage::open(&settings(url.clone(), None)).await;
    let err = refused
        .err()
        .unwrap_or_else(|| panic!("synchronous_commit = off was accepted"));
    assert!(err.contains("synchronous_commit = off"), "{err}");
    server
        .psql(&format!("ALTER DATABASE {db} SET synchronous_commit = on"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(PgStorage::open(&settings(url, None)).await.is_ok());
}

/// A subscription row as a version before migration 7 wrote it: a manual one (no saved card)
/// already reminded of the period due at `next`, with no work time.
fn reminded_manual(id: &str, state: &str, next: i64) -> String {
    serde_json::json!({
        "id": id, "store": "acme-1a2b3c4d", "account": "AZLd3wv9cTyMHb8FtDqE1w",
        "order": "AZLd3wv9cTyMHb8FtDqE1y", "product": "pro", "quantity": 1, "price": 1495,
        "currency": "USD", "intervalUnit": "month", "intervalLength": 1, "state": state,
        "autoRenew": false, "paymentMethod": null, "paymentKind": "card", "brand": null,
        "last4": null, "expiry": null, "begin": next - 31 * 86_400_000_i64, "next": next,
        "canceled": null,
        "renewal": {"pending": null, "declineReason": null, "failedAttempts": 0,
            "retryAt": null, "cardExpiring": false, "expiringNotified": null,
            "reminded": next, "lastCharged": null},
        "live": false
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_gives_reminded_manual_subscriptions_work_at_their_date_and_grace_end() {
    use accounts_api::model::{StoreId, SubscriptionId};
    use accounts_api::storage::postgres::schema::MIGRATIONS;
    let Some(url) = pgtest::fresh_database() else {
        return;
    };
    let s = settings(url, None);
    let pool = shared::pg::pool(&s).unwrap_or_else(|e| panic!("{e}"));
    // The schema as migration 6 left it, and two rows the version of then wrote.
    shared::pg::migrate(&pool, "accounts-api", &MIGRATIONS[..6])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let next: i64 = 1_801_353_600_000;
    let (active, overdue) = ("AZLd3wv9cTyMHb8FtDqE1z", "AZLd3wv9cTyMHb8FtDqE1v");
    let conn = shared::pg::connection(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (id, state) in [(active, "active"), (overdue, "overdue")] {
        conn.execute(
            "INSERT INTO subscriptions (store, id, account, work_at, doc) \
             VALUES ('acme-1a2b3c4d', $1, 'AZLd3wv9cTyMHb8FtDqE1w', NULL, $2::text::jsonb)",
            &[&id, &reminded_manual(id, state, next)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    drop(conn);

    // The start applies migration 7: unpaid at its date the active one is due (it becomes
    // overdue), and the overdue one at the end of its grace (it ends), as the renewal job
    // computes for rows it writes itself.
    let storage = PgStorage::open(&s).await.unwrap_or_else(|e| panic!("{e}"));
    let due = async |at: i64| -> Vec<String> {
        let subs = storage
            .due_subscriptions(at, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        subs.into_iter().map(|s| s.id.as_str().to_owned()).collect()
    };
    assert!(due(next - 1).await.is_empty());
    assert_eq!(due(next).await, [active]);
    let grace_end = next + 5 * 86_400_000;
    assert_eq!(due(grace_end - 1).await, [active]);
    assert_eq!(due(grace_end).await, [active, overdue]);
    let store = StoreId::parse("acme-1a2b3c4d").unwrap_or_else(|e| panic!("{e}"));
    let id = SubscriptionId::parse(overdue).unwrap_or_else(|e| panic!("{e}"));
    let read = storage.subscription(&store, &id).await;
    let read = read.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read.map(|r| r.work_at()),
        Some(Some(grace_end)),
        "the same rule"
    );
}
