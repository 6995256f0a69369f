//! Kubernetes resource quantities (`500m`, `2Gi`, `4`) as written in `spec.limits`.
//!
//! The CRD schema types them as int-or-string (so `cpu: 4` and `cpu: "500m"` both work);
//! arithmetic is exact, in thousandths of a unit, so sums of children can be compared to a
//! parent's value without floating point.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A quantity exactly as the user wrote it (normalised to a string).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuantityValue(pub String);

impl QuantityValue {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value in thousandths of a unit (`500m` → 500, `2` → 2000, `1Ki` → 1_024_000).
    pub fn millis(&self) -> Result<i128, QuantityError> {
        parse_millis(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QuantityValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for QuantityValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QuantityValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = QuantityValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity (integer or string such as \"500m\" or \"2Gi\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(QuantityValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(QuantityValue(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(QuantityValue(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(QuantityValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl utoipa::PartialSchema for QuantityValue {
    /// int-or-string, as in the CRD schema (`4`, `"500m"`, `"2Gi"`).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(
                "A Kubernetes quantity: an integer or a string such as \"500m\" or \"2Gi\"",
            ))
            .into()
    }
}

impl utoipa::ToSchema for QuantityValue {}

impl JsonSchema for QuantityValue {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Structural int-or-string: the API server accepts exactly this form.
        json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error(
        "invalid quantity {0:?}: expected a number with an optional suffix (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)"
    )]
    Syntax(String),
    #[error("quantity {0:?} must not be negative")]
    Negative(String),
    #[error("quantity {0:?} is too large")]
    Overflow(String),
    #[error(
        "quantity {0:?} is too large for a quota: at most 9223372036854775807 units (2^63 - 1, the largest value Kubernetes reads as a 64-bit integer)"
    )]
    TooLargeForQuota(String),
}

/// Parses a Kubernetes quantity into thousandths of a unit, rounding up like the API server.
pub fn parse_millis(input: &str) -> Result<i128, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    if s.starts_with('-') {
        return Err(QuantityError::Negative(input.to_string()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(QuantityError::Syntax(input.to_string()));
    }
    let overflow = || QuantityError::Overflow(input.to_string());
    // numerator / denominator represent the decimal number exactly.
    let digits = format!("{int_part}{frac_part}");
    let mut numerator: i128 = 0;
    for c in digits.chars() {
        let d = i128::from(
            c.to_digit(10)
                .ok_or_else(|| QuantityError::Syntax(input.to_string()))?,
        );
        numerator = numerator
            .checked_mul(10)
            .and_then(|n| n.checked_add(d))
            .ok_or_else(overflow)?;
    }
    let frac_len = u32::try_from(frac_part.len()).map_err(|_| overflow())?;
    let denominator = 10i128.checked_pow(frac_len).ok_or_else(overflow)?;
    // multiplier applied to the value, expressed as (mul, div).
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        other => match other.strip_prefix(['e', 'E']).map(str::parse::<u32>) {
            Some(Ok(exp)) if exp <= 18 => (10i128.pow(exp), 1),
            _ => return Err(QuantityError::Syntax(input.to_string())),
        },
    };
    let top = numerator
        .checked_mul(mul)
        .and_then(|n| n.checked_mul(1000))
        .ok_or_else(overflow)?;
    let bottom = denominator.checked_mul(div).ok_or_else(overflow)?;
    // Round up to whole thousandths, as the API server does.
    let rounded = top.checked_add(bottom - 1).ok_or_else(overflow)?;
    Ok(rounded / bottom)
}

/// Formats thousandths of a unit back into a short quantity string (`1500` → `1500m`, `2000` → `2`).
pub fn format_millis(millis: i128) -> String {
    if millis % 1000 == 0 {
        let units = millis / 1000;
        for (suffix, factor) in [
            ("Ei", 1i128 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if units != 0 && units % factor == 0 {
                return format!("{}{suffix}", units / factor);
            }
        }
        units.to_string()
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_millis("500m"), Ok(500));
        assert_eq!(parse_millis("2"), Ok(2000));
        assert_eq!(parse_millis("1.5"), Ok(1500));
        assert_eq!(parse_millis("1Ki"), Ok(1024 * 1000));
        assert_eq!(parse_millis("2Gi"), Ok(2 * (1 << 30) * 1000));
        assert_eq!(parse_millis("1k"), Ok(1_000_000));
        assert_eq!(parse_millis("1e3"), Ok(1_000_000));
        assert_eq!(parse_millis("0.5Gi"), Ok((1i128 << 29) * 1000));
        assert_eq!(parse_millis("0.0001"), Ok(1), "rounds up to a thousandth");
    }

    #[test]
    fn rejects_bad_forms_with_reason() {
        assert!(matches!(parse_millis(""), Err(QuantityError::Empty)));
        assert!(matches!(
            parse_millis("-1"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(parse_millis("abc"), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse_millis("1.2.3"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(parse_millis("5Xi"), Err(QuantityError::Syntax(_))));
        let msg = parse_millis("lots").unwrap_err().to_string();
        assert!(msg.contains("\"lots\""), "{msg}");
    }

    #[test]
    fn rounding_at_the_top_of_the_range_is_an_overflow_not_a_panic() {
        // top = i128::MAX rounded down to thousands; rounding up 3 decimals would overflow.
        assert!(matches!(
            parse_millis("170141183460469231731687303715884.105"),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_millis(500), "500m");
        assert_eq!(format_millis(4000), "4");
        assert_eq!(format_millis(2 * (1 << 30) * 1000), "2Gi");
    }

    #[test]
    fn deserializes_int_or_string() {
        let q: QuantityValue = serde_json::from_str("4").unwrap();
        assert_eq!(q.as_str(), "4");
        let q: QuantityValue = serde_json::from_str("\"250m\"").unwrap();
        assert_eq!(q.millis(), Ok(250));
    }
}
