//! Input that must follow a rule, one type per rule. Each type is the rule's only home: its
//! `parse` is what HTTP bodies, paths and queries (through `Deserialize`), the command line
//! (through `FromStr`) and the registry all go through, and its OpenAPI schema is built from the
//! same constants, so a document, a handler and the CLI cannot disagree.

use std::fmt;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// A type that holds only values following its rule.
pub trait Rule: Sized {
    /// The value `s` stands for, or why it breaks the rule.
    fn parse(s: &str) -> Result<Self, String>;

    /// The JSON Schema of the text [`Rule::parse`] accepts.
    fn schema() -> ObjectBuilder;
}

/// A JSON Schema string of `pattern`, `min`–`max` characters.
pub fn string_schema(
    pattern: impl Into<String>,
    min: Option<usize>,
    max: Option<usize>,
) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(min)
        .max_length(max)
}

/// The serde, `FromStr`, `Display` and OpenAPI plumbing of a [`Rule`] type that reads from and
/// writes to a string.
macro_rules! text_rule {
    ($name:ident) => {
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$name as $crate::domain::text::Rule>::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$name as $crate::domain::text::Rule>::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                <$name as $crate::domain::text::Rule>::schema()
                    .build()
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use text_rule;

/// An operator's label for a key, a token or a signal: at most [`Label::MAX_CHARS`] characters
/// as given, no NUL (PostgreSQL text cannot hold it); kept without surrounding blanks, and a
/// label that is blank is no label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label(String);

impl Label {
    pub const MAX_CHARS: usize = 200;

    /// The label without surrounding blanks; `None` when blank.
    pub fn get(&self) -> Option<&str> {
        Some(self.0.as_str()).filter(|l| !l.is_empty())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Rule for Label {
    fn parse(s: &str) -> Result<Self, String> {
        if s.chars().count() > Self::MAX_CHARS || s.contains('\0') {
            return Err(format!(
                "must be at most {} characters, without NUL",
                Self::MAX_CHARS
            ));
        }
        Ok(Label(s.trim().to_owned()))
    }

    fn schema() -> ObjectBuilder {
        string_schema(NO_NUL, None, Some(Self::MAX_CHARS))
    }
}
text_rule!(Label);

/// Any text without NUL.
const NO_NUL: &str = "^[^\\u0000]*$";

/// The characters Rust's `char::is_whitespace` (Unicode White_Space) takes for blanks, as a
/// JSON Schema character class body.
const WHITE_SPACE_CLASS: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// A tenant's name: 1–[`TenantName::MAX_CHARS`] characters as given, not all blank (Unicode
/// White_Space), no NUL; kept without surrounding blanks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    pub const MAX_CHARS: usize = 200;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Rule for TenantName {
    fn parse(s: &str) -> Result<Self, String> {
        if s.chars().count() > Self::MAX_CHARS
            || s.contains('\0')
            || s.chars().all(char::is_whitespace)
        {
            return Err(format!(
                "tenant name must be 1-{} characters, not all blank, without NUL",
                Self::MAX_CHARS
            ));
        }
        Ok(TenantName(s.trim().to_owned()))
    }

    fn schema() -> ObjectBuilder {
        let pattern = format!("^[^\\u0000]*[^\\u0000{WHITE_SPACE_CLASS}][^\\u0000]*$");
        string_schema(pattern, Some(1), Some(Self::MAX_CHARS))
    }
}
text_rule!(TenantName);

/// A signal's slug: what clients name it by, unique within its tenant.
/// 1–[`Slug::MAX_LEN`] characters of `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Rule for Slug {
    fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Slug(s.to_owned()))
        } else {
            Err(format!(
                "invalid slug {s:?}: use 1-{} characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                Self::MAX_LEN
            ))
        }
    }

    fn schema() -> ObjectBuilder {
        string_schema(
            format!("^[a-z0-9][a-z0-9_-]{{0,{}}}$", Self::MAX_LEN - 1),
            None,
            None,
        )
    }
}
text_rule!(Slug);

/// The type of CRM object an event is about: `account`, `contact`, `deal`, `lead`, or a custom
/// type; 1–[`IdentityType::MAX_LEN`] characters of `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityType(String);

impl IdentityType {
    pub const MAX_LEN: usize = 64;

    /// The rule itself, for parsers that keep the text they were given.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Rule for IdentityType {
    fn parse(s: &str) -> Result<Self, String> {
        if Self::is_valid(s) {
            Ok(IdentityType(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not valid: 1-{} characters of a-z, 0-9, '_' and '-'",
                Self::MAX_LEN
            ))
        }
    }

    fn schema() -> ObjectBuilder {
        string_schema(format!("^[a-z0-9_-]{{1,{}}}$", Self::MAX_LEN), None, None)
    }
}
text_rule!(IdentityType);

/// The id of a CRM object in the customer's system: 1–[`IdentityId::MAX_CHARS`] characters,
/// no NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityId(String);

impl IdentityId {
    pub const MAX_CHARS: usize = 256;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Rule for IdentityId {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().count() > Self::MAX_CHARS || s.contains('\0') {
            return Err(format!(
                "must be 1-{} characters, without NUL",
                Self::MAX_CHARS
            ));
        }
        Ok(IdentityId(s.to_owned()))
    }

    fn schema() -> ObjectBuilder {
        string_schema("^[^\\u0000]+$", Some(1), Some(Self::MAX_CHARS))
    }
}
text_rule!(IdentityId);

/// A per-minute rate limit a signal can carry: 1 to `i32::MAX` (the registry's column), read
/// from any JSON number with no fraction (`500`, `500.0`), as JSON Schema's `integer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerMinute(u32);

impl PerMinute {
    pub const MAX: u32 = i32::MAX as u32;

