//! The limits as configured, and the pure logic around them: which rules apply to a request, the
//! quota key of each, the worst-case token reservation, and OpenAI's header formats.

use std::collections::BTreeSet;

use serde::Deserialize;

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The limits; a request must fit within every rule that applies to it.
    pub limits: Vec<Rule>,
    /// The completion tokens reserved for a request that sets no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
}

fn default_max_tokens() -> u32 {
    4096
}

/// What a limit is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The API key (by name).
    Key,
    /// The key's team.
    Team,
    /// The public model name asked for.
    Model,
    /// The end user (the OpenAI `user` field; requests without one share one bucket).
    User,
}

/// One rule: limits counted per a combination of dimensions, optionally only for some models.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What the limits are counted per, e.g. `["key"]` or `["team", "model"]`; empty: one
    /// counter for every request the rule applies to.
    #[serde(default)]
    pub per: BTreeSet<Dimension>,
    /// Only requests for these public models; empty: all.
    #[serde(default)]
    pub models: Vec<String>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent: Option<u32>,
    /// Instances predicted per minute (`predict` requests only; other APIs are not counted).
    pub instances_per_minute: Option<u64>,
}

/// What a request is, as far as rules care.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub key: &'a str,
    pub team: &'a str,
    pub model: &'a str,
    pub user: Option<&'a str>,
}

impl Config {
    pub fn parse(json: &str) -> Result<Self, String> {
        let config: Config = weir_sdk::config(json).map_err(|e| format!("ratelimit config: {e}"))?;
        if config.limits.is_empty() {
            return Err("ratelimit config: `limits` is empty; add at least one rule".into());
        }
        for (i, rule) in config.limits.iter().enumerate() {
            if rule.requests_per_minute.is_none()
                && rule.tokens_per_minute.is_none()
                && rule.concurrent.is_none()
                && rule.instances_per_minute.is_none()
            {
                return Err(format!(
                    "ratelimit config: limits[{i}] sets none of requests_per_minute, tokens_per_minute, concurrent, \
                     instances_per_minute"
                ));
            }
            if rule.requests_per_minute == Some(0)
                || rule.tokens_per_minute == Some(0)
                || rule.concurrent == Some(0)
                || rule.instances_per_minute == Some(0)
            {
                return Err(format!("ratelimit config: limits[{i}] has a limit of 0; remove the model instead"));
            }
        }
        Ok(config)
    }
}

impl Rule {
    pub fn applies_to(&self, subject: &Subject<'_>) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == subject.model)
    }

    /// The counter's name for this rule and subject: the rule's index and the values of its
    /// dimensions, each length-prefixed so that no two subjects can collide.
    pub fn scope(&self, index: usize, subject: &Subject<'_>) -> String {
        let mut scope = format!("r{index}");
        for dimension in &self.per {
            let (tag, value) = match dimension {
                Dimension::Key => ("k", subject.key),
                Dimension::Team => ("t", subject.team),
                Dimension::Model => ("m", subject.model),
                Dimension::User => ("u", subject.user.unwrap_or("")),
            };
            scope.push_str(&format!("|{tag}{}:{value}", value.len()));
        }
        scope
    }

    /// Names the rule's subject for a refusal message: `key "alice", model "gpt-4o"`.
    pub fn describe(&self, subject: &Subject<'_>) -> String {
        if self.per.is_empty() {
            return "all requests".to_owned();
        }
        let parts: Vec<String> = self
            .per
            .iter()
            .map(|d| match d {
                Dimension::Key => format!("key {:?}", subject.key),
                Dimension::Team => format!("team {:?}", subject.team),
                Dimension::Model => format!("model {:?}", subject.model),
                Dimension::User => format!("user {:?}", subject.user.unwrap_or("")),
            })
            .collect();
        parts.join(", ")
    }
}

/// The tokens a request may use at most, reserved at admission: the prompt estimate plus the
/// completion budget (`max_tokens`, or the configured default).
pub fn token_reservation(prompt_estimate: u32, max_tokens: Option<u32>, default_max_tokens: u32) -> u64 {
    u64::from(prompt_estimate) + u64::from(max_tokens.unwrap_or(default_max_tokens))
}

/// A duration in OpenAI's `x-ratelimit-reset-*` format: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn reset_format(ms: u32) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(key: &'a str, team: &'a str, model: &'a str) -> Subject<'a> {
        Subject { key, team, model, user: None }
    }

    #[test]
    fn scopes_separate_subjects_and_rules() {
        let config = Config::parse(
            r#"{"limits":[{"per":["key","model"],"requests_per_minute":5},{"per":["team"],"tokens_per_minute":9}]}"#,
        )
        .unwrap();
        let (a, b) = (&config.limits[0], &config.limits[1]);
        assert_eq!(a.scope(0, &subject("k", "t", "m")), "r0|k1:k|m1:m");
        assert_ne!(a.scope(0, &subject("k|m1:m", "t", "")), a.scope(0, &subject("k", "t", "m")));
        assert_eq!(b.scope(1, &subject("x", "t", "m")), b.scope(1, &subject("y", "t", "n")), "per team only");
        assert_eq!(a.describe(&subject("k", "t", "m")), "key \"k\", model \"m\"");
    }

    #[test]
    fn rules_filter_by_model_and_bad_configs_say_why() {
        let config =
            Config::parse(r#"{"limits":[{"models":["gpt-4o"],"concurrent":2}],"default_max_tokens":100}"#).unwrap();
        assert!(config.limits[0].applies_to(&subject("k", "t", "gpt-4o")));
        assert!(!config.limits[0].applies_to(&subject("k", "t", "other")));
        assert_eq!(config.default_max_tokens, 100);
        assert!(Config::parse(r#"{"limits":[{"per":["key"]}]}"#).unwrap_err().contains("limits[0] sets none"));
        assert!(Config::parse(r#"{"limits":[{"per":["planet"],"concurrent":1}]}"#).unwrap_err().contains("planet"));
        assert!(Config::parse(r#"{"limits":[]}"#).unwrap_err().contains("empty"));
    }

    #[test]
    fn reservations_and_reset_times() {
        assert_eq!(token_reservation(10, Some(50), 4096), 60);
        assert_eq!(token_reservation(10, None, 4096), 4106);
        assert_eq!(reset_format(20), "20ms");
        assert_eq!(reset_format(1000), "1s");
        assert_eq!(reset_format(1001), "2s");
        assert_eq!(reset_format(360_000), "6m0s");
        assert_eq!(reset_format(3_723_000), "1h2m3s");
    }
}
