//! The status page in a real browser: headless Chromium (Debian's `chromium`) inside the
//! LB namespace opens `http://127.0.0.1:PORT/` once and is then left alone, as a person
//! would leave a tab open. The test reads what the page shows through the DevTools
//! protocol (over a pipe, `--remote-debugging-pipe`, so no debugging port is opened):
//! the backends listed, then, after one backend's server is stopped, its row turning red
//! by the page's own refresh.
//!
//! Chromium is installed by `cargo xtask setup --with browser` (and `cargo xtask test`).
//! Without it the test is skipped outside CI and fails in CI.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    ChildGuard, Family, LbDaemon, Netns, Topology, TopologyOptions, VIP, VIP6,
    bird::{LB_AS, ROUTER_AS, Router, require_bird},
    client::TempDir,
    curl_many,
    privilege::in_ci,
    require_root_and_bpf,
    topology::{CLIENT_ADDR, CLIENT_ADDR6, LB_CLIENT_ADDR, LB_CLIENT_ADDR6, backend_addr6},
};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const PAGE_PORT: u16 = 9100;
const B1: &str = "198.18.1.11:8080";
const B2: &str = "198.18.1.12:8080";

/// Whether the browser is there; in CI its absence is a failure, since `cargo xtask
/// test` installs it.
fn require_chromium(test: &str) -> bool {
    if Path::new(CHROMIUM).is_file() {
        return true;
    }
    let why = format!(
        "{CHROMIUM} is missing (Debian package `chromium`; `cargo xtask setup --with browser` \
         installs it)"
    );
    assert!(!in_ci(), "{test}: {why}, and skipping is not allowed in CI");
    eprintln!("SKIP: {test}: {why}");
    false
}

/// A pipe whose ends sit above the standard descriptors and the 3 and 4 Chromium reads
/// and writes DevTools messages on, so moving them there in the child cannot clobber one
/// with the other. Both ends close on exec unless moved.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    let high = |fd: i32| {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own; we own the copy.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(copy >= 10, "fcntl: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is ours and no longer used; `copy` is a fresh descriptor we own.
        unsafe {
            libc::close(fd);
            OwnedFd::from_raw_fd(copy)
        }
    };
    (high(fds[0]), high(fds[1]))
}

/// Headless Chromium driven over the DevTools protocol: JSON messages, each ended by a
/// NUL byte, written to its fd 3 and read from its fd 4.
struct Browser {
    child: ChildGuard,
    commands: File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    _profile: TempDir,
}

impl Browser {
    fn start(ns: &Netns) -> Browser {
        let profile = TempDir::new("chromium");
        let (cmd_read, cmd_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let mut cmd = ns.command(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        let (from, to) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        // SAFETY: runs in the forked child before exec and only calls dup2(2), which is
        // async-signal-safe; the descriptors stay open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(from, 3) < 0 || libc::dup2(to, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = ChildGuard::spawn(cmd);
        // The child's ends now live in the child; closing ours lets EOF through.
        drop(cmd_read);
        drop(reply_write);
        let (tx, replies) = mpsc::channel();
        let reader = File::from(reply_read);
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Browser {
            child,
            commands: File::from(cmd_write),
            replies,
            next_id: 1,
            session: None,
            _profile: profile,
        }
    }

    /// Sends one command (to the attached page once there is one) and waits for its
    /// answer; events that arrive meanwhile are skipped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            panic!(
                "{method}: writing to Chromium: {e}\n{}",
                self.child.stderr()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(reply) if reply["id"] == json!(id) => {
                    assert!(
                        reply.get("error").is_none(),
                        "{method} failed: {}",
                        reply["error"]
                    );
                    return reply["result"].clone();
                }
                Ok(_event) => {}
                Err(e) => panic!(
                    "{method}: no answer from Chromium ({e:?})\n{}",
                    self.child.stderr()
                ),
            }
        }
    }

    /// Opens `url` in a new tab and attaches to it: later calls go to that page.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        );
    }

    /// Evaluates `expression` in the page; it must produce a JSON string.
    fn eval_json(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "the page threw: {}",
            result["exceptionDetails"]
        );
        match result["result"]["value"].as_str() {
            Some(text) => serde_json::from_str(text).expect("the expression returns JSON"),
            None => Value::Null,
        }
    }
}

