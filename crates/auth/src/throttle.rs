//! Login throttling per (user name, client address).
//!
//! Each key keeps the times of its recent failed password checks. Once [`MAX_FAILURES`] of them
//! fall within [`WINDOW`], further attempts for that name from that address are refused (429)
//! until the oldest failure leaves the window — even with the right password, so a guesser
//! learns nothing. Other names and other addresses are unaffected, so an attacker cannot lock a
//! user out for everyone. A successful check clears the key.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per key within [`WINDOW`] before attempts are refused.
pub const MAX_FAILURES: usize = 10;
/// The sliding window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys kept at most; beyond this, stale keys are pruned and then the fullest is not tracked.
const MAX_KEYS: usize = 100_000;

type Key = (String, Option<IpAddr>);

/// The failure log of one database.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

impl Throttle {
    /// `Err(seconds)` when attempts for `name` from `addr` are refused for that long.
    pub fn check(&self, name: &str, addr: Option<IpAddr>) -> Result<(), u64> {
        self.check_at(name, addr, Instant::now())
    }

    pub fn check_at(&self, name: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let Ok(mut map) = self.failures.lock() else {
            return Ok(());
        };
        let key = (name.to_string(), addr);
        let Some(times) = map.get_mut(&key) else {
            return Ok(());
        };
        expire(times, now);
        if times.is_empty() {
            map.remove(&key);
            return Ok(());
        }
        if times.len() >= MAX_FAILURES {
            let oldest = times[0];
            let wait = (oldest + WINDOW).saturating_duration_since(now);
            // round up: a client that waits Retry-After seconds is let in
            return Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
        Ok(())
    }

    /// Records a failed password check.
    pub fn failure(&self, name: &str, addr: Option<IpAddr>) {
        self.failure_at(name, addr, Instant::now())
    }

    pub fn failure_at(&self, name: &str, addr: Option<IpAddr>, now: Instant) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_KEYS {
            map.retain(|_, t| {
                expire(t, now);
                !t.is_empty()
            });
            if map.len() >= MAX_KEYS {
                return;
            }
        }
        let times = map.entry((name.to_string(), addr)).or_default();
        expire(times, now);
        times.push_back(now);
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }

    /// A successful check: forget this key's failures.
    pub fn success(&self, name: &str, addr: Option<IpAddr>) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&(name.to_string(), addr));
        }
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_in_after_ten_failures_and_lifts() {
        let t = Throttle::default();
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert!(t.check_at("u", a, t0).is_ok(), "attempt {i}");
            t.failure_at("u", a, t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(10);
        let wait = t.check_at("u", a, now).unwrap_err();
        assert_eq!(wait, 50);
        // other name, other address: unaffected
        assert!(t.check_at("v", a, now).is_ok());
        assert!(t.check_at("u", b, now).is_ok());
        // the oldest failure leaves the window: one more attempt allowed
        assert!(t
            .check_at("u", a, t0 + WINDOW - Duration::from_millis(1))
            .is_err());
        assert!(t.check_at("u", a, t0 + WINDOW).is_ok());
        // a success clears the key
        t.success("u", a);
        assert!(t.check_at("u", a, now).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            t.failure_at("u", None, t0);
        }
        assert_eq!(
            t.check_at("u", None, t0 + Duration::from_millis(59_500)),
            Err(1)
        );
    }
}
