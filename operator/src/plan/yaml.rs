//! YAML documents read into JSON values with a budget on how many values they may expand to.
//!
//! An alias repeats its anchor's whole value, so a few hundred kilobytes of anchors used many
//! times over spell out billions of values. Text without aliases holds at most about one value
//! per byte (`[a,b]`, `{a,b}`), so a file may expand to [`VALUES_PER_BYTE`] values per byte of
//! it, plus [`VALUES_FREE`]: room for ordinary use of anchors, and a bound linear in the file's
//! size on what any file can make the operator build.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Values a YAML file may expand to, per byte of the file.
pub const VALUES_PER_BYTE: usize = 4;
/// Values a YAML file may expand to besides [`VALUES_PER_BYTE`], so that small files are free.
pub const VALUES_FREE: usize = 10_000;

/// How many values a file of `len` bytes may expand to.
pub fn budget_for(len: usize) -> usize {
    len.saturating_mul(VALUES_PER_BYTE)
        .saturating_add(VALUES_FREE)
}

/// The message of the error a document gets when the file's budget runs out.
pub fn over_budget_message(budget: usize) -> String {
    format!(
        "YAML aliases expand this file to more than {budget} values ({VALUES_PER_BYTE} per byte \
         of the file, plus {VALUES_FREE}); write the repeated parts out or use fewer aliases"
    )
}

/// Deserializes one value, taking one from `left` for every value built (keys count too).
#[derive(Debug, Clone, Copy)]
pub struct Budgeted<'a> {
    /// What is left of the file's budget.
    pub left: &'a Cell<usize>,
    /// The file's whole budget, for the message.
    pub budget: usize,
}

impl Budgeted<'_> {
    fn take<E: de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(rest) => {
                self.left.set(rest);
                Ok(())
            }
            None => Err(E::custom(over_budget_message(self.budget))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A map key: a string, counted as one value.
struct Key<'a>(Budgeted<'a>);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        self.0.take()?;
        <String as serde::Deserialize>::deserialize(deserializer)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.take()?;
        <Number as serde::Deserialize>::deserialize(de::value::I128Deserializer::<E>::new(v))
            .map(Value::Number)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.take()?;
        <Number as serde::Deserialize>::deserialize(de::value::U128Deserializer::<E>::new(v))
            .map(Value::Number)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.take()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut values = Map::new();
        while let Some(key) = map.next_key_seed(Key(self))? {
            let value = map.next_value_seed(self)?;
            values.insert(key, value);
        }
        Ok(Value::Object(values))
    }
}
