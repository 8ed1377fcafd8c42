//! Two `rtc` connections joined in memory: every datagram one queues is handed to the other
//! at once, with made-up addresses. No sockets, no wakeups: what is left is the library's own
//! work, which is what a benchmark of it wants to see.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::Error;

/// An offerer and an answerer whose descriptions are already applied, connected through
/// memory. The fields are open: drive either side as you like, then [`MemoryPair::shuttle`].
pub struct MemoryPair {
    /// The offering side (the client).
    pub client: RTCPeerConnection,
    /// The answering side (the server).
    pub server: RTCPeerConnection,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
}

impl MemoryPair {
    /// Moves datagrams between `client` (whose candidate is `client_addr`) and `server`
    /// (`server_addr`) and runs their timers until both report `connected`, or fails after
    /// `timeout`. Media decrypted during the handshake is discarded.
    pub fn connect(
        client: RTCPeerConnection,
        client_addr: SocketAddr,
        server: RTCPeerConnection,
        server_addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let mut pair = MemoryPair {
            client,
            server,
            client_addr,
            server_addr,
        };
        let (mut client_up, mut server_up) = (false, false);
        let start = Instant::now();
        while !(client_up && server_up) {
            let now = Instant::now();
            let _ = pair.client.handle_timeout(now);
            let _ = pair.server.handle_timeout(now);
            let moved = pair.shuttle(now);
            client_up |= reached_connected(&mut pair.client);
            server_up |= reached_connected(&mut pair.server);
            if moved == 0 {
                // Only timers can move things on now (a retransmission, a check).
                std::thread::sleep(Duration::from_micros(200));
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "an in-memory pair did not connect within {timeout:?}"
                )));
            }
        }
        while pair.server.poll_read().is_some() {}
        while pair.client.poll_read().is_some() {}
        Ok(pair)
    }

    /// Hands every datagram queued on either side to the other, once each way; returns how
    /// many moved.
    pub fn shuttle(&mut self, now: Instant) -> usize {
        shuttle(
            &mut self.client,
            &mut self.server,
            self.client_addr,
            self.server_addr,
            now,
        ) + shuttle(
            &mut self.server,
            &mut self.client,
            self.server_addr,
            self.client_addr,
            now,
        )
    }
}

fn shuttle(
    from: &mut RTCPeerConnection,
    to: &mut RTCPeerConnection,
    from_addr: SocketAddr,
    to_addr: SocketAddr,
    now: Instant,
) -> usize {
    let mut moved = 0;
    while let Some(out) = from.poll_write() {
        moved += 1;
        let _ = to.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: to_addr,
                peer_addr: from_addr,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: out.message,
        });
    }
    moved
}

/// Whether the connection's events since the last call include reaching `connected`.
fn reached_connected(pc: &mut RTCPeerConnection) -> bool {
    let mut connected = false;
    while let Some(event) = pc.poll_event() {
        connected |= matches!(
            event,
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected)
        );
    }
    connected
}
