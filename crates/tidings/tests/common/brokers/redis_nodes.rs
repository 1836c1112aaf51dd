//! Redis: the machine's shared one (reached, or skipped), a clean-up guard for a test's keys,
//! and private `redis-server`s — alone, as replicas, as sentinels, as a cluster — stopped by PID.

use super::*;

/// The Redis the tests use (`TIDINGS_TEST_REDIS`, default the machine's 127.0.0.1:6379), or
/// `None` when it is unreachable — in which case the caller skips, unless
/// `TIDINGS_REQUIRE_BROKERS=1`, which turns the skip into a failure.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("TIDINGS_TEST_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    available(Broker::Redis, url, |url| {
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}
/// Deletes every key under `prefix` (tests leave the shared Redis as they found it).
pub fn redis_cleanup(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}
/// Removes a test's Redis keys when dropped, even when the test fails.
pub struct RedisKeys {
    pub url: String,
    pub prefix: String,
}
impl RedisKeys {
    /// A connection to the test Redis, as a service's would be.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}
impl Drop for RedisKeys {
    fn drop(&mut self) {
        redis_cleanup(&self.url, &self.prefix);
    }
}
/// A fresh key prefix on the test Redis, or `None` (skip) as [`redis_url`] says.
pub fn redis_keys(name: &str) -> Option<RedisKeys> {
    let url = redis_url()?;
    Some(RedisKeys {
        prefix: unique_prefix(name),
        url,
    })
}
/// `n` instances (`--auth none`) on the test Redis under `keys`' prefix, plus `extra` flags.
pub fn redis_cluster(keys: &RedisKeys, n: usize, extra: &[&str]) -> Vec<Hub> {
    cluster_on(&keys.url, &keys.prefix, n, extra)
}
impl PrivateBroker for PrivateRedis {
    fn url(&self) -> String {
        PrivateRedis::url(self)
    }
    fn stop(&mut self) {
        PrivateRedis::stop(self);
    }
    fn start_again(&mut self) {
        self.spawn().expect("restart redis-server");
    }
    fn keeps_data(&self) -> bool {
        false
    }
}
/// A `redis-server` of a test's own, on a free port, stopped by PID (never the machine's
/// shared Redis). Without persistence: a restart loses everything, as a crash would.
pub struct PrivateRedis {
    pub port: u16,
    /// TLS only: the server certificate and key files (`rediss://`).
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `requirepass`: clients must authenticate.
    password: Option<String>,
    /// `replicaof`: the port of the primary it replicates.
    primary: Option<u16>,
    /// Its `dir`: a replica writes the snapshot it syncs from there, never in the checkout.
    dir: tempfile::TempDir,
    child: Option<Child>,
}
impl PrivateRedis {
    /// Starts one, or `None` (skip) when `redis-server` is not installed — a failure under
    /// `TIDINGS_REQUIRE_BROKERS=1`.
    pub fn start() -> Option<PrivateRedis> {
        Self::start_inner(None, None)
    }

    /// Starts one that requires this password ([`PrivateRedis::url`] carries it).
    pub fn start_with_password(password: &str) -> Option<PrivateRedis> {
        Self::start_inner(None, Some(password.to_owned()))
    }

    /// Starts one that speaks TLS only, with this certificate chain and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<PrivateRedis> {
        Self::start_inner(Some((cert.to_owned(), key.to_owned())), None)
    }

