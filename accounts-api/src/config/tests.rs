#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn relative_paths_resolve_against_the_config_file_and_missing_vault_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\ndata = \"state\"\n[vault]\naddr = \"127.0.0.1:8443\"\n\
         ca = \"pki/ca.pem\"\ncert = \"/abs/accounts.pem\"\nkey = \"pki/accounts.key\"\n\
         [renewals]\nenabled = false\n",
    )
    .unwrap();
    let cfg = Config::load(&file).unwrap();
    assert_eq!(cfg.data, dir.path().join("state"));
    assert_eq!(cfg.vault.tls.ca, dir.path().join("pki/ca.pem"));
    assert_eq!(cfg.vault.tls.cert, PathBuf::from("/abs/accounts.pem"));
    assert_eq!(cfg.vault.server_name, "localhost");
    assert!(cfg.renewals.is_none(), "enabled = false turns renewals off");
    assert!(!cfg.live, "live defaults to false");
    assert_eq!(cfg.public_url, None);
    assert_eq!(
        Config::data_folder(&file).unwrap(),
        dir.path().join("state")
    );

    std::fs::write(&file, "data = \"x\"\n[vault]\naddr = \"127.0.0.1:1\"\n").unwrap();
    assert!(
        Config::load(&file)
            .unwrap_err()
            .contains("vault.ca is required")
    );
    std::fs::write(&file, "data = \"x\"\nsurprise = 1\n").unwrap();
    let e = Config::load(&file).unwrap_err();
    assert!(
        e.contains("unknown field `surprise`"),
        "unknown keys are refused by name: {e}"
    );
}

/// `file`: `data`, the `head` lines, a complete `[vault]` table, renewals off, then `tail`.
fn write_config(file: &std::path::Path, head: &str, tail: &str) {
    let text = format!("data = \"x\"\n{head}\n{VAULT}[renewals]\nenabled = false\n{tail}");
    std::fs::write(file, text).unwrap();
}

const VAULT: &str = "[vault]\naddr = \"localhost:8443\"\nca = \"pki/ca.pem\"\n\
                     cert = \"pki/accounts.pem\"\nkey = \"pki/accounts.key\"\n";

#[test]
fn renewals_are_on_by_default_with_the_certificate_next_to_the_accounts_one_or_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    std::fs::write(&file, format!("data = \"x\"\n{VAULT}")).unwrap();
    let e = Config::load(&file).unwrap_err();
    assert!(
        e.contains("renewals are on (the default) but renewals.cert")
            && e.contains(&dir.path().join("pki/renewals.pem").display().to_string())
            && e.contains("enabled = false"),
        "{e}"
    );
    std::fs::create_dir_all(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/renewals.pem"), "x").unwrap();
    std::fs::write(dir.path().join("pki/renewals.key"), "x").unwrap();
    let cfg = Config::load(&file).unwrap();
    let r = cfg.renewals.unwrap();
    assert_eq!(r.cert, dir.path().join("pki/renewals.pem"));
    assert_eq!(r.key, dir.path().join("pki/renewals.key"));
    assert_eq!(r.interval, Some(std::time::Duration::from_secs(60)));
    // A host name resolves at load; the TLS name stays its own setting.
    assert!(cfg.vault.addr.ip().is_loopback(), "{}", cfg.vault.addr);
    assert_eq!(cfg.vault.addr.port(), 8443);
    assert_eq!(cfg.vault_addr_text, "localhost:8443");
}

#[test]
fn public_url_and_live_come_from_the_file_and_a_url_without_scheme_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    let write = |head: &str| write_config(&file, head, "");
    write("public_url = \"https://accounts.example.com/\"\nlive = true");
    let cfg = Config::load(&file).unwrap();
    assert_eq!(
        cfg.public_url.as_deref(),
        Some("https://accounts.example.com")
    );
    assert!(cfg.live);
    write("public_url = \"accounts.example.com\"");
    let e = Config::load(&file).unwrap_err();
    assert!(
        e.starts_with("public_url: ") && e.contains("https://"),
        "{e}"
    );
    write("live = \"yes\"");
    assert!(Config::load(&file).unwrap_err().contains("live"));
}

#[test]
fn retention_windows_come_from_the_file_and_an_out_of_range_one_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    let write = |tail: &str| write_config(&file, "", tail);
    write("");
    assert_eq!(
        Config::load(&file).unwrap().retention,
        crate::settings::Retention::default()
    );
    write("[retention]\nidempotency_hours = 72\nprocessed_events_days = 90\n");
    let r = Config::load(&file).unwrap().retention;
    assert_eq!(r.idempotency, std::time::Duration::from_secs(72 * 3600));
    assert_eq!(
        r.processed_events,
        std::time::Duration::from_secs(90 * 86_400)
    );
    write("[retention]\nidempotency_hours = 0\n");
    let e = Config::load(&file).unwrap_err();
    assert!(
        e.starts_with("retention.idempotency_hours: 0 hours is out of range"),
        "{e}"
    );
    write("[retention]\nevents_days = 3\n");
    let e = Config::load(&file).unwrap_err();
    assert!(e.contains("unknown field `events_days`"), "{e}");
}

#[test]
fn a_trusted_proxy_header_needs_its_proxies_and_is_believed_only_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    let write = |tail: &str| write_config(&file, "", tail);
    write("[http]\ntrusted_proxy_header = \"x-forwarded-for\"\n");
    let e = Config::load(&file).unwrap_err();
    assert!(e.contains("http.trusted_proxies is empty"), "{e}");
    write("[http]\ntrusted_proxies = [\"10.0.0.0/40\"]\n");
    let e = Config::load(&file).unwrap_err();
    assert!(e.starts_with("http.trusted_proxies: "), "{e}");
    write(
        "[http]\ntrusted_proxy_header = \"X-Forwarded-For\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    let c = Config::load(&file).unwrap().limits.client_address;
    let mut h = axum::http::HeaderMap::new();
    h.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
    let proxy: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let stranger: std::net::IpAddr = "203.0.113.1".parse().unwrap();
    assert_eq!(
        c.resolve(proxy, &h),
        "198.51.100.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(c.resolve(stranger, &h), stranger);
}

#[test]
fn webhooks_take_their_allow_list_and_limits_from_the_file_and_a_bad_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    let write = |table: &str| write_config(&file, "", table);
    write("");
    let cfg = Config::load(&file).unwrap();
    assert_eq!(
        cfg.webhooks.egress,
        crate::egress::Policy::strict(),
        "serve is strict"
    );
    assert_eq!(
        (cfg.webhooks.per_store, cfg.webhooks.in_flight_per_store),
        (10, 8)
    );
    write(
        "[webhooks]\nallow = [\"127.0.0.0/8\", \"hooks.internal\"]\nper_store = 3\nin_flight_per_store = 2\n",
    );
    let cfg = Config::load(&file).unwrap();
    assert_eq!(
        cfg.webhooks.egress.describe(),
        "127.0.0.0/8, hooks.internal"
    );
    assert_eq!(
        (cfg.webhooks.per_store, cfg.webhooks.in_flight_per_store),
        (3, 2)
    );
    write("[webhooks]\nallow = [\"10.0.0.0/40\"]\n");
    let e = Config::load(&file).unwrap_err();
    assert!(
        e.starts_with("webhooks.allow: ") && e.contains("10.0.0.0/40"),
        "{e}"
    );
    write("[webhooks]\nper_store = 0\n");
    assert!(
        Config::load(&file)
            .unwrap_err()
            .contains("webhooks.per_store")
    );
}
