//! The resident memory of the processes under test, and the kernel's memory that grows with
//! sockets, from `/proc`.

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
}
