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

async fn set_subscription(
    state: &SharedState,
    headers: &HeaderMap,
    id: &str,
    form: &Result<Form<PageForm>, FormRejection>,
    cancel: bool,
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
    let storage = state.storage.as_ref();
    let now = state.settings.clock.now();
    let r = if cancel {
        subscriptions::cancel(
            storage,
            &sess.store,
            id,
            By::Customer,
            CancelWhen::PeriodEnd,
            now,
            None,
        )
        .await
        .map(drop)
    } else {
        subscriptions::resume(storage, &sess.store, std::slice::from_ref(id), now, None)
            .await
            .map(drop)
    };
    match r {
        Ok(()) => back_to_account(),
        // Already in the wanted state (a double click): nothing to do, no event.
        Err(StorageError::State(_)) => back_to_account(),
        Err(_) => failed(),
    }
}

#[utoipa::path(
    post,
    operation_id = "account_pages.cancel",
    path = "/account/subscriptions/{id}/cancel",
    tags = ["account-pages", "strongroom-extension"],
    summary = "Cancel a subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done: back to /account"), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
    security(("session" = []))
)]
pub(super) async fn cancel(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<PageForm>, FormRejection>,
) -> Response {
    set_subscription(&state, &headers, &id, &form, true).await
}

#[utoipa::path(
    post,
    operation_id = "account_pages.resume",
    path = "/account/subscriptions/{id}/resume",
    tags = ["account-pages", "strongroom-extension"],
    summary = "Resume a subscription",
    params(("id" = String, Path, description = "The id (scoped to the caller's store)")),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Done: back to /account"), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
    security(("session" = []))
)]
pub(super) async fn resume(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<PageForm>, FormRejection>,
) -> Response {
    set_subscription(&state, &headers, &id, &form, false).await
}

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
