//! Pieces every part of the benchmark shares: statistics over rounds, CPU pinning, threads
//! that live inside a namespace, facts about the machine, kernel knobs put back on drop,
//! and a conntrack flush over netlink (the `conntrack` tool is not installed by setup).

use std::{
    fmt::Write as _,
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    thread::{self, JoinHandle},
};

use crate::Netns;

/// When the suite started, for progress lines.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, stamped with the time since the suite started (stdout
/// carries only the results).
pub fn say(line: impl AsRef<str>) {
    let started = STARTED.get_or_init(std::time::Instant::now);
    eprintln!(
        "[bench {:>6.1}s] {}",
        started.elapsed().as_secs_f64(),
        line.as_ref()
    );
}

/// Median and range of one measurement over its rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Summary {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            rounds: n,
        })
    }

    /// `174 (170–181)` with `decimals` digits after the point.
    /// Largest over smallest; infinite when the smallest is not above 0 (a figure that
    /// close to its floor says nothing about its noise).
    pub fn spread(&self) -> f64 {
        if self.min > 0.0 {
            self.max / self.min
        } else {
            f64::INFINITY
        }
    }

    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// Shows an optional summary, `–` when the measurement did not happen.
pub fn show(s: Option<Summary>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.show(decimals))
}

/// The value at quantile `q` (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Keeps the calling thread on `cpu`: the per-CPU counters the wrapper programs use, and
/// the softirq work a live-frames run triggers, stay on one core.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0) is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPUs online (what `nproc` prints).
pub fn online_cpus() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// The CPU measuring threads are pinned to: the last one, which on these VMs takes fewer
/// device interrupts than CPU 0.
pub fn bench_cpu() -> usize {
    online_cpus().saturating_sub(1)
}

/// Starts a thread that joins `ns` (setns) and runs `f`: sockets it creates belong to the
/// namespace and stay there, whatever thread later uses them. Unlike `Netns::enter`, the
/// thread may outlive the call (servers and load generators); join it to get `f`'s result.
pub fn spawn_in<F, R>(ns: &Netns, name: &str, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = ns.path();
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let ns_name = ns.name().to_owned();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // SAFETY: setns(2) on a descriptor we own; it changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "setns into namespace {ns_name} failed: {}",
                    io::Error::last_os_error()
                );
            }
            drop(file);
            f()
        })
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Raises the open-file limit to its hard maximum (the prober benchmark holds a socket
/// per probe in flight; the connection benchmark one per client and server thread).
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// The path of workspace binary `name` (see [`crate::bin_path`]), as an error instead of
/// a panic: a part that starts `lb-ctl daemon` checks first, because a daemon guard that
/// cannot find `lb-ctl` while unwinding would panic again in its `Drop` and abort the
/// whole suite before the namespaces are removed.
pub fn require_binary(name: &str) -> anyhow::Result<PathBuf> {
    std::panic::catch_unwind(|| crate::bin_path(name)).map_err(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| format!("{name} not found"));
        anyhow::anyhow!("{why}")
    })
}

/// What the report says about the machine the numbers come from.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub date: String,
    pub load_at_start: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let memory_gib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
        let uname = command_line("uname", &["-srm"]);
        Machine {
            cpu_model,
            cpus: online_cpus(),
            memory_gib,
            kernel: uname,
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load_at_start: load_average(),
        }
    }
}

/// The first line a command prints, or `unknown`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `/proc/loadavg`'s three averages, e.g. `0.52 0.61 0.70`: how busy the shared machine
/// was while a part ran.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A machine-wide kernel setting (a /proc/sys or /sys/module file) raised for the
/// benchmark and written back on drop. Only ever raises: a larger value set by someone
/// else stays.
pub struct KnobGuard {
    path: PathBuf,
    old: String,
}

impl KnobGuard {
    /// Writes `value` to `path` if the current value is smaller; `Ok(None)` when nothing
    /// had to change.
    pub fn raise(path: &str, value: u64) -> io::Result<Option<KnobGuard>> {
        let old = fs::read_to_string(path)?.trim().to_owned();
        let current: u64 = old.parse().map_err(io::Error::other)?;
        if current >= value {
            return Ok(None);
        }
        fs::write(path, value.to_string())?;
        Ok(Some(KnobGuard {
            path: PathBuf::from(path),
            old,
        }))
    }
}

impl Drop for KnobGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!(
                "warning: could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// Deletes every conntrack entry of the calling thread's network namespace (what
/// `conntrack -F` does: an IPCTNL_MSG_CT_DELETE without attributes), so each round of the
/// nftables benchmark starts from an empty table.
pub fn conntrack_flush() -> io::Result<()> {
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // nlmsghdr (16 bytes) + nfgenmsg (family, version, res_id).
    let mut msg = [0u8; 20];
    msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_INET as u8;
    // SAFETY: a zeroed sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and kernel are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // The answer is an NLMSG_ERROR whose error field is 0 (an ACK) or -errno.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        // ENOENT: there was nothing to delete.
        if err == 0 || err == -libc::ENOENT {
            return Ok(());
        }
        return Err(io::Error::from_raw_os_error(-err));
    }
    Err(io::Error::other(format!(
        "unexpected netlink answer of {n} bytes to a conntrack flush"
    )))
}