impl Browser {
    /// With `LB_TEST_SCREENSHOTS=DIR` set, saves what the page looks like as
    /// DIR/NAME.png, for a person to look at (the test itself reads the DOM).
    fn screenshot(&mut self, name: &str) {
        let Some(dir) = std::env::var_os("LB_TEST_SCREENSHOTS") else {
            return;
        };
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = shot["data"].as_str().expect("screenshot data");
        let path = Path::new(&dir).join(format!("{name}.png"));
        let mut decode = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(File::create(&path).expect("screenshot file"))
            .spawn()
            .expect("base64");
        decode
            .stdin
            .take()
            .expect("stdin")
            .write_all(data.as_bytes())
            .expect("base64 input");
        assert!(decode.wait().expect("base64").success(), "base64 -d failed");
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    /// Asks Chromium to close (its renderers and helpers go with it), then lets the
    /// guard stop whatever is left.
    fn drop(&mut self) {
        let id = self.next_id;
        let close = format!("{{\"id\":{id},\"method\":\"Browser.close\"}}\0");
        if self.commands.write_all(close.as_bytes()).is_ok() {
            self.child.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// What a person sees of the page: the heading, the listeners, and each backend row's
/// state attribute, text and computed background colour.
const READ_PAGE: &str = r#"JSON.stringify({
  instance: (document.getElementById("instance") || {}).textContent || "",
  banner: (document.getElementById("banner") || {}).textContent || "",
  listeners: Array.from(document.querySelectorAll("section[data-listener]"))
    .map(s => ({ name: s.dataset.listener,
                 caption: (s.querySelector("caption") || {}).textContent || "",
                 summary: (s.querySelector("p.meta") || {}).textContent || "" })),
  rows: Array.from(document.querySelectorAll("tr[data-backend]")).map(r => ({
    listener: r.closest("section[data-listener]").dataset.listener,
    backend: r.dataset.backend,
    state: r.dataset.state,
    text: r.innerText,
    background: getComputedStyle(r).backgroundColor,
    badge: getComputedStyle(r.querySelector(".badge")).backgroundColor,
  })),
})"#;

/// `rgb(r, g, b)` or `rgba(r, g, b, a)` → (r, g, b).
fn rgb(css: &str) -> (u8, u8, u8) {
    let inner = css
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a CSS colour: {css}"));
    let parts: Vec<u8> = inner
        .split(',')
        .take(3)
        .map(|p| {
            p.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad colour {css}"))
        })
        .collect();
    (parts[0], parts[1], parts[2])
}

/// A colour a person calls red: red clearly dominates green and blue.
fn reddish(css: &str) -> bool {
    let (r, g, b) = rgb(css);
    r >= 150 && i32::from(r) - i32::from(g) >= 40 && i32::from(r) - i32::from(b) >= 40
}

fn row<'a>(page: &'a Value, backend: &str) -> Option<&'a Value> {
    page["rows"]
        .as_array()?
        .iter()
        .find(|r| r["backend"] == json!(backend))
}

