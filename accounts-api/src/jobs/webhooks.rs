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
//! A receiver cannot hurt the process or the other stores:
//! - egress: every post is checked against `Settings::webhook_egress` again (`crate::egress`);
//!   IP literals here, names by the client's resolver, which returns only allowed addresses, so
//!   the connection goes to an address that was checked. A refused post sends nothing and is
//!   retried like a failure (`outcome="refused"`);
//! - bounded: `STRONGROOM_WEBHOOK_TIMEOUT_MS` covers connect to last byte (connect ≤ 5 s); a
//!   `202` body is read up to [`MAX_ACK_BODY`], a `200` body never;
//! - fair: at most `webhook_in_flight_per_store` (`[webhooks] in_flight_per_store`, 8) posts per
//!   store of [`MAX_IN_FLIGHT`] in all, handed out round-robin between stores
//!   ([`round_robin`]); each scan reads a share per store (in-flight limit × [`BATCH`] rows, at
//!   most [`BATCH`] per webhook, [`SCAN_LIMIT`] in all) starting after the store where the last
//!   one stopped, so one store's backlog cannot fill it (the storage port's `DueScan`).
//!   The number of webhooks per store is bounded where they are added
//!   (`webhooks_per_store`, `[webhooks] per_store`, 10).
//!
//! Signatures: with a secret, `X-FS-Signature` = base64(HMAC-SHA256(secret, raw body)), as
//! FastSpring sends it. Against replay (FastSpring's signature has none) every post also carries
//! `X-Strongroom-Timestamp` (unix seconds) and `X-Strongroom-Signature` =
//! base64(HMAC-SHA256(secret, timestamp + "." + body)); a receiver that checks it and refuses
//! old timestamps cannot be fed a recorded post again. The secret never reaches a log.

use crate::model::{EventId, OutboxState, StoreId, WebhookId, now_ms};
use crate::settings::Settings;
use crate::storage::{DueScan, OutboxItem, OutboxSettlement, Storage};
use base64::Engine;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Most events in one post.
pub const BATCH: usize = 100;
/// Most posts in flight at once (each to a different webhook), over all stores.
const MAX_IN_FLIGHT: usize = 64;
/// Most due rows one scan reads (each store gets at most its share of them, see [`scan`]).
const SCAN_LIMIT: usize = 10_000;
/// How often the loop looks for due rows.
const TICK: Duration = Duration::from_millis(200);
/// Most bytes of a `202` body read. A full list for a post of [`BATCH`] ids of at most 64
/// characters is under 7 KiB; a longer body acknowledges nothing. Bounded so that a hostile or
/// broken receiver cannot make the dispatcher buffer an endless body (the client's timeout
/// bounds how long it may take). A `200` body is never read: the response is dropped with its
/// connection.
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
/// Names resolve only through the egress policy's resolver, so every connection goes to an
/// address the policy checked in that same resolution (see `crate::egress`).
pub fn client(settings: &Settings) -> Result<reqwest::Client, String> {
    shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(settings.webhook_timeout)
        .connect_timeout(settings.webhook_timeout.min(Duration::from_secs(5)))
        // A receiver answers; it does not send us elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(crate::egress::Resolver(Arc::clone(
            &settings.webhook_egress,
        ))))
        .build()
        .map_err(|e| format!("webhook client: {e}"))
}

/// This tick's scan: each store's share is what it can have in flight ([`BATCH`] rows per
/// webhook, `in_flight_per_store` webhooks), starting after `after`.
fn scan(settings: &Settings, now: i64, after: Option<StoreId>) -> DueScan {
    let per_store_posts = settings.webhook_in_flight_per_store.max(1);
    DueScan {
        now,
        after,
        per_hook: BATCH,
        per_store: per_store_posts.saturating_mul(BATCH),
        limit: SCAN_LIMIT,
        lease_ms: lease_ms(settings),
    }
}

