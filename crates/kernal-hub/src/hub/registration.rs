//! How fast one address may register new trainer names: a bucket per
//! address holding `hub.registrations_per_ip_per_hour` tokens that refills
//! continuously. Anyone who can reach the hub may register (trust on first
//! use); without a bound one address registered 5,000 names in 5 minutes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Addresses tracked at most; past it, buckets that have refilled (so
/// carry no information) are dropped first, then the oldest.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Default)]
pub struct RegistrationLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// The address part of a peer address (`1.2.3.4:5678` or `[::1]:5678`).
pub fn peer_ip(remote: Option<&str>) -> Option<IpAddr> {
    let r = remote?;
    r.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| r.parse::<IpAddr>())
        .ok()
}

impl RegistrationLimiter {
    /// Takes one registration for `ip` if its bucket has one; `Err` with
    /// the seconds until it has.
    pub fn take(&mut self, ip: IpAddr, per_hour: u32, now: Instant) -> Result<(), f64> {
        let cap = f64::from(per_hour.max(1));
        let per_sec = cap / 3600.0;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED {
            self.buckets
                .retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * per_sec < cap);
            if self.buckets.len() >= MAX_TRACKED {
                if let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| *k)
                {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_the_hourly_rate_then_one_per_interval() {
        let mut l = RegistrationLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(ip, 3, t0).is_ok());
        }
        let wait = l.take(ip, 3, t0).unwrap_err();
        assert!((wait - 1200.0).abs() < 1.0, "{wait}");
        assert!(l.take(other, 3, t0).is_ok(), "per address");
        assert!(l.take(ip, 3, t0 + Duration::from_secs(1201)).is_ok());
        assert!(l.take(ip, 3, t0 + Duration::from_secs(1202)).is_err());
    }

    #[test]
    fn peer_addresses_parse_with_or_without_port() {
        assert_eq!(peer_ip(Some("127.0.0.1:5000")), "127.0.0.1".parse().ok());
        assert_eq!(peer_ip(Some("[::1]:80")), "::1".parse().ok());
        assert_eq!(peer_ip(Some("::1")), "::1".parse().ok());
        assert_eq!(peer_ip(Some("nonsense")), None);
        assert_eq!(peer_ip(None), None);
    }
}
