//! The daemon's async shell: the control socket, signals and timers around `Controller`.
//!
//! SIGHUP reloads the config. SIGINT and SIGTERM stop the daemon but leave the pinned
//! data plane running, so traffic keeps flowing while it is down or being upgraded;
//! `lb-ctl teardown` removes the data plane.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};
use tracing::{error, info, warn};

use crate::{
    api::{Request, Response},
    bgp,
    controller::{self, Controller},
    health::{Checker, CheckerOptions},
    web::WebServer,
};

#[derive(Clone, Debug)]
pub struct Options {
    pub controller: controller::Options,
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); None = owner only (0600).
    pub socket_group: Option<String>,
    /// How often the flow table is swept for active-flow counts.
    pub sweep_interval: Duration,
}

/// One daemon per instance: an exclusive lock on `<state-dir>/<instance>.lock`, held for
/// the daemon's life (the kernel releases it if the process dies).
pub struct InstanceLock {
    _file: fs::File,
}

pub fn lock_instance(state_dir: &Path, instance: &str) -> anyhow::Result<InstanceLock> {
    fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state folder {}", state_dir.display()))?;
    let path = state_dir.join(format!("{instance}.lock"));
    // O_NOFOLLOW: the daemon runs as root and writes its pid into this file; a link
    // planted here would make it truncate and write whatever the link points to.
    let mut file = match fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "refusing the instance lock {}: it is a symbolic link, and the daemon does not \
             write through links. Remove it (nothing else should create files in the state \
             folder)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another lb-ctl daemon is running instance {instance} (pid {}, lock {}); stop it \
             first, or give this one another instance name",
            holder.trim(),
            path.display()
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(InstanceLock { _file: file })
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("group name")?;
    // getgrnam_r, not getgrnam: the daemon's runtime has threads, and getgrnam returns a
    // pointer into storage any thread's call may overwrite. Through libc: the group
    // database is NSS, which only the C library reads (rustix has no call for it).
    // SAFETY: group and result are plain data; all-zero is a valid start.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is to storage we own, `buf` with its true length.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("--socket-group {name}: looking the group up"));
    }
    if result.is_null() {
        bail!("--socket-group {name}: no such group");
    }
    Ok(group.gr_gid)
}