/// The delivery lease a scan takes on each webhook it returns (on PostgreSQL; sled has one
/// process). A picked webhook's post starts in the same tick as the scan and ends within
/// `webhook_timeout` (connect to last byte read), then its settlement ends the lease: the lease
/// covers the timeout plus a minute for the scan, the settlement and a stalled scheduler, and
/// never less than [`DEFAULT_WEBHOOK_LEASE_MS`]. A webhook the tick did not pick (in-flight
/// limits) is not posted on this lease: the next scan takes it again.
pub fn lease_ms(settings: &Settings) -> i64 {
    let timeout = i64::try_from(settings.webhook_timeout.as_millis()).unwrap_or(i64::MAX);
    timeout
        .saturating_add(60_000)
        .max(crate::storage::DEFAULT_WEBHOOK_LEASE_MS)
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
    let per_store = settings.webhook_in_flight_per_store.max(1);
    // Where the next scan starts (see `DueScan::after`).
    let mut after: Option<StoreId> = None;
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
        let due = match events.outbox_due(&scan(&settings, now, after.take())).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox unreadable");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        let scan_full = due.len() >= SCAN_LIMIT;
        let last_scanned = due.last().map(|i| i.store.clone());
        // Group per store (in scan order), then per webhook; each webhook's rows oldest first.
        let mut order: Vec<StoreId> = Vec::new();
        let mut groups: HashMap<StoreId, BTreeMap<WebhookId, Vec<OutboxItem>>> = HashMap::new();
        for item in due {
            let hooks = groups.entry(item.store.clone()).or_insert_with(|| {
                order.push(item.store.clone());
                BTreeMap::new()
            });
            hooks.entry(item.hook.clone()).or_default().push(item);
        }
        let picked = match in_flight.lock() {
            Ok(f) => {
                let wants: Vec<(StoreId, Vec<WebhookId>)> = order
                    .iter()
                    .map(|store| {
                        let hooks = groups
                            .get(store)
                            .map(|h| {
                                h.keys()
                                    .filter(|hook| {
                                        let key = (store.clone(), (*hook).clone());
                                        // One post at a time per webhook (never the same
                                        // events twice in parallel).
                                        !f.busy.contains(&key)
                                            && f.ended.get(&key).is_none_or(|t| *t < scan_started)
                                    })
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        (store.clone(), hooks)
                    })
                    .collect();
                round_robin(
                    &wants,
                    &f.per_store,
                    per_store,
                    MAX_IN_FLIGHT - f.busy.len().min(MAX_IN_FLIGHT),
                )
            }
            Err(_) => continue,
        };
        // The next scan starts after the last store served when the global limit left some
        // out, or after the last one read when the scan was full; else from the start.
        after = match (&picked.last_served, picked.cut, scan_full) {
            (Some(s), true, _) => Some(s.clone()),
            (_, _, true) => last_scanned,
            _ => None,
        };
        for (store, hook) in picked.posts {
            let Some(mut items) = groups.get_mut(&store).and_then(|h| h.remove(&hook)) else {
                continue;
            };
            let key = (store.clone(), hook.clone());
            match in_flight.lock() {
                Ok(mut f) => f.start(&key),
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
                    f.end(key);
                }
            });
        }
    }
    while posts.join_next().await.is_some() {}
}

/// The webhooks being posted to by this process, how many per store, and when each one's last
/// post ended.
#[derive(Default)]
struct InFlight {
    busy: HashSet<(StoreId, WebhookId)>,
    per_store: HashMap<StoreId, usize>,
    ended: HashMap<(StoreId, WebhookId), std::time::Instant>,
}

impl InFlight {
    fn start(&mut self, key: &(StoreId, WebhookId)) {
        if self.busy.insert(key.clone()) {
            *self.per_store.entry(key.0.clone()).or_default() += 1;
        }
    }

    fn end(&mut self, key: (StoreId, WebhookId)) {
        if self.busy.remove(&key)
            && let Some(n) = self.per_store.get_mut(&key.0)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_store.remove(&key.0);
            }
        }
        if self.ended.len() > 4 * MAX_IN_FLIGHT {
            let old = std::time::Instant::now() - Duration::from_secs(60);
            self.ended.retain(|_, t| *t > old);
        }
        self.ended.insert(key, std::time::Instant::now());
    }
}

