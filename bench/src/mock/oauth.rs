//! The OAuth token endpoints of the mock: Google's (`POST /token`, the service-account JWT-bearer
//! grant) and Microsoft Entra ID's (`POST /{tenant}/oauth2/v2.0/token`, client credentials). Both
//! issue opaque `mock-token-N` bearer tokens that the provider routes then accept.

use std::sync::Arc;

use base64::Engine as _;
use http::StatusCode;
use serde_json::{Value, json};

use super::{MockBody, Recorded, Shared, json_response};

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    let form: Vec<(String, String)> = url_form(&req.body);
    let get = |k: &str| form.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str());
    let refused = |error: &str, description: &str| {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": error, "error_description": description}))
    };
    if req.method != "POST" {
        return refused("invalid_request", "token requests are POSTs");
    }
    if path == "/token" {
        if get("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return refused("unsupported_grant_type", "Invalid grant_type");
        }
        let Some(claims) = get("assertion").and_then(jwt_claims) else {
            return refused("invalid_grant", "Invalid JWT: the assertion is not a signed JWT");
        };
        if claims.get("iss").and_then(Value::as_str).is_none() || claims.get("scope").and_then(Value::as_str).is_none()
        {
            return refused("invalid_scope", "Invalid JWT: iss and scope are required");
        }
    } else {
        if get("grant_type") != Some("client_credentials") {
            return refused("unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type");
        }
        if get("client_id").is_none() || get("client_secret").is_none() {
            return refused("invalid_client", "AADSTS7000215: Invalid client secret provided.");
        }
        if get("scope").is_none_or(|s| !s.ends_with("/.default")) {
            return refused("invalid_scope", "AADSTS1002012: The provided value for scope is not valid.");
        }
    }
    let token = format!("mock-token-{}", shared.next_id());
    shared.recorded_tokens().push(token.clone());
    let lifetime = shared.config.token_lifetime.unwrap_or(3600);
    json_response(StatusCode::OK, &json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}))
}

fn url_form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The claims of a compact JWS with three parts, if its header says RS256.
fn jwt_claims(jwt: &str) -> Option<Value> {
    let mut parts = jwt.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(header.trim_end_matches('=')).ok()?).ok()?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") || signature.is_empty() {
        return None;
    }
    serde_json::from_slice(&b64.decode(claims.trim_end_matches('=')).ok()?).ok()
}
