//! The webhook dispatcher: the delivery loop over the durable outbox.
//!
//! Every event row is written with one outbox row per webhook of its store, in the same
//! transaction (the storage port's `Extras`). This loop reads due rows, posts them per webhook as
//! `{"events":[…]}` (oldest first, at most [`BATCH`] per post) and settles them:
//! - `200` → every event in the post is marked processed;
//! - `202` → only the event ids listed in the body (one per line) are marked processed; the
//!   others stay unprocessed for the pull API and are not re-sent (the receiver answered them);
//! - anything else, a timeout or a refused connection → the same events are retried with
//!   exponential backoff (base × 2^(attempt−1), at most an hour). After the last attempt the
//!   rows are dropped and the events stay unprocessed for `GET /events/unprocessed`.
//!
//! Delivery is at least once: the settling write happens after the receiver answered, so a
//! crash in between re-sends the post after restart (receivers dedupe by event id).
//!
//! Signatures: with a secret, `X-FS-Signature` = base64(HMAC-SHA256(secret, raw body)), as
//! FastSpring sends it. Against replay (FastSpring's signature has none) every post also carries
//! `X-Strongroom-Timestamp` (unix seconds) and `X-Strongroom-Signature` =
//! base64(HMAC-SHA256(secret, timestamp + "." + body)); a receiver that checks it and refuses
//! old timestamps cannot be fed a recorded post again. The secret never reaches a log.

use crate::model::{EventId, OutboxState, StoreId, WebhookId, now_ms};
use crate::settings::Settings;
use crate::storage::{OutboxItem, Storage};
use base64::Engine;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Most events in one post.
pub const BATCH: usize = 100;
/// Most posts in flight at once (each to a different webhook).
const MAX_IN_FLIGHT: usize = 64;
/// How often the loop looks for due rows.
const TICK: Duration = Duration::from_millis(200);

fn sign(secret: &shared::SecretString, parts: &[&[u8]]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

/// Delay before attempt `attempts + 1` after `attempts` failures.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

/// The delivery loop's HTTP client (built before the loop starts, so a failure stops the start).
pub fn client(settings: &Settings) -> Result<reqwest::Client, String> {
    shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(settings.webhook_timeout)
        .connect_timeout(settings.webhook_timeout.min(Duration::from_secs(5)))
        // A receiver answers; it does not send us elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("webhook client: {e}"))
}

/// The delivery loop (and the sweeper of expired links and sessions), until `shutdown`; posts
/// in flight then are awaited, so their outcome is settled before the process ends.
pub async fn dispatch(
    events: Arc<dyn Storage>,
    http: reqwest::Client,
    settings: Settings,
    mut shutdown: crate::jobs::Shutdown,
) {
    let mut last_sweep = 0i64;
    let in_flight: Arc<std::sync::Mutex<InFlight>> = Arc::default();
    let mut posts = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => break,
        }
        while posts.try_join_next().is_some() {}
        let now = now_ms();
        if now - last_sweep > 60_000 {
            last_sweep = now;
            let _ = events.sweep_expired(now).await;
        }
        // Rows read by this scan may already be settled by a post that ends while the scan
        // runs: a webhook whose post ended after this instant waits for the next scan.
        let scan_started = std::time::Instant::now();
        let due = match events.outbox_due(now, 10_000).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox unreadable");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        // Group per (store, webhook); ids are time-ordered, so each group is oldest first.
        let mut groups: BTreeMap<(StoreId, WebhookId), Vec<OutboxItem>> = BTreeMap::new();
        for item in due {
            groups
                .entry((item.store.clone(), item.hook.clone()))
                .or_default()
                .push(item);
        }
        for ((store, hook), mut items) in groups {
            // One post at a time per webhook (never the same events twice in parallel),
            // without a slow receiver holding up the other webhooks.
            let key = (store.clone(), hook.clone());
            match in_flight.lock() {
                Ok(mut f) => {
                    let settled_since = f.ended.get(&key).is_some_and(|t| *t >= scan_started);
                    if settled_since || f.busy.len() >= MAX_IN_FLIGHT || !f.busy.insert(key.clone())
                    {
                        continue;
                    }
                }
                Err(_) => continue,
            }
            items.sort_by(|a, b| a.event.cmp(&b.event));
            items.truncate(BATCH);
            let (events, http, settings, in_flight) = (
                Arc::clone(&events),
                http.clone(),
                settings.clone(),
                Arc::clone(&in_flight),
            );
            posts.spawn(async move {
                deliver(events.as_ref(), &http, &settings, &store, &hook, items).await;
                if let Ok(mut f) = in_flight.lock() {
                    f.busy.remove(&key);
                    if f.ended.len() > 4 * MAX_IN_FLIGHT {
                        let old = std::time::Instant::now() - Duration::from_secs(60);
                        f.ended.retain(|_, t| *t > old);
                    }
                    f.ended.insert(key, std::time::Instant::now());
                }
            });
        }
    }
    while posts.join_next().await.is_some() {}
}

