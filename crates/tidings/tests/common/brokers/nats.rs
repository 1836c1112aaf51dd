//! NATS: the machine's shared server (reached, or skipped), a clean-up guard for a test's
//! stream, and a private `nats-server -js` stopped by PID.

use super::*;

impl PrivateBroker for PrivateNats {
    fn url(&self) -> String {
        PrivateNats::url(self)
    }
    fn stop(&mut self) {
        PrivateNats::stop(self);
    }
    fn start_again(&mut self) {
        self.spawn().expect("restart nats-server");
    }
    fn keeps_data(&self) -> bool {
        true
    }
}
/// The NATS server the tests use (`TIDINGS_TEST_NATS`, default the machine's
/// 127.0.0.1:4222, with JetStream), or `None` (skip) as for [`redis_url`].
pub fn nats_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    available(Broker::Nats, url, |url| {
        accepts(url.trim_start_matches("nats://"))?;
        keep_account_store(url);
        Ok(())
    })
}
/// Keeps a stream of the tests' in the shared server's account for good: nats-server removes
/// an account's store directory when its last stream is deleted, and a stream created at
/// that moment fails ("could not create storage directory", JetStream error 10049). Tests
/// running side by side each delete theirs at their end, and on a server that held no other
/// stream one test failed so. With this stream the directory is never empty. (A single
/// message of no size: it stores nothing.)
fn keep_account_store(url: &str) {
    let url = url.to_owned();
    clean_up(async move {
        let Ok(client) = async_nats::connect(url).await else {
            return;
        };
        let config = async_nats::jetstream::stream::Config {
            name: "tidings-tests-keep".into(),
            subjects: vec!["tidings-tests-keep".into()],
            max_messages: 1,
            ..Default::default()
        };
        let _ = async_nats::jetstream::new(client)
            .get_or_create_stream(config)
            .await;
    });
}
/// Deletes a test's JetStream stream when dropped, even when the test fails.
pub struct NatsStream {
    pub url: String,
    /// The prefix the buses were given; the stream is named from it.
    pub prefix: String,
}
impl Drop for NatsStream {
    fn drop(&mut self) {
        let name = tidings::bus::nats::stream_name(&self.prefix);
        let url = self.url.clone();
        clean_up(async move {
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client).delete_stream(name).await;
            }
        });
    }
}
/// A `nats-server -js` of a test's own, on a free port, with its store in a temporary
/// directory, stopped by PID (never the machine's shared one).
pub struct PrivateNats {
    pub port: u16,
    pub store: tempfile::TempDir,
    child: Option<Child>,
}
impl PrivateNats {
    /// Starts one, or `None` (skip) when `nats-server` is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateNats> {
        let mut nats = PrivateNats {
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        started("nats-server", nats.spawn().map(|()| nats))
    }

    /// Starts it again (after [`PrivateNats::stop`]), on the same port and store.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new("nats-server");
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path());
        self.child = Some(spawn_listening(command, self.port, WAIT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
