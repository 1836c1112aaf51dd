//! The bus wire-format decoder: any text a broker hands over is decoded without panicking, and
//! a message it accepts encodes to one that decodes to the same update (so an update crossing
//! several buses or instances is never altered). Every update it accepts passes the same
//! validation an HTTP publish does.

use tidings::bus::wire;
use tidings::update::Limits;

/// Runs the check on one input; panics when it does not hold.
pub(crate) fn run(text: &str) {
    let limits = Limits::default();
    let Ok(update) = wire::decode(text, || tidings::update::UpdateId::derived(1), &limits) else {
        return;
    };
    assert!(!update.topics.is_empty());
    assert!(update.topics.len() <= limits.max_topics_per_update);
    assert!(update.id.as_str().len() <= limits.max_id_length);
    assert!(!update.id.as_str().contains(['\r', '\n', '\0']));
    let again = wire::decode(
        &wire::encode(&update),
        || unreachable!("it has an id"),
        &limits,
    )
    .expect("an encoded update decodes");
    assert_eq!(again, update);
}
