//! Every input of the committed fuzz corpus (`fuzz/corpus/<target>`) through the same check
//! its cargo-fuzz target runs (`fuzz/checks/<target>.rs`), decoded from its bytes as
//! libFuzzer hands them over. Coverage-guided runs that grow the corpus are `.ci/fuzz` and
//! `cargo fuzz run` (see `fuzz/README.md`); this holds every build to what they found.

use arbitrary::{Arbitrary, Unstructured};

#[path = "../../../../fuzz/checks/publish.rs"]
mod publish;
#[path = "../../../../fuzz/checks/selector.rs"]
mod selector;
#[path = "../../../../fuzz/checks/sse_encoder.rs"]
mod sse_encoder;
#[path = "../../../../fuzz/checks/wire.rs"]
mod wire;

/// The inputs of one target's corpus, in a stable order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    assert!(inputs.len() > 100, "{target}: the corpus is missing");
    inputs
}

/// Runs `check` on every input of `target`'s corpus that decodes as its input type (as
/// libFuzzer does: an input that does not decode is skipped there too).
fn replay<T: for<'a> Arbitrary<'a>>(target: &str, check: impl Fn(T)) {
    let inputs = corpus(target);
    let mut checked = 0;
    for (name, bytes) in &inputs {
        if let Ok(input) = T::arbitrary_take_rest(Unstructured::new(bytes)) {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
            assert!(run.is_ok(), "fuzz/corpus/{target}/{name} fails its check");
            checked += 1;
        }
    }
    // Inputs that no longer decode (the input type changed) would make this pass vacuously.
    assert!(
        checked * 10 >= inputs.len() * 9,
        "{target}: only {checked} of {} inputs decode",
        inputs.len()
    );
}

#[test]
fn the_publish_corpus_gets_documented_answers() {
    replay("publish", publish::run);
}

#[test]
fn the_selector_corpus_compiles_and_matches_as_promised() {
    replay("selector", selector::run);
}

#[test]
fn the_sse_encoder_corpus_parses_back_into_the_same_updates() {
    replay("sse_encoder", sse_encoder::run);
}

#[test]
fn the_wire_corpus_decodes_and_round_trips() {
    let inputs = corpus("wire");
    let mut checked = 0;
    for (name, bytes) in &inputs {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let run = std::panic::catch_unwind(|| wire::run(text));
            assert!(run.is_ok(), "fuzz/corpus/wire/{name} fails its check");
            checked += 1;
        }
    }
    assert!(
        checked * 2 >= inputs.len(),
        "only {checked} inputs are text"
    );
}
