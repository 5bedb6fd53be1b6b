//! The webhook dispatcher: the delivery loop over the durable outbox.
//!
//! Every event row is written with one outbox row per webhook of its store, in the same
//! transaction (the storage port's `Extras`). This loop reads due rows, posts them per webhook as
//! `{"events":[…]}` (oldest first, at most [`BATCH`] per post) and settles them, in one storage
//! transaction per post ([`OutboxSettlement`]):
//! - `200` → every event in the post is marked processed and its row removed;
//! - `202` → only the event ids listed in the body (FastSpring's convention: one id per line)
//!   are marked processed and their rows removed. The others stay unprocessed and are re-sent
//!   on the same backoff as a failure, while they stay unprocessed: the receiver has them, so
//!   once one is marked processed elsewhere (the pull API, another webhook) its row is dropped
//!   unsent ([`OutboxState::received`]). Ids listed that were not in the post are ignored; a
//!   body that is not such a list, or longer than [`MAX_ACK_BODY`], acknowledges nothing;
//! - anything else, a timeout or a refused connection → the same events are retried with
//!   exponential backoff (base × 2^(attempt−1), at most an hour).
//!
//! After the last attempt the rows are dropped and the events stay unprocessed for
//! `GET /events/unprocessed`. An acknowledged event is never posted to that webhook again: its
//! row goes in the transaction that marks it processed, and one post at a time reaches a webhook
//! (per process here; across instances the PostgreSQL backend's delivery lease).
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
use crate::storage::{OutboxItem, OutboxSettlement, Storage};
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
/// Most bytes of a `202` body read. A full list for a post of [`BATCH`] ids of at most 64
/// characters is under 7 KiB; a longer body acknowledges nothing. Bounded so that a hostile or
/// broken receiver cannot make the dispatcher buffer an endless body (the client's timeout
/// bounds how long it may take).
pub const MAX_ACK_BODY: usize = 64 * 1024;

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

/// The delivery loop, until `shutdown`; posts in flight then are awaited, so their outcome is
/// settled before the process ends. (Expired links, sessions, Idempotency-Key records and
/// processed events are swept by `jobs::retention`.)
pub async fn dispatch(
    events: Arc<dyn Storage>,
    http: reqwest::Client,
    settings: Settings,
    mut shutdown: crate::jobs::Shutdown,
) {
    let in_flight: Arc<std::sync::Mutex<InFlight>> = Arc::default();
    let mut posts = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => break,
        }
        while posts.try_join_next().is_some() {}
        let now = now_ms();
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

/// Reads at most `max` bytes of a response body: `None` when it is longer (or breaks off).
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if chunk.len() > max - body.len() {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// The event ids a `202` body lists: UTF-8 text, one id per line (surrounding whitespace, a
/// CR before the LF and blank lines are ignored). `None` when any line is not an event id: a
/// body that is something else (an HTML page, JSON) acknowledges nothing, rather than whatever
/// ids it happens to contain.
fn listed_ids(body: &[u8]) -> Option<HashSet<EventId>> {
    std::str::from_utf8(body)
        .ok()?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| EventId::parse(l).ok())
        .collect()
}

