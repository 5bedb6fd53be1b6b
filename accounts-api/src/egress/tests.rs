#![allow(clippy::unwrap_used)]
use super::*;

fn url(u: &str) -> reqwest::Url {
    reqwest::Url::parse(u).unwrap()
}

fn refused(p: &Policy, u: &str) -> Option<Refusal> {
    p.check_target(&url(u)).err()
}

fn class_of(u: &str) -> Option<Class> {
    match refused(&Policy::strict(), u) {
        Some(Refusal::Address(c, _)) => Some(c),
        _ => None,
    }
}

#[test]
fn loopback_in_every_spelling_is_refused() {
    for u in [
        "http://127.0.0.1/",
        "http://127.8.9.10:8443/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
    ] {
        assert_eq!(class_of(u), Some(Class::Loopback), "{u}");
    }
    // Normalised: the message names the IPv4 address that would be reached.
    assert_eq!(
        refused(&Policy::strict(), "http://[::ffff:127.0.0.1]/")
            .unwrap()
            .to_string(),
        "webhook url resolves to a loopback address (127.0.0.1)"
    );
}

#[test]
fn link_local_and_the_metadata_address_are_refused() {
    for u in [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.0.1/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        assert_eq!(class_of(u), Some(Class::LinkLocal), "{u}");
    }
}

#[test]
fn private_rfc1918_ranges_are_refused_and_their_neighbours_are_not() {
    for u in [
        "http://10.0.0.1/",
        "http://10.255.255.255/",
        "http://172.16.0.1/",
        "http://172.31.255.1/",
        "http://192.168.0.1/",
        "http://[::ffff:10.1.2.3]/",
        "http://[fec0::1]/",
    ] {
        assert_eq!(class_of(u), Some(Class::Private), "{u}");
    }
    assert_eq!(
        refused(&Policy::strict(), "http://10.0.0.1/")
            .unwrap()
            .to_string(),
        "webhook url resolves to a private address (10.0.0.1)"
    );
    for u in [
        "http://172.15.255.255/",
        "http://172.32.0.1/",
        "http://11.0.0.1/",
        "http://192.169.0.1/",
        "http://8.8.8.8/",
        "http://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
    ] {
        assert_eq!(refused(&Policy::strict(), u), None, "{u} is public");
    }
}

#[test]
fn unique_local_including_the_aws_metadata_v6_address_is_refused() {
    for u in [
        "http://[fd00:ec2::254]/",
        "http://[fc00::1]/",
        "http://[fdff::1]/",
    ] {
        assert_eq!(class_of(u), Some(Class::UniqueLocal), "{u}");
    }
}

#[test]
fn shared_cgnat_space_is_refused() {
    assert_eq!(class_of("http://100.64.0.1/"), Some(Class::SharedCgnat));
    assert_eq!(
        class_of("http://100.127.255.254/"),
        Some(Class::SharedCgnat)
    );
    assert_eq!(refused(&Policy::strict(), "http://100.63.255.255/"), None);
    assert_eq!(refused(&Policy::strict(), "http://100.128.0.1/"), None);
}

#[test]
fn multicast_is_refused() {
    for u in [
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://[ff02::1]/",
    ] {
        assert_eq!(class_of(u), Some(Class::Multicast), "{u}");
    }
}

#[test]
fn unspecified_including_the_bare_zero_is_refused() {
    for u in [
        "http://0/",
        "http://0.0.0.0/",
        "http://0.1.2.3/",
        "http://[::]/",
        "http://[::ffff:0.0.0.0]/",
    ] {
        assert_eq!(class_of(u), Some(Class::Unspecified), "{u}");
    }
}

#[test]
fn broadcast_and_reserved_ranges_are_refused() {
    assert_eq!(class_of("http://255.255.255.255/"), Some(Class::Broadcast));
    for u in [
        "http://240.0.0.1/",
        "http://192.0.2.1/",
        "http://198.51.100.7/",
        "http://203.0.113.9/",
        "http://198.18.0.1/",
        "http://192.0.0.8/",
        "http://[2001:db8::1]/",
        "http://[2001::1]/",
        "http://[100::1]/",
        "http://[::8.8.8.8]/",
    ] {
        assert_eq!(class_of(u), Some(Class::Reserved), "{u}");
    }
}

