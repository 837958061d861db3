//! Network namespaces owned by a test, and processes running inside them.
//!
//! Everything here panics on failure with the failing command and its output: tests
//! report a panic with its location, which is what a failing fixture should produce.

use std::{
    ffi::{OsStr, OsString},
    fmt::{self, Display},
    fs::File,
    io::{self, Read},
    os::{
        fd::AsFd,
        unix::process::{CommandExt, ExitStatusExt},
    },
    panic,
    path::PathBuf,
    process::{self, Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Counter behind [`unique_prefix`].
static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serialises `ip netns add`/`del` within this process: the first `ip netns add` of a boot
/// sets up the shared `/run/netns` mount, and concurrent first calls from parallel tests
/// can trip over each other.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Captured output kept per stream; the rest is read and dropped so the child never blocks.
const CAPTURE_LIMIT: usize = 4 << 20;

/// A name prefix unique to this test process and call: `lbt` + the pid modulo 100000
/// (5 digits) + a per-process counter (2 base-36 digits) + up to 3 lowercase alphanumeric
/// characters of `tag`.
///
/// At most 13 characters, so that the prefix plus a role name of up to 2 characters
/// (`c`, `lb`, `sw`, `b1`…`b9`) still fits the 15 bytes of an interface name. The fixed
/// widths keep different (pid, counter) pairs from spelling the same string.
pub fn unique_prefix(tag: &str) -> String {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed) % (36 * 36);
    let digit = |d: u32| char::from_digit(d, 36).unwrap_or('0');
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(3)
        .collect();
    format!(
        "lbt{:05}{}{}{tag}",
        process::id() % 100_000,
        digit(n / 36),
        digit(n % 36)
    )
}

/// Renders a command line for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
            s.push_str(&format!(" '{}'", arg.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&arg);
        }
    }
    s
}

