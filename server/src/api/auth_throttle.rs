//! Failed authentication per client address: each failure draws on a small allowance, and an
//! address that spent it is refused before its credential is even checked (so a guess made
//! while throttled learns nothing, even a right one). Counting only; the edge renders the 429.
//! Time is the server's `Clock`, so tests move it by hand.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock as _;
use governor::{Quota, RateLimiter};

use crate::clock::{Clock, KeyedRateLimiter, whole_seconds};

pub struct AuthThrottle {
    failures: KeyedRateLimiter<IpAddr>,
    /// Addresses refused until the given time (`Clock::elapsed`).
    blocked: DashMap<IpAddr, Duration>,
    clock: Clock,
}

impl AuthThrottle {
    pub fn new(per_minute: u32, burst: u32, clock: Clock) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        AuthThrottle {
            failures: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            blocked: DashMap::new(),
            clock,
        }
    }

    /// `Err(seconds to wait)` while this address is throttled.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let now = self.clock.elapsed();
        match self.blocked.get(&ip).map(|until| *until) {
            Some(until) if until > now => Err(whole_seconds(until - now)),
            Some(_) => {
                self.blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failed attempt; `Some(seconds to wait)` if it used up the allowance.
    pub fn failed(&self, ip: IpAddr) -> Option<u64> {
        let not_until = self.failures.check_key(&ip).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        self.blocked.insert(ip, self.clock.elapsed() + wait);
        Some(whole_seconds(wait))
    }

    /// Forgets addresses that have not failed lately.
    pub fn retain_recent(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = self.clock.elapsed();
        self.blocked.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_failed_too_often_is_refused_whatever_it_presents() {
        let throttle = AuthThrottle::new(1, 3, Clock::manual());
        let eve: IpAddr = "203.0.113.5".parse().unwrap();
        let ada: IpAddr = "203.0.113.6".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.check(eve), Ok(()));
            assert_eq!(throttle.failed(eve), None);
        }
        assert!(throttle.failed(eve).is_some_and(|s| s >= 1));
        assert!(throttle.check(eve).is_err());
        assert_eq!(throttle.check(ada), Ok(()));
    }

    #[test]
    fn the_allowance_comes_back_with_time() {
        let clock = Clock::manual();
        // One failure a minute, two at once.
        let throttle = AuthThrottle::new(1, 2, clock.clone());
        let eve: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(throttle.failed(eve), None);
        assert_eq!(throttle.failed(eve), None);
        assert_eq!(throttle.failed(eve), Some(60));
        assert_eq!(throttle.check(eve), Err(60));
        clock.advance(Duration::from_secs(59));
        assert_eq!(throttle.check(eve), Err(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(throttle.check(eve), Ok(()));
        // One failure's worth came back, not the whole burst.
        assert_eq!(throttle.failed(eve), None);
        assert!(throttle.failed(eve).is_some());
        // Forgotten once blocks run out.
        clock.advance(Duration::from_secs(120));
        throttle.retain_recent();
        assert!(throttle.blocked.is_empty());
        assert_eq!(throttle.check(eve), Ok(()));
    }
}
