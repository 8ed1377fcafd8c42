//! Lean SRTP for forwarded audio: what a listener's connection needs to send, and nothing else.
//!
//! `rtc`'s own write path (`RTCRtpSender::write_rtp`) costs about ten times the encryption per
//! packet × listener: queues of large structs, a stats lookup by string, several allocations.
//! Stoa's forwarding needs none of it — the packet is already rewritten, only the AES-GCM seal
//! is left — so each listener connection keeps a small sender here: the expanded AES-GCM key and
//! the session salt (RFC 7714), and each slot its own rollover counter.
//!
//! The keys come from the DTLS handshake `rtc` runs, and `rtc` 0.21 keeps them private. Every
//! connection therefore gets its own crypto provider, a [`KeyTap`]: it hands every operation to
//! the real provider, and on the way notes the inputs of the SRTP key derivation (RFC 3711
//! §4.3: AES of the master salt, keyed with the master key), which is all it takes to recover
//! the master key and salt. Nothing is trusted on the strength of that: the first packets of a
//! connection still go through `rtc`, and a candidate key is used only once our encryption of
//! the same packet equals `rtc`'s output byte for byte. A connection where that never happens
//! stays on `rtc`'s path, which is slower but correct.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};

use super::rtp::{HEADER_LEN, RtpHeader};

/// RFC 3711 key derivation labels.
const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
const LABEL_SRTP_SALT: u8 = 0x02;
/// AES-128-GCM (the only profile Stoa negotiates): 16-byte master key, 12-byte master salt.
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Derivations a handshake makes: four per direction (RTP/RTCP key and salt).
const MAX_NOTED: usize = 32;

/// An SRTP master key and salt, as the DTLS exporter gave them to one direction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterKey {
    key: [u8; KEY_LEN],
    salt: [u8; SALT_LEN],
}

impl MasterKey {
    /// A master key and salt as RFC 5764 §4.2's exporter gave them (the lean transport's
    /// path: `None` unless they have AES-128-GCM's lengths).
    pub fn new(key: &[u8], salt: &[u8]) -> Option<Self> {
        Some(MasterKey {
            key: key.try_into().ok()?,
            salt: salt.try_into().ok()?,
        })
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(Clone, Copy)]
struct Derivation {
    key: [u8; KEY_LEN],
    block: [u8; 16],
}

/// A crypto provider for one connection that notes the SRTP key derivations made through it.
pub struct KeyTap {
    inner: Arc<dyn RTCCryptoProvider>,
    crypto: TapCrypto,
}

struct TapCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    noted: Mutex<Vec<Derivation>>,
    /// Derivations seen, ever; a new handshake makes it grow.
    count: AtomicUsize,
}

impl KeyTap {
    pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::clone(&inner),
            crypto: TapCrypto {
                inner,
                noted: Mutex::new(Vec::new()),
                count: AtomicUsize::new(0),
            },
        })
    }

    /// How many derivations went through; changes only when keys are (re)made.
    pub fn generation(&self) -> usize {
        self.crypto.count.load(Ordering::Acquire)
    }

    /// The master keys derived from so far, in the order they were first used. Each one is
    /// recognised by its first derivation: label 0 (the SRTP encryption key), where the AES
    /// input block is exactly the master salt followed by zeros.
    pub fn candidates(&self) -> Vec<MasterKey> {
        let noted = self.crypto.noted.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<MasterKey> = Vec::new();
        for d in noted.iter() {
            if found.iter().any(|m| m.key == d.key) || d.block[SALT_LEN..] != [0; 4] {
                continue;
            }
            let mut salt = [0; SALT_LEN];
            salt.copy_from_slice(&d.block[..SALT_LEN]);
            found.push(MasterKey { key: d.key, salt });
        }
        found
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

impl RTCCrypto for TapCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        // Only SRTP's key derivation encrypts single AES blocks in `rtc`.
        if algorithm == BlockCipherAlgorithm::Aes128 && key.len() == KEY_LEN && block.len() == 16 {
            let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
            if noted.len() < MAX_NOTED {
                let mut d = Derivation {
                    key: [0; KEY_LEN],
                    block: [0; 16],
                };
                d.key.copy_from_slice(key);
                d.block.copy_from_slice(block);
                noted.push(d);
            }
            self.count.fetch_add(1, Ordering::Release);
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

/// One direction's SRTP sending state: the expanded AES-GCM session key and the session salt.
pub struct SrtpSender {
    aead: Box<dyn AeadCipher>,
    salt: [u8; SALT_LEN],
}

impl SrtpSender {
    /// The cipher's key schedule (AES round keys and the GHASH table: ~10 cache lines).
    #[inline]
    pub fn prefetch(&self) {
        crate::media::prefetch::lines((&*self.aead as *const dyn AeadCipher).cast(), 10);
    }

    /// Derives the session key and salt (RFC 3711 §4.3.1, key derivation rate 0) from `master`.
    pub fn new(crypto: &dyn RTCCrypto, master: &MasterKey) -> Result<Self, CryptoError> {
        let key = derive(crypto, master, LABEL_SRTP_ENCRYPTION)?;
        let salt_block = derive(crypto, master, LABEL_SRTP_SALT)?;
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&salt_block[..SALT_LEN]);
        let aead = crypto.new_aead(AeadAlgorithm::Aes128Gcm, &key)?;
        Ok(Self { aead, salt })
    }

    /// Writes the protected packet into `out` and returns its length; `None` if it does not fit
    /// or the cipher refused. Allocates nothing.
    pub fn seal(
        &mut self,
        header: &RtpHeader,
        rollover: u32,
        payload: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        out.get_mut(HEADER_LEN..HEADER_LEN + payload.len())?
            .copy_from_slice(payload);
        self.seal_in_place(header, rollover, payload.len(), out)
    }

    /// [`seal`](Self::seal) for a payload the caller already wrote at
    /// `out[HEADER_LEN..HEADER_LEN + payload_len]` (built in place, as RED is).
    pub fn seal_in_place(
        &mut self,
        header: &RtpHeader,
        rollover: u32,
        payload_len: usize,
        out: &mut [u8],
    ) -> Option<usize> {
        let len = HEADER_LEN + payload_len + TAG_LEN;
        if out.len() < len {
            return None;
        }
        header.write(&mut out[..HEADER_LEN]);
        // RFC 7714 §8.1: 00 00 | SSRC | ROC | SEQ, XORed with the session salt.
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&header.ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&rollover.to_be_bytes());
        iv[10..12].copy_from_slice(&header.seq.to_be_bytes());
        for (v, s) in iv.iter_mut().zip(self.salt) {
            *v ^= s;
        }
        let (head, rest) = out[..len].split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(payload_len);
        self.aead.seal_in_place(&iv, head, body, tag).ok()?;
        Some(len)
    }
}

