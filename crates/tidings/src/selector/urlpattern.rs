//! `match_urlpattern=` selectors of the Mercure 1.0 draft: a practical subset of WHATWG URL
//! Pattern syntax, compiled into a linear-time matcher over the whole topic.
//!
//! Supported: literal text (`\` escapes a character), named groups `:name` (one path segment,
//! `[^/?#]+`; a colon not followed by a letter or `_` is literal, so `https://` and `:8080` need
//! no escape, while `urn\:x` does), the wildcard `*` (anything), groups `{…}`, and the modifiers `?`, `*`, `+` after
//! a named group or a group. Regular-expression groups `(…)` are refused with a clear error:
//! they would let a subscriber submit arbitrary regular expressions.

use regex::Regex;

/// Most groups (`:name`, `*`, `{…}`) in one pattern, for the same reason as
/// [`super::template::MAX_EXPRESSIONS`].
pub const MAX_GROUPS: usize = 16;

/// A compiled URL pattern.
#[derive(Debug)]
pub struct UrlPattern {
    regex: Regex,
}

impl UrlPattern {
    /// Compiles `source`.
    ///
    /// # Errors
    /// A sentence saying what is wrong (unbalanced braces, a regexp group, an empty name).
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut pattern = String::from("^");
        let mut chars = source.chars().peekable();
        let mut depth = 0usize;
        let mut groups = 0usize;
        while let Some(c) = chars.next() {
            let named = c == ':' && chars.peek().is_some_and(|n| n.is_alphabetic() || *n == '_');
            if named || c == '*' || c == '{' {
                groups += 1;
                if groups > MAX_GROUPS {
                    return Err(format!("more than {MAX_GROUPS} groups"));
                }
            }
            match c {
                '\\' => {
                    let escaped = chars.next().ok_or("a trailing backslash escapes nothing")?;
                    pattern.push_str(&regex::escape(escaped.encode_utf8(&mut [0; 4])));
                }
                // A named group starts with a letter or `_`; any other colon (`https://`,
                // `:8080`) is literal.
                ':' if chars.peek().is_some_and(|n| n.is_alphabetic() || *n == '_') => {
                    while chars
                        .next_if(|n| n.is_alphanumeric() || *n == '_')
                        .is_some()
                    {}
                    pattern.push_str("(?:[^/?#]+)");
                    push_modifier(&mut pattern, &mut chars);
                }
                '*' => pattern.push_str("(?:.*)"),
                '{' => {
                    depth += 1;
                    pattern.push_str("(?:");
                }
                '}' => {
                    depth = depth.checked_sub(1).ok_or("a '}' without its '{'")?;
                    pattern.push(')');
                    push_modifier(&mut pattern, &mut chars);
                }
                '(' | ')' => {
                    return Err(
                        "regular-expression groups '(…)' are not supported; use :name or *".into(),
                    )
                }
                other => pattern.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
            }
        }
        if depth != 0 {
            return Err("a '{' without its '}'".into());
        }
        pattern.push('$');
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(256 * 1024)
            .dfa_size_limit(256 * 1024)
            .build()
            .map_err(|_| "the pattern is too complex".to_owned())?;
        Ok(UrlPattern { regex })
    }

    /// True when the whole `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        self.regex.is_match(topic)
    }
}

fn push_modifier(pattern: &mut String, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    if let Some(&m) = chars.peek() {
        if matches!(m, '?' | '*' | '+') {
            pattern.push(m);
            chars.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, topic: &str) -> bool {
        UrlPattern::compile(p).unwrap().matches(topic)
    }

    #[test]
    fn named_groups_match_one_segment() {
        assert!(m(
            "https://example.com/books/:id",
            "https://example.com/books/42"
        ));
        assert!(!m(
            "https://example.com/books/:id",
            "https://example.com/books/42/reviews"
        ));
        assert!(!m(
            "https://example.com/books/:id",
            "https://example.com/books/"
        ));
        assert!(m(
            "https://example.com/books/:id?",
            "https://example.com/books/"
        ));
    }

    #[test]
    fn wildcards_groups_and_escapes() {
        assert!(m("https://example.com/*", "https://example.com/a/b"));
        assert!(m("/books{/:id}?", "/books"));
        assert!(m("/books{/:id}?", "/books/1"));
        assert!(m("urn\\:x\\:y", "urn:x:y"));
        assert!(m("http://h:8080/:id", "http://h:8080/1"));
        assert!(!m("a.b", "aXb"), "dots are literal");
    }

    #[test]
    fn unsupported_or_malformed_patterns_are_refused() {
        assert!(UrlPattern::compile(&"/:a".repeat(MAX_GROUPS)).is_ok());
        for bad in [
            "/books/(\\d+)",
            "{a",
            "a}",
            "x\\",
            &"/:a".repeat(MAX_GROUPS + 1),
        ] {
            assert!(UrlPattern::compile(bad).is_err(), "{bad:?}");
        }
    }
}
