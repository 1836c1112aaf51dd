//! Admission of new streams: the caps on open streams per instance, per client address and per
//! session, on the distinct wide selectors they hold, and the client address itself.
//!
//! (Over 600 lines with its unit tests: streams, wide selectors and the client address are
//! counted under one lock; the tests are the next seam to cut.)
//!
//! Every stream takes a [`Permit`] first — before its caller is authenticated and before its
//! selectors are compiled, so that a client at its cap costs neither a token check, a call to
//! the application nor a compilation — and gives it back when it ends (the permit lives inside
//! the response body, so a client that goes away, a slow consumer and a stream closed at
//! shutdown all return it). The session and the wide selectors join the permit once they are
//! known. The counts sit under one std mutex, held only for a map update: a check and the
//! increment it guards cannot race, and nothing awaits while it is held.
//!
//! Wide selectors (`*`, URI templates, URL patterns) are counted apart because each distinct
//! one is matched against every update the instance dispatches (exact topics are looked up in
//! a map, whatever their number): one client holding 100,000 distinct templates made every
//! delivery of its instance wait ~7.5 ms (review H1). The caps bound that work per address and
//! per instance; a selector already held by the instance's streams costs nothing more.
//!
//! The client address is the TCP peer, or — when the peer is one of the configured trusted
//! proxies — the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
//! IPv6 addresses count by their /64 prefix: one host is usually given a whole /64, and counting
//! single addresses would let it open streams without end.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
    /// `max-wide-selectors-per-address`: distinct wide selectors held by the streams of one
    /// client address.
    pub wide_per_address: usize,
    /// `max-wide-selectors`: distinct wide selectors held by this instance's streams.
    pub wide_per_instance: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            per_instance: 100_000,
            per_address: 1_000,
            per_session: 32,
            wide_per_address: 1_000,
            wide_per_instance: 10_000,
        }
    }
}

/// The caps on connections, and how long an HTTP/2 connection may stay without a request
/// (`max-connections`, `max-connections-per-address`, `h2-idle-timeout`). Over HTTP/1.1 each
/// stream is a connection, so the per-address cap is above `max-streams-per-address`; a
/// trusted proxy's connections count in the instance's total only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `max-connections`.
    pub per_instance: usize,
    /// `max-connections-per-address`.
    pub per_address: usize,
    /// `h2-idle-timeout`: an HTTP/2 connection with no request open for this long is closed
    /// (gracefully: `GOAWAY`).
    pub h2_idle: Duration,
}

