//! Admission of new streams: the caps on open streams per instance, per client address and per
//! session, and the client address itself.
//!
//! Every stream takes a [`Permit`] before its subscriber is registered and gives it back when
//! it ends (the permit lives inside the response body, so a client that goes away, a slow
//! consumer and a stream closed at shutdown all return it). The counts sit under one std
//! mutex, held only for a map update: a check and the increment it guards cannot race, and
//! nothing awaits while it is held.
//!
//! The client address is the TCP peer, or — when the peer is one of the configured trusted
//! proxies — the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
//! IPv6 addresses count by their /64 prefix: one host is usually given a whole /64, and counting
//! single addresses would let it open streams without end.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use crate::metrics::{Metrics, StreamLimit};
use crate::update::SessionId;

/// `Retry-After` (seconds) sent with a refusal because the instance is full: another
/// instance, or this one a little later, may have room.
pub const INSTANCE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// `Retry-After` (seconds) sent with a refusal because one client (address or session) holds
/// too many streams: it must close some first.
pub const CLIENT_LIMIT_RETRY_AFTER_SECS: u64 = 10;

/// The caps on open streams. Every one has a config name and a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLimits {
    /// `max-streams`: open streams on this instance.
    pub per_instance: usize,
    /// `max-streams-per-address`: open streams from one client address.
    pub per_address: usize,
    /// `max-streams-per-session`: open session-API streams of one session on this instance.
    pub per_session: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            per_instance: 100_000,
            per_address: 1_000,
            per_session: 32,
        }
    }
}

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The instance holds `max-streams` streams already (503).
    #[error("this instance holds its maximum of {0} open streams (max-streams); retry later or connect to another instance")]
    Instance(usize),
    /// The client address holds `max-streams-per-address` streams already (429).
    #[error("this client address holds its maximum of {0} open streams (max-streams-per-address); close one first")]
    Address(usize),
    /// The session holds `max-streams-per-session` streams on this instance already (429).
    #[error("this session holds its maximum of {0} open streams on this instance (max-streams-per-session); close one first")]
    Session(usize),
}

impl Refusal {
    /// Which limit refused, as the metric labels it.
    pub fn limit(self) -> StreamLimit {
        match self {
            Refusal::Instance(_) => StreamLimit::Instance,
            Refusal::Address(_) => StreamLimit::Address,
            Refusal::Session(_) => StreamLimit::Session,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    by_session: HashMap<SessionId, usize>,
}

/// The stream counts of one instance, and the caps they are checked against.
#[derive(Debug)]
pub struct Admission {
    limits: StreamLimits,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

/// One admitted stream's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    address: Option<IpAddr>,
    session: Option<SessionId>,
}

impl Admission {
    /// Counts streams against `limits`; refusals are counted in `metrics`.
    pub fn new(limits: StreamLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
            metrics,
        })
    }

    /// Admits one more stream from `address` (unknown in tests without sockets) for `session`
    /// (session-API streams only).
    ///
    /// # Errors
    /// [`Refusal`] naming the first cap that is reached: instance, then address, then session.
    pub fn admit(
        self: &Arc<Self>,
        address: Option<IpAddr>,
        session: Option<&SessionId>,
    ) -> Result<Permit, Refusal> {
        let address = address.map(address_key);
        let refusal = {
            let mut counts = self.lock();
            let limits = &self.limits;
            if counts.total >= limits.per_instance {
                Some(Refusal::Instance(limits.per_instance))
            } else if address.is_some_and(|a| {
                counts.by_address.get(&a).copied().unwrap_or(0) >= limits.per_address
            }) {
                Some(Refusal::Address(limits.per_address))
            } else if session.is_some_and(|s| {
                counts.by_session.get(s).copied().unwrap_or(0) >= limits.per_session
            }) {
                Some(Refusal::Session(limits.per_session))
            } else {
                counts.total += 1;
                if let Some(a) = address {
                    *counts.by_address.entry(a).or_default() += 1;
                }
                if let Some(s) = session {
                    *counts.by_session.entry(s.clone()).or_default() += 1;
                }
                None
            }
        };
        if let Some(refusal) = refusal {
            self.metrics.refused_stream(refusal.limit());
            tracing::debug!(%refusal, "stream refused");
            return Err(refusal);
        }
        Ok(Permit {
            admission: self.clone(),
            address,
            session: session.cloned(),
        })
    }

