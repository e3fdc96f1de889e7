//! Adapter for Amazon SageMaker real-time endpoints: SageMaker Runtime's `InvokeEndpoint`
//! (`POST /endpoints/{name}/invocations`), signed with SigV4 for the `sagemaker` service like the
//! Bedrock adapter (the same signer, `aws.rs`, and for the same reasons the SDK client is not used:
//! see `bedrock.rs`). Prediction traffic only; a chat request to a SageMaker target is refused
//! with a 400 naming it.
//!
//! Mapping decisions:
//! - The target's model is `endpoint`, `endpoint:variant` (`X-Amzn-SageMaker-Target-Variant`: pin
//!   a production variant rather than let the endpoint's weights pick) or either of those followed
//!   by `/model-path` (`X-Amzn-SageMaker-Target-Model`, the model of a multi-model endpoint, e.g.
//!   `fraud-mme/v2/model.tar.gz`). These come from the config only; of the client's SageMaker
//!   headers only custom attributes, the inference id and the explanations switch pass on.
//! - `:predict` sends `{"instances": …, "parameters": …}` as `application/json` (what SageMaker's
//!   TensorFlow, PyTorch and scikit-learn containers read) and takes back an object with
//!   `predictions` or a bare JSON array; `:rawPredict` sends the client's body, content type and
//!   accept, and returns the endpoint's.
//! - The variant that answered (`X-Amzn-Invoked-Production-Variant`) is the answer's
//!   `deployedModelId` and its `x-weir-deployed-model` header.
//! - `ModelError` (424: the model's container answered with an error) is mapped by the status the
//!   model gave: a 4xx is the client's input, returned as a 400 `model_error` with the model's
//!   own message and not retried; a 5xx is the model failing, a retryable 502 that another target
//!   may answer. `ThrottlingException` and `ModelNotReadyException` are throttling (429, retried
//!   elsewhere); `ValidationError` is a 400 with SageMaker's message (often an endpoint name that
//!   does not exist: a gateway configuration problem the message names); 5xx are retryable.

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::Value;
use weir_config::Upstream;

use super::aws::SigV4;
use super::{Adapter, Detail, HttpClient, classify, path_segment};
use crate::api::{ModelRequest, PredictRequest};
use crate::error::{Error, Kind};

#[derive(Debug)]
pub struct SageMaker {
    endpoint: String,
    signer: SigV4,
}

impl SageMaker {
    pub fn new(upstream: &Upstream, aws: &weir_config::Aws) -> Self {
        Self { endpoint: upstream.endpoint.clone(), signer: SigV4::new(aws, "sagemaker") }
    }
}

/// A target's model name, `endpoint[:variant][/target-model]`, in its parts.
fn target(model: &str) -> (&str, Option<&str>, Option<&str>) {
    let (head, target_model) = match model.split_once('/') {
        Some((head, rest)) if !rest.is_empty() => (head, Some(rest)),
        _ => (model.trim_end_matches('/'), None),
    };
    match head.split_once(':') {
        Some((endpoint, variant)) if !variant.is_empty() => (endpoint, Some(variant), target_model),
        _ => (head, None, target_model),
    }
}

impl Adapter for SageMaker {
    fn request(&self, _: &ModelRequest, _: &str) -> Result<(Uri, Vec<u8>), Error> {
        Err(Error::bad_request(
            "This model is served by a SageMaker endpoint, which takes predictions only: \
             POST /v1/models/{model}:predict or :rawPredict.",
        )
        .param("model")
        .code("unsupported_operation"))
    }

    fn predict(&self, request: &PredictRequest, model: &str, headers: &mut HeaderMap) -> Option<Result<Uri, Error>> {
        let mut build = || {
            let (endpoint, variant, target_model) = target(model);
            let uri = format!("{}/endpoints/{}/invocations", self.endpoint, path_segment(endpoint)?)
                .parse::<Uri>()
                .map_err(|e| Error::internal("the SageMaker endpoint name cannot be used in a URL").source(e))?;
            let value = |v: &str| {
                HeaderValue::from_str(v).map_err(|_| Error::internal("a SageMaker target name is not a valid header"))
            };
            if let Some(variant) = variant {
                headers.insert("x-amzn-sagemaker-target-variant", value(variant)?);
            }
            if let Some(target_model) = target_model {
                headers.insert("x-amzn-sagemaker-target-model", value(target_model)?);
            }
            for (name, v) in &request.forwarded {
                headers.insert(name, v.clone());
            }
            Ok(uri)
        };
        Some(build())
    }

    fn deployed(&self, headers: &HeaderMap) -> Option<String> {
        super::deployed_header(headers, "x-amzn-invoked-production-variant")
    }

