//! The egress policy for webhook URLs: where accounts-api may send a merchant-chosen request.
//!
//! A webhook URL is chosen by a merchant, so without this policy any store could make
//! accounts-api post to its own network: the cloud metadata service, the vault's port, the API
//! itself, a database on 10.x — and learn from the `processed` flag whether it answered (SSRF).
//!
//! Refused, unless the operator's allow-list says otherwise: any scheme but http/https; the
//! metadata names ([`METADATA_NAMES`]); and every address that is not globally routable
//! unicast — loopback, link-local (incl. 169.254.169.254), private (RFC 1918), unique-local
//! (fc00::/7, which holds AWS's fd00:ec2::254), shared/CGNAT (100.64/10), multicast,
//! unspecified (0.0.0.0/8, `::`), broadcast, reserved, documentation and benchmarking ranges —
//! also when written as IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 (the embedded IPv4
//! address is judged). Odd IPv4 spellings (`0x7f000001`, `2130706433`, `127.1`, `0`) need no
//! code here: the URL parser normalises them to dotted quads before we look.
//!
//! Two checks, one rule:
//! - at configuration ([`Policy::check_url`]): the name is resolved and every address must pass,
//!   so the merchant gets a 422 naming the reason. A name that does not resolve (yet) is accepted:
//!   the delivery check is the one that protects;
//! - at delivery: [`Policy::check_target`] for the URL itself (IP literals never reach a
//!   resolver), then the webhook client resolves names only through [`Resolver`], which returns
//!   just the allowed addresses. The connection is made to an address that was checked in that
//!   same resolution, so a name that answers public at configuration and 127.0.0.1 at delivery
//!   (DNS rebinding) gets nowhere. A resolver rather than per-request `resolve()` pinning: it
//!   covers every connection of the one pooled client, with no client built per post.
//!
//! The allow-list (`[webhooks] allow` in the configuration file, `STRONGROOM_WEBHOOK_ALLOW`)
//! holds CIDRs (`127.0.0.0/8`, `::1/128`, a bare address) and host names (exact,
//! case-insensitive). An allowed address passes whatever its class; an allowed name passes with
//! whatever it resolves to. `serve` starts with an empty list; `accounts-api dev` (a loopback
//! demo) allows loopback unless the variable is set.

use crate::cidr::Cidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Names of cloud instance-metadata services (GCP, AWS, Azure, OpenStack, Alibaba, Oracle and
/// the bare `metadata` short name), refused whatever they resolve to.
pub const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.oraclecloud.com",
    "metadata.tencentyun.com",
];

/// How long a configuration-time lookup may take before the name counts as unresolved.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an address is not a place to send webhooks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Loopback,
    LinkLocal,
    Private,
    UniqueLocal,
    SharedCgnat,
    Multicast,
    Unspecified,
    Broadcast,
    Reserved,
}

impl Class {
    fn phrase(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::LinkLocal => "a link-local address",
            Self::Private => "a private address",
            Self::UniqueLocal => "a unique-local address",
            Self::SharedCgnat => "a shared (CGNAT) address",
            Self::Multicast => "a multicast address",
            Self::Unspecified => "an unspecified address",
            Self::Broadcast => "the broadcast address",
            Self::Reserved => "a reserved address",
        }
    }
}

/// Why a URL was refused. Its text names the reason and, for an address, the address (an
/// `IpAddr` we parsed or resolved, never the raw input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("webhook url must be http or https")]
    Scheme,
    #[error("webhook url resolves to {phrase} ({1})", phrase = .0.phrase())]
    Address(Class, IpAddr),
    #[error("webhook url names a cloud metadata service ({0})")]
    Metadata(&'static str),
    #[error("webhook url host resolves to no allowed address")]
    NoAddress,
}

/// The class of an address that must not be reached, or `None` for globally routable unicast.
pub fn classify(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Class> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => Class::Unspecified,
        (127, ..) => Class::Loopback,
        (169, 254, _) => Class::LinkLocal,
        (10, ..) | (192, 168, _) => Class::Private,
        (172, b, _) if (16..32).contains(&b) => Class::Private,
        (100, b, _) if (64..128).contains(&b) => Class::SharedCgnat,
        (224..=239, ..) => Class::Multicast,
        _ if ip.is_broadcast() => Class::Broadcast,
        // IETF protocol assignments, documentation (three nets), 6to4 relay anycast,
        // benchmarking, and the old class E.
        (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113) | (192, 88, 99) => Class::Reserved,
        (198, 18 | 19, _) | (240..=255, ..) => Class::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() {
        return Some(Class::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Class::Loopback);
    }
    // IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48): the IPv4 address
    // is what would be reached.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return classify_v4(embedded(s[6], s[7]));
    }
    // IPv4-compatible (::a.b.c.d, deprecated): never a real destination; named by its IPv4
    // class when it has one.
    if s[..6] == [0; 6] {
        return Some(classify_v4(embedded(s[6], s[7])).unwrap_or(Class::Reserved));
    }
    // 6to4 (2002:AABB:CCDD::/48) carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => Class::UniqueLocal,
        x if x & 0xffc0 == 0xfe80 => Class::LinkLocal,
        // Site-local (deprecated, private in practice).
        x if x & 0xffc0 == 0xfec0 => Class::Private,
        x if x & 0xff00 == 0xff00 => Class::Multicast,
        // Discard-only (100::/64), IETF assignments incl. Teredo (2001::/23), documentation
        // (2001:db8::/32, 3fff::/20).
        0x100 if s[1..4] == [0, 0, 0] => Class::Reserved,
        0x2001 if s[1] < 0x200 || s[1] == 0xdb8 => Class::Reserved,
        x if x & 0xfff0 == 0x3ff0 => Class::Reserved,
        _ => return None,
    })
}