/// The run-time statistics of a BPF program (BPF_ENABLE_STATS must be on): total ns spent
/// in it and how many times it ran.
pub fn bpf_prog_stats(id: u32) -> Option<(u64, u64)> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)?;
    Some((info.run_time().as_nanos() as u64, info.run_count()))
}

/// The id of the XDP program attached to `dev` in `ns` (`ip -j link show`), if any.
pub fn xdp_prog_id(ns: &Netns, dev: &str) -> Option<u32> {
    let out = ns.exec(["ip", "-j", "link", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let id = json.get(0)?.get("xdp")?.get("prog")?.get("id")?.as_u64()?;
    u32::try_from(id).ok()
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc/PID/stat.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// A small markdown table builder: a header row, then rows of cells.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.header.iter().map(|_| "---|").collect::<String>()
        );
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    /// Aligned plain text for the terminal.
    pub fn text(&self) -> String {
        let cols = self.header.len();
        let mut widths = vec![0usize; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in std::iter::once(&self.header).chain(&self.rows).enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
                let _ = writeln!(out, "  {}", "-".repeat(total));
            }
        }
        out
    }
}

/// A userspace stand-in for what disturbs a per-packet measurement on a shared VM: the
/// time of one dependent load at a random place in 64 MiB (past the last-level cache), on
/// the CPU the bench runs on. Another tenant's memory traffic or a stolen CPU makes it
/// slower for as long as it lasts, and the per-packet cases slow with it. A case's rounds
/// all fall in such a stretch when it lasts longer than the case, so their spread stays
/// small; this probe, taken before and after each case, shows the stretch.
pub struct HostProbe {
    /// A single cycle through every slot: `next[i]` is the slot loaded after `i`.
    next: Vec<u32>,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl HostProbe {
    const SLOTS: usize = 16 << 20;
    /// Loads per reading: about 30 ms on the benchmark VM (150 ns a load).
    const LOADS: u32 = 200_000;

    pub fn new() -> Self {
        Self::with_slots(Self::SLOTS)
    }

    fn with_slots(slots: usize) -> Self {
        // Sattolo's shuffle gives one cycle through all slots, so the chase never settles
        // into a short loop the caches would hold. xorshift64: no dependency for a
        // permutation that only has to defeat the prefetchers.
        let mut next: Vec<u32> = (0..slots as u32).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..slots).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = (state % i as u64) as usize;
            next.swap(i, j);
        }
        Self { next }
    }

    /// Nanoseconds per dependent load, now.
    pub fn ns_per_load(&self) -> f64 {
        let mut at = 0u32;
        let started = std::time::Instant::now();
        for _ in 0..Self::LOADS {
            at = self.next[at as usize];
        }
        let elapsed = started.elapsed();
        std::hint::black_box(at);
        elapsed.as_nanos() as f64 / f64::from(Self::LOADS)
    }
}

/// `perf record --control fifo:CTL,ACK` driven from the bench: sampling runs only while a
/// chosen case does (`lb-bench --perf-case`), so a profile holds that case and nothing of
/// the set-up, the floors or the other cases around it.
#[derive(Debug)]
pub struct PerfWindow {
    /// The case profiled, by its name in the report's table.
    pub case: String,
    control: File,
    ack: File,
}

impl PerfWindow {
    /// Opens perf's control and acknowledgement FIFOs (perf must already be running with
    /// `-D -1 --control fifo:CTL,ACK`, or the opening blocks until it is).
    pub fn open(
        case: String,
        control: &std::path::Path,
        ack: &std::path::Path,
    ) -> io::Result<Self> {
        let control = fs::OpenOptions::new().write(true).open(control)?;
        let ack = File::open(ack)?;
        Ok(Self { case, control, ack })
    }

    pub fn enable(&self) -> io::Result<()> {
        self.command("enable")
    }

    pub fn disable(&self) -> io::Result<()> {
        self.command("disable")
    }

    /// Sends one command and waits for perf's `ack`, so no sample of the case is missed
    /// and none of what follows is taken.
    fn command(&self, what: &str) -> io::Result<()> {
        use std::io::{Read as _, Write as _};
        (&self.control).write_all(format!("{what}\n").as_bytes())?;
        // perf writes "ack\n" with its terminating NUL.
        let mut answer = [0u8; 8];
        let got = (&self.ack).read(&mut answer)?;
        if !answer[..got].starts_with(b"ack") {
            return Err(io::Error::other(format!(
                "perf answered {:?} to {what}",
                String::from_utf8_lossy(&answer[..got])
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chase visits every slot before it comes back, so no short loop fits a cache.
    #[test]
    fn the_host_probe_chases_one_cycle_through_every_slot() {
        let probe = HostProbe::with_slots(10_007);
        let mut at = 0u32;
        let mut seen = vec![false; 10_007];
        for _ in 0..10_007 {
            assert!(!seen[at as usize], "slot {at} came back early");
            seen[at as usize] = true;
            at = probe.next[at as usize];
        }
        assert_eq!(at, 0);
    }

    #[test]
    fn summaries_take_the_middle_and_the_range() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (3.0, 1.0, 5.0, 3));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(s.show(1), "2.5 (1.0–4.0)");
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn tables_render_as_markdown() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(t.markdown(), "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
