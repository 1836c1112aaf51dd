//! Topic selectors: what a subscriber asks for, and what a token's claims allow.
//!
//! A selector is `*` (every topic), a URI template (RFC 6570, contains `{`), or an exact topic;
//! the Mercure 1.0 draft adds `match=` (always exact) and `match_urlpattern=` (see
//! [`urlpattern`]).
//! Selectors are compiled once, when a subscriber connects or a token is verified, through a
//! bounded [`SelectorCache`], and shared ([`Selector`] is cheap to clone). Matching an exact
//! selector is a string comparison; the hub does not even do that, it indexes exact topics in a
//! map. Templates run a linear-time matcher (see [`template`]).

pub mod template;
pub mod urlpattern;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use crate::update::{InvalidInput, Topic};
pub use template::{Template, TemplateError};
pub use urlpattern::UrlPattern;

/// Prefix of the index key of URL-pattern selectors. Selectors cannot contain control
/// characters, so no template or topic can collide with it.
const URL_PATTERN_KEY: &str = "\u{1}urlpattern:";

/// A compiled selector.
#[derive(Debug, Clone)]
pub enum Selector {
    /// `*`: every topic.
    Any,
    /// One topic, compared exactly.
    Exact(Arc<str>),
    /// A URI template, and its source text.
    Template {
        /// The template as the subscriber wrote it (the key under which it is indexed).
        source: Arc<str>,
        /// Its compiled matcher.
        template: Arc<Template>,
    },
    /// A `match_urlpattern=` selector (Mercure 1.0 draft).
    UrlPattern {
        /// The key under which it is indexed and cached (the source with a prefix that no
        /// template can have).
        key: Arc<str>,
        /// Its compiled matcher.
        pattern: Arc<UrlPattern>,
    },
}

impl Selector {
    /// Compiles one selector without a cache (the cache calls this on a miss).
    ///
    /// # Errors
    /// [`InvalidInput`] for an empty selector, one longer than `max_len` bytes, one with control
    /// characters, or a malformed URI template.
    pub fn compile(source: &str, max_len: usize) -> Result<Self, InvalidInput> {
        if source == "*" {
            return Ok(Selector::Any);
        }
        // Same rules as a topic: not empty, bounded, no control characters.
        let topic = Topic::new(source, max_len)
            .map_err(|e| InvalidInput::new("topic selector", e.reason))?;
        if !source.contains(['{', '}']) {
            return Ok(Selector::Exact(Arc::from(topic.as_str())));
        }
        let template = Template::compile(source).map_err(|e| {
            InvalidInput::new(
                "topic selector",
                format!("{source:?} is not a valid URI template: {e}"),
            )
        })?;
        Ok(Selector::Template {
            source: Arc::from(source),
            template: Arc::new(template),
        })
    }

    /// Compiles a `match=` selector: always an exact topic, braces included.
    ///
    /// # Errors
    /// As for a topic: empty, too long, or with control characters.
    pub fn exact(source: &str, max_len: usize) -> Result<Self, InvalidInput> {
        let topic =
            Topic::new(source, max_len).map_err(|e| InvalidInput::new("match", e.reason))?;
        Ok(Selector::Exact(Arc::from(topic.as_str())))
    }

    /// Compiles a `match_urlpattern=` selector.
    ///
    /// # Errors
    /// [`InvalidInput`] for an empty, too long or malformed pattern.
    pub fn url_pattern(source: &str, max_len: usize) -> Result<Self, InvalidInput> {
        Topic::new(source, max_len).map_err(|e| InvalidInput::new("match_urlpattern", e.reason))?;
        let pattern = UrlPattern::compile(source).map_err(|e| {
            InvalidInput::new(
                "match_urlpattern",
                format!("{source:?} is not a supported URL pattern: {e}"),
            )
        })?;
        Ok(Selector::UrlPattern {
            key: Selector::url_pattern_key(source),
            pattern: Arc::new(pattern),
        })
    }

    /// True when this selector matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Exact(t) => **t == *topic,
            Selector::Template { template, .. } => template.matches(topic),
            Selector::UrlPattern { pattern, .. } => pattern.matches(topic),
        }
    }

    /// True when this selector matches at least one of `topics`.
    pub fn matches_any(&self, topics: &[Topic]) -> bool {
        match self {
            Selector::Any => true,
            _ => topics.iter().any(|t| self.matches(t.as_str())),
        }
    }

    /// The selector as written (`*`, the exact topic, the template or the URL pattern).
    pub fn source(&self) -> &str {
        match self {
            Selector::Any => "*",
            Selector::Exact(s) => s,
            Selector::Template { source, .. } => source,
            Selector::UrlPattern { key, .. } => &key[URL_PATTERN_KEY.len()..],
        }
    }

    /// Text that every topic the selector matches starts with, when there is some: the topic of
    /// an exact selector, the literal text before the first expression of a template. `None`
    /// for `*`, for URL patterns and for templates that start with an expression. A bus that
    /// routes by interest listens to the topics with this prefix.
    pub fn topic_prefix(&self) -> Option<&str> {
        match self {
            Selector::Any | Selector::UrlPattern { .. } => None,
            Selector::Exact(topic) => Some(topic),
            Selector::Template { source, .. } => {
                let literal = &source[..source.find('{').unwrap_or(source.len())];
                (!literal.is_empty()).then_some(literal)
            }
        }
    }

    /// A key that identifies the selector's meaning: equal keys match the same topics. The
    /// hub indexes wide selectors under it; it differs from [`Selector::source`] only for URL
    /// patterns, which may be spelled like templates.
    pub fn key(&self) -> &str {
        match self {
            Selector::UrlPattern { key, .. } => key,
            _ => self.source(),
        }
    }

    /// The [`key`](Selector::key) of the `topic=` selector `source` when it is wide (`*` or a
    /// URI template), known before it is compiled: admission counts a stream's wide selectors
    /// before paying for their compilation.
    pub fn wide_key(source: &str) -> Option<Arc<str>> {
        (source == "*" || source.contains(['{', '}'])).then(|| Arc::from(source))
    }

    /// The [`key`](Selector::key) of the `match_urlpattern=` selector `source`.
    pub fn url_pattern_key(source: &str) -> Arc<str> {
        Arc::from(format!("{URL_PATTERN_KEY}{source}"))
    }
}

