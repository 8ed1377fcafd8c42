//! Where a room's own endpoint may point. A room's moderator is not the operator: by default
//! the server refuses to send a room's events to loopback, private, link-local and other
//! non-public addresses (it would be a way into the operator's network), unless the operator
//! allows it (`[webhooks] room_allow_private`, `room_allowed_hosts`). Checked when the URL is
//! set and again on every attempt, at connection time, since a name can resolve elsewhere
//! later. The server's own `[webhooks] url` is the operator's and is not checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

use crate::config::WebhookSettings;

/// The longest URL a room's endpoint may have, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a room's endpoint URL is refused; each is a stable API code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a URL Stoa can send to: `invalid_webhook_url`.
    Invalid(String),
    /// Its host is, or resolves to, an address rooms may not send to:
    /// `webhook_address_refused`.
    Address(String),
    /// Its host name does not resolve (now): `webhook_host_unresolvable`.
    Unresolvable(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid_webhook_url",
            Refusal::Address(_) => "webhook_address_refused",
            Refusal::Unresolvable(_) => "webhook_host_unresolvable",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Refusal::Invalid(d) | Refusal::Address(d) | Refusal::Unresolvable(d) => d,
        }
    }
}

/// The operator's rule for rooms' endpoints.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed_hosts: Vec<String>,
}

impl AddressPolicy {
    pub fn new(settings: &WebhookSettings) -> Self {
        AddressPolicy {
            allow_private: settings.room_allow_private,
            allowed_hosts: settings
                .room_allowed_hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The URL's shape: `http://` or `https://`, a host, no credentials, no fragment, at most
    /// [`MAX_URL_BYTES`]; and an IP-literal host must be one rooms may send to.
    pub fn check_url(&self, raw: &str) -> Result<Url, Refusal> {
        let invalid = |why: &str| Err(Refusal::Invalid(why.to_owned()));
        if raw.len() > MAX_URL_BYTES {
            return invalid("the URL is longer than 2048 bytes");
        }
        let Ok(url) = Url::parse(raw) else {
            return invalid("not an absolute URL");
        };
        if !matches!(url.scheme(), "http" | "https") {
            return invalid("the URL must start with https:// or http://");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return invalid(
                "credentials in the URL are refused: every request is signed with the \
                 endpoint's secret instead",
            );
        }
        if url.fragment().is_some() {
            return invalid("the URL must not have a #fragment");
        }
        let Some(host) = url.host_str() else {
            return invalid("the URL has no host");
        };
        if let Some(ip) = ip_literal(host) {
            self.check_ip(host, ip)?;
        }
        Ok(url)
    }

    /// Resolves the URL's host (a name) and checks every address it gives; an IP literal
    /// was checked by [`AddressPolicy::check_url`].
    pub async fn check_resolved(&self, url: &Url) -> Result<(), Refusal> {
        let Some(name) = url.host_str().filter(|h| ip_literal(h).is_none()) else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = self.resolve(name, port).await?;
        if addrs.is_empty() {
            return Err(Refusal::Unresolvable(format!("{name} has no address")));
        }
        Ok(())
    }

    /// The addresses of `name` that rooms may send to; refused if it has some and none are.
    async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| Refusal::Unresolvable(format!("{name} does not resolve: {e}")))?
            .collect();
        if self.host_allowed(name) {
            return Ok(found);
        }
        let public: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|a| is_public(a.ip()))
            .collect();
        if public.is_empty() && !found.is_empty() {
            return Err(Refusal::Address(format!(
                "{name} resolves to {}, which rooms may not send to (loopback, private or \
                 otherwise not public; see [webhooks] room_allow_private)",
                found[0].ip()
            )));
        }
        Ok(public)
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        if is_public(ip) || self.host_allowed(host) {
            return Ok(());
        }
        Err(Refusal::Address(format!(
            "{ip} is not an address rooms may send to (loopback, private or otherwise not \
             public; see [webhooks] room_allow_private)"
        )))
    }

    fn host_allowed(&self, host: &str) -> bool {
        if self.allow_private {
            return true;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.');
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }
}

