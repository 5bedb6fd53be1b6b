//! Single sign-on and the customer's account page.
//!
//! `GET /accounts/{id}/authenticate` (merchant, Basic auth; several comma-separated ids get a
//! link each) issues a one-time link
//! `{base}/account/sso/{token}`: 256 random bits from the system RNG, stored only as their
//! SHA-256, valid for `STRONGROOM_SSO_TTL_SECS` (5 min by default), consumed in a transaction the
//! first time it is opened. Opening it creates a session (another 256-bit random value in an
//! HttpOnly, SameSite=Strict cookie, `Secure` when the public URL is https; stored hashed; fixed
//! lifetime) and answers 303 to `/account`. A used, expired or unknown link gets a refusal page
//! (410) and no session.
//!
//! `/account` is server-rendered HTML with no script and a strict Content-Security-Policy; every
//! string that came from a user or merchant goes through [`esc`]. Every form is a POST carrying
//! the session's CSRF token; a POST without the right one answers 403 and changes nothing.
//! Every change writes its event in the same transaction as the change, like the API does.
//!
//! This module holds the handlers (session, CSRF, the call to a service); the rules are the
//! services' (`service::sso`, `service::accounts`, `service::subscriptions`,
//! `service::payment_methods`) and the HTML is `render.rs`.

use crate::app::SharedState;
use crate::domain::DomainEvent;
use crate::error::{ApiError, StorageError};
use crate::http::extract::{Action, Caller, actions};
use crate::http::ok_view;
use crate::http::views::{ItemError, SsoEntry, SsoLinkItem, SsoLinks};
use crate::model::{AccountRecord, SessionRecord};
use crate::service::sso::{self, SsoError};
use crate::storage::Extras;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use render::{esc, html, layout, refusal};
use serde_json::{Map, Value};
use shared::SecretString;
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod forms;
mod render;

const COOKIE: &str = "sr_session";

/// Every account-page form: the session's CSRF token plus the form's own fields.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct PageForm {
    /// The session's CSRF token (a hidden field of every form); missing or wrong → 403.
    #[serde(default)]
    csrf: Option<String>,
    /// The form's own fields (the profile form: `first`, `last`, `email`, `phone`, `company`,
    /// the address lines and `country`).
    #[serde(flatten)]
    #[schema(ignore)]
    fields: HashMap<String, String>,
}

actions! {
    Authenticate = "account.authenticate.get",
}

pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(authenticate))
        .routes(routes!(open_link))
        .routes(routes!(account_page))
        .routes(routes!(stylesheet))
        .routes(routes!(forms::update_profile))
        .routes(routes!(forms::cancel))
        .routes(routes!(forms::resume))
        .routes(routes!(forms::pause))
        .routes(routes!(forms::unpause))
        .routes(routes!(forms::remove_card))
        .routes(routes!(forms::logout))
}

/// The link base: the configured public URL, else `http://` + a well-formed Host header.
fn base_url(state: &SharedState, headers: &HeaderMap) -> Option<String> {
    if let Some(u) = &state.settings.public_url {
        return Some(u.clone());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| format!("http://{host}"))
}

