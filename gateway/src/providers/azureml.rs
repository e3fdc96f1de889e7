//! Adapter for Azure Machine Learning managed online endpoints: `POST {endpoint}/score`, the
//! endpoint's key as a bearer token or an Entra ID token for `https://ml.azure.com` (the same
//! client-credentials flow as Azure OpenAI, `azure.rs`). Prediction traffic only; a chat request
//! to an Azure ML target is refused with a 400 naming it.
//!
//! Mapping decisions:
//! - The target's model is the deployment, sent as `azureml-model-deployment`: Weir picks the
//!   deployment (its canary splits, its fallbacks), so an endpoint's own traffic rules are not
//!   used; the deployment that answered comes back in the same response header and becomes the
//!   answer's `deployedModelId`.
//! - `:predict` sends `{"instances": …, "parameters": …}` (a scoring script reads what it reads;
//!   MLflow deployments want `input_data`, and take `:rawPredict` with their own body) and takes
//!   back an object with `predictions` or a bare JSON array (MLflow's answer); `:rawPredict` relays
//!   the body and its content type both ways.
//! - Errors: Azure ML answers a failing scoring script with a 5xx or 424 and a JSON or text
//!   body; `message` (or `error.message`, or the text) becomes the error's message, 5xx and 424
//!   are the model failing (retryable elsewhere), 429 is throttling.

use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde_json::Value;
use weir_config::{AzureAuth, Upstream};

use super::azure::Entra;
use super::{Adapter, Detail, HttpClient, sensitive};
use crate::api::{ModelRequest, PredictRequest};
use crate::error::Error;

/// The scope of Azure Machine Learning tokens.
const SCOPE: &str = "https://ml.azure.com/.default";

#[derive(Debug)]
pub struct AzureMl {
    score: Uri,
    entra: Option<Entra>,
}

impl AzureMl {
    pub fn new(upstream: &Upstream, azure: &weir_config::Azure, headers: &mut HeaderMap) -> Result<Self, Error> {
        if let AzureAuth::ApiKey(key) = &azure.auth {
            headers.insert(header::AUTHORIZATION, sensitive(&format!("Bearer {}", key.expose()))?);
        }
        let score = format!("{}/score", upstream.endpoint)
            .parse()
            .map_err(|e| Error::internal(format!("upstream {} has an unusable endpoint", upstream.name)).source(e))?;
        Ok(Self { score, entra: Entra::new(&azure.auth, SCOPE)? })
    }
}

impl Adapter for AzureMl {
    fn request(&self, _: &ModelRequest, _: &str) -> Result<(Uri, Vec<u8>), Error> {
        Err(Error::bad_request(
            "This model is served by an Azure Machine Learning endpoint, which takes predictions only: \
             POST /v1/models/{model}:predict or :rawPredict.",
        )
        .param("model")
        .code("unsupported_operation"))
    }

    fn predict(&self, _: &PredictRequest, model: &str, headers: &mut HeaderMap) -> Option<Result<Uri, Error>> {
        let pinned = HeaderValue::from_str(model)
            .map_err(|_| Error::internal("an Azure ML deployment name is not a valid header value"));
        Some(pinned.map(|deployment| {
            headers.insert("azureml-model-deployment", deployment);
            self.score.clone()
        }))
    }

    fn deployed(&self, headers: &HeaderMap) -> Option<String> {
        super::deployed_header(headers, "azureml-model-deployment")
    }

    async fn authorize(
        &self,
        upstream: &str,
        http: &HttpClient,
        request: &mut http::Request<bytes::Bytes>,
    ) -> Result<(), Error> {
        match &self.entra {
            Some(entra) => entra.authorize(upstream, http, request).await,
            None => Ok(()),
        }
    }

    fn detail(&self, _: &HeaderMap, body: &[u8]) -> Detail {
        detail(body)
    }

    fn classify(&self, upstream: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
        let mut detail = detail(body);
        // Azure ML's 424: the scoring script or its container failed, not the request.
        detail.model_failed = status == StatusCode::FAILED_DEPENDENCY;
        super::classify(upstream, status, headers, detail)
    }
}

/// Azure ML's error: `message`, `error.message` or the text of the body; a 424 is the model.
fn detail(body: &[u8]) -> Detail {
    let value = serde_json::from_slice::<Value>(body).ok();
    let message = match &value {
        Some(v) => v.get("message").or_else(|| v.pointer("/error/message")).and_then(Value::as_str).map(str::to_owned),
        None => std::str::from_utf8(body).ok().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned),
    };
    let code = value.as_ref().and_then(|v| v.pointer("/error/code")).and_then(Value::as_str).map(str::to_owned);
    Detail { message, code, ..Detail::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_from_json_or_text() {
        assert_eq!(
            detail(br#"{"message":"An unexpected error occurred in scoring script."}"#).message.as_deref(),
            Some("An unexpected error occurred in scoring script.")
        );
        let nested = detail(br#"{"error":{"code":"UserError","message":"bad input"}}"#);
        assert_eq!((nested.message.as_deref(), nested.code.as_deref()), (Some("bad input"), Some("UserError")));
        assert_eq!(detail(b"upstream request timeout\n").message.as_deref(), Some("upstream request timeout"));
    }
}
