//! The resident memory of the processes under test, from `/proc`.

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
    fn reads_this_process_and_names_a_missing_one() {
        let own = super::rss_bytes(&[std::process::id()]).unwrap();
        assert!(own > 1024 * 1024, "{own}");
        let e = super::rss_bytes(&[u32::MAX]).unwrap_err();
        assert!(e.starts_with("--pid 4294967295: cannot read"), "{e}");
    }
}
