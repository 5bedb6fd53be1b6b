//! The failed-login limiter in front of Basic authentication, and the per-store request rate.
//!
//! Failures are counted per window in three tables, each with its own ceiling:
//! - per (client address, username) — `auth_failures_per_address_user` (20): past it, that
//!   address gets 429 for that username only. So one merchant's password being guessed, or a
//!   merchant fumbling its own, does not lock the other stores out from a shared address (an
//!   office, a proxy, a NAT);
//! - per client address — `auth_failures_per_address` (200), much higher: past it, every request
//!   with credentials from the address gets 429 (one address trying many usernames);
//! - per username — `auth_failures_per_store` (100): past it, addresses that have themselves
//!   failed get 429 for the username, while an address without a failure still gets through (a
//!   distributed guesser cannot lock the merchant out).
//!
//! IPv6 addresses count by their /64. Memory is bounded: each table holds at most
//! [`MAX_TRACKED`] keys (usernames are at most 128 bytes); when one is full its expired windows
//! are pruned (at most once a second, so a flood of new keys cannot make every failure a scan
//! of the table), and a new key that still does not fit is not tracked in that table — the
//! address table, which one address cannot fill with junk usernames, still counts it.

use super::Limits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most tracked keys per table.
pub const MAX_TRACKED: usize = 100_000;
/// Least time between two prunes of one full table.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

struct Window {
    start: Instant,
    count: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A bounded map of failure windows.
struct Table<K> {
    map: HashMap<K, Window>,
    pruned: Option<Instant>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            pruned: None,
        }
    }
}

impl<K: std::hash::Hash + Eq> Table<K> {
    /// The failures of `key` in its current window, with the time left in it.
    fn current(&self, key: &K, len: Duration, now: Instant) -> Option<(u32, Duration)> {
        let w = self.map.get(key)?;
        window_left(w, len, now).map(|left| (w.count, left))
    }

    /// Counts one failure of `key`.
    fn bump(&mut self, key: K, len: Duration, now: Instant, max: usize) {
        if self.map.len() >= max
            && !self.map.contains_key(&key)
            && self
                .pruned
                .is_none_or(|p| now.duration_since(p) >= PRUNE_EVERY)
        {
            self.map.retain(|_, w| window_left(w, len, now).is_some());
            self.pruned = Some(now);
        }
        if self.map.len() >= max && !self.map.contains_key(&key) {
            tracing::warn!("auth limiter table full; not tracking a new key");
            return;
        }
        let w = self.map.entry(key).or_insert(Window {
            start: now,
            count: 0,
        });
        if window_left(w, len, now).is_none() {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        w.count = w.count.saturating_add(1);
    }
}

/// Failure windows and request buckets (see the module header).
#[derive(Default)]
struct Tables {
    by_address_user: Table<(IpAddr, String)>,
    by_address: Table<IpAddr>,
    by_user: Table<String>,
    buckets: HashMap<String, Bucket>,
}

/// How many keys each table tracks (the `auth_limiter_tracked_keys` gauge).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub address_user: usize,
    pub address: usize,
    pub user: usize,
}

pub struct AuthLimiter {
    limits: Limits,
    max_tracked: usize,
    tables: Mutex<Tables>,
}

/// An address as rate-limit key: IPv4 as is, IPv6 by its /64 (one host usually owns a /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

fn window_left(w: &Window, len: Duration, now: Instant) -> Option<Duration> {
    let end = w.start + len;
    (end > now).then(|| end - now)
}