fn derive(crypto: &dyn RTCCrypto, master: &MasterKey, label: u8) -> Result<[u8; 16], CryptoError> {
    let mut block = [0u8; 16];
    block[..SALT_LEN].copy_from_slice(&master.salt);
    block[7] ^= label;
    crypto.block_encrypt(BlockCipherAlgorithm::Aes128, &master.key, &mut block)?;
    Ok(block)
}

/// The rollover counter of one outgoing stream (RFC 3711 §3.3.1): counts sequence number wraps.
/// The stream's sequence numbers only move forward (the slot rewriter guarantees it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rollover {
    last: Option<u16>,
    roc: u32,
}

impl Rollover {
    /// The counter for `seq`, the next packet of the stream.
    pub fn next(&mut self, seq: u16) -> u32 {
        if let Some(last) = self.last {
            let ahead = seq.wrapping_sub(last) as i16;
            if ahead > 0 && seq < last {
                self.roc = self.roc.wrapping_add(1);
            } else if ahead < 0 {
                // Behind the newest: belongs to the counter it was sent under.
                return if seq > last {
                    self.roc.wrapping_sub(1)
                } else {
                    self.roc
                };
            }
        }
        self.last = Some(seq);
        self.roc
    }
}

/// Probes on `rtc`'s path before a connection gives up on the lean one.
const PROBES: u8 = 8;

/// Which path a listener connection's forwarded audio takes.
pub enum Lean {
    /// Still on `rtc`'s path; each packet sent there is a chance to prove a candidate key.
    Probing { tries: u8 },
    /// Proven against `rtc`'s output under the tap's `generation`.
    Ready {
        sender: SrtpSender,
        generation: usize,
    },
    /// No candidate ever matched: stays on `rtc`'s path for good.
    Off,
}

impl Default for Lean {
    fn default() -> Self {
        Lean::Probing { tries: 0 }
    }
}

/// What [`Lean::learn`] concluded from one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    Proven,
    NotYet,
    GaveUp,
}

impl Lean {
    /// The proven sender, unless the connection's keys changed since it was proven (a new
    /// handshake), in which case the connection goes back to probing.
    pub fn sender(&mut self, tap: &KeyTap) -> Option<&mut SrtpSender> {
        if let Lean::Ready { generation, .. } = self
            && *generation != tap.generation()
        {
            *self = Lean::default();
        }
        match self {
            Lean::Ready { sender, .. } => Some(sender),
            _ => None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Lean::Ready { .. })
    }

    pub fn is_probing(&self) -> bool {
        matches!(self, Lean::Probing { .. })
    }

    /// `produced` is what `rtc` sent for `header` + `payload` under `rollover`: if one of the
    /// tap's candidate keys seals the same packet to the same bytes, that key is proven.
    #[allow(clippy::too_many_arguments)]
    pub fn learn(
        &mut self,
        tap: &KeyTap,
        crypto: &dyn RTCCrypto,
        header: &RtpHeader,
        rollover: u32,
        payload: &[u8],
        produced: &[u8],
        scratch: &mut [u8],
    ) -> Learned {
        let Lean::Probing { tries } = self else {
            return Learned::NotYet;
        };
        let generation = tap.generation();
        for candidate in tap.candidates() {
            let Ok(mut sender) = SrtpSender::new(crypto, &candidate) else {
                continue;
            };
            if sender
                .seal(header, rollover, payload, scratch)
                .is_some_and(|len| &scratch[..len] == produced)
            {
                *self = Lean::Ready { sender, generation };
                return Learned::Proven;
            }
        }
        *tries += 1;
        if *tries >= PROBES {
            *self = Lean::Off;
            return Learned::GaveUp;
        }
        Learned::NotYet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::context::Context;
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn master(seed: u8) -> MasterKey {
        let mut key = [0; KEY_LEN];
        let mut salt = [0; SALT_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8);
        }
        for (i, b) in salt.iter_mut().enumerate() {
            *b = seed.wrapping_mul(7).wrapping_add(100 + i as u8);
        }
        MasterKey { key, salt }
    }

