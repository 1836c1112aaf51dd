use super::*;

fn received(window: &mut Window, body: &str) -> Received {
    let mark = window.mark("c", None, body.as_bytes());
    Received {
        channel: "c".into(),
        pattern: None,
        body: body.as_bytes().to_vec(),
        mark,
    }
}

fn bodies(messages: &VecDeque<Received>) -> Vec<&str> {
    messages
        .iter()
        .map(|m| std::str::from_utf8(&m.body).unwrap())
        .collect()
}

#[test]
fn a_takeover_publishes_what_came_after_the_holders_progress() {
    // The holder and a standby see the same messages.
    let (mut holder, mut standby) = (Window::default(), Window::default());
    let mut buffer = Buffer::default();
    let mut progress = Vec::new();
    for n in 0..10 {
        let body = format!("m{n}");
        let mark = holder.mark("c", None, body.as_bytes());
        progress.push(format!("{}:{mark}", n + 1));
        buffer.push(received(&mut standby, &body));
    }
    buffer.trim(&progress[3]);
    assert_eq!(bodies(&buffer.messages)[0], "m4");
    buffer.trim(&progress[5]);
    assert_eq!(bodies(&buffer.messages), ["m6", "m7", "m8", "m9"]);
    let (rest, placed) = buffer.take_after(Some(&progress[5]));
    assert!(placed);
    assert_eq!(bodies(&rest), ["m6", "m7", "m8", "m9"]);
}

#[test]
fn a_repeated_run_repeats_rather_than_skips() {
    let (mut holder, mut standby) = (Window::default(), Window::default());
    let mut buffer = Buffer::default();
    let mut progress = Vec::new();
    // "ping" again and again: every run of four looks the same.
    for n in 0..20 {
        let mark = holder.mark("c", None, b"ping");
        progress.push(format!("{}:{mark}", n + 1));
        buffer.push(received(&mut standby, "ping"));
    }
    // The first trim cannot tell where the holder is: it keeps more, never less.
    buffer.trim(&progress[7]);
    assert!(buffer.messages.len() >= 12, "{}", buffer.messages.len());
    // From then on the count says exactly.
    let before = buffer.messages.len();
    buffer.trim(&progress[9]);
    assert_eq!(buffer.messages.len(), before - 2);
    let (rest, placed) = buffer.take_after(Some(&progress[9]));
    assert!(placed);
    assert_eq!(rest.len(), before - 2);
}

#[test]
fn progress_the_standby_never_saw_publishes_everything() {
    let mut standby = Window::default();
    let mut buffer = Buffer::default();
    for n in 0..3 {
        buffer.push(received(&mut standby, &format!("m{n}")));
    }
    let (rest, placed) = buffer.take_after(Some("7:not-a-mark"));
    assert!(!placed);
    assert_eq!(rest.len(), 3);
    assert_eq!(buffer.bytes, 0);
}

#[test]
fn the_buffer_is_bounded_and_counts_what_it_drops() {
    let mut window = Window::default();
    let mut buffer = Buffer::default();
    for n in 0..BUFFER_MESSAGES + 5 {
        buffer.push(received(&mut window, &n.to_string()));
    }
    assert_eq!(buffer.messages.len(), BUFFER_MESSAGES);
    assert_eq!(buffer.dropped, 5);
    let big = "x".repeat(BUFFER_BYTES / 2 + 1);
    buffer.push(received(&mut window, &big));
    buffer.push(received(&mut window, &big));
    assert!(buffer.bytes <= BUFFER_BYTES);
    assert_eq!(bodies(&buffer.messages), [big.as_str()]);
}
