//! Running commands: each one printed before it runs (`$ cargo build …`), its failure
//! reported with the command line, and the workspace paths the tasks share.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// A command together with the text shown for it: the environment it sets, the program
/// and its arguments, quoted so that the printed line can be pasted into a shell.
pub struct Cmd {
    inner: Command,
    env_text: String,
    text: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut inner = Command::new(program);
        inner.current_dir(workspace_root());
        if std::env::var_os("CARGO_TARGET_DIR").is_some() {
            // Children run in the workspace root: hand them the same directory as an
            // absolute path.
            inner.env("CARGO_TARGET_DIR", target_dir());
        }
        Self {
            inner,
            env_text: String::new(),
            text: quote(program),
        }
    }

    /// `cargo` as the user would type it: the rustup proxy on `PATH`, so that a
    /// `+toolchain` argument works.
    pub fn cargo() -> Self {
        Self::new("cargo")
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.text.push(' ');
        self.text.push_str(&quote(arg));
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Self::arg)
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        let _ = write!(self.env_text, "{key}={} ", quote(value));
        self.inner.env(key, value);
        self
    }

    /// The underlying command, for callers that spawn it themselves.
    pub fn into_command(self) -> Command {
        self.inner
    }

    /// The command line as printed.
    pub fn text(&self) -> String {
        format!("{}{}", self.env_text, self.text)
    }

    /// Prints the command, runs it with the terminal attached and fails unless it
    /// exits with status 0.
    pub fn run(mut self) -> anyhow::Result<()> {
        let text = self.text();
        println!("$ {text}");
        let status = self
            .inner
            .status()
            .with_context(|| format!("could not start `{text}`"))?;
        check(&text, status)
    }

    /// Like [`Cmd::run`], but also copies the command's standard output through line by
    /// line and hands each line to `on_line` (for reading test totals).
    pub fn run_tee(mut self, mut on_line: impl FnMut(&str)) -> anyhow::Result<()> {
        let text = self.text();
        println!("$ {text}");
        let mut child = self
            .inner
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{text}`"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.with_context(|| format!("reading the output of `{text}`"))?;
            println!("{line}");
            on_line(&line);
        }
        let status = child
            .wait()
            .with_context(|| format!("waiting for `{text}`"))?;
        check(&text, status)
    }

    /// Runs the command quietly (a probe, not an action) and returns its exit status and
    /// standard output; `None` when the program does not exist.
    pub fn probe(mut self) -> anyhow::Result<Option<(ExitStatus, String)>> {
        let text = self.text();
        match self.inner.stderr(Stdio::null()).output() {
            Ok(out) => Ok(Some((
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("could not start `{text}`")),
        }
    }

    /// A probe that must succeed: its standard output.
    pub fn read(self) -> anyhow::Result<String> {
        let text = self.text();
        match self.probe()? {
            Some((status, out)) if status.success() => Ok(out),
            Some((status, _)) => bail!("`{text}` failed ({status})"),
            None => bail!("`{text}`: program not found"),
        }
    }
}

fn check(text: &str, status: ExitStatus) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{text}` failed ({status})")
    }
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@')
        });
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (relative to the directory
/// xtask was started in, as cargo reads it), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::env::current_dir()
            .unwrap_or_else(|_| workspace_root().to_owned())
            .join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where `cargo build [--release]` leaves `lb-ctl`.
pub fn lb_ctl_path(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("lb-ctl")
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // std has no geteuid; /proc/self/status has "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// True when running under CI (`CI=true`, as CI runners set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Prints an error and its causes, one per line (no backtrace, whatever
/// `RUST_BACKTRACE` says: the failing command's own output is what matters).
pub fn report(prefix: &str, err: &anyhow::Error) {
    eprintln!("xtask: {prefix}{err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// `1m 02s` or `4.3s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        let whole = d.as_secs();
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else {
        format!("{secs:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, time::Duration};

    use super::{fmt_duration, quote};

    #[test]
    fn printed_commands_can_be_pasted_into_a_shell() {
        assert_eq!(quote(OsStr::new("build-std=core")), "build-std=core");
        assert_eq!(quote(OsStr::new("+deb-web")), "+deb-web");
        assert_eq!(quote(OsStr::new("-f=${Status}")), "'-f=${Status}'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_millis(4_340)), "4.3s");
        assert_eq!(fmt_duration(Duration::from_secs(62)), "1m 02s");
    }
}
