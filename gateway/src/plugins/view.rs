//! The request as plugins see it: what the host parsed once, shared by every hook of every plugin of
//! one request, plus what plugins leave on it (response headers, per-plugin scratch space).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::bindings::weir::plugin::types::{ApiKind, RequestInfo};

/// One request, for plugins.
#[derive(Debug)]
pub struct RequestView {
    /// What the request says, which a plugin's rewrite in `on-request` replaces.
    content: Mutex<Content>,
    /// The client's request headers; each plugin sees only those it declared.
    pub headers: HeaderMap,
    locals: Mutex<HashMap<(u64, String), Vec<u8>>>,
    response_headers: Mutex<Vec<(HeaderName, HeaderValue)>>,
    /// The response, for plugins that declared `needs-response`; set once, before `on-complete`.
    response: OnceLock<Bytes>,
    /// Targets a plugin asked to mirror this request to.
    mirrors: Mutex<Vec<String>>,
    /// A body a plugin's `request.set-body` left, for the chain to validate when its hook returns.
    rewrite: Mutex<Option<Bytes>>,
}

/// The request's facts and body, as the client sent them or as the last valid rewrite left them.
#[derive(Debug)]
struct Content {
    info: RequestInfo,
    /// The raw body; handed only to plugins that declared `needs-body`.
    body: Bytes,
    /// Computed on first use, of this body.
    digest: Option<Arc<str>>,
}

/// The most mirror targets one request may have.
const MAX_MIRRORS: usize = 4;

/// Body fields that do not change an answer's content, left out of the digest.
const NOT_IN_DIGEST: &[&str] = &["stream", "stream_options", "user"];

impl RequestView {
    pub fn new(info: RequestInfo, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            content: Mutex::new(Content { info, body, digest: None }),
            headers,
            locals: Mutex::new(HashMap::new()),
            response_headers: Mutex::new(Vec::new()),
            response: OnceLock::new(),
            mirrors: Mutex::new(Vec::new()),
            rewrite: Mutex::new(None),
        }
    }

    fn content(&self) -> std::sync::MutexGuard<'_, Content> {
        self.content.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the host parsed of the request (of its last valid rewrite, if a plugin made one).
    pub fn info(&self) -> RequestInfo {
        self.content().info.clone()
    }

    /// The host's estimate of the prompt's tokens.
    pub fn prompt_tokens_estimate(&self) -> u32 {
        self.content().info.prompt_tokens_estimate
    }

    /// The request's JSON body (its last valid rewrite, if a plugin made one).
    pub fn body(&self) -> Bytes {
        self.content().body.clone()
    }

    /// A view of the same request for its mirrored copy: the same facts, nothing plugins left.
    pub fn for_mirror(&self) -> Self {
        let content = self.content();
        Self::new(content.info.clone(), self.headers.clone(), content.body.clone())
    }

    /// Keeps the body a plugin's `request.set-body` gave, replacing an earlier one of the same hook.
    pub fn set_rewrite(&self, body: Bytes) {
        *self.rewrite.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
    }

    /// The body the hook that just returned asked for, if any.
    pub fn take_rewrite(&self) -> Option<Bytes> {
        self.rewrite.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The request is now `body`, with these facts (a plugin's rewrite, validated).
    pub fn rewritten(&self, info: RequestInfo, body: Bytes) {
        *self.content() = Content { info, body, digest: None };
    }

    pub fn set_response(&self, body: Bytes) {
        let _ = self.response.set(body);
    }

    pub fn response(&self) -> Bytes {
        self.response.get().cloned().unwrap_or_default()
    }

    pub fn add_mirror(&self, target: String) {
        let mut mirrors = self.mirrors.lock().unwrap_or_else(|e| e.into_inner());
        if mirrors.len() < MAX_MIRRORS && !mirrors.contains(&target) {
            mirrors.push(target);
        }
    }

    pub fn take_mirrors(&self) -> Vec<String> {
        std::mem::take(&mut *self.mirrors.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// SHA-256 (hex) of the canonical request: the API, then the body with object keys sorted and
    /// the fields in [`NOT_IN_DIGEST`] removed. Two requests that differ only in key order,
    /// whitespace or streaming get the same digest.
    pub fn digest(&self) -> Arc<str> {
        let mut content = self.content();
        if let Some(digest) = &content.digest {
            return digest.clone();
        }
        let digest: Arc<str> = digest_of(&content.info, &content.body).into();
        content.digest = Some(digest.clone());
        digest
    }

    pub fn add_response_header(&self, name: HeaderName, value: HeaderValue) {
        self.response_headers.lock().unwrap_or_else(|e| e.into_inner()).push((name, value));
    }

    /// The headers plugins added, for the response.
    pub fn take_response_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        std::mem::take(&mut *self.response_headers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn get_local(&self, plugin: u64, key: &str) -> Option<Vec<u8>> {
        self.locals.lock().unwrap_or_else(|e| e.into_inner()).get(&(plugin, key.to_owned())).cloned()
    }

    pub fn set_local(&self, plugin: u64, key: String, value: Vec<u8>) {
        self.locals.lock().unwrap_or_else(|e| e.into_inner()).insert((plugin, key), value);
    }
}

fn digest_of(info: &RequestInfo, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    if info.api == ApiKind::Predict {
        // The model is in the path, not the body; a raw payload need not be JSON at all,
        // and is hashed as the bytes it is.
        hasher.update(b"predict\0");
        hasher.update(info.model.as_bytes());
        hasher.update(b"\0");
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => canonical(&value, &mut hasher),
            Err(_) => hasher.update(body),
        }
        return hex::encode(hasher.finalize());
    }
    let mut value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for field in NOT_IN_DIGEST {
            map.remove(*field);
        }
    }
    hasher.update(match info.api {
        ApiKind::ChatCompletions => b"chat\0".as_slice(),
        ApiKind::Embeddings => b"embeddings\0".as_slice(),
        ApiKind::Completions => b"completions\0".as_slice(),
        ApiKind::Messages => b"messages\0".as_slice(),
        ApiKind::Responses => b"responses\0".as_slice(),
        ApiKind::Predict => b"predict\0".as_slice(),
    });
    canonical(&value, &mut hasher);
    hex::encode(hasher.finalize())
}

/// Feeds a JSON value to the hasher with object keys in sorted order, whatever order serde_json's
/// map keeps, so the digest does not depend on a dependency's feature flags.
fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for k in keys {
                hasher.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                hasher.update(b":");
                canonical(&map[k], hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        other => hasher.update(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(body: &str) -> RequestView {
        let info = RequestInfo {
            request_id: "r".into(),
            api: ApiKind::ChatCompletions,
            model: "m".into(),
            stream: false,
            max_tokens: None,
            temperature: None,
            prompt_tokens_estimate: 0,
            body_len: 0,
            instances: 0,
            key_name: "k".into(),
            team: "t".into(),
            end_user: None,
        };
        RequestView::new(info, HeaderMap::new(), Bytes::from(body.to_owned()))
    }

    #[test]
    fn the_digest_ignores_key_order_whitespace_and_streaming_but_not_content() {
        let a = view(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = view(
            r#"{ "temperature":0, "stream":true, "messages":[{"content":"hi","role":"user"}], "model":"m","user":"u"}"#,
        );
        let c = view(r#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest().len(), 64);
    }
}
