//! RabbitMQ: the machine's shared one (reached, or skipped), a clean-up guard for a test's
//! exchange and stream, and a private node stopped by its process group.

use super::*;

impl PrivateBroker for PrivateRabbit {
    fn url(&self) -> String {
        PrivateRabbit::url(self)
    }
    fn stop(&mut self) {
        PrivateRabbit::stop(self);
    }
    fn start_again(&mut self) {
        self.spawn().expect("restart rabbitmq-server");
    }
    fn keeps_data(&self) -> bool {
        true
    }
}
/// The RabbitMQ the tests use (`TIDINGS_TEST_AMQP`, default the machine's 127.0.0.1:5672 as
/// guest), or `None` (skip) as for [`redis_url`].
pub fn amqp_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    available(Broker::Amqp, url, |url| {
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
        let host_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        accepts(host_port)
    })
}
/// Deletes a test's RabbitMQ exchange and stream when dropped, even when the test fails.
pub struct AmqpObjects {
    pub url: String,
    /// The prefix the buses were given; the exchange and the stream are named from it.
    pub prefix: String,
}
impl Drop for AmqpObjects {
    fn drop(&mut self) {
        let names = tidings::bus::amqp::Names::new(&self.prefix);
        let url = self.url.clone();
        clean_up(async move {
            let properties = lapin::ConnectionProperties::default();
            let Ok(connection) = lapin::Connection::connect(&url, properties).await else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(names.stream.as_str().into(), Default::default())
                    .await;
                for exchange in [&names.exchange, &names.control] {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), Default::default())
                        .await;
                }
            }
            let _ = connection.close(200, "done".into()).await;
        });
    }
}
/// A RabbitMQ node of the test's own — its own node name, ports and data directory, listening
/// on loopback only — started as its own process group and stopped by killing that group:
/// never the machine's shared RabbitMQ. It takes seconds to boot.
pub struct PrivateRabbit {
    pub port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}
impl PrivateRabbit {
    /// How long a node may take to boot.
    const BOOT: Duration = Duration::from_secs(90);

    /// Starts one, or `None` (skip) when RabbitMQ is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateRabbit> {
        let mut rabbit = PrivateRabbit {
            port: free_port(),
            dist_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        started("rabbitmq-server", rabbit.spawn().map(|()| rabbit))
    }

    /// Starts it again (after [`PrivateRabbit::stop`]), on the same ports and data.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let dir = self.dir.path();
        std::fs::write(dir.join("enabled_plugins"), "[].")?;
        let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        command
            .process_group(0)
            .env("HOME", dir)
            .env(
                "RABBITMQ_NODENAME",
                format!("tidings-test-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"));
        self.child = Some(spawn_listening(command, self.port, Self::BOOT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node as a service manager would (SIGTERM to every process of its group:
    /// RabbitMQ shuts down cleanly), killing it if it takes longer than 30 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !std::process::Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| !s.success())
            {
                if std::time::Instant::now() > deadline {
                    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                    break;
                }
                let _ = child.try_wait();
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.wait();
        }
    }
}
impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
    }
}
