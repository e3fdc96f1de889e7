//! `POST /v1/embeddings`: the request as the gateway understands it, every other field kept.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids, or an array of token-id arrays.
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

string_enum! {
    pub enum EncodingFormat {
        Float = "float",
        Base64 = "base64",
    }
}

impl EmbeddingsRequest {
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let request: Self = super::parse_json(body)?;
        if request.model.trim().is_empty() {
            return Err(Error::bad_request("'model' must not be empty.").param("model").code("invalid_value"));
        }
        let valid = match &request.input {
            Value::String(s) => !s.is_empty(),
            Value::Array(items) if items.is_empty() => false,
            Value::Array(items) => {
                items.iter().all(|i| matches!(i, Value::String(s) if !s.is_empty()))
                    || items.iter().all(Value::is_u64)
                    || items
                        .iter()
                        .all(|i| matches!(i, Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64)))
            }
            _ => false,
        };
        if !valid {
            return Err(Error::bad_request(
                "'input' must be a non-empty string, an array of non-empty strings, an array of token ids, \
                 or an array of token-id arrays.",
            )
            .param("input")
            .code("invalid_value"));
        }
        Ok(request)
    }

    /// A request parameter kept as sent (`dimensions`, `user`, …), if present and not `null`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.extra.get(name).filter(|v| !v.is_null())
    }

    /// The input as texts, or `None` when it is token ids.
    pub fn texts(&self) -> Option<Vec<&str>> {
        match &self.input {
            Value::String(s) => Some(vec![s.as_str()]),
            Value::Array(items) if items.iter().all(Value::is_string) => {
                Some(items.iter().filter_map(Value::as_str).collect())
            }
            _ => None,
        }
    }

    /// What plugins are told about this request.
    pub fn facts(&self) -> super::Facts {
        super::Facts::from_extra(&self.extra, super::text_len(&self.input))
    }

    pub fn upstream_body(&self, model: &str) -> Result<Vec<u8>, Error> {
        #[derive(Serialize)]
        struct Upstream<'a> {
            model: &'a str,
            input: &'a Value,
            #[serde(skip_serializing_if = "Option::is_none")]
            encoding_format: Option<EncodingFormat>,
            #[serde(flatten)]
            extra: &'a Map<String, Value>,
        }
        let body = Upstream { model, input: &self.input, encoding_format: self.encoding_format, extra: &self.extra };
        serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the upstream request").source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_input_shape_and_keeps_extras() {
        for input in [r#""hi""#, r#"["a","b"]"#, "[1,2,3]", "[[1],[2,3]]"] {
            let body = format!(r#"{{"model":"e","input":{input},"dimensions":3,"encoding_format":"base64"}}"#);
            let r = EmbeddingsRequest::parse(body.as_bytes()).unwrap();
            let up: Value = serde_json::from_slice(&r.upstream_body("up").unwrap()).unwrap();
            assert_eq!((up["model"].as_str(), up["dimensions"].as_u64()), (Some("up"), Some(3)));
            assert_eq!(up["encoding_format"], "base64");
        }
    }

    #[test]
    fn rejects_bad_inputs() {
        for input in [r#""""#, "[]", r#"["a",1]"#, "[[]]", "{}", "null"] {
            let body = format!(r#"{{"model":"e","input":{input}}}"#);
            let e = EmbeddingsRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("input"), "{input}: {e}");
        }
        let e = EmbeddingsRequest::parse(br#"{"model":"e","input":"x","encoding_format":"hex"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("encoding_format"), "{e}");
    }
}