/// What the receiver acknowledged of one post, or why the post failed.
enum Answer {
    /// `200`: every event of the post.
    All,
    /// `202`: the ids its body lists (`None`: the body was not a list of ids).
    Listed(Option<HashSet<EventId>>),
    Failed(String),
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
    let settle = |s: OutboxSettlement| async move {
        if let Err(e) = events.outbox_settle(store, hook_id, &s).await {
            tracing::error!(error = %e, "webhook outbox update failed");
        }
    };
    let hook = match events.webhooks(store).await {
        Ok(hooks) => hooks.into_iter().find(|h| h.id == *hook_id),
        Err(e) => {
            tracing::error!(error = %e, "webhooks unreadable");
            // Rows untouched (due again next tick); the delivery lease ends.
            settle(OutboxSettlement::default()).await;
            return;
        }
    };
    let Some(hook) = hook else {
        let remove = items.into_iter().map(|i| i.event).collect();
        settle(OutboxSettlement {
            remove,
            ..Default::default()
        })
        .await;
        return;
    };
    // Rows not to post: the event is gone, or the webhook has it and it was processed since.
    let mut remove = Vec::new();
    let mut bodies = Vec::with_capacity(items.len());
    let mut sent = Vec::with_capacity(items.len());
    for item in items {
        match events.event(store, &item.event).await {
            Ok(Some(ev)) if item.received && ev.processed => remove.push(item.event),
            Ok(Some(ev)) => {
                // The delivery carries each event as the events API shows it.
                bodies.push(crate::http::views::EventView::of(&ev, None));
                sent.push(item);
            }
            Ok(None) => remove.push(item.event),
            Err(e) => {
                tracing::error!(error = %e, "event unreadable");
                settle(OutboxSettlement::default()).await;
                return;
            }
        }
    }
    if sent.is_empty() {
        settle(OutboxSettlement {
            remove,
            ..Default::default()
        })
        .await;
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
    let answer = match req.body(body).send().await {
        Ok(resp) => match resp.status().as_u16() {
            200 => Answer::All,
            202 => Answer::Listed(
                read_bounded(resp, MAX_ACK_BODY)
                    .await
                    .and_then(|b| listed_ids(&b)),
            ),
            other => Answer::Failed(format!("status {other}")),
        },
        Err(e) => Answer::Failed(if e.is_timeout() {
            "timeout".to_owned()
        } else if e.is_connect() {
            "connect".to_owned()
        } else {
            "transport".to_owned()
        }),
    };
    let plan = settlement(settings, now_ms(), remove, sent, &answer);
    let (pending, exhausted) = (plan.settlement.retry.len(), plan.exhausted);
    let (store_s, hook_s) = (store.as_str(), hook_id.as_str());
    let metrics = crate::ops::metrics();
    match &answer {
        Answer::Failed(why) => {
            metrics.inc("webhook_deliveries_total", &[("outcome", "failed")]);
            if pending > 0 {
                tracing::info!(
                    store = store_s,
                    webhook = hook_s,
                    events = pending,
                    why,
                    "webhook delivery failed; will retry"
                );
            }
        }
        Answer::All | Answer::Listed(_) => {
            metrics.inc("webhook_deliveries_total", &[("outcome", "delivered")]);
            if matches!(answer, Answer::Listed(None)) {
                tracing::warn!(
                    store = store_s,
                    webhook = hook_s,
                    "webhook answered 202 with a body that is not a list of event ids; \
                     nothing acknowledged"
                );
            }
            tracing::info!(
                store = store_s,
                webhook = hook_s,
                events = plan.posted,
                processed = plan.settlement.processed.len(),
                pending,
                "webhook delivered"
            );
        }
    }
    metrics.add("webhook_retries_total", &[], pending as u64);
    metrics.add("webhook_events_given_up_total", &[], exhausted as u64);
    if exhausted > 0 {
        tracing::warn!(
            store = store_s,
            webhook = hook_s,
            events = exhausted,
            "webhook delivery gave up; the events stay unprocessed for the events API"
        );
    }
    settle(plan.settlement).await;
}

/// How one post settles its rows (a pure function of the answer, for the tests).
struct Plan {
    settlement: OutboxSettlement,
    /// Events in the post.
    posted: usize,
    /// Of `settlement.remove`, the rows whose attempts ran out.
    exhausted: usize,
}

/// Acknowledged events: row removed, marked processed. The others: one more attempt counted
/// (each event its own count, so one that joined a post late is not given up early because an
/// older one has failed more often), re-sent after the backoff, or dropped after the last one.
fn settlement(
    settings: &Settings,
    now: i64,
    remove: Vec<EventId>,
    sent: Vec<OutboxItem>,
    answer: &Answer,
) -> Plan {
    let mut plan = Plan {
        settlement: OutboxSettlement {
            remove,
            ..Default::default()
        },
        posted: sent.len(),
        exhausted: 0,
    };
    let s = &mut plan.settlement;
    for item in sent {
        let acknowledged = match answer {
            Answer::All => true,
            Answer::Listed(ids) => ids.as_ref().is_some_and(|ids| ids.contains(&item.event)),
            Answer::Failed(_) => false,
        };
        if acknowledged {
            s.processed.push(item.event.clone());
            s.remove.push(item.event);
            continue;
        }
        let attempts = item.attempts + 1;
        if attempts >= settings.webhook_max_attempts {
            plan.exhausted += 1;
            s.remove.push(item.event);
        } else {
            let delay = backoff(settings.webhook_retry_base, attempts);
            s.retry.push((
                item.event,
                OutboxState {
                    attempts,
                    due: now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                    // A 202 answered the post: the webhook has the event.
                    received: item.received || matches!(answer, Answer::Listed(_)),
                },
            ));
        }
    }
    plan
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

    fn id(s: &str) -> EventId {
        crate::model::test_id(s)
    }

    fn item(event: &str, attempts: u32, received: bool) -> OutboxItem {
        OutboxItem {
            store: crate::model::test_id("st"),
            hook: crate::model::test_id("h"),
            event: id(event),
            attempts,
            received,
        }
    }

    #[test]
    fn a_202_body_is_one_event_id_per_line_or_acknowledges_nothing() {
        let ids = |b: &[u8]| {
            listed_ids(b).map(|s| s.into_iter().collect::<std::collections::BTreeSet<_>>())
        };
        assert_eq!(
            ids(b"e1\r\n  e2 \n\ne3\n"),
            Some([id("e1"), id("e2"), id("e3")].into())
        );
        assert_eq!(ids(b""), Some(Default::default()));
        // Not a list of ids: nothing, even where a line would be one.
        assert_eq!(ids(b"<html>ok</html>\ne1"), None);
        assert_eq!(ids(b"[\"e1\"]"), None);
        assert_eq!(ids(b"e1,e2"), None);
        assert_eq!(ids(b"e1\n\xff"), None);
        assert_eq!(ids("e1\n".repeat(2).as_bytes()), Some([id("e1")].into()));
    }

    #[test]
    fn a_202_settles_the_listed_events_and_schedules_the_others_again() {
        let settings = Settings {
            webhook_retry_base: Duration::from_millis(100),
            webhook_max_attempts: 3,
            ..Settings::default()
        };
        let sent = vec![item("a", 0, false), item("b", 0, false), item("c", 2, true)];
        let answer = Answer::Listed(Some([id("a"), id("zz")].into()));
        let plan = settlement(&settings, 1_000, vec![id("gone")], sent, &answer);
        let s = &plan.settlement;
        assert_eq!(
            s.processed,
            vec![id("a")],
            "an id not in the post is ignored"
        );
        assert_eq!(s.remove, vec![id("gone"), id("a"), id("c")]);
        assert_eq!(plan.exhausted, 1, "c had its last attempt");
        assert_eq!(s.retry.len(), 1);
        let (e, st) = &s.retry[0];
        assert_eq!(
            (e, st.attempts, st.due, st.received),
            (&id("b"), 1, 1_100, true)
        );
    }

    #[test]
    fn an_unparseable_202_acknowledges_nothing_and_a_failure_keeps_received() {
        let settings = Settings {
            webhook_retry_base: Duration::from_millis(100),
            webhook_max_attempts: 10,
            ..Settings::default()
        };
        let sent = || vec![item("a", 0, false), item("b", 1, true)];
        let plan = settlement(&settings, 0, vec![], sent(), &Answer::Listed(None));
        assert!(plan.settlement.processed.is_empty() && plan.settlement.remove.is_empty());
        let got: Vec<_> = plan
            .settlement
            .retry
            .iter()
            .map(|(e, s)| (e.clone(), s.attempts, s.received))
            .collect();
        assert_eq!(got, vec![(id("a"), 1, true), (id("b"), 2, true)]);
        let plan = settlement(
            &settings,
            0,
            vec![],
            sent(),
            &Answer::Failed("status 503".into()),
        );
        let got: Vec<_> = plan
            .settlement
            .retry
            .iter()
            .map(|(e, s)| (e.clone(), s.attempts, s.received))
            .collect();
        assert_eq!(got, vec![(id("a"), 1, false), (id("b"), 2, true)]);
        let plan = settlement(&settings, 0, vec![], sent(), &Answer::All);
        assert_eq!(plan.settlement.processed, vec![id("a"), id("b")]);
        assert!(plan.settlement.retry.is_empty());
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
