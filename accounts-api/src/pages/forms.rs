//! The account page's forms: each a POST with the session's CSRF token that calls a service and
//! answers 303 back to `/account` (or a refusal page), and signing out.

use super::*;

#[utoipa::path(
    post,
    operation_id = "account_pages.update_profile",
    path = "/account/profile",
    tags = ["account-pages", "strongroom-extension"],
    summary = "Update name, email, company, phone",
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done: back to /account"), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
    security(("session" = []))
)]
pub(super) async fn update_profile(
    State(state): State<SharedState>,
    headers: HeaderMap,
    form: Result<Form<PageForm>, FormRejection>,
) -> Response {
    let (_, sess, account) = match form_session(&state, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Ok(Form(f)) = form else {
        return csrf_refused();
    };
    // The same parsing and rules as `POST /accounts/{id}`: build its body from the form.
    let body = profile_body(&f.fields);
    let input = match crate::http::requests::parse_account(&body, false) {
        Ok(i) => i,
        Err(p) => {
            let fields: Vec<String> = p.0.iter().map(|(f, m)| format!("{f}: {m}")).collect();
            return refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Please check your details",
                &format!("Nothing was saved. {}", fields.join("; ")),
            );
        }
    };
    match crate::service::accounts::update(
        state.storage.as_ref(),
        &sess.store,
        &account.id,
        &input,
        None,
    )
    .await
    {
        Ok(_) => back_to_account(),
        Err(StorageError::EmailTaken(_)) => refusal(
            StatusCode::CONFLICT,
            "Please check your details",
            "Nothing was saved: that email address belongs to another account.",
        ),
        Err(_) => failed(),
    }
}

/// The `POST /accounts/{id}` body the profile form stands for.
fn profile_body(f: &HashMap<String, String>) -> Map<String, Value> {
    let pick = |keys: &[&str]| -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| f.get(*k).map(|v| (k.to_string(), Value::String(v.clone()))))
            .collect()
    };
    let mut body = Map::new();
    let contact = pick(&["first", "last", "email", "phone", "company"]);
    body.insert("contact".into(), Value::Object(contact));
    let address = pick(&[
        "addressLine1",
        "addressLine2",
        "city",
        "region",
        "postalCode",
    ]);
    body.insert("address".into(), Value::Object(address));
    if let Some(c) = f.get("country").filter(|c| !c.trim().is_empty()) {
        let country = Value::String(c.trim().to_ascii_uppercase());
        body.insert("country".into(), country);
    }
    body
}

/// What a subscription form on the account page asks for; each is the API's service call (the
/// customer's rules for a cancel), so it writes the same events.
#[derive(Debug, Clone, Copy)]
enum SubscriptionForm {
    /// At the end of the paid period (`DELETE /subscriptions/{id}`).
    Cancel,
    /// A canceled one runs on (`POST /subscriptions/{id}`).
    Uncancel,
    /// One period from the next charge date (`POST /subscriptions/{id}/pause`).
    Pause,
    /// Removes a scheduled pause or ends a pause now (`POST /subscriptions/{id}/resume`).
    Unpause,
}

/// Periods the page's pause skips.
const PAGE_PAUSE_PERIODS: u32 = 1;

async fn set_subscription(
    state: &SharedState,
    headers: &HeaderMap,
    id: &str,
    form: &Result<Form<PageForm>, FormRejection>,
    what: SubscriptionForm,
) -> Response {
    let (_, sess, account) = match form_session(state, headers, form).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(id) = account.subscriptions.iter().find(|s| *s == id) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such subscription on your account.",
        );
    };
    use crate::service::subscriptions::{self, By, CancelWhen};
    let (storage, store) = (state.storage.as_ref(), &sess.store);
    let now = state.settings.clock.now();
    let r = match what {
        SubscriptionForm::Cancel => {
            let (by, when) = (By::Customer, CancelWhen::PeriodEnd);
            subscriptions::cancel(storage, store, id, by, when, now, None)
                .await
                .map(drop)
        }
        SubscriptionForm::Uncancel => {
            subscriptions::resume(storage, store, std::slice::from_ref(id), now, None)
                .await
                .map(drop)
        }
        SubscriptionForm::Pause => {
            subscriptions::pause(storage, store, id, PAGE_PAUSE_PERIODS, now, None)
                .await
                .map(drop)
        }
        SubscriptionForm::Unpause => subscriptions::unpause(storage, store, id, now, None)
            .await
            .map(drop),
    };
    match r {
        Ok(()) => back_to_account(),
        // Already in the wanted state (a double click): nothing to do, no event.
        Err(StorageError::State(_)) => back_to_account(),
        Err(_) => failed(),
    }
}

