//! Views of webhooks: never their secrets, only whether they sign.

use crate::model::WebhookRecord;
use serde::Serialize;
use utoipa::ToSchema;

/// One webhook: `{id, url, signed, created}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// Deliveries carry `X-FS-Signature` (an HMAC secret is set).
    pub signed: bool,
    /// ms.
    pub created: i64,
}

impl WebhookView {
    pub fn of(h: &WebhookRecord) -> Self {
        Self {
            id: h.id.to_string(),
            url: h.url.clone(),
            signed: h.secret.is_some(),
            created: h.created,
        }
    }
}

/// `GET /webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub action: &'static str,
    pub result: &'static str,
    pub webhooks: Vec<WebhookView>,
}

/// `POST /webhooks`: `{action, result, webhook}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookCreated {
    pub action: &'static str,
    pub result: &'static str,
    pub webhook: WebhookView,
}

/// `POST /webhooks/keys`: `{url, action, result}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookRotated {
    pub url: String,
    pub action: &'static str,
    pub result: &'static str,
}

/// `DELETE /webhooks/{id}`: `{action, result, id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookRemoved {
    pub action: &'static str,
    pub result: &'static str,
    pub id: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::test_id;

    #[test]
    fn the_webhook_view_is_byte_for_byte_the_former_json_body() {
        for secret in [
            None,
            Some(shared::SecretString::new("s3cret-hmac".to_owned())),
        ] {
            let h = WebhookRecord {
                id: test_id("w1"),
                url: "https://example.com/hook".into(),
                secret,
                created: 1_800_000_000_000,
            };
            let new = serde_json::to_value(WebhookView::of(&h))
                .unwrap()
                .to_string();
            // What `WebhookRecord::to_json` built before this view.
            let old = serde_json::json!({"id": h.id, "url": h.url,
                "signed": h.secret.is_some(), "created": h.created});
            assert_eq!(new, old.to_string());
            assert!(!new.contains("s3cret-hmac"));
        }
    }
}
