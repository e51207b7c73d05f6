//! Upstream pools: targets with weights, load balancing, and health (active checks and
//! passive ejection).
//!
//! An [`Upstream`] is built per snapshot, but a reload whose config for an upstream is
//! unchanged reuses the same `Arc<Upstream>`, so health state, in-flight counts and
//! round-robin position survive. Pingora's connection pool is keyed by peer, so pooled
//! connections survive as well.
//!
//! Selection is lock-free: round robin walks a precomputed weighted schedule with an
//! atomic cursor, random draws from the same schedule, consistent hashing uses
//! pingora's ketama ring, and least-request compares atomic in-flight counters
//! (weighted). Unhealthy, ejected, or already tried targets are skipped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::COOKIE;
use http::{HeaderMap, HeaderName};
use pingora_ketama::{Bucket, Continuum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{HealthConfig, HealthKind, LbKind, UpstreamConfig};

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Ip,
    Path,
    Header(HeaderName),
    Cookie(String),
}

impl HashOn {
    pub fn parse(s: &str) -> Option<HashOn> {
        match s {
            "ip" => Some(HashOn::Ip),
            "path" => Some(HashOn::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    HeaderName::from_bytes(h.as_bytes())
                        .ok()
                        .map(HashOn::Header)
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    (!c.is_empty()).then(|| HashOn::Cookie(c.to_string()))
                } else {
                    None
                }
            }
        }
    }

    /// The key bytes for a request; `None` falls back to the client IP.
    pub fn key<'a>(&self, path: &'a str, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        match self {
            HashOn::Ip => None,
            HashOn::Path => Some(path.as_bytes()),
            HashOn::Header(h) => headers.get(h).map(|v| v.as_bytes()),
            HashOn::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|v| {
                let s = std::str::from_utf8(v.as_bytes()).ok()?;
                s.split(';').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                })
            }),
        }
    }
}

/// One target and everything known about its health.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The address as configured (label in metrics and logs).
    pub label: Arc<str>,
    pub weight: u32,
    active_healthy: AtomicBool,
    active_ok: AtomicU32,
    active_fail: AtomicU32,
    passive_fail: AtomicU32,
    /// Milliseconds since the process epoch until which the target is ejected; 0 when
    /// it is not (set back once an ejection is seen over, see [`Self::is_ejected`]).
    ejected_until: AtomicU64,
    inflight: AtomicUsize,
    next_check: AtomicU64,
    checking: AtomicBool,
}

impl Target {
    fn new(addr: SocketAddr, label: &str, weight: u32) -> Self {
        Target {
            addr,
            label: label.into(),
            weight,
            active_healthy: AtomicBool::new(true),
            active_ok: AtomicU32::new(0),
            active_fail: AtomicU32::new(0),
            passive_fail: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            next_check: AtomicU64::new(0),
            checking: AtomicBool::new(false),
        }
    }

    /// Usable now: passing active checks and not passively ejected.
    pub fn is_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed) && !self.is_ejected()
    }

    /// Passively ejected now. A target that is not (the usual case) costs no clock
    /// read: this runs for every target considered for every request.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if until > now_ms() {
            return true;
        }
        // Over: back to 0, unless a new ejection was stored meanwhile.
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    pub fn passes_active_checks(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Counts a request against a target's in-flight number until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<Target>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Balancer {
    RoundRobin { schedule: Vec<u32> },
    Random { schedule: Vec<u32> },
    Hash { ring: Continuum, on: HashOn },
    LeastRequest,
}

/// A pool of targets with its balancing policy, timeouts and retry rules.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub targets: Vec<Arc<Target>>,
    balancer: Balancer,
    cursor: AtomicUsize,
}

/// Why no target could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTarget {
    /// Every target is unhealthy or ejected.
    AllUnhealthy,
    /// Every healthy target was already tried for this request.
    Exhausted,
}

