//! What the processes under test use — their resident memory and CPU time — and the kernel's
//! memory that grows with sockets, from `/proc`.

/// The kernel's memory that grows with connections, machine-wide: its slab (socket and inode
/// structures, epoll entries, file handles: `Slab` in /proc/meminfo) and TCP's buffers (`mem`
/// pages in /proc/net/sockstat), with the TCP sockets in use.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct Kernel {
    pub(super) slab_bytes: u64,
    pub(super) tcp_buffer_bytes: u64,
    pub(super) tcp_sockets: u64,
}

impl Kernel {
    /// Slab and buffers together.
    pub(super) fn bytes(&self) -> u64 {
        self.slab_bytes + self.tcp_buffer_bytes
    }
}

/// Reads [`Kernel`] now.
pub(super) fn kernel() -> Result<Kernel, String> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    let meminfo = read("/proc/meminfo")?;
    let slab_kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("Slab:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .ok_or("/proc/meminfo has no Slab line")?;
    let sockstat = read("/proc/net/sockstat")?;
    let tcp: Vec<&str> = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))
        .ok_or("/proc/net/sockstat has no TCP line")?
        .split_whitespace()
        .collect();
    let field = |name: &str| {
        tcp.chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1)?.parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/net/sockstat's TCP line has no {name}"))
    };
    Ok(Kernel {
        slab_bytes: slab_kib * 1024,
        // (In pages of 4 KiB: the kernel's accounting unit for socket buffers.)
        tcp_buffer_bytes: field("mem")? * 4096,
        tcp_sockets: field("alloc")?,
    })
}

/// The summed resident set size of `pids`, in bytes.
pub(super) fn rss_bytes(pids: &[u32]) -> Result<u64, String> {
    pids.iter().map(|pid| rss_of(*pid)).sum()
}

fn rss_of(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| format!("--pid {pid}: cannot read {path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("--pid {pid}: {path} has no VmRSS line (a kernel thread?)"))
}

/// The CPU time (user and system, every thread's, ended threads' too) `pids` have used so far,
/// summed, in seconds: read before and after a phase, it is what the phase cost the hubs.
pub(super) fn cpu_seconds(pids: &[u32]) -> Result<f64, String> {
    let ticks = pids
        .iter()
        .map(|pid| cpu_ticks_of(*pid))
        .sum::<Result<u64, String>>()?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn cpu_ticks_of(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|e| format!("--pid {pid}: cannot read {path}: {e}"))?;
    // After the command's name (in parentheses, and which may hold anything), the fields from
    // the third on: `utime` and `stime` are the 14th and 15th (proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!(
            "--pid {pid}: {path} has no CPU times where proc(5) puts them"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_kernel_s_socket_memory() {
        let kernel = super::kernel().unwrap();
        assert!(kernel.slab_bytes > 0, "{kernel:?}");
        assert_eq!(kernel.bytes(), kernel.slab_bytes + kernel.tcp_buffer_bytes);
    }

    #[test]
    fn reads_this_process_and_names_a_missing_one() {
        let own = super::rss_bytes(&[std::process::id()]).unwrap();
        assert!(own > 1024 * 1024, "{own}");
        let e = super::rss_bytes(&[u32::MAX]).unwrap_err();
        assert!(e.starts_with("--pid 4294967295: cannot read"), "{e}");
    }

    #[test]
    fn reads_the_cpu_time_a_process_used() {
        let before = super::cpu_seconds(&[std::process::id()]).unwrap();
        // Spins until the reading moves (a clock tick: 10 ms where USER_HZ is 100), for at
        // most 10 s of wall time: a reading that never moves fails.
        let started = std::time::Instant::now();
        let mut spun = 0u64;
        let after = loop {
            for _ in 0..1_000_000 {
                spun = std::hint::black_box(spun.wrapping_add(1));
            }
            let now = super::cpu_seconds(&[std::process::id()]).unwrap();
            if now > before {
                break now;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the CPU time stayed at {before} s through 10 s of spinning"
            );
        };
        // In seconds, not clock ticks: no process uses more than its cores' wall time (a tick
        // of rounding at each reading aside).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let most = started.elapsed().as_secs_f64() * cores + 0.02;
        assert!(
            after - before <= most,
            "{before} s then {after} s (at most {most} s)"
        );
        let e = super::cpu_seconds(&[u32::MAX]).unwrap_err();
        assert!(e.starts_with("--pid 4294967295: cannot read"), "{e}");
    }
}
