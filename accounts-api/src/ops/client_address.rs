//! The client address the limits count against: the TCP peer, or — only when the peer is a
//! configured trusted proxy — the address that proxy put in its forwarding header.
//!
//! `[http] trusted_proxy_header = "x-forwarded-for"` plus `trusted_proxies = ["10.0.0.0/8", …]`.
//! A forwarding header is a list each proxy appends to, so its left part is whatever the client
//! sent: only entries added by proxies we trust can be believed. The walk starts at the peer and
//! goes right to left through the header, skipping trusted proxies; the first address that is
//! not one is the client (the right-most untrusted address). A header from a peer that is not
//! trusted is ignored entirely: anyone could send one to pose as any address. An entry that is
//! not an address stops the walk at the last trusted hop.

use crate::cidr::Cidr;
use axum::http::{HeaderMap, HeaderName};
use std::net::IpAddr;

/// `[http]`: whose forwarding header is believed. The default believes no header.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    header: Option<HeaderName>,
    trusted: Vec<Cidr>,
}

impl ClientAddress {
    /// From `[http] trusted_proxy_header` and `trusted_proxies`. A header without trusted
    /// proxies is refused (it would never be used, and the operator surely meant something).
    pub fn parse(header: Option<&str>, proxies: &[String]) -> Result<Self, String> {
        let trusted = proxies
            .iter()
            .map(|p| Cidr::parse_setting(p, "http.trusted_proxies"))
            .collect::<Result<Vec<_>, _>>()?;
        let header =
            match header.map(str::trim).filter(|h| !h.is_empty()) {
                None => None,
                Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    format!("http.trusted_proxy_header: {h:?} is not a header name")
                })?),
            };
        if header.is_some() && trusted.is_empty() {
            return Err(
                "http.trusted_proxy_header is set but http.trusted_proxies is empty: \
                        list the proxies (addresses or CIDR blocks) whose header is believed"
                    .into(),
            );
        }
        Ok(Self { header, trusted })
    }

    /// Whether `ip` is a configured trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` with `headers` (see the module header).
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(name) = &self.header else {
            return peer;
        };
        if !self.trusts(peer) {
            return peer;
        }
        // Every line of the header, in order, as one list.
        let entries: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One hop of a forwarding header: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn proxies() -> ClientAddress {
        ClientAddress::parse(
            Some("X-Forwarded-For"),
            &["10.0.0.0/8".into(), "192.0.2.7".into(), "fd00::/8".into()],
        )
        .unwrap()
    }

    #[test]
    fn the_header_is_ignored_from_an_untrusted_peer() {
        let c = proxies();
        let h = xff(&["198.51.100.1"]);
        assert_eq!(c.resolve(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        // Not configured: never believed, whoever sends it.
        assert_eq!(
            ClientAddress::default().resolve(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn from_a_trusted_peer_the_right_most_untrusted_address_is_the_client() {
        let c = proxies();
        // The client forged a left part; our proxies appended the real hops.
        let h = xff(&["6.6.6.6, 198.51.100.1", "10.1.2.3"]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("198.51.100.1"));
        assert_eq!(
            c.resolve(ip("192.0.2.7"), &xff(&["198.51.100.2:4711"])),
            ip("198.51.100.2")
        );
        assert_eq!(
            c.resolve(ip("::ffff:10.0.0.1"), &xff(&["[2001:db8::5]:80"])),
            ip("2001:db8::5")
        );
        // No header: the proxy itself.
        assert_eq!(c.resolve(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Garbage stops at the last trusted hop.
        assert_eq!(
            c.resolve(ip("10.0.0.1"), &xff(&["unknown, 10.2.2.2"])),
            ip("10.2.2.2")
        );
        assert_eq!(
            c.resolve(ip("10.0.0.1"), &xff(&["unknown"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn bad_proxy_settings_are_refused_by_name() {
        for (header, proxies, needle) in [
            (Some("x-forwarded-for"), vec![], "trusted_proxies is empty"),
            (
                Some("bad header"),
                vec!["10.0.0.1".to_owned()],
                "not a header name",
            ),
            (None, vec!["10.0.0.0/33".to_owned()], "bad prefix length"),
            (None, vec!["ten".to_owned()], "bad address"),
        ] {
            let e = ClientAddress::parse(header, &proxies).unwrap_err();
            assert!(
                e.starts_with("http.trusted_prox") && e.contains(needle),
                "{e}"
            );
        }
        let c = Cidr::parse("10.128.0.0/9").unwrap();
        assert!(c.contains(ip("10.200.0.1")) && !c.contains(ip("10.127.0.1")));
        assert!(!c.contains(ip("2001:db8::1")));
    }
}