    pub fn new(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(n @ 1..=Self::MAX) => Ok(PerMinute(n)),
            _ => Err(format!(
                "limit must be a positive number of events per minute, at most {}",
                Self::MAX
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::str::FromStr for PerMinute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n = s
            .parse::<i64>()
            .map_err(|_| format!("limit {s:?} is not a whole number"))?;
        Self::new(n)
    }
}

impl<'de> serde::Deserialize<'de> for PerMinute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let whole = super::whole_number(&n).ok_or_else(|| {
            serde::de::Error::custom(format!("{n} is not a whole number in range"))
        })?;
        Self::new(whole).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PerMinute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl utoipa::PartialSchema for PerMinute {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .maximum(Some(Self::MAX))
            .build()
            .into()
    }
}

impl utoipa::ToSchema for PerMinute {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "page_view", "mrr-2", "0day"] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Page", "_x", "a b", "é", &"a".repeat(65)] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_are_measured_as_given_and_kept_trimmed() {
        let padded = format!("{}{}", "x".repeat(195), " ".repeat(10));
        assert!(Label::parse(&padded).is_err(), "205 characters as sent");
        let fits = format!("  {}  ", "x".repeat(196));
        assert_eq!(Label::parse(&fits).unwrap().get(), Some(&*"x".repeat(196)));
        assert_eq!(Label::parse(" \t").unwrap().get(), None);
        assert!(Label::parse("a\0b").is_err());
    }

    #[test]
    fn tenant_names() {
        assert_eq!(TenantName::parse(" Acme ").unwrap().as_str(), "Acme");
        for bad in ["", " ", "\u{3000}\t", "a\0", &"x".repeat(201)] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The schema's blank class is exactly what `parse` takes for blank.
    #[test]
    fn the_white_space_class_is_rusts() {
        let mut listed = Vec::new();
        let class = WHITE_SPACE_CLASS.replace("\\t", "\t").replace("\\n", "\n");
        let class = class.replace("\\f", "\u{c}").replace("\\r", "\r");
        let mut chars = class.chars().peekable();
        let escaped = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let hex: String = chars.by_ref().skip(1).take(4).collect();
            char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
        };
        while let Some(c) = chars.next() {
            let c = if c == '\\' { escaped(&mut chars) } else { c };
            if chars.peek() == Some(&'-') {
                chars.next();
                let end = match chars.next() {
                    Some('\\') => escaped(&mut chars),
                    Some(e) => e,
                    None => unreachable!(),
                };
                listed.extend(c..=end);
            } else {
                listed.push(c);
            }
        }
        let rust: Vec<char> = (char::MIN..=char::MAX)
            .filter(|c| c.is_whitespace())
            .collect();
        assert_eq!(listed, rust);
    }

    #[test]
    fn identities() {
        for ok in ["account", "contact", "deal", "lead", "custom_obj-1"] {
            assert!(IdentityType::parse(ok).is_ok());
        }
        for bad in ["", "Account", "a.b", "ü", &"x".repeat(65)] {
            assert!(IdentityType::parse(bad).is_err());
        }
        assert!(IdentityId::parse(&"é".repeat(256)).is_ok());
        for bad in ["", "a\0", &"x".repeat(257)] {
            assert!(IdentityId::parse(bad).is_err());
        }
    }

    /// What a type's OpenAPI schema accepts is exactly what its `parse` accepts.
    fn schema_agrees<T: Rule + utoipa::PartialSchema>(samples: &[String]) {
        let schema = serde_json::to_value(<T as utoipa::PartialSchema>::schema()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        for s in samples {
            let by_schema = validator.is_valid(&serde_json::json!(s));
            assert_eq!(by_schema, T::parse(s).is_ok(), "{s:?} against {schema}");
        }
    }

    #[test]
    fn schemas_accept_what_parse_accepts() {
        let mut samples: Vec<String> = [
            "",
            " ",
            "\u{3000}\t",
            "a",
            "A",
            "page_view",
            "_x",
            "-x",
            "0day",
            "a b",
            "é",
            "a\0b",
            "ten_AbCdEfGh12345678",
            "ten_AbCdEfGh1234567",
            "ten_AbCdEfGh12345678x",
            "ten_AbCdEfGh1234567-",
            "key_0123456789abcdef",
            "sig_bFyqj0qg",
            "adm_0123456789abcdef",
            "Acme",
            " Acme ",
            "\u{2029}",
            "\u{180e}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [63, 64, 65, 195, 199, 200, 201, 255, 256, 257] {
            samples.push("x".repeat(n));
            samples.push(format!("{}{}", "é".repeat(n - 10), " ".repeat(10)));
        }
        schema_agrees::<Slug>(&samples);
        schema_agrees::<Label>(&samples);
        schema_agrees::<TenantName>(&samples);
        schema_agrees::<IdentityType>(&samples);
        schema_agrees::<IdentityId>(&samples);
        schema_agrees::<super::super::TenantId>(&samples);
        schema_agrees::<super::super::KeyId>(&samples);
        schema_agrees::<super::super::SignalId>(&samples);
        schema_agrees::<super::super::AdminTokenId>(&samples);
    }

    #[test]
    fn limits() {
        assert_eq!(PerMinute::new(500).unwrap().get(), 500);
        for bad in [0, -1, i64::from(i32::MAX) + 1] {
            assert!(PerMinute::new(bad).is_err(), "{bad}");
        }
        let read = |json: &str| serde_json::from_str::<PerMinute>(json).map(PerMinute::get);
        assert_eq!(read("500.0").unwrap(), 500);
        assert!(
            read("1.5")
                .unwrap_err()
                .to_string()
                .contains("is not a whole number")
        );
    }
}