/// Runs `cmd` to completion, panicking only when it cannot be started at all.
pub(crate) fn output_of(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

/// Runs `cmd`, returning its stdout; panics with the command, status, stdout and stderr
/// when it fails.
pub(crate) fn check(cmd: &mut Command) -> String {
    let out = output_of(cmd);
    if !out.status.success() {
        panic!("{}", failure_message(&describe(cmd), &out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn failure_message(what: &str, out: &Output) -> String {
    format!(
        "`{what}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// A network namespace created by the test; deleted on drop, after every process still
/// inside it has been killed (a process left inside would keep the namespace, and its
/// interfaces, alive after the name is gone).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, then brings `lo` up (tests bind to and probe local addresses).
    pub fn create(name: &str) -> Netns {
        {
            let _lock = netns_lock();
            let out = output_of(Command::new("ip").args(["netns", "add", name]));
            if !out.status.success() {
                let mut msg = failure_message(&format!("ip netns add {name}"), &out);
                if String::from_utf8_lossy(&out.stderr).contains("File exists") {
                    msg.push_str(
                        "\n(a namespace of that name is left over from a killed test run; \
                         remove stale ones with `ip netns list | grep ^lbt`)",
                    );
                }
                panic!("{msg}");
            }
        }
        // From here on the guard owns the namespace, so a panic below still removes it.
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.link_up("lo");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/NAME`, as used by setns(2).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn exec_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` inside the namespace (`ip netns exec NAME args…`) and returns its
    /// output whatever the exit status. Note that `ip netns exec` remounts `/sys`, so the
    /// command sees the namespace's `/sys/class/net` but not the root bpffs; see
    /// [`Netns::command`] for the other way round.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output_of(&mut self.exec_command(args))
    }

    /// Like [`Netns::exec`] but panics with the command, status, stdout and stderr unless
    /// it succeeds; returns stdout.
    pub fn run_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        check(&mut self.exec_command(args))
    }

    /// `ip -n NAME args…`, panicking on failure; returns stdout.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        check(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A `Command` for `program` whose child process joins this namespace with setns(2)
    /// just before exec. Unlike `ip netns exec` it keeps the caller's mounts, so the
    /// child sees the root bpffs at `/sys/fs/bpf` (needed for pinned maps and links) but
    /// also the root namespace's `/sys/class/net`. Run it with [`ChildGuard::spawn`] or
    /// `Command::output`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let file = self.open();
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // setns(2) system call, which is async-signal-safe (rustix calls it directly and
        // allocates nothing). `file` moves into the closure, so the descriptor stays open
        // for as long as the Command (and every spawn of it) lives.
        unsafe {
            cmd.pre_exec(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(io::Error::from)
            });
        }
        cmd
    }

    /// Starts `args` inside the namespace (`ip netns exec`, which execs in place, so the
    /// guard's pid is the command's) with output captured; see [`ChildGuard`]. It returns
    /// as soon as the process exists, possibly before it has switched namespaces: wait for
    /// its output ([`ChildGuard::wait_for_output`]) to know it is up.
    pub fn spawn<I, S>(&self, args: I) -> ChildGuard
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ChildGuard::spawn(self.exec_command(args))
    }

    fn open(&self) -> File {
        File::open(self.path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.path().display()))
    }

    /// Runs `f` on a fresh thread that has joined this namespace with setns(2), returning
    /// its result and re-raising its panic. Sockets created and BPF_PROG_TEST_RUN runs made
    /// by `f` belong to the namespace (`bpf_fib_lookup` answers from the calling thread's
    /// namespace), while the process keeps its mounts, bpffs included. A fresh thread,
    /// because a thread cannot be moved back safely once it has switched.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open();
        let name = &self.name;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("netns {name}"))
                .spawn_scoped(scope, move || {
                    // Changes this thread's network namespace only.
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap_or_else(|e| panic!("setns into namespace {name} failed: {e}"));
                    drop(file);
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot start a thread for namespace {name}: {e}"));
            match handle.join() {
                Ok(r) => r,
                Err(payload) => panic::resume_unwind(payload),
            }
        })
    }

    /// `ip addr add CIDR dev DEV`.
    pub fn addr_add(&self, dev: &str, cidr: impl Display) {
        self.ip(["addr", "add", &cidr.to_string(), "dev", dev]);
    }

    /// `ip addr add CIDR dev DEV nodad`: an IPv6 address usable at once, without the
    /// second or so of duplicate address detection during which it is "tentative" and
    /// neither binds nor sources packets.
    pub fn addr_add_nodad(&self, dev: &str, cidr: impl Display) {
        self.ip(["addr", "add", &cidr.to_string(), "dev", dev, "nodad"]);
    }

    /// `ip link set DEV up`.
    pub fn link_up(&self, dev: &str) {
        self.ip(["link", "set", dev, "up"]);
    }

    /// `ip route add DEST via VIA` (`DEST` may be `default`; the family is VIA's, so
    /// `route_add("default", ipv6_gateway)` adds the IPv6 default route).
    pub fn route_add(&self, dest: impl Display, via: impl Display) {
        self.ip(["route", "add", &dest.to_string(), "via", &via.to_string()]);
    }

    /// A permanent neighbour entry: the kernel (and `bpf_fib_lookup`) then knows `ip`'s MAC
    /// without ARP (IPv4) or neighbour discovery (IPv6, `ip` infers the family), so the
    /// first packet of a test is not lost to neighbour resolution.
    pub fn neigh_permanent(&self, dev: &str, ip: impl Display, mac: &str) {
        self.ip([
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, key: &str, value: impl Display) {
        self.sysctls(&[(key, value.to_string())]);
    }

    /// Several sysctls in one `sysctl -w` call (one process instead of many).
    pub fn sysctls<V: Display>(&self, settings: &[(&str, V)]) {
        let mut args: Vec<OsString> = vec!["sysctl".into(), "-q".into(), "-w".into()];
        args.extend(settings.iter().map(|(k, v)| format!("{k}={v}").into()));
        self.run_ok(args);
    }

    /// GRO on for DEV: XDP_TX/XDP_REDIRECT frames into a veth are only delivered when the
    /// receiving end has GRO on (or an XDP program of its own). The sending end learns
    /// that (its `ndo_xdp_xmit` feature) only when the receiving end's GRO setting
    /// changes while both are up: seen here, GRO set before the link came up left every
    /// redirected frame dropped. So: call it after both ends are up, and it switches GRO
    /// off and on again, which is harmless when it was already on.
    pub fn gro_on(&self, dev: &str) {
        self.run_ok(["ethtool", "-K", dev, "gro", "off"]);
        self.run_ok(["ethtool", "-K", dev, "gro", "on"]);
    }

    /// `ethtool -K DEV tx off rx off`: without checksum offload, packets carry real
    /// checksums, so what XDP sees and rewrites is what a NIC would have delivered.
    pub fn checksum_offload_off(&self, dev: &str) {
        self.run_ok(["ethtool", "-K", dev, "tx", "off", "rx", "off"]);
    }

    /// `ip link set dev DEV address MAC`.
    pub fn set_mac(&self, dev: &str, mac: &str) {
        self.ip(["link", "set", "dev", dev, "address", mac]);
    }

    /// The MAC address of `dev`, as `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self, dev: &str) -> String {
        // /sys of `ip netns exec` is this namespace's, so the path names our device.
        self.run_ok(["cat", &format!("/sys/class/net/{dev}/address")])
            .trim()
            .to_owned()
    }

    /// The ifindex of `dev` in this namespace (what XDP attachment and `bpf_redirect` use).
    pub fn ifindex(&self, dev: &str) -> u32 {
        // The SIOCGIFINDEX ioctl answers from the namespace of the socket it is asked on
        // (if_nametoindex(3) does the same), so the socket is made inside.
        self.enter(|| {
            let socket = rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::DGRAM,
                None,
            )?;
            rustix::net::netdevice::name_to_index(&socket, dev)
        })
        .unwrap_or_else(|e| panic!("no interface {dev} in namespace {}: {e}", self.name))
    }

    /// Pids of the processes inside the namespace (`ip netns pids`), without this process.
    pub fn pids(&self) -> Vec<i32> {
        let out = output_of(Command::new("ip").args(["netns", "pids", &self.name]));
        let own = process::id() as i32;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != own)
            .collect()
    }

    /// SIGTERM to every process inside, SIGKILL to those still there after the grace time.
    fn kill_all(&self) {
        let pids = self.pids();
        if pids.is_empty() {
            return;
        }
        for &pid in &pids {
            signal_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline && !self.pids().is_empty() {
            thread::sleep(Duration::from_millis(20));
        }
        for pid in self.pids() {
            signal_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// kill(2), ignoring a process that is already gone.
fn signal_process(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _lock = netns_lock();
        let out = output_of(Command::new("ip").args(["netns", "del", &self.name]));
        // No panic here: Drop also runs while a failing test unwinds, and a second panic
        // would abort the whole test binary (and skip every other cleanup).
        if !out.status.success() {
            eprintln!(
                "warning: {}",
                failure_message(&format!("ip netns del {}", self.name), &out)
            );
        }
    }
}

fn netns_lock() -> MutexGuard<'static, ()> {
    // A test that panicked while holding the lock leaves nothing half-done that matters.
    NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates a veth pair with end `a_name` in `a` and end `b_name` in `b`.
///
/// The pair is created inside `a` with its peer placed straight into `b`, so it never
/// exists in the root namespace: names only have to be unique within each namespace, and
/// parallel tests cannot collide.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.ip([
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ]);
}

