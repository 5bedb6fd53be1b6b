//! Checkout completion: account find-or-create (also under 20 concurrent first orders), store
//! isolation and saved payment methods in process (`tests::inproc`, the real vault binary where
//! a token is saved); the consent matrix with its log and folder scans, dev's restart and a dead
//! vault against the real binaries.

use serde_json::{Value, json};
use tests::accounts::{
    Merchant, SaveBox, one_off_order, order_body, start_system, subscription_order, unique_token,
};
use tests::inproc::{spawn_app, spawn_app_with_vault};
use tests::{all_files, contains_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_order_creates_the_account_second_joins_it_and_another_store_gets_its_own() {
    let app = spawn_app();
    let first = app.complete_order(&one_off_order("Jane@Example.com")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["result"], "success");
    assert_eq!(first.json["completed"], true);
    let account = first.str("/account");
    assert!(!account.is_empty());
    assert_eq!(first.json["payment"]["cardEnding"], "4242");
    assert_eq!(first.json["payment"]["creditCard"], "Visa");

    let second = app
        .complete_order(&one_off_order(" jane@example.COM"))
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(
        second.json["account"],
        account.as_str(),
        "same email, same store: same account"
    );
    assert_ne!(second.json["id"], first.json["id"]);

    let got = app.get_account(&account).await;
    assert_eq!(got.status, 200);
    let orders = got.json["accounts"][0]["orders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(orders.len(), 2);
    let charges = got.json["accounts"][0]["charges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(charges.len(), 2, "{}", got.text);
    assert_eq!(charges[0]["order"], first.json["id"]);
    assert_eq!(charges[0]["orderReference"], first.json["reference"]);
    assert_eq!(charges[0]["total"], 14.95);
    assert_eq!(charges[0]["currency"], "USD");
    assert_eq!(charges[0]["status"], "successful");

    // A second store, created over the admin socket while the server runs.
    let other_creds = app.create_store("Other Shop").await;
    assert_ne!(other_creds.store, app.demo.store);
    let other = app.as_store(&other_creds);
    let third = other
        .complete_order(&one_off_order("jane@example.com"))
        .await;
    assert_eq!(third.status, 200, "{}", third.text);
    assert_ne!(
        third.json["account"],
        account.as_str(),
        "another store: another account"
    );
    // And neither store sees the other's records.
    let cross = other.get_account(&account).await;
    assert_eq!(cross.status, 404);
    let order_id = first.str("/id");
    assert_eq!(other.get_order(&order_id).await.status, 404);
    let own = app.get_order(&order_id).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.json["account"], account.as_str());
    assert_eq!(own.json["reference"], first.json["reference"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_orders_with_one_email_make_exactly_one_account() {
    let app = spawn_app_with_vault();
    let mut tasks = Vec::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    for _ in 0..20 {
        let demo = Merchant::clone(&app);
        let barrier = std::sync::Arc::clone(&barrier);
        // Every one saves a card: the vault call between resolving the account and the
        // transaction keeps them in flight together, so most lose the race and redo.
        let body = subscription_order("race@example.com", SaveBox::NotShown);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            demo.complete_order(&body).await
        }));
    }
    let mut accounts = std::collections::HashSet::new();
    for t in tasks {
        let a = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{}", a.text);
        accounts.insert(a.str("/account"));
    }
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let all = app.list_accounts(&[]).await;
    assert_eq!(all.json["total"], 1, "{}", all.text);
    let account = accounts.into_iter().next().unwrap_or_default();
    let got = app.get_account(&account).await;
    assert_eq!(
        got.json["accounts"][0]["orders"].as_array().map(Vec::len),
        Some(20)
    );
    assert_eq!(
        got.json["accounts"][0]["subscriptions"]
            .as_array()
            .map(Vec::len),
        Some(20)
    );
    // Twenty distinct tokens saved, all under the one account.
    assert_eq!(
        app.vault_payment_methods(&app.demo.store, &account)
            .await
            .len(),
        20
    );
    assert_eq!(got.json["accounts"][0]["payment"]["methods"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_matrix_saves_the_token_only_for_consenting_subscriptions_and_leaves_no_trace_otherwise()
 {
    let mut sys = start_system();
    let demo = sys.demo.clone();
    // (subscription, presented, accepted, expect saved). "Not presented" is sent both with
    // accepted=false and accepted=true: an unshown box cannot be refused, so both consent —
    // the three consenting subscription cases; every one-off order drops the token.
    let cases = [
        (false, false, false, false),
        (false, false, true, false),
        (false, true, true, false),
        (false, true, false, false),
        (true, false, false, true),
        (true, false, true, true),
        (true, true, true, true),
        (true, true, false, false),
    ];
    let mut tokens = Vec::new();
    let mut responses = String::new();
    for (i, (sub, presented, accepted, saved)) in cases.into_iter().enumerate() {
        let token = unique_token();
        let email = format!("consent{i}@example.com");
        let a = sys
            .call(
                &demo,
                "POST",
                "/orders",
                Some(&order_body(&email, &token, sub, presented, accepted)),
            )
            .await;
        assert_eq!(a.status, 200, "case {i}: {}", a.text);
        responses.push_str(&a.text);
        let account = a.json["account"].as_str().unwrap_or_default().to_owned();
        let in_vault = sys.vault_payment_methods(&demo.store, &account).await;
        assert_eq!(
            in_vault.len(),
            usize::from(saved),
            "case {i}: vault holds {in_vault:?}"
        );
        let acc = sys
            .call(&demo, "GET", &format!("/accounts/{account}"), None)
            .await;
        responses.push_str(&acc.text);
        assert_eq!(
            acc.json["accounts"][0]["payment"]["methods"],
            u64::from(saved),
            "case {i}"
        );
        let pms = sys
            .call(
                &demo,
                "GET",
                &format!("/accounts/{account}/payment-methods"),
                None,
            )
            .await;
        responses.push_str(&pms.text);
        assert_eq!(
            pms.json["paymentMethods"].as_array().map(Vec::len),
            Some(usize::from(saved)),
            "case {i}"
        );
        if sub {
            let sid = a.json["items"][0]["subscription"]
                .as_str()
                .unwrap_or_default();
            let s = sys
                .call(&demo, "GET", &format!("/subscriptions/{sid}"), None)
                .await;
            responses.push_str(&s.text);
            assert_eq!(s.json["autoRenew"], saved, "case {i}: {}", s.text);
            assert_eq!(s.json["paymentMethodId"].is_string(), saved, "case {i}");
        } else {
            assert_eq!(a.json["items"][0]["subscription"], Value::Null);
        }
        tokens.push((token, saved));
    }
    assert!(sys.stop(), "dev process did not stop on SIGTERM");
    let logs = sys.logs();
    assert!(logs.contains("vault"), "vault logs were not captured");
    let accounts_files = all_files(&sys.accounts_dir());
    let vault_files = all_files(&sys.vault_dir());
    assert!(!accounts_files.is_empty() && !vault_files.is_empty());
    for (token, saved) in &tokens {
        let t = token.as_bytes();
        assert!(
            !contains_bytes(logs.as_bytes(), t),
            "token in the logs (saved={saved})"
        );
        assert!(
            !contains_bytes(responses.as_bytes(), t),
            "token in a response"
        );
        for (path, bytes) in &accounts_files {
            assert!(
                !contains_bytes(bytes, t),
                "token in accounts-api file {}",
                path.display()
            );
        }
        // Saved tokens are encrypted in the vault; dropped ones never reached it.
        for (path, bytes) in &vault_files {
            assert!(
                !contains_bytes(bytes, t),
                "token in clear in vault file {}",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_payment_methods_show_brand_last_four_and_expiry_only_and_removal_makes_renewal_manual()
 {
    let app = spawn_app_with_vault();
    let token = unique_token();
    let o = app
        .complete_order(&order_body("pm@example.com", &token, true, true, true))
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let account = o.str("/account");
    let list = app.payment_methods(&account).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let pms = list.json["paymentMethods"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(pms.len(), 1);
    let pm = &pms[0];
    assert_eq!(pm["brand"], "Visa");
    assert_eq!(pm["last4"], "4242");
    assert_eq!(pm["expiry"], "12/30");
    let keys: Vec<&String> = pm
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    for k in &keys {
        assert!(
            ["id", "type", "brand", "last4", "expiry", "maskedEmail"].contains(&k.as_str()),
            "unexpected field {k}"
        );
    }
    assert!(!list.text.contains(&token));

    // The same token again for the same account: the vault recognises it, still one method.
    let again = app
        .complete_order(&order_body("pm@example.com", &token, true, false, false))
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        app.vault_payment_methods(&app.demo.store, &account)
            .await
            .len(),
        1
    );

    // Another store cannot see or remove it.
    let other = app.as_store(&app.create_store("Nosy").await);
    let pm_id = pm["id"].as_str().unwrap_or_default();
    assert_eq!(
        other.remove_payment_method(&account, pm_id).await.status,
        404
    );
    assert_eq!(other.payment_methods(&account).await.status, 404);

    let removed = app.remove_payment_method(&account, pm_id).await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    assert!(
        app.vault_payment_methods(&app.demo.store, &account)
            .await
            .is_empty()
    );
    let sid = o.str("/items/0/subscription");
    let s = app.get_subscription(&sid).await;
    assert_eq!(s.json["autoRenew"], false, "{}", s.text);
    assert_eq!(s.json["paymentMethodId"], Value::Null);
    let acc = app.get_account(&account).await;
    assert_eq!(
        acc.json["accounts"][0]["payment"],
        json!({"methods": 0, "active": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_stops_both_processes_and_a_restart_keeps_the_demo_credentials_and_the_data() {
    let mut sys = start_system();
    let demo = sys.demo.clone();
    let o = sys
        .call(
            &demo,
            "POST",
            "/orders",
            Some(&order_body(
                "keep@example.com",
                &unique_token(),
                true,
                false,
                false,
            )),
        )
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let account = o.json["account"].as_str().unwrap_or_default().to_owned();
    let vault_pid = sys.vault_pid;
    assert!(std::path::Path::new(&format!("/proc/{vault_pid}")).exists());
    assert!(sys.stop(), "dev did not stop on SIGTERM");
    assert!(
        !std::path::Path::new(&format!("/proc/{vault_pid}")).exists(),
        "the vault child outlived dev"
    );

    let data = std::sync::Arc::clone(&sys.data);
    drop(sys);
    let again = tests::accounts::start_system_in(data);
    assert_eq!(again.demo.store, demo.store);
    assert_eq!(again.demo.username, demo.username);
    assert_eq!(again.demo.password, demo.password);
    let got = again
        .call(&demo, "GET", &format!("/accounts/{account}"), None)
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        again
            .vault_payment_methods(&demo.store, &account)
            .await
            .len(),
        1
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(again.accounts_dir().join("dev-store.json"))
            .map(|m| m.permissions())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(mode & 0o077, 0, "dev credentials file must be owner-only");
    let sock = std::fs::metadata(again.accounts_dir().join("admin.sock"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&sock.permissions()) & 0o077,
        0,
        "admin socket must be owner-only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_dev_vault_gone_saving_checkouts_answer_503_and_others_still_complete() {
    let sys = start_system();
    let demo = sys.demo.clone();
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(sys.vault_pid.to_string())
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sys.logs().contains("the vault process exited") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        sys.logs().contains("the vault process exited"),
        "dev did not notice"
    );
    let saving = sys
        .call(
            &demo,
            "POST",
            "/orders",
            Some(&order_body(
                "gone@example.com",
                &unique_token(),
                true,
                true,
                true,
            )),
        )
        .await;
    assert_eq!(saving.status, 503, "{}", saving.text);
    assert!(saving.headers.get("retry-after").is_some());
    assert_eq!(
        sys.call(&demo, "GET", "/accounts?email=gone@example.com", None)
            .await
            .status,
        404,
        "nothing written"
    );
    // No token to save: the vault is not needed, the order completes (manual renewal).
    let manual = sys
        .call(
            &demo,
            "POST",
            "/orders",
            Some(&order_body(
                "gone@example.com",
                &unique_token(),
                true,
                true,
                false,
            )),
        )
        .await;
    assert_eq!(manual.status, 200, "{}", manual.text);
    assert_eq!(manual.json["autoRenew"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paypal_subscription_saves_a_method_shown_with_a_masked_email_only() {
    let app = spawn_app_with_vault();
    let token = unique_token();
    let mut body = order_body("payer@example.com", &token, true, false, false);
    body["payment"] =
        json!({"token": token, "type": "paypal", "email": "Payer.Person@Example.com"});
    let o = app.complete_order(&body).await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(o.json["payment"]["type"], "paypal");
    let account = o.str("/account");
    let list = app.payment_methods(&account).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["paymentMethods"][0]["type"], "paypal");
    assert_eq!(
        list.json["paymentMethods"][0]["maskedEmail"],
        "p***@example.com"
    );
    assert!(
        !list.text.contains("Payer.Person"),
        "clear payer email shown: {}",
        list.text
    );
    let sid = o.str("/items/0/subscription");
    let s = app.get_subscription(&sid).await;
    assert_eq!(s.json["paymentMethod"], "PAYPAL");
    assert_eq!(s.json["autoRenew"], true);
}
