//! `GET /v1/models` and `GET /v1/models/{id}`: the public model names this gateway serves.

use serde::Serialize;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

fn object(id: &str) -> ModelObject<'_> {
    ModelObject { id, object: "model", created: 0, owned_by: "weir" }
}

/// The body of `GET /v1/models`.
pub fn list<'a>(names: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let list = ModelList { object: "list", data: names.map(object).collect() };
    serde_json::to_vec(&list).unwrap_or_default()
}

/// The body of `GET /v1/models/{id}`.
pub fn one(id: &str) -> Vec<u8> {
    serde_json::to_vec(&object(id)).unwrap_or_default()
}
