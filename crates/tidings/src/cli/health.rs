//! `tidings health`: asks an instance whether it is alive (`/healthz`) or ready (`/readyz`),
//! and exits 0 or 1 — for a container's `HEALTHCHECK` or an orchestrator's exec probe, where
//! the image has no `curl` (it has no shell either: `deploy/container/Containerfile`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Arguments of `tidings health`.
#[derive(Debug, clap::Args)]
pub(super) struct HealthArgs {
    /// Base URL of the instance [default: http://127.0.0.1:PORT, the port of TIDINGS_LISTEN
    /// (an instance listening on every address is asked on loopback), else 3000].
    #[arg(long)]
    url: Option<String>,
    /// Ask whether it is ready (`/readyz`: not draining, its bus connected) rather than alive
    /// (`/healthz`).
    #[arg(long)]
    ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    timeout: u64,
}

/// The URL `serve` with `listen` (TIDINGS_LISTEN's value) answers on, from the same machine.
fn local_url(listen: Option<&str>) -> Result<String, String> {
    let Some(listen) = listen else {
        return Ok("http://127.0.0.1:3000".into());
    };
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("TIDINGS_LISTEN={listen:?} is not an IP:PORT address: pass --url"))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}", SocketAddr::new(ip, addr.port())))
}

#[allow(clippy::print_stdout)]
pub(super) async fn run(args: HealthArgs) -> Result<(), String> {
    let base = match args.url {
        Some(url) => url,
        None => {
            if std::env::var_os("TIDINGS_TLS_CERT").is_some() {
                return Err("the instance serves HTTPS (TIDINGS_TLS_CERT): pass --url \
                            https://<a name its certificate holds>:<port>"
                    .into());
            }
            local_url(std::env::var("TIDINGS_LISTEN").ok().as_deref())?
        }
    };
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let client = crate::outbound::client(Duration::from_secs(args.timeout.max(1)))
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::outbound::describe(&e)))?;
    let status = response.status();
    let body = crate::outbound::read_limited(response, 4096)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    if status.is_success() {
        println!("{url}: {status} {}", body.trim());
        Ok(())
    } else {
        Err(format!("{url}: {status} {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::local_url;

    #[test]
    fn an_instance_listening_everywhere_is_asked_on_loopback() {
        assert_eq!(local_url(None).unwrap(), "http://127.0.0.1:3000");
        assert_eq!(
            local_url(Some("0.0.0.0:3001")).unwrap(),
            "http://127.0.0.1:3001"
        );
        assert_eq!(local_url(Some("[::]:3002")).unwrap(), "http://[::1]:3002");
        assert_eq!(
            local_url(Some("10.0.0.5:3003")).unwrap(),
            "http://10.0.0.5:3003"
        );
        let refused = local_url(Some("localhost:3000")).unwrap_err();
        assert!(refused.contains("--url"), "{refused}");
    }
}
