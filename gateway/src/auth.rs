//! Stage: authenticate. `Authorization: Bearer <key>` or `x-api-key: <key>` (what the Anthropic SDKs
//! and Claude Code send), on every route → the principal (key name, team).
//!
//! Keys are held only as SHA-256 digests, so the lookup is a hash-map probe on the digest: a timing
//! difference can reveal nothing about a key the attacker does not already know.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use weir_config::ApiKey;

use crate::error::{Error, Kind};

/// The header the Anthropic API takes its key in.
pub const API_KEY: &str = "x-api-key";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's configured name (never the key itself).
    pub key_name: String,
    pub team: String,
}

/// The configured keys; empty means open access (validation allows that only on loopback).
/// A principal the embedding application vouches for, carried in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Embedded(pub Arc<Principal>);

#[derive(Debug)]
pub struct Auth {
    keys: HashMap<[u8; 32], Arc<Principal>>,
    anonymous: Arc<Principal>,
}

impl Auth {
    pub fn new(keys: &[ApiKey]) -> Self {
        let keys = keys
            .iter()
            .map(|k| (k.sha256, Arc::new(Principal { key_name: k.name.clone(), team: k.team.clone() })))
            .collect();
        Self { keys, anonymous: Arc::new(Principal { key_name: "anonymous".into(), team: "anonymous".into() }) }
    }

    /// Whether requests are accepted without a key.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The principal of `request`: the one the embedding application set for it
    /// ([`crate::embed::Weir::handle_as`], a request extension no HTTP client can set), else the
    /// one its key names.
    pub fn authenticate_request<B>(&self, request: &http::Request<B>) -> Result<Arc<Principal>, Error> {
        match request.extensions().get::<Embedded>() {
            Some(Embedded(principal)) => Ok(principal.clone()),
            None => self.authenticate(request.headers()),
        }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Error> {
        if self.is_open() {
            return Ok(self.anonymous.clone());
        }
        let key = match (headers.get(header::AUTHORIZATION), headers.get(API_KEY)) {
            (Some(value), _) => value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    Error::new(Kind::Unauthorized, "The Authorization header must be `Bearer <key>`.")
                        .code("invalid_api_key")
                })?,
            (None, Some(value)) => value.to_str().ok().map(str::trim).filter(|k| !k.is_empty()).ok_or_else(|| {
                Error::new(Kind::Unauthorized, "The x-api-key header is empty or not valid text.")
                    .code("invalid_api_key")
            })?,
            (None, None) => {
                return Err(Error::new(
                    Kind::Unauthorized,
                    "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or in the x-api-key header.",
                )
                .code("missing_api_key"));
            }
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys
            .get(&digest)
            .cloned()
            .ok_or_else(|| Error::new(Kind::Unauthorized, "Incorrect API key provided.").code("invalid_api_key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&[ApiKey {
            name: "svc".into(),
            team: "search".into(),
            sha256: Sha256::digest(b"sk-good-0123456789").into(),
        }])
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn accepts_the_right_key_only() {
        let p = auth().authenticate(&headers("Bearer sk-good-0123456789")).unwrap();
        assert_eq!((p.key_name.as_str(), p.team.as_str()), ("svc", "search"));
        for bad in ["Bearer sk-bad", "Basic abc", "Bearer ", "sk-good-0123456789"] {
            let e = auth().authenticate(&headers(bad)).unwrap_err();
            assert_eq!((e.kind, e.code.as_deref()), (Kind::Unauthorized, Some("invalid_api_key")), "{bad}");
        }
        let e = auth().authenticate(&HeaderMap::new()).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("missing_api_key"));
    }

    #[test]
    fn accepts_the_anthropic_header_too() {
        let mut h = HeaderMap::new();
        h.insert(API_KEY, "sk-good-0123456789".parse().unwrap());
        assert_eq!(auth().authenticate(&h).unwrap().key_name, "svc");
        h.insert(API_KEY, "sk-wrong-0123456789".parse().unwrap());
        assert_eq!(auth().authenticate(&h).unwrap_err().code.as_deref(), Some("invalid_api_key"));
        // `Authorization` wins when both are sent.
        h.insert(header::AUTHORIZATION, "Bearer sk-good-0123456789".parse().unwrap());
        assert_eq!(auth().authenticate(&h).unwrap().team, "search");
    }

    #[test]
    fn no_keys_means_open() {
        let p = Auth::new(&[]).authenticate(&HeaderMap::new()).unwrap();
        assert_eq!(p.key_name, "anonymous");
    }
}