    /// Starts a replica of `primary` (a plain one, without a password).
    pub fn replica_of(primary: &PrivateRedis) -> Option<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port(),
            tls: None,
            password: None,
            primary: Some(primary.port),
            dir: tempfile::tempdir().expect("a directory for redis-server"),
            child: None,
        };
        started("redis-server", redis.spawn().map(|()| redis))
    }

    /// One field of `INFO replication` (`connected_slaves`, `master_link_status`, …).
    pub fn replication(&self, field: &str) -> Option<String> {
        let info = match self.command(&["INFO", "replication"]).ok()? {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok()?,
            redis::Value::VerbatimString { text, .. } => text,
            _ => return None,
        };
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }

    fn start_inner(
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
        password: Option<String>,
    ) -> Option<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port(),
            tls,
            password,
            primary: None,
            dir: tempfile::tempdir().expect("a directory for redis-server"),
            child: None,
        };
        started("redis-server", redis.spawn().map(|()| redis))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let port = self.port.to_string();
        let mut args: Vec<String> = vec!["--bind".into(), "127.0.0.1".into()];
        match &self.tls {
            None => args.extend(["--port".into(), port]),
            Some((cert, key)) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
        }
        args.extend(["--save", "", "--appendonly", "no"].map(String::from));
        // A replica re-pointed by the sentinels after a failover syncs at once, not after
        // Redis's default 5 s wait for more replicas to share a diskless transfer (under a
        // loaded CI, that wait made the new primary's first publishes miss their replica
        // for longer than a test waits).
        args.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
        args.extend(["--dir".into(), self.dir.path().display().to_string()]);
        if let Some(password) = &self.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        if let Some(primary) = self.primary {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        let mut command = Command::new("redis-server");
        command.args(args);
        self.child = Some(spawn_listening(command, self.port, WAIT)?);
        Ok(())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart redis-server");
    }

    /// Freezes the process (SIGSTOP), or lets it go on (SIGCONT).
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// Runs one command on a plain (non-TLS) private Redis.
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }
}
impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
/// Three `redis-server --sentinel` of a test's own on free ports, watching the primary
/// `primary` under the name `master` (quorum 2, a primary down after 1 s), stopped by PID.
pub struct PrivateSentinels {
    pub ports: Vec<u16>,
    pub master: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}
