//! Opus in and out: the encoder a microphone uses (voice, in-band FEC), and the receive side of
//! one slot: RTP sequence bookkeeping and decoding with concealment (in-band FEC for the last
//! missing packet, PLC before it). No I/O, no clock.

use std::collections::VecDeque;

use super::ENCODER_EXPECTED_LOSS_PERCENT;
use crate::audio::{FRAME_SAMPLES, SAMPLE_RATE};

/// Longer gaps are not concealed: the decoder just starts again at the next packet.
const MAX_CONCEALED_FRAMES: u16 = 10;
/// A packet this far behind the last decoded one starts a new stream instead of being dropped
/// as late (a sender that restarted its numbering).
const RESYNC_DISTANCE: i16 = 1_000;
/// Largest decoded frame Opus can return (120 ms).
const MAX_FRAME_SAMPLES: usize = 5_760;

/// What a slot's RTP sequence numbers looked like, in arrival order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Arrivals whose number was not the previous arrival's + 1 (mod 2^16).
    pub breaks: u64,
    /// Numbers skipped by forward jumps (a late packet may still fill one in).
    pub missing: u64,
    /// Arrivals of a number seen among the last 256 arrivals.
    pub duplicates: u64,
    /// Arrivals behind the highest number seen that were not duplicates.
    pub reordered: u64,
    /// The highest number seen (mod 2^16 order).
    pub highest: Option<u16>,
}

#[derive(Default)]
pub(crate) struct SeqTracker {
    pub(crate) stats: SeqStats,
    previous: Option<u16>,
    recent: VecDeque<u16>,
}

impl SeqTracker {
    const RECENT: usize = 256;

    pub(crate) fn record(&mut self, seq: u16) {
        let stats = &mut self.stats;
        match (self.previous, stats.highest) {
            (Some(previous), Some(highest)) => {
                if seq != previous.wrapping_add(1) {
                    stats.breaks += 1;
                }
                if self.recent.contains(&seq) {
                    stats.duplicates += 1;
                } else {
                    let ahead = seq.wrapping_sub(highest) as i16;
                    if ahead > 0 {
                        stats.missing += (ahead - 1) as u64;
                        stats.highest = Some(seq);
                    } else {
                        stats.reordered += 1;
                    }
                }
            }
            _ => stats.highest = Some(seq),
        }
        self.previous = Some(seq);
        if self.recent.len() == Self::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(seq);
    }
}

/// A 48 kHz mono Opus encoder for speech that puts in-band FEC in its packets, so a listener
/// can rebuild a lost packet from the next one.
pub(crate) fn voice_encoder() -> Result<opus::Encoder, opus::Error> {
    let mut encoder =
        opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
    encoder.set_inband_fec(true)?;
    encoder.set_packet_loss_perc(ENCODER_EXPECTED_LOSS_PERCENT)?;
    Ok(encoder)
}

/// How a decoded frame came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameOrigin {
    /// Decoded from a packet that arrived.
    Packet,
    /// A missing packet rebuilt from the next packet's in-band FEC (libopus falls back to
    /// concealment when that packet carries no FEC data).
    Fec,
    /// A missing packet concealed by libopus (packet loss concealment).
    Plc,
}

/// The frames one packet produced.
#[derive(Default)]
pub(crate) struct Decoded {
    pub(crate) frames: Vec<(FrameOrigin, Vec<i16>)>,
    pub(crate) errors: u64,
    /// A late or duplicate packet that was not decoded.
    pub(crate) skipped: bool,
}

/// One Opus stream's decoder: decodes packets in sequence order and conceals the ones missing
/// before each (PLC for all but the last, in-band FEC of the arriving packet for the last),
/// assuming 20 ms per packet.
pub(crate) struct OpusReceiver {
    decoder: opus::Decoder,
    last_seq: Option<u16>,
    buffer: Vec<i16>,
}

impl OpusReceiver {
    pub(crate) fn new() -> Result<Self, opus::Error> {
        Ok(OpusReceiver {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            last_seq: None,
            buffer: vec![0; MAX_FRAME_SAMPLES],
        })
    }

    /// Forget the sequence position: the next packet starts a new stream (a new SSRC).
    pub(crate) fn resync(&mut self) {
        self.last_seq = None;
    }

