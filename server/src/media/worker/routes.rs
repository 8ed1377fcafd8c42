//! Routes: which connection a datagram is for. A binding request is routed by the ICE
//! username in it (a browser checks from several addresses, a NAT may rebind); anything else
//! by the address it came from. Only the core adds an address, after the request proved it
//! knows the connection's password; nothing here looks inside a connection.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::super::demux::{self, Kind};
use super::ConnKey;

/// Addresses one connection may be reached from (a browser checks from several).
pub(super) const MAX_ADDRS_PER_CONN: usize = 8;

/// Where a client is reached: an address, over UDP or over one of our ICE-TCP streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tcp: bool,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Self {
        Peer { addr, tcp: false }
    }

    pub fn tcp(addr: SocketAddr) -> Self {
        Peer { addr, tcp: true }
    }
}

/// How a datagram found its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// By the ICE username of a binding request: the address may be new.
    ByUfrag(ConnKey),
    /// By an address a verified request added earlier.
    ByAddr(ConnKey),
}

impl Found {
    pub fn key(self) -> ConnKey {
        match self {
            Found::ByUfrag(key) | Found::ByAddr(key) => key,
        }
    }
}

#[derive(Default)]
pub(super) struct Routes {
    by_addr: HashMap<Peer, ConnKey>,
    by_ufrag: HashMap<String, ConnKey>,
}

impl Routes {
    /// The connection `datagram` (of `kind`) from `peer` is for.
    pub fn find(&self, kind: Kind, datagram: &[u8], peer: &Peer) -> Option<Found> {
        if kind == Kind::Stun
            && let Some(key) = demux::server_ufrag(datagram).and_then(|u| self.by_ufrag.get(u))
        {
            return Some(Found::ByUfrag(*key));
        }
        self.by_addr.get(peer).copied().map(Found::ByAddr)
    }

    /// Binding requests naming our `ufrag` are for connection `key`.
    pub fn add_ufrag(&mut self, ufrag: String, key: ConnKey) {
        self.by_ufrag.insert(ufrag, key);
    }

    /// Connection `key` (whose addresses are `addrs`) is also reached at `peer`; past the
    /// bound, its oldest address makes room.
    pub fn add_addr(&mut self, key: ConnKey, addrs: &mut Vec<Peer>, peer: Peer) {
        if addrs.len() == MAX_ADDRS_PER_CONN {
            let oldest = addrs.remove(0);
            if self.by_addr.get(&oldest) == Some(&key) {
                self.by_addr.remove(&oldest);
            }
        }
        addrs.push(peer);
        self.by_addr.insert(peer, key);
    }

    /// Forgets every route to a closed connection; `stream_gone` is told of each ICE-TCP
    /// stream that led to it, which ends with it.
    pub fn remove(
        &mut self,
        key: ConnKey,
        ufrag: &str,
        addrs: &[Peer],
        mut stream_gone: impl FnMut(SocketAddr),
    ) {
        self.by_ufrag.remove(ufrag);
        for peer in addrs {
            if self.by_addr.get(peer) == Some(&key) {
                self.by_addr.remove(peer);
                if peer.tcp {
                    stream_gone(peer.addr);
                }
            }
        }
    }

    /// An ICE-TCP stream ended: the connection it led to, which is no longer reached there.
    pub fn stream_closed(&mut self, peer: &Peer) -> Option<ConnKey> {
        self.by_addr.remove(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Peer {
        Peer::udp(SocketAddr::from(([10, 0, 0, 2], port)))
    }

    #[test]
    fn a_connection_keeps_its_newest_addresses_and_loses_them_all_when_closed() {
        let mut routes = Routes::default();
        let key = ConnKey(7);
        let mut addrs = Vec::new();
        routes.add_ufrag("ours".to_owned(), key);
        for port in 0..MAX_ADDRS_PER_CONN as u16 + 2 {
            routes.add_addr(key, &mut addrs, peer(port));
        }
        assert_eq!(addrs.len(), MAX_ADDRS_PER_CONN);
        assert_eq!(
            routes.find(Kind::Rtp, &[], &peer(0)),
            None,
            "oldest evicted"
        );
        assert_eq!(routes.find(Kind::Rtp, &[], &peer(1)), None);
        assert_eq!(
            routes.find(Kind::Rtp, &[], &peer(2)),
            Some(Found::ByAddr(key))
        );
        let mut tcp = Vec::new();
        routes.remove(key, "ours", &addrs, |a| tcp.push(a));
        assert!(tcp.is_empty(), "no stream led to it");
        assert!(routes.by_addr.is_empty() && routes.by_ufrag.is_empty());
    }
}
