//! Single-use, expiring tokens: the secret part of the URLs that Exec,
//! Attach and PortForward answer. A token names the request it was issued
//! for; it is gone once used or expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Outstanding tokens beyond this are refused (a client asking for URLs it
/// never uses must not grow the daemon without bound).
const MAX_TOKENS: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("too many streaming requests are waiting to be used ({MAX_TOKENS})")]
    Full,
    #[error("no random bytes for a token: {0}")]
    Random(String),
}

pub struct Tokens<T> {
    ttl: Duration,
    map: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration) -> Self {
        Tokens {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, T)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` under a fresh 256-bit token (URL-safe base64).
    pub fn issue(&self, value: T) -> Result<String, TokenError> {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, (expires, _)| *expires > now);
        if map.len() >= MAX_TOKENS {
            return Err(TokenError::Full);
        }
        map.insert(token.clone(), (now + self.ttl, value));
        Ok(token)
    }

    /// The request of a valid token, which is used up by this call.
    pub fn consume(&self, token: &str) -> Option<T> {
        let (expires, value) = self.lock().remove(token)?;
        (expires > Instant::now()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let t = tokens.issue(7).unwrap();
        assert_eq!(t.len(), 43);
        assert_eq!(tokens.consume(&t), Some(7));
        assert_eq!(tokens.consume(&t), None);
        assert_eq!(tokens.consume("forged"), None);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = Tokens::new(Duration::from_millis(1));
        let t = tokens.issue("x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.consume(&t), None);
    }

    #[test]
    fn tokens_are_distinct() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let a = tokens.issue(()).unwrap();
        let b = tokens.issue(()).unwrap();
        assert_ne!(a, b);
    }
}