/// A URL's host as the parser normalised it.
enum Host {
    Ip(IpAddr),
    /// Lowercase, without a trailing dot.
    Name(String),
}

fn host_of(url: &reqwest::Url) -> Option<Host> {
    let h = url.host_str().filter(|h| !h.is_empty())?;
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(bare.trim_end_matches('.').to_ascii_lowercase()),
    })
}

/// The policy: the built-in refusals and the operator's allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Cidr>,
    /// Lowercase, without a trailing dot.
    allow_hosts: Vec<String>,
}

/// What the delivery may connect to for one URL.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// An IP literal that passed (no resolution will happen).
    Address(IpAddr),
    /// A name: resolved only through [`Resolver`], which filters the addresses.
    Name(String),
}

impl Policy {
    /// Nothing beyond the built-in rules is allowed (`serve`'s default).
    pub fn strict() -> Self {
        Self::default()
    }

    /// Loopback allowed (127.0.0.0/8 and ::1): `accounts-api dev`'s default.
    pub fn loopback() -> Self {
        Self {
            allow: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            allow_hosts: Vec::new(),
        }
    }

    /// The allow-list from its entries: CIDRs or addresses, else host names. `none` alone is
    /// the empty list. `what` names the setting in the error.
    pub fn from_entries<S: AsRef<str>>(entries: &[S], what: &str) -> Result<Self, String> {
        let mut p = Self::default();
        for e in entries.iter().map(|e| e.as_ref().trim()) {
            if e.is_empty() || (e == "none" && entries.len() == 1) {
                continue;
            }
            if let Some(c) = Cidr::parse(e) {
                p.allow.push(c);
            } else if e.contains('/') || e.contains(':') {
                return Err(format!(
                    "{what}: {e:?} is not a CIDR (address/prefix length)"
                ));
            } else {
                let parsed = reqwest::Url::parse(&format!("http://{e}/")).ok();
                match parsed.as_ref().map(host_of) {
                    Some(Some(Host::Ip(ip))) => p.allow.push(
                        Cidr::parse(&ip.to_string()).ok_or_else(|| format!("{what}: {e:?}"))?,
                    ),
                    Some(Some(Host::Name(d))) => p.allow_hosts.push(d),
                    _ => return Err(format!("{what}: {e:?} is neither a CIDR nor a host name")),
                }
            }
        }
        Ok(p)
    }

    /// The allow-list from a comma-separated setting (`STRONGROOM_WEBHOOK_ALLOW`).
    pub fn from_list(text: &str, what: &str) -> Result<Self, String> {
        Self::from_entries(&text.split(',').collect::<Vec<_>>(), what)
    }

    /// For logs and the startup summary: the allow-list as written back.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self
            .allow
            .iter()
            .map(ToString::to_string)
            .chain(self.allow_hosts.iter().cloned())
            .collect();
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.contains(&h)
    }

    /// One address: allowed by the list, or globally routable.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match classify(ip) {
            Some(class) => Err(Refusal::Address(class, ip.to_canonical())),
            None => Ok(()),
        }
    }

    /// Everything that can be judged without resolving: scheme, metadata names, IP literals.
    pub fn check_target(&self, url: &reqwest::Url) -> Result<Target, Refusal> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::Scheme);
        }
        match host_of(url) {
            Some(Host::Ip(ip)) => self.check_address(ip).map(|()| Target::Address(ip)),
            Some(Host::Name(name)) => {
                if !self.host_allowed(&name)
                    && let Some(m) = METADATA_NAMES.iter().find(|m| **m == name)
                {
                    return Err(Refusal::Metadata(m));
                }
                Ok(Target::Name(name))
            }
            None => Err(Refusal::NoAddress),
        }
    }

    /// The configuration-time check: [`Policy::check_target`], then every address the name
    /// resolves to now. A name that does not resolve within [`LOOKUP_TIMEOUT`] is accepted
    /// (delivery checks again, and connects only where that check allows).
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        let Target::Name(name) = self.check_target(url)? else {
            return Ok(());
        };
        if self.host_allowed(&name) {
            return Ok(());
        }
        let lookup = tokio::net::lookup_host((name.as_str(), 0));
        let Ok(Ok(addrs)) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await else {
            return Ok(());
        };
        for a in addrs {
            self.check_address(a.ip())?;
        }
        Ok(())
    }

    /// The delivery-time resolution: the name's addresses that pass (all of them for an
    /// allowed name), or why none does.
    pub async fn resolve(&self, name: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let allowed_name = self.host_allowed(&name);
        if !allowed_name && let Some(m) = METADATA_NAMES.iter().find(|m| **m == name) {
            return Err(ResolveError::Refused(Refusal::Metadata(m)));
        }
        let addrs = tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map_err(ResolveError::Lookup)?;
        let mut first_refusal = None;
        let mut ok = Vec::new();
        for a in addrs {
            match self.check_address(a.ip()) {
                _ if allowed_name => ok.push(a),
                Ok(()) => ok.push(a),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        if ok.is_empty() {
            return Err(ResolveError::Refused(
                first_refusal.unwrap_or(Refusal::NoAddress),
            ));
        }
        Ok(ok)
    }
}

/// Why [`Policy::resolve`] returned nothing to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Refused by the policy (the delivery counts it as `refused`).
    #[error("{0}")]
    Refused(Refusal),
    #[error("lookup failed: {0}")]
    Lookup(std::io::Error),
}

/// The webhook client's resolver: [`Policy::resolve`] for every name it connects to.
pub struct Resolver(pub Arc<Policy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let addrs = policy.resolve(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The policy refusal somewhere in an error's source chain (a failed post), if any.
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(ResolveError::Refused(r)) = err.downcast_ref::<ResolveError>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests;
