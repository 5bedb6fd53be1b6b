//! `/subscriptions`: read one or several (comma-separated ids), list (by account or all, with
//! FastSpring's filters), entries (the subscription's orders), cancel (`DELETE`,
//! `billingPeriod=0` for now), uncancel (`POST` with `deactivation: null`), pause and resume,
//! rebill.

use crate::app::SharedState;
use crate::error::{ApiError, ErrorKind, StorageError};
use crate::http::extract::{Action, Caller, Mutation, actions};
use crate::http::requests::{PauseBody, SubscriptionRef, SubscriptionsBody, read_body};
use crate::http::views::{
    AccountSubscriptions, ChargeItem, ChargeResults, EntryView, IdPage, ItemError,
    SubscriptionChanged, SubscriptionEntry, SubscriptionIds, SubscriptionList, SubscriptionMany,
    SubscriptionRead, SubscriptionResult, SubscriptionView,
};
use crate::http::{found, ok_view, paging};
use crate::model::{AccountId, SubscriptionId};
use crate::service::renewals::{Outcome, charge_named};
use crate::service::subscriptions::{self, By, CancelWhen};
use crate::storage::{SubscriptionQuery, SubscriptionTime, with_named};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

actions! {
    Read = "subscription.get",
    List = "subscription.getall",
    Cancel = "subscription.cancel",
    Resume = "subscription.update",
    Charge = "subscription.charge",
    Pause = "subscription.pause",
    Unpause = "subscription.resume",
}

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(charge_route))
        .routes(routes!(read, cancel, resume))
        .routes(routes!(entries))
        .routes(routes!(pause))
        .routes(routes!(unpause))
}

fn not_found(action: &'static str) -> ApiError {
    ApiError::new(
        action,
        ErrorKind::NotFound("subscription", "Subscription not found"),
    )
}

fn map_err(e: StorageError, action: &'static str) -> ApiError {
    match e {
        StorageError::NotFound => not_found(action),
        StorageError::State(msg) => {
            ApiError::new(action, ErrorKind::Conflict("subscription", msg.to_owned()))
        }
        other => other.into_api(action),
    }
}

#[utoipa::path(
    get,
    operation_id = "subscriptions.read",
    path = "/subscriptions/{id}",
    tags = ["subscriptions"],
    summary = "Read a subscription, or several (comma-separated ids)",
    params(("id" = String, Path, description = "The id, or up to 100 comma-separated ids (scoped to the caller's store)")),
    responses((status = 200, description = "The subscription (one id); `{subscriptions: [...]}` with an error item for each unknown id (several)", body = SubscriptionRead), (status = 404, description = "No id names a subscription", body = crate::http::views::SubscriptionMissing)),
    security(("basic" = []))
)]
async fn read(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<Read>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Read::NAME;
    let ids = crate::http::query::ids(&id, "subscription", ACTION)?;
    let lookup = async |raw: &str| {
        let one = async |id: &SubscriptionId| state.storage.subscription(&caller.store, id).await;
        with_named(raw, Ok(None), one)
            .await
            .map_err(|e| e.into_api(ACTION))
    };
    if let [only] = ids[..] {
        let s = lookup(only).await?.ok_or_else(|| not_found(ACTION))?;
        let view = SubscriptionView::of(&s, Some(ACTION));
        return Ok(ok_view(&SubscriptionRead::One(Box::new(view))));
    }
    let mut subscriptions = Vec::with_capacity(ids.len());
    for raw in ids {
        subscriptions.push(match lookup(raw).await? {
            Some(s) => SubscriptionEntry::Found(Box::new(SubscriptionView::of(&s, Some(ACTION)))),
            None => SubscriptionEntry::Missing(ItemError(crate::error::envelope(
                ACTION,
                Some(("subscription", raw)),
                &[("subscription", "Subscription not found")],
            ))),
        });
    }
    let any = subscriptions
        .iter()
        .any(|s| matches!(s, SubscriptionEntry::Found(_)));
    let status = if any {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let many = SubscriptionRead::Many(SubscriptionMany { subscriptions });
    Ok(crate::http::answer(status, &many))
}

/// `GET /subscriptions/{id}/entries`: FastSpring's JSON array of the subscription's orders, each
/// with the period it paid: the original order first, then one per rebill, oldest first.
#[utoipa::path(
    get,
    operation_id = "subscriptions.entries",
    path = "/subscriptions/{id}/entries",
    tags = ["subscriptions"],
    summary = "A subscription's orders: the original one, then one per rebill",
    params(("id" = String, Path, description = "The subscription id (scoped to the caller's store)")),
    responses((status = 200, description = "The entries, oldest first", body = [EntryView]), (status = 404, description = "No such subscription in the store", body = crate::http::views::SubscriptionMissing)),
    security(("basic" = []))
)]
async fn entries(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<Read>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Read::NAME;
    let found = with_named(&id, Ok(None), async |id: &SubscriptionId| {
        subscriptions::entries(state.storage.as_ref(), &caller.store, id).await
    })
    .await
    .map_err(|e| e.into_api(ACTION))?
    .ok_or_else(|| not_found(ACTION))?;
    let views: Vec<EntryView> = found.iter().map(|(e, o)| EntryView::of(e, o)).collect();
    Ok(ok_view(&views))
}

