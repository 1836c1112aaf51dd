//! PostgreSQL (for the outbox consumer, not a bus): the machine's server (reached, or
//! skipped), and a schema of a test's own, dropped with what it holds.

use super::*;

/// The PostgreSQL the tests use (`TIDINGS_TEST_POSTGRES`, default the machine's
/// 127.0.0.1:5432 as `postgres`), or `None` (skip) as for [`redis_url`].
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    available(Broker::Postgres, url, |url| {
        let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => accepts(&format!("{host}:{port}")),
            _ => Err("give a TCP host".into()),
        }
    })
}

/// A schema of the test's own, with the outbox table of `docs/outbox.sql` in it; dropped,
/// with everything in it, when dropped.
pub struct PgSchema {
    pub url: String,
    pub name: String,
}

impl PgSchema {
    /// Creates schema `name` (letters, digits and `_`) and runs `docs/outbox.sql` in it.
    pub async fn with_outbox(url: &str, name: &str) -> PgSchema {
        let schema = PgSchema {
            url: url.to_owned(),
            name: name.to_owned(),
        };
        let client = schema.client().await;
        let sql = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/outbox.sql"),
        )
        .unwrap();
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {name}; SET search_path TO {name}; {sql}"
            ))
            .await
            .unwrap();
        schema
    }

    /// A connection whose search path is the schema.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO {}, public", self.name))
            .await
            .unwrap();
        client
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        clean_up(async move {
            if let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            }
        });
    }
}
