//! HTML of the account pages: escaping, the layout and its security headers, refusals, and
//! the account page itself. Pure functions of records; the handlers in `pages/mod.rs` fetch.

use crate::model::{
    AccountRecord, OrderRecord, SubState, SubscriptionRecord, display_date, to_major,
};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::{CardBrand, Currency};
use std::fmt::Write as _;

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Headers of every HTML answer: no script, styles only from us, forms only to us, no framing,
/// no referrer (a sign-in URL never leaks to another site), never cached.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn layout(title: &str, content: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/account/style.css\"></head>\
         <body><main>{content}</main></body></html>\n",
        esc(title)
    )
}

/// A page that explains a refusal; never shows account data.
pub fn refusal(status: StatusCode, title: &str, message: &str) -> Response {
    html(
        status,
        layout(
            title,
            &format!(
                "<h1>{}</h1><p class=\"notice\">{}</p>",
                esc(title),
                esc(message)
            ),
        ),
    )
}

fn money(minor: i64, currency: &str) -> String {
    let exp = Currency::parse(currency).map(|c| c.exponent()).unwrap_or(2);
    format!(
        "{:.*} {}",
        usize::from(exp),
        to_major(minor, exp),
        esc(currency)
    )
}

fn opt(s: &Option<String>) -> String {
    esc(s.as_deref().unwrap_or_default())
}

