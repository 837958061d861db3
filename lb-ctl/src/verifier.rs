//! Loading a program so that a rejection is readable: the kernel verifier's log can be
//! megabytes, so the error names the program, the errno, the instructions processed, the
//! log's last lines and what to try, and the whole log goes to a file.
//!
//! How much the verifier writes is chosen once, for the whole object, by [`log_level`].
//! aya 0.14 loads a program without a log first and, only if that fails, verifies it again
//! with a log buffer, ten times larger after each `ENOSPC` (10 KiB up to 16 MiB, at most 11
//! verifications in all). The instruction trace of a program that hits the 1M-instruction
//! limit runs to hundreds of kilobytes or more: it fits on the fourth verification at best,
//! each one taking seconds, and beyond 16 MiB the errno returned is `ENOSPC` instead of the
//! kernel's. So by default the verifier writes only its error lines and statistics: they
//! fit the first buffer, a rejection costs two verifications, and the errno is the real
//! one. `LB_VERIFIER_LOG=full` asks for the trace when someone needs to read it.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use aya::{
    VerifierLogLevel,
    programs::{ProgramError, Xdp},
};

use crate::dataplane::DataPlaneError;

/// Names the verifier log detail: unset or `short` (errors and statistics), `full` (the
/// instruction trace of the failing path), `verbose` (the register state at every step).
pub(crate) const LOG_VAR: &str = "LB_VERIFIER_LOG";

/// Lines of the log the error message shows.
const LAST_LINES: usize = 5;
/// A verifier line with a register dump can run to kilobytes; the message cuts it here.
const MAX_LINE_CHARS: usize = 160;

/// Loads of one program, in all, when the verifier keeps being interrupted by signals.
pub const LOAD_ATTEMPTS: u32 = 5;

/// The verifier log level for loading the object, from `LB_VERIFIER_LOG`.
pub fn log_level() -> VerifierLogLevel {
    let value = std::env::var(LOG_VAR).unwrap_or_default();
    match value.as_str() {
        "full" => VerifierLogLevel::DEBUG | VerifierLogLevel::STATS,
        "verbose" => VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS,
        "" | "short" => VerifierLogLevel::STATS,
        other => {
            tracing::warn!("{LOG_VAR}={other} is not short, full or verbose; using short");
            VerifierLogLevel::STATS
        }
    }
}

/// Loads `program` (called `name` in messages and in the log file's name). When the
/// kernel rejects it, the full verifier log is written to `verifier-<name>.log` in
/// `log_dir` (the system's temporary folder when `None`) and the error is a short
/// [`Rejection`].
///
/// The verifier gives up with `EAGAIN` when a signal reaches the loading thread (a
/// SIGHUP, a SIGCHLD the process handles): that is no verdict on the program, so the load
/// is tried again, [`LOAD_ATTEMPTS`] times in all, as libbpf does.
pub fn load_checked(
    program: &mut Xdp,
    name: &str,
    log_dir: Option<&Path>,
) -> Result<(), DataPlaneError> {
    load_checked_with(name, log_dir, || program.load())
}

/// [`load_checked`] for a program of any type: `load` is its `load()`.
pub fn load_checked_with(
    name: &str,
    log_dir: Option<&Path>,
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), DataPlaneError> {
    let mut attempt = 1;
    let result = loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                tracing::debug!("loading {name}: interrupted by a signal, attempt {attempt}");
                attempt += 1;
            }
            other => break other,
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            let dir = log_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
            let saved = save_log(&dir, name, &log);
            Err(DataPlaneError::Rejected(Box::new(Rejection::new(
                name, &io_error, &log, saved,
            ))))
        }
        Err(other) => Err(other.into()),
    }
}

/// Where the full log went: its path, or why it could not be written there.
pub type SavedLog = Result<PathBuf, (PathBuf, String)>;

/// Writes the whole log to `<dir>/verifier-<name>.log`. An empty log writes nothing.
pub(crate) fn save_log(dir: &Path, name: &str, log: &str) -> Option<SavedLog> {
    if log.trim().is_empty() {
        return None;
    }
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("verifier-{file}.log"));
    let written = fs::create_dir_all(dir).and_then(|()| fs::write(&path, log));
    Some(match written {
        Ok(()) => Ok(path),
        Err(e) => Err((path, e.to_string())),
    })
}

