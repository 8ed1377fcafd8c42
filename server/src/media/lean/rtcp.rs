//! The lean transport's own RTCP: a sender report per slot that has carried audio (RFC 3550
//! §6.4.1), written from counts the forwarder keeps as it sends, so a browser's `getStats()`
//! and round-trip times see the rewritten stream it receives. Receiver reports come in through
//! SRTCP and are read by the worker (`worker/rtcp.rs`). The time is passed in.

use std::time::Instant;

use super::super::worker::Now;

/// RTP clock rate of Opus.
const CLOCK_RATE: u64 = 48_000;
/// One sender report without report blocks.
pub const SENDER_REPORT_LEN: usize = 28;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// What one slot has sent, for its sender reports.
#[derive(Clone, Copy, Debug)]
pub struct SlotReport {
    pub ssrc: u32,
    packets: u32,
    octets: u32,
    last_timestamp: u32,
    last_at: Option<Instant>,
}

impl SlotReport {
    pub fn new(ssrc: u32) -> Self {
        SlotReport {
            ssrc,
            packets: 0,
            octets: 0,
            last_timestamp: 0,
            last_at: None,
        }
    }

    /// A packet of `payload_len` bytes with `timestamp` went out on this slot at `at`.
    pub fn sent(&mut self, timestamp: u32, payload_len: usize, at: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.last_timestamp = timestamp;
        self.last_at = Some(at);
    }

    /// Writes this slot's sender report at `now` into `out`; `false` while it has sent nothing
    /// (RFC 3550 §6.4: only a sender sends one).
    pub fn write(&self, now: Now, out: &mut [u8; SENDER_REPORT_LEN]) -> bool {
        let Some(last_at) = self.last_at else {
            return false;
        };
        // The RTP time that corresponds to `now`, running on from the last packet sent.
        let elapsed = now.at.saturating_duration_since(last_at);
        let ticks = (elapsed.as_micros() as u64 * CLOCK_RATE / 1_000_000) as u32;
        let rtp_time = self.last_timestamp.wrapping_add(ticks);
        let seconds = now.wall.as_secs() + NTP_UNIX_OFFSET;
        let fraction = (u64::from(now.wall.subsec_nanos()) << 32) / 1_000_000_000;
        let ntp = (seconds << 32) | fraction;
        // V=2, no padding, no report blocks; PT 200; length 6 (32-bit words minus one).
        out[..4].copy_from_slice(&[0x80, 200, 0, 6]);
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..16].copy_from_slice(&ntp.to_be_bytes());
        out[16..20].copy_from_slice(&rtp_time.to_be_bytes());
        out[20..24].copy_from_slice(&self.packets.to_be_bytes());
        out[24..28].copy_from_slice(&self.octets.to_be_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::shared::marshal::Unmarshal;
    use std::time::Duration;

    #[test]
    fn a_sender_report_reads_back_with_the_stream_s_clock_running_on() {
        let start = Now::read();
        let mut slot = SlotReport::new(0xfeed_0001);
        let mut out = [0u8; SENDER_REPORT_LEN];
        assert!(!slot.write(start, &mut out), "nothing sent yet");
        slot.sent(1_000, 80, start.at);
        slot.sent(1_960, 70, start.at + Duration::from_millis(20));
        let later = start.after(Duration::from_millis(520));
        assert!(slot.write(later, &mut out));
        let sr = SenderReport::unmarshal(&mut &out[..]).expect("a sender report");
        assert_eq!(sr.ssrc, 0xfeed_0001);
        assert_eq!(sr.packet_count, 2);
        assert_eq!(sr.octet_count, 150);
        // 500 ms after the last packet: 24 000 ticks at 48 kHz.
        assert_eq!(sr.rtp_time, 1_960 + 24_000);
        assert_eq!(sr.ntp_time >> 32, later.wall.as_secs() + NTP_UNIX_OFFSET);
    }
}
