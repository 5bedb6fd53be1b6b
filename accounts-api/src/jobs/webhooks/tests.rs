use super::*;

#[test]
fn signature_is_base64_of_hmac_sha256_over_the_raw_body() {
    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    let s = shared::SecretString::new("Jefe".into());
    let expected = base64::engine::general_purpose::STANDARD.encode(
        hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
            .unwrap_or_default(),
    );
    assert_eq!(sign(&s, &[b"what do ya want for nothing?"]), expected);
}

fn id(s: &str) -> EventId {
    crate::model::test_id(s)
}

fn item(event: &str, attempts: u32, received: bool) -> OutboxItem {
    OutboxItem {
        store: crate::model::test_id("st"),
        hook: crate::model::test_id("h"),
        event: id(event),
        attempts,
        received,
    }
}

#[test]
fn a_202_body_is_one_event_id_per_line_or_acknowledges_nothing() {
    let ids =
        |b: &[u8]| listed_ids(b).map(|s| s.into_iter().collect::<std::collections::BTreeSet<_>>());
    assert_eq!(
        ids(b"e1\r\n  e2 \n\ne3\n"),
        Some([id("e1"), id("e2"), id("e3")].into())
    );
    assert_eq!(ids(b""), Some(Default::default()));
    // Not a list of ids: nothing, even where a line would be one.
    assert_eq!(ids(b"<html>ok</html>\ne1"), None);
    assert_eq!(ids(b"[\"e1\"]"), None);
    assert_eq!(ids(b"e1,e2"), None);
    assert_eq!(ids(b"e1\n\xff"), None);
    assert_eq!(ids("e1\n".repeat(2).as_bytes()), Some([id("e1")].into()));
}

#[test]
fn a_202_settles_the_listed_events_and_schedules_the_others_again() {
    let settings = Settings {
        webhook_retry_base: Duration::from_millis(100),
        webhook_max_attempts: 3,
        ..Settings::default()
    };
    let sent = vec![item("a", 0, false), item("b", 0, false), item("c", 2, true)];
    let answer = Answer::Listed(Some([id("a"), id("zz")].into()));
    let plan = settlement(&settings, 1_000, vec![id("gone")], sent, &answer);
    let s = &plan.settlement;
    assert_eq!(
        s.processed,
        vec![id("a")],
        "an id not in the post is ignored"
    );
    assert_eq!(s.remove, vec![id("gone"), id("a"), id("c")]);
    assert_eq!(plan.exhausted, 1, "c had its last attempt");
    assert_eq!(s.retry.len(), 1);
    let (e, st) = &s.retry[0];
    assert_eq!(
        (e, st.attempts, st.due, st.received),
        (&id("b"), 1, 1_100, true)
    );
}

#[test]
fn an_unparseable_202_acknowledges_nothing_and_a_failure_keeps_received() {
    let settings = Settings {
        webhook_retry_base: Duration::from_millis(100),
        webhook_max_attempts: 10,
        ..Settings::default()
    };
    let sent = || vec![item("a", 0, false), item("b", 1, true)];
    let plan = settlement(&settings, 0, vec![], sent(), &Answer::Listed(None));
    assert!(plan.settlement.processed.is_empty() && plan.settlement.remove.is_empty());
    let got: Vec<_> = plan
        .settlement
        .retry
        .iter()
        .map(|(e, s)| (e.clone(), s.attempts, s.received))
        .collect();
    assert_eq!(got, vec![(id("a"), 1, true), (id("b"), 2, true)]);
    let plan = settlement(
        &settings,
        0,
        vec![],
        sent(),
        &Answer::Failed("status 503".into()),
    );
    let got: Vec<_> = plan
        .settlement
        .retry
        .iter()
        .map(|(e, s)| (e.clone(), s.attempts, s.received))
        .collect();
    assert_eq!(got, vec![(id("a"), 1, false), (id("b"), 2, true)]);
    let plan = settlement(&settings, 0, vec![], sent(), &Answer::All);
    assert_eq!(plan.settlement.processed, vec![id("a"), id("b")]);
    assert!(plan.settlement.retry.is_empty());
}

#[test]
fn round_robin_serves_every_store_once_before_any_twice_and_caps_each_store() {
    let st = |s: &str| -> StoreId { crate::model::test_id(s) };
    let hooks = |n: usize| -> Vec<WebhookId> {
        (0..n)
            .map(|i| crate::model::test_id(&format!("h{i}")))
            .collect()
    };
    // "hog" has 100 webhooks with due rows and 3 already in flight; two others have one.
    let wants = vec![
        (st("hog"), hooks(100)),
        (st("a"), hooks(1)),
        (st("b"), hooks(1)),
    ];
    let busy: HashMap<StoreId, usize> = [(st("hog"), 3)].into();
    let p = round_robin(&wants, &busy, 8, 64);
    let of = |s: &str| p.posts.iter().filter(|(x, _)| *x == st(s)).count();
    assert_eq!(
        (of("hog"), of("a"), of("b")),
        (5, 1, 1),
        "hog up to 8 in flight"
    );
    assert_eq!(
        &p.posts[..3]
            .iter()
            .map(|(s, _)| s.clone())
            .collect::<Vec<_>>(),
        &[st("hog"), st("a"), st("b")]
    );
    assert!(!p.cut);
    // The global limit: two slots left go to two stores, not to the first one twice.
    let p = round_robin(&wants, &HashMap::new(), 8, 2);
    assert_eq!(
        p.posts.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
        vec![st("hog"), st("a")]
    );
    assert!(p.cut, "b was left out by the global limit");
    assert_eq!(p.last_served, Some(st("a")));
    assert_eq!(round_robin(&wants, &HashMap::new(), 8, 0).posts, vec![]);
}

#[test]
fn the_scan_gives_each_store_what_it_can_have_in_flight() {
    let settings = Settings {
        webhook_in_flight_per_store: 3,
        ..Settings::default()
    };
    let s = scan(&settings, 7, None);
    assert_eq!(
        (s.now, s.per_hook, s.per_store, s.limit),
        (7, BATCH, 3 * BATCH, SCAN_LIMIT)
    );
}

#[test]
fn backoff_doubles_from_the_base_and_is_capped() {
    let b = Duration::from_millis(100);
    assert_eq!(backoff(b, 1), Duration::from_millis(100));
    assert_eq!(backoff(b, 2), Duration::from_millis(200));
    assert_eq!(backoff(b, 4), Duration::from_millis(800));
    assert_eq!(backoff(b, 60), Duration::from_secs(3600));
}

#[test]
fn the_delivery_lease_outlasts_the_webhook_timeout_by_a_minute_and_is_never_below_two_minutes() {
    let with = |timeout: Duration| {
        let settings = Settings {
            webhook_timeout: timeout,
            ..Settings::default()
        };
        (lease_ms(&settings), scan(&settings, 0, None).lease_ms)
    };
    assert_eq!(with(Duration::from_secs(10)), (120_000, 120_000));
    assert_eq!(with(Duration::from_secs(240)), (300_000, 300_000));
    assert_eq!(with(Duration::from_secs(u64::MAX)).0, i64::MAX);
}
