//! The startup summary of `serve`: one INFO record (and, with text logs, one plain line on
//! stderr) that says what this process is about to do — listen address, public URL, vault
//! address and name, the identities the vault sees and their permissions, renewals on/off and
//! interval, live mode — so a misconfiguration is visible in the first screen of the log, not
//! on the first customer's checkout. Problems with an identity are logged again at ERROR.

use crate::app::SharedState;
use crate::ops::{IdentityCheck, check_vault};
use std::net::SocketAddr;

/// The configured facts the summary states (everything but the vault's answers).
#[derive(Debug, Clone)]
pub struct Facts {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    /// `vault.addr` as written, and what it resolved to.
    pub vault_addr: String,
    pub vault_resolved: SocketAddr,
    pub server_name: String,
    /// `None`: renewals off; `Some(None)`: on, on demand only; `Some(Some(secs))`: periodic.
    pub renewals: Option<Option<u64>>,
    pub live: bool,
}

impl Facts {
    pub fn of(cfg: &crate::config::Config, listen: SocketAddr) -> Self {
        Self {
            listen,
            public_url: cfg.public_url.clone(),
            vault_addr: cfg.vault_addr_text.clone(),
            vault_resolved: cfg.vault.addr,
            server_name: cfg.vault.server_name.clone(),
            renewals: cfg
                .renewals
                .as_ref()
                .map(|r| r.interval.map(|i| i.as_secs())),
            live: cfg.live,
        }
    }
}

/// The summary line, from the facts and the vault's answers.
pub fn line(facts: &Facts, accounts: &IdentityCheck, renewals: Option<&IdentityCheck>) -> String {
    let public = facts
        .public_url
        .clone()
        .unwrap_or_else(|| "not set: links follow the Host header".to_owned());
    let vault = if facts.vault_addr == facts.vault_resolved.to_string() {
        facts.vault_addr.clone()
    } else {
        format!("{} ({})", facts.vault_addr, facts.vault_resolved)
    };
    let renewal = match (facts.renewals, renewals) {
        (None, _) => {
            "off ([renewals] enabled = false: saved-card subscriptions are not charged)".to_owned()
        }
        (Some(interval), check) => {
            let when = match interval {
                Some(s) => format!("every {s}s"),
                None => "on demand only (interval_secs = 0)".to_owned(),
            };
            let who = check.map_or_else(String::new, |c| {
                format!(", {}", c.describe("renewals", "renewals.cert"))
            });
            format!("on, {when}{who}")
        }
    };
    format!(
        "accounts-api started: listen http://{}; public URL {public}; vault {vault} (server name \
         {}): {}; renewals {renewal}; live mode {}",
        facts.listen,
        facts.server_name,
        accounts.describe("accounts", "vault.cert"),
        if facts.live { "on" } else { "off" },
    )
}

/// Asks the vault about our identities, then logs the summary (INFO) and, with text logs, prints
/// it as one plain line on stderr. Each identity problem is logged again at ERROR.
pub async fn summary(state: SharedState, facts: Facts, format: shared::ops::LogFormat) {
    let (accounts, renewals) = check_vault(&state).await;
    let text = line(&facts, &accounts, renewals.as_ref());
    tracing::info!(
        listen = %facts.listen,
        public_url = facts.public_url.as_deref().unwrap_or("not set"),
        vault_addr = %facts.vault_addr,
        vault_server_name = %facts.server_name,
        vault_accounts_identity_ok = accounts.is_ok(),
        renewals = facts.renewals.is_some(),
        live = facts.live,
        "{text}"
    );
    if format == shared::ops::LogFormat::Text {
        eprintln!("{text}");
    }
    for (check, role, setting) in [
        (Some(&accounts), "accounts", "vault.cert"),
        (renewals.as_ref(), "renewals", "renewals.cert"),
    ] {
        match check {
            Some(IdentityCheck::Ok(_)) | None => {}
            Some(c @ IdentityCheck::Unreachable(_)) => {
                tracing::warn!(identity = role, "at start: {}", c.describe(role, setting));
            }
            Some(c) => {
                tracing::error!(identity = role, "at start: {}", c.describe(role, setting));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            vault_addr: "vault.internal:8443".into(),
            vault_resolved: SocketAddr::from(([10, 0, 0, 5], 8443)),
            server_name: "vault.internal".into(),
            renewals: Some(Some(60)),
            live: false,
        }
    }

    #[test]
    fn the_summary_names_every_fact_an_operator_checks_first() {
        let who = |id: &str, p: &[&str]| shared::vault_api::WhoAmI {
            identity: id.into(),
            permissions: p.iter().map(|s| (*s).to_owned()).collect(),
        };
        let l = line(
            &facts(),
            &IdentityCheck::Ok(who("accounts", &["store", "read", "delete"])),
            Some(&IdentityCheck::Ok(who("renewals", &["charge"]))),
        );
        for part in [
            "listen http://127.0.0.1:8080",
            "public URL not set: links follow the Host header",
            "vault vault.internal:8443 (10.0.0.5:8443) (server name vault.internal)",
            "reachable as identity \"accounts\" with permissions [store, read, delete]",
            "renewals on, every 60s, reachable as identity \"renewals\" with permissions [charge]",
            "live mode off",
        ] {
            assert!(l.contains(part), "{part:?} missing in {l}");
        }
        let mut off = facts();
        off.renewals = None;
        off.live = true;
        let l = line(
            &off,
            &IdentityCheck::Unreachable("connect_refused".into()),
            None,
        );
        assert!(l.contains("vault unreachable (connect_refused)"), "{l}");
        assert!(l.contains("renewals off"), "{l}");
        assert!(l.contains("live mode on"), "{l}");
    }
}