/// A program the kernel refused, summed up for a person: [`fmt::Display`] gives at most
/// 15 lines or so, whatever the size of the log.
pub struct Rejection {
    pub program: String,
    /// The errno of BPF_PROG_LOAD, as text (`Argument list too long (os error 7)`).
    pub error: String,
    pub errno: Option<i32>,
    /// `processed N insns (limit L)` from the verifier's statistics.
    pub processed: Option<u64>,
    pub limit: Option<u64>,
    /// The log's last non-empty lines, trimmed and cut to a readable width.
    pub last_lines: Vec<String>,
    pub log_lines: usize,
    pub log: Option<SavedLog>,
    pub hint: String,
}

impl Rejection {
    /// Sums up a rejection from the syscall's error and the verifier's log text.
    pub fn new(program: &str, error: &io::Error, log: &str, saved: Option<SavedLog>) -> Self {
        let (processed, limit) = processed(log);
        let mut last_lines: Vec<String> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .rev()
            .take(LAST_LINES)
            .map(cut)
            .collect();
        last_lines.reverse();
        Self {
            program: program.to_owned(),
            error: error.to_string(),
            errno: error.raw_os_error(),
            processed,
            limit,
            last_lines,
            log_lines: log.lines().count(),
            log: saved,
            hint: hint(error.raw_os_error(), log),
        }
    }
}

fn cut(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_owned(),
    }
}

/// The last `processed N insns (limit L)` of the log: the statistics line the verifier
/// writes at the end (at every level but 0).
pub(crate) fn processed(log: &str) -> (Option<u64>, Option<u64>) {
    for line in log.lines().rev() {
        let Some(at) = line.find("processed ") else {
            continue;
        };
        let mut words = line[at + "processed ".len()..].split_whitespace();
        let Some(count) = words.next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if words.next().map(|w| w.trim_end_matches(',')) != Some("insns") {
            continue;
        }
        let limit = (words.next() == Some("(limit"))
            .then(|| words.next())
            .flatten()
            .and_then(|l| l.trim_end_matches(')').parse().ok());
        return (Some(count), limit);
    }
    (None, None)
}

fn hint(errno: Option<i32>, log: &str) -> String {
    const REPORT: &str = "`cargo xtask setup` reports this machine's kernel, rustc, LLVM and \
                          bpf-linker and checks the kernel features: compare with a machine \
                          where it loads, and file an issue with that report and the log file";
    // Said only when the log has no trace yet.
    let trace = if has_trace(log) {
        ""
    } else {
        " LB_VERIFIER_LOG=full adds the instruction trace to the log file."
    };
    match errno {
        // The eBPF object is built in release mode whatever the host profile, so a release
        // build of lb-ctl would not change anything here.
        Some(libc::E2BIG) => format!(
            "the program takes more verification steps than this kernel allows (the kernel \
             and the compiler that built the program decide how many). {REPORT}. A build \
             with LB_EBPF_DEBUG_LOG=1 is far larger: rebuild without it."
        ),
        Some(libc::ENOSPC) => format!(
            "the verifier log outgrew aya's largest buffer (16 MiB), and that hides the real \
             error{}: start again without {LOG_VAR}=full or verbose to see it.",
            if log.contains("BPF program is too large") {
                " (here: the program is too large)"
            } else {
                ""
            }
        ),
        Some(libc::EPERM) => "the kernel does not let this process load BPF programs: run as \
                              root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; before \
                              kernel 5.11 also raise the locked-memory limit (`ulimit -l \
                              unlimited`, LimitMEMLOCK=infinity in a systemd unit)."
            .to_owned(),
        Some(libc::EACCES) => format!(
            "the verifier refused an instruction (the last lines say why).{trace} {REPORT}."
        ),
        Some(libc::EINVAL) => format!(
            "the kernel does not accept part of the program: a helper or feature newer than \
             this kernel (bpf_loop needs 5.17, and BTF is needed), or a map of another type \
             pinned under the instance's bpffs folder (`lb-ctl teardown` removes them).{trace} \
             {REPORT}."
        ),
        Some(libc::EAGAIN) => format!(
            "signals kept interrupting the verifier ({LOAD_ATTEMPTS} loads in a row): find \
             what sends this process signals so often (a supervisor's health check, a \
             reload loop) and start again."
        ),
        _ => format!("{REPORT}."),
    }
}

