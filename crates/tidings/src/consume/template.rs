//! The templates of a consumer's mapping: text with holes filled from the message — `{0}` the
//! whole channel (routing key, subject, topic), `{1}`, `{2}`… what the wildcards of the
//! matching pattern matched, `{/json/pointer}` a field of the message's JSON body, `{key}` a
//! Kafka record's key. Written by hand because it is the mapping's own small language:
//! compiled once at start-up, so that a message costs a walk over its parts.

use std::fmt;

/// One hole of a template, or text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `{0}` (the whole name) or `{n}` (the n-th wildcard's match).
    Capture(usize),
    /// `{/a/b}`: a JSON pointer into the body.
    Field(String),
    /// `{key}`: the record's key (Kafka).
    Key,
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// What a template is filled from.
pub struct Values<'a> {
    /// The channel, routing key, subject or topic the message came on.
    pub name: &'a str,
    /// What the wildcards of the matching pattern matched, in order.
    pub captures: &'a [&'a str],
    /// The body, when it parsed as JSON.
    pub json: Option<&'a serde_json::Value>,
    /// The record's key, where the source has one.
    pub key: Option<&'a str>,
}

/// Why a template could not be filled (the metric label, and what to say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfilled {
    /// The body is not JSON, and the template reads a field of it.
    NotJson,
    /// The field is missing or null.
    MissingField(String),
    /// A wildcard the pattern does not have, or a key the record does not have.
    MissingPart(String),
}

impl fmt::Display for Unfilled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfilled::NotJson => f.write_str("the body is not JSON"),
            Unfilled::MissingField(p) => write!(f, "the body has no field {p} (or it is null)"),
            Unfilled::MissingPart(p) => write!(f, "the message has no {p}"),
        }
    }
}

impl Template {
    /// Compiles `source`; `{{` and `}}` stand for braces.
    ///
    /// # Errors
    /// What is wrong with the template, to show beside the option's name.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(format!("a lone }} at byte {at} (write }}}} for a brace)")),
                '{' => {
                    let rest = &source[at + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("a {{ at byte {at} is never closed"))?;
                    let hole = &rest[..end];
                    for _ in 0..hole.chars().count() + 1 {
                        chars.next();
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Self::hole(hole)?);
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    fn hole(hole: &str) -> Result<Part, String> {
        if hole == "key" {
            Ok(Part::Key)
        } else if hole.starts_with('/') {
            Ok(Part::Field(hole.to_owned()))
        } else if let Ok(n) = hole.parse::<usize>() {
            Ok(Part::Capture(n))
        } else {
            Err(format!(
                "{{{hole}}} is not a hole: write {{0}} (the whole channel, routing key, subject \
                 or topic), {{1}}, {{2}}… (what the pattern's wildcards matched), {{/a/b}} (a \
                 field of the JSON body) or {{key}} (the record's key)"
            ))
        }
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The highest wildcard it reads (`{2}` → 2; 0 when none).
    pub fn max_capture(&self) -> usize {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Capture(n) => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether it reads the body's JSON.
    pub fn reads_json(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The template filled in.
    ///
    /// # Errors
    /// [`Unfilled`] naming the part the message lacks.
    pub fn fill(&self, values: &Values<'_>) -> Result<String, Unfilled> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Capture(0) => out.push_str(values.name),
                Part::Capture(n) => out.push_str(
                    values
                        .captures
                        .get(n - 1)
                        .ok_or_else(|| Unfilled::MissingPart(format!("wildcard {{{n}}}")))?,
                ),
                Part::Key => out.push_str(
                    values
                        .key
                        .ok_or_else(|| Unfilled::MissingPart("record key".into()))?,
                ),
                Part::Field(pointer) => {
                    let json = values.json.ok_or(Unfilled::NotJson)?;
                    match json.pointer(pointer) {
                        None | Some(serde_json::Value::Null) => {
                            return Err(Unfilled::MissingField(pointer.clone()))
                        }
                        Some(value) => push_value(&mut out, value),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A JSON value as text: a string as it is, anything else as its JSON.
pub fn push_value(out: &mut String, value: &serde_json::Value) {
    match value {
        serde_json::Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fill(
        template: &str,
        name: &str,
        captures: &[&str],
        json: Option<&serde_json::Value>,
    ) -> Result<String, Unfilled> {
        Template::parse(template).unwrap().fill(&Values {
            name,
            captures,
            json,
            key: None,
        })
    }

    #[test]
    fn holes_are_filled_from_the_name_the_wildcards_and_the_body() {
        let body = json!({"org": {"id": 7}, "event": "e-1", "tags": ["a"]});
        assert_eq!(
            fill(
                "https://example.com/orgs/{/org/id}/{1}/{/event}",
                "sample:7:x",
                &["7:x"],
                Some(&body)
            )
            .unwrap(),
            "https://example.com/orgs/7/7:x/e-1"
        );
        assert_eq!(
            fill("{0}", "subtitles:job:42", &[], None).unwrap(),
            "subtitles:job:42"
        );
        assert_eq!(fill("{/tags}", "c", &[], Some(&body)).unwrap(), "[\"a\"]");
        assert_eq!(
            fill("a {{literal}} b", "c", &[], None).unwrap(),
            "a {literal} b"
        );
    }

    #[test]
    fn what_the_message_lacks_is_named() {
        let body = json!({"a": null});
        assert_eq!(
            fill("{/a}", "c", &[], Some(&body)),
            Err(Unfilled::MissingField("/a".into()))
        );
        assert_eq!(
            fill("{/b}", "c", &[], Some(&body)),
            Err(Unfilled::MissingField("/b".into()))
        );
        assert_eq!(fill("{/b}", "c", &[], None), Err(Unfilled::NotJson));
        assert_eq!(
            fill("{2}", "c", &["x"], None),
            Err(Unfilled::MissingPart("wildcard {2}".into()))
        );
        assert_eq!(
            Template::parse("{key}").unwrap().fill(&Values {
                name: "t",
                captures: &[],
                json: None,
                key: None
            }),
            Err(Unfilled::MissingPart("record key".into()))
        );
    }

    #[test]
    fn bad_templates_say_what_to_write() {
        assert!(Template::parse("{nope}").unwrap_err().contains("{0}"));
        assert!(Template::parse("open {1")
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("a } b").unwrap_err().contains("lone }"));
        let t = Template::parse("{1}-{3}-{/x}").unwrap();
        assert_eq!((t.max_capture(), t.reads_json()), (3, true));
    }
}
