//! Password guessing is slow and bounded: Argon2id runs on the blocking pool (never on the
//! async runtime that serves the TUF repository and check-ins), at most one verification per
//! CPU at a time (each takes ~19 MiB), and failed logins are counted per user name *from one
//! client address* and per client address; past the limit that pair, or that address, is
//! locked out for a while and every attempt from there is answered `429 Too Many Requests`
//! without hashing anything. A user is never locked out from every address: a spray of wrong
//! passwords for `admin` from one address slows that address, not the administrator logging
//! in from another. IPv6 addresses count by their /64 (one host usually has a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::error::ServerError;

/// A user name as the throttle remembers it: the first 16 bytes of its SHA-256, so every
/// entry has the same small size whatever name was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UserKey([u8; 16]);

impl UserKey {
    fn of(name: &str) -> UserKey {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
        let mut key = [0u8; 16];
        for (to, from) in key.iter_mut().zip(digest.as_ref()) {
            *to = *from;
        }
        UserKey(key)
    }
}

/// A client address as the throttle counts it: an IPv4 address, or the /64 an IPv6 address
/// is in (an IPv4-mapped IPv6 address is its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
    V4([u8; 4]),
    V6Prefix64(u64),
    /// Requests without a known peer address (a router served without connection info).
    Unknown,
}

impl AddressKey {
    pub(crate) fn of(address: Option<IpAddr>) -> AddressKey {
        match address.map(|a| a.to_canonical()) {
            Some(IpAddr::V4(v4)) => AddressKey::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => AddressKey::V6Prefix64((v6.to_bits() >> 64) as u64),
            None => AddressKey::Unknown,
        }
    }
}

/// What failed logins are counted against; fixed-size, so [`MAX_SUBJECTS`] bounds memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    /// One user name from one address: `login_failures_per_user`.
    UserAtAddress(UserKey, AddressKey),
    /// One address, whatever the user names: `login_failures_per_address`.
    Address(AddressKey),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Counting restarts when the lockout period has passed since the first failure.
    since: Instant,
    locked_until: Option<Instant>,
}

/// The limits, from `[ui]` in config.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub failures_per_user: u32,
    pub failures_per_address: u32,
    pub lockout: Duration,
}

/// More subjects than this are not remembered: the oldest windows are dropped first, so a
/// flood of made-up user names cannot grow memory without bound.
const MAX_SUBJECTS: usize = 10_000;

#[derive(Debug)]
pub struct LoginThrottle {
    limits: LoginLimits,
    failures: std::sync::Mutex<HashMap<Subject, Failures>>,
    hashing: Semaphore,
}

