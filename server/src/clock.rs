//! The server's notion of "now", passed around as a value so expiry rules and rate limits can
//! be tested with a hand-driven clock instead of sleeps. Owns no timers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use governor::nanos::Nanos;

use time::OffsetDateTime;

/// Wall-clock time source. `Clock::system()` in production, `Clock::manual(..)` in tests.
#[derive(Clone, Debug)]
pub struct Clock(Arc<Source>);

#[derive(Debug)]
enum Source {
    System,
    /// Unix time in milliseconds, moved only by `advance`.
    Manual(AtomicI64),
}

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(Source::System))
    }

    /// A clock that starts at the current wall time and only moves when told to.
    pub fn manual() -> Self {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Clock(Arc::new(Source::Manual(AtomicI64::new(now as i64))))
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(ms) = &*self.0 {
            ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &*self.0 {
            Source::System => (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
            Source::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Time for measuring intervals (rate limits, throttles): monotonic on the system clock,
    /// so a step of the wall clock neither refills nor drains an allowance; a manual clock's
    /// own time in tests.
    pub fn elapsed(&self) -> Duration {
        match &*self.0 {
            Source::System => {
                static START: OnceLock<Instant> = OnceLock::new();
                START.get_or_init(Instant::now).elapsed()
            }
            Source::Manual(ms) => Duration::from_millis(ms.load(Ordering::SeqCst).max(0) as u64),
        }
    }
}

/// Rate limiters (governor) run on this clock too: a test moves them with `advance`.
impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.elapsed())
    }
}

/// A rate limit per key (a client address), on the server's clock.
pub type KeyedRateLimiter<K> = governor::RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    Clock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

/// A rate limit of its own (one socket's messages), on the server's clock.
pub type DirectRateLimiter = governor::RateLimiter<
    governor::state::direct::NotKeyed,
    governor::state::InMemoryState,
    Clock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

/// How long until `not_until` allows again, rounded up to whole seconds (at least one), as
/// `Retry-After` wants it.
pub fn retry_after_secs(not_until: &governor::NotUntil<Nanos>, clock: &Clock) -> u64 {
    use governor::clock::Clock as _;
    whole_seconds(not_until.wait_time_from(clock.now()))
}

pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// Renders a Unix-milliseconds timestamp as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Waits between retries: doubling from `first` up to `max`, each wait drawn at random from
/// its upper half so that many retriers that failed together do not come back together.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next try, and the one after it doubled.
    pub fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a success: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A duration drawn uniformly from `[d/2, d]`.
pub fn jittered(d: Duration) -> Duration {
    let fraction = f64::from(getrandom::u32().unwrap_or(u32::MAX)) / f64::from(u32::MAX);
    d.mul_f64(0.5 + fraction / 2.0)
}

/// The CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`): what a
/// benchmark reads so that other work on a busy machine does not count as its own.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        for bound in [100, 200, 400, 700, 700] {
            let wait = backoff.next_wait();
            let bound = Duration::from_millis(bound);
            assert!(wait >= bound / 2 && wait <= bound, "{wait:?} for {bound:?}");
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual();
        let t0 = clock.now_ms();
        assert_eq!(clock.now_ms(), t0);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), t0 + 2000);
    }

    #[test]
    fn a_rate_limit_on_a_manual_clock_refills_only_when_advanced() {
        use std::num::NonZeroU32;

        use governor::{Quota, RateLimiter};

        let clock = Clock::manual();
        let quota = Quota::per_second(NonZeroU32::MIN).allow_burst(NonZeroU32::new(2).unwrap());
        let limiter: DirectRateLimiter = RateLimiter::direct_with_clock(quota, clock.clone());
        assert!(limiter.check().is_ok() && limiter.check().is_ok());
        let refused = limiter.check().unwrap_err();
        assert_eq!(retry_after_secs(&refused, &clock), 1);
        assert!(limiter.check().is_err(), "time stood still");
        clock.advance(Duration::from_millis(999));
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
    }

    #[test]
    fn the_system_clock_measures_intervals_monotonically() {
        let clock = Clock::system();
        let a = clock.elapsed();
        let b = clock.elapsed();
        assert!(b >= a);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }
}