impl AuthLimiter {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_TRACKED)
    }

    /// With a smaller table bound (tests).
    fn with_capacity(limits: Limits, max_tracked: usize) -> Self {
        Self {
            limits,
            max_tracked,
            tables: Mutex::default(),
        }
    }

    /// `Some((retry_after, reason))` if a request from `ip` as `user` must be refused at `now`
    /// before it is handled.
    pub fn refuse(
        &self,
        ip: Option<IpAddr>,
        user: &str,
        now: Instant,
    ) -> Option<(Duration, &'static str)> {
        let len = Duration::from_secs(self.limits.auth_window_secs);
        let t = self.tables.lock().ok()?;
        let ip = ip.map(address_key);
        let by_address = ip.and_then(|ip| t.by_address.current(&ip, len, now));
        if let Some((n, left)) = by_address
            && n >= self.limits.auth_failures_per_address
        {
            return Some((left, "auth_ip"));
        }
        if let Some(ip) = ip
            && let Some((n, left)) = t.by_address_user.current(&(ip, user.to_owned()), len, now)
            && n >= self.limits.auth_failures_per_address_user
        {
            return Some((left, "auth_ip_user"));
        }
        if by_address.is_some_and(|(n, _)| n > 0)
            && let Some((n, left)) = t.by_user.current(&user.to_owned(), len, now)
            && n >= self.limits.auth_failures_per_store
        {
            return Some((left, "auth_store"));
        }
        let rate = f64::from(self.limits.store_requests_per_sec);
        if rate > 0.0
            && let Some(b) = t.buckets.get(user)
        {
            let tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate)
                .min(f64::from(self.limits.store_burst.max(1)));
            if tokens < 1.0 {
                return Some((Duration::from_secs_f64((1.0 - tokens) / rate), "store_rate"));
            }
        }
        None
    }

    /// Learns from an answer: a failed login counts in every table; a success spends a token of
    /// the store's bucket.
    pub fn record(&self, ip: Option<IpAddr>, user: &str, failed: bool, now: Instant) {
        let len = Duration::from_secs(self.limits.auth_window_secs);
        let max = self.max_tracked;
        let Ok(mut t) = self.tables.lock() else {
            return;
        };
        if failed {
            if let Some(ip) = ip.map(address_key) {
                t.by_address.bump(ip, len, now, max);
                t.by_address_user.bump((ip, user.to_owned()), len, now, max);
            }
            t.by_user.bump(user.to_owned(), len, now, max);
        } else if self.limits.store_requests_per_sec > 0 {
            let rate = f64::from(self.limits.store_requests_per_sec);
            let burst = f64::from(self.limits.store_burst.max(1));
            if t.buckets.len() >= max && !t.buckets.contains_key(user) {
                t.buckets.retain(|_, b| b.tokens < burst - 1.0);
            }
            if t.buckets.len() >= max && !t.buckets.contains_key(user) {
                return;
            }
            let b = t.buckets.entry(user.to_owned()).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst) - 1.0;
            b.at = now;
        }
    }

    pub fn tracked(&self) -> Tracked {
        self.tables
            .lock()
            .map(|t| Tracked {
                address_user: t.by_address_user.map.len(),
                address: t.by_address.map.len(),
                user: t.by_user.map.len(),
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn fail(l: &AuthLimiter, from: &str, user: &str, times: u32, now: Instant) {
        for _ in 0..times {
            l.record(ip(from), user, true, now);
        }
    }

    #[test]
    fn a_21st_failure_for_one_username_does_not_lock_another_username_out_from_the_same_address() {
        let l = AuthLimiter::new(Limits::default());
        let now = Instant::now();
        fail(&l, "10.0.0.1", "store-a", 20, now);
        assert_eq!(
            l.refuse(ip("10.0.0.1"), "store-a", now).map(|r| r.1),
            Some("auth_ip_user"),
            "the guessed username is refused from that address"
        );
        assert_eq!(
            l.refuse(ip("10.0.0.1"), "store-b", now),
            None,
            "another username is not"
        );
        assert_eq!(
            l.refuse(ip("10.0.0.2"), "store-a", now),
            None,
            "nor another address"
        );
        // Nineteen failures are not enough.
        fail(&l, "10.0.0.1", "store-b", 19, now);
        assert_eq!(l.refuse(ip("10.0.0.1"), "store-b", now), None);
        // The window ends.
        let later = now + Duration::from_secs(61);
        assert_eq!(l.refuse(ip("10.0.0.1"), "store-a", later), None);
    }

    #[test]
    fn the_per_address_ceiling_still_locks_out_an_address_trying_many_usernames() {
        let l = AuthLimiter::new(Limits::default());
        let now = Instant::now();
        for i in 0..199 {
            fail(&l, "2001:db8::1", &format!("user-{i}"), 1, now);
        }
        assert_eq!(l.refuse(ip("2001:db8::1"), "fresh", now), None, "199 < 200");
        // The same /64 is the same address.
        fail(&l, "2001:db8::ffff", "user-199", 1, now);
        let (left, reason) = l.refuse(ip("2001:db8::2"), "fresh", now).unwrap();
        assert_eq!(reason, "auth_ip");
        assert!(left <= Duration::from_secs(60) && left > Duration::ZERO);
        assert_eq!(
            l.refuse(ip("2001:db8:0:1::1"), "fresh", now),
            None,
            "another /64"
        );
    }

    #[test]
    fn the_tables_stay_bounded_under_many_usernames_and_addresses() {
        let l = AuthLimiter::with_capacity(Limits::default(), 100);
        let now = Instant::now();
        for i in 0..1_000u32 {
            let addr = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            l.record(ip(&addr), &format!("u{i}"), true, now);
        }
        let t = l.tracked();
        assert_eq!(
            t,
            Tracked {
                address_user: 100,
                address: 100,
                user: 100
            }
        );
        // Expired windows make room again.
        let later = now + Duration::from_secs(61);
        l.record(ip("192.0.2.1"), "late", true, later);
        assert_eq!(l.tracked().address_user, 1);
        // An address that fills the username tables is still counted by its address.
        let l = AuthLimiter::with_capacity(Limits::default(), 50);
        for i in 0..250 {
            l.record(ip("10.9.9.9"), &format!("junk-{i}"), true, now);
        }
        assert_eq!(
            l.refuse(ip("10.9.9.9"), "victim", now).map(|r| r.1),
            Some("auth_ip")
        );
    }
}