    /// Streams admitted and not yet ended.
    pub fn open_streams(&self) -> usize {
        self.lock().total
    }

    /// Distinct client addresses and sessions with open streams (both 0 once everyone left).
    pub fn tracked_clients(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.by_address.len(), counts.by_session.len())
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Every update of the counts completes before it could panic (integer and map
        // operations only), so a poisoned lock still guards consistent counts.
        crate::locks::lock(&self.counts)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        counts.total = counts.total.saturating_sub(1);
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        if let Some(a) = &self.address {
            release(&mut counts.by_address, a);
        }
        if let Some(s) = &self.session {
            release(&mut counts.by_session, s);
        }
    }
}

/// The address a client is counted under: IPv4 as it is (also when written as an IPv4-mapped
/// IPv6 address), IPv6 by its /64 prefix.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The client's address: the TCP `peer`, unless the peer is a trusted proxy, in which case
/// the rightmost `X-Forwarded-For` entry that is not a trusted proxy (entries further left
/// were written by the client itself and prove nothing). `forwarded` holds the request's
/// `X-Forwarded-For` values, in order. `None` without a peer (router tests).
pub fn client_address<'a>(
    peer: Option<SocketAddr>,
    forwarded: impl IntoIterator<Item = &'a str>,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = forwarded
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // Right to left: each trusted proxy appended the address it saw. The first entry that is
    // not a trusted proxy is the client; an entry that is not an address ends the walk (what
    // is left of it cannot be trusted), leaving the last proxy seen as the client.
    let mut client = peer;
    for entry in entries.into_iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if trusted(&ip) => client = ip,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_instance: usize, per_address: usize, per_session: usize) -> Arc<Admission> {
        Admission::new(
            StreamLimits {
                per_instance,
                per_address,
                per_session,
            },
            Arc::new(Metrics::new()),
        )
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn each_cap_refuses_and_a_dropped_permit_frees_its_place() {
        let a = admission(3, 2, 1);
        let alice = SessionId::new("alice", 10).unwrap();
        let p1 = a.admit(ip("10.0.0.1"), Some(&alice)).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.2"), Some(&alice)).unwrap_err(),
            Refusal::Session(1)
        );
        let p2 = a.admit(ip("10.0.0.1"), None).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1"), None).unwrap_err(),
            Refusal::Address(2)
        );
        let p3 = a.admit(ip("10.0.0.2"), None).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.3"), None).unwrap_err(),
            Refusal::Instance(3)
        );
        drop(p1);
        let again = a.admit(ip("10.0.0.1"), Some(&alice)).unwrap();
        assert_eq!(a.open_streams(), 3);
        drop((again, p2, p3));
        assert_eq!(a.open_streams(), 0);
        assert_eq!(a.tracked_clients(), (0, 0), "no entry is left behind");
        let text = a.metrics.render();
        for limit in ["instance", "address", "session"] {
            let line = format!("tidings_streams_refused_total{{limit=\"{limit}\"}} 1");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn ipv6_hosts_count_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a = admission(10, 1, 1);
        let _p = a.admit(ip("2001:db8:1:2::1"), None).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:ffff::9"), None).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1"), None).is_ok());
        let _q = a.admit(ip("192.0.2.7"), None).unwrap();
        assert!(a.admit(ip("::ffff:192.0.2.7"), None).is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = vec!["1.1.1.1, 203.0.113.5", "10.0.0.3"];
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(
            client_address(Some(proxy), headers.clone(), &trusted),
            ip("203.0.113.5"),
            "the rightmost untrusted entry; the client wrote 1.1.1.1 itself"
        );
        assert_eq!(
            client_address(Some(stranger), headers.clone(), &trusted),
            Some(stranger.ip()),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(client_address(Some(proxy), [], &trusted), Some(proxy.ip()));
        headers = vec!["garbage, 203.0.113.5"];
        assert_eq!(
            client_address(Some(proxy), headers.clone(), &trusted),
            ip("203.0.113.5"),
            "what the client wrote left of its address does not matter"
        );
        headers = vec!["203.0.113.5, garbage, 10.0.0.3"];
        assert_eq!(
            client_address(Some(proxy), headers.clone(), &trusted),
            ip("10.0.0.3"),
            "nothing left of a malformed entry is believed"
        );
        assert_eq!(client_address(None, headers, &trusted), None);
    }
}