/// `GET /subscriptions?…`: with `accountId`, that account's subscription objects; otherwise a
/// page of the store's subscription ids. Every other filter narrows either answer (all given
/// must hold): `products`, `status`, `scope`, and a date range `begin`/`end` on the instant
/// `event` names (the subscription's start when no `event` is given).
#[utoipa::path(
    get,
    operation_id = "subscriptions.list",
    path = "/subscriptions",
    tags = ["subscriptions"],
    summary = "An account's subscriptions, or a page of the store's subscription ids, filtered",
    params(
        ("accountId" = Option<String>, Query, description = "That account's subscription objects"),
        ("products" = Option<String>, Query, description = "Comma-separated product paths"),
        ("status" = Option<String>, Query, description = "Comma-separated states: active, overdue, canceled, deactivated, trial, paused"),
        ("scope" = Option<String>, Query, pattern = "^(live|test|all)$", description = "`live`, `test` or `all` (default)"),
        ("event" = Option<String>, Query, pattern = "^(activated|canceled|charged|subscription\\.activated|subscription\\.canceled|subscription\\.charge\\.completed)$", description = "What `begin`/`end` apply to: `activated` (default: the start), `canceled`, `charged` (the last renewal charge); without a range, only subscriptions that had it"),
        ("begin" = Option<String>, Query, pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}/[0-9]{1,2}/([0-9]{2}|[0-9]{4}))$", description = "First day included: `yyyy-mm-dd`, UTC"),
        ("end" = Option<String>, Query, pattern = "^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}/[0-9]{1,2}/([0-9]{2}|[0-9]{4}))$", description = "First day no longer included: `yyyy-mm-dd`, UTC; after `begin`"),
        ("page" = Option<u32>, Query, minimum = 1),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ),
    responses((status = 200, description = "Success", body = SubscriptionList)),
    security(("basic" = []))
)]
async fn list(
    State(state): State<SharedState>,
    caller: Caller<List>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = List::NAME;
    let store = &caller.store;
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid(ACTION, "query", "malformed query string"));
    };
    let filter = subscription_filter(&q)?;
    if let Some(account) = q.get("accountId") {
        let missing = || {
            ApiError::new(
                ACTION,
                ErrorKind::NotFound("accountId", "account not found"),
            )
        };
        let a = found(account, ACTION, missing, async |id: &AccountId| {
            state.storage.account(store, id).await
        })
        .await?;
        let mut subs = Vec::new();
        for id in &a.subscriptions {
            if let Some(s) = state
                .storage
                .subscription(store, id)
                .await
                .map_err(|e| e.into_api(ACTION))?
                && filter.matches(&s)
            {
                subs.push(SubscriptionView::of(&s, Some("subscription.get")));
            }
        }
        return Ok(ok_view(&SubscriptionList::Account(AccountSubscriptions {
            action: ACTION,
            result: "success",
            subscriptions: subs,
        })));
    }
    let (page, limit) = paging(&q, ACTION)?;
    let (ids, total) = state
        .storage
        .find_subscriptions(store, &filter, (page - 1).saturating_mul(limit), limit)
        .await
        .map_err(|e| e.into_api(ACTION))?;
    let ids = SubscriptionIds {
        subscriptions: ids.iter().map(ToString::to_string).collect(),
    };
    let page = IdPage::new(ACTION, ids, page, limit, total);
    Ok(ok_view(&SubscriptionList::Page(page)))
}

