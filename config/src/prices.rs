//! Default prices of the models of the providers Weir supports, in USD per million tokens (input,
//! output, cached input), as the providers published them in 2025. `[prices]` in the config
//! overrides any of them, by target (`upstream/model`) or model name; check your provider's price
//! page and your contract before relying on these for billing.

use crate::typed::Price;

/// (model, input, output, cached input), USD per million tokens. Looked up by exact name, then by
/// the longest entry the model name starts with (so dated snapshots such as
/// `gpt-4o-2024-08-06` find `gpt-4o`).
const DEFAULTS: &[(&str, f64, f64, f64)] = &[
    // OpenAI (and Azure OpenAI, same list prices).
    ("gpt-5", 1.25, 10.0, 0.125),
    ("gpt-5-mini", 0.25, 2.0, 0.025),
    ("gpt-5-nano", 0.05, 0.40, 0.005),
    ("gpt-4.1", 2.0, 8.0, 0.50),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025),
    ("gpt-4o", 2.50, 10.0, 1.25),
    ("gpt-4o-mini", 0.15, 0.60, 0.075),
    ("o3", 2.0, 8.0, 0.50),
    ("o4-mini", 1.10, 4.40, 0.275),
    ("o1", 15.0, 60.0, 7.50),
    ("gpt-3.5-turbo", 0.50, 1.50, 0.50),
    ("text-embedding-3-small", 0.02, 0.0, 0.02),
    ("text-embedding-3-large", 0.13, 0.0, 0.13),
    ("text-embedding-ada-002", 0.10, 0.0, 0.10),
    // Gemini (Gemini API and Vertex AI; prompts up to 200k tokens).
    ("gemini-2.5-pro", 1.25, 10.0, 0.31),
    ("gemini-2.5-flash", 0.30, 2.50, 0.075),
    ("gemini-2.5-flash-lite", 0.10, 0.40, 0.025),
    ("gemini-2.0-flash", 0.10, 0.40, 0.025),
    ("gemini-2.0-flash-lite", 0.075, 0.30, 0.075),
    ("gemini-embedding-001", 0.15, 0.0, 0.15),
    ("text-embedding-004", 0.10, 0.0, 0.10),
    // Bedrock (on-demand, us-east-1). Cross-region prefixes (`us.`, `eu.`, `apac.`, `global.`)
    // are ignored when looking up.
    ("anthropic.claude-opus-4", 15.0, 75.0, 1.50),
    ("anthropic.claude-sonnet-4", 3.0, 15.0, 0.30),
    ("anthropic.claude-3-7-sonnet", 3.0, 15.0, 0.30),
    ("anthropic.claude-3-5-sonnet", 3.0, 15.0, 0.30),
    ("anthropic.claude-3-5-haiku", 0.80, 4.0, 0.08),
    ("anthropic.claude-3-haiku", 0.25, 1.25, 0.03),
    ("amazon.nova-pro-v1", 0.80, 3.20, 0.20),
    ("amazon.nova-lite-v1", 0.06, 0.24, 0.015),
    ("amazon.nova-micro-v1", 0.035, 0.14, 0.00875),
    ("meta.llama3-3-70b-instruct", 0.72, 0.72, 0.72),
    ("mistral.mistral-large-2407", 2.0, 6.0, 2.0),
    ("amazon.titan-embed-text-v2", 0.02, 0.0, 0.02),
    ("cohere.embed-english-v3", 0.10, 0.0, 0.10),
    ("cohere.embed-multilingual-v3", 0.10, 0.0, 0.10),
];

/// Bedrock's cross-region inference profile prefixes.
const REGION_PREFIXES: &[&str] = &["us.", "eu.", "apac.", "global.", "us-gov."];

/// The default price of a model, if Weir knows one.
pub fn default_price(model: &str) -> Option<Price> {
    let model = REGION_PREFIXES.iter().find_map(|p| model.strip_prefix(p)).unwrap_or(model);
    let exact = DEFAULTS.iter().find(|(name, ..)| *name == model);
    let entry = exact.or_else(|| {
        DEFAULTS
            .iter()
            .filter(|(name, ..)| model.starts_with(name) && model[name.len()..].starts_with(['-', ':', '@']))
            .max_by_key(|(name, ..)| name.len())
    })?;
    let micros = |usd: f64| (usd * 1e6).round() as u64;
    Some(Price {
        input: micros(entry.1),
        output: micros(entry.2),
        cached_input: micros(entry.3),
        per_request: 0,
        per_1k_instances: 0,
        per_compute_second: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_dated_snapshots_and_region_prefixes_find_their_price() {
        let mini = default_price("gpt-4o-mini").expect("known");
        assert_eq!((mini.input, mini.output, mini.cached_input), (150_000, 600_000, 75_000));
        assert_eq!(default_price("gpt-4o-mini-2024-07-18"), Some(mini), "a snapshot of gpt-4o-mini, not gpt-4o");
        assert_eq!(default_price("gpt-4o-2024-08-06").expect("known").input, 2_500_000);
        let sonnet = default_price("us.anthropic.claude-sonnet-4-20250514-v1:0").expect("known");
        assert_eq!(sonnet.output, 15_000_000);
        assert_eq!(default_price("amazon.nova-micro-v1:0").expect("known").cached_input, 8_750);
        assert_eq!(default_price("gpt-4omni"), None, "a prefix must end at a separator");
        assert_eq!(default_price("gpt-4o-minimal").expect("gpt-4o's").input, 2_500_000, "gpt-4o-mini does not match");
        assert_eq!(default_price("llama3.1:8b"), None);
    }
}