    pub(crate) fn receive(&mut self, seq: u16, payload: &[u8]) -> Decoded {
        let mut out = Decoded::default();
        let missing = match self.last_seq {
            None => 0,
            Some(last) => {
                let ahead = seq.wrapping_sub(last) as i16;
                if ahead <= 0 && ahead > -RESYNC_DISTANCE {
                    out.skipped = true;
                    return out;
                }
                let missing = ahead.saturating_sub(1).max(0) as u16;
                if missing > MAX_CONCEALED_FRAMES {
                    0
                } else {
                    missing
                }
            }
        };
        self.last_seq = Some(seq);
        for i in 0..missing {
            let frame = &mut self.buffer[..FRAME_SAMPLES];
            let (origin, result) = if i + 1 == missing {
                (FrameOrigin::Fec, self.decoder.decode(payload, frame, true))
            } else {
                (FrameOrigin::Plc, self.decoder.decode(&[], frame, false))
            };
            match result {
                Ok(n) => out.frames.push((origin, frame[..n].to_vec())),
                Err(_) => out.errors += 1,
            }
        }
        match self.decoder.decode(payload, &mut self.buffer, false) {
            Ok(n) => out
                .frames
                .push((FrameOrigin::Packet, self.buffer[..n].to_vec())),
            Err(_) => out.errors += 1,
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{WINDOW_SAMPLES, dbov, dominant_tone, tone_fraction, tone_pcm};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn encode_all(encoder: &mut opus::Encoder, pcm: &[i16]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 1500];
        pcm.chunks_exact(FRAME_SAMPLES)
            .map(|frame| {
                let len = encoder.encode(frame, &mut out).expect("encode");
                out[..len].to_vec()
            })
            .collect()
    }

    fn voip_encoder() -> opus::Encoder {
        voice_encoder().unwrap()
    }

    #[test]
    fn opus_round_trip_keeps_440_and_880_apart() {
        for hz in [440.0f32, 880.0] {
            let mut encoder = voip_encoder();
            let mut receiver = OpusReceiver::new().unwrap();
            let packets = encode_all(&mut encoder, &tone_pcm(hz, -20.0, 50 * FRAME_SAMPLES));
            let mut decoded = Vec::new();
            for (seq, payload) in packets.iter().enumerate() {
                let out = receiver.receive(seq as u16, payload);
                assert_eq!(out.errors, 0);
                for (origin, pcm) in out.frames {
                    assert_eq!(origin, FrameOrigin::Packet);
                    assert_eq!(pcm.len(), FRAME_SAMPLES);
                    decoded.extend(pcm);
                }
            }
            // Skip the first window: encoder look-ahead and ramp-up.
            for window in decoded[WINDOW_SAMPLES..].chunks_exact(WINDOW_SAMPLES) {
                assert_eq!(dominant_tone(window, &[440.0, 880.0]), Some(hz));
            }
            let level = dbov(&decoded[WINDOW_SAMPLES..]);
            assert!((level + 20.0).abs() < 2.0, "decoded level {level} dBov");
        }
    }

    #[test]
    fn opus_concealment_keeps_a_tone_through_ten_percent_loss() {
        let mut encoder = voip_encoder();
        let mut receiver = OpusReceiver::new().unwrap();
        let packets = encode_all(&mut encoder, &tone_pcm(440.0, -20.0, 150 * FRAME_SAMPLES));
        let mut rng = StdRng::seed_from_u64(42);
        let (mut decoded, mut fec, mut plc, mut lost) = (Vec::new(), 0, 0, 0);
        for (seq, payload) in packets.iter().enumerate() {
            // Never drop the first packet: there is nothing to conceal from.
            if seq > 0 && rng.random::<f64>() < 0.10 {
                lost += 1;
                continue;
            }
            let out = receiver.receive(seq as u16, payload);
            assert_eq!(out.errors, 0);
            for (origin, pcm) in out.frames {
                fec += u32::from(origin == FrameOrigin::Fec);
                plc += u32::from(origin == FrameOrigin::Plc);
                decoded.extend(pcm);
            }
        }
        assert!(
            lost >= 8,
            "the seed should drop about 15 packets, dropped {lost}"
        );
        assert_eq!(fec + plc, lost, "every lost packet is concealed");
        assert!(fec > 0);
        assert_eq!(decoded.len(), packets.len() * FRAME_SAMPLES);
        let fraction = tone_fraction(&decoded[WINDOW_SAMPLES..], 440.0);
        assert!(fraction >= 0.95, "tone in {fraction} of the windows");
    }

    #[test]
    fn opus_receiver_skips_late_packets_and_resyncs_on_a_jump() {
        let mut encoder = voip_encoder();
        let packets = encode_all(&mut encoder, &tone_pcm(440.0, -20.0, 4 * FRAME_SAMPLES));
        let mut receiver = OpusReceiver::new().unwrap();
        assert_eq!(receiver.receive(100, &packets[0]).frames.len(), 1);
        assert!(receiver.receive(100, &packets[0]).skipped);
        assert!(receiver.receive(99, &packets[1]).skipped);
        // Too long a gap: no concealment, just the packet.
        assert_eq!(receiver.receive(200, &packets[1]).frames.len(), 1);
        // Far behind: a restarted sender, decoded.
        assert_eq!(receiver.receive(60_000, &packets[2]).frames.len(), 1);
        // Two missing: one PLC, one FEC, then the packet.
        let origins: Vec<_> = receiver
            .receive(60_003, &packets[3])
            .frames
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            origins,
            [FrameOrigin::Plc, FrameOrigin::Fec, FrameOrigin::Packet]
        );
    }

    #[test]
    fn sequence_tracker_counts_breaks_gaps_duplicates_and_reordering() {
        let mut tracker = SeqTracker::default();
        for seq in [65534, 65535, 0, 1] {
            tracker.record(seq);
        }
        assert_eq!(
            tracker.stats,
            SeqStats {
                highest: Some(1),
                ..Default::default()
            },
            "wrapping is continuous"
        );
        tracker.record(4); // 2 and 3 missing
        tracker.record(3); // late
        tracker.record(3); // duplicate
        tracker.record(5);
        assert_eq!(
            tracker.stats,
            SeqStats {
                breaks: 4,
                missing: 2,
                duplicates: 1,
                reordered: 1,
                highest: Some(5),
            }
        );
    }
}
