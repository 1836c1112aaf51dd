//! What the wildcards of a source's pattern matched in a message's name, for the mapping's
//! `{1}`, `{2}`… Each broker has its own pattern language: Redis glob patterns
//! (`PSUBSCRIBE sample:*`), RabbitMQ topic bindings (`orders.*.created`, `audit.#`) and NATS
//! subjects (`jobs.*.done`, `events.>`). The brokers match; this only recovers what matched.

use regex::Regex;

/// A compiled pattern.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// A Redis glob: `*` any run of characters, `?` one character, `[…]` one of a set; each
    /// is a wildcard.
    Glob(Regex),
    /// Words separated by `.`: RabbitMQ's `*` (one word) and `#` (any number of words), or
    /// NATS's `*` (one token) and `>` (one or more, at the end).
    Words {
        /// The pattern's words, wildcards included.
        words: Vec<String>,
        /// `#` (RabbitMQ) or `>` (NATS).
        rest: &'static str,
    },
}

impl Pattern {
    /// A Redis glob pattern.
    ///
    /// # Errors
    /// When the pattern cannot be compiled (an unclosed `[`).
    pub fn redis(glob: &str) -> Result<Self, String> {
        let mut re = String::from("^");
        let mut chars = glob.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' => re.push_str("(.*?)"),
                '?' => re.push_str("(.)"),
                '[' => {
                    // (`[^…]` negates, in Redis as in a regex.)
                    let mut class = String::from("([");
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == ']' {
                            closed = true;
                            break;
                        }
                        if c == '\\' || c == '[' {
                            class.push('\\');
                        }
                        class.push(c);
                    }
                    if !closed {
                        return Err(format!("pattern {glob:?} has a [ that is never closed"));
                    }
                    re.push_str(&class);
                    re.push_str("])");
                }
                '\\' => {
                    if let Some(c) = chars.next() {
                        re.push_str(&regex::escape(&c.to_string()));
                    }
                }
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(Pattern::Glob)
            .map_err(|e| format!("pattern {glob:?}: {e}"))
    }

    /// A RabbitMQ topic binding key.
    pub fn amqp(binding: &str) -> Self {
        Self::words(binding, "#")
    }

    /// A NATS subject.
    pub fn nats(subject: &str) -> Self {
        Self::words(subject, ">")
    }

    fn words(pattern: &str, rest: &'static str) -> Self {
        Pattern::Words {
            words: pattern.split('.').map(str::to_owned).collect(),
            rest,
        }
    }

    /// How many wildcards it has (the highest `{n}` a template may read).
    pub fn wildcards(&self) -> usize {
        match self {
            Pattern::Glob(re) => re.captures_len() - 1,
            Pattern::Words { words, rest } => words
                .iter()
                .filter(|w| w.as_str() == "*" || w.as_str() == *rest)
                .count(),
        }
    }

    /// What each wildcard matched in `name`, or `None` when it does not match.
    pub fn captures<'n>(&self, name: &'n str) -> Option<Vec<&'n str>> {
        match self {
            Pattern::Glob(re) => {
                let caps = re.captures(name)?;
                Some(
                    caps.iter()
                        .skip(1)
                        .map(|m| m.map_or("", |m| m.as_str()))
                        .collect(),
                )
            }
            Pattern::Words { words, rest } => {
                // The byte spans of the name's words, so that a capture of several words is
                // one slice of the name, dots included.
                let mut spans = Vec::new();
                let mut start = 0;
                for word in name.split('.') {
                    spans.push((start, start + word.len()));
                    start += word.len() + 1;
                }
                let mut out = Vec::new();
                match_words(words, rest, name, &spans, &mut out).then_some(out)
            }
        }
    }
}

/// Matches `pattern` against the words at `spans` of `name`, pushing each wildcard's match.
fn match_words<'n>(
    pattern: &[String],
    rest: &str,
    name: &'n str,
    spans: &[(usize, usize)],
    out: &mut Vec<&'n str>,
) -> bool {
    let Some((first, more)) = pattern.split_first() else {
        return spans.is_empty();
    };
    if first == rest {
        // `#` takes zero or more words (RabbitMQ); `>` one or more, and only last (NATS).
        let least = usize::from(rest == ">");
        for taken in least..=spans.len() {
            let matched = if taken == 0 {
                ""
            } else {
                &name[spans[0].0..spans[taken - 1].1]
            };
            out.push(matched);
            if match_words(more, rest, name, &spans[taken..], out) {
                return true;
            }
            out.pop();
        }
        return false;
    }
    let Some((&(from, to), others)) = spans.split_first() else {
        return false;
    };
    let word = &name[from..to];
    if first == "*" {
        out.push(word);
        if match_words(more, rest, name, others, out) {
            return true;
        }
        out.pop();
        return false;
    }
    first == word && match_words(more, rest, name, others, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_globs_give_what_each_wildcard_matched() {
        let p = Pattern::redis("sample:*:*").unwrap();
        assert_eq!(p.wildcards(), 2);
        assert_eq!(p.captures("sample:org-7:e-1"), Some(vec!["org-7", "e-1"]));
        assert_eq!(p.captures("other:1:2"), None);
        let p = Pattern::redis("subtitles:job:?[0-9]").unwrap();
        assert_eq!(p.captures("subtitles:job:42"), Some(vec!["4", "2"]));
        assert_eq!(Pattern::redis("a.b").unwrap().captures("a.b"), Some(vec![]));
        assert_eq!(
            Pattern::redis("a.b").unwrap().captures("axb"),
            None,
            "a dot is a dot"
        );
        assert!(Pattern::redis("job:[0-9")
            .unwrap_err()
            .contains("never closed"));
    }

    #[test]
    fn amqp_bindings_match_words() {
        let p = Pattern::amqp("orders.*.created");
        assert_eq!(p.wildcards(), 1);
        assert_eq!(p.captures("orders.eu.created"), Some(vec!["eu"]));
        assert_eq!(p.captures("orders.eu.west.created"), None);
        let p = Pattern::amqp("audit.#");
        assert_eq!(p.captures("audit"), Some(vec![""]));
        assert_eq!(p.captures("audit.a.b"), Some(vec!["a.b"]));
        let p = Pattern::amqp("#.done.*");
        assert_eq!(p.captures("jobs.42.done.ok"), Some(vec!["jobs.42", "ok"]));
        assert_eq!(Pattern::amqp("plain").captures("plain"), Some(vec![]));
    }

    #[test]
    fn nats_subjects_match_tokens() {
        let p = Pattern::nats("events.>");
        assert_eq!(p.captures("events.a.b"), Some(vec!["a.b"]));
        assert_eq!(p.captures("events"), None, "> takes at least one token");
        assert_eq!(
            Pattern::nats("jobs.*.done").captures("jobs.7.done"),
            Some(vec!["7"])
        );
    }
}