/// A bounded least-recently-used cache of compiled selectors, shared by every connection of an
/// instance, so that ten thousand subscribers to one template compile it once.
#[derive(Debug)]
pub struct SelectorCache {
    /// A std mutex: nothing awaits while it is held, and the critical section is a map lookup.
    entries: Mutex<lru::LruCache<Box<str>, Selector>>,
    /// Longest selector accepted, in bytes (`max-selector-length`).
    max_len: usize,
}

impl SelectorCache {
    /// A cache holding at most `capacity` compiled selectors, accepting selectors of at most
    /// `max_len` bytes.
    pub fn new(capacity: usize, max_len: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        SelectorCache {
            entries: Mutex::new(lru::LruCache::new(capacity)),
            max_len,
        }
    }

    /// Returns the compiled selector for `source`, compiling it on a miss.
    ///
    /// # Errors
    /// As [`Selector::compile`].
    pub fn get(&self, source: &str) -> Result<Selector, InvalidInput> {
        self.get_or_compile(source, source, Selector::compile)
    }

    /// Returns the `match=` selector for `source` (an exact topic: nothing to compile or cache).
    ///
    /// # Errors
    /// As [`Selector::exact`].
    pub fn get_exact(&self, source: &str) -> Result<Selector, InvalidInput> {
        Selector::exact(source, self.max_len)
    }

    /// Returns the compiled `match_urlpattern=` selector for `source`.
    ///
    /// # Errors
    /// As [`Selector::url_pattern`].
    pub fn get_url_pattern(&self, source: &str) -> Result<Selector, InvalidInput> {
        let key = format!("{URL_PATTERN_KEY}{source}");
        self.get_or_compile(&key, source, Selector::url_pattern)
    }

    fn get_or_compile(
        &self,
        key: &str,
        source: &str,
        compile: fn(&str, usize) -> Result<Selector, InvalidInput>,
    ) -> Result<Selector, InvalidInput> {
        if let Some(hit) = self.lock().get(key) {
            return Ok(hit.clone());
        }
        // Compile outside the lock: a large template must not stall other connections.
        let compiled = compile(source, self.max_len)?;
        self.lock().put(Box::from(key), compiled.clone());
        Ok(compiled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Box<str>, Selector>> {
        // A panic while holding this lock cannot leave the cache inconsistent (each operation
        // is one call into the LRU), so a poisoned lock is still usable.
        crate::locks::lock(&self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_recognised() {
        assert!(matches!(
            Selector::compile("*", 100).unwrap(),
            Selector::Any
        ));
        assert!(matches!(
            Selector::compile("a/b", 100).unwrap(),
            Selector::Exact(_)
        ));
        assert!(matches!(
            Selector::compile("a/{b}", 100).unwrap(),
            Selector::Template { .. }
        ));
        assert!(Selector::compile("a/{b", 100).is_err());
        assert!(Selector::compile("", 100).is_err());
        assert!(Selector::compile(&"x".repeat(101), 100).is_err());
        assert!(matches!(
            Selector::exact("a/{b}", 100).unwrap(),
            Selector::Exact(_)
        ));
    }

    #[test]
    fn url_patterns_and_templates_with_the_same_text_do_not_share_a_key() {
        let cache = SelectorCache::new(10, 100);
        let template = cache.get("/a/{x}").unwrap();
        let pattern = cache.get_url_pattern("/a/{x}").unwrap();
        assert_ne!(template.key(), pattern.key());
        assert_eq!(pattern.source(), "/a/{x}");
        assert!(template.matches("/a/1"));
        assert!(
            pattern.matches("/a/x"),
            "braces group literal text in a URL pattern"
        );
        assert!(!pattern.matches("/a/1"));
    }

    #[test]
    fn the_cache_returns_the_same_compiled_template() {
        let cache = SelectorCache::new(2, 100);
        let a = cache.get("a/{x}").unwrap();
        let b = cache.get("a/{x}").unwrap();
        match (a, b) {
            (Selector::Template { template: a, .. }, Selector::Template { template: b, .. }) => {
                assert!(Arc::ptr_eq(&a, &b))
            }
            _ => panic!("templates expected"),
        }
    }
}