/// One page form per subscription action: its route (documented in the OpenAPI like every
/// page form) and a handler that runs [`set_subscription`].
macro_rules! subscription_form {
    ($handler:ident, $op:literal, $path:literal, $summary:literal, $what:expr) => {
        #[utoipa::path(
            post,
            operation_id = $op,
            path = $path,
            tags = ["account-pages", "strongroom-extension"],
            summary = $summary,
            params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
            request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
            responses((status = 303, description = "Done: back to /account"), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
            security(("session" = []))
        )]
        pub(super) async fn $handler(
            State(state): State<SharedState>,
            headers: HeaderMap,
            Path(id): Path<String>,
            form: Result<Form<PageForm>, FormRejection>,
        ) -> Response {
            set_subscription(&state, &headers, &id, &form, $what).await
        }
    };
}

subscription_form!(
    cancel,
    "account_pages.cancel",
    "/account/subscriptions/{id}/cancel",
    "Cancel a subscription",
    SubscriptionForm::Cancel
);
subscription_form!(
    resume,
    "account_pages.resume",
    "/account/subscriptions/{id}/resume",
    "Resume a canceled subscription (uncancel)",
    SubscriptionForm::Uncancel
);
subscription_form!(
    pause,
    "account_pages.pause",
    "/account/subscriptions/{id}/pause",
    "Pause a subscription for 1 period from its next charge date",
    SubscriptionForm::Pause
);
subscription_form!(
    unpause,
    "account_pages.unpause",
    "/account/subscriptions/{id}/unpause",
    "Remove a scheduled pause, or resume a paused subscription now",
    SubscriptionForm::Unpause
);

#[utoipa::path(
    post,
    operation_id = "account_pages.remove_card",
    path = "/account/payment-methods/{pm}/remove",
    tags = ["account-pages", "strongroom-extension"],
    summary = "Remove a saved payment method",
    params(("pm" = String, Path, description = "Payment method id")),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done: back to /account"), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
    security(("session" = []))
)]
pub(super) async fn remove_card(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(pm): Path<String>,
    form: Result<Form<PageForm>, FormRejection>,
) -> Response {
    let (_, sess, account) = match form_session(&state, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if !account.payment_methods.iter().any(|p| p.id == pm) {
        return refusal(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such payment method on your account.",
        );
    }
    // Vault first (it crypto-shreds the token); if it is down nothing changes here.
    match state.vault.delete(&sess.store, &pm).await {
        Ok(()) | Err(crate::vault::VaultError::NotFound) => {}
        Err(_) => {
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again shortly",
                "The card could not be removed right now. Nothing was changed.",
            );
        }
    }
    let extras = Extras {
        idempotency: None,
        events: vec![crate::service::events::record(
            &DomainEvent::PaymentMethodRemoved {
                account: account.id.clone(),
                payment_method: pm.clone(),
            },
        )],
    };
    match crate::service::payment_methods::forget(
        state.storage.as_ref(),
        &sess.store,
        &account.id,
        &pm,
        state.settings.clock.now(),
        &extras,
    )
    .await
    {
        Ok(()) => {
            tracing::info!(store = %sess.store, account = %account.id, payment_method = %pm, "payment method removed from the account page");
            committed(&state).await
        }
        Err(_) => failed(),
    }
}

#[utoipa::path(
    post,
    operation_id = "account_pages.logout",
    path = "/account/logout",
    tags = ["account-pages", "strongroom-extension"],
    summary = "Sign out",
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done: back to /account"), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
    security(("session" = []))
)]
pub(super) async fn logout(
    State(state): State<SharedState>,
    headers: HeaderMap,
    form: Result<Form<PageForm>, FormRejection>,
) -> Response {
    let (h, _, _) = match form_session(&state, &headers, &form).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if sso::sign_out(state.storage.as_ref(), &h).await.is_err() {
        return failed();
    }
    let mut resp = refusal(
        StatusCode::OK,
        "You are signed out",
        "You can close this window.",
    );
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subscription_form_is_documented_with_its_own_operation() {
        let doc = serde_json::to_value(crate::openapi::document()).unwrap_or_default();
        for (action, op) in [
            ("cancel", "account_pages.cancel"),
            ("resume", "account_pages.resume"),
            ("pause", "account_pages.pause"),
            ("unpause", "account_pages.unpause"),
        ] {
            let path = format!("/account/subscriptions/{{id}}/{action}");
            let post = &doc["paths"][path.as_str()]["post"];
            assert_eq!(post["operationId"], op, "{path}");
            assert_eq!(post["x-strongroom-extension"], true, "{path}");
            assert!(post["responses"]["403"].is_object(), "{path}: {post}");
        }
    }
}
