//! Whether a request may be answered from the cache, and whether its answer may be stored: the
//! request's determinism, the opt-in header and `Cache-Control`.

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Look the answer up; on a miss, store the upstream's answer.
    Lookup,
    /// `Cache-Control: no-cache`: go upstream without looking, but store the fresh answer.
    Refresh,
    /// Neither look up nor store.
    Bypass(Reason),
}

/// Why a request bypasses the cache (the `reason` label of the `bypasses` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not deterministic enough, and not opted in.
    NotCacheable,
    /// `Cache-Control: no-store`.
    NoStore,
    /// The opt-in header said `off`.
    OptedOut,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::NotCacheable => "not_cacheable",
            Reason::NoStore => "no_store",
            Reason::OptedOut => "opted_out",
        }
    }
}

/// Which requests are cacheable without the opt-in header.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Chat requests that set `temperature` to 0 explicitly.
    pub temperature_zero: bool,
    /// Embeddings requests (deterministic by nature).
    pub embeddings: bool,
    /// Predictions (`:predict`, `:rawPredict`), whose models the operator knows to be
    /// deterministic.
    pub predictions: bool,
}

/// What the policy looks at, read from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// An embeddings request (rather than a chat completion).
    pub embeddings: bool,
    /// A prediction.
    pub prediction: bool,
    /// The request's `temperature`, if it set one.
    pub temperature: Option<f32>,
    /// The opt-in header's value, if present.
    pub opt_in: Option<&'a str>,
    /// The `Cache-Control` header, if present.
    pub cache_control: Option<&'a str>,
}

/// Decides what to do with a request.
pub fn decide(rules: Rules, facts: Facts<'_>) -> Verdict {
    let (mut no_cache, mut no_store) = (false, false);
    for directive in facts.cache_control.unwrap_or_default().split(',') {
        let name = directive.split('=').next().unwrap_or_default().trim();
        no_cache |= name.eq_ignore_ascii_case("no-cache");
        no_store |= name.eq_ignore_ascii_case("no-store");
    }
    if no_store {
        return Verdict::Bypass(Reason::NoStore);
    }
    let opt_in = facts.opt_in.map(str::trim);
    if opt_in.is_some_and(|v| v.eq_ignore_ascii_case("off")) {
        return Verdict::Bypass(Reason::OptedOut);
    }
    let opted_in = opt_in.is_some_and(|v| v.eq_ignore_ascii_case("on"));
    let deterministic = if facts.prediction {
        rules.predictions
    } else if facts.embeddings {
        rules.embeddings
    } else {
        // Exactly zero: that is what clients send when they want repeatable answers.
        rules.temperature_zero && facts.temperature == Some(0.0)
    };
    if !(opted_in || deterministic) {
        return Verdict::Bypass(Reason::NotCacheable);
    }
    if no_cache { Verdict::Refresh } else { Verdict::Lookup }
}

/// Whether the client asked for the usage chunk of a stream (`stream_options.include_usage`).
pub fn wants_usage(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|b| b.pointer("/stream_options/include_usage").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Rules = Rules { temperature_zero: true, embeddings: true, predictions: false };

    fn chat(temperature: Option<f32>) -> Facts<'static> {
        Facts { temperature, ..Facts::default() }
    }

    #[test]
    fn only_explicit_temperature_zero_is_deterministic() {
        assert_eq!(decide(DEFAULT, chat(Some(0.0))), Verdict::Lookup);
        assert_eq!(decide(DEFAULT, chat(None)), Verdict::Bypass(Reason::NotCacheable));
        assert_eq!(decide(DEFAULT, chat(Some(0.2))), Verdict::Bypass(Reason::NotCacheable));
        let off = Rules { temperature_zero: false, ..DEFAULT };
        assert_eq!(decide(off, chat(Some(0.0))), Verdict::Bypass(Reason::NotCacheable));
    }

    #[test]
    fn embeddings_are_cacheable_unless_turned_off() {
        let facts = Facts { embeddings: true, ..Facts::default() };
        assert_eq!(decide(DEFAULT, facts), Verdict::Lookup);
        assert_eq!(decide(Rules { embeddings: false, ..DEFAULT }, facts), Verdict::Bypass(Reason::NotCacheable));
    }

    #[test]
    fn predictions_are_cached_only_where_the_operator_says_they_are_deterministic() {
        let facts = Facts { prediction: true, ..Facts::default() };
        assert_eq!(decide(DEFAULT, facts), Verdict::Bypass(Reason::NotCacheable));
        assert_eq!(decide(Rules { predictions: true, ..DEFAULT }, facts), Verdict::Lookup);
        assert_eq!(decide(DEFAULT, Facts { opt_in: Some("on"), ..facts }), Verdict::Lookup, "a request may opt in");
    }

    #[test]
    fn the_header_opts_in_and_out() {
        let on = Facts { opt_in: Some("On"), ..chat(Some(0.7)) };
        assert_eq!(decide(DEFAULT, on), Verdict::Lookup);
        let off = Facts { opt_in: Some("off"), ..chat(Some(0.0)) };
        assert_eq!(decide(DEFAULT, off), Verdict::Bypass(Reason::OptedOut));
        let junk = Facts { opt_in: Some("maybe"), ..chat(None) };
        assert_eq!(decide(DEFAULT, junk), Verdict::Bypass(Reason::NotCacheable));
    }

    #[test]
    fn cache_control_is_honoured() {
        let with = |cc| Facts { cache_control: Some(cc), ..chat(Some(0.0)) };
        assert_eq!(decide(DEFAULT, with("no-cache")), Verdict::Refresh);
        assert_eq!(decide(DEFAULT, with("max-age=0, No-Store")), Verdict::Bypass(Reason::NoStore));
        assert_eq!(decide(DEFAULT, with("no-cache, no-store")), Verdict::Bypass(Reason::NoStore));
        assert_eq!(decide(DEFAULT, with("max-age=60")), Verdict::Lookup);
        let not_cacheable = Facts { cache_control: Some("no-cache"), ..chat(None) };
        assert_eq!(decide(DEFAULT, not_cacheable), Verdict::Bypass(Reason::NotCacheable));
    }

    #[test]
    fn include_usage_is_read_from_the_body() {
        assert!(wants_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#));
        assert!(!wants_usage(br#"{"stream":true}"#));
        assert!(!wants_usage(b"not json"));
    }
}
