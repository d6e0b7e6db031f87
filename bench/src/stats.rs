//! What the machine says about a run: CPU time of linkd and of Postgres,
//! linkd's resident memory, the load average.

/// Clock ticks per second of /proc/*/stat (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of one process.
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| ticks(&stat, false))
        .unwrap_or(0.0)
}

/// User + system CPU of a `/proc/<pid>/stat` line, with that of its
/// finished children when asked (where an exited backend's time goes).
fn ticks(stat: &str, with_children: bool) -> Option<f64> {
    // The command name is parenthesised and may hold spaces: fields count
    // from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let children: f64 = if with_children {
        fields.get(13)?.parse::<f64>().ok()? + fields.get(14)?.parse::<f64>().ok()?
    } else {
        0.0
    };
    Some((utime + stime + children) / TICKS_PER_SECOND)
}

/// CPU seconds of every `postgres` process on the machine (the benchmark's
/// cluster is the only one it starts), exited backends included: the
/// postmaster collects their time.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .filter_map(|stat| ticks(&stat, true))
        .sum()
}

/// Resident and peak resident memory of a process, in MB.
pub fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The one-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
