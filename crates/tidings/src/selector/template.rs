//! RFC 6570 URI templates compiled into linear-time matchers.
//!
//! No crate matches topics against templates, so this is ours: a template is parsed into
//! literals and expressions, and each expression becomes a regular expression for the strings
//! its expansion can produce. The `regex` crate guarantees matching in time linear in the
//! topic's length, whatever the template (no backtracking). The language matched is a slight
//! superset of the exact expansions (a list or an exploded value is matched as "allowed
//! characters and separators", not structure by structure): every expansion of the template
//! matches, which is the property that matters, and is proven by a property test.

use regex::Regex;

/// A compiled URI template.
#[derive(Debug)]
pub struct Template {
    regex: Regex,
}

/// Why a template could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`, or a `}` without its `{`.
    #[error("unbalanced braces at byte {0}")]
    Unbalanced(usize),
    /// `{}` or a variable name with characters RFC 6570 does not allow.
    #[error("invalid variable name {0:?}")]
    BadVariable(String),
    /// An operator RFC 6570 reserves for future use (`=`, `,`, `!`, `@`, `|`).
    #[error("reserved operator {0:?}")]
    ReservedOperator(char),
    /// A prefix modifier that is not 1..=9999.
    #[error("invalid prefix length in {0:?}")]
    BadPrefix(String),
    /// The generated matcher exceeded the size limit (a template far too large).
    #[error("template too complex")]
    TooComplex,
    /// More expressions than [`MAX_EXPRESSIONS`].
    #[error("more than {MAX_EXPRESSIONS} expressions")]
    TooManyExpressions,
}

/// Most `{…}` expressions in one template: real topic templates have a handful, and each adds
/// states to the matcher that every publish may run.
pub const MAX_EXPRESSIONS: usize = 16;

/// Size limit of one compiled matcher, in bytes.
const MATCHER_SIZE_LIMIT: usize = 256 * 1024;

/// Characters of the `unreserved` set, plus any non-ASCII character (topics are IRIs, and IRI
/// templates allow `ucschar`), plus percent-encoded octets.
const UNRESERVED: &str = r"(?:[A-Za-z0-9\-._~\x{80}-\x{10FFFF}]|%[0-9A-Fa-f]{2})";
/// `unreserved` plus `reserved` (`:/?#[]@!$&'()*+,;=`), for the `+` and `#` operators.
const UNRESERVED_OR_RESERVED: &str =
    r"(?:[A-Za-z0-9\-._~\x{80}-\x{10FFFF}:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})";

/// The expansion rules of one operator (RFC 6570 appendix A).
struct Operator {
    first: &'static str,
    sep: &'static str,
    named: bool,
    allow_reserved: bool,
}

fn operator(c: Option<char>) -> Result<Operator, TemplateError> {
    let op = |first, sep, named, allow_reserved| Operator {
        first,
        sep,
        named,
        allow_reserved,
    };
    Ok(match c {
        None => op("", ",", false, false),
        Some('+') => op("", ",", false, true),
        Some('#') => op("#", ",", false, true),
        Some('.') => op(".", ".", false, false),
        Some('/') => op("/", "/", false, false),
        Some(';') => op(";", ";", true, false),
        Some('?') => op("?", "&", true, false),
        Some('&') => op("&", "&", true, false),
        Some(c @ ('=' | ',' | '!' | '@' | '|')) => return Err(TemplateError::ReservedOperator(c)),
        Some(_) => unreachable!("only operator characters are passed"),
    })
}

impl Template {
    /// Compiles `source` (which must contain at least one expression to be worth it, but a
    /// template of literals only is accepted and matches itself).
    ///
    /// # Errors
    /// [`TemplateError`] when the template is not valid RFC 6570.
    pub fn compile(source: &str) -> Result<Self, TemplateError> {
        let mut pattern = String::with_capacity(source.len() * 4);
        pattern.push('^');
        let mut rest = source;
        let mut offset = 0;
        let mut expressions = 0;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pattern.push_str(&regex::escape(rest));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(TemplateError::Unbalanced(offset + i));
                }
                Some(i) => {
                    pattern.push_str(&regex::escape(&rest[..i]));
                    let close = rest[i + 1..]
                        .find(['{', '}'])
                        .filter(|j| rest.as_bytes()[i + 1 + j] == b'}')
                        .ok_or(TemplateError::Unbalanced(offset + i))?;
                    expressions += 1;
                    if expressions > MAX_EXPRESSIONS {
                        return Err(TemplateError::TooManyExpressions);
                    }
                    let expr = &rest[i + 1..i + 1 + close];
                    push_expression(&mut pattern, expr)?;
                    let consumed = i + 1 + close + 1;
                    rest = &rest[consumed..];
                    offset += consumed;
                }
            }
        }
        pattern.push('$');
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(MATCHER_SIZE_LIMIT)
            .dfa_size_limit(MATCHER_SIZE_LIMIT)
            .build()
            .map_err(|_| TemplateError::TooComplex)?;
        Ok(Template { regex })
    }

    /// True when `topic` is one of the strings the template can expand to.
    pub fn matches(&self, topic: &str) -> bool {
        self.regex.is_match(topic)
    }
}