#[utoipa::path(
    get,
    operation_id = "account_pages.authenticate",
    path = "/accounts/{id}/authenticate",
    tags = ["accounts"],
    summary = "One-time sign-in link to the account page (single sign-on), for one account or several",
    params(("id" = String, Path, description = "The id, or up to 100 comma-separated ids (scoped to the caller's store)")),
    responses((status = 200, description = "A link per known id, an error item per unknown one", body = SsoLinks<SsoEntry>), (status = 404, description = "No id names an account", body = SsoLinks<ItemError>)),
    security(("basic" = []))
)]
async fn authenticate(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller<Authenticate>,
) -> Result<Response, ApiError> {
    const ACTION: &str = Authenticate::NAME;
    let ids = crate::http::query::ids(&id, "account", ACTION)?;
    let mut accounts = Vec::with_capacity(ids.len());
    for raw in ids {
        accounts.push(match link(&state, &headers, &caller.store, raw).await? {
            Some(link) => SsoEntry::Link(link),
            None => SsoEntry::Missing(ItemError(crate::error::envelope(
                ACTION,
                Some(("account", raw)),
                &[("account", "Not found")],
            ))),
        });
    }
    if !accounts.iter().any(|a| matches!(a, SsoEntry::Link(_))) {
        return Ok((StatusCode::NOT_FOUND, axum::Json(SsoLinks { accounts })).into_response());
    }
    let mut resp = ok_view(&SsoLinks { accounts });
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A sign-in link to the account `raw` names; `None` when it names none of the store's (an id
/// that does not parse names none).
async fn link(
    state: &SharedState,
    headers: &HeaderMap,
    store: &crate::model::StoreId,
    raw: &str,
) -> Result<Option<SsoLinkItem>, ApiError> {
    const ACTION: &str = Authenticate::NAME;
    let Ok(account) = crate::model::AccountId::parse(raw) else {
        return Ok(None);
    };
    let known = state.storage.account(store, &account).await;
    if known.map_err(|e| e.into_api(ACTION))?.is_none() {
        return Ok(None);
    }
    let base = base_url(state, headers)
        .ok_or_else(|| ApiError::invalid(ACTION, "host", "missing or malformed Host header"))?;
    let link = match sso::issue_link(
        state.storage.as_ref(),
        store,
        &account,
        state.settings.sso_ttl,
    )
    .await
    {
        Ok(link) => link,
        Err(SsoError::NotFound) => return Ok(None),
        Err(SsoError::NoRandomness) => return Err(ApiError::internal(ACTION)),
        Err(SsoError::Storage(e)) => return Err(e.into_api(ACTION)),
    };
    let (token, expires) = (link.token, link.expires);
    // The one place the token leaves the process: in this answer, to the merchant.
    let url = format!("{base}/account/sso/{}", token.expose_secret());
    Ok(Some(SsoLinkItem {
        action: ACTION,
        result: "success",
        account: raw.to_owned(),
        url,
        expires,
    }))
}

fn link_refused() -> Response {
    refusal(
        StatusCode::GONE,
        "This sign-in link is not valid",
        "The link was already used, has expired, or is not a link we issued. \
         Links work once and only for a few minutes: ask for a new one.",
    )
}

fn session_cookie(state: &SharedState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.settings.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let c = format!(
        "{COOKIE}={value}; Path=/account; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("sr_session=; Max-Age=0"))
}

#[utoipa::path(
    get,
    operation_id = "account_pages.open_link",
    path = "/account/sso/{token}",
    tags = ["account-pages", "strongroom-extension"],
    summary = "Open a sign-in link: session cookie and 303 to /account",
    params(("token" = String, Path, description = "The one-time token")),
    responses((status = 303, description = "Signed in: to /account"), (status = 410, description = "Used, expired or unknown link", content_type = "text/html", body = String), (status = 503, description = "Temporarily unavailable", content_type = "text/html", body = String))
)]
async fn open_link(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let token = SecretString::new(token);
    let ttl = state.settings.session_ttl.as_millis() as i64;
    let opened =
        match sso::open_link(state.storage.as_ref(), &token, state.settings.session_ttl).await {
            Ok(o) => o,
            Err(SsoError::NotFound) => return link_refused(),
            Err(e) => {
                if let SsoError::Storage(e) = &e {
                    tracing::error!(error = %e, "sign-in link lookup failed");
                }
                return refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Please try again later.",
                );
            }
        };
    let session = opened.session;
    tracing::info!(store = %opened.store, account = %opened.account, "account page session opened");
    // A link followed from another site (the merchant's page, a webmail) is a cross-site
    // navigation, and browsers do not send a SameSite=Strict cookie anywhere along a redirect
    // chain that started cross-site: a 303 would land on "not signed in" with the link already
    // spent. Then the answer is a page of ours that moves on to /account by itself (meta
    // refresh, no script) — a same-site navigation, which carries the cookie.
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"));
    let mut resp = if cross_site {
        html(
            StatusCode::OK,
            layout(
                "Signing you in",
                "<meta http-equiv=\"refresh\" content=\"0;url=/account\">\
                 <h1>Signing you in…</h1><p><a href=\"/account\">Continue to your account</a></p>",
            ),
        )
    } else {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/account"));
        r
    };
    let h = resp.headers_mut();
    h.insert(
        header::SET_COOKIE,
        session_cookie(&state, session.expose_secret(), ttl / 1000),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The session of the request: (cookie hash, record). Expired sessions are deleted here.
async fn session(state: &SharedState, headers: &HeaderMap) -> Option<(String, SessionRecord)> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| SecretString::new(v.to_owned()))?;
    sso::session(state.storage.as_ref(), &value).await
}