impl Upstream {
    /// Builds from a validated config (addresses already resolve).
    pub fn build(c: &UpstreamConfig) -> Result<Upstream, String> {
        let mut targets = Vec::with_capacity(c.targets.len());
        for t in &c.targets {
            let addr = crate::config::resolve_addr(t.addr())?;
            targets.push(Arc::new(Target::new(addr, t.addr(), t.weight())));
        }
        let schedule = || weighted_schedule(&targets);
        let balancer = match c.lb {
            LbKind::RoundRobin => Balancer::RoundRobin {
                schedule: schedule(),
            },
            LbKind::Random => Balancer::Random {
                schedule: schedule(),
            },
            LbKind::ConsistentHash => {
                let buckets: Vec<Bucket> = targets
                    .iter()
                    .map(|t| Bucket::new(t.addr, t.weight))
                    .collect();
                Balancer::Hash {
                    ring: Continuum::new(&buckets),
                    on: c
                        .hash_on
                        .as_deref()
                        .and_then(HashOn::parse)
                        .unwrap_or(HashOn::Ip),
                }
            }
            LbKind::LeastRequest => Balancer::LeastRequest,
        };
        Ok(Upstream {
            name: c.name.as_str().into(),
            config: c.clone(),
            targets,
            balancer,
            cursor: AtomicUsize::new(0),
        })
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        match &self.balancer {
            Balancer::Hash { on, .. } => Some(on),
            _ => None,
        }
    }

