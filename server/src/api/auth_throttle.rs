//! Failed authentication per client address: each failure draws on a small allowance, and an
//! address that spent it is refused before its credential is even checked (so a guess made
//! while throttled learns nothing, even a right one). Counting only; the edge renders the 429.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct AuthThrottle {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses refused until the given instant.
    blocked: DashMap<IpAddr, Instant>,
}

impl AuthThrottle {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        AuthThrottle {
            failures: RateLimiter::keyed(quota),
            blocked: DashMap::new(),
        }
    }

    /// `Err(seconds to wait)` while this address is throttled.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
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
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        self.blocked.insert(ip, Instant::now() + wait);
        Some(whole_seconds(wait))
    }

    /// Forgets addresses that have not failed lately.
    pub fn retain_recent(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }
}

fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_failed_too_often_is_refused_whatever_it_presents() {
        let throttle = AuthThrottle::new(1, 3);
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
}
