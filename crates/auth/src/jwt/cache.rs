//! The verified-token cache: a replication sends the same Bearer token on every request, so
//! its signature and claims are checked once and the result kept until the token expires.
//!
//! Keyed by SHA-256 of the token (the token itself is never stored). An entry records the key
//! generation it was verified with and is ignored once the provider's keys change. Bounded:
//! when full, expired entries go first, then arbitrary ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::JwtIdentity;

/// Entries kept at most.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How long a token without `exp` (`skip_expiry_check`) stays cached.
pub const NO_EXP_TTL_SECS: i64 = 300;

struct Entry {
    identity: Arc<JwtIdentity>,
    provider: usize,
    generation: u64,
    /// Unix seconds after which the entry is dead.
    valid_until: i64,
}

pub struct TokenCache {
    map: Mutex<HashMap<[u8; 32], Entry>>,
    capacity: usize,
}

pub fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The cached identity if the entry is alive and `current_generation(provider)` still
    /// matches the keys it was verified with.
    pub fn get(
        &self,
        key: &[u8; 32],
        now: i64,
        current_generation: impl Fn(usize) -> u64,
    ) -> Option<Arc<JwtIdentity>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(key)?;
        if now <= e.valid_until && current_generation(e.provider) == e.generation {
            return Some(e.identity.clone());
        }
        map.remove(key);
        None
    }

    pub fn insert(
        &self,
        key: [u8; 32],
        identity: Arc<JwtIdentity>,
        provider: usize,
        generation: u64,
        valid_until: i64,
        now: i64,
    ) {
        if valid_until < now {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, e| e.valid_until >= now);
            if map.len() >= self.capacity {
                let drop_n = map.len() - self.capacity * 9 / 10;
                let victims: Vec<[u8; 32]> = map.keys().take(drop_n.max(1)).copied().collect();
                for v in victims {
                    map.remove(&v);
                }
            }
        }
        map.insert(
            key,
            Entry {
                identity,
                provider,
                generation,
                valid_until,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(name: &str) -> Arc<JwtIdentity> {
        Arc::new(JwtIdentity {
            username: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn expiry_generation_and_bound() {
        let c = TokenCache::new(10);
        let k = token_key("t1");
        c.insert(k, ident("a"), 0, 7, 100, 50);
        assert_eq!(c.get(&k, 60, |_| 7).unwrap().username, "a");
        assert!(c.get(&k, 60, |_| 8).is_none(), "keys changed");
        assert!(c.get(&k, 60, |_| 7).is_none(), "dropped after a miss");
        c.insert(k, ident("a"), 0, 7, 100, 50);
        assert!(c.get(&k, 101, |_| 7).is_none(), "expired");
        // already expired: not stored
        c.insert(k, ident("a"), 0, 7, 10, 50);
        assert!(c.is_empty());
        for i in 0..100 {
            c.insert(token_key(&format!("t{i}")), ident("x"), 0, 1, 1000, 0);
            assert!(c.len() <= 10);
        }
        assert_ne!(token_key("a"), token_key("b"));
    }
}