/// Whether the log holds the instruction trace (`LB_VERIFIER_LOG=full`): lines such as
/// `3516: (85) call bpf_redirect_map#51`.
fn has_trace(log: &str) -> bool {
    log.lines().any(|line| {
        line.split_once(": (")
            .is_some_and(|(at, _)| !at.is_empty() && at.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Writes `text` in lines of at most `WIDTH` characters (longer words stay whole), the
/// first after `first`, the others after `indent`.
fn write_wrapped(f: &mut fmt::Formatter<'_>, first: &str, indent: &str, text: &str) -> fmt::Result {
    const WIDTH: usize = 96;
    let mut line = first.to_owned();
    let mut empty = first.is_empty();
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            writeln!(f, "{line}")?;
            line = indent.to_owned();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    write!(f, "{line}")
}

/// The message as it reads, not a one-line field dump: `.expect()` on a failed load (the
/// fixtures do that) shows it this way.
impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{self}\n")
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the kernel rejected the XDP program {}: {}",
            self.program, self.error
        )?;
        match (self.processed, self.limit) {
            (Some(n), limit) => {
                let s = if n == 1 { "" } else { "s" };
                write!(f, "  the verifier processed {n} instruction{s}")?;
                if let Some(limit) = limit {
                    write!(f, " (limit {limit})")?;
                }
            }
            (None, _) => write!(f, "  the verifier gave no instruction count")?,
        }
        if self.last_lines.is_empty() {
            writeln!(f, " and wrote no log")?;
        } else {
            writeln!(f, "; its last lines:")?;
            for line in &self.last_lines {
                writeln!(f, "    | {line}")?;
            }
        }
        match &self.log {
            Some(Ok(path)) => writeln!(
                f,
                "  full verifier log ({} lines): {}",
                self.log_lines,
                path.display()
            )?,
            Some(Err((path, why))) => writeln!(
                f,
                "  the full verifier log ({} lines) could not be written to {}: {why}",
                self.log_lines,
                path.display()
            )?,
            None => {}
        }
        write_wrapped(f, "  what to try:", "    ", &self.hint)
    }
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, io};

    use super::{Rejection, processed, save_log};
    use crate::dataplane::DataPlaneError;

    /// The statistics the verifier ends a log with (kernel 6.x), as in a real report.
    const TOO_LARGE_TAIL: &str = "BPF program is too large. Processed 1000001 insn
verification time 7216531 usec
stack depth 0+0+0
processed 1000001 insns (limit 1000000) max_states_per_insn 68 total_states 20494 peak_states 1048 mark_read 0
";

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lb-ctl-verifier-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A trace of `lines` instruction lines, with a register dump now and then, then the
    /// verifier's final lines.
    fn huge_log(lines: usize) -> String {
        let mut log = String::new();
        for i in 0..lines {
            if i % 100 == 0 {
                let _ = writeln!(
                    log,
                    "{i}: R0=scalar() R1=ctx() R2=pkt(r=54) R3=pkt_end() {}",
                    "R4=scalar(umax=255,var_off=(0x0; 0xff)) ".repeat(40)
                );
            } else {
                let _ = writeln!(log, "{i}: (bf) r{} = r{}", i % 10, (i + 1) % 10);
            }
        }
        log.push_str(TOO_LARGE_TAIL);
        log
    }

    #[test]
    fn a_twelve_thousand_line_log_gives_a_short_message_and_a_complete_file() {
        let dir = scratch("huge");
        let log = huge_log(12_000);
        let saved = save_log(&dir, "lb_xdp", &log);
        let error = io::Error::from_raw_os_error(libc::E2BIG);
        let rejection = Rejection::new("lb_xdp", &error, &log, saved);
        let text = rejection.to_string();
        println!("{text}");

        assert!(text.lines().count() <= 15, "{text}");
        assert!(text.len() < 2_500, "{} bytes:\n{text}", text.len());
        assert!(text.starts_with("the kernel rejected the XDP program lb_xdp: "));
        assert!(
            text.contains("Argument list too long (os error 7)"),
            "{text}"
        );
        assert!(
            text.contains("processed 1000001 instructions (limit 1000000)"),
            "{text}"
        );
        assert!(text.contains("| BPF program is too large. Processed 1000001 insn"));
        assert!(text.contains("| stack depth 0+0+0"));
        assert!(text.contains("LB_EBPF_DEBUG_LOG=1"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
        assert!(text.contains("cargo xtask setup"), "{text}");
        let path = dir.join("verifier-lb_xdp.log");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("(12004 lines)"), "{text}");
        // The file holds everything, byte for byte.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_daemon_prints_the_message_once() {
        // The daemon prints its error as `{:#}` (every cause after the message): a
        // rejection has no cause, so nothing is repeated, unlike aya's LoadError whose
        // text embeds the whole log and which was printed twice.
        let log = huge_log(3_000);
        let rejection = Rejection::new(
            "lb_xdp",
            &io::Error::from_raw_os_error(libc::E2BIG),
            &log,
            None,
        );
        let short = rejection.to_string();
        let error = DataPlaneError::Rejected(Box::new(rejection));
        assert!(format!("{error:?}").len() < 3 * short.len());
        let error = anyhow::Error::from(error);
        assert_eq!(format!("{error:#}"), short);
        assert_eq!(format!("{error}"), short);
    }

    #[test]
    fn long_lines_are_cut_and_empty_lines_skipped() {
        let log = format!(
            "0: (61) r2 = *(u32 *)(r1 +0)\n1: {}\n\n\nR3 invalid mem access 'scalar'\n\n",
            "R1=ctx() ".repeat(500)
        );
        let error = io::Error::from_raw_os_error(libc::EACCES);
        let rejection = Rejection::new("lb_xdp", &error, &log, None);
        assert_eq!(rejection.last_lines.len(), 3);
        assert!(rejection.last_lines[1].chars().count() <= 161);
        assert!(rejection.last_lines[1].ends_with('…'));
        assert_eq!(rejection.last_lines[2], "R3 invalid mem access 'scalar'");
        let text = rejection.to_string();
        assert!(text.contains("gave no instruction count"), "{text}");
        // The log is a trace already: no advice to ask for one.
        assert!(!text.contains("LB_VERIFIER_LOG=full"), "{text}");
        assert!(!text.contains("full verifier log"), "{text}");
        let short = Rejection::new("lb_xdp", &error, "R3 invalid mem access 'scalar'\n", None);
        assert!(
            short.to_string().contains("LB_VERIFIER_LOG=full"),
            "{short}"
        );
    }

    #[test]
    fn no_log_says_so_and_a_permission_error_says_what_to_do() {
        let error = io::Error::from_raw_os_error(libc::EPERM);
        assert!(save_log(&scratch("none"), "lb_xdp", " \n").is_none());
        let text = Rejection::new("lb_xdp", &error, "", None).to_string();
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(text.contains("wrote no log"), "{text}");
        assert!(text.contains("CAP_BPF"), "{text}");
        assert!(text.lines().count() <= 6, "{text}");
    }

    #[test]
    fn an_unwritable_folder_is_reported_with_the_lines_still_shown() {
        let dir = scratch("unwritable");
        std::fs::write(&dir, "a file where the folder should be").unwrap();
        let saved = save_log(&dir, "lb/xdp", TOO_LARGE_TAIL);
        let error = io::Error::from_raw_os_error(libc::E2BIG);
        let text = Rejection::new("lb/xdp", &error, TOO_LARGE_TAIL, saved).to_string();
        assert!(text.contains("could not be written to"), "{text}");
        assert!(text.contains("verifier-lb_xdp.log"), "{text}");
        assert!(text.contains("| verification time 7216531 usec"), "{text}");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn the_instruction_count_comes_from_the_statistics_line() {
        assert_eq!(
            processed(TOO_LARGE_TAIL),
            (Some(1_000_001), Some(1_000_000))
        );
        // Older kernels: no limit, and the count of a subprogram before the total.
        assert_eq!(
            processed("processed 12 insns\nfoo\nprocessed 3530 insns (limit 131072)\n"),
            (Some(3530), Some(131_072))
        );
        assert_eq!(
            processed("processed 77 insns, stack depth 0\n"),
            (Some(77), None)
        );
        assert_eq!(processed("R1 !read_ok\nprocessed one insn\n"), (None, None));
        assert_eq!(processed(""), (None, None));
    }
}