    fn rtc_context(crypto: &dyn RTCCrypto, m: &MasterKey) -> Context {
        Context::new(
            &m.key,
            &m.salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            crypto,
        )
        .unwrap()
    }

    fn plain(header: &RtpHeader, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; HEADER_LEN];
        header.write(&mut out);
        out.extend_from_slice(payload);
        out
    }

    /// Our sender and `rtc`'s SRTP context produce the same bytes, across a sequence wrap.
    #[test]
    fn seal_matches_the_srtp_library_across_a_rollover() {
        let provider = rtc::crypto::default_provider().unwrap();
        let m = master(3);
        let mut reference = rtc_context(provider.crypto(), &m);
        let mut ours = SrtpSender::new(provider.crypto(), &m).unwrap();
        let mut rollover = Rollover::default();
        let mut buf = [0u8; 1500];
        let mut seq: u16 = 65_500;
        for n in 0..200u32 {
            let header = RtpHeader {
                marker: n == 0,
                payload_type: 111,
                seq,
                timestamp: 960 * n,
                ssrc: 0x1234_5678,
            };
            let payload: Vec<u8> = (0..(40 + n as usize % 80))
                .map(|i| i as u8 ^ 0x5a)
                .collect();
            let expected = reference.encrypt_rtp(&plain(&header, &payload)).unwrap();
            let roc = rollover.next(seq);
            let len = ours.seal(&header, roc, &payload, &mut buf).unwrap();
            assert_eq!(
                &buf[..len],
                &expected[..],
                "packet {n} (seq {seq}, roc {roc})"
            );
            seq = seq.wrapping_add(1);
        }
        assert_eq!(rollover.roc, 1);
    }

    /// A packet sealed by us opens with `rtc`'s receiving context, so a peer can read it.
    #[test]
    fn a_peer_context_opens_what_we_seal() {
        let provider = rtc::crypto::default_provider().unwrap();
        let m = master(9);
        let mut peer = rtc_context(provider.crypto(), &m);
        let mut ours = SrtpSender::new(provider.crypto(), &m).unwrap();
        let header = RtpHeader {
            marker: false,
            payload_type: 111,
            seq: 7,
            timestamp: 1,
            ssrc: 42,
        };
        let mut buf = [0u8; 256];
        let len = ours.seal(&header, 0, b"opus frame", &mut buf).unwrap();
        let opened = peer.decrypt_rtp(&buf[..len]).unwrap();
        assert_eq!(&opened[HEADER_LEN..], b"opus frame");
        // One flipped bit and the tag no longer holds.
        buf[HEADER_LEN] ^= 1;
        let mut peer = rtc_context(provider.crypto(), &m);
        assert!(peer.decrypt_rtp(&buf[..len]).is_err());
    }

    /// Contexts built through the tap reveal their master keys, in the order they were made.
    #[test]
    fn the_tap_recovers_master_keys_from_the_derivations() {
        let tap = KeyTap::new(rtc::crypto::default_provider().unwrap());
        assert_eq!(tap.generation(), 0);
        assert!(tap.candidates().is_empty());
        let (local, remote) = (master(1), master(2));
        let _l = rtc_context(tap.crypto(), &local);
        let _r = rtc_context(tap.crypto(), &remote);
        assert!(tap.generation() >= 8);
        assert_eq!(tap.candidates(), vec![local, remote]);
    }

    #[test]
    fn too_small_a_buffer_is_refused() {
        let provider = rtc::crypto::default_provider().unwrap();
        let mut ours = SrtpSender::new(provider.crypto(), &master(4)).unwrap();
        let header = RtpHeader {
            marker: false,
            payload_type: 111,
            seq: 1,
            timestamp: 1,
            ssrc: 1,
        };
        let mut buf = [0u8; 40];
        assert_eq!(ours.seal(&header, 0, &[0; 13], &mut buf), None);
        assert_eq!(ours.seal(&header, 0, &[0; 12], &mut buf), Some(40));
    }

    #[test]
    fn rollover_counts_wraps_and_places_late_packets() {
        let mut r = Rollover::default();
        assert_eq!(r.next(65_534), 0);
        assert_eq!(r.next(65_535), 0);
        assert_eq!(r.next(0), 1);
        assert_eq!(r.next(65_535), 0, "a straggler from before the wrap");
        assert_eq!(r.next(1), 1);
        assert_eq!(r.next(3), 1);
    }
}