    async fn authorize(
        &self,
        upstream: &str,
        _: &HttpClient,
        request: &mut http::Request<bytes::Bytes>,
    ) -> Result<(), Error> {
        self.signer.sign(upstream, request).await
    }

    fn detail(&self, headers: &HeaderMap, body: &[u8]) -> Detail {
        detail(headers, body).0
    }

    fn classify(&self, upstream: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
        let (detail, model_status) = detail(headers, body);
        match model_status {
            // The model refused its input: the client's to fix, whichever target served it.
            Some(original @ 400..=499) => Error::new(
                Kind::UpstreamRejected,
                format!(
                    "The model behind '{upstream}' rejected the input with status {original}: {}",
                    detail.message.as_deref().unwrap_or("no message")
                ),
            )
            .status(StatusCode::BAD_REQUEST)
            .code("model_error"),
            _ => classify(upstream, status, headers, detail),
        }
    }
}

/// SageMaker's error: the type in `x-amzn-errortype` (`ModelError:http://…`), the text in
/// `message`/`Message`; for a `ModelError`, the model's own message (`OriginalMessage`) and
/// status (`OriginalStatusCode`), which is returned beside the detail.
fn detail(headers: &HeaderMap, body: &[u8]) -> (Detail, Option<u16>) {
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .or_else(|| value.get("__type").and_then(Value::as_str))
        .map(|t| t.split([':', '#']).next().unwrap_or(t));
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut detail = Detail {
        message: text("message").or_else(|| text("Message")),
        code: kind.map(|k| match k {
            "ModelError" => "model_error".to_owned(),
            "ValidationError" => "invalid_request".to_owned(),
            other => other.to_ascii_lowercase(),
        }),
        throttled: matches!(kind, Some("ThrottlingException" | "ModelNotReadyException")),
        ..Detail::default()
    };
    if kind != Some("ModelError") {
        return (detail, None);
    }
    let original = value.get("OriginalStatusCode").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
    if let Some(message) = text("OriginalMessage") {
        detail.message = Some(message);
    }
    // The model's container failed (a 5xx, or no status at all): the provider's fault.
    detail.model_failed = !original.is_some_and(|s| (400..500).contains(&s));
    (detail, original)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(kind: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-amzn-errortype", HeaderValue::from_str(kind).unwrap());
        h
    }

    #[test]
    fn target_names_split_into_endpoint_variant_and_model() {
        assert_eq!(target("fraud"), ("fraud", None, None));
        assert_eq!(target("fraud:v2"), ("fraud", Some("v2"), None));
        assert_eq!(target("mme/a/model.tar.gz"), ("mme", None, Some("a/model.tar.gz")));
        assert_eq!(target("mme:blue/m.tar.gz"), ("mme", Some("blue"), Some("m.tar.gz")));
    }

    #[test]
    fn model_errors_are_mapped_by_the_models_own_status() {
        let s = SageMaker {
            endpoint: String::new(),
            signer: SigV4::new(
                &weir_config::Aws {
                    region: "us-east-1".into(),
                    credentials: weir_config::AwsCredentials::ApiKey(weir_config::Secret::new(String::new())),
                },
                "sagemaker",
            ),
        };
        let client_error = br#"{"ErrorCode":"CLIENT_ERROR_FROM_MODEL","Message":"Received client error (400) from primary","OriginalMessage":"feature 'amount' is missing","OriginalStatusCode":400}"#;
        let e = s.classify(
            "sm",
            StatusCode::FAILED_DEPENDENCY,
            &headers("ModelError:http://internal.amazon.com/"),
            client_error,
        );
        assert_eq!(
            (e.http_status(), e.retryable, e.code.as_deref()),
            (StatusCode::BAD_REQUEST, false, Some("model_error"))
        );
        assert!(e.message.contains("feature 'amount' is missing"), "{e}");
        let server_error = br#"{"ErrorCode":"SERVER_ERROR_FROM_MODEL","OriginalMessage":"CUDA out of memory","OriginalStatusCode":500}"#;
        let e = s.classify("sm", StatusCode::FAILED_DEPENDENCY, &headers("ModelError"), server_error);
        assert!(e.retryable, "another target may answer: {e}");
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
        let throttled = s.classify(
            "sm",
            StatusCode::BAD_REQUEST,
            &headers("ThrottlingException"),
            br#"{"message":"Rate exceeded"}"#,
        );
        assert_eq!((throttled.http_status(), throttled.retryable), (StatusCode::TOO_MANY_REQUESTS, true));
        let missing = s.classify(
            "sm",
            StatusCode::BAD_REQUEST,
            &headers("ValidationError"),
            br#"{"message":"Endpoint fraud of account 1 not found."}"#,
        );
        assert_eq!((missing.http_status(), missing.retryable), (StatusCode::BAD_REQUEST, false));
    }
}
