//! A webhook receiver for the tests: a real HTTP server (axum on 127.0.0.1) that records every
//! post, verifies `X-FS-Signature` (base64 HMAC-SHA256 of the raw body) and the timestamped
//! `X-Strongroom-Signature`, and answers as the test tells it (200, 202 with a list, 5xx, or
//! any status and body).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the receiver answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Ok,
    /// 202 acknowledging only these event ids (one per line in the body).
    Partial(Vec<String>),
    Fail,
    /// This status with this body, as given (e.g. a 202 whose body is not a list of ids).
    Raw(u16, String),
}

/// One post as received.
#[derive(Clone, Debug)]
pub struct Post {
    pub body: String,
    pub json: Value,
    pub signature_valid: Option<bool>,
    pub timestamp_signature_valid: Option<bool>,
}

impl Post {
    pub fn event_ids(&self) -> Vec<String> {
        self.json["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct Inner {
    secret: Option<String>,
    reply: Mutex<Reply>,
    posts: Mutex<Vec<Post>>,
    /// How long each answer takes (a slow receiver), and the most posts seen at once.
    delay: Mutex<Duration>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

fn hmac_b64(secret: &str, parts: &[&[u8]]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    use std::sync::atomic::Ordering::SeqCst;
    let now = inner.in_flight.fetch_add(1, SeqCst) + 1;
    inner.max_in_flight.fetch_max(now, SeqCst);
    let delay = inner.delay.lock().map(|d| *d).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = answer(&inner, &headers, body);
    inner.in_flight.fetch_sub(1, SeqCst);
    answer
}

fn answer(inner: &Inner, headers: &HeaderMap, body: Bytes) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (sig, ts, ts_sig) = (
        h("x-fs-signature"),
        h("x-strongroom-timestamp"),
        h("x-strongroom-signature"),
    );
    let (signature_valid, timestamp_signature_valid) = match &inner.secret {
        None => (None, None),
        Some(s) => (
            Some(sig.as_deref() == Some(hmac_b64(s, &[&body]).as_str())),
            Some(match &ts {
                Some(t) => {
                    ts_sig.as_deref() == Some(hmac_b64(s, &[t.as_bytes(), b".", &body]).as_str())
                }
                None => false,
            }),
        ),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let post = Post {
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        body: text,
        signature_valid,
        timestamp_signature_valid,
    };
    let reply = inner.reply.lock().map(|r| r.clone()).unwrap_or(Reply::Fail);
    if let Ok(mut p) = inner.posts.lock() {
        p.push(post);
    }
    match reply {
        Reply::Ok => StatusCode::OK.into_response(),
        Reply::Partial(ids) => (StatusCode::ACCEPTED, ids.join("\n")).into_response(),
        Reply::Fail => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Reply::Raw(status, body) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response(),
    }
}

impl Receiver {
    /// Starts on `addr` (use port 0 for a free one) with an optional shared secret.
    pub async fn start(addr: SocketAddr, secret: Option<&str>, reply: Reply) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("receiver bind {addr}: {e}"));
        Self::from_listener(listener, secret, reply)
    }

    /// Starts on an already-bound listener (e.g. a socket reserved earlier with
    /// `TcpSocket::bind` and turned into a listener with `listen`, so the port is never free
    /// for another process to take in between).
    pub fn from_listener(
        listener: tokio::net::TcpListener,
        secret: Option<&str>,
        reply: Reply,
    ) -> Receiver {
        let inner = Arc::new(Inner {
            secret: secret.map(str::to_owned),
            reply: Mutex::new(reply),
            posts: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        });
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(Arc::clone(&inner));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Receiver {
            addr,
            inner,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_reply(&self, reply: Reply) {
        if let Ok(mut r) = self.inner.reply.lock() {
            *r = reply;
        }
    }

    /// Every answer waits `delay` first (a slow receiver: posts can overlap).
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut d) = self.inner.delay.lock() {
            *d = delay;
        }
    }

    /// The most posts that were in progress at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn posts(&self) -> Vec<Post> {
        self.inner
            .posts
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Every event id received so far (with repeats).
    pub fn event_ids(&self) -> Vec<String> {
        self.posts().iter().flat_map(Post::event_ids).collect()
    }

    /// Waits until `pred` holds for the posts so far, or panics after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&[Post]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let posts = self.posts();
            if pred(&posts) {
                return;
            }
            if Instant::now() > deadline {
                panic!("receiver: timed out waiting for {what}; got {posts:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