/// FastSpring's subscription states, as `status` takes them.
const STATES: [&str; 6] = [
    "active",
    "overdue",
    "canceled",
    "deactivated",
    "trial",
    "paused",
];

/// The filters of `GET /subscriptions` other than `accountId` (which selects the answer's
/// shape) and paging; each invalid one is a 422 naming it.
fn subscription_filter(q: &HashMap<String, String>) -> Result<SubscriptionQuery, ApiError> {
    const ACTION: &str = List::NAME;
    let states = crate::http::query::list(q, "status", ACTION)?;
    if states.iter().any(|s| !STATES.contains(&s.as_str())) {
        return Err(ApiError::invalid(
            ACTION,
            "status",
            "must list states among active, overdue, canceled, deactivated, trial, paused",
        ));
    }
    let live = match q.get("scope").map(String::as_str) {
        None | Some("all") => None,
        Some("live") => Some(true),
        Some("test") => Some(false),
        Some(_) => {
            return Err(ApiError::invalid(
                ACTION,
                "scope",
                "must be live, test or all",
            ));
        }
    };
    let event = match q.get("event").map(String::as_str) {
        None => None,
        Some("activated" | "subscription.activated") => Some(SubscriptionTime::Begin),
        Some("canceled" | "subscription.canceled") => Some(SubscriptionTime::Canceled),
        Some("charged" | "subscription.charge.completed") => Some(SubscriptionTime::Charged),
        Some(_) => {
            return Err(ApiError::invalid(
                ACTION,
                "event",
                "must be activated, canceled or charged",
            ));
        }
    };
    let (begin, end) = crate::http::query::date_range(q, ACTION)?;
    let time = match (event, begin.is_some() || end.is_some()) {
        (Some(t), _) => Some((t, begin, end)),
        (None, true) => Some((SubscriptionTime::Begin, begin, end)),
        (None, false) => None,
    };
    Ok(SubscriptionQuery {
        account: None,
        products: crate::http::query::list(q, "products", ACTION)?,
        states,
        live,
        time,
    })
}

#[utoipa::path(
    delete,
    operation_id = "subscriptions.cancel",
    path = "/subscriptions/{id}",
    tags = ["subscriptions"],
    summary = "Cancel a subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("billingPeriod" = Option<u32>, Query, description = "0: deactivate now; absent: at the end of the paid period"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "Success", body = SubscriptionChanged)),
    security(("basic" = []))
)]
async fn cancel(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    req: Mutation<Cancel>,
) -> Result<Response, ApiError> {
    let when = cancel_when(query)?;
    let resp = SubscriptionChanged {
        subscriptions: vec![SubscriptionResult::success(&id, Cancel::NAME)],
    };
    let now = state.settings.clock.now();
    let change = async |id: &SubscriptionId| {
        let storage = state.storage.as_ref();
        let answer = req.answer(&resp);
        subscriptions::cancel(storage, &req.store, id, By::Merchant, when, now, answer).await
    };
    with_named(&id, Err(StorageError::NotFound), change)
        .await
        .map_err(|e| map_err(e, Cancel::NAME))?;
    Ok(ok_view(&resp))
}

#[utoipa::path(
    post,
    operation_id = "subscriptions.resume",
    path = "/subscriptions/{id}",
    tags = ["subscriptions"],
    summary = "Resume a canceled subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = SubscriptionsBody, content_type = "application/json"),
    responses((status = 200, description = "Success", body = SubscriptionChanged)),
    security(("basic" = []))
)]
async fn resume(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Mutation<Resume>,
) -> Result<Response, ApiError> {
    let mut ids = resume_ids(&req.object()?)?;
    if ids.is_empty() {
        ids.push(id);
    }
    let resp = SubscriptionChanged {
        subscriptions: ids
            .iter()
            .map(|s| SubscriptionResult::success(s, Resume::NAME))
            .collect(),
    };
    let now = state.settings.clock.now();
    let storage = state.storage.as_ref();
    subscriptions::resume_named(storage, &req.store, &ids, now, req.answer(&resp))
        .await
        .map_err(|e| map_err(e, Resume::NAME))?;
    Ok(ok_view(&resp))
}