#[test]
fn metadata_names_are_refused_by_name_unless_allow_listed() {
    for (u, name) in [
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "metadata.google.internal",
        ),
        (
            "http://METADATA.google.internal./",
            "metadata.google.internal",
        ),
        ("http://metadata/", "metadata"),
        ("http://instance-data/latest/", "instance-data"),
    ] {
        assert_eq!(
            refused(&Policy::strict(), u),
            Some(Refusal::Metadata(name)),
            "{u}"
        );
    }
    let p = Policy::from_list("metadata", "t").unwrap();
    assert_eq!(
        refused(&p, "http://metadata/"),
        None,
        "an explicit allow wins"
    );
}

#[test]
fn only_http_and_https_schemes_pass() {
    assert_eq!(
        refused(&Policy::strict(), "ftp://example.com/"),
        Some(Refusal::Scheme)
    );
    assert_eq!(
        refused(&Policy::strict(), "gopher://example.com/"),
        Some(Refusal::Scheme)
    );
    assert!(matches!(
        Policy::strict().check_target(&url("https://hooks.example.com/x")),
        Ok(Target::Name(n)) if n == "hooks.example.com"
    ));
}

#[test]
fn the_allow_list_admits_exactly_its_ranges_and_names() {
    let p = Policy::from_list(" 127.0.0.0/8, ::1 ,10.1.0.0/16,hooks.Internal. ", "t").unwrap();
    assert_eq!(
        p.describe(),
        "127.0.0.0/8, ::1/128, 10.1.0.0/16, hooks.internal"
    );
    for u in [
        "http://127.0.0.1:9/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.1.200.3/",
    ] {
        assert!(p.check_target(&url(u)).is_ok(), "{u}");
    }
    assert_eq!(class_of("http://10.2.0.1/"), Some(Class::Private));
    assert!(
        p.check_target(&url("http://10.2.0.1/")).is_err(),
        "outside 10.1/16"
    );
    assert!(p.host_allowed("HOOKS.internal"));
    assert!(!p.host_allowed("evil.hooks.internal"), "exact names only");
    assert_eq!(Policy::from_list("none", "t").unwrap(), Policy::strict());
    assert_eq!(Policy::loopback().describe(), "127.0.0.0/8, ::1/128");
    for bad in ["10.0.0.0/33", "::1/129", "fe80::/x", "a b"] {
        let e = Policy::from_list(bad, "webhooks.allow").unwrap_err();
        assert!(e.starts_with("webhooks.allow: "), "{e}");
    }
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_unless_allow_listed() {
    let r = Policy::strict()
        .check_url(&url("http://localhost:9/"))
        .await;
    assert!(
        matches!(r, Err(Refusal::Address(Class::Loopback, _))),
        "{r:?}"
    );
    let e = Policy::strict().resolve("localhost").await.unwrap_err();
    assert!(
        matches!(
            e,
            ResolveError::Refused(Refusal::Address(Class::Loopback, _))
        ),
        "{e:?}"
    );
    // Allowed by range: only the allowed addresses come back.
    let v4 = Policy::from_list("127.0.0.0/8", "t").unwrap();
    assert!(v4.check_url(&url("http://127.0.0.1:9/")).await.is_ok());
    let addrs = v4.resolve("localhost").await.unwrap();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.ip() == IpAddr::from([127, 0, 0, 1])),
        "{addrs:?}"
    );
    // Allowed by name: whatever it resolves to.
    let named = Policy::from_list("localhost", "t").unwrap();
    assert!(named.check_url(&url("http://localhost:9/")).await.is_ok());
    assert!(!named.resolve("localhost").await.unwrap().is_empty());
}

#[test]
fn a_refusal_is_found_through_an_error_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] ResolveError);
    let e = Outer(ResolveError::Refused(Refusal::Metadata("metadata")));
    assert_eq!(refusal_in(&e), Some(Refusal::Metadata("metadata")));
    let io = Outer(ResolveError::Lookup(std::io::Error::other("x")));
    assert_eq!(refusal_in(&io), None);
}