/// The posts one tick starts.
#[derive(Debug, Default, PartialEq)]
struct Picked {
    posts: Vec<(StoreId, WebhookId)>,
    /// The last store that got a post.
    last_served: Option<StoreId>,
    /// Whether the global limit left a post out that a store could otherwise have had.
    cut: bool,
}

/// Round-robin between stores: one webhook of each store in turn (in `wants`' order), then a
/// second of each, …, a store up to `per_store` posts in flight (counting `busy`), all of them
/// up to `free` new posts. So a store with a hundred hanging receivers holds at most
/// `per_store` of the global slots, and every store with work gets one before any gets two.
fn round_robin(
    wants: &[(StoreId, Vec<WebhookId>)],
    busy: &HashMap<StoreId, usize>,
    per_store: usize,
    free: usize,
) -> Picked {
    let mut picked = Picked::default();
    let mut taken: Vec<usize> = wants
        .iter()
        .map(|(s, _)| busy.get(s).copied().unwrap_or(0))
        .collect();
    let mut next = vec![0usize; wants.len()];
    loop {
        let mut progressed = false;
        for (i, (store, hooks)) in wants.iter().enumerate() {
            if next[i] >= hooks.len() || taken[i] >= per_store {
                continue;
            }
            if picked.posts.len() >= free {
                picked.cut = true;
                return picked;
            }
            picked.posts.push((store.clone(), hooks[next[i]].clone()));
            picked.last_served = Some(store.clone());
            next[i] += 1;
            taken[i] += 1;
            progressed = true;
        }
        if !progressed {
            return picked;
        }
    }
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
    /// The egress policy refused the URL or every address its name resolves to: nothing was
    /// sent. Retried like a failure (the operator may change the allow-list).
    Refused(crate::egress::Refusal),
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
    // The policy again, at delivery: the URL may have been stored before the policy (or under
    // another allow-list). IP literals are judged here (they never reach the resolver); names
    // by the client's resolver, at connect.
    let url = match reqwest::Url::parse(&hook.url) {
        Ok(u) => u,
        Err(_) => {
            let answer = Answer::Refused(crate::egress::Refusal::Scheme);
            return finish(events, settings, store, hook_id, remove, sent, answer).await;
        }
    };
    if let Err(r) = settings.webhook_egress.check_target(&url) {
        return finish(
            events,
            settings,
            store,
            hook_id,
            remove,
            sent,
            Answer::Refused(r),
        )
        .await;
    }
    let body = serde_json::json!({ "events": bodies }).to_string();
    let ts = (now_ms() / 1000).to_string();
    let mut req = http
        .post(url)
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
        Err(e) => match crate::egress::refusal_in(&e) {
            Some(r) => Answer::Refused(r),
            None => Answer::Failed(if e.is_timeout() {
                "timeout".to_owned()
            } else if e.is_connect() {
                "connect".to_owned()
            } else {
                "transport".to_owned()
            }),
        },
    };
    finish(events, settings, store, hook_id, remove, sent, answer).await;
}

/// Counts, logs and settles one post's outcome.
async fn finish(
    events: &dyn Storage,
    settings: &Settings,
    store: &StoreId,
    hook_id: &WebhookId,
    remove: Vec<EventId>,
    sent: Vec<OutboxItem>,
    answer: Answer,
) {
    let plan = settlement(settings, now_ms(), remove, sent, &answer);
    let (pending, exhausted) = (plan.settlement.retry.len(), plan.exhausted);
    let (store_s, hook_s) = (store.as_str(), hook_id.as_str());
    let metrics = crate::ops::metrics();
    match &answer {
        Answer::Refused(why) => {
            metrics.inc("webhook_deliveries_total", &[("outcome", "refused")]);
            tracing::warn!(
                store = store_s,
                webhook = hook_s,
                events = pending,
                reason = %why,
                "webhook delivery refused by the egress policy; nothing sent"
            );
        }
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
    if let Err(e) = events.outbox_settle(store, hook_id, &plan.settlement).await {
        tracing::error!(error = %e, "webhook outbox update failed");
    }
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
            Answer::Failed(_) | Answer::Refused(_) => false,
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
mod tests;
