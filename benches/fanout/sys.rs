//! The operating-system side of the benchmark: CPU pinning, the fd limit,
//! the shared monotonic clock, and per-process readings from `/proc`.
//!
//! All through `nix`, the safe wrapper over libc: the crate forbids
//! `unsafe_code` in every target, benchmarks included.

use std::fmt::Write as _;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::{Pid, SysconfVar, sysconf};

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process on the
/// machine, so a timestamp written by the server can be compared with the
/// client's reading.
pub(crate) fn now_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Pins the calling process (every thread it starts later inherits it) to
/// one CPU and returns the affinity read back, e.g. `"cpu 0"`.
pub(crate) fn pin_to_cpu(cpu: usize) -> Result<String, String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity(cpu {cpu}): {e}"))?;
    let got = sched_getaffinity(Pid::from_raw(0)).map_err(|e| e.to_string())?;
    let mut out = String::from("cpu");
    for c in 0..CpuSet::count() {
        if got.is_set(c).unwrap_or(false) {
            let _ = write!(out, " {c}");
        }
    }
    Ok(out)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and checks that it
/// covers `needed` descriptors; returns the new soft limit.
pub(crate) fn raise_nofile(needed: u64) -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit(NOFILE, {hard}, {hard}): {e}"))?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < needed {
        return Err(format!(
            "RLIMIT_NOFILE is {soft} (hard {hard}) but this process needs {needed} descriptors"
        ));
    }
    Ok(soft)
}

/// CPU time and memory of a process, from `/proc/<pid>/stat` and
/// `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcReading {
    /// `utime + stime` of all its threads, in nanoseconds (clock-tick
    /// resolution, 10 ms at 100 Hz).
    pub(crate) cpu_ns: u64,
    /// `VmRSS`, in KiB.
    pub(crate) rss_kib: u64,
}

pub(crate) fn read_proc(pid: u32) -> Result<ProcReading, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("stat field {i}"))
    };
    let hz = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as u64;
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    Ok(ProcReading {
        cpu_ns: cpu_ticks * 1_000_000_000 / hz,
        rss_kib,
    })
}

/// The kernel's TCP totals from `/proc/net/sockstat`: sockets in use and
/// pages of socket buffer memory (`TCP: inuse N ... mem M`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SockStat {
    pub(crate) inuse: u64,
    pub(crate) mem_pages: u64,
}

pub(crate) fn sockstat() -> SockStat {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mut out = SockStat::default();
    if let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words[1..].chunks(2) {
            if let [k, v] = pair {
                let v = v.parse().unwrap_or(0);
                match *k {
                    "inuse" => out.inuse = v,
                    "mem" => out.mem_pages = v,
                    _ => {}
                }
            }
        }
    }
    out
}

/// One line of a `/proc/sys` file, trimmed (for the report).
pub(crate) fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Busy time of each CPU so far, in nanoseconds, from `/proc/stat`
/// (everything but idle and iowait).
pub(crate) fn cpu_busy_ns() -> Vec<u64> {
    let hz = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as u64;
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy: u64 = v.iter().take(8).sum::<u64>()
                - v.get(3).copied().unwrap_or(0)
                - v.get(4).copied().unwrap_or(0);
            busy * 1_000_000_000 / hz
        })
        .collect()
}

/// A `/proc/meminfo` field in KiB (e.g. `Slab`: kernel objects, sockets
/// among them).
pub(crate) fn meminfo_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Write system calls and bytes written so far by a process (`syscw`,
/// `wchar` in `/proc/<pid>/io`).
pub(crate) fn write_calls(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("syscw:"), field("wchar:"))
}