/// What the reader threads of a [`ChildGuard`] have collected.
#[derive(Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open_streams: u8,
}

#[derive(Default)]
struct Capture {
    state: Mutex<Captured>,
    changed: Condvar,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 2 s) and reaped on drop.
///
/// stdin is `/dev/null`; stdout and stderr are read continuously by background threads
/// (so the child never blocks on a full pipe) and kept for [`ChildGuard::stdout`],
/// [`ChildGuard::wait_for_output`] and error messages.
pub struct ChildGuard {
    child: Child,
    label: String,
    capture: Arc<Capture>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with captured output; panics with the command line if it cannot start.
    pub fn spawn(mut cmd: Command) -> ChildGuard {
        let label = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
        let capture = Arc::new(Capture::default());
        capture.lock().open_streams = 2;
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for (stream, is_stdout) in [(stdout, true), (stderr, false)] {
            let capture = Arc::clone(&capture);
            let Some(mut stream) = stream else {
                capture.lock().open_streams -= 1;
                continue;
            };
            // Detached on purpose: a grandchild may hold the pipe open past our child.
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut state = capture.lock();
                    let sink = if is_stdout {
                        &mut state.stdout
                    } else {
                        &mut state.stderr
                    };
                    let room = CAPTURE_LIMIT.saturating_sub(sink.len());
                    sink.extend_from_slice(&buf[..n.min(room)]);
                    drop(state);
                    capture.changed.notify_all();
                }
                capture.lock().open_streams -= 1;
                capture.changed.notify_all();
            });
        }
        ChildGuard {
            child,
            label,
            capture,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Everything the child wrote to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.capture.lock().stdout).into_owned()
    }

    /// Everything the child wrote to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.capture.lock().stderr).into_owned()
    }

    /// Sends `signal` (e.g. `libc::SIGUSR1`) unless the child has already been reaped.
    pub fn signal(&mut self, signal: i32) {
        if self.try_status().is_none() {
            // Our own unreaped child: the pid cannot have been reused.
            if let Some(signal) = rustix::process::Signal::from_named_raw(signal) {
                signal_process(self.child.id() as i32, signal);
            }
        }
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the child: SIGTERM, SIGKILL after 2 s, then reaps it. Returns its exit status
    /// (a signal status if it had to be killed). Idempotent.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(TERM_GRACE) {
            return status;
        }
        // Child::kill sends SIGKILL; an error means it exited meanwhile, which wait covers.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        self.status = Some(status);
        status
    }

    /// Waits up to `timeout` for the child to exit, then for its output to be read to the
    /// end (a grandchild still holding the pipes gets 1 s), and returns all of it; `None`
    /// if the child is still running.
    pub fn wait_output(&mut self, timeout: Duration) -> Option<Output> {
        let status = self.wait_timeout(timeout)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut state = self.capture.lock();
        while state.open_streams > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .capture
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Some(Output {
            status,
            stdout: state.stdout.clone(),
            stderr: state.stderr.clone(),
        })
    }

    /// Waits until `needle` appears in the child's stdout or stderr, giving up when the
    /// child closes both (it exited) or after `timeout`. The error carries the output.
    pub fn try_wait_for_output(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let mut state = self.capture.lock();
        loop {
            if contains(&state.stdout) || contains(&state.stderr) {
                return Ok(());
            }
            let now = Instant::now();
            let why = if state.open_streams == 0 {
                "the process closed its output (exited?)"
            } else if now >= deadline {
                "timed out"
            } else {
                state = self
                    .capture
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            };
            return Err(format!(
                "waiting for {:?} from `{}`: {why} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(needle),
                self.label,
                timeout.saturating_sub(deadline.saturating_duration_since(now)),
                String::from_utf8_lossy(&state.stdout).trim_end(),
                String::from_utf8_lossy(&state.stderr).trim_end()
            ));
        }
    }

    /// [`ChildGuard::try_wait_for_output`], panicking with the child's output on failure.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) {
        if let Err(e) = self.try_wait_for_output(needle, timeout) {
            panic!("{e}");
        }
    }
}

impl fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildGuard")
            .field("pid", &self.child.id())
            .field("label", &self.label)
            .field("status", &self.status)
            .finish()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
