//! Kafka: the shared one `.ci/services` starts (Tansu; reached, or skipped), a clean-up guard
//! for a test's topic, and a private Tansu stopped by PID.

use super::*;

/// The Kafka the tests use (`TIDINGS_TEST_KAFKA`, default 127.0.0.1:9092, where
/// `.ci/services` starts Tansu), or `None` (skip) as for [`redis_url`].
pub fn kafka_url() -> Option<String> {
    let url =
        std::env::var("TIDINGS_TEST_KAFKA").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    available(Broker::Kafka, url, |url| {
        tidings::bus::kafka::KafkaUrl::parse(url).and_then(|parsed| accepts(&parsed.brokers[0]))
    })
}
/// Deletes a test's Kafka topic when dropped, even when the test fails.
pub struct KafkaTopic {
    pub url: String,
    /// The prefix the buses were given; the topic is named from it.
    pub prefix: String,
}
impl Drop for KafkaTopic {
    fn drop(&mut self) {
        let topic = tidings::bus::kafka::topic_name(&self.prefix);
        let Ok(url) = tidings::bus::kafka::KafkaUrl::parse(&self.url) else {
            return;
        };
        clean_up(async move {
            let Ok(builder) = url.client_builder() else {
                return;
            };
            let work = async {
                let client = builder.build().await.ok()?;
                let controller = client.controller_client().ok()?;
                let control = format!("{topic}.control");
                let _ = controller.delete_topic(control, 5_000).await;
                controller.delete_topic(topic, 5_000).await.ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
        });
    }
}
/// A Tansu broker (Kafka's protocol, in Rust) of the test's own, on a free loopback port,
/// stopped by PID. Its storage is memory: a restart loses every topic, as a Kafka whose log
/// was lost would.
pub struct PrivateTansu {
    pub port: u16,
    child: Option<Child>,
}
impl PrivateTansu {
    /// Starts one, or `None` (skip) when `tansu` is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateTansu> {
        let mut tansu = PrivateTansu {
            port: free_port(),
            child: None,
        };
        started("tansu", tansu.spawn().map(|()| tansu))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new("tansu");
        command
            .arg("broker")
            .args(["--cluster-id", "tidings-test"])
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"]);
        self.child = Some(spawn_listening(command, self.port, WAIT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.stop();
    }
}
impl PrivateBroker for PrivateTansu {
    fn url(&self) -> String {
        PrivateTansu::url(self)
    }

    fn stop(&mut self) {
        PrivateTansu::stop(self);
    }

    fn start_again(&mut self) {
        self.spawn().expect("restart tansu");
    }

    fn keeps_data(&self) -> bool {
        false
    }
}
