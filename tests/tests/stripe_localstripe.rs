//! The Stripe connector against `localstripe` (PyPI), a stateful fake Stripe server nobody here
//! wrote: a customer and a card payment method are made and attached there as a merchant's
//! Stripe.js checkout would, the checkout stores the `pm_…` with `payment.processorCustomer:
//! cus_…`, and `accounts-api dev` (the real vault and accounts-api) renews through it
//! (`VAULT_PROCESSOR_URL` + secret key, as the README says). localstripe's own PaymentIntents
//! are the witness of what Stripe would have received.
//!
//! localstripe keeps no idempotency keys, so the connector's `metadata[idempotency_key]` is how
//! a PaymentIntent is matched to its renewal here (as an operator would at Stripe), and "no
//! second PaymentIntent" is checked by counting them. Missing localstripe: SKIPPED locally, a
//! failure under `STRONGROOM_REQUIRE_TOOLS=1` (`.ci/run` installs it).

use serde_json::{Value, json};
use tests::accounts::{System, order_body, start_system_with_env};
use tests::localstripe::{self, LocalStripe};
use tests::temp_dir;

/// Stripe's test card that attaches fine and declines every charge (`card_declined`).
const DECLINING_CARD: &str = "4000000000000341";

fn start(ls: &LocalStripe) -> System {
    start_system_with_env(
        std::sync::Arc::new(temp_dir("strongroom-localstripe-")),
        &[
            ("VAULT_PROCESSOR_URL", &ls.url),
            ("VAULT_PROCESSOR_SECRET_KEY", localstripe::SECRET),
        ],
    )
}

/// A checkout of one monthly subscription paid with `pm` (saved for renewals), with the
/// processor's customer when given; returns (account, subscription, its `next`).
async fn checkout(sys: &System, pm: &str, customer: Option<&str>) -> (String, String, i64) {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let mut body = order_body(&email, pm, true, true, true);
    if let Some(c) = customer {
        body["payment"]["processorCustomer"] = json!(c);
    }
    let o = sys.call(&sys.demo, "POST", "/orders", Some(&body)).await;
    assert!(o.status.is_success(), "checkout: {}", o.text);
    assert!(!o.text.contains(pm), "the token is never answered");
    let account = o.str("/account");
    let sub = o.str("/items/0/subscription");
    let next = subscription(sys, &sub).await["next"]
        .as_i64()
        .unwrap_or_default();
    (account, sub, next)
}

async fn subscription(sys: &System, sub: &str) -> Value {
    let a = sys
        .call(&sys.demo, "GET", &format!("/subscriptions/{sub}"), None)
        .await;
    assert!(a.status.is_success(), "{}", a.text);
    a.json
}

/// `POST /subscriptions/charge` for one subscription: its result item.
async fn rebill(sys: &System, sub: &str) -> Value {
    let body = json!({"subscriptions": [{"subscription": sub}]});
    let a = sys
        .call(&sys.demo, "POST", "/subscriptions/charge", Some(&body))
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text);
    a.json["subscription"][0].clone()
}