fn signed_out() -> Response {
    refusal(
        StatusCode::UNAUTHORIZED,
        "You are not signed in",
        "Your session has ended or you signed out. Open a new sign-in link from the store.",
    )
}

fn csrf_refused() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        "Request refused",
        "This form was not sent from your current account page. Nothing was changed; \
         reload the page and try again.",
    )
}

fn failed() -> Response {
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "Nothing was changed. Please try again later.",
    )
}

/// The session and account for a form post, after checking its CSRF token.
async fn form_session(
    state: &SharedState,
    headers: &HeaderMap,
    form: &Result<Form<PageForm>, FormRejection>,
) -> Result<(String, SessionRecord, AccountRecord), Box<Response>> {
    let Some((h, sess)) = session(state, headers).await else {
        return Err(Box::new(signed_out()));
    };
    let given = match form {
        Ok(Form(f)) => f.csrf.as_deref().unwrap_or_default(),
        Err(_) => "",
    };
    if given.is_empty() || !sess.csrf.ct_eq(given) {
        return Err(Box::new(csrf_refused()));
    }
    match state.storage.account(&sess.store, &sess.account).await {
        Ok(Some(a)) => Ok((h, sess, a)),
        Ok(None) => Err(Box::new(signed_out())),
        Err(_) => Err(Box::new(failed())),
    }
}

fn back_to_account() -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/account"));
    resp
}

async fn committed(state: &SharedState) -> Response {
    match state.storage.durable().await {
        Ok(()) => back_to_account(),
        Err(_) => failed(),
    }
}

#[utoipa::path(
    get,
    operation_id = "account_pages.stylesheet",
    path = "/account/style.css",
    tags = ["account-pages", "strongroom-extension"],
    summary = "The account pages' stylesheet",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String))
)]
async fn stylesheet() -> Response {
    const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:52rem;margin:0 auto;padding:1.5rem}section{background:#fff;border:1px solid #dde1e7;\
border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:0}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eef0f3}\
label{display:block;margin:.4rem 0}input[type=text],input[type=email]{width:100%;max-width:24rem;padding:.3rem}\
button{padding:.35rem .8rem;border-radius:5px;border:1px solid #9aa3b2;background:#fff;cursor:pointer}\
button.danger{border-color:#c0392b;color:#c0392b}.notice{padding:.8rem;background:#fff4e5;border-radius:6px}\
form.inline{display:inline}.muted{color:#677}";
    let mut resp = CSS.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn csrf_field(sess: &SessionRecord) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(sess.csrf.expose_secret())
    )
}

#[utoipa::path(
    get,
    operation_id = "account_pages.account_page",
    path = "/account",
    tags = ["account-pages", "strongroom-extension"],
    summary = "The customer's account page",
    responses((status = 200, description = "The page", content_type = "text/html", body = String), (status = 401, description = "No or expired session: sign-in page", content_type = "text/html", body = String), (status = 403, description = "Missing or wrong CSRF token", content_type = "text/html", body = String), (status = 404, description = "Not found", content_type = "text/html", body = String), (status = 409, description = "State rule refused the change", content_type = "text/html", body = String), (status = 422, description = "Invalid form field", content_type = "text/html", body = String), (status = 503, description = "The vault is unreachable", content_type = "text/html", body = String)),
    security(("session" = []))
)]
async fn account_page(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let Some((_, sess)) = session(&state, &headers).await else {
        return signed_out();
    };
    let a = match state.storage.account(&sess.store, &sess.account).await {
        Ok(Some(a)) => a,
        Ok(None) => return signed_out(),
        Err(_) => return failed(),
    };
    let csrf = csrf_field(&sess);
    // Subscriptions and orders as stored now (one that cannot be read is left out).
    let mut subs = Vec::new();
    for sid in &a.subscriptions {
        if let Ok(Some(sub)) = state.storage.subscription(&a.store, sid).await {
            subs.push(sub);
        }
    }
    let mut orders = Vec::new();
    for oid in a.orders.iter().rev() {
        if let Ok(Some(o)) = state.storage.order(&a.store, oid).await {
            orders.push(o);
        }
    }
    let out = render::account(&a, &subs, &orders, &csrf);
    html(StatusCode::OK, layout("Your account", &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