/// Reads the page until `check` accepts it (it says why not otherwise).
fn wait_page(
    browser: &mut Browser,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&Value) -> Result<(), String>,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let page = browser.eval_json(READ_PAGE);
        match check(&page) {
            Ok(()) => return page,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}: {why}\npage: {page:#}")
            }
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[test]
fn a_backend_going_down_turns_red_on_the_status_page() {
    let test = "a_backend_going_down_turns_red_on_the_status_page";
    if !require_root_and_bpf(test) || !require_chromium(test) {
        return;
    }
    let topo = Topology::build("stp", 2, TopologyOptions::default());
    topo.pin_neighbors();
    let mut backends = topo.start_backends(Some(8080), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}
interfaces: [{}, {}]
flow_table_size: 65536
max_listeners: 8
max_backends: 256
metrics_listen: 127.0.0.1:{PAGE_PORT}
default_server_group:
  servers:
    - {{ address: 198.18.1.11 }}
    - {{ address: 198.18.1.12 }}
listeners:
  - name: web
    protocol: tcp
    address: {VIP}
    port: 80
    backend_port: 8080
    health_check: {{ type: tcp, interval: 1, timeout: 1, healthy_threshold: 2, unhealthy_threshold: 2 }}
",
        topo.lb_client_if(),
        topo.lb_backend_if()
    );
    let _daemon = LbDaemon::start(topo.lb(), &instance, &config);
    // Some traffic, so the counters have something to show.
    let results = curl_many(topo.client(), &format!("http://{VIP}:80/"), 20, None, 4);
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut browser = Browser::start(topo.lb());
    browser.open(&format!("http://127.0.0.1:{PAGE_PORT}/"));

    // Both backends listed, up, and not red.
    let page = wait_page(
        &mut browser,
        "both backends up",
        Duration::from_secs(20),
        |p| {
            for b in [B1, B2] {
                match row(p, b) {
                    Some(r) if r["state"] == "up" => {}
                    Some(r) => return Err(format!("{b} is {}", r["state"])),
                    None => return Err(format!("no row for {b}")),
                }
            }
            Ok(())
        },
    );
    assert_eq!(page["instance"], json!(instance), "{page:#}");
    assert_eq!(page["listeners"][0]["name"], "web", "{page:#}");
    let caption = page["listeners"][0]["caption"].as_str().unwrap_or_default();
    assert!(caption.contains("198.19.0.100:80"), "caption {caption:?}");
    browser.screenshot("status-page-up");
    for b in [B1, B2] {
        let r = row(&page, b).unwrap();
        let background = r["background"].as_str().unwrap_or_default();
        assert!(
            !reddish(background),
            "{b} is up but its row is {background}"
        );
        let text = r["text"].as_str().unwrap_or_default();
        assert!(text.contains("up"), "{b}: {text:?}");
    }

    // Live rates, computed by the page from two samples, while traffic flows.
    let flowing = std::sync::atomic::AtomicBool::new(true);
    thread::scope(|scope| {
        let client = topo.client();
        let flowing = &flowing;
        scope.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while flowing.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                curl_many(client, &format!("http://{VIP}:80/"), 20, None, 2);
            }
        });
        wait_page(
            &mut browser,
            "a new-flow rate",
            Duration::from_secs(15),
            |p| {
                let summary = p["listeners"][0]["summary"].as_str().unwrap_or_default();
                let rate = summary
                    .split(" · ")
                    .find_map(|part| part.strip_suffix(" new flows/s"))
                    .and_then(|n| n.parse::<f64>().ok());
                match rate {
                    Some(r) if r > 0.0 => Ok(()),
                    _ => Err(format!("listener summary {summary:?}")),
                }
            },
        );
        browser.screenshot("status-page-traffic");
        flowing.store(false, std::sync::atomic::Ordering::Relaxed);
    });

    // Stop b2's server: two failed probes a second apart take it down, and the page,
    // refreshing by itself, turns its row red. b1 stays as it was.
    backends[1].stop();
    let page = wait_page(
        &mut browser,
        "b2 down and red",
        Duration::from_secs(20),
        |p| {
            let r = row(p, B2).ok_or("no row for b2")?;
            let background = r["background"].as_str().unwrap_or_default();
            if r["state"] != "down" {
                return Err(format!("b2 is {}", r["state"]));
            }
            if !reddish(background) {
                return Err(format!("b2 is down but its row is {background}"));
            }
            Ok(())
        },
    );
    browser.screenshot("status-page-down");
    let down = row(&page, B2).unwrap();
    assert!(
        reddish(down["badge"].as_str().unwrap_or_default()),
        "the state badge of a down backend: {down}"
    );
    assert!(
        down["text"].as_str().unwrap_or_default().contains("down"),
        "{down}"
    );
    let up = row(&page, B1).unwrap();
    assert_eq!(up["state"], "up", "{page:#}");
    assert!(
        !reddish(up["background"].as_str().unwrap_or_default()),
        "{up}"
    );
    assert_eq!(page["banner"], "", "the page reports a problem: {page:#}");
}