impl ConnectionLimits {
    /// The caps that go with `streams`: a tenth more connections than streams on the instance
    /// (a thousand at least: requests besides streams), twice as many as streams per address
    /// and a hundred (HTTP/1.1 holds a connection per stream, and publishes come on others).
    pub fn for_streams(streams: &StreamLimits) -> Self {
        let spare = (streams.per_instance / 10).max(1_000);
        ConnectionLimits {
            per_instance: streams.per_instance.saturating_add(spare),
            per_address: streams.per_address.saturating_mul(2).saturating_add(100),
            h2_idle: Duration::from_secs(180),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::for_streams(&StreamLimits::default())
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
    /// The client address's streams hold `max-wide-selectors-per-address` distinct wide
    /// selectors already, and this stream asks for more (429).
    #[error("the streams of this client address hold their maximum of {0} distinct wildcard selectors (*, URI templates, URL patterns: max-wide-selectors-per-address); reuse those, subscribe to exact topics, or close a stream first")]
    WideAddress(usize),
    /// The instance's streams hold `max-wide-selectors` distinct wide selectors already, and
    /// this stream asks for more (503).
    #[error("this instance holds its maximum of {0} distinct wildcard selectors (*, URI templates, URL patterns: max-wide-selectors); retry later or connect to another instance")]
    WideInstance(usize),
}

impl Refusal {
    /// Which limit refused, as the metric labels it.
    pub fn limit(self) -> StreamLimit {
        match self {
            Refusal::Instance(_) => StreamLimit::Instance,
            Refusal::Address(_) => StreamLimit::Address,
            Refusal::Session(_) => StreamLimit::Session,
            Refusal::WideAddress(_) => StreamLimit::WideAddress,
            Refusal::WideInstance(_) => StreamLimit::WideInstance,
        }
    }
}

/// How many places each key holds, and how many are held in all: the count behind a cap on
/// a resource per instance and per client (streams here; calls to the authorization callback,
/// connections). Keys that hold nothing are forgotten.
#[derive(Debug)]
pub struct Tally<K> {
    total: usize,
    by_key: HashMap<K, usize>,
}

/// Which cap a [`Tally::take`] met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    /// The total.
    Total,
    /// The key's own.
    Key,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally {
            total: 0,
            by_key: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Tally<K> {
    /// Takes one place for `key` (none: counted in the total only) unless the total holds
    /// `total_cap` already, or the key `key_cap`.
    ///
    /// # Errors
    /// [`Capped`] naming the cap met (the total first).
    pub fn take(
        &mut self,
        key: Option<&K>,
        total_cap: usize,
        key_cap: usize,
    ) -> Result<(), Capped> {
        if self.total >= total_cap {
            return Err(Capped::Total);
        }
        if key.is_some_and(|k| self.by_key.get(k).copied().unwrap_or(0) >= key_cap) {
            return Err(Capped::Key);
        }
        self.total += 1;
        if let Some(k) = key {
            *self.by_key.entry(k.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// Gives back a place [`Tally::take`] took for `key`.
    pub fn give_back(&mut self, key: Option<&K>) {
        self.total = self.total.saturating_sub(1);
        if let Some(k) = key {
            release(&mut self.by_key, k);
        }
    }

    /// Places held in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Keys holding places.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Open streams, in all and per address.
    streams: Tally<IpAddr>,
    by_session: HashMap<SessionId, usize>,
    /// Streams holding each distinct wide selector (by [`Selector::key`]), on the instance
    /// and per address.
    ///
    /// [`Selector::key`]: crate::selector::Selector::key
    wide: HashMap<Arc<str>, usize>,
    wide_by_address: HashMap<IpAddr, HashMap<Arc<str>, usize>>,
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
    /// The distinct wide selectors this stream holds (see [`Permit::hold_wide`]).
    wide: Vec<Arc<str>>,
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

    /// Admits one more stream from `address` (unknown in tests without sockets).
    ///
    /// # Errors
    /// [`Refusal`] naming the first cap that is reached: instance, then address.
    pub fn admit(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Permit, Refusal> {
        let address = address.map(address_key);
        let limits = &self.limits;
        let taken =
            self.lock()
                .streams
                .take(address.as_ref(), limits.per_instance, limits.per_address);
        let refusal = match taken {
            Ok(()) => None,
            Err(Capped::Total) => Some(Refusal::Instance(limits.per_instance)),
            Err(Capped::Key) => Some(Refusal::Address(limits.per_address)),
        };
        self.refused(refusal)?;
        Ok(Permit {
            admission: self.clone(),
            address,
            session: None,
            wide: Vec::new(),
        })
    }

    /// Counts and logs a refusal, if there is one.
    fn refused(&self, refusal: Option<Refusal>) -> Result<(), Refusal> {
        match refusal {
            Some(refusal) => {
                self.metrics.refused_stream(refusal.limit());
                tracing::debug!(%refusal, "stream refused");
                Err(refusal)
            }
            None => Ok(()),
        }
    }

    /// Streams admitted and not yet ended.
    pub fn open_streams(&self) -> usize {
        self.lock().streams.total()
    }

    /// Distinct client addresses and sessions with open streams (both 0 once everyone left).
    pub fn tracked_clients(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.streams.keys(), counts.by_session.len())
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Every update of the counts completes before it could panic (integer and map
        // operations only), so a poisoned lock still guards consistent counts.
        crate::locks::lock(&self.counts)
    }
}

impl Permit {
    /// The address the stream is counted under (IPv6: its /64), when it is known.
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }

    /// Counts the stream as one of `session`'s (session-API streams, once their session is
    /// known).
    ///
    /// # Errors
    /// [`Refusal::Session`] when the session holds `max-streams-per-session` streams already.
    pub fn join_session(&mut self, session: &SessionId) -> Result<(), Refusal> {
        let admission = self.admission.clone();
        let refusal = {
            let mut counts = admission.lock();
            let per_session = admission.limits.per_session;
            match counts.by_session.get(session).copied().unwrap_or(0) >= per_session {
                true => Some(Refusal::Session(per_session)),
                false => {
                    *counts.by_session.entry(session.clone()).or_default() += 1;
                    self.session = Some(session.clone());
                    None
                }
            }
        };
        admission.refused(refusal)
    }

    /// Counts the distinct wide selectors `keys` (by [`Selector::key`]) as held by this
    /// stream. Only those its address's streams, or the instance's, do not hold yet count
    /// against the caps.
    ///
    /// # Errors
    /// [`Refusal::WideAddress`] or [`Refusal::WideInstance`] when the new ones would take the
    /// address or the instance past its cap.
    ///
    /// [`Selector::key`]: crate::selector::Selector::key
    pub fn hold_wide(&mut self, keys: impl IntoIterator<Item = Arc<str>>) -> Result<(), Refusal> {
        let mut keys: Vec<Arc<str>> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        let admission = self.admission.clone();
        let limits = &admission.limits;
        let refusal = {
            let mut counts = admission.lock();
            let counts = &mut *counts;
            let held = self.address.and_then(|a| counts.wide_by_address.get(&a));
            let new_here = keys
                .iter()
                .filter(|k| !held.is_some_and(|h| h.contains_key(*k)))
                .count();
            let new_on_instance = keys
                .iter()
                .filter(|k| !counts.wide.contains_key(*k))
                .count();
            if self.address.is_some()
                && held.map_or(0, HashMap::len) + new_here > limits.wide_per_address
            {
                Some(Refusal::WideAddress(limits.wide_per_address))
            } else if counts.wide.len() + new_on_instance > limits.wide_per_instance {
                Some(Refusal::WideInstance(limits.wide_per_instance))
            } else {
                for key in &keys {
                    *counts.wide.entry(key.clone()).or_default() += 1;
                }
                if let Some(a) = self.address {
                    let here = counts.wide_by_address.entry(a).or_default();
                    for key in &keys {
                        *here.entry(key.clone()).or_default() += 1;
                    }
                }
                self.wide = keys;
                None
            }
        };
        admission.refused(refusal)
    }
}

/// One stream fewer holding `key` in `map`; the key goes when none does.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        let counts = &mut *counts;
        counts.streams.give_back(self.address.as_ref());
        if let Some(a) = &self.address {
            if let Some(here) = counts.wide_by_address.get_mut(a) {
                for key in &self.wide {
                    release(here, key);
                }
                if here.is_empty() {
                    counts.wide_by_address.remove(a);
                }
            }
        }
        if let Some(s) = &self.session {
            release(&mut counts.by_session, s);
        }
        for key in &self.wide {
            release(&mut counts.wide, key);
        }
    }
}

/// The address a client is counted under: IPv4 as it is (also when written as an IPv4-mapped
/// IPv6 address), IPv6 by its /64 prefix.
pub fn address_key(address: IpAddr) -> IpAddr {
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
        match forwarded_address(entry) {
            Some(ip) if trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            None => break,
        }
    }
    Some(client)
}

/// An `X-Forwarded-For` entry's address, as proxies write it: `192.0.2.1`, `2001:db8::1`,
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or in brackets (`[2001:db8::1]`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(with_port) = entry.parse::<SocketAddr>() {
        return Some(with_port.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
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
                ..StreamLimits::default()
            },
            Arc::new(Metrics::new()),
        )
    }

    fn session(a: &Arc<Admission>, address: &str, session: &SessionId) -> Result<Permit, Refusal> {
        let mut permit = a.admit(ip(address))?;
        permit.join_session(session)?;
        Ok(permit)
    }

    fn keys(keys: &[&str]) -> Vec<Arc<str>> {
        keys.iter().map(|k| Arc::from(*k)).collect()
    }

    #[test]
    fn distinct_wide_selectors_are_capped_per_address_and_per_instance() {
        let a = Admission::new(
            StreamLimits {
                wide_per_address: 3,
                wide_per_instance: 5,
                ..StreamLimits::default()
            },
            Arc::new(Metrics::new()),
        );
        let mut p1 = a.admit(ip("10.0.0.1")).unwrap();
        p1.hold_wide(keys(&["a/{x}", "b/{x}", "a/{x}"])).unwrap();
        // The same selectors again cost the address nothing more; one new one fits.
        let mut p2 = a.admit(ip("10.0.0.1")).unwrap();
        p2.hold_wide(keys(&["a/{x}", "b/{x}", "c/{x}"])).unwrap();
        let mut p3 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            p3.hold_wide(keys(&["a/{x}", "d/{x}"])).unwrap_err(),
            Refusal::WideAddress(3)
        );
        // Another address may hold what this one does, and two more of its own: then the
        // instance is full.
        let mut q = a.admit(ip("10.0.0.2")).unwrap();
        q.hold_wide(keys(&["a/{x}", "d/{x}", "e/{x}"])).unwrap();
        let mut r = a.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(
            r.hold_wide(keys(&["f/{x}"])).unwrap_err(),
            Refusal::WideInstance(5)
        );
        r.hold_wide(keys(&["e/{x}"])).unwrap();
        // What the streams held goes with them.
        drop((p1, p2, p3, q, r));
        let counts = a.lock();
        assert!(counts.wide.is_empty() && counts.wide_by_address.is_empty());
        drop(counts);
        let text = a.metrics.render();
        for limit in ["wide-selectors-per-address", "wide-selectors"] {
            let line = format!("tidings_streams_refused_total{{limit=\"{limit}\"}} 1");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn each_cap_refuses_and_a_dropped_permit_frees_its_place() {
        let a = admission(3, 2, 1);
        let alice = SessionId::new("alice", 10).unwrap();
        let p1 = session(&a, "10.0.0.1", &alice).unwrap();
        assert_eq!(
            session(&a, "10.0.0.2", &alice).unwrap_err(),
            Refusal::Session(1)
        );
        let p2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Address(2));
        let p3 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Instance(3));
        drop(p1);
        let again = session(&a, "10.0.0.1", &alice).unwrap();
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
        let _p = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
        let _q = a.admit(ip("192.0.2.7")).unwrap();
        assert!(a.admit(ip("::ffff:192.0.2.7")).is_err());
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

    #[test]
    fn forwarded_entries_with_ports_or_brackets_name_their_address() {
        // Some proxies (Azure's, IIS's ARR) write ports; before, such an entry ended the walk
        // and everyone behind the proxy shared its address's stream cap (review L9).
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        for (entry, client) in [
            ("203.0.113.5:4711", "203.0.113.5"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let headers = [entry, "10.0.0.3:80"];
            assert_eq!(
                client_address(Some(proxy), headers, &trusted),
                ip(client),
                "{entry}"
            );
        }
        assert_eq!(
            client_address(Some(proxy), ["[2001:db8::1]:x"], &trusted),
            Some(proxy.ip()),
            "a malformed entry still ends the walk"
        );
    }
}
