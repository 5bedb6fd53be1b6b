//! An address block (`10.0.0.0/8`, `fd00::/8`, or one address), for the settings that list
//! them: the webhook egress allow-list (`egress`) and the trusted proxies (`ops::client_address`).

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `addr` or `addr/len` (an IPv6 address may be in brackets); `what` names the
    /// setting in the error.
    pub fn parse_setting(text: &str, what: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: &str| format!("{what}: {text:?} is not an address or CIDR block ({why})");
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let base: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad("bad address"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad("bad prefix length"))?,
            None => max,
        };
        Ok(Self { base, len })
    }

    /// [`Cidr::parse_setting`] without the message.
    pub fn parse(text: &str) -> Option<Self> {
        Self::parse_setting(text, "").ok()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address (a dual-stack peer) is its IPv4 address.
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(b), IpAddr::V4(i)) => prefix_eq(
                u128::from(b.to_bits()),
                u128::from(i.to_bits()),
                self.len,
                32,
            ),
            (IpAddr::V6(b), IpAddr::V6(i)) => prefix_eq(b.to_bits(), i.to_bits(), self.len, 128),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, len: u8, width: u32) -> bool {
    let drop = width - u32::from(len);
    drop >= width || (a >> drop) == (b >> drop)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_and_mapped_forms_count_as_ipv4() {
        let c = Cidr::parse("10.128.0.0/9").unwrap();
        assert!(c.contains(ip("10.200.0.1")) && !c.contains(ip("10.127.0.1")));
        assert!(c.contains(ip("::ffff:10.200.0.1")));
        assert!(!c.contains(ip("2001:db8::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let one = Cidr::parse("[::1]").unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert_eq!(one.to_string(), "::1/128");
    }

    #[test]
    fn a_bad_block_is_named_with_the_reason() {
        let e = Cidr::parse_setting("10.0.0.0/33", "http.trusted_proxies").unwrap_err();
        assert!(e.starts_with("http.trusted_proxies: ") && e.contains("bad prefix length"));
        let e = Cidr::parse_setting("ten", "x").unwrap_err();
        assert!(e.contains("bad address"), "{e}");
        assert!(Cidr::parse("10.0.0.0/x").is_none());
    }
}