/// Appends the pattern for one `{…}` expression.
fn push_expression(pattern: &mut String, expr: &str) -> Result<(), TemplateError> {
    let op_char = expr.chars().next().filter(|c| "+#./;?&=,!@|".contains(*c));
    let op = operator(op_char)?;
    let vars = &expr[op_char.map_or(0, char::len_utf8)..];
    let mut names = Vec::new();
    for spec in vars.split(',') {
        let name = match spec.split_once(':') {
            Some((name, prefix)) => {
                let ok = !prefix.is_empty()
                    && prefix.len() <= 4
                    && prefix.bytes().all(|b| b.is_ascii_digit())
                    && !prefix.starts_with('0');
                if !ok {
                    return Err(TemplateError::BadPrefix(spec.to_owned()));
                }
                name
            }
            None => spec.strip_suffix('*').unwrap_or(spec),
        };
        if !valid_varname(name) {
            return Err(TemplateError::BadVariable(spec.to_owned()));
        }
        names.push(name);
    }
    let value = if op.allow_reserved {
        UNRESERVED_OR_RESERVED
    } else {
        UNRESERVED
    };
    // One item of the expansion: for named operators `name=value`, `name` or (exploded maps)
    // `key=value`; otherwise a value, where list items and exploded pairs add `,` and `=`.
    let item = if op.named {
        format!(r"(?:{value}|=|,)*")
    } else {
        format!(r"(?:{value}|,|=)*")
    };
    let sep = regex::escape(op.sep);
    let first = regex::escape(op.first);
    // Undefined variables expand to nothing, so the whole expression is optional, and so is
    // each item after the first.
    pattern.push_str(&format!("(?:{first}{item}(?:{sep}{item})*)?"));
    Ok(())
}

/// RFC 6570 `varname`: `varchar *( ["."] varchar )`, `varchar = ALPHA / DIGIT / "_" / pct-encoded`.
fn valid_varname(name: &str) -> bool {
    if name.is_empty() || name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return false;
    }
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                if !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, topic: &str) -> bool {
        Template::compile(t).unwrap().matches(topic)
    }

    #[test]
    fn simple_expressions_stop_at_slashes() {
        assert!(m(
            "https://example.com/books/{id}",
            "https://example.com/books/42"
        ));
        assert!(!m(
            "https://example.com/books/{id}",
            "https://example.com/books/42/reviews"
        ));
        assert!(!m(
            "https://example.com/books/{id}",
            "https://example.com/authors/42"
        ));
        assert!(m(
            "https://example.com/books/{id}",
            "https://example.com/books/"
        ));
    }

    #[test]
    fn reserved_expansion_crosses_slashes() {
        assert!(m(
            "https://example.com/{+path}",
            "https://example.com/a/b/c"
        ));
        assert!(m("/files{/segments*}", "/files/a/b"));
        assert!(m("/search{?q,lang}", "/search?q=rust&lang=en"));
        assert!(m("/search{?q,lang}", "/search"));
        assert!(m("/x{#frag}", "/x#a/b"));
        assert!(m("/x{.ext}", "/x.json"));
        assert!(m("/m{;a,b}", "/m;a=1;b"));
    }

    #[test]
    fn literals_are_matched_literally() {
        assert!(m("a.b/{x}", "a.b/1"));
        assert!(!m("a.b/{x}", "aXb/1"));
        assert!(m("(x)+/{x}", "(x)+/1"));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "{",
            "}",
            "a{b",
            "{a}}",
            "{}",
            "{=x}",
            "{a b}",
            "{x:0}",
            "{x:10000}",
            "{x:}",
            "{.}",
        ] {
            assert!(Template::compile(bad).is_err(), "{bad:?}");
        }
        assert!(Template::compile("{x:3}").is_ok());
        assert!(Template::compile(&"{a}".repeat(MAX_EXPRESSIONS)).is_ok());
        assert_eq!(
            Template::compile(&"{a}".repeat(MAX_EXPRESSIONS + 1)).unwrap_err(),
            TemplateError::TooManyExpressions
        );
        assert!(Template::compile("{a%20b}").is_ok());
        assert!(Template::compile("{a%2}").is_err());
    }
}
