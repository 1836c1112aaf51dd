//! `tidings serve`: read the configuration layers, set up logging, run until SIGTERM/SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::bus::redact;
use crate::config::defaults::CONFIG_FILE;
use crate::config::{Config, LogFormat, Options};
use crate::server::Instance;
use crate::telemetry;

/// Arguments of `tidings serve`.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Configuration file.
    #[arg(long, env = "TIDINGS_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

pub(super) async fn run(args: ServeArgs) -> Result<(), String> {
    let config = args.config()?;
    init_logging(&config)?;
    for weak in config.weak_points() {
        tracing::warn!("{weak}");
    }
    raise_open_files_limit();
    let listener =
        listen(config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let traces = start_traces(&config).await?;
    let instance = Instance::new(config).await.map_err(|e| e.to_string())?;
    reload_on_sighup(instance.clone(), args);
    let served = instance
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string());
    if let Some(exporter) = traces {
        // Sends the spans of the drain too (blocking: off the runtime's workers).
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
    served
}

/// Starts exporting traces when `otlp-endpoint` is set (off the runtime's workers: the
/// exporter's HTTP client is a blocking one, driven from the SDK's own thread).
async fn start_traces(config: &Config) -> Result<Option<telemetry::Exporter>, String> {
    let Some(settings) = config.tracing.clone() else {
        return Ok(None);
    };
    let instance = config.instance_id.clone();
    let endpoint = redact(&settings.endpoint);
    let ratio = settings.sample_ratio;
    let exporter = tokio::task::spawn_blocking(move || telemetry::start(&settings, &instance))
        .await
        .map_err(|e| format!("traces: {e}"))??;
    tracing::info!(
        endpoint,
        sample_ratio = ratio,
        "traces: sent over OTLP/HTTP"
    );
    Ok(Some(exporter))
}

impl ServeArgs {
    /// The configuration: the file (`--config`, else `./tidings.toml` when it exists) under
    /// the environment and flags this process was started with.
    fn config(&self) -> Result<Config, String> {
        let file = match &self.config {
            Some(path) => Options::from_file(path).map_err(|e| e.to_string())?,
            None if std::path::Path::new(CONFIG_FILE).exists() => {
                Options::from_file(CONFIG_FILE.as_ref()).map_err(|e| e.to_string())?
            }
            None => Options::default(),
        };
        self.options
            .clone()
            .over(file)
            .resolve()
            .map_err(|e| e.to_string())
    }
}

/// Binds the listening socket with a deep accept queue (the kernel caps it at
/// `net.core.somaxconn`): thousands of clients reconnecting at once must not have their SYNs
/// dropped, which costs each a one-second retransmission.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// Every stream holds a socket: raise the soft limit on open files to the hard limit (the
/// ready line says what it is).
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// What the Kafka client logs unless the filter names it: its warnings, but neither its notes
/// on each connection it makes nor the failed topic creation that instances starting
/// together race to (the bus expects it, and reports what it cannot cure itself).
const KAFKA_CLIENT_LOG: &str = "rskafka=warn,rskafka::client::controller=off";

fn init_logging(config: &Config) -> Result<(), String> {
    let directives = match config.log.contains("rskafka") {
        true => config.log.clone(),
        false => format!("{},{KAFKA_CLIENT_LOG}", config.log),
    };
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("log: {:?} is not a valid filter: {e}", config.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match config.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// On every SIGHUP, reads the configuration again and reloads what can change without a
/// restart (see [`Instance::reload`]).
fn reload_on_sighup(instance: Instance, args: ServeArgs) {
    #[cfg(unix)]
    {
        // Registered before this returns, not in the task: a SIGHUP that comes right after
        // start-up then reloads instead of taking the default action (ending the process).
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for SIGHUP; reloading is off");
                    return;
                }
            };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                match args.config() {
                    Ok(config) => instance.reload(&config),
                    Err(e) => {
                        tracing::error!(error = %e, "configuration not reloaded; keeping the one in use")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop((instance, args));
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
