//! What `tidings-bench` does before and without a hub: every argument it cannot use is
//! refused with what to fix, and a run against nothing fails with the reason.

use std::process::{Command, Output, Stdio};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(args)
        .arg("--quiet")
        .env_remove("TIDINGS_TOKEN")
        .env_remove("TIDINGS_JWT_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run tidings-bench")
}

#[test]
fn bad_arguments_get_a_message_that_says_what_to_fix() {
    for (args, says) in [
        (vec!["--topics", "0"], "is not a number of topics"),
        (vec!["-c", "0"], "--subscribers must be at least 1"),
        (
            vec!["-c", "2", "--topics", "3"],
            "--topics 3 is more than --subscribers 2",
        ),
        (vec!["--url", "https://127.0.0.1:1"], "only http:// URLs"),
        (
            vec!["--url", "http://192.0.2.1:80"],
            "only loads hubs on this machine",
        ),
        (vec!["--pid", "4294967295"], "--pid 4294967295: cannot read"),
        (vec!["--rate=-1"], "--rate -1"),
        (vec!["--settle", "soon"], "is not a number of seconds"),
        (
            vec!["-c", "300000", "--streams-per-address", "1000"],
            "need 300 source addresses",
        ),
        (vec!["--workers", "0"], "--workers must be at least 1"),
        (
            vec!["-c", "2", "--workers", "3"],
            "--workers 3 is more than --subscribers 2",
        ),
        (
            vec!["-c", "100000", "--workers", "4"],
            "25000 streams per worker is over the 19500 one process holds (the open-files limit): give --workers 6 or more",
        ),
        (
            vec!["-c", "10", "--workers", "2", "--reconnect", "--kill", "12345"],
            "--kill is not supported with --workers",
        ),
        (vec!["--worker", "0"], "--epoch-us"),
        (
            vec!["--profile", "nchan", "--broadcasts", "2"],
            "--broadcasts needs streams that hold two topics",
        ),
        (vec!["--broadcasts", "100001"], "over the 100000 a run sends"),
        (
            vec!["--hold", "300"],
            "--hold 300s does not fit in --timeout 300s",
        ),
        (vec!["--churn", "60"], "--reconnect"),
        (
            vec!["--reconnect", "--churn", "60", "--hold", "5", "--churn-after", "5"],
            "--churn runs from --churn-after (5s) to the end of --hold (5s): give a longer --hold",
        ),
        (vec!["--reconnect", "--churn=-1", "--hold", "5"], "--churn -1"),
    ] {
        let out = bench(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Nothing listens there: every stream fails, and the run ends quickly with the reason.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let out = bench(&["--url", &url, "-c", "3"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 streams failed to open"), "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
}

#[test]
fn an_unknown_jwt_algorithm_is_named() {
    let out = bench(&["--jwt-key", "k", "--jwt-alg", "XS256"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown JWT algorithm \"XS256\""),
        "{stderr}"
    );
}