/// `?billingPeriod=0` cancels now; absent, at the end of the paid period (FastSpring's default;
/// it documents only 0). Any other parameter is refused.
fn cancel_when(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<CancelWhen, ApiError> {
    const ACTION: &str = Cancel::NAME;
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid(ACTION, "query", "malformed query string"));
    };
    if let Some(unknown) = q.keys().find(|k| k.as_str() != "billingPeriod") {
        return Err(ApiError::invalid(
            ACTION,
            unknown.clone(),
            "is not a known parameter",
        ));
    }
    match q.get("billingPeriod").map(String::as_str) {
        None => Ok(CancelWhen::PeriodEnd),
        Some("0") => Ok(CancelWhen::Now),
        Some(_) => Err(ApiError::invalid(
            ACTION,
            "billingPeriod",
            "must be 0 (cancel now) or absent (at the end of the period)",
        )),
    }
}

#[utoipa::path(
    post,
    operation_id = "subscriptions.pause",
    path = "/subscriptions/{id}/pause",
    tags = ["subscriptions"],
    summary = "Pause a subscription for a number of periods, from its next charge date",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = PauseBody, content_type = "application/json"),
    responses((status = 200, description = "The subscription after the change", body = SubscriptionView)),
    security(("basic" = []))
)]
async fn pause(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Mutation<Pause>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Pause::NAME;
    let obj = req.object()?;
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "pausePeriodCount") {
        return Err(ApiError::invalid(
            ACTION,
            unknown.clone(),
            "is not a known field",
        ));
    }
    let body: PauseBody = read_body(&obj);
    let max = crate::domain::subscription::MAX_PAUSE_PERIODS;
    let periods = body
        .pause_period_count
        .as_ref()
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(
                ACTION,
                "pausePeriodCount",
                "is required and must be 1 to 12",
            )
        })?;
    let now = state.settings.clock.now();
    changed_view(&state, &id, ACTION, &req, async |id: &SubscriptionId| {
        subscriptions::pause(state.storage.as_ref(), &req.store, id, periods, now, None).await
    })
    .await
}

#[utoipa::path(
    post,
    operation_id = "subscriptions.unpause",
    path = "/subscriptions/{id}/resume",
    tags = ["subscriptions"],
    summary = "Remove a scheduled pause, or resume a paused subscription now",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)"), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    responses((status = 200, description = "The subscription after the change", body = SubscriptionView)),
    security(("basic" = []))
)]
async fn unpause(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Mutation<Unpause>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Unpause::NAME;
    let now = state.settings.clock.now();
    changed_view(&state, &id, ACTION, &req, async |id: &SubscriptionId| {
        subscriptions::unpause(state.storage.as_ref(), &req.store, id, now, None).await
    })
    .await
}

/// Runs `change` on the subscription the client named and answers the subscription as it is
/// after it (FastSpring's pause/resume answer), kept under the Idempotency-Key. The answer is
/// built from the changed record, so the key is recorded in a second step: a retry after a
/// crash between the two repeats the change, which the state rules make a refusal or a no-op.
async fn changed_view<A: Action>(
    state: &SharedState,
    id: &str,
    action: &'static str,
    req: &Mutation<A>,
    change: impl AsyncFn(&SubscriptionId) -> Result<crate::model::SubscriptionRecord, StorageError>,
) -> Result<Response, ApiError> {
    let s = with_named(id, Err(StorageError::NotFound), change)
        .await
        .map_err(|e| map_err(e, action))?;
    let view = SubscriptionView::of(&s, Some(action));
    subscriptions::record_answer(state.storage.as_ref(), &req.store, req.answer(&view))
        .await
        .map_err(|e| e.into_api(action))?;
    Ok(ok_view(&view))
}

/// The items of a `{"subscriptions": [...]}` body (`None`: not an array); an item that is not an
/// object names nothing.
fn items(obj: &Map<String, Value>) -> Option<Vec<SubscriptionRef>> {
    let body: SubscriptionsBody = read_body(obj);
    match body.subscriptions {
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|item| item.as_object().map(read_body).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    }
}