    /// Picks a healthy target not in `tried` (a bit set of target indexes; pools beyond
    /// 64 targets reuse bits, which only makes a retry possibly hit a tried target).
    /// The pingora peer for target `i`: address, TLS with SNI (the configured name, or
    /// the target's host) and verification, timeouts.
    pub fn peer(&self, i: usize) -> pingora::upstreams::peer::HttpPeer {
        let target = &self.targets[i];
        let cfg = &self.config;
        let sni = match &cfg.tls {
            Some(t) => t.sni.clone().unwrap_or_else(|| {
                target
                    .label
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_default()
            }),
            None => String::new(),
        };
        let mut peer = pingora::upstreams::peer::HttpPeer::new(target.addr, cfg.tls.is_some(), sni);
        let t = &cfg.timeouts;
        peer.options.connection_timeout = Some(t.connect.get());
        peer.options.read_timeout = Some(t.read.get());
        peer.options.write_timeout = Some(t.write.get());
        peer.options.idle_timeout = Some(t.idle.get());
        if let Some(tls) = &cfg.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
        }
        peer
    }

    pub fn select(&self, hash_key: &[u8], tried: u64) -> Result<usize, NoTarget> {
        let n = self.targets.len();
        let usable = |i: usize| self.usable(i, tried);
        let picked = match &self.balancer {
            Balancer::RoundRobin { schedule } => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len())
                    .map(|k| schedule[(start + k) % schedule.len()] as usize)
                    .find(|&i| usable(i))
            }
            Balancer::Random { schedule } => {
                let start = rand::random::<usize>();
                (0..schedule.len())
                    .map(|k| schedule[(start + k) % schedule.len()] as usize)
                    .find(|&i| usable(i))
            }
            Balancer::Hash { ring, .. } => {
                let mut idx = ring.node_idx(hash_key);
                let mut found = None;
                // The ring holds ~160 points per unit of weight; walking it visits each
                // target quickly, bounded so a fully unhealthy pool terminates.
                for _ in 0..ring_walk_bound(n) {
                    let Some(addr) = ring.get_addr(&mut idx) else {
                        break;
                    };
                    if let Some(i) = self.targets.iter().position(|t| t.addr == *addr) {
                        if usable(i) {
                            found = Some(i);
                            break;
                        }
                    }
                }
                found
            }
            Balancer::LeastRequest => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, u64)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !usable(i) {
                        continue;
                    }
                    let t = &self.targets[i];
                    // Compare inflight/weight without division: score = (inflight+1)*W/weight.
                    let score = (t.inflight() as u64 + 1) * 10_000 / t.weight.max(1) as u64;
                    if best.is_none_or(|(_, s)| score < s) {
                        best = Some((i, score));
                    }
                }
                best.map(|(i, _)| i)
            }
        };
        picked.ok_or_else(|| {
            if self.targets.iter().any(|t| t.is_healthy()) {
                NoTarget::Exhausted
            } else {
                NoTarget::AllUnhealthy
            }
        })
    }

    /// Whether a healthy target outside `tried` remains, so a retry can go somewhere.
    pub fn has_untried_healthy(&self, tried: u64) -> bool {
        (0..self.targets.len()).any(|i| self.usable(i, tried))
    }

    /// Target `i` is healthy and not in the `tried` bit set.
    fn usable(&self, i: usize, tried: u64) -> bool {
        tried & (1u64 << (i % 64)) == 0 && self.targets[i].is_healthy()
    }

    /// Marks a request as in flight on target `i` until the guard drops.
    pub fn start_request(&self, i: usize) -> InflightGuard {
        let t = &self.targets[i];
        t.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(t.clone())
    }

    /// A real request reached the target (resets passive failure counting).
    pub fn report_success(&self, i: usize) {
        let t = &self.targets[i];
        if t.passive_fail.load(Ordering::Relaxed) != 0 {
            t.passive_fail.store(0, Ordering::Relaxed);
        }
    }

    /// A real request failed to reach the target; ejects it after `max_failures`
    /// consecutive failures. Returns true when this call ejected it.
    pub fn report_failure(&self, i: usize) -> bool {
        let p = &self.config.passive;
        if p.max_failures == 0 {
            return false;
        }
        let t = &self.targets[i];
        let fails = t.passive_fail.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= p.max_failures {
            t.passive_fail.store(0, Ordering::Relaxed);
            let until = now_ms() + p.eject_for.get().as_millis() as u64;
            t.ejected_until.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, target = %t.label, failures = fails, "target ejected");
            return true;
        }
        false
    }

    /// Runs the active checks that are due; called by the health-check loop.
    pub fn run_due_checks(self: &Arc<Self>) {
        let Some(h) = &self.config.health else {
            return;
        };
        let now = now_ms();
        for (i, t) in self.targets.iter().enumerate() {
            if t.next_check.load(Ordering::Relaxed) > now || t.checking.swap(true, Ordering::AcqRel)
            {
                continue;
            }
            t.next_check
                .store(now + h.interval.get().as_millis() as u64, Ordering::Relaxed);
            let up = self.clone();
            tokio::spawn(async move {
                if let Some(h) = &up.config.health {
                    let ok = probe(up.targets[i].addr, h).await;
                    up.record_check(i, ok, h);
                }
                up.targets[i].checking.store(false, Ordering::Release);
            });
        }
    }

    fn record_check(&self, i: usize, ok: bool, h: &HealthConfig) {
        let t = &self.targets[i];
        if ok {
            t.active_fail.store(0, Ordering::Relaxed);
            let n = t.active_ok.fetch_add(1, Ordering::Relaxed) + 1;
            let was_down = !t.active_healthy.load(Ordering::Relaxed) || t.is_ejected();
            if was_down && n >= h.healthy_threshold {
                t.active_healthy.store(true, Ordering::Relaxed);
                // A passing active check ends a passive ejection early.
                t.ejected_until.store(0, Ordering::Relaxed);
                tracing::info!(upstream = %self.name, target = %t.label, "target healthy again");
            }
        } else {
            t.active_ok.store(0, Ordering::Relaxed);
            let n = t.active_fail.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= h.unhealthy_threshold && t.active_healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.name, target = %t.label, "target failed health checks");
            }
        }
    }
}

fn ring_walk_bound(targets: usize) -> usize {
    (targets * 160 * 4).max(64)
}

