//! `examples/full.toml` promises every setting: this walks the raw config structs' fields (through
//! serde, so a field added to `raw.rs` is seen without editing this test) and fails for each one the
//! example does not set. Fields the example sets but the structs lack are already refused by
//! `deny_unknown_fields` in `every_example_parses`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// A field's place in the file: names, `[]` for the elements of an array of tables, `*` for a key
/// the user chooses (a price's model name).
type FieldPath = Vec<String>;

#[test]
fn the_full_example_sets_every_field() {
    let fields = raw_fields();
    // Guards the tracer: if it stopped descending, it would find nothing missing.
    for known in [
        &["server", "listen"][..],
        &["server", "tls", "cert"],
        &["upstreams", "[]", "timeouts", "idle"],
        &["models", "[]", "targets", "[]", "upstream"],
        &["prices", "*", "cached_input"],
        &["plugins", "[]", "config"],
        &["state", "plugin_cache"],
        &["admin", "keys"],
        &["chain"],
    ] {
        assert!(fields.iter().any(|f| f == known), "the walk missed {known:?}; it found {fields:?}");
    }

    let example: toml::Table = include_str!("../examples/full.toml").parse().expect("full.toml is TOML");
    let mut set = BTreeSet::new();
    document_paths(&toml::Value::Table(example), &mut Vec::new(), &mut set);
    let missing: Vec<String> =
        fields.iter().filter(|field| !set.iter().any(|path| matches(field, path))).map(|f| display(f)).collect();
    assert!(missing.is_empty(), "config/examples/full.toml does not show these settings: {missing:?}");
}

/// `upstreams[].timeouts.idle`.
fn display(path: &[String]) -> String {
    path.join(".").replace(".[]", "[]")
}

/// Every field of the raw config, found by deserializing it from [`Tracer`].
fn raw_fields() -> BTreeSet<FieldPath> {
    let fields = RefCell::new(BTreeSet::new());
    weir_config::deserialize_raw(Tracer { path: Vec::new(), fields: &fields }).expect("the tracer feeds every field");
    fields.into_inner()
}

/// Every key path the TOML document sets, tables and arrays of tables descended into.
fn document_paths(value: &toml::Value, path: &mut Vec<String>, out: &mut BTreeSet<FieldPath>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                path.push(key.clone());
                out.insert(path.clone());
                document_paths(value, path, out);
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            path.push("[]".to_owned());
            for item in items.iter().filter(|item| item.is_table()) {
                document_paths(item, path, out);
            }
            path.pop();
        }
        _ => {}
    }
}

/// Whether the document path `path` sets the field `field` (`*` stands for any key).
fn matches(field: &[String], path: &[String]) -> bool {
    field.len() == path.len() && field.iter().zip(path).all(|(f, p)| f == "*" || f == p)
}

/// A deserializer that answers every question a derived `Deserialize` asks with a made-up value,
/// and records the path of every struct field it is asked for. Options are present, arrays and maps
/// hold one element, so every nested struct is reached.
struct Tracer<'a> {
    path: FieldPath,
    fields: &'a RefCell<BTreeSet<FieldPath>>,
}

impl Tracer<'_> {
    fn child(&self, segment: &str) -> Self {
        let mut path = self.path.clone();
        path.push(segment.to_owned());
        Tracer { path, fields: self.fields }
    }
}

#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    /// Only free-form values ask for "anything" (a plugin's `config` table): a string will do.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(true)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char('x')
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"x")
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"x")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(self.child("[]"))))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Entries { keys: ["*"].iter().copied(), tracer: self, value: None, record: false })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Entries { keys: fields.iter().copied(), tracer: self, value: None, record: true })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(Error(format!("the tracer does not handle enums yet ({name} at {:?}); teach it", self.path)))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// An array of one element.
struct OneElement<'a>(Option<Tracer<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|tracer| seed.deserialize(tracer)).transpose()
    }
}

/// A struct's fields (each recorded as it is handed out) or a map's one entry.
struct Entries<'a> {
    keys: std::iter::Copied<std::slice::Iter<'static, &'static str>>,
    tracer: Tracer<'a>,
    /// The tracer for the next value, set by `next_key_seed`.
    value: Option<Tracer<'a>>,
    record: bool,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(key) = self.keys.next() else { return Ok(None) };
        let value = self.tracer.child(key);
        if self.record {
            self.tracer.fields.borrow_mut().insert(value.path.clone());
        }
        self.value = Some(value);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let tracer = self.value.take().ok_or_else(|| Error("a value before its key".to_owned()))?;
        seed.deserialize(tracer)
    }
}
