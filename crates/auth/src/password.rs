//! Password hashing (Argon2id) and the cache of verified passwords.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), so a hash keeps verifying
//! after the configured costs change. Hashing and verification are CPU-heavy: the async entry
//! points run them on the blocking pool, never on the reactor.
//!
//! A replication with Basic auth sends the password on every request. [`VerifiedCache`] remembers
//! the last successful check per user as SHA-256(stored hash ‖ password), so the next request
//! with the same password costs a hash of a few bytes instead of an Argon2 run. Because the
//! stored hash (with its random salt) is part of the digest, a new password or a re-created user
//! can never match an old entry; entries are also dropped explicitly when a user changes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

use crate::AuthError;

/// Shortest accepted password (as Sync Gateway).
pub const MIN_PASSWORD_LEN: usize = 3;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Users whose verified password is remembered at most.
pub const VERIFIED_CACHE_CAPACITY: usize = 25_000;

/// Argon2id costs (config `password_hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    /// OWASP's minimum recommendation for Argon2id.
    fn default() -> Self {
        HashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashParams {
    fn argon2(&self) -> Result<Argon2<'static>, AuthError> {
        let p = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthError::Internal(format!("bad Argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
    }
}

/// Checks a new password's length (never echoes it).
pub fn validate_password(password: &str) -> Result<(), AuthError> {
    if password.len() < MIN_PASSWORD_LEN {
        return Err(AuthError::BadRequest(format!(
            "Passwords must be at least {MIN_PASSWORD_LEN} characters long"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AuthError::BadRequest(format!(
            "Passwords must be at most {MAX_PASSWORD_LEN} bytes long"
        )));
    }
    Ok(())
}

/// Hashes a password with a fresh random salt (blocking; see [`hash_async`]).
pub fn hash(params: HashParams, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    params
        .argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("password hashing failed: {e}")))
}

/// Verifies a password against a stored PHC hash (blocking; see [`verify_async`]). A malformed
/// stored hash verifies nothing.
pub fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Argon2 runs at most this many at a time (one per core): each needs `memory_kib` of RAM, so
/// a burst of logins (or of wrong passwords) queues instead of exhausting memory.
fn hash_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(n)
    })
}

/// [`hash`] on the blocking pool, within the Argon2 concurrency limit.
pub async fn hash_async(params: HashParams, password: String) -> Result<String, AuthError> {
    let _slot = hash_slots()
        .acquire()
        .await
        .map_err(|e| AuthError::Internal(format!("hashing slots closed: {e}")))?;
    tokio::task::spawn_blocking(move || hash(params, &password))
        .await
        .map_err(|e| AuthError::Internal(format!("hashing task failed: {e}")))?
}

/// [`verify`] on the blocking pool, within the Argon2 concurrency limit.
pub async fn verify_async(phc: String, password: String) -> bool {
    let Ok(_slot) = hash_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify(&phc, &password))
        .await
        .unwrap_or(false)
}

/// Spends the same work as a real check when the user does not exist, so response times do not
/// tell which names exist.
pub async fn verify_dummy(params: HashParams, password: String) {
    static DUMMY: OnceLock<Mutex<HashMap<HashParams, String>>> = OnceLock::new();
    let phc = {
        let map = DUMMY.get_or_init(Default::default);
        let cached = map.lock().ok().and_then(|m| m.get(&params).cloned());
        match cached {
            Some(p) => p,
            None => {
                let Ok(p) = hash_async(params, "dummy password".into()).await else {
                    return;
                };
                if let Ok(mut m) = map.lock() {
                    m.insert(params, p.clone());
                }
                p
            }
        }
    };
    let _ = verify_async(phc, password).await;
}

impl std::hash::Hash for HashParams {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.memory_kib, self.iterations, self.parallelism).hash(state);
    }
}