/// Creates the control socket safely: refuses a symlink, or a socket another daemon is
/// serving; replaces a stale one; binds with a umask so it is never briefly open to others.
fn bind_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            bail!(
                "control socket path {} is a symbolic link; refusing to use it (remove it or \
                 choose another --socket)",
                path.display()
            );
        }
        if !meta.file_type().is_socket() {
            bail!(
                "control socket path {} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another daemon is serving {}; stop it first or choose another --socket",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let meta = fs::metadata(dir)?;
        if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
            bail!(
                "the folder of the control socket, {}, is writable by everyone (and not \
                 sticky): another user could replace the socket; choose another --socket",
                dir.display()
            );
        }
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    if let Some(group) = group {
        let gid = group_id(group)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

/// What the control socket's connections share with the daemon's loop. Lock order: the
/// controller before the speaker.
#[derive(Clone)]
struct Shared {
    controller: Arc<Mutex<Controller>>,
    speaker: Arc<Mutex<bgp::Speaker>>,
}

impl Shared {
    /// Tells BGP the section and healthy VIPs after whatever just changed.
    fn publish(&self, c: &Controller) -> impl Future<Output = ()> + Send + '_ {
        // Read before the first await: the controller is not `Sync`.
        let bgp = c.effective().bgp.clone();
        let vips = c.healthy_vips();
        async move { self.speaker.lock().await.publish(bgp.as_ref(), vips) }
    }
}

async fn handle(shared: &Shared, request: Request) -> Response {
    if let Request::DrainHost { undo } = request {
        return drain_host(shared, undo).await;
    }
    if let Request::Flows {
        listener,
        backend,
        backend_port,
        limit,
    } = request
    {
        let backend = backend.map(|b| (b, backend_port));
        let job = shared
            .controller
            .lock()
            .await
            .flows_job(listener.as_deref(), backend, limit);
        return match job {
            Err(e) => Response::from(e),
            Ok(job) => match tokio::task::spawn_blocking(move || controller::run_flows(&job)).await
            {
                Ok(Ok(list)) => Response::ok("", list),
                Ok(Err(e)) => Response::Error {
                    message: format!("{e:#}"),
                    code: crate::api::exit::FAILED,
                },
                Err(e) => Response::Error {
                    message: format!("reading the flow table: {e}"),
                    code: crate::api::exit::FAILED,
                },
            },
        };
    }
    let mut c = shared.controller.lock().await;
    let response = match request {
        Request::Status => match c.status() {
            Err(e) => Response::from(e),
            Ok(mut status) => {
                // BIRD is asked off the controller's lock.
                let probe = shared.speaker.lock().await.status_probe();
                drop(c);
                if let Some(probe) = probe {
                    status.bgp = Some(probe.run().await);
                }
                return Response::ok("", status);
            }
        },
        Request::Stats => c
            .stats()
            .map_or_else(Response::from, |s| Response::ok("", s)),
        Request::Change { change } => controller::respond(c.change(change)),
        Request::Reload => controller::respond(c.reload()),
        Request::Export => Response::ok(c.export(), ()),
        Request::Explain {
            src,
            dst,
            protocol,
            tcp_flags,
        } => controller::respond(c.explain(src, dst, protocol, tcp_flags)),
        Request::Drain {
            group,
            address,
            port,
            timeout,
        } => controller::respond(c.drain(&group, address, port, timeout)),
        Request::Undrain {
            group,
            address,
            port,
        } => controller::respond(c.undrain(&group, address, port)),
        Request::ActiveFlows {
            group,
            address,
            port,
        } => controller::respond(c.active_flows(&group, address, port)),
        Request::DrainHost { .. } | Request::Flows { .. } => unreachable!("answered above"),
    };
    shared.publish(&c).await;
    response
}

/// `lb-ctl drain-host`: withdraws every VIP (or, with `undo`, announces the healthy ones
/// again) and answers once BIRD has the new routes.
async fn drain_host(shared: &Shared, undo: bool) -> Response {
    let (applied, target, vips) = {
        let mut speaker = shared.speaker.lock().await;
        if !speaker.is_configured() {
            return Response::refused(
                "this instance has no `bgp` section: it announces nothing, so there is \
                 nothing to withdraw",
            );
        }
        speaker.drain_host(!undo);
        let vips = speaker.status_probe().map_or(0, |p| p.healthy_vips());
        (speaker.applied(), speaker.wanted(), vips)
    };
    let confirmed = bgp::confirm(applied, target, DRAIN_HOST_CONFIRM).await;
    let pending = if confirmed {
        ""
    } else {
        " (BIRD has not confirmed yet; `lb-ctl status` shows what it announces)"
    };
    let (message, drained) = if undo {
        (
            format!("host undrained: announcing the {vips} VIP(s) with a healthy backend{pending}"),
            false,
        )
    } else {
        info!("drain-host: every VIP withdrawn from BGP; forwarding goes on");
        (
            format!(
                "host drained: every VIP withdrawn from BGP{pending}; this host keeps \
                 forwarding what still reaches it. `lb-ctl drain-host --undo` announces the \
                 VIPs again"
            ),
            true,
        )
    };
    Response::ok(message, serde_json::json!({ "host_drained": drained }))
}

/// Longest `drain-host` waits for BIRD to take the new routes before answering.
const DRAIN_HOST_CONFIRM: Duration = Duration::from_secs(5);

/// Longest request line the control socket reads. Requests are a few hundred bytes; the
/// bound keeps a client that never sends a newline from growing the daemon's memory.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection(shared: Shared, stream: tokio::net::UnixStream) {
    let (read, mut write) = stream.into_split();
    let response = match read_request(read).await {
        Ok(Some(request)) => handle(&shared, request).await,
        Ok(None) => return,
        Err(refusal) => refusal,
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|e| {
        format!(r#"{{"result":"error","message":"encoding the response: {e}","code":1}}"#)
    });
    text.push('\n');
    if let Err(e) = write.write_all(text.as_bytes()).await {
        warn!("control socket: writing a response failed: {e}");
    }
}

/// Reads one request line, at most `MAX_REQUEST_BYTES` long and within `REQUEST_TIMEOUT`;
/// `None` when the client closed without sending anything, `Err` with the refusal to send
/// back otherwise.
async fn read_request(read: impl AsyncRead + Unpin) -> Result<Option<Request>, Response> {
    // One byte more than the limit: a line that reaches it without its newline is too long.
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Err(Response::refused(format!(
                "no request within {} s",
                REQUEST_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(Response::refused(format!("reading the request: {e}"))),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > MAX_REQUEST_BYTES {
        return Err(Response::refused(format!(
            "request larger than {MAX_REQUEST_BYTES} bytes: the control socket takes one JSON \
             request per line, of at most {} KiB",
            MAX_REQUEST_BYTES / 1024
        )));
    }
    serde_json::from_slice::<Request>(&line)
        .map(Some)
        .map_err(|e| Response::refused(format!("not a request this daemon understands: {e}")))
}

/// Copies the XDP program's log records (debug builds) into the daemon's log as they
/// arrive.
async fn forward_xdp_log(logger: crate::dataplane::XdpLogger) {
    // SAFETY: the logger owns its ring buffer's descriptor for as long as it lives, and
    // the AsyncFd owns the logger.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot watch the XDP log ring: {e}");
            return;
        }
    };
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// Starts the health checker on a runtime of its own, on its own thread: probes keep
/// their schedule and their timeouts stay honest while the controller is busy (a reload,
/// a large table rebuild), so a slow controller never marks a healthy backend down.
fn start_checker(
    source: Option<crate::config::HealthCheckSource>,
) -> anyhow::Result<(
    Checker,
    tokio::sync::mpsc::UnboundedReceiver<crate::health::Transition>,
)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("lb-probes")
        .build()
        .context("starting the health checker's runtime")?;
    let started = {
        let _context = runtime.enter();
        Checker::new(CheckerOptions {
            source,
            ..CheckerOptions::default()
        })
    };
    std::thread::Builder::new()
        .name("lb-probes".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .context("starting the health checker's thread")?;
    Ok(started)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let mut controller = Controller::start(options.controller.clone())?;
    let instance = controller.instance().to_owned();
    let (checker, mut transitions) = start_checker(controller.effective().health_check_source)?;
    controller.attach_health(checker)?;
    if let Some(logger) = controller.take_xdp_logger() {
        info!("the XDP program logs every packet (built with LB_EBPF_DEBUG_LOG=1)");
        tokio::spawn(forward_xdp_log(logger));
    }
    let speaker = bgp::Speaker::start(
        &options.controller.state_dir,
        &instance,
        controller.effective().bgp.as_ref(),
    )?;
    let listener = bind_socket(&options.socket, options.socket_group.as_deref())?;
    let controller = Arc::new(Mutex::new(controller));
    let shared = Shared {
        controller: Arc::clone(&controller),
        speaker: Arc::new(Mutex::new(speaker)),
    };
    shared.publish(&*controller.lock().await).await;
    // /metrics and the status page, when the config asks for them (`metrics_listen`).
    let mut web = WebServer::new();
    let (metrics_listen, metrics_hosts) = {
        let c = controller.lock().await;
        (
            c.effective().metrics_listen,
            c.effective().metrics_hosts.clone(),
        )
    };
    if let Err(e) = web.follow(metrics_listen, &metrics_hosts, &controller, &shared.speaker) {
        let _ = fs::remove_file(&options.socket);
        return Err(e.into());
    }
    info!(
        "lb-ctl daemon for instance {instance} ready; control socket {}",
        options.socket.display()
    );

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut sweep = tokio::time::interval(options.sweep_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ramp = tokio::time::interval(Duration::from_secs(1));
    ramp.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(shared.clone(), stream));
                }
                Err(e) => warn!("control socket: accept failed: {e}"),
            },
            _ = hangup.recv() => {
                info!("SIGHUP: reloading {}", options.controller.config_path.display());
                match controller.lock().await.reload() {
                    Ok(done) => info!("{}", done.message),
                    Err(e) => error!("reload refused: {e}"),
                }
            }
            Some(first) = transitions.recv() => {
                // Take every transition already queued, then re-plan once.
                let mut changed = vec![first];
                while let Ok(t) = transitions.try_recv() {
                    changed.push(t);
                }
                let mut c = controller.lock().await;
                match c.health_changed() {
                    Ok(ops) => info!(
                        "{} health change(s) applied ({ops} map operation(s))",
                        changed.len()
                    ),
                    Err(e) => error!("applying health changes failed: {e:#}"),
                }
            }
            _ = ramp.tick() => {
                let mut c = controller.lock().await;
                if c.is_ramping()
                    && let Err(e) = c.health_changed()
                {
                    error!("slow start: applying weights failed: {e:#}");
                }
            }
            _ = sweep.tick() => {
                // Walk the flow table off the lock: a million entries take seconds, and
                // the API must answer meanwhile.
                let job = {
                    let mut c = controller.lock().await;
                    if c.sweep_due() { Some(c.sweep_job()) } else { None }
                };
                let result = match job {
                    None => Ok(None),
                    Some(Ok(job)) => tokio::task::spawn_blocking(move || controller::run_sweep(job))
                        .await
                        .map_err(anyhow::Error::from)
                        .and_then(|r| r.map(Some)),
                    Some(Err(e)) => Err(e.into()),
                };
                let mut c = controller.lock().await;
                match result {
                    Ok(Some(r)) => {
                        if let Err(e) = c.finish_sweep(r) {
                            warn!("flow table sweep failed: {e:#}");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!("flow table sweep failed: {e:#}"),
                }
                if let Err(e) = c.expire_drains() {
                    warn!("retiring drained backends failed: {e:#}");
                }
                if let Err(e) = c.refresh_local_addresses() {
                    warn!("refusing the host's new addresses as client sources failed: {e:#}");
                }
                if let Err(e) = c.check_interfaces() {
                    warn!("re-attaching XDP failed: {e:#}");
                }
                // A reload (SIGHUP or the API) may have moved or removed metrics_listen:
                // followed here, once per sweep, rather than in every reload path.
                let effective = c.effective();
                if let Err(e) = web.follow(
                    effective.metrics_listen,
                    &effective.metrics_hosts,
                    &controller,
                    &shared.speaker,
                ) {
                    error!("{e}");
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        // Whatever happened may have changed which VIPs have a healthy backend (or the
        // bgp section): BGP follows.
        shared.publish(&*controller.lock().await).await;
    }
    // Withdraw, wait, stop BIRD; the data plane keeps forwarding what still arrives.
    shared.speaker.lock().await.stop().await;
    let _ = fs::remove_file(&options.socket);
    info!(
        "stopped; the data plane of instance {instance} stays attached and keeps forwarding \
         (`lb-ctl teardown --instance {instance}` removes it)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// What `read_request` makes of `bytes` sent by a client that then closes.
    async fn read_sent(bytes: Vec<u8>) -> Result<Option<Request>, Response> {
        let (mut client, server) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            // The reader stops early on an oversized request: a failed write is expected.
            let _ = client.write_all(&bytes).await;
        });
        let result = read_request(server).await;
        writer.abort();
        result
    }

    fn refusal(result: Result<Option<Request>, Response>) -> String {
        match result {
            Err(Response::Error { message, .. }) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn control_requests_are_bounded_in_size() {
        assert_eq!(
            read_sent(b"{\"request\":\"status\"}\n".to_vec())
                .await
                .unwrap(),
            Some(Request::Status)
        );
        assert_eq!(
            read_sent(b"{\"request\":\"stats\"}\r\n".to_vec())
                .await
                .unwrap(),
            Some(Request::Stats)
        );
        assert_eq!(read_sent(Vec::new()).await.unwrap(), None);
        // Padded with spaces to exactly the limit: read; one byte more: refused.
        let request = br#"{"request":"status"}"#;
        let padded = |len: usize| {
            let mut line = vec![b' '; len - request.len()];
            line.extend_from_slice(request);
            line.push(b'\n');
            line
        };
        assert_eq!(
            read_sent(padded(MAX_REQUEST_BYTES)).await.unwrap(),
            Some(Request::Status)
        );
        assert_eq!(
            refusal(read_sent(padded(MAX_REQUEST_BYTES + 1)).await),
            format!(
                "request larger than {MAX_REQUEST_BYTES} bytes: the control socket takes one \
                 JSON request per line, of at most 64 KiB"
            )
        );
        // A megabyte without a newline: refused once the limit is reached.
        let huge = vec![b'x'; 1 << 20];
        assert!(refusal(read_sent(huge).await).starts_with("request larger than 65536 bytes"));
    }
}