/// A login attempt let through: the password may be checked.
#[derive(Debug)]
pub struct Attempt {
    user: Subject,
    address: Subject,
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> LoginThrottle {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        LoginThrottle {
            limits,
            failures: std::sync::Mutex::new(HashMap::new()),
            hashing: Semaphore::new(cpus),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, Failures>> {
        match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Refuses (429) while the user from this address, or the address, is locked out.
    pub fn admit(&self, user: &str, address: Option<IpAddr>) -> Result<Attempt, ServerError> {
        let address = AddressKey::of(address);
        let attempt = Attempt {
            user: Subject::UserAtAddress(UserKey::of(user), address),
            address: Subject::Address(address),
        };
        self.check(&attempt)?;
        Ok(attempt)
    }

    fn check(&self, attempt: &Attempt) -> Result<(), ServerError> {
        let now = Instant::now();
        let failures = self.lock();
        for subject in [&attempt.user, &attempt.address] {
            if let Some(until) = failures.get(subject).and_then(|f| f.locked_until) {
                if until > now {
                    return Err(ServerError::TooManyRequests {
                        message: "too many failed logins; wait before trying again".into(),
                        retry_after_secs: until.duration_since(now).as_secs().max(1),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks `password` against the PHC string `hash` on the blocking pool, one
    /// verification per CPU at a time. Without a hash (unknown user) it checks against a
    /// dummy one and answers false, so the time taken does not reveal which names exist.
    ///
    /// The lockout is checked again once a hashing slot is free: a burst of attempts admitted
    /// together must not all be hashed after the first of them locked the subject out.
    pub async fn verify(
        &self,
        attempt: &Attempt,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, ServerError> {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| ServerError::Tuf(format!("password check: {e}")))?;
        self.check(attempt)?;
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => crate::auth::verify_password(&password, &hash),
            None => {
                let dummy = DUMMY.get_or_init(|| {
                    crate::auth::hash_password("not a real password").unwrap_or_default()
                });
                let _ = crate::auth::verify_password(&password, dummy);
                false
            }
        })
        .await
        .map_err(|e| ServerError::Tuf(format!("password check: {e}")))
    }

    /// Counts a failed login against the user from this address and against the address.
    pub fn failed(&self, attempt: &Attempt) {
        let now = Instant::now();
        let lockout = self.limits.lockout;
        let mut failures = self.lock();
        // Room for the two subjects of this attempt: expired windows go first, then the
        // oldest ones.
        if failures.len() + 2 > MAX_SUBJECTS {
            failures.retain(|_, f| now.duration_since(f.since) < lockout);
        }
        while failures.len() + 2 > MAX_SUBJECTS {
            let oldest = failures
                .iter()
                .min_by_key(|(_, f)| f.since)
                .map(|(k, _)| *k);
            match oldest {
                Some(subject) => failures.remove(&subject),
                None => break,
            };
        }
        for (subject, limit) in [
            (&attempt.user, self.limits.failures_per_user),
            (&attempt.address, self.limits.failures_per_address),
        ] {
            let entry = failures.entry(*subject).or_insert(Failures {
                count: 0,
                since: now,
                locked_until: None,
            });
            if now.duration_since(entry.since) >= lockout {
                *entry = Failures {
                    count: 0,
                    since: now,
                    locked_until: None,
                };
            }
            entry.count = entry.count.saturating_add(1);
            if entry.count >= limit {
                entry.locked_until = Some(now + lockout);
            }
        }
    }

    /// A successful login forgets the user's failures from this address (the address keeps
    /// its count: one right guess must not clear a spray of wrong ones against other users).
    pub fn succeeded(&self, attempt: &Attempt) {
        self.lock().remove(&attempt.user);
    }
}

/// Which share of the server a request draws from (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// `/tuf` downloads and requests carrying a valid host or API token:
    /// `limits.max_concurrent_requests`.
    Fleet,
    /// Everything else (logins, registrations, dashboard pages): `limits.max_anonymous_requests`,
    /// and `limits.max_anonymous_requests_per_address` from one client address.
    Anonymous,
}

/// The request shares of `[limits]`: a fleet flooded by anonymous clients keeps its own.
#[derive(Debug)]
pub struct RequestShares {
    fleet: Semaphore,
    anonymous: Semaphore,
    per_address: std::sync::Mutex<HashMap<AddressKey, u32>>,
    per_address_max: u32,
    /// How long a request may wait for a slot before it is answered 503.
    wait: Duration,
}

fn semaphore(permits: u32) -> Semaphore {
    Semaphore::new(
        usize::try_from(permits)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS),
    )
}

/// A request admitted into its share; the slot and the address's count are given back on drop.
#[derive(Debug)]
pub struct Admitted<'a> {
    _slot: tokio::sync::SemaphorePermit<'a>,
    _address: Option<AddressCount<'a>>,
}

/// One anonymous request counted against its client address.
#[derive(Debug)]
struct AddressCount<'a> {
    shares: &'a RequestShares,
    key: AddressKey,
}

impl Drop for AddressCount<'_> {
    fn drop(&mut self) {
        let mut counts = self.shares.lock_counts();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl RequestShares {
    /// The shares of `limits`; a request waits at most `wait` for a slot.
    pub fn new(limits: &crate::config::Limits, wait: Duration) -> RequestShares {
        RequestShares {
            fleet: semaphore(limits.max_concurrent_requests),
            anonymous: semaphore(limits.max_anonymous_requests),
            per_address: std::sync::Mutex::new(HashMap::new()),
            per_address_max: limits.max_anonymous_requests_per_address,
            wait,
        }
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, HashMap<AddressKey, u32>> {
        match self.per_address.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Admits a request of `class` from `client`: 429 when its address has as many anonymous
    /// requests as it may, 503 when no slot of its share frees up within the wait.
    pub async fn admit(
        &self,
        class: RequestClass,
        client: Option<IpAddr>,
    ) -> Result<Admitted<'_>, ServerError> {
        let (slots, address, limit_name) = match class {
            RequestClass::Fleet => (&self.fleet, None, "limits.max_concurrent_requests"),
            RequestClass::Anonymous => {
                let key = AddressKey::of(client);
                let mut counts = self.lock_counts();
                let count = counts.entry(key).or_insert(0);
                if *count >= self.per_address_max {
                    return Err(ServerError::TooManyRequests {
                        message: format!(
                            "this address already has {} requests without a token in progress \
                             (limits.max_anonymous_requests_per_address); wait for them",
                            self.per_address_max
                        ),
                        retry_after_secs: 1,
                    });
                }
                *count += 1;
                drop(counts);
                let counted = AddressCount { shares: self, key };
                (
                    &self.anonymous,
                    Some(counted),
                    "limits.max_anonymous_requests",
                )
            }
        };
        match tokio::time::timeout(self.wait, slots.acquire()).await {
            Ok(Ok(slot)) => Ok(Admitted {
                _slot: slot,
                _address: address,
            }),
            Ok(Err(_)) | Err(_) => Err(ServerError::Busy(format!(
                "the server is handling as many such requests as it may ({limit_name}); retry \
                 shortly"
            ))),
        }
    }
}

/// How much of a request body has come in, shared between the body and the request layer
/// that holds it to `limits.min_body_bytes_per_sec`.
#[derive(Debug, Default)]
pub struct BodyProgress {
    received: std::sync::atomic::AtomicU64,
    finished: std::sync::atomic::AtomicBool,
}

impl BodyProgress {
    fn add(&self, bytes: usize) {
        self.received
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::SeqCst);
    }

    fn finish(&self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The minimum data rate of a request body: checked once a window, from the last check.
#[derive(Debug)]
pub struct BodyRate {
    progress: Arc<BodyProgress>,
    minimum_per_window: u64,
    seen: u64,
}

impl BodyRate {
    /// Wraps `body` so its progress is counted; `bytes_per_sec` over `window` is the minimum.
    pub fn watch(
        body: axum::body::Body,
        bytes_per_sec: u32,
        window: Duration,
    ) -> (axum::body::Body, BodyRate) {
        let progress = Arc::new(BodyProgress::default());
        if http_body::Body::is_end_stream(&body) {
            progress.finish();
        }
        let counted = CountedBody {
            inner: body,
            progress: Arc::clone(&progress),
        };
        let rate = BodyRate {
            progress,
            minimum_per_window: u64::from(bytes_per_sec).saturating_mul(window.as_secs()),
            seen: 0,
        };
        (axum::body::Body::new(counted), rate)
    }

    /// At the end of a window: whether the body is still coming, slower than the minimum.
    pub fn too_slow(&mut self) -> bool {
        let received = self
            .progress
            .received
            .load(std::sync::atomic::Ordering::SeqCst);
        let moved = received.saturating_sub(self.seen);
        self.seen = received;
        !self
            .progress
            .finished
            .load(std::sync::atomic::Ordering::SeqCst)
            && moved < self.minimum_per_window
    }
}

/// A request body that counts what it brings; finished when it ends, fails or is dropped
/// (a handler that answered without reading it is not waiting for the client).
struct CountedBody {
    inner: axum::body::Body,
    progress: Arc<BodyProgress>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.progress.add(data.len());
                }
                if self.inner.is_end_stream() {
                    self.progress.finish();
                }
            }
            std::task::Poll::Ready(_) => self.progress.finish(),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.progress.finish();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shares(anonymous: u32, per_address: u32) -> RequestShares {
        let limits = crate::config::Limits {
            max_concurrent_requests: 2,
            max_anonymous_requests: anonymous,
            max_anonymous_requests_per_address: per_address,
            ..crate::config::Limits::default()
        };
        RequestShares::new(&limits, Duration::from_millis(50))
    }

    #[tokio::test]
    async fn one_address_gets_its_share_of_anonymous_requests_and_no_more() {
        let shares = shares(10, 2);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let same_64: [IpAddr; 2] = [
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        ];
        let first = shares
            .admit(RequestClass::Anonymous, Some(one))
            .await
            .unwrap();
        let _second = shares
            .admit(RequestClass::Anonymous, Some(one))
            .await
            .unwrap();
        let refused = shares
            .admit(RequestClass::Anonymous, Some(one))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ServerError::TooManyRequests { .. }),
            "{refused}"
        );
        assert!(refused
            .to_string()
            .contains("max_anonymous_requests_per_address"));
        // Another address, and the fleet's share, are not affected.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let _other = shares
            .admit(RequestClass::Anonymous, Some(other))
            .await
            .unwrap();
        let _fleet = shares.admit(RequestClass::Fleet, Some(one)).await.unwrap();
        // A finished request gives its place back.
        drop(first);
        let _third = shares
            .admit(RequestClass::Anonymous, Some(one))
            .await
            .unwrap();
        // IPv6 addresses count by their /64.
        let _v6 = shares
            .admit(RequestClass::Anonymous, Some(same_64[0]))
            .await
            .unwrap();
        let _v6b = shares
            .admit(RequestClass::Anonymous, Some(same_64[0]))
            .await
            .unwrap();
        let refused = shares
            .admit(RequestClass::Anonymous, Some(same_64[1]))
            .await;
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn a_full_anonymous_share_leaves_the_fleets_alone() {
        let shares = shares(1, 8);
        let held = shares
            .admit(RequestClass::Anonymous, "192.0.2.1".parse().ok())
            .await
            .unwrap();
        let busy = shares
            .admit(RequestClass::Anonymous, "192.0.2.2".parse().ok())
            .await
            .unwrap_err();
        assert!(matches!(busy, ServerError::Busy(_)), "{busy}");
        assert!(busy.to_string().contains("limits.max_anonymous_requests"));
        let _fleet = shares.admit(RequestClass::Fleet, None).await.unwrap();
        let _fleet2 = shares.admit(RequestClass::Fleet, None).await.unwrap();
        drop(held);
    }

    #[tokio::test]
    async fn a_body_slower_than_the_minimum_is_too_slow_and_a_finished_one_never() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (body, mut rate) = BodyRate::watch(
            axum::body::Body::new(ChannelBody(rx)),
            10,
            Duration::from_secs(1),
        );
        let mut body = std::pin::pin!(body);
        tx.send(bytes::Bytes::from_static(b"0123456789ab"))
            .await
            .unwrap();
        let frame = std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await;
        assert!(frame.is_some());
        assert!(!rate.too_slow(), "12 bytes in a window of 10 bytes/s");
        tx.send(bytes::Bytes::from_static(b"x")).await.unwrap();
        let _ = std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await;
        assert!(rate.too_slow(), "1 byte in a window of 10 bytes/s");
        drop(tx);
        let end = std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await;
        assert!(end.is_none());
        assert!(!rate.too_slow(), "a finished body is never too slow");
    }

    /// A request body whose chunks the test sends.
    struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|data| Ok(http_body::Frame::data(data))))
        }
    }

    fn throttle(per_user: u32, per_address: u32) -> LoginThrottle {
        LoginThrottle::new(LoginLimits {
            failures_per_user: per_user,
            failures_per_address: per_address,
            lockout: Duration::from_secs(600),
        })
    }

    #[test]
    fn a_user_is_locked_out_after_its_limit_and_others_are_not() {
        let t = throttle(3, 100);
        let here = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..3 {
            let attempt = t.admit("vera", here).unwrap();
            t.failed(&attempt);
        }
        let err = t.admit("vera", here).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(t.admit("olga", here).is_ok());
    }

    /// `times` failed logins of `user` from `address`.
    fn fail(t: &LoginThrottle, user: &str, address: Option<IpAddr>, times: usize) {
        for _ in 0..times {
            let attempt = t.admit(user, address).unwrap();
            t.failed(&attempt);
        }
    }

    #[test]
    fn a_user_locked_out_from_one_address_still_logs_in_from_another() {
        let t = throttle(3, 100);
        let sprayer = Some(IpAddr::from([203, 0, 113, 7]));
        fail(&t, "admin", sprayer, 3);
        assert!(t.admit("admin", sprayer).is_err());
        assert!(t
            .admit("admin", Some(IpAddr::from([198, 51, 100, 9])))
            .is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let t = throttle(100, 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        fail(&t, "someone", Some(one), 1);
        fail(&t, "someone", Some(same_64), 1);
        assert!(t.admit("other", Some(one)).is_err());
        assert!(t
            .admit("other", Some("2001:db8:1:3::1".parse().unwrap()))
            .is_ok());
        // An IPv4-mapped address is its IPv4 address.
        fail(&t, "someone", Some(IpAddr::from([192, 0, 2, 1])), 2);
        assert!(t
            .admit("other", Some("::ffff:192.0.2.1".parse().unwrap()))
            .is_err());
    }

    #[test]
    fn an_address_is_locked_out_whatever_the_user_names() {
        let t = throttle(100, 5);
        let there = Some(IpAddr::from([10, 0, 0, 9]));
        for i in 0..5 {
            let attempt = t.admit(&format!("user{i}"), there).unwrap();
            t.failed(&attempt);
        }
        assert!(t.admit("someone-else", there).is_err());
        assert!(t
            .admit("someone-else", Some(IpAddr::from([10, 0, 0, 10])))
            .is_ok());
    }

    #[test]
    fn made_up_names_do_not_grow_memory_without_bound() {
        let t = throttle(100, u32::MAX);
        for i in 0..(MAX_SUBJECTS + 50) {
            let attempt = t.admit(&format!("u{i}"), None).unwrap();
            t.failed(&attempt);
        }
        assert!(t.lock().len() <= MAX_SUBJECTS);
        assert!(std::mem::size_of::<Subject>() <= 40);
    }
}
