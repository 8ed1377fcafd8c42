//! The lean transport's own RTCP: a sender report per slot that has carried audio (RFC 3550
//! §6.4.1), written from counts the forwarder keeps as it sends, so a browser's `getStats()`
//! and round-trip times see the rewritten stream it receives; and a receiver report about a
//! speaker's microphone (§6.4.2: loss, jitter, and the times of its last sender report, from
//! which the speaker's browser measures its round trip). Receiver reports about our slots come
//! in through SRTCP and are read by the worker (`worker/rtcp.rs`). The time is passed in.

use std::time::{Duration, Instant};

use super::super::worker::Now;

/// RTP clock rate of Opus.
pub const CLOCK_RATE: u64 = 48_000;
/// One sender report without report blocks.
pub const SENDER_REPORT_LEN: usize = 28;
/// A slot is a sender (and sends sender reports) while it has carried audio this recently:
/// two report intervals (RFC 3550 §6.3.8). A silent room's slots stop reporting.
const SENDER_FOR: Duration = Duration::from_secs(2);
/// One receiver report with one report block.
pub const RECEIVER_REPORT_LEN: usize = 32;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// RFC 3550 A.1: a jump ahead of more than this many sequence numbers restarts the count.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a packet this far behind the highest is late (reordered or duplicated).
const MAX_MISORDER: u16 = 100;

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
    /// lately (RFC 3550 §6.4: only a sender sends one).
    pub fn write(&self, now: Now, out: &mut [u8; SENDER_REPORT_LEN]) -> bool {
        let Some(last_at) = self.last_at else {
            return false;
        };
        if now.at.saturating_duration_since(last_at) > SENDER_FOR {
            return false;
        }
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

/// What arrived of a speaker's microphone (one SSRC): the counts a receiver report gives
/// (RFC 3550 §6.4.1, the algorithms of its appendices A.1, A.3 and A.8). Arithmetic only.
#[derive(Clone, Copy, Debug)]
pub struct Reception {
    pub ssrc: u32,
    /// Where sequence numbers started, extended (cycles in the high bits).
    base: u32,
    max_seq: u16,
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// The last packet's arrival minus its RTP time, in RTP units (A.8).
    transit: Option<i64>,
    /// Interarrival jitter in RTP units, times 16 (A.8's integer form).
    jitter_q4: u32,
    /// The middle 32 bits of the speaker's last sender report's NTP time, and when it came.
    last_sr: Option<(u32, Instant)>,
}

impl Reception {
    pub fn new(ssrc: u32) -> Self {
        Reception {
            ssrc,
            base: 0,
            max_seq: 0,
            cycles: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter_q4: 0,
            last_sr: None,
        }
    }

    /// A packet `seq` with RTP `timestamp` arrived; `arrival` is its time on a clock that
    /// counts RTP units from any fixed start.
    pub fn received(&mut self, seq: u16, timestamp: u32, arrival: u64) {
        if self.received == 0 {
            self.restart(seq);
        } else {
            let ahead = seq.wrapping_sub(self.max_seq);
            if ahead != 0 && ahead < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            } else if ahead != 0 && ahead <= u16::MAX - MAX_MISORDER {
                // A jump no stream makes: the sender restarted its numbering.
                self.restart(seq);
            }
        }
        self.received = self.received.wrapping_add(1);
        let transit = arrival as i64 - i64::from(timestamp);
        if let Some(last) = self.transit {
            // The difference of two 32-bit RTP times: wrapped to its nearest value.
            let d = (transit - last) as i32;
            let d = d.unsigned_abs();
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d.min(1 << 24))
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    fn restart(&mut self, seq: u16) {
        self.base = u32::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// The speaker's sender report with NTP time `ntp` arrived at `at`.
    pub fn sender_report(&mut self, ntp: u64, at: Instant) {
        self.last_sr = Some(((ntp >> 16) as u32, at));
    }

    /// Whether anything arrived to report on.
    pub fn has_received(&self) -> bool {
        self.received > 0
    }

    /// Writes a receiver report from `reporter` (one of our SSRCs) about this stream at `now`,
    /// and starts the next interval. `false` before anything arrived.
    pub fn write(
        &mut self,
        reporter: u32,
        now: Instant,
        out: &mut [u8; RECEIVER_REPORT_LEN],
    ) -> bool {
        if self.received == 0 {
            return false;
        }
        let extended_max = self.cycles.wrapping_add(u32::from(self.max_seq));
        let expected = extended_max.wrapping_sub(self.base).wrapping_add(1);
        // Cumulative loss is a signed 24-bit number (duplicates can make it negative).
        let lost = (i64::from(expected) - i64::from(self.received)).clamp(-0x80_0000, 0x7f_ffff);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let delay = now.saturating_duration_since(at);
                let units =
                    (delay.as_micros() as u64 * 65_536 / 1_000_000).min(u64::from(u32::MAX));
                (lsr, units as u32)
            }
            None => (0, 0),
        };
        // V=2, one report block; PT 201; length 7 (32-bit words minus one).
        out[..4].copy_from_slice(&[0x81, 201, 0, 7]);
        out[4..8].copy_from_slice(&reporter.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[12] = fraction;
        out[13..16].copy_from_slice(&(lost as i32).to_be_bytes()[1..]);
        out[16..20].copy_from_slice(&extended_max.to_be_bytes());
        out[20..24].copy_from_slice(&(self.jitter_q4 >> 4).to_be_bytes());
        out[24..28].copy_from_slice(&lsr.to_be_bytes());
        out[28..32].copy_from_slice(&dlsr.to_be_bytes());
        true
    }
}

/// The SSRC and NTP time of every sender report in a decrypted compound RTCP packet.
pub fn sender_reports(compound: &[u8]) -> impl Iterator<Item = (u32, u64)> + '_ {
    let mut rest = compound;
    std::iter::from_fn(move || {
        loop {
            if rest.len() < 4 || rest[0] >> 6 != 2 {
                return None;
            }
            let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
            let packet = rest.get(..len)?;
            rest = &rest[len..];
            if packet[1] == 200 && packet.len() >= 16 {
                let ssrc = u32::from_be_bytes(packet[4..8].try_into().ok()?);
                let ntp = u64::from_be_bytes(packet[8..16].try_into().ok()?);
                return Some((ssrc, ntp));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::reception_report::ReceptionReport;
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
        // Silent for longer than two report intervals: no longer a sender, no report.
        let quiet = start.after(Duration::from_millis(20 + 2_100));
        assert!(!slot.write(quiet, &mut out));
        slot.sent(2_920, 70, quiet.at);
        assert!(slot.write(quiet, &mut out), "a sender again");
    }

    fn read_back(reception: &mut Reception, now: Instant) -> ReceptionReport {
        let mut out = [0u8; RECEIVER_REPORT_LEN];
        assert!(reception.write(0xabcd, now, &mut out));
        let rr = ReceiverReport::unmarshal(&mut &out[..]).expect("a receiver report");
        assert_eq!(rr.ssrc, 0xabcd);
        assert_eq!(rr.reports.len(), 1);
        rr.reports[0].clone()
    }

    #[test]
    fn a_receiver_report_counts_loss_per_interval_and_in_all() {
        let now = Instant::now();
        let mut mic = Reception::new(0x5eed);
        let mut out = [0u8; RECEIVER_REPORT_LEN];
        assert!(!mic.write(1, now, &mut out), "nothing arrived yet");
        // Ten packets, 20 ms apart, arriving exactly on time, two of them lost.
        for seq in (100u16..110).filter(|s| *s != 103 && *s != 107) {
            let ts = u32::from(seq) * 960;
            mic.received(seq, ts, u64::from(ts) + 5_000);
        }
        let block = read_back(&mut mic, now);
        assert_eq!(block.ssrc, 0x5eed);
        assert_eq!(block.total_lost, 2);
        assert_eq!(block.fraction_lost, (2 * 256 / 10) as u8);
        assert_eq!(block.last_sequence_number, 109);
        assert_eq!(block.jitter, 0, "every packet on time");
        assert_eq!((block.last_sender_report, block.delay), (0, 0));
        // The next interval loses nothing: its fraction is 0, the total stays.
        for seq in 110u16..120 {
            let ts = u32::from(seq) * 960;
            mic.received(seq, ts, u64::from(ts) + 5_000);
        }
        let block = read_back(&mut mic, now);
        assert_eq!((block.fraction_lost, block.total_lost), (0, 2));
        // A late duplicate changes neither the highest number nor the loss's sign rules.
        mic.received(115, 115 * 960, 115 * 960 + 9_000);
        let block = read_back(&mut mic, now);
        assert_eq!(block.last_sequence_number, 119);
        assert_eq!(
            block.total_lost, 1,
            "a duplicate counts as received (RFC 3550 A.3)"
        );
    }

    #[test]
    fn sequence_numbers_wrap_into_the_cycle_count() {
        let mut mic = Reception::new(7);
        for i in 0..12u32 {
            let seq = 65_530u16.wrapping_add(i as u16);
            mic.received(seq, i * 960, u64::from(i) * 960);
        }
        let block = read_back(&mut mic, Instant::now());
        assert_eq!(block.last_sequence_number, (1 << 16) + 5);
        assert_eq!(block.total_lost, 0);
    }

    #[test]
    fn jitter_follows_uneven_arrivals_and_the_last_sender_report_is_echoed() {
        let start = Instant::now();
        let mut mic = Reception::new(9);
        // Every other packet 10 ms (480 units) late: |D| is 480 each time.
        for i in 0..400u32 {
            let ts = i * 960;
            let late = if i % 2 == 1 { 480 } else { 0 };
            mic.received(i as u16, ts, u64::from(ts) + late);
        }
        let ntp: u64 = 0x1234_5678_9abc_def0;
        mic.sender_report(ntp, start);
        let block = read_back(&mut mic, start + Duration::from_millis(500));
        assert!((470..=480).contains(&block.jitter), "{}", block.jitter);
        assert_eq!(block.last_sender_report, 0x5678_9abc);
        assert_eq!(block.delay, 32_768, "half a second in 1/65536 s");
    }

    #[test]
    fn sender_reports_are_found_in_a_compound_packet() {
        let now = Now::read();
        let mut slot = SlotReport::new(0x11);
        slot.sent(0, 10, now.at);
        let mut sr = [0u8; SENDER_REPORT_LEN];
        assert!(slot.write(now, &mut sr));
        let mut mic = Reception::new(3);
        mic.received(1, 0, 0);
        let mut rr = [0u8; RECEIVER_REPORT_LEN];
        assert!(mic.write(0x22, now.at, &mut rr));
        let compound = [&rr[..], &sr[..]].concat();
        let found: Vec<_> = sender_reports(&compound).collect();
        assert_eq!(
            found,
            vec![(0x11, u64::from_be_bytes(sr[8..16].try_into().unwrap()))]
        );
        assert_eq!(
            sender_reports(&[0x80, 200, 0, 9, 1, 2]).count(),
            0,
            "truncated"
        );
        assert_eq!(sender_reports(&[]).count(), 0);
    }
}
