//! RTCP the worker reads itself: listeners' receiver reports about our slots, turned into the
//! loss, jitter and round-trip metrics. `rtc` builds and answers the rest; the wall-clock time
//! comes in with the input, never from a clock read here.

use std::time::Duration;

use rtc::rtcp::receiver_report::ReceiverReport;

use crate::metrics::MediaMetrics;

/// Loss, jitter and round-trip time from a listener's report about one of our slots, which
/// arrived at `wall` (since the Unix epoch).
pub(super) fn observe_receiver_report(metrics: &MediaMetrics, rr: &ReceiverReport, wall: Duration) {
    let arrival = ntp_middle(wall);
    for report in &rr.reports {
        metrics
            .rr_fraction_lost
            .observe(f64::from(report.fraction_lost) / 256.0);
        metrics
            .rr_jitter_seconds
            .observe(f64::from(report.jitter) / 48_000.0);
        if let Some(rtt) = round_trip(arrival, report.last_sender_report, report.delay) {
            metrics.rtt_seconds.observe(rtt);
        }
    }
}

/// RFC 3550 §6.4.1: the round trip in seconds from a report's LSR and DLSR (in 1/65536 s),
/// when it has a sender report to refer to and the result is plausible (under 10 s).
fn round_trip(arrival: u32, last_sender_report: u32, delay: u32) -> Option<f64> {
    if last_sender_report == 0 {
        return None;
    }
    let rtt = arrival.wrapping_sub(last_sender_report).wrapping_sub(delay);
    (rtt < 65_536 * 10).then(|| f64::from(rtt) / 65_536.0)
}

/// The middle 32 bits of the NTP time at `wall` (since the Unix epoch), as in receiver
/// reports' LSR field.
fn ntp_middle(wall: Duration) -> u32 {
    let seconds = wall.as_secs() + 2_208_988_800;
    let fraction = (u64::from(wall.subsec_nanos()) << 32) / 1_000_000_000;
    (((seconds & 0xffff) << 16) | (fraction >> 16)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_read_in_ntp_short_format() {
        // Half a second past a whole second: the fraction's upper half is 0x8000.
        let wall = Duration::from_millis(1_500);
        let arrival = ntp_middle(wall);
        assert_eq!(arrival & 0xffff, 0x8000);
        // Sent 100 ms before arrival, held 40 ms by the listener: 60 ms of network.
        let lsr = arrival.wrapping_sub(6_554);
        let rtt = round_trip(arrival, lsr, 2_621).unwrap();
        assert!((rtt - 0.06).abs() < 0.001, "{rtt}");
        assert_eq!(round_trip(arrival, 0, 0), None, "no sender report yet");
        assert_eq!(
            round_trip(arrival, arrival.wrapping_add(1), 0),
            None,
            "implausible"
        );
    }
}