/// The vault's charge route called again, as the renewal job would for the same period (same
/// idempotency key), with the `renewals` certificate of dev's vault.
async fn vault_charge_again(sys: &System, account: &str, key: &str) -> Value {
    let pms = tests::accounts::vault_payment_methods(
        &sys.vault_dir(),
        &sys.vault_addr,
        &sys.demo.store,
        account,
    )
    .await;
    assert_eq!(pms.len(), 1, "{pms:?}");
    let pki = sys.vault_dir().join("pki");
    let client = tests::vault::mtls_client(
        &pki.join("ca.pem"),
        &pki.join("renewals.pem"),
        &pki.join("renewals.key"),
    );
    let id = pms[0]["id"].as_str().unwrap_or_default();
    let resp = client
        .post(format!(
            "https://{}/v1/payment-methods/{id}/charge",
            sys.vault_addr
        ))
        .json(
            &json!({"store": sys.demo.store, "amount": 1495, "currency": "USD",
            "idempotencyKey": key, "description": "Renewal"}),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("vault charge: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap_or(Value::Null)
}

/// The PaymentIntents localstripe holds for one of our idempotency keys.
async fn intents_with_key(ls: &LocalStripe, key: &str) -> Vec<Value> {
    ls.payment_intents()
        .await
        .into_iter()
        .filter(|pi| pi["metadata"]["idempotency_key"] == key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebill_of_a_card_attached_to_a_stripe_customer_succeeds_once_per_period_with_our_idempotency_key()
 {
    let Some(ls) = LocalStripe::start() else {
        return;
    };
    let cus = ls.create_customer("jane@example.com").await;
    let pm = ls.attached_card("4242424242424242", &cus).await;
    let sys = start(&ls);
    let (account, sub, next) = checkout(&sys, &pm, Some(&cus)).await;

    let r = rebill(&sys, &sub).await;
    assert_eq!(r["result"], "success", "{r}");
    let key = format!("{}:{sub}:{next}", sys.demo.store);
    let intents = intents_with_key(&ls, &key).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    let pi = &intents[0];
    assert_eq!(pi["status"], "succeeded");
    assert_eq!(
        pi["customer"],
        cus.as_str(),
        "the Stripe customer, not our account id"
    );
    assert_eq!(pi["payment_method"], pm.as_str());
    assert_eq!(
        (pi["amount"].as_i64(), pi["currency"].as_str()),
        (Some(1495), Some("usd"))
    );
    let after = subscription(&sys, &sub).await;
    assert!(
        after["next"].as_i64() > Some(next),
        "period advanced: {after}"
    );
    assert_eq!(after["declineReason"], Value::Null);

    // The same period again: a second rebill, and the vault asked with the same key, make no
    // second PaymentIntent (the vault answers the recorded outcome with the same `pi_…`).
    let again = rebill(&sys, &sub).await;
    let replay = vault_charge_again(&sys, &account, &format!("{sub}:{next}")).await;
    assert_eq!(replay["status"], "succeeded", "{replay}");
    assert_eq!(replay["processorReference"], pi["id"]);
    assert_eq!(
        ls.payment_intents().await.len(),
        1,
        "one PaymentIntent for one period (second rebill: {again})"
    );

    // A payment method saved without a processor customer: `customer` is left out, never
    // filled with our account id (which Stripe would refuse as an unknown customer).
    let loose = ls
        .post(
            "payment_methods",
            &[
                ("type", "card"),
                ("card[number]", "4242424242424242"),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2030"),
                ("card[cvc]", "123"),
            ],
        )
        .await
        .1["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (other_account, other, other_next) = checkout(&sys, &loose, None).await;
    assert_eq!(rebill(&sys, &other).await["result"], "success");
    let key = format!("{}:{other}:{other_next}", sys.demo.store);
    let intents = intents_with_key(&ls, &key).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["customer"], Value::Null);
    assert_ne!(intents[0]["customer"], other_account.as_str());

    let logs = sys.logs();
    assert!(
        !logs.contains(&pm) && !logs.contains(&loose),
        "a token in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declining_card_at_stripe_records_the_decline_code_and_a_repeat_of_its_period_charges_nothing()
 {
    let Some(ls) = LocalStripe::start() else {
        return;
    };
    let cus = ls.create_customer("dan@example.com").await;
    let pm = ls.attached_card(DECLINING_CARD, &cus).await;
    let sys = start(&ls);
    let (account, sub, next) = checkout(&sys, &pm, Some(&cus)).await;

    // localstripe answers Stripe's 402 `card_declined` (no `decline_code`: the code is used).
    let r = rebill(&sys, &sub).await;
    assert_eq!(r["result"], "error", "{r}");
    assert_eq!(r["error"]["subscription"], "CARD_DECLINED", "{r}");
    let s = subscription(&sys, &sub).await;
    assert_eq!(s["declineReason"], "card_declined", "{s}");
    // Declined with retries pending: `overdue` in the subscription state machine (issue 13,
    // part 1), still active until the last retry.
    assert_eq!(s["state"], "overdue", "{s}");
    let events = sys
        .merchant(&sys.demo)
        .unprocessed_events(&[("begin", "0")])
        .await;
    let failed: Vec<&Value> = events.json["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "subscription.charge.failed")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(failed.len(), 1, "{}", events.text);
    assert!(
        failed[0].to_string().contains("card_declined"),
        "the event carries the decline code: {}",
        failed[0]
    );

    let key = format!("{}:{sub}:{next}", sys.demo.store);
    let intents = intents_with_key(&ls, &key).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["status"], "requires_payment_method");
    assert_eq!(intents[0]["customer"], cus.as_str());

    // The declined period asked again with its key: the recorded decline, no new PaymentIntent.
    let replay = vault_charge_again(&sys, &account, &format!("{sub}:{next}")).await;
    assert_eq!(
        (replay["status"].as_str(), replay["reason"].as_str()),
        (Some("declined"), Some("card_declined")),
        "{replay}"
    );
    assert_eq!(ls.payment_intents().await.len(), 1);
    assert!(!sys.logs().contains(&pm), "the token in the logs");
}
