//! Adapter for Azure OpenAI. The wire format is OpenAI's, so answers and streams are relayed as
//! they are (content-filter results included, and an empty first chunk is just an event with
//! `"choices": []`); what differs is where requests go and how they are authorized:
//!
//! - with `api_version`: `/openai/deployments/{deployment}/chat/completions?api-version=…`, the
//!   deployment being the target's model (or its entry in `deployments`);
//! - without: the `/openai/v1` surface, where the model travels in the body.
//!
//! Legacy completions go to the deployment's `completions` (or `/openai/v1/completions`), and the
//! Responses API, with `native_responses`, to `/openai/v1/responses`.
//!
//! Credentials are the resource's `api-key`, or a Microsoft Entra ID token from the client-credentials
//! flow. That flow is one form POST and a cached answer, so it is written here on the gateway's own
//! HTTP client: the Azure identity crates bring a second HTTP stack and an async runtime abstraction
//! for a request this small.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::sync::Mutex;
use weir_config::{AzureAuth, Secret, Upstream};

use super::{Adapter, Detail, HttpClient, credentials_failed, sensitive, uri};
use crate::api::{ClientRequest, ModelRequest};
use crate::error::Error;

/// The scope of Azure OpenAI (Cognitive Services) tokens.
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// How long before its expiry a token is replaced, so that no request carries one about to lapse.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Azure {
    surface: Surface,
    entra: Option<Entra>,
}

#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one per configured upstream, built once")]
enum Surface {
    Deployments { base: String, api_version: String, deployments: Vec<(String, String)> },
    V1 { chat: Uri, embeddings: Uri, completions: Uri, responses: Uri },
}

impl Azure {
    pub fn new(upstream: &Upstream, azure: &weir_config::Azure, headers: &mut HeaderMap) -> Result<Self, Error> {
        let entra = match &azure.auth {
            AzureAuth::ApiKey(key) => {
                headers.insert("api-key", sensitive(key.expose())?);
                None
            }
            AzureAuth::Entra { .. } => Entra::new(&azure.auth, SCOPE)?,
        };
        let surface = match &azure.api_version {
            Some(api_version) => Surface::Deployments {
                base: upstream.endpoint.clone(),
                api_version: api_version.clone(),
                deployments: azure.deployments.iter().map(|(m, d)| (m.clone(), d.clone())).collect(),
            },
            None => Surface::V1 {
                chat: uri(upstream, "/openai/v1/chat/completions")?,
                embeddings: uri(upstream, "/openai/v1/embeddings")?,
                completions: uri(upstream, "/openai/v1/completions")?,
                responses: uri(upstream, "/openai/v1/responses")?,
            },
        };
        Ok(Self { surface, entra })
    }
}

impl Adapter for Azure {
    /// The URL for `model`; the body is OpenAI's.
    fn request(&self, request: &ModelRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let uri = match &self.surface {
            Surface::V1 { chat, embeddings, .. } => match request {
                ModelRequest::Chat(_) => chat.clone(),
                ModelRequest::Embeddings(_) => embeddings.clone(),
            },
            Surface::Deployments { base, api_version, deployments } => {
                let deployment = deployments.iter().find(|(m, _)| m == model).map(|(_, d)| d.as_str()).unwrap_or(model);
                let path = match request {
                    ModelRequest::Chat(_) => "chat/completions",
                    ModelRequest::Embeddings(_) => "embeddings",
                };
                let deployment = super::path_segment(deployment)?;
                let api_version: String = url::form_urlencoded::byte_serialize(api_version.as_bytes()).collect();
                format!("{base}/openai/deployments/{deployment}/{path}?api-version={api_version}").parse().map_err(
                    |e| {
                        Error::bad_request("The model name cannot be used as an Azure deployment.")
                            .param("model")
                            .source(e)
                    },
                )?
            }
        };
        Ok((uri, request.upstream_body(model)?))
    }

    fn native(&self, request: &ClientRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let (is_responses, body) = super::openai::native_body(request, model)?;
        let uri = match (&self.surface, is_responses) {
            (Surface::V1 { responses, .. }, true) => responses.clone(),
            (Surface::V1 { completions, .. }, false) => completions.clone(),
            (Surface::Deployments { .. }, true) => {
                return Err(Error::internal("the Responses API is relayed to Azure's /openai/v1 surface only"));
            }
            (Surface::Deployments { base, api_version, deployments }, false) => {
                let deployment = deployments.iter().find(|(m, _)| m == model).map(|(_, d)| d.as_str()).unwrap_or(model);
                let deployment = super::path_segment(deployment)?;
                let api_version: String = url::form_urlencoded::byte_serialize(api_version.as_bytes()).collect();
                format!("{base}/openai/deployments/{deployment}/completions?api-version={api_version}")
                    .parse()
                    .map_err(|e| Error::bad_request("the model name cannot be used as an Azure deployment").source(e))?
            }
        };
        Ok((uri, body))
    }

