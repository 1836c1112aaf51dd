//! The selector and URI-template matcher, checked against an independent RFC 6570 expander
//! (`iri-string`): compiling and matching never panic; an exact selector matches only itself;
//! a template that `iri-string` accepts (within the hub's limits) compiles, and matches every
//! URI and IRI it expands to; every topic a selector matches starts with the selector's topic
//! prefix, which is what interest routing subscribes to.

use arbitrary::Arbitrary;
use iri_string::spec::{IriSpec, UriSpec};
use iri_string::template::simple_context::{SimpleContext, Value};
use iri_string::template::UriTemplateStr;
use tidings::selector::template::MAX_EXPRESSIONS;
use tidings::selector::Selector;

const MAX_LEN: usize = 2048;

#[derive(Debug, Arbitrary)]
enum Kind {
    Topic,
    Match,
    UrlPattern,
}

#[derive(Debug, Arbitrary)]
enum ArbValue {
    Undefined,
    String(String),
    List(Vec<String>),
    Assoc(Vec<(String, String)>),
}

#[derive(Debug, Arbitrary)]
pub(crate) struct Input {
    kind: Kind,
    source: String,
    topic: String,
    values: Vec<ArbValue>,
}

/// `iri-string`'s expander panics on a `%` followed by a multi-byte character and on prefixes
/// of multi-byte values (its bugs, not ours): values are kept to ASCII without `%`.
fn tame(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii() && *c != '%')
        .take(16)
        .collect()
}

fn value(v: &ArbValue) -> Value {
    match v {
        ArbValue::Undefined => Value::Undefined,
        ArbValue::String(s) => Value::String(tame(s)),
        ArbValue::List(items) => Value::List(items.iter().take(4).map(|s| tame(s)).collect()),
        ArbValue::Assoc(pairs) => Value::Assoc(
            pairs
                .iter()
                .take(4)
                .map(|(k, v)| (tame(k), tame(v)))
                .collect(),
        ),
    }
}

/// True when every variable specification is as strict as RFC 6570 §2.3 and §2.4.1 says:
/// names are `varchar *( ["."] varchar )` and a prefix is 1 to 9999. `iri-string` is more
/// lenient (it takes `a.`, `a..b` and `:0`), and the hub follows the RFC.
fn strict_varspecs(source: &str) -> bool {
    source.split('{').skip(1).all(|rest| {
        let inside = rest.split('}').next().unwrap_or("");
        let specs = inside.trim_start_matches(['+', '#', '.', '/', ';', '?', '&']);
        specs.split(',').all(|spec| {
            let (name, prefix) = match spec.split_once(':') {
                Some((name, prefix)) => (name, Some(prefix)),
                None => (spec.trim_end_matches('*'), None),
            };
            let name_ok = !name.starts_with('.') && !name.ends_with('.') && !name.contains("..");
            let prefix_ok = prefix.is_none_or(|p| {
                (1..=4).contains(&p.len())
                    && !p.starts_with('0')
                    && p.bytes().all(|b| b.is_ascii_digit())
            });
            name_ok && prefix_ok
        })
    })
}

fn check_prefix(selector: &Selector, topic: &str) {
    if let Some(prefix) = selector.topic_prefix() {
        if selector.matches(topic) {
            assert!(
                topic.starts_with(prefix),
                "{topic:?} matches {:?} but does not start with {prefix:?}",
                selector.source()
            );
        }
    }
}

/// Runs the check on one input; panics when it does not hold.
pub(crate) fn run(input: Input) {
    let compiled = match input.kind {
        Kind::Topic => Selector::compile(&input.source, MAX_LEN),
        Kind::Match => Selector::exact(&input.source, MAX_LEN),
        Kind::UrlPattern => Selector::url_pattern(&input.source, MAX_LEN),
    };
    if let Ok(selector) = &compiled {
        check_prefix(selector, &input.topic);
        if let Selector::Exact(exact) = selector {
            assert_eq!(selector.matches(&input.topic), **exact == *input.topic);
            assert!(selector.matches(exact));
        }
    }
    if !matches!(input.kind, Kind::Topic) || !input.source.contains(['{', '}']) {
        return;
    }
    // `iri-string`'s parser panics on a `%` followed by a multi-byte character (its bug).
    let escape_then_multibyte = input
        .source
        .match_indices('%')
        .any(|(i, _)| !input.source[i + 1..].chars().take(2).all(|c| c.is_ascii()));
    if escape_then_multibyte {
        return;
    }
    let Ok(template) = UriTemplateStr::new(&input.source) else {
        return;
    };
    let within_limits = input.source.len() <= MAX_LEN
        && !input.source.chars().any(char::is_control)
        && input.source.matches('{').count() <= MAX_EXPRESSIONS
        && strict_varspecs(&input.source);
    if !within_limits {
        return;
    }
    let selector = match compiled {
        Ok(selector) => selector,
        Err(e) => panic!(
            "{:?} is a valid URI template but was refused: {e}",
            input.source
        ),
    };
    let mut context = SimpleContext::new();
    for (name, v) in template.variables().zip(input.values.iter().cycle()) {
        context.insert(name.as_str(), value(v));
    }
    let uri = template
        .expand::<UriSpec, _>(&context)
        .map(|e| e.to_string());
    let iri = template
        .expand::<IriSpec, _>(&context)
        .map(|e| e.to_string());
    for expanded in [uri, iri].into_iter().flatten() {
        assert!(
            selector.matches(&expanded),
            "{:?} should match its expansion {expanded:?}",
            input.source
        );
        check_prefix(&selector, &expanded);
    }
}