impl PrivateSentinels {
    /// Starts them, or `None` (skip) as for [`PrivateRedis::start`].
    pub fn watch(primary: &PrivateRedis, master: &str) -> Option<PrivateSentinels> {
        let dir = tempfile::tempdir().ok()?;
        let mut sentinels = PrivateSentinels {
            ports: Vec::new(),
            master: master.to_owned(),
            children: Vec::new(),
            _dir: dir,
        };
        for i in 0..3 {
            let port = free_port();
            let config = sentinels._dir.path().join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {master} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = sentinels._dir.path().display(),
                primary = primary.port,
            );
            if let Err(e) = std::fs::write(&config, text) {
                return started("redis-server --sentinel", Err(e));
            }
            let mut command = Command::new("redis-server");
            command.arg(&config).arg("--sentinel");
            match spawn_listening(command, port, WAIT) {
                Ok(child) => sentinels.children.push(child),
                Err(e) => return started("redis-server --sentinel", Err(e)),
            }
            sentinels.ports.push(port);
        }
        Some(sentinels)
    }

    /// `redis+sentinel://127.0.0.1:P1,…/<master>/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{}/0", hosts.join(","), self.master)
    }

    /// How many replicas every sentinel knows of (the fewest any knows).
    pub fn replicas_known(&self) -> usize {
        self.ports
            .iter()
            .map(|port| {
                redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut conn| {
                        redis::cmd("SENTINEL")
                            .arg("replicas")
                            .arg(&self.master)
                            .query::<Vec<redis::Value>>(&mut conn)
                    })
                    .map_or(0, |replicas| replicas.len())
            })
            .min()
            .unwrap_or(0)
    }

    /// The port of the primary the first sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}", self.ports[0]))
            .ok()?
            .get_connection()
            .ok()?;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query(&mut conn)
            .ok()?;
        port.parse().ok()
    }
}
impl Drop for PrivateSentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
/// A Redis Cluster of a test's own: three masters and three replicas (`redis-server
/// --cluster-enabled yes`) on free ports, a node failed after 1 s, stopped by PID.
pub struct PrivateRedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}
impl PrivateRedisCluster {
    /// Starts the six nodes and makes them one cluster; `None` (skip) as for
    /// [`PrivateRedis::start`].
    pub fn start() -> Option<PrivateRedisCluster> {
        let dir = tempfile::tempdir().ok()?;
        let mut cluster = PrivateRedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            _dir: dir,
        };
        for _ in 0..6 {
            let port = free_port();
            let mut command = Command::new("redis-server");
            command
                .current_dir(cluster._dir.path())
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                // The cluster bus on a free port of its own (by default port + 10000, which
                // may be taken, or past 65535).
                .args(["--cluster-port", &free_port().to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
            match spawn_listening(command, port, WAIT) {
                Ok(child) => cluster.children.push(Some(child)),
                Err(e) => return started("redis-server", Err(e)),
            }
            cluster.ports.push(port);
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Ok, and every replica in sync: one that never synced cannot be promoted.
        while !(cluster.ports.iter().all(|p| cluster.ok(*p)) && cluster.replicas_in_sync() == 3) {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(cluster)
    }

    /// `redis+cluster://127.0.0.1:P1,…/` (three of the nodes, as a user would list some).
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.ports[..3]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/", nodes.join(","))
    }

    /// Runs one command on the node at `port`.
    pub fn command(&self, port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?
            .get_connection_with_timeout(Duration::from_secs(2))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    fn ok(&self, port: u16) -> bool {
        self.info(port, "CLUSTER", "INFO")
            .is_some_and(|info| info.contains("cluster_state:ok"))
    }

    fn replicas_in_sync(&self) -> usize {
        let up = |port: &&u16| {
            self.info(**port, "INFO", "replication")
                .is_some_and(|info| info.contains("master_link_status:up"))
        };
        self.ports.iter().filter(up).count()
    }

    /// The text a command answers on the node at `port`.
    fn info(&self, port: u16, command: &str, section: &str) -> Option<String> {
        let info = self.command(port, &[command, section]).ok()?;
        redis::from_redis_value(info).ok()
    }

    /// The port of the master that a live node names for the slot of `key`.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        self.ports.iter().enumerate().find_map(|(i, port)| {
            self.children[i].as_ref()?;
            let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
                .ok()?
                .get_connection_with_timeout(Duration::from_secs(2))
                .ok()?;
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut conn)
                .ok()?;
            let ranges: Vec<(i64, i64, (String, u16))> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<Vec<redis::Value>>>(&mut conn)
                .ok()?
                .into_iter()
                .filter_map(|range| {
                    let mut fields = range.into_iter();
                    let start = redis::from_redis_value(fields.next()?).ok()?;
                    let end = redis::from_redis_value(fields.next()?).ok()?;
                    let master: Vec<redis::Value> = redis::from_redis_value(fields.next()?).ok()?;
                    let mut master = master.into_iter();
                    let host = redis::from_redis_value(master.next()?).ok()?;
                    let port = redis::from_redis_value(master.next()?).ok()?;
                    Some((start, end, (host, port)))
                })
                .collect();
            ranges
                .into_iter()
                .find(|(start, end, _)| (*start..=*end).contains(&slot))
                .map(|(_, _, (_, port))| port)
        })
    }

    /// Whether the node at `port` runs (was not killed).
    pub fn alive(&self, port: u16) -> bool {
        let i = self.ports.iter().position(|p| *p == port);
        i.is_some_and(|i| self.children[i].is_some())
    }

    /// SIGKILLs the node at `port`.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a node");
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
/// As a broker that restarts under its instances, a Redis Cluster whose master of the slot of
/// the prefix `tidings` fails over: stopped once its replica holds all it has (so nothing is
/// lost), SIGKILLed; back once the replica is promoted.
impl PrivateBroker for PrivateRedisCluster {
    fn url(&self) -> String {
        PrivateRedisCluster::url(self)
    }

    fn stop(&mut self) {
        let master = self.master_of("{tidings}").expect("a master of the slot");
        let _ = self.command(master, &["WAIT", "1", "5000"]);
        self.kill(master);
    }

    fn start_again(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self
            .master_of("{tidings}")
            .is_some_and(|port| self.alive(port))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no replica was promoted"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keeps_data(&self) -> bool {
        true
    }
}