/// Target indexes repeated by weight and interleaved (smooth weighted round robin run
/// once at build time), so a cursor over it spreads each target's turns evenly.
fn weighted_schedule(targets: &[Arc<Target>]) -> Vec<u32> {
    let total: i64 = targets.iter().map(|t| t.weight as i64).sum();
    let mut current = vec![0i64; targets.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, t) in targets.iter().enumerate() {
            current[i] += t.weight as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// One active check: a TCP connect, or an HTTP/1.1 GET whose status is checked.
async fn probe(addr: SocketAddr, h: &HealthConfig) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        if h.kind == HealthKind::Tcp {
            return Some(true);
        }
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weir-health-check\r\nConnection: close\r\n\r\n",
            h.path
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let status: u16 = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
        if !buf.starts_with(b"HTTP/1.") {
            return Some(false);
        }
        Some(if h.expected_status.is_empty() {
            (200..400).contains(&status)
        } else {
            h.expected_status.contains(&status)
        })
    };
    matches!(
        tokio::time::timeout(h.timeout.get(), attempt).await,
        Ok(Some(true))
    )
}

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| Instant::now() - Duration::from_secs(1));
    start.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetSpec;

    fn upstream(lb: LbKind, weights: &[u32]) -> Upstream {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| TargetSpec::Weighted {
                addr: format!("127.0.0.1:{}", 10_000 + i),
                weight: *w,
            })
            .collect();
        let c = UpstreamConfig {
            lb,
            ..UpstreamConfig::new("u", targets)
        };
        Upstream::build(&c).unwrap()
    }

    #[test]
    fn schedule_interleaves_by_weight() {
        let u = upstream(LbKind::RoundRobin, &[1, 3]);
        let picks: Vec<usize> = (0..8).map(|_| u.select(b"", 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 6);
        // Never three of the heavy target in a row when the light one is due.
        assert!(picks
            .windows(4)
            .all(|w| w.contains(&0) || w.iter().all(|&i| i == 1)));
    }

    #[test]
    fn tried_targets_are_skipped_and_exhaustion_reported() {
        let u = upstream(LbKind::RoundRobin, &[1, 1]);
        let first = u.select(b"", 0).unwrap();
        let second = u.select(b"", 1 << first).unwrap();
        assert_ne!(first, second);
        assert_eq!(u.select(b"", 0b11), Err(NoTarget::Exhausted));
    }

    #[test]
    fn passive_ejection_after_consecutive_failures() {
        let u = upstream(LbKind::RoundRobin, &[1, 1]);
        for _ in 0..4 {
            assert!(!u.report_failure(0));
        }
        u.report_success(0);
        for _ in 0..4 {
            u.report_failure(0);
        }
        assert!(u.targets[0].is_healthy(), "success resets the count");
        assert!(u.report_failure(0));
        assert!(!u.targets[0].is_healthy());
        for _ in 0..10 {
            assert_eq!(u.select(b"", 0), Ok(1));
        }
    }

    #[test]
    fn an_ejection_ends_when_its_time_is_up() {
        let mut u = upstream(LbKind::RoundRobin, &[1, 1]);
        u.config.passive.max_failures = 1;
        u.config.passive.eject_for = crate::config::Dur::millis(500);
        assert!(u.report_failure(0));
        assert!(u.targets[0].is_ejected() && !u.targets[0].is_healthy());
        std::thread::sleep(Duration::from_millis(600));
        assert!(!u.targets[0].is_ejected() && u.targets[0].is_healthy());
        // Seen over, the ejection is cleared, and the next one counts afresh.
        assert_eq!(u.targets[0].ejected_until.load(Ordering::Relaxed), 0);
        assert!(u.report_failure(0));
        assert!(u.targets[0].is_ejected());
    }

    #[test]
    fn least_request_prefers_idle_target() {
        let u = upstream(LbKind::LeastRequest, &[1, 1, 1]);
        let _a = u.start_request(0);
        let _b = u.start_request(1);
        assert_eq!(u.select(b"", 0), Ok(2));
    }

    #[test]
    fn consistent_hash_is_stable_and_skips_unhealthy() {
        let u = upstream(LbKind::ConsistentHash, &[1, 1, 1]);
        let a = u.select(b"user-42", 0).unwrap();
        for _ in 0..5 {
            assert_eq!(u.select(b"user-42", 0).unwrap(), a);
        }
        for _ in 0..5 {
            u.report_failure(a);
        }
        let b = u.select(b"user-42", 0).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn hash_on_parses_and_extracts() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "bob".parse().unwrap());
        h.insert(COOKIE, "a=1; session=xyz".parse().unwrap());
        assert_eq!(
            HashOn::parse("header:x-user").unwrap().key("/", &h),
            Some(&b"bob"[..])
        );
        assert_eq!(
            HashOn::parse("cookie:session").unwrap().key("/", &h),
            Some(&b"xyz"[..])
        );
        assert_eq!(
            HashOn::parse("path").unwrap().key("/p", &h),
            Some(&b"/p"[..])
        );
        assert!(HashOn::parse("cookie:").is_none());
        assert!(HashOn::parse("body").is_none());
    }
}