/// The account page's body: contact and address form, saved payment methods, subscriptions
/// and orders (newest first), each change a CSRF-protected form.
pub fn account(
    a: &AccountRecord,
    subs: &[SubscriptionRecord],
    orders: &[OrderRecord],
    csrf: &str,
) -> String {
    let c = &a.contact;
    let addr = a.address.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = write!(
        out,
        "<h1>Your account</h1><p class=\"muted\">{} {} · {}</p>",
        esc(&c.first),
        esc(&c.last),
        esc(&c.email)
    );
    // Contact and address.
    let field = |name: &str, label: &str, value: String, kind: &str| {
        format!(
            "<label>{label}<br><input type=\"{kind}\" name=\"{name}\" id=\"{name}\" value=\"{value}\"></label>"
        )
    };
    let _ = write!(
        out,
        "<section><h2>Contact details and address</h2>\
         <form method=\"post\" action=\"/account/profile\">{csrf}{}{}{}{}{}{}{}{}{}{}{}\
         <button type=\"submit\" id=\"save-profile\">Save</button></form></section>",
        field("first", "First name", esc(&c.first), "text"),
        field("last", "Last name", esc(&c.last), "text"),
        field("email", "Email", esc(&c.email), "email"),
        field("phone", "Phone", opt(&c.phone), "text"),
        field("company", "Company", opt(&c.company), "text"),
        field("addressLine1", "Address", opt(&addr.address_line1), "text"),
        field(
            "addressLine2",
            "Address (line 2)",
            opt(&addr.address_line2),
            "text"
        ),
        field("city", "City", opt(&addr.city), "text"),
        field("region", "Region", opt(&addr.region), "text"),
        field("postalCode", "Postal code", opt(&addr.postal_code), "text"),
        field("country", "Country (ISO code)", opt(&a.country), "text"),
    );
    // Saved payment methods: brand, last four and expiry only.
    out.push_str("<section><h2>Saved payment methods</h2>");
    if a.payment_methods.is_empty() {
        out.push_str("<p class=\"muted\" id=\"no-payment-methods\">No saved payment methods.</p>");
    } else {
        out.push_str("<table><tr><th>Card</th><th>Number</th><th>Expires</th><th></th></tr>");
        for pm in &a.payment_methods {
            let brand = pm
                .brand
                .as_deref()
                .map(|b| {
                    CardBrand::parse(b)
                        .map(|b| b.display_name().to_owned())
                        .unwrap_or_else(|_| b.to_owned())
                })
                .unwrap_or_else(|| pm.kind.clone());
            let expiry = match (pm.exp_month, pm.exp_year) {
                (Some(m), Some(y)) => crate::domain::card::display(m, y),
                _ => String::new(),
            };
            let _ = write!(
                out,
                "<tr class=\"payment-method\"><td>{}</td><td>•••• {}</td><td>{}</td><td>\
                 <form class=\"inline\" method=\"post\" action=\"/account/payment-methods/{}/remove\">{csrf}\
                 <button class=\"danger\" type=\"submit\">Remove</button></form></td></tr>",
                esc(&brand),
                opt(&pm.last4),
                esc(&expiry),
                esc(&pm.id)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    // Subscriptions.
    out.push_str("<section><h2>Subscriptions</h2>");
    if a.subscriptions.is_empty() {
        out.push_str("<p class=\"muted\">No subscriptions.</p>");
    } else {
        out.push_str(
            "<table><tr><th>Product</th><th>State</th><th>Renewal</th><th>Next charge</th><th></th></tr>",
        );
        for s in subs {
            let form: String = actions(s)
                .iter()
                .map(|(label, action)| {
                    format!(
                        "<form class=\"inline\" method=\"post\" \
                         action=\"/account/subscriptions/{}/{action}\">{csrf}\
                         <button type=\"submit\">{label}</button></form>",
                        esc(s.id.as_str())
                    )
                })
                .collect();
            let _ = write!(
                out,
                "<tr class=\"subscription\"><td>{}</td><td>{}</td><td>{}</td><td>{} · {}</td><td>\
                 {form}</td></tr>",
                esc(&s.product),
                if s.lifecycle.pause_scheduled.is_some() {
                    "active · pause scheduled"
                } else {
                    s.state.as_str()
                },
                if s.auto_renew { "automatic" } else { "manual" },
                esc(&display_date(s.next)),
                money(s.price * i64::from(s.quantity), &s.currency),
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    // Orders.
    out.push_str("<section><h2>Orders</h2>");
    if a.orders.is_empty() {
        out.push_str("<p class=\"muted\">No orders.</p>");
    } else {
        out.push_str("<table><tr><th>Reference</th><th>Date</th><th>Total</th></tr>");
        for o in orders {
            let _ = write!(
                out,
                "<tr class=\"order\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&o.reference),
                esc(&display_date(o.completed)),
                money(o.total, &o.currency)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/account/logout\">{csrf}\
         <button type=\"submit\" id=\"logout\">Sign out</button></form>"
    );
    out
}

/// The actions (button label, form path) a subscription's state allows the customer: cancel a
/// running one (active, overdue or paused), uncancel a canceled one, pause an active one for a
/// period, resume a paused one or one with a pause scheduled; none on a deactivated one.
fn actions(s: &SubscriptionRecord) -> Vec<(&'static str, &'static str)> {
    const CANCEL: (&str, &str) = ("Cancel", "cancel");
    const RESUME: (&str, &str) = ("Resume", "unpause");
    match s.state {
        SubState::Active if s.lifecycle.pause_scheduled.is_some() => vec![CANCEL, RESUME],
        SubState::Active => vec![CANCEL, ("Pause 1 period", "pause")],
        SubState::Overdue => vec![CANCEL],
        SubState::Paused => vec![CANCEL, RESUME],
        SubState::Canceled => vec![("Resume", "resume")],
        SubState::Deactivated => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::fixtures;

    #[test]
    fn a_subscription_offers_only_the_action_its_state_allows() {
        let mut a = fixtures::account("st", "page@example.com", None);
        let mut subs = Vec::new();
        for state in [
            SubState::Active,
            SubState::Canceled,
            SubState::Deactivated,
            SubState::Overdue,
            SubState::Paused,
        ] {
            let mut s = fixtures::subscription("st", &a.id, 0, Some("pm_1"));
            s.state = state;
            a.subscriptions.push(s.id.clone());
            subs.push(s);
        }
        let html = account(&a, &subs, &[], "");
        let form = |s: &SubscriptionRecord, action: &str| {
            format!("/account/subscriptions/{}/{action}", s.id.as_str())
        };
        assert!(html.contains(&form(&subs[0], "cancel")));
        assert!(!html.contains(&form(&subs[0], "resume")));
        assert!(html.contains(&form(&subs[1], "resume")));
        assert!(!html.contains(&form(&subs[1], "cancel")));
        // A deactivated subscription has no button (its cancel was refused: a click did nothing).
        assert!(!html.contains(&form(&subs[2], "cancel")));
        assert!(!html.contains(&form(&subs[2], "resume")));
        assert!(html.contains("deactivated"), "its row is still shown");
        for running in &subs[3..] {
            assert!(
                html.contains(&form(running, "cancel")),
                "{:?}",
                running.state
            );
            assert!(
                !html.contains(&form(running, "resume")),
                "{:?}",
                running.state
            );
        }
    }

    #[test]
    fn pause_is_offered_on_an_active_subscription_and_resume_on_a_paused_or_pause_scheduled_one() {
        let mut a = fixtures::account("st", "pause-page@example.com", None);
        let mut subs = Vec::new();
        for (state, scheduled) in [
            (SubState::Active, false),
            (SubState::Active, true),
            (SubState::Paused, false),
            (SubState::Overdue, false),
            (SubState::Canceled, false),
            (SubState::Deactivated, false),
        ] {
            let mut s = fixtures::subscription("st", &a.id, 0, Some("pm_1"));
            s.state = state;
            s.lifecycle.pause_scheduled = scheduled.then_some(1);
            a.subscriptions.push(s.id.clone());
            subs.push(s);
        }
        let html = account(&a, &subs, &[], "");
        let offers = |s: &SubscriptionRecord, action: &str| {
            html.contains(&format!(
                "action=\"/account/subscriptions/{}/{action}\"",
                s.id.as_str()
            ))
        };
        // (pause, unpause, cancel) per subscription above.
        let expected = [
            (true, false, true),
            (false, true, true),
            (false, true, true),
            (false, false, true),
            (false, false, false),
            (false, false, false),
        ];
        for (s, want) in subs.iter().zip(expected) {
            let got = (
                offers(s, "pause"),
                offers(s, "unpause"),
                offers(s, "cancel"),
            );
            let what = (s.state, s.lifecycle.pause_scheduled);
            assert_eq!(got, want, "{what:?}");
        }
        assert!(html.contains(">Pause 1 period</button>"));
        assert!(html.contains("active · pause scheduled"), "the row says so");
    }
}
