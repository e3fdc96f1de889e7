//! Prediction traffic: `POST /v1/models/{model}:predict` with `{"instances": [...], "parameters":
//! {...}}` (Vertex AI's shape, which most prediction clients already speak) and
//! `POST /v1/models/{model}:rawPredict`, whose body goes to the target as it came, with its
//! `content-type` and `accept` (CSV, images, a model's own JSON).
//!
//! A prediction is one more request kind on the same path as a chat: the same keys, plugins,
//! routes, retries and fallbacks. It has no canonical chat form; only the upstream kinds that serve
//! predictions (`worker`, `sagemaker`) take it, and every other kind refuses it with a 400 naming
//! the target. The answer of `:predict` is always `{"predictions": [...], "model": ...}` plus what
//! the platform reported (`deployedModelId`: the worker's model, SageMaker's invoked production
//! variant); `:rawPredict` answers with the target's body and content type as they came.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Kind};

/// The most instances one request may carry; a payload is bounded in bytes by `max_body_bytes`
/// too, but a million tiny instances would make a million-element answer.
pub const MAX_INSTANCES: usize = 100_000;

/// The verbs of the prediction paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Predict,
    RawPredict,
}

/// `/v1/models/{model}:predict` or `:rawPredict` → the model and the verb.
pub fn route(path: &str) -> Option<(&str, Verb)> {
    let rest = path.strip_prefix("/v1/models/")?;
    let (model, verb) = rest.rsplit_once(':')?;
    let verb = [Verb::Predict, Verb::RawPredict].into_iter().find(|v| v.as_str() == verb)?;
    Some((model, verb))
}

impl Verb {
    /// The verb as the paths spell it, the gateway's and the platforms' alike.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Predict => "predict",
            Verb::RawPredict => "rawPredict",
        }
    }
}

/// A prediction request, parsed once.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    /// The public model name, from the path.
    pub model: String,
    pub payload: Payload,
    /// The platform headers a client may set and an upstream passes on (SageMaker's custom
    /// attributes, inference id and explanations switch). Never the ones that pick what is
    /// invoked (target model, variant, container): the config decides those, and a client must
    /// not reach other models with the gateway's credentials.
    pub forwarded: HeaderMap,
    /// Counted once at parse ([`PredictRequest::instances`]): a raw payload is read to count it.
    instances: usize,
}

/// The client headers [`PredictRequest::forwarded`] keeps.
pub const FORWARDED: [&str; 3] =
    ["x-amzn-sagemaker-custom-attributes", "x-amzn-sagemaker-inference-id", "x-amzn-sagemaker-enable-explanations"];