    /// Adds the Entra bearer token, fetching one when there is none or it is about to expire.
    async fn authorize(&self, upstream: &str, http: &HttpClient, request: &mut Request<Bytes>) -> Result<(), Error> {
        match &self.entra {
            Some(entra) => entra.authorize(upstream, http, request).await,
            None => Ok(()),
        }
    }

    // `response` and `translator` are the trait's relaying defaults: Azure answers and streams in
    // OpenAI's shape, content-filter results included.

    fn detail(&self, _: &HeaderMap, body: &[u8]) -> Detail {
        detail(body)
    }
}

/// Entra ID client credentials for one scope, and the token they last obtained.
#[derive(Debug)]
pub(super) struct Entra {
    token_endpoint: Uri,
    client_id: String,
    client_secret: Secret,
    /// What the tokens are for: Azure OpenAI's or Azure Machine Learning's resource.
    scope: &'static str,
    /// The `Bearer …` header value and when to replace it. The lock also makes concurrent requests
    /// wait for one fetch instead of each starting its own.
    cached: Mutex<Option<(HeaderValue, Instant)>>,
}

impl Entra {
    /// The credentials of `auth` when it is Entra ID, for tokens of `scope`; `None` for an API key.
    pub(super) fn new(auth: &AzureAuth, scope: &'static str) -> Result<Option<Self>, Error> {
        let AzureAuth::Entra { token_endpoint, client_id, client_secret } = auth else { return Ok(None) };
        Ok(Some(Entra {
            token_endpoint: token_endpoint
                .parse()
                .map_err(|e| Error::internal("the Entra token endpoint is not a URI").source(e))?,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            scope,
            cached: Mutex::new(None),
        }))
    }

    /// Puts the token on `request`.
    pub(super) async fn authorize(
        &self,
        upstream: &str,
        http: &HttpClient,
        request: &mut Request<Bytes>,
    ) -> Result<(), Error> {
        // Boxed so that the token fetch does not grow every request's future.
        let token = Box::pin(self.token(upstream, http)).await?;
        request.headers_mut().insert(header::AUTHORIZATION, token);
        Ok(())
    }

    /// The `Bearer …` header, cached until shortly before it expires.
    pub(super) async fn token(&self, upstream: &str, http: &HttpClient) -> Result<HeaderValue, Error> {
        let mut cached = self.cached.lock().await;
        if let Some((value, refresh_at)) = &*cached
            && Instant::now() < *refresh_at
        {
            return Ok(value.clone());
        }
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.client_secret.expose())
            .append_pair("scope", self.scope)
            .finish();
        let request = Request::post(self.token_endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Error::internal("could not build the token request").source(e))?;
        let response = http.request(request).await.map_err(|e| {
            credentials_failed(upstream, "the Entra ID token endpoint could not be reached", true).source(e)
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|_| credentials_failed(upstream, "the Entra ID token response could not be read", true))?
            .to_bytes();
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: u64,
        }
        if !status.is_success() {
            return Err(credentials_failed(
                upstream,
                format!("the Entra ID token endpoint answered {status}"),
                status.is_server_error(),
            ));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| credentials_failed(upstream, "the Entra ID token response is not a token", false))?;
        let value = sensitive(&format!("Bearer {}", token.access_token))?;
        let lifetime = Duration::from_secs(token.expires_in);
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_AHEAD.min(lifetime / 2));
        *cached = Some((value.clone(), refresh_at));
        Ok(value)
    }
}

/// Reads Azure's error body: OpenAI's shape, where a prompt or answer blocked by the content
/// filter says so in `code` or `innererror.code`; either way the client gets `code: content_filter`.
pub(crate) fn detail(body: &[u8]) -> Detail {
    let mut detail = super::openai::detail(body);
    let inner = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/innererror/code").and_then(|c| c.as_str()).map(str::to_owned));
    if inner.as_deref() == Some("ResponsibleAIPolicyViolation") || detail.code.as_deref() == Some("content_filter") {
        detail.code = Some("content_filter".to_owned());
    }
    detail
}