/// The address a URL's host names literally (`127.0.0.1`, `[::1]`), as the URL parser
/// normalised it (`http://2130706433/` is `127.0.0.1` by then).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The resolver of the HTTP client that sends to rooms' endpoints: a name resolves only to
/// the addresses the policy allows, at the moment of connecting.
pub struct GuardedResolver(pub Arc<AddressPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            match policy.resolve(&name, 0).await {
                Ok(addrs) if addrs.is_empty() => Err(format!("{name} has no address").into()),
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(refused) => Err(refused.detail().to_owned().into()),
            }
        })
    }
}

/// Whether `ip` is an ordinary public unicast address: not loopback, private, shared (CGNAT),
/// link-local, documentation, benchmarking, multicast, reserved or unspecified, in IPv4 or in
/// IPv6 (whose IPv4-mapped and NAT64 forms are judged by the IPv4 address inside).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address inside.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, long deprecated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_private: bool, hosts: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&WebhookSettings {
            room_allow_private: allow_private,
            room_allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..WebhookSettings::default()
        })
    }

    #[test]
    fn public_and_not_public_addresses() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for not in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(!is_public(not.parse().unwrap()), "{not}");
        }
    }

    #[test]
    fn url_shapes() {
        let p = policy(false, &[]);
        let code = |raw: &str| p.check_url(raw).err().map(|r| r.code());
        assert_eq!(code("http://hooks.example.org/stoa?x=1"), None);
        assert_eq!(code("http://8.8.8.8:8080/in"), None);
        assert_eq!(code("https://hooks.example.org/stoa"), None);
        assert_eq!(code("https://8.8.8.8/in"), None);
        for invalid in [
            "hooks.example.org/stoa",
            "ftp://hooks.example.org/",
            "http://user:pw@hooks.example.org/",
            "http://user@hooks.example.org/",
            "http://hooks.example.org/#frag",
            "file:///etc/passwd",
            "",
        ] {
            assert_eq!(code(invalid), Some("invalid_webhook_url"), "{invalid}");
        }
        let long = format!("http://hooks.example.org/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(code(&long), Some("invalid_webhook_url"));
        for private in [
            "http://127.0.0.1:9000/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5/",
            "http://[::ffff:7f00:1]/",
            "http://0x7f.1/",
            "http://2130706433/",
        ] {
            assert_eq!(code(private), Some("webhook_address_refused"), "{private}");
        }
    }

    #[test]
    fn the_operator_may_allow_private_addresses_or_some_hosts() {
        assert!(policy(true, &[]).check_url("http://127.0.0.1:9/").is_ok());
        let hosts = policy(false, &["10.0.0.5", "receiver.internal", "::1"]);
        assert!(hosts.check_url("http://10.0.0.5/").is_ok());
        assert!(hosts.check_url("http://[::1]:9/").is_ok());
        assert!(hosts.check_url("http://10.0.0.6/").is_err());
        assert!(hosts.host_allowed("Receiver.Internal."));
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let strict = policy(false, &[]);
        let url = strict.check_url("http://localhost:9/").unwrap();
        let refused = strict.check_resolved(&url).await.unwrap_err();
        assert_eq!(refused.code(), "webhook_address_refused", "{refused:?}");
        assert!(policy(true, &[]).check_resolved(&url).await.is_ok());
        assert!(
            policy(false, &["localhost"])
                .check_resolved(&url)
                .await
                .is_ok()
        );
        let nowhere = strict.check_url("http://no-such-host.invalid/").unwrap();
        let refused = strict.check_resolved(&nowhere).await.unwrap_err();
        assert_eq!(refused.code(), "webhook_host_unresolvable", "{refused:?}");
    }
}
