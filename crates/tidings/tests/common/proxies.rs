//! Proxies in front of test hubs (nginx, HAProxy), each a process of the test's own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, WAIT};

/// A server program a test runs on a free loopback port (nginx, HAProxy), with its files in a
/// directory of its own; stopped on drop.
pub struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `https://127.0.0.1:PORT`, when it also serves TLS (see [`Proxy::with_tls`]).
    pub tls_base: Option<String>,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `program` with the arguments `configure(dir, port)` returns (after writing its
    /// configuration into `dir`), and waits until it accepts connections on `port`.
    pub fn start(
        program: &str,
        configure: impl FnOnce(&std::path::Path, u16) -> Vec<std::ffi::OsString>,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = configure(dir.path(), port);
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let proxy = Proxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            tls_base: None,
            dir,
        };
        proxy.wait_for(port, program);
        proxy
    }

    /// The same proxy, which also serves TLS on `port` (as its configuration says): waits
    /// until it accepts connections there.
    pub fn with_tls(mut self, port: u16) -> Proxy {
        self.wait_for(port, "the TLS listener");
        self.tls_base = Some(format!("https://127.0.0.1:{port}"));
        self
    }

    fn wait_for(&self, port: u16, what: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} did not start: {}",
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// nginx, one worker, in the foreground, every file it writes in its directory:
    /// `main` goes before the `http` block, `http(dir, port)` inside it.
    pub fn nginx(main: &str, http: impl FnOnce(&std::path::Path, u16) -> String) -> Proxy {
        Proxy::start("nginx", |dir, port| {
            let d = dir.display();
            let conf = format!(
                "{main}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{}\n}}\n",
                http(dir, port)
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf).unwrap();
            vec!["-p".into(), dir.into(), "-c".into(), path.into()]
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM is nginx's and HAProxy's fast shutdown: nginx's master stops its worker and
        // exits (SIGKILL would leave the worker running; SIGQUIT would wait for the streams).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
