//! What every handler shares: the hub's addresses, pool, settings and
//! limits, and the count of connections waiting for their hello.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use actix::Addr;

use crate::config::HubConfig;
use crate::db;
use crate::db::DbPool;
use crate::error::ApiError;
use crate::hub::hub_actor::Hub;
use crate::hub::metrics::{HotMetrics, MetricsAggregator};
use crate::hub::session::HandshakeSlot;
use crate::hub::ws::Budget;

/// Shared by every worker (cloned `Addr`s, never looked up globally).
#[derive(Clone)]
pub struct AppState {
    pub hub: Addr<Hub>,
    pub metrics: Addr<MetricsAggregator>,
    pub persister: Addr<crate::hub::persister::Persister>,
    pub pool: DbPool,
    pub blobs: db::BlobStore,
    pub admin_token: Arc<str>,
    /// The key of hub-issued trainer tokens (`POST /v1/trainer-tokens`).
    pub tokens: crate::hub::secrets::TokenKey,
    /// The hub's current settings: a config reload changes the live ones
    /// (limits apply to new connections).
    pub config: Arc<RwLock<HubConfig>>,
    /// Connections waiting for their hello, in all and per address.
    pub handshakes: Arc<Handshakes>,
    /// Bytes of large incoming messages held at once, over all trainers.
    pub budget: Budget,
    /// Per-update counters the sessions write directly.
    pub hot: Arc<HotMetrics>,
    /// Updates unanswered over all trainers, and who waits for a place.
    pub pacer: Arc<crate::hub::pacer::Pacer>,
    pub started_at: String,
    pub reload:
        Arc<dyn Fn(bool) -> Result<Vec<String>, crate::hub::reload::ReloadError> + Send + Sync>,
}

impl AppState {
    /// A copy of the current hub settings.
    pub fn hub_config(&self) -> Result<HubConfig, ApiError> {
        self.config
            .read()
            .map(|c| c.clone())
            .map_err(|_| ApiError::internal("config lock poisoned"))
    }
}

/// Connections that have not completed their hello: counted in all and per
/// remote address, so a flood of idle sockets from one place cannot take
/// every slot.
#[derive(Default)]
pub struct Handshakes {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Handshakes {
    /// Takes a slot, or says which limit is full.
    pub fn enter(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<HandshakeSlot, HandshakesFull> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(HandshakesFull::Hub { limit: max_total });
        }
        if let Some(ip) = ip {
            let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                drop(m);
                self.total.fetch_sub(1, Ordering::SeqCst);
                return Err(HandshakesFull::Address {
                    ip,
                    limit: max_per_ip,
                });
            }
            *n += 1;
        }
        let me = self.clone();
        Ok(HandshakeSlot::new(move || {
            me.total.fetch_sub(1, Ordering::SeqCst);
            if let Some(ip) = ip {
                let mut m = me.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = m.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&ip);
                    }
                }
            }
        }))
    }

    pub fn waiting(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// Why a connection found no place to wait for its hello (the message is
/// the `too_many_handshakes` error's).
#[derive(Debug, thiserror::Error)]
pub enum HandshakesFull {
    #[error("too many connections are waiting for their hello (limit {limit}); try again shortly")]
    Hub { limit: usize },
    #[error(
        "too many connections from {ip} are waiting for their hello (limit {limit}); try again shortly"
    )]
    Address { ip: IpAddr, limit: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_are_bounded_in_all_and_per_address() {
        let h = Arc::new(Handshakes::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = h.enter(Some(a), 3, 2).unwrap();
        let _a2 = h.enter(Some(a), 3, 2).unwrap();
        assert!(h
            .enter(Some(a), 3, 2)
            .unwrap_err()
            .to_string()
            .contains("10.0.0.1"));
        let _b1 = h.enter(Some(b), 3, 2).unwrap();
        assert!(h
            .enter(Some(b), 3, 2)
            .unwrap_err()
            .to_string()
            .contains("too many connections are"));
        assert_eq!(h.waiting(), 3);
        drop(a1);
        assert_eq!(h.waiting(), 2);
        let _a3 = h.enter(Some(a), 3, 2).unwrap();
    }
}
