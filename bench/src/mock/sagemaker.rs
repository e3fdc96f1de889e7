//! The SageMaker Runtime routes of the mock: `POST /endpoints/{name}/invocations`
//! (`InvokeEndpoint`), signed with SigV4 for the `sagemaker` service (checked as the Bedrock
//! routes check theirs; SageMaker has no API keys). Every endpoint name is served by one model, a
//! fraud score ([`sagemaker_score`]) with two production variants, `primary` and `canary`; the
//! invoked one comes back in `x-Amzn-Invoked-Production-Variant` (`primary` unless
//! `X-Amzn-SageMaker-Target-Variant` names another).
//!
//! Like a real endpoint behind a scikit-learn or TensorFlow container it reads `application/json`
//! (`{"instances": [...]}` or a bare array of instances) and `text/csv` (one instance per line),
//! and answers in the `Accept` asked for (`application/json`: `{"predictions": [...]}`;
//! `text/csv`: one score per line). What the container would refuse becomes SageMaker's
//! `ModelError` (424, with `OriginalStatusCode` and `OriginalMessage`): an instance that is not
//! numbers (400), a content type it does not read (415); an injected 5xx is the model failing
//! (`ModelError` with 500), an injected 429 is `ThrottlingException` (SageMaker sends it as a 400),
//! an injected 503 `ServiceUnavailable`. An unknown target variant is a `ValidationError`.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::bedrock::{AwsError, check_sigv4};
use super::{MockBody, Recorded, Shared, full_body, injected_failure, json_response};

/// The production variants of every mock endpoint.
pub const VARIANTS: [&str; 2] = ["primary", "canary"];

const NAMESPACE: &str = "com.amazonaws.sagemaker";

/// The mock model's score for one instance: a logistic of the features' sum over 100, to six
/// decimals, so that tests can predict every answer.
pub fn sagemaker_score(features: &[f64]) -> f64 {
    let sum: f64 = features.iter().sum();
    (1.0 / (1.0 + (-sum / 100.0).exp()) * 1e6).round() / 1e6
}

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    handle(shared, req, path).unwrap_or_else(|e| e.into_response_of(NAMESPACE))
}

/// A `ModelError`: what the model's container answered, wrapped as SageMaker wraps it.
fn model_error(status: u16, message: &str) -> http::Response<MockBody> {
    let kind = if status < 500 { "CLIENT_ERROR_FROM_MODEL" } else { "SERVER_ERROR_FROM_MODEL" };
    let which = if status < 500 { "client" } else { "server" };
    let mut response = json_response(
        StatusCode::FAILED_DEPENDENCY,
        &json!({
            "ErrorCode": kind,
            "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/mock",
            "Message": format!("Received {which} error ({status}) from primary with message \"{message}\". See the log stream for more information."),
            "OriginalMessage": message,
            "OriginalStatusCode": status,
        }),
    );
    response.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("ModelError:http://internal.amazon.com/coral/com.amazonaws.sagemaker/"),
    );
    response
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<http::Response<MockBody>, AwsError> {
    check_sigv4(shared, req, "sagemaker", false)?;
    let not_found =
        || AwsError { status: StatusCode::NOT_FOUND, kind: "UnknownOperationException", message: String::new() };
    let rest = path.strip_prefix("/endpoints/").ok_or_else(not_found)?;
    let (endpoint, action) = rest.split_once('/').ok_or_else(not_found)?;
    if action != "invocations" || req.method != "POST" || endpoint.is_empty() {
        return Err(not_found());
    }
    let variant = match req.header("x-amzn-sagemaker-target-variant") {
        None => "primary",
        Some(v) if VARIANTS.contains(&v) => v,
        Some(v) => {
            return Err(AwsError {
                status: StatusCode::BAD_REQUEST,
                kind: "ValidationError",
                message: format!("The variant(s) \"[{v}]\" is/are invalid for endpoint \"{endpoint}\""),
            });
        }
    };
    if let Some(status) = injected_failure(shared) {
        return match status.as_u16() {
            429 => Err(AwsError {
                status: StatusCode::BAD_REQUEST,
                kind: "ThrottlingException",
                message: "Rate exceeded".into(),
            }),
            503 => Err(AwsError { status, kind: "ServiceUnavailable", message: "Service is unavailable.".into() }),
            s if s >= 500 => Ok(model_error(500, "the model server crashed")),
            s => Ok(model_error(s, "the model refused the request")),
        };
    }
    let essence =
        |name: &str| req.header(name).map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let rows: Vec<Vec<f64>> = match essence("content-type").as_deref() {
        Some("application/json") => {
            let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
                return Ok(model_error(400, "the body is not JSON"));
            };
            let instances = match &body {
                Value::Array(items) => items,
                Value::Object(map) => match map.get("instances") {
                    Some(Value::Array(items)) => items,
                    _ => return Ok(model_error(400, "expected {\"instances\": [...]}")),
                },
                _ => return Ok(model_error(400, "expected {\"instances\": [...]}")),
            };
            let mut rows = Vec::with_capacity(instances.len());
            for (i, instance) in instances.iter().enumerate() {
                let values: Option<Vec<f64>> = match instance {
                    Value::Array(items) => items.iter().map(Value::as_f64).collect(),
                    Value::Object(map) => map.values().map(Value::as_f64).collect(),
                    Value::Number(n) => n.as_f64().map(|n| vec![n]),
                    _ => None,
                };
                match values {
                    Some(values) => rows.push(values),
                    None => return Ok(model_error(400, &format!("instance {i} is not numbers"))),
                }
            }
            rows
        }
        Some("text/csv") => {
            let text = String::from_utf8_lossy(&req.body);
            let mut rows = Vec::new();
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                match line.split(',').map(|c| c.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>() {
                    Ok(values) => rows.push(values),
                    Err(_) => return Ok(model_error(400, &format!("line {} is not numbers", i + 1))),
                }
            }
            rows
        }
        other => {
            return Ok(model_error(415, &format!("content type {} is not supported", other.unwrap_or("(none)"))));
        }
    };
    let scores: Vec<f64> = rows.iter().map(|r| sagemaker_score(r)).collect();
    let mut response = match essence("accept").as_deref() {
        Some("text/csv") => {
            let text: String = scores.iter().map(|s| format!("{s}\n")).collect();
            let mut r = http::Response::new(full_body(text.into()));
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
            r
        }
        None | Some("application/json" | "*/*") => json_response(StatusCode::OK, &json!({"predictions": scores})),
        Some(other) => return Ok(model_error(406, &format!("accept {other} is not supported"))),
    };
    if let Ok(value) = HeaderValue::from_str(variant) {
        response.headers_mut().insert("x-amzn-invoked-production-variant", value);
    }
    if let Some(attributes) =
        req.header("x-amzn-sagemaker-custom-attributes").and_then(|v| HeaderValue::from_str(v).ok())
    {
        response.headers_mut().insert("x-amzn-sagemaker-custom-attributes", attributes);
    }
    Ok(response)
}
