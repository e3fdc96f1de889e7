//! The Azure Machine Learning route of the mock: a managed online endpoint's `POST /score`, with
//! the endpoint key as a bearer token (the mock's `api_key`) or an Entra ID token the mock's token
//! endpoint issued. It has two deployments, `blue` and `green`; `azureml-model-deployment` picks
//! one (an unknown name is a 404, as Azure ML answers), and without it the endpoint's own traffic
//! rule sends every tenth request to `green`. The deployment that answered comes back in the same
//! header. Its scoring script is the mock fraud score ([`super::sagemaker_score`]) over
//! `{"instances": [...]}`, MLflow's `{"input_data": {"data": [...]}}`, a bare array or CSV rows, and answers
//! with a bare JSON array, as MLflow deployments do; anything else is the scoring script failing
//! (a 424 with its message, as Azure ML reports a container that raised).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::{MockBody, Recorded, Shared, injected_failure, json_response};

/// The deployments of the mock endpoint.
pub const DEPLOYMENTS: [&str; 2] = ["blue", "green"];

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded) -> http::Response<MockBody> {
    let bearer = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let key_ok = bearer.is_some_and(|b| shared.config.api_key.as_deref() == Some(b));
    if !key_ok && !shared.has_issued_token(req) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"message": "Authentication failed: invalid key or token."}),
        );
    }
    if req.method != "POST" {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"message": "Method not allowed."}));
    }
    let deployment = match req.header("azureml-model-deployment") {
        Some(d) if let Some(known) = DEPLOYMENTS.iter().find(|k| **k == d) => *known,
        Some(d) => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"message": format!("The deployment '{d}' was not found on this endpoint.")}),
            );
        }
        None if shared.failable_requests.load(Ordering::Relaxed) % 10 == 9 => "green",
        None => "blue",
    };
    if let Some(status) = injected_failure(shared) {
        let message = if status.as_u16() == 429 {
            "Too many requests."
        } else {
            "An unexpected error occurred in scoring script."
        };
        return json_response(status, &json!({"message": message}));
    }
    let failed = |why: &str| {
        json_response(
            StatusCode::FAILED_DEPENDENCY,
            &json!({"message": format!("An unexpected error occurred in scoring script: {why}")}),
        )
    };
    let csv = req.header("content-type").is_some_and(|t| t.starts_with("text/csv"));
    let body = if csv {
        // A CSV body: one row of numbers per line, as the scoring script reads it.
        let rows: Option<Vec<Value>> = String::from_utf8_lossy(&req.body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split(',')
                    .map(|c| c.trim().parse::<f64>().ok().map(Value::from))
                    .collect::<Option<Vec<_>>>()
                    .map(Value::Array)
            })
            .collect();
        match rows {
            Some(rows) => Value::Array(rows),
            None => return failed("a CSV line is not numbers"),
        }
    } else {
        let Ok(body) = serde_json::from_slice::<Value>(&req.body) else { return failed("the body is not JSON") };
        body
    };
    let rows = match &body {
        Value::Array(items) => Some(items),
        Value::Object(map) => map
            .get("instances")
            .and_then(Value::as_array)
            .or_else(|| map.get("input_data").and_then(|d| d.get("data")).and_then(Value::as_array)),
        _ => None,
    };
    let Some(rows) = rows else { return failed("expected instances or input_data") };
    let mut scores = Vec::with_capacity(rows.len());
    for row in rows {
        let features: Option<Vec<f64>> = match row {
            Value::Array(items) => items.iter().map(Value::as_f64).collect(),
            Value::Object(map) => map.values().map(Value::as_f64).collect(),
            other => other.as_f64().map(|n| vec![n]),
        };
        match features {
            Some(f) => scores.push(super::sagemaker_score(&f)),
            None => return failed("a row is not numbers"),
        }
    }
    let mut response = json_response(StatusCode::OK, &json!(scores));
    response.headers_mut().insert("azureml-model-deployment", HeaderValue::from_static(deployment));
    response
}