/// What is predicted on.
#[derive(Debug, Clone)]
pub enum Payload {
    /// `:predict`: the instances, the optional parameters, and every other field as sent.
    Instances(Instances),
    /// `:rawPredict`: the body as it came.
    Raw(Raw),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Instances {
    pub instances: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Raw {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub accept: Option<HeaderValue>,
}

impl PredictRequest {
    /// Parses a `:predict` (`Verb::Predict`) or `:rawPredict` request for `model`.
    pub fn parse(model: &str, verb: Verb, body: Bytes, headers: &HeaderMap) -> Result<Self, Error> {
        super::check_model_name(model)?;
        let payload = match verb {
            Verb::Predict => {
                let instances: Instances = super::parse_json(&body)?;
                if instances.instances.is_empty() {
                    return Err(Error::bad_request("'instances' must be a non-empty array.")
                        .param("instances")
                        .code("invalid_value"));
                }
                if instances.instances.len() > MAX_INSTANCES {
                    return Err(Error::bad_request(format!(
                        "'instances' holds {} instances; this gateway takes at most {MAX_INSTANCES} per request.",
                        instances.instances.len()
                    ))
                    .param("instances")
                    .code("too_many_instances"));
                }
                if instances.parameters.as_ref().is_some_and(|p| !p.is_object() && !p.is_null()) {
                    return Err(Error::bad_request("'parameters' must be an object.")
                        .param("parameters")
                        .code("invalid_value"));
                }
                Payload::Instances(instances)
            }
            Verb::RawPredict => {
                if body.is_empty() {
                    return Err(Error::bad_request(
                        "The request body is empty; :rawPredict sends it to the model as it is.",
                    )
                    .code("invalid_value"));
                }
                Payload::Raw(Raw {
                    body,
                    content_type: headers.get(header::CONTENT_TYPE).cloned(),
                    accept: headers.get(header::ACCEPT).cloned(),
                })
            }
        };
        let mut forwarded = HeaderMap::new();
        for name in FORWARDED {
            if let Some(value) = headers.get(name) {
                forwarded.insert(name, value.clone());
            }
        }
        let instances = match &payload {
            Payload::Instances(i) => i.instances.len(),
            Payload::Raw(raw) => raw_instances(raw),
        };
        Ok(Self { model: model.to_owned(), payload, forwarded, instances })
    }

    pub fn verb(&self) -> Verb {
        match self.payload {
            Payload::Instances(_) => Verb::Predict,
            Payload::Raw(_) => Verb::RawPredict,
        }
    }

    /// How many instances the request asks predictions for: the array's length for `:predict`; for
    /// `:rawPredict`, a JSON body's `instances` (or top-level array), a CSV body's non-empty lines,
    /// and 1 for any other payload (an image is one instance).
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// The body and content type sent to an upstream that takes the client's payload as it is
    /// (`instances` re-encoded; a raw body unchanged).
    pub fn upstream_body(&self) -> Result<(Bytes, HeaderValue), Error> {
        match &self.payload {
            Payload::Instances(i) => serde_json::to_vec(i)
                .map(|b| (Bytes::from(b), HeaderValue::from_static("application/json")))
                .map_err(|e| Error::internal("could not encode the upstream request").source(e)),
            Payload::Raw(raw) => Ok((
                raw.body.clone(),
                raw.content_type.clone().unwrap_or_else(|| HeaderValue::from_static("application/octet-stream")),
            )),
        }
    }

    /// The `accept` an upstream is asked for: JSON for `:predict`, the client's own for `:rawPredict`.
    pub fn accept(&self) -> Option<HeaderValue> {
        match &self.payload {
            Payload::Instances(_) => Some(HeaderValue::from_static("application/json")),
            Payload::Raw(raw) => raw.accept.clone(),
        }
    }
}

fn raw_instances(raw: &Raw) -> usize {
    let essence = raw
        .content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.as_str() {
        "text/csv" => {
            let mut lines = raw.body.split(|b| *b == b'\n').filter(|line| !line.trim_ascii().is_empty()).peekable();
            // A header line: no cell a number, where the line after it has one.
            let numeric = |line: &[u8]| {
                line.split(|b| *b == b',')
                    .any(|cell| std::str::from_utf8(cell).is_ok_and(|c| c.trim().parse::<f64>().is_ok()))
            };
            let first = lines.next();
            let header = first.is_some_and(|f| !numeric(f)) && lines.peek().is_some_and(|l| numeric(l));
            (usize::from(first.is_some() && !header) + lines.count()).max(1)
        }
        "application/json" | "application/jsonlines" | "application/x-ndjson" | "application/jsonl" => {
            match serde_json::from_slice::<Value>(&raw.body) {
                Ok(Value::Array(items)) => items.len().max(1),
                Ok(Value::Object(map)) => match map.get("instances").or_else(|| map.get("inputs")) {
                    Some(Value::Array(items)) => items.len().max(1),
                    _ => 1,
                },
                // JSON lines: one instance per line.
                _ => raw.body.split(|b| *b == b'\n').filter(|line| !line.trim_ascii().is_empty()).count().max(1),
            }
        }
        _ => 1,
    }
}

/// A `:predict` answer in the gateway's shape, from a platform's JSON answer: an object with
/// `predictions` (Vertex, TensorFlow Serving, Weir's workers) keeps its other fields; a bare array
/// (many SageMaker containers) is the predictions. `model` is the public name the client asked
/// for, and `deployed` (the variant or deployed model that answered) fills `deployedModelId` when
/// the answer has none. Returns the body and the `deployedModelId` it holds.
pub fn answer(
    upstream: &str,
    public_model: &str,
    body: &[u8],
    deployed: Option<String>,
) -> Result<(Vec<u8>, Option<String>), Error> {
    let not_predictions = || {
        Error::new(
            Kind::UpstreamFailed,
            format!(
                "The upstream '{upstream}' answered with a body that holds no predictions (an object with \
                 'predictions', or an array); use :rawPredict to get the model's own answer."
            ),
        )
        .code("upstream_error")
    };
    let mut out = match serde_json::from_slice::<Value>(body).map_err(|_| not_predictions())? {
        Value::Object(map) if map.get("predictions").is_some_and(Value::is_array) => map,
        Value::Array(items) => Map::from_iter([("predictions".to_owned(), Value::Array(items))]),
        _ => return Err(not_predictions()),
    };
    out.insert("model".to_owned(), Value::String(public_model.to_owned()));
    if let Some(deployed) = deployed
        && !out.contains_key("deployedModelId")
    {
        out.insert("deployedModelId".to_owned(), Value::String(deployed));
    }
    let deployed = out.get("deployedModelId").and_then(Value::as_str).map(str::to_owned);
    let body = serde_json::to_vec(&out).map_err(|e| Error::internal("could not encode the answer").source(e))?;
    Ok((body, deployed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(content_type: &str, body: &str) -> PredictRequest {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        PredictRequest::parse("m", Verb::RawPredict, Bytes::from(body.to_owned()), &headers).unwrap()
    }

    #[test]
    fn paths_name_the_model_and_the_verb() {
        assert_eq!(route("/v1/models/fraud:predict"), Some(("fraud", Verb::Predict)));
        assert_eq!(route("/v1/models/org/fraud:v2:rawPredict"), Some(("org/fraud:v2", Verb::RawPredict)));
        assert_eq!(route("/v1/models/fraud:explain"), None);
        assert_eq!(route("/v1/models/fraud"), None);
    }

    #[test]
    fn instances_are_counted_in_every_payload() {
        let body = Bytes::from_static(br#"{"instances":[[1],[2],[3]],"parameters":{"t":1},"x":true}"#);
        let p = PredictRequest::parse("m", Verb::Predict, body, &HeaderMap::new()).unwrap();
        assert_eq!(p.instances(), 3);
        let (sent, ct) = p.upstream_body().unwrap();
        assert_eq!(ct, "application/json");
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent, serde_json::json!({"instances":[[1],[2],[3]],"parameters":{"t":1},"x":true}));
        assert_eq!(raw("text/csv; charset=utf-8", "1,2\n3,4\n\n5,6\n").instances(), 3);
        assert_eq!(raw("text/csv", "amount,hour\n1,2\n3,4\n").instances(), 2, "a header line is not an instance");
        assert_eq!(raw("text/csv", "red,small\nblue,large\n").instances(), 2, "categorical rows are");
        assert_eq!(raw("application/json", r#"{"instances":[1,2]}"#).instances(), 2);
        assert_eq!(raw("application/json", "[1,2,3,4]").instances(), 4);
        assert_eq!(raw("application/jsonlines", "{\"a\":1}\n{\"a\":2}\n").instances(), 2);
        assert_eq!(raw("image/png", "\u{89}PNG").instances(), 1);
    }

    #[test]
    fn malformed_predictions_get_a_400_naming_the_field() {
        let parse =
            |b: &'static [u8]| PredictRequest::parse("m", Verb::Predict, Bytes::from_static(b), &HeaderMap::new());
        let e = parse(br#"{"instances":[]}"#).unwrap_err();
        assert_eq!((e.http_status().as_u16(), e.param.as_deref()), (400, Some("instances")));
        let e = parse(br#"{"instances":{"a":1}}"#).unwrap_err();
        assert_eq!((e.http_status().as_u16(), e.param.as_deref()), (400, Some("instances")));
        let e = parse(br#"{"parameters":{}}"#).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("missing_required_parameter"));
        let e = parse(br#"{"instances":[1],"parameters":[1]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("parameters"));
        let e = PredictRequest::parse("../x", Verb::Predict, Bytes::from_static(b"{}"), &HeaderMap::new()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn answers_take_the_gateways_shape() {
        let a = |body: &str, deployed: Option<&str>| {
            answer("up", "fraud", body.as_bytes(), deployed.map(str::to_owned))
                .map(|(b, d)| (serde_json::from_slice::<Value>(&b).unwrap(), d))
        };
        assert_eq!(
            a(r#"{"predictions":[0.1],"deployedModelId":"w"}"#, Some("v")).unwrap(),
            (serde_json::json!({"predictions":[0.1],"deployedModelId":"w","model":"fraud"}), Some("w".to_owned()))
        );
        assert_eq!(
            a("[0.1,0.9]", Some("variant-b")).unwrap(),
            (
                serde_json::json!({"predictions":[0.1,0.9],"deployedModelId":"variant-b","model":"fraud"}),
                Some("variant-b".to_owned())
            )
        );
        assert!(a(r#"{"scores":[1]}"#, None).is_err());
        assert!(a("0.1,0.2", None).is_err());
    }
}
