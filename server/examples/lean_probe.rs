//! What the pieces of a lean listener transport hold per connection (issue #20): a DTLS server
//! association from `rtc`'s own `dtls` crate, sharing one handshake configuration, handshaken
//! in memory against a DTLS client like a browser's, then the SRTP/SRTCP contexts made from its
//! exported keys, with and without the association kept afterwards.
//!
//! `cargo run --release -p stoa --example lean_probe [connections]`
//!
//! A counting allocator tags every block with the side that allocated it; the figures are the
//! server side's live bytes per connection, and the server side's CPU time per handshake (this
//! thread's CPU clock while inside the server's calls, the configuration's creation excluded).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::shared::TransportProtocol;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

/// Live bytes allocated while `SERVER` was set, whoever freed them.
static SERVER_LIVE: AtomicIsize = AtomicIsize::new(0);
thread_local!(static SERVER: Cell<bool> = const { Cell::new(false) });
const HEADER: usize = 16;

struct Counting;

// SAFETY: every block gets a 16-byte (or `align`-byte) prefix holding its side; the prefix is
// inside the block the system allocator returned, and `dealloc` undoes the same offset.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let offset = HEADER.max(layout.align());
        let Ok(outer) = Layout::from_size_align(layout.size() + offset, offset) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let server = SERVER.try_with(Cell::get).unwrap_or(false);
        if server {
            SERVER_LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the prefix is at least 16 bytes of the block.
        unsafe {
            *base = server as u8;
            base.add(offset)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let offset = HEADER.max(layout.align());
        // SAFETY: `ptr` came from `alloc` with this layout, so the prefix precedes it.
        unsafe {
            let base = ptr.sub(offset);
            if *base == 1 {
                SERVER_LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            }
            System.dealloc(
                base,
                Layout::from_size_align_unchecked(layout.size() + offset, offset),
            );
        }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local!(static SERVER_CPU_NS: Cell<u64> = const { Cell::new(0) });

/// This thread's CPU time, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `f` as the server: its allocations and its CPU time are the server's.
fn server<T>(f: impl FnOnce() -> T) -> T {
    SERVER.with(|s| s.set(true));
    let start = thread_cpu_ns();
    let out = f();
    SERVER_CPU_NS.with(|c| c.set(c.get() + thread_cpu_ns() - start));
    SERVER.with(|s| s.set(false));
    out
}

fn live() -> isize {
    SERVER_LIVE.load(Ordering::Relaxed)
}

struct Listener {
    dtls: Option<Endpoint>,
    peer: SocketAddr,
    contexts: Option<(Context, Context)>,
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let provider =
        rtc::crypto::default_provider().map_err(|e| anyhow::anyhow!("crypto provider: {e:?}"))?;
    let new_certificate =
        || Certificate::generate_self_signed(vec!["stoa".to_owned()], provider.crypto());
    let config_with = |client: bool, certificate: Certificate| -> anyhow::Result<_> {
        Ok(Arc::new(
            ConfigBuilder::default()
                .with_crypto_provider(provider.clone())
                .with_certificates(vec![certificate])
                .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
                .with_client_auth(ClientAuthType::RequireAnyClientCert)
                .with_insecure_skip_verify(true)
                .with_extended_master_secret(ExtendedMasterSecretType::Require)
                .build(client, None)?,
        ))
    };
    let config = |client: bool| config_with(client, new_certificate()?);
    // One configuration for every server association (its certificate is the process's).
    let before = live();
    let server_config = server(|| config(false))?;
    let shared = live() - before;
    SERVER_CPU_NS.with(|c| c.set(0));
    let client_config = config(true)?;
    let local: SocketAddr = "127.0.0.1:5000".parse()?;
    let now = Instant::now();

    let mut listeners = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    let reserved = live();
    for i in 0..n {
        let peer: SocketAddr = format!("127.0.0.{}:{}", 2 + i / 60000, 1024 + i % 60000).parse()?;
        let mut endpoint =
            server(|| Endpoint::new(local, TransportProtocol::UDP, Some(server_config.clone())));
        let mut client = Endpoint::new(peer, TransportProtocol::UDP, None);
        client.connect(now, local, client_config.clone(), None)?;
        let (mut server_done, mut client_done) = (false, false);
        for _round in 0..20 {
            while let Some(out) = client.poll_transmit() {
                let events = server(|| endpoint.read(now, peer, None, out.message))?;
                server_done |= server(|| {
                    let done = events
                        .iter()
                        .any(|e| matches!(e, EndpointEvent::HandshakeComplete));
                    drop(events);
                    done
                });
            }
            while let Some(out) = server(|| endpoint.poll_transmit()) {
                let events = client.read(now, local, None, out.message)?;
                client_done |= events
                    .iter()
                    .any(|e| matches!(e, EndpointEvent::HandshakeComplete));
            }
            if server_done && client_done {
                break;
            }
        }
        anyhow::ensure!(server_done && client_done, "handshake {i} did not complete");
        listeners.push(Listener {
            dtls: Some(endpoint),
            peer,
            contexts: None,
        });
        clients.push(client);
    }
    let handshaken = live();
    let handshake_cpu_ns = SERVER_CPU_NS.with(Cell::get);

    for listener in &mut listeners {
        let contexts = server(|| -> anyhow::Result<_> {
            let endpoint = listener.dtls.as_ref().expect("kept");
            let state = endpoint
                .get_connection_state(listener.peer)
                .ok_or_else(|| anyhow::anyhow!("no association"))?;
            // RFC 5764 §4.2: client key, server key, client salt, server salt.
            let material =
                state.export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (16 + 12))?;
            let (client_key, rest) = material.as_ref().split_at(16);
            let (server_key, rest) = rest.split_at(16);
            let (client_salt, server_salt) = rest.split_at(12);
            let profile = ProtectionProfile::AeadAes128Gcm;
            let local = Context::new(
                server_key,
                server_salt,
                profile,
                None,
                None,
                provider.crypto(),
            )?;
            let remote = Context::new(
                client_key,
                client_salt,
                profile,
                None,
                None,
                provider.crypto(),
            )?;
            Ok((local, remote))
        })?;
        listener.contexts = Some(contexts);
    }
    let keyed = live();
    // One packet each way, so that the contexts hold their per-SSRC state.
    let packet = {
        let mut p = BytesMut::from(&[0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0x1b, 0x58][..]);
        p.extend_from_slice(&[0u8; 80]);
        p
    };
    for listener in &mut listeners {
        let (local, _) = listener.contexts.as_mut().expect("keyed");
        server(|| local.encrypt_rtp(&packet)).map(drop)?;
    }
    let sent = live();
    for listener in &mut listeners {
        server(|| drop(listener.dtls.take()));
    }
    let without_dtls = live();

    let per = |a: isize, b: isize| (b - a) as f64 / n as f64 / 1024.0;
    println!("lean_probe: {n} server-side associations, per connection (KiB of live heap):");
    println!(
        "  DTLS association after the handshake (one Endpoint each): {:.2}",
        per(reserved, handshaken)
    );
    println!(
        "  + SRTP/SRTCP contexts (local and remote) from its keys:    {:.2}",
        per(handshaken, keyed)
    );
    println!(
        "  + the first packet sent through the local context:        {:.2}",
        per(keyed, sent)
    );
    println!(
        "  everything, DTLS kept:                                     {:.2}",
        per(reserved, sent)
    );
    println!(
        "  everything, DTLS dropped after keying:                     {:.2}",
        per(reserved, without_dtls)
    );
    println!(
        "  (the shared handshake configuration: {:.1} KiB once)",
        shared as f64 / 1024.0
    );
    println!(
        "server CPU per DTLS handshake (ECDSA P-256, AES-128-GCM): {:.2} ms",
        handshake_cpu_ns as f64 / n as f64 / 1e6
    );
    drop(clients);
    drop(listeners);

    // The whole lean connection (`stoa::media::lean`): ICE-lite check, handshake, keys, one
    // packet sealed by the worker's `SrtpSender`, the association kept, then dropped.
    let client_certificate = new_certificate()?;
    let client_fingerprint: [u8; 32] = provider
        .crypto()
        .hash(
            rtc::crypto::HashAlgorithm::Sha256,
            client_certificate.certificate[0].as_ref(),
        )?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a SHA-256 digest"))?;
    let client_config = config_with(true, client_certificate)?;
    let process_certificate = stoa::media::engine::certificate()?;
    let shared = server(|| stoa::media::lean::Shared::new(&process_certificate))?;
    whole_connections(
        n,
        &shared,
        &client_config,
        client_fingerprint,
        provider.crypto(),
    )
}

/// `n` lean connections joined by in-memory clients: the server side's live heap per
/// connection with the DTLS association kept and after it is dropped, and its CPU per join.
fn whole_connections(
    n: usize,
    shared: &Arc<stoa::media::lean::Shared>,
    client_config: &Arc<rtc::dtls::config::HandshakeConfig>,
    client_fingerprint: [u8; 32],
    crypto: &dyn rtc::crypto::RTCCrypto,
) -> anyhow::Result<()> {
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use stoa::media::lean::{LeanConnection, Setup, State};
    use stoa::media::rtp::RtpHeader;
    use stoa::media::worker::{Now, Peer};

    let local: SocketAddr = "127.0.0.1:5000".parse()?;
    let mut now = Now::read();
    SERVER_CPU_NS.with(|c| c.set(0));
    let before = live();
    let mut connections = Vec::with_capacity(n);
    for i in 0..n {
        let peer: SocketAddr = format!("127.0.0.{}:{}", 2 + i / 60000, 1024 + i % 60000).parse()?;
        let (ufrag, password) = (format!("lean{i:012}"), format!("{i:032}"));
        let mut conn = server(|| {
            LeanConnection::new(
                Setup {
                    shared: Arc::clone(shared),
                    ufrag: ufrag.clone(),
                    password: password.clone(),
                    remote_fingerprint: client_fingerprint,
                    slot_ssrcs: vec![1, 2, 3],
                    microphone: None,
                    ice_disconnected: std::time::Duration::from_secs(60),
                    ice_failed: std::time::Duration::from_secs(60),
                },
                now.at,
            )
        });
        let mut check = Message::new();
        let setters: [Box<dyn Setter + '_>; 6] = [
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(rtc::stun::textattrs::Username::new(
                rtc::stun::attributes::ATTR_USERNAME,
                format!("{ufrag}:client"),
            )),
            Box::new(rtc::ice::attributes::use_candidate::UseCandidateAttr::new()),
            Box::new(
                rtc::stun::integrity::MessageIntegrity::new_short_term_integrity_with_provider(
                    password, crypto,
                ),
            ),
            Box::new(rtc::stun::fingerprint::FINGERPRINT),
        ];
        check.build(&setters)?;
        let mut to_client: Vec<Vec<u8>> = Vec::new();
        server(|| {
            conn.handle_datagram(now, Peer::udp(peer), &check.raw, &mut |_, d| {
                to_client.push(d.to_vec())
            })
        })
        .map_err(|e| anyhow::anyhow!("check refused: {e:?}"))?;
        to_client.clear();
        let mut client = Endpoint::new(peer, TransportProtocol::UDP, None);
        client.connect(now.at, local, Arc::clone(client_config), None)?;
        for _round in 0..20 {
            while let Some(out) = client.poll_transmit() {
                server(|| {
                    conn.handle_datagram(now, Peer::udp(peer), &out.message, &mut |_, d| {
                        to_client.push(d.to_vec())
                    })
                })
                .map_err(|e| anyhow::anyhow!("handshake refused: {e:?}"))?;
            }
            for datagram in to_client.drain(..) {
                client.read(now.at, local, None, BytesMut::from(&datagram[..]))?;
            }
            if conn.state() == State::Connected {
                break;
            }
        }
        anyhow::ensure!(conn.state() == State::Connected, "connection {i} not keyed");
        // One forwarded packet, sealed in place as the worker does.
        let mut buf = [0u8; 1500];
        server(|| {
            let (sender, _) = conn.sender().expect("connected");
            let header = RtpHeader {
                marker: false,
                payload_type: 111,
                seq: 1,
                timestamp: 960,
                ssrc: 1,
            };
            sender.seal(&header, 0, &[0u8; 80], &mut buf).map(drop)
        })
        .ok_or_else(|| anyhow::anyhow!("not sealed"))?;
        connections.push(conn);
    }
    let kept = live();
    let join_cpu_ns = SERVER_CPU_NS.with(Cell::get);
    // Past the time the association is kept for: every connection drops it.
    now = now.after(std::time::Duration::from_secs(6));
    for conn in &mut connections {
        server(|| conn.handle_timeout(now, &mut |_, _| {}));
        anyhow::ensure!(!conn.holds_handshake(), "the association is still held");
    }
    let dropped = live();
    let per = |a: isize, b: isize| (b - a) as f64 / n as f64 / 1024.0;
    println!("lean connections (stoa::media::lean::LeanConnection), per connection:");
    println!(
        "  keyed, DTLS association kept:   {:.2} KiB",
        per(before, kept)
    );
    println!(
        "  after the association is dropped: {:.2} KiB (+{} B inline)",
        per(before, dropped),
        std::mem::size_of::<LeanConnection>()
    );
    println!(
        "server CPU per join (ICE check, DTLS handshake, keys): {:.2} ms",
        join_cpu_ns as f64 / n as f64 / 1e6
    );
    Ok(())
}
