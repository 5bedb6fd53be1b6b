//! Connection limits against the real binary: the connection cap refuses connections beyond it,
//! and idle keep-alive connections are closed by the header-read timeout, freeing their slots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tests::temp_dir;
use tests::vault::{VaultProcess, init_vault, serve_command};

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_idle_ones_time_out() {
    let dir = temp_dir("vault-limits");
    let vdir = dir.path().join("v");
    init_vault(&vdir);
    let toml = vdir.join("vault.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("max_connections = 512", "max_connections = 2")
        .replace(
            "header_read_timeout_secs = 30",
            "header_read_timeout_secs = 1",
        );
    assert!(text.contains("max_connections = 2") && text.contains("header_read_timeout_secs = 1"));
    std::fs::write(&toml, text).unwrap();
    let v = VaultProcess::serve(&vdir, serve_command(&vdir));

    // Two clients, each keeping its keep-alive connection open in its pool.
    let a = v.client("accounts");
    let b = v.client("accounts");
    for c in [&a, &b] {
        assert_eq!(
            c.get(v.url("/v1/health"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            200
        );
    }
    let third = v.client("accounts");
    assert!(
        third.get(v.url("/v1/health")).send().await.is_err(),
        "a third connection was accepted"
    );

    // Idle connections are closed after the header-read timeout; the slots come back.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let fourth = v.client("accounts");
    let resp = fourth.get(v.url("/v1/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
