//! The operations surface both services share: Prometheus metrics in the text exposition format,
//! request ids, and log set-up (human text or JSON lines).
//!
//! Metrics are hand-written rather than taken from a crate: the services need counters,
//! one histogram family and a few gauges computed at scrape time, which is ~150 lines here,
//! against a new dependency tree (`prometheus` pulls protobuf; `prometheus-client` is lean but
//! its label-set types would leak into every crate that increments a counter). Label values are
//! always chosen by the code (route templates, status codes, operation names), never taken from
//! the request, so a client cannot grow the series set or put text into it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// One labelled counter series: metric name and its labels, as code-chosen strings.
type SeriesKey = (&'static str, Vec<(&'static str, String)>);

/// A metrics registry: HTTP request counts and latencies per method, matched route and status,
/// plus named counters with labels. Gauges are supplied at render time by the caller (they are
/// read from the live system: outbox depth, audit chain length, …).
pub struct Metrics {
    prefix: &'static str,
    http: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    counters: Mutex<BTreeMap<SeriesKey, u64>>,
    help: Mutex<BTreeMap<&'static str, &'static str>>,
}

/// A gauge value read at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Metrics {
    /// `prefix` starts every metric name (`vault`, `accounts_api`).
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            http: Mutex::default(),
            counters: Mutex::default(),
            help: Mutex::default(),
        }
    }

    /// Records one finished HTTP request. `route` is the matched route template (or a fixed word
    /// such as `unmatched`), never the raw path.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Ok(mut m) = self.http.lock() {
            let h = m
                .entry((method.to_owned(), route.to_owned(), status))
                .or_default();
            h.buckets[slot] += 1;
            h.sum += secs;
            h.count += 1;
        }
    }

    /// Declares a counter's help text (shown even before the first increment).
    pub fn describe(&self, name: &'static str, help: &'static str) {
        if let Ok(mut h) = self.help.lock() {
            h.insert(name, help);
        }
    }

    /// Adds one to counter `name` (without the prefix) with `labels`.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        if let Ok(mut c) = self.counters.lock() {
            *c.entry(key).or_default() += n;
        }
    }

    /// Current value of a counter series (for tests and readiness logic).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key: SeriesKey = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
            .unwrap_or(0)
    }

    /// The Prometheus text exposition (format 0.0.4) of everything recorded plus `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let p = self.prefix;
        let mut out = String::new();
        let http = self.http.lock().map(|m| m.clone()).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP {p}_http_requests_total HTTP requests by method, matched route and status.\n\
             # TYPE {p}_http_requests_total counter"
        );
        for ((method, route, status), h) in &http {
            let _ = writeln!(
                out,
                "{p}_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {}",
                escape(method),
                escape(route),
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_http_request_duration_seconds Time from request head to response head.\n\
             # TYPE {p}_http_request_duration_seconds histogram"
        );
        for ((method, route, status), h) in &http {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i];
                let _ = writeln!(
                    out,
                    "{p}_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{p}_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 {p}_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 {p}_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }

        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let help = self.help.lock().map(|h| h.clone()).unwrap_or_default();
        let mut names: Vec<&'static str> = help.keys().copied().collect();
        for (name, _) in counters.keys() {
            if !names.contains(name) {
                names.push(name);
            }
        }
        names.sort_unstable();
        for name in names {
            let text = help.get(name).copied().unwrap_or("Counter.");
            let _ = writeln!(out, "# HELP {p}_{name} {text}\n# TYPE {p}_{name} counter");
            for ((n, labels), v) in &counters {
                if *n == name {
                    let _ = writeln!(out, "{p}_{name}{} {v}", label_text(labels));
                }
            }
        }

        let mut last = "";
        for g in gauges {
            if g.name != last {
                let _ = writeln!(
                    out,
                    "# HELP {p}_{} {}\n# TYPE {p}_{} gauge",
                    g.name, g.help, g.name
                );
                last = g.name;
            }
            let _ = writeln!(out, "{p}_{}{} {}", g.name, label_text(&g.labels), g.value);
        }
        out
    }
}

fn label_text(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Escapes a label value (backslash, double quote, newline) per the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The header carrying the request id, in requests (optional) and every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The id of the request the current task serves (set by [`observe`] around the handler).
    static REQUEST_ID: String;
}

/// The id of the request being served on this task, if any: accounts-api forwards it to the
/// vault as `X-Request-Id`, so one id joins both services' log lines for one checkout.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The id for a request: the caller's `X-Request-Id` if it is 1–64 characters of
/// `[A-Za-z0-9._-]` (so a proxy's id flows through and nothing else enters the logs), otherwise
/// a fresh UUID.
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v)
            if !v.is_empty()
                && v.len() <= 64
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default; meant for development).
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields (the request id) flattened in.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format must be json or text, not {other:?}")),
        }
    }
}

/// Installs the global subscriber: level from env var `filter_env` (default `info`), lines to
/// stderr (stdout carries the services' readiness lines).
pub fn init_tracing(format: LogFormat, filter_env: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env(filter_env)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The request-observing middleware both services layer outermost: request id (kept from a
/// clean `X-Request-Id` or made), a span carrying it around the whole request so every log line
/// has it, one access-log line, the request metrics in `metrics`, and the id on the response.
/// Never logs headers, query strings (they carry store and account ids) or bodies.
pub async fn observe(
    metrics: &Metrics,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    use tracing::Instrument;
    let id = request_id(
        req.headers()
            .get(REQUEST_ID_HEADER)
            .map(HeaderValue::as_bytes),
    );
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id);
    let started = std::time::Instant::now();
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    metrics.observe_request(method, &route, status, elapsed);
    span.in_scope(|| {
        tracing::info!(
            method,
            route = %route,
            status,
            micros = elapsed.as_micros() as u64,
            "request"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exposition_counts_requests_cumulatively_and_escapes_label_values() {
        let m = Metrics::new("t");
        m.observe_request("GET", "/a/{id}", 200, Duration::from_millis(3));
        m.observe_request("GET", "/a/{id}", 200, Duration::from_secs(9));
        m.describe("ops_total", "Operations.");
        m.inc("ops_total", &[("kind", "x\"y")]);
        let text = m.render(&[Gauge {
            name: "depth",
            help: "Depth.",
            labels: vec![],
            value: 4.0,
        }]);
        assert!(
            text.contains(
                "t_http_requests_total{method=\"GET\",route=\"/a/{id}\",status=\"200\"} 2"
            )
        );
        assert!(text.contains(
            "t_http_request_duration_seconds_bucket{method=\"GET\",route=\"/a/{id}\",status=\"200\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("t_ops_total{kind=\"x\\\"y\"} 1"));
        assert!(text.contains("# TYPE t_depth gauge\nt_depth 4"));
    }

    #[test]
    fn a_clean_incoming_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(Some(b"abc-123_x.y")), "abc-123_x.y");
        for bad in [&b""[..], b"a b", b"a\nb", &[b'a'; 65][..], b"{\"x\":1}"] {
            let id = request_id(Some(bad));
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} → {id}");
        }
        assert!(uuid::Uuid::parse_str(&request_id(None)).is_ok());
    }
}