/// The webhooks being posted to by this process, and when each one's last post ended.
#[derive(Default)]
struct InFlight {
    busy: HashSet<(StoreId, WebhookId)>,
    ended: std::collections::HashMap<(StoreId, WebhookId), std::time::Instant>,
}

/// Posts one batch to one webhook and settles it.
async fn deliver(
    events: &dyn Storage,
    http: &reqwest::Client,
    settings: &Settings,
    store: &StoreId,
    hook_id: &WebhookId,
    items: Vec<OutboxItem>,
) {
    let ids: Vec<EventId> = items.iter().map(|i| i.event.clone()).collect();
    let hook = match events.webhooks(store).await {
        Ok(hooks) => hooks.into_iter().find(|h| h.id == *hook_id),
        Err(e) => {
            tracing::error!(error = %e, "webhooks unreadable");
            return;
        }
    };
    let Some(hook) = hook else {
        let _ = events.outbox_settle(store, hook_id, &ids, &[]).await;
        return;
    };
    let mut bodies = Vec::with_capacity(ids.len());
    let mut sent = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Ok(Some(ev)) = events.event(store, id).await {
            // The delivery carries each event as the events API shows it.
            bodies.push(crate::http::views::EventView::of(&ev, None));
            sent.push(id.clone());
        }
    }
    if sent.is_empty() {
        let _ = events.outbox_settle(store, hook_id, &ids, &[]).await;
        return;
    }
    let body = serde_json::json!({ "events": bodies }).to_string();
    let ts = (now_ms() / 1000).to_string();
    let mut req = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-strongroom-timestamp", &ts);
    if let Some(secret) = &hook.secret {
        req = req
            .header("x-fs-signature", sign(secret, &[body.as_bytes()]))
            .header(
                "x-strongroom-signature",
                sign(secret, &[ts.as_bytes(), b".", body.as_bytes()]),
            );
    }
    let outcome = match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match status {
                200 => Ok(sent.clone()),
                202 => {
                    let text = resp.text().await.unwrap_or_default();
                    let listed: HashSet<&str> = text.lines().map(str::trim).collect();
                    Ok(sent
                        .iter()
                        .filter(|id| listed.contains(id.as_str()))
                        .cloned()
                        .collect())
                }
                other => Err(format!("status {other}")),
            }
        }
        Err(e) => Err(if e.is_timeout() {
            "timeout".to_owned()
        } else if e.is_connect() {
            "connect".to_owned()
        } else {
            "transport".to_owned()
        }),
    };
    let result = match outcome {
        Ok(processed) => {
            tracing::info!(
                store = store.as_str(),
                webhook = hook_id.as_str(),
                events = sent.len(),
                processed = processed.len(),
                "webhook delivered"
            );
            crate::ops::metrics().inc("webhook_deliveries_total", &[("outcome", "delivered")]);
            events.outbox_settle(store, hook_id, &ids, &processed).await
        }
        Err(why) => {
            // Each event keeps its own attempt count: one that joined this post late is not
            // given up early because an older one in the same post has failed more often.
            let now = now_ms();
            let mut exhausted = Vec::new();
            let mut retry = Vec::new();
            for item in &items {
                let attempts = item.attempts + 1;
                if attempts >= settings.webhook_max_attempts {
                    exhausted.push(item.event.clone());
                } else {
                    let delay = backoff(settings.webhook_retry_base, attempts);
                    retry.push((
                        item.event.clone(),
                        OutboxState {
                            attempts,
                            due: now + delay.as_millis() as i64,
                        },
                    ));
                }
            }
            crate::ops::metrics().inc("webhook_deliveries_total", &[("outcome", "failed")]);
            crate::ops::metrics().add("webhook_retries_total", &[], retry.len() as u64);
            crate::ops::metrics().add("webhook_events_given_up_total", &[], exhausted.len() as u64);
            if !retry.is_empty() {
                tracing::info!(
                    store = store.as_str(),
                    webhook = hook_id.as_str(),
                    events = retry.len(),
                    why,
                    "webhook delivery failed; will retry"
                );
            }
            if !exhausted.is_empty() {
                tracing::warn!(
                    store = store.as_str(),
                    webhook = hook_id.as_str(),
                    events = exhausted.len(),
                    why,
                    "webhook delivery gave up; the events stay unprocessed for the events API"
                );
            }
            match events.outbox_retry(store, hook_id, &retry).await {
                Ok(()) => events.outbox_settle(store, hook_id, &exhausted, &[]).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "webhook outbox update failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_base64_of_hmac_sha256_over_the_raw_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let s = shared::SecretString::new("Jefe".into());
        let expected = base64::engine::general_purpose::STANDARD.encode(
            hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                .unwrap_or_default(),
        );
        assert_eq!(sign(&s, &[b"what do ya want for nothing?"]), expected);
    }

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), Duration::from_millis(100));
        assert_eq!(backoff(b, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, 60), Duration::from_secs(3600));
    }
}
