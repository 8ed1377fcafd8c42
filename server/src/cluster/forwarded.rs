//! How nodes vouch for what they pass to each other, and the HTTP client they use.
//!
//! A request a node passes on to the room's home carries `Stoa-Forwarded: v1 {node} {client ip}
//! {unix ms} {mac}`, an HMAC (with a key derived from the cluster's signing key) over those
//! fields, the method and the path: the home trusts the client address in it
//! (`api/forward.rs`). A node's own call on another's internal API (relay grants) carries
//! `Stoa-Node-Call: v1 {node} {unix ms} {mac}`, whose HMAC covers the body too.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderMap, Method};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER: &str = "stoa-forwarded";
/// A node's call on another node's internal API.
pub const CALL_HEADER: &str = "stoa-node-call";
/// A forwarded request older than this is not trusted (clocks of nodes agree within it).
const MAX_AGE_MS: i64 = 30_000;

/// The key and HTTP client nodes use to pass requests to each other.
#[derive(Clone)]
pub struct Forwarding {
    key: [u8; 32],
    http: reqwest::Client,
}

impl Forwarding {
    pub fn new(key: [u8; 32]) -> Self {
        // Calls between nodes are plain HTTP (`internal_url`): no root certificates needed,
        // so a machine without any (no ca-certificates) still builds this client.
        let http = crate::http_client::builder()
            .tls_certs_only(Vec::new())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client");
        Forwarding { key, http }
    }

    fn mac(&self, node: &str, ip: IpAddr, at_ms: i64, method: &Method, path: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        for part in [
            "v1",
            node,
            &ip.to_string(),
            &at_ms.to_string(),
            method.as_str(),
            path,
        ] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The client nodes call each other with (plain HTTP, short timeouts, no redirects).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn header(
        &self,
        node: &str,
        ip: IpAddr,
        at_ms: i64,
        method: &Method,
        path: &str,
    ) -> String {
        let mac = self.mac(node, ip, at_ms, method, path);
        format!("v1 {node} {ip} {at_ms} {mac}")
    }

    /// The client address a valid forwarding header vouches for.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        now_ms: i64,
    ) -> Option<IpAddr> {
        let [node, ip, at, mac] = fields(headers, HEADER)?;
        let ip: IpAddr = ip.parse().ok()?;
        let at = fresh(at, now_ms)?;
        same(&self.mac(node, ip, at, method, path), mac).then_some(ip)
    }
    fn call_mac(&self, node: &str, at_ms: i64, method: &Method, path: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        let body_hash = Sha256::digest(body);
        for part in [
            "call v1".as_bytes(),
            node.as_bytes(),
            at_ms.to_string().as_bytes(),
            method.as_str().as_bytes(),
            path.as_bytes(),
            &body_hash,
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The `Stoa-Node-Call` header for a call this node (`node`) makes on another node's
    /// internal API: unlike a passed-on request it vouches for no client, and it covers the
    /// body, so a captured header is good for nothing but that very call, for a short while.
    pub fn sign_call(
        &self,
        node: &str,
        at_ms: i64,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> String {
        let mac = self.call_mac(node, at_ms, method, path, body);
        format!("v1 {node} {at_ms} {mac}")
    }

    /// The calling node's name, when the call's header verifies.
    pub fn verify_call(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Option<String> {
        let [node, at, mac] = fields(headers, CALL_HEADER)?;
        let at = fresh(at, now_ms)?;
        same(&self.call_mac(node, at, method, path, body), mac).then(|| node.to_owned())
    }
}

/// The `N` fields after `v1` of header `name`, when it has exactly those.
fn fields<'a, const N: usize>(headers: &'a HeaderMap, name: &str) -> Option<[&'a str; N]> {
    let mut parts = headers.get(name)?.to_str().ok()?.split(' ');
    if parts.next()? != "v1" {
        return None;
    }
    let fields: [&str; N] = std::array::from_fn(|_| parts.next().unwrap_or(""));
    (parts.next().is_none() && fields.iter().all(|f| !f.is_empty())).then_some(fields)
}

/// The time a header was made at, if it is recent enough to trust.
fn fresh(at: &str, now_ms: i64) -> Option<i64> {
    let at: i64 = at.parse().ok()?;
    ((now_ms - at).abs() <= MAX_AGE_MS).then_some(at)
}

/// Whether a received MAC is the expected one, in constant time.
fn same(expected: &str, received: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(expected.as_bytes().ct_eq(received.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarding_header_verifies_only_as_signed() {
        let f = Forwarding::new([7; 32]);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let path = "/api/v1/rooms/rm_x/participants/pt_y/mute";
        let mut headers = HeaderMap::new();
        let header = f.header("node-a", ip, 1_000_000, &Method::POST, path);
        headers.insert(HEADER, header.parse().unwrap());
        assert_eq!(f.verify(&headers, &Method::POST, path, 1_000_500), Some(ip));
        // Another method, path, time far off, or key: not trusted.
        assert_eq!(f.verify(&headers, &Method::DELETE, path, 1_000_500), None);
        assert_eq!(
            f.verify(&headers, &Method::POST, "/api/v1/rooms/rm_z", 1_000_500),
            None
        );
        assert_eq!(
            f.verify(&headers, &Method::POST, path, 1_000_000 + MAX_AGE_MS + 1),
            None
        );
        assert_eq!(
            Forwarding::new([8; 32]).verify(&headers, &Method::POST, path, 1_000_500),
            None
        );
        // Another client address claimed with the same MAC: not trusted.
        let forged = header.replace("203.0.113.9", "198.51.100.1");
        headers.insert(HEADER, forged.parse().unwrap());
        assert_eq!(f.verify(&headers, &Method::POST, path, 1_000_500), None);
    }

    #[test]
    fn a_node_call_verifies_only_with_its_body() {
        let f = Forwarding::new([7; 32]);
        let path = "/internal/v1/relay-links";
        let body = br#"{"room":"rm_x","link":7}"#;
        let mut headers = HeaderMap::new();
        let header = f.sign_call("node-b", 1_000_000, &Method::POST, path, body);
        headers.insert(CALL_HEADER, header.parse().unwrap());
        assert_eq!(
            f.verify_call(&headers, &Method::POST, path, body, 1_000_500)
                .as_deref(),
            Some("node-b")
        );
        let other_body = br#"{"room":"rm_x","link":8}"#;
        assert_eq!(
            f.verify_call(&headers, &Method::POST, path, other_body, 1_000_500),
            None
        );
        assert_eq!(
            f.verify_call(&headers, &Method::DELETE, path, body, 1_000_500),
            None
        );
        assert_eq!(
            f.verify_call(
                &headers,
                &Method::POST,
                path,
                body,
                1_000_000 + MAX_AGE_MS + 1
            ),
            None
        );
        assert_eq!(
            Forwarding::new([8; 32]).verify_call(&headers, &Method::POST, path, body, 1_000_500),
            None
        );
        // Another node named with the same MAC, or a passed-on request's header: not trusted.
        headers.insert(
            CALL_HEADER,
            header.replace("node-b", "node-c").parse().unwrap(),
        );
        assert_eq!(
            f.verify_call(&headers, &Method::POST, path, body, 1_000_500),
            None
        );
        let mut forwarded = HeaderMap::new();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        forwarded.insert(
            CALL_HEADER,
            f.header("node-b", ip, 1_000_000, &Method::POST, path)
                .parse()
                .unwrap(),
        );
        assert_eq!(
            f.verify_call(&forwarded, &Method::POST, path, body, 1_000_500),
            None
        );
    }
}