/// What a person sees of the page's BGP section (nothing while the page loads).
const READ_BGP: &str = r##"JSON.stringify({
  hidden: (document.getElementById("bgp") || {hidden: true}).hidden,
  announced: (document.getElementById("bgp-announced") || {}).textContent || "",
  sessions: Array.from(document.querySelectorAll("#bgp-sessions tr[data-neighbor]")).map(r => ({
    neighbor: r.dataset.neighbor,
    state: r.dataset.session,
    text: r.innerText,
    background: getComputedStyle(r).backgroundColor,
  })),
})"##;

/// A dual-stack host announcing an IPv4 and an IPv6 VIP, each over the session of its
/// family with a router: the page lists both sessions established and both VIPs
/// announced, IPv6 ones as plain addresses (no port, so no brackets).
#[test]
fn bgp_sessions_and_vips_of_both_families_on_the_status_page() {
    let test = "bgp_sessions_and_vips_of_both_families_on_the_status_page";
    if !require_root_and_bpf(test) || !require_chromium(test) || !require_bird(test) {
        return;
    }
    let topo = Topology::build(
        "stb",
        2,
        TopologyOptions {
            family: Family::DualStack,
            ..Default::default()
        },
    );
    topo.pin_neighbors();
    let _router = Router::start(
        topo.client(),
        CLIENT_ADDR,
        false,
        &[IpAddr::from(LB_CLIENT_ADDR), LB_CLIENT_ADDR6.into()],
    );
    let _backends = topo.start_backends(Some(8080), None);
    let instance = format!("{}i", topo.prefix());
    let config = format!(
        "instance: {instance}
interfaces: [{}, {}]
flow_table_size: 65536
max_listeners: 8
max_backends: 256
metrics_listen: 127.0.0.1:{PAGE_PORT}
bgp:
  router_id: {LB_CLIENT_ADDR}
  local_as: {LB_AS}
  hold_time: 3
  neighbors:
    - {{ address: {CLIENT_ADDR}, remote_as: {ROUTER_AS} }}
    - {{ address: \"{CLIENT_ADDR6}\", remote_as: {ROUTER_AS} }}
vserver_groups:
  - name: app4
    servers: [{{ address: 198.18.1.11, port: 8080 }}]
  - name: app6
    servers: [{{ address: \"{}\", port: 8080 }}]
listeners:
  - {{ name: web, protocol: tcp, address: {VIP}, port: 80, server_group: app4 }}
  - {{ name: web6, protocol: tcp, address: \"{VIP6}\", port: 80, server_group: app6 }}
",
        topo.lb_client_if(),
        topo.lb_backend_if(),
        backend_addr6(1),
    );
    let _daemon = LbDaemon::start(topo.lb(), &instance, &config);
    let mut browser = Browser::start(topo.lb());
    browser.open(&format!("http://127.0.0.1:{PAGE_PORT}/"));

    let neighbors = [CLIENT_ADDR.to_string(), CLIENT_ADDR6.to_string()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = browser.eval_json(READ_BGP);
        let sessions = page["sessions"].as_array().cloned().unwrap_or_default();
        let established = neighbors.iter().all(|n| {
            sessions
                .iter()
                .any(|s| s["neighbor"] == json!(n) && s["state"] == "established")
        });
        if established
            && page["announced"]
                .as_str()
                .is_some_and(|a| a.contains(&VIP6.to_string()))
        {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "both sessions established and both VIPs announced: not within 30 s\npage: {page:#}"
        );
        thread::sleep(Duration::from_millis(250));
    };
    browser.screenshot("status-page-bgp");
    assert_eq!(page["hidden"], false, "{page:#}");
    assert!(
        page["announced"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("Announced: {VIP}, {VIP6} · ")),
        "{page:#}"
    );
    for s in page["sessions"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap_or_default();
        assert!(text.contains("established"), "{s}");
        assert!(!text.contains('['), "an address in brackets: {s}");
        assert!(
            !reddish(s["background"].as_str().unwrap_or_default()),
            "an established session's row: {s}"
        );
    }
}
