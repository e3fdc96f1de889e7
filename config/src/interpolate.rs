//! `${NAME}` interpolation in string values, through an injected [`Env`].
//!
//! Only string values are interpolated, after TOML parsing, so a secret can never change the shape of
//! the file. Syntax: `${NAME}` (an error when unset), `${NAME:-default}` (the default when unset or
//! empty), and `$$` for a literal `$`.

use std::collections::HashMap;

use crate::FieldError;

/// Where `${NAME}` values come from.
pub trait Env {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map, for tests and for embedding.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// A map from `(name, value)` pairs.
    pub fn from_pairs<const N: usize>(pairs: [(&str, &str); N]) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }
}

impl Env for MapEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub(crate) fn interpolate_table(table: &mut toml::Table, env: &dyn Env) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    for (key, value) in table.iter_mut() {
        walk(value, key.clone(), env, &mut errors);
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn walk(value: &mut toml::Value, path: String, env: &dyn Env, errors: &mut Vec<FieldError>) {
    match value {
        toml::Value::String(s) if s.contains('$') => match interpolate(s, env) {
            Ok(v) => *s = v,
            Err(message) => errors.push(FieldError { path, message }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                walk(v, format!("{path}.{k}"), env, errors);
            }
        }
        _ => {}
    }
}

/// Interpolates one string.
pub(crate) fn interpolate(input: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}; write `$$` for a literal `$`"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a variable name (letters, digits and `_`)"));
            }
            match (env.get(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (set it, or give a default: `${{{name}:-value}}`)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> MapEnv {
        MapEnv::from_pairs([("KEY", "sk-123"), ("EMPTY", "")])
    }

    #[test]
    fn replaces_variables_defaults_and_escapes() {
        assert_eq!(interpolate("Bearer ${KEY}", &env()).as_deref(), Ok("Bearer sk-123"));
        assert_eq!(interpolate("${MISSING:-http://x}/v1", &env()).as_deref(), Ok("http://x/v1"));
        assert_eq!(interpolate("${EMPTY:-fallback}", &env()).as_deref(), Ok("fallback"));
        assert_eq!(interpolate("${EMPTY}", &env()).as_deref(), Ok(""));
        assert_eq!(interpolate("cost $$5 and $x", &env()).as_deref(), Ok("cost $5 and $x"));
    }

    #[test]
    fn reports_unset_and_malformed_variables() {
        let e = interpolate("${NOPE}", &env()).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        assert!(interpolate("${KEY", &env()).unwrap_err().contains("unterminated"));
        assert!(interpolate("${A-B}", &env()).unwrap_err().contains("not a variable name"));
    }

    #[test]
    fn errors_carry_the_field_path() {
        let mut t: toml::Table = "[[upstreams]]\nname = 'a'\napi_key = '${NOPE}'".parse().unwrap();
        let errs = interpolate_table(&mut t, &env()).unwrap_err();
        assert_eq!(errs[0].path, "upstreams[0].api_key");
    }
}