/// The ids of `{"subscriptions": [{"subscription": id, "deactivation": null}]}`.
fn resume_ids(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    const ACTION: &str = Resume::NAME;
    let Some(list) = items(obj) else {
        return Err(ApiError::invalid(
            ACTION,
            "subscriptions",
            "is required and must be an array",
        ));
    };
    let mut ids = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let sid = item.subscription.as_ref().and_then(Value::as_str);
        match (sid, item.deactivation.as_ref()) {
            (Some(sid), Some(Value::Null)) => ids.push(sid.to_owned()),
            (None, _) => {
                let field = format!("subscriptions[{i}].subscription");
                return Err(ApiError::invalid(ACTION, field, "is required"));
            }
            _ => {
                let field = format!("subscriptions[{i}].deactivation");
                return Err(ApiError::invalid(ACTION, field, "must be null to resume"));
            }
        }
    }
    Ok(ids)
}

/// FastSpring's per-item answer of `POST /subscriptions/charge`.
fn charge_item(outcome: &Outcome, id: &str) -> ChargeItem {
    let err = |code: String| {
        let item = [("subscription", code.as_str())];
        ChargeItem::Refused(ItemError(crate::error::envelope(
            Charge::NAME,
            Some(("subscription", id)),
            &item,
        )))
    };
    match outcome {
        Outcome::Charged => ChargeItem::Charged(SubscriptionResult::success(id, Charge::NAME)),
        Outcome::Declined { reason, .. } | Outcome::Failed { reason, .. } => {
            err(reason.to_ascii_uppercase())
        }
        Outcome::Dropped | Outcome::Transitioned => err("SUBSCRIPTION_NOT_ACTIVE".into()),
        Outcome::Reminded => err("MANUAL_RENEWAL".into()),
        Outcome::Skipped => err("NOTHING_DUE".into()),
        Outcome::Refused(code) => err((*code).to_owned()),
    }
}

/// Most subscriptions one `POST /subscriptions/charge` may name.
pub const MAX_ITEMS: usize = 1000;

/// `POST /subscriptions/charge` (FastSpring's rebill): `{"subscriptions":[{"subscription": id}]}`
/// → `{"subscription": [{subscription, action, result, error?}]}` (the reference's shape), one
/// item per subscription in request order.
#[utoipa::path(
    post,
    operation_id = "subscriptions.charge",
    path = "/subscriptions/charge",
    tags = ["subscriptions"],
    summary = "Charge subscriptions now (rebill) with their saved payment methods",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry key: the same key with the same body answers the first answer again")),
    request_body(content = SubscriptionsBody, content_type = "application/json"),
    responses((status = 200, description = "One result per subscription, in request order", body = ChargeResults)),
    security(("basic" = []))
)]
pub async fn charge_route(
    State(state): State<SharedState>,
    req: Mutation<Charge>,
) -> Result<Response, ApiError> {
    let ids = charge_ids(&req.object()?)?;
    let mut items = Vec::with_capacity(ids.len());
    for id in &ids {
        let now = state.settings.clock.now();
        let outcome = charge_named(&state, &req.store, id, now)
            .await
            .map_err(|e| e.into_api(Charge::NAME))?;
        crate::ops::metrics().inc("charges_total", &[("outcome", outcome.label())]);
        items.push(charge_item(&outcome, id));
    }
    let resp = ChargeResults {
        subscription: items,
    };
    // Each charge is written by its own renewal step; the answer is kept under the key after
    // them, so a retry with the key gets this answer instead of a second rebill attempt.
    subscriptions::record_answer(state.storage.as_ref(), &req.store, req.answer(&resp))
        .await
        .map_err(|e| e.into_api(Charge::NAME))?;
    Ok(ok_view(&resp))
}

/// The ids of `{"subscriptions": [{"subscription": id}]}`: 1 to [`MAX_ITEMS`].
fn charge_ids(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    const CHARGE: &str = Charge::NAME;
    let Some(list) = items(obj) else {
        return Err(ApiError::invalid(
            CHARGE,
            "subscriptions",
            "is required and must be an array",
        ));
    };
    if list.is_empty() || list.len() > MAX_ITEMS {
        return Err(ApiError::invalid(
            CHARGE,
            "subscriptions",
            "must name 1 to 1000 subscriptions",
        ));
    }
    let mut ids = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match item.subscription.as_ref().and_then(Value::as_str) {
            Some(id) if !id.is_empty() && id.len() <= 64 => ids.push(id.to_owned()),
            _ => {
                return Err(ApiError::invalid(
                    CHARGE,
                    format!("subscriptions[{i}].subscription"),
                    "is required and must be a subscription id",
                ));
            }
        }
    }
    Ok(ids)
}
