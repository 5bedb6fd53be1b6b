//! Views of events (FastSpring's pull API).

use crate::model::EventRecord;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// One event: `{id, type, created, live, processed, data}` (and `action`/`result` when it is
/// the answer of `GET /events/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    pub id: String,
    /// `account.created`, `order.completed`, `subscription.charge.completed`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// ms.
    pub created: i64,
    pub live: bool,
    pub processed: bool,
    /// The event's payload (its shape depends on `type`).
    #[schema(value_type = Object)]
    pub data: Value,
    /// The event's id again, after its data, as FastSpring's events carry it.
    pub event: String,
}

impl EventView {
    /// The view of `e`, as the answer of `action` (`None`: an item of a list or a delivery).
    pub fn of(e: &EventRecord, action: Option<&'static str>) -> Self {
        Self {
            action,
            result: action.map(|_| "success"),
            id: e.id.to_string(),
            kind: e.kind.clone(),
            created: e.created,
            live: e.live,
            processed: e.processed,
            data: e.data.clone(),
            event: e.id.to_string(),
        }
    }
}

/// `GET /events/unprocessed`, `GET /events/processed`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    pub action: &'static str,
    pub result: &'static str,
    /// Always null (the event lists are not paged: ask again with a later `begin`).
    #[schema(value_type = Option<u64>)]
    pub page: Option<u64>,
    #[schema(value_type = Option<u64>)]
    pub limit: Option<u64>,
    #[schema(value_type = Option<u64>)]
    pub next_page: Option<u64>,
    pub total: usize,
    /// More events exist beyond this answer.
    pub more: bool,
    pub events: Vec<EventView>,
}

impl EventList {
    pub fn of(events: &[EventRecord], more: bool) -> Self {
        Self {
            action: "events.get",
            result: "success",
            page: None,
            limit: None,
            next_page: None,
            total: events.len(),
            more,
            events: events.iter().map(|e| EventView::of(e, None)).collect(),
        }
    }
}

/// `POST /events/{id}`: `{action, result, id, processed}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventMarked {
    pub action: &'static str,
    pub result: &'static str,
    pub id: String,
    pub processed: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_event_views_are_byte_for_byte_the_former_json_bodies() {
        let mut e = EventRecord::new("account.created", serde_json::json!({"id": "a1"}));
        e.processed = true;
        // What `EventRecord::to_json` and the list body of `routes/events.rs` built before
        // these views, plus FastSpring's `event` (the id again) added since.
        let to_json = |e: &EventRecord| {
            serde_json::json!({"id": e.id, "type": e.kind, "created": e.created,
                "live": e.live, "processed": e.processed, "data": e.data, "event": e.id})
        };
        let old = serde_json::json!({"action": "events.get", "result": "success", "page": null,
            "limit": null, "nextPage": null, "total": 1, "more": true,
            "events": [to_json(&e)]});
        let new = serde_json::to_value(EventList::of(std::slice::from_ref(&e), true)).unwrap();
        assert_eq!(new.to_string(), old.to_string());
        let mut old = to_json(&e);
        old["action"] = serde_json::json!("event.get");
        old["result"] = serde_json::json!("success");
        let new = serde_json::to_value(EventView::of(&e, Some("event.get"))).unwrap();
        assert_eq!(new.to_string(), old.to_string());
    }
}