/// Digest remembered for one user.
fn digest(phc: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((phc.len() as u64).to_be_bytes());
    h.update(phc.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bounded map user name → digest of the last verified password. Only successes are
/// remembered; when full, the oldest entry goes.
///
/// [`VerifiedCache::verify`] also runs each distinct check once at a time: requests that bring
/// the same user's same password while its Argon2 run is under way (a replicator's parallel
/// connections, several clients starting together after a restart) wait for that run instead of
/// each starting their own. Checks of different passwords never wait on each other.
#[derive(Default)]
pub struct VerifiedCache {
    inner: Mutex<CacheInner>,
    /// Checks under way, by digest of (stored hash, password); the cell holds the outcome.
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<bool>>>>,
    runs: AtomicU64,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<String, [u8; 32]>,
    order: VecDeque<String>,
}

impl VerifiedCache {
    /// Whether `password` verifies against `user`'s stored hash `phc`: from the cache, else by
    /// an Argon2 run on the blocking pool (shared with concurrent identical checks), whose
    /// success is remembered.
    pub async fn verify(&self, user: &str, phc: &str, password: &str) -> bool {
        let d = digest(phc, password);
        if self.hit_digest(user, &d) {
            return true;
        }
        let cell = match self.in_flight.lock() {
            Ok(mut m) => m.entry(d).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let ok = *cell
            .get_or_init(|| {
                self.runs.fetch_add(1, Ordering::Relaxed);
                verify_async(phc.to_string(), password.to_string())
            })
            .await;
        // remembered before the check stops being in flight, so a request arriving in between
        // finds one or the other
        if ok {
            self.insert_digest(user, d);
        }
        if let Ok(mut m) = self.in_flight.lock() {
            if m.get(&d).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                m.remove(&d);
            }
        }
        ok
    }

    /// Argon2 verifications [`VerifiedCache::verify`] has started.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Whether `password` is the last verified password of `user` whose stored hash is `phc`.
    #[cfg(test)]
    pub fn hit(&self, user: &str, phc: &str, password: &str) -> bool {
        self.hit_digest(user, &digest(phc, password))
    }

    fn hit_digest(&self, user: &str, d: &[u8; 32]) -> bool {
        self.inner
            .lock()
            .map(|g| g.map.get(user).is_some_and(|c| ct_eq(c, d)))
            .unwrap_or(false)
    }

    /// Remembers a successful verification.
    #[cfg(test)]
    pub fn insert(&self, user: &str, phc: &str, password: &str) {
        self.insert_digest(user, digest(phc, password))
    }

    fn insert_digest(&self, user: &str, d: [u8; 32]) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if g.map.insert(user.to_string(), d).is_none() {
            g.order.push_back(user.to_string());
            while g.map.len() > VERIFIED_CACHE_CAPACITY {
                match g.order.pop_front() {
                    Some(old) => {
                        g.map.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    /// Forgets a user (password change, deletion, disable).
    pub fn forget(&self, user: &str) {
        if let Ok(mut g) = self.inner.lock() {
            if g.map.remove(user).is_some() {
                g.order.retain(|u| u != user);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// Concurrent checks of one user's same password share one Argon2 run; a different
    /// password is its own check; a later check is a cache hit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_checks_share_one_run() {
        let params = HashParams {
            memory_kib: 4096,
            iterations: 2,
            parallelism: 1,
        };
        let phc = hash(params, "s3cret").unwrap();
        let cache = Arc::new(VerifiedCache::default());
        let checks: Vec<_> = (0..8)
            .map(|i| {
                let (cache, phc) = (cache.clone(), phc.clone());
                let pw = if i == 7 { "wrong" } else { "s3cret" };
                tokio::spawn(async move { cache.verify("u", &phc, pw).await })
            })
            .collect();
        let mut oks = Vec::new();
        for c in checks {
            oks.push(c.await.unwrap());
        }
        assert_eq!(oks, [true, true, true, true, true, true, true, false]);
        assert_eq!(cache.runs(), 2, "one run per distinct password");
        assert!(cache.verify("u", &phc, "s3cret").await);
        assert_eq!(cache.runs(), 2, "then a cache hit");
        assert!(!cache.verify("u", &phc, "wrong").await);
        assert_eq!(cache.runs(), 3, "failures are not remembered");
    }

    #[test]
    fn hash_and_verify() {
        let h = hash(CHEAP, "s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "s3creT"));
        assert!(!verify("not a hash", "s3cret"));
        // a new salt every time
        assert_ne!(h, hash(CHEAP, "s3cret").unwrap());
    }

    #[test]
    fn password_rules() {
        assert!(validate_password("ab").is_err());
        assert!(validate_password("abc").is_ok());
        assert!(validate_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
    }

    #[test]
    fn cache_hits_only_the_same_password_and_hash() {
        let c = VerifiedCache::default();
        c.insert("u", "$hash1", "pw");
        assert!(c.hit("u", "$hash1", "pw"));
        assert!(!c.hit("u", "$hash1", "pw2"));
        assert!(!c.hit("u", "$hash2", "pw"), "a new hash never matches");
        assert!(!c.hit("v", "$hash1", "pw"));
        c.forget("u");
        assert!(!c.hit("u", "$hash1", "pw"));
        assert!(c.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let c = VerifiedCache::default();
        for i in 0..VERIFIED_CACHE_CAPACITY + 10 {
            c.insert(&format!("u{i}"), "$h", "pw");
        }
        assert_eq!(c.len(), VERIFIED_CACHE_CAPACITY);
        assert!(!c.hit("u0", "$h", "pw"), "oldest evicted");
        assert!(c.hit(&format!("u{}", VERIFIED_CACHE_CAPACITY + 9), "$h", "pw"));
    }

    #[tokio::test]
    async fn async_wrappers() {
        let h = hash_async(CHEAP, "pw-async".into()).await.unwrap();
        assert!(verify_async(h.clone(), "pw-async".into()).await);
        assert!(!verify_async(h, "nope".into()).await);
        verify_dummy(CHEAP, "x".into()).await;
    }
}
