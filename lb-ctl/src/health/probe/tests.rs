//! Probes against servers made by the test on 127.0.0.1 and ::1; nothing leaves the host.

use std::net::{SocketAddr, SocketAddrV4};

use tokio::net::TcpListener;

use super::*;
use crate::config::{HttpCheck, HttpMethod, UdpCheck};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOCALHOST6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn check(kind: HealthCheckKind) -> HealthCheck {
    HealthCheck {
        kind: Some(kind),
        timeout: 1,
        ..HealthCheck::default()
    }
}

fn http_check(codes: Option<Vec<HttpCodeClass>>, method: HttpMethod) -> HealthCheck {
    let mut http = HttpCheck {
        method,
        path: "/healthz".to_owned(),
        ..HttpCheck::default()
    };
    if let Some(codes) = codes {
        http.codes = codes;
    }
    HealthCheck {
        http: Some(http),
        ..check(HealthCheckKind::Http)
    }
}

fn udp_check(request: &str, expect: Option<&str>) -> HealthCheck {
    HealthCheck {
        udp: Some(UdpCheck {
            request: Some(request.to_owned()),
            expect: expect.map(str::to_owned),
        }),
        ..check(HealthCheckKind::Udp)
    }
}

/// The probe of `check`, whose type every test names.
fn probe(check: &HealthCheck, address: IpAddr, port: u16) -> Option<Probe> {
    let kind = check.kind.expect("the test's check names its type");
    Probe::new(kind, check, address, port, None)
}

fn port_of(addr: SocketAddr) -> u16 {
    addr.port()
}

/// A port on `host` where nothing listens (bound, then released).
async fn closed_tcp_port_on(host: IpAddr) -> u16 {
    let l = TcpListener::bind((host, 0)).await.unwrap();
    port_of(l.local_addr().unwrap())
}

async fn closed_tcp_port() -> u16 {
    closed_tcp_port_on(LOCALHOST).await
}

async fn closed_udp_port_on(host: IpAddr) -> u16 {
    let s = UdpSocket::bind((host, 0)).await.unwrap();
    port_of(s.local_addr().unwrap())
}

async fn closed_udp_port() -> u16 {
    closed_udp_port_on(LOCALHOST).await
}

/// Runs the probe of `check` against `host`:`port`, the kernel picking the source.
async fn run_at(check: &HealthCheck, host: IpAddr, port: u16) -> Result<(), ProbeError> {
    probe(check, host, port).unwrap().run(None).await
}

async fn run(check: &HealthCheck, port: u16) -> Result<(), ProbeError> {
    run_at(check, LOCALHOST, port).await
}

async fn http_server(response: &'static str) -> (u16, mpsc::UnboundedReceiver<String>) {
    http_server_on(LOCALHOST, response).await
}

/// An HTTP server on `host` answering each connection with `response` once it has read
/// the request head; sends each request head it read on the returned channel.
async fn http_server_on(
    host: IpAddr,
    response: &'static str,
) -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind((host, 0)).await.unwrap();
    let port = port_of(listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, rx)
}

use tokio::sync::mpsc;

#[test]
fn http_code_classes() {
    let default = HttpCheck::default().codes;
    assert!(status_accepted(200, &default));
    assert!(status_accepted(204, &default));
    assert!(status_accepted(302, &default));
    assert!(!status_accepted(404, &default));
    assert!(!status_accepted(503, &default));
    assert!(!status_accepted(101, &default));
    let four = [HttpCodeClass::Http4xx];
    assert!(status_accepted(404, &four));
    assert!(!status_accepted(200, &four));
    let five = [HttpCodeClass::Http2xx, HttpCodeClass::Http5xx];
    assert!(status_accepted(503, &five));
    assert!(!status_accepted(302, &five));
}

#[test]
fn status_lines() {
    let ok = |s: &str| parse_status_line(s.as_bytes());
    assert_eq!(ok("HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
    assert_eq!(
        ok("HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n"),
        Ok(Some(503))
    );
    assert_eq!(ok("HTTP/1.1 204\r\n"), Ok(Some(204)), "empty reason phrase");
    assert_eq!(ok("HTTP/1.1 302 \n"), Ok(Some(302)), "bare LF");
    assert_eq!(ok(""), Ok(None));
    assert_eq!(ok("HTT"), Ok(None));
    assert_eq!(ok("HTTP/1.1 20"), Ok(None), "line not complete yet");
    for bad in [
        "SSH-2.0-OpenSSH_9.6\r\n",
        "HTTP/2 200\r\n",
        "HTTP/1.1 2000 OK\r\n",
        "HTTP/1.1 20x OK\r\n",
        "HTTP/1.1 099 Weird\r\n",
        "HTTP/1.1\r\n",
        "<html>",
    ] {
        assert_eq!(ok(bad), Err(ProbeError::BadResponse), "{bad:?}");
    }
}

#[test]
fn probe_settings() {
    let mut c = http_check(None, HttpMethod::Head);
    c.port = Some(9000);
    let p = probe(&c, Ipv4Addr::new(198, 18, 1, 10).into(), 8080).unwrap();
    assert_eq!(
        p.target,
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 9000))
    );
    assert_eq!(p.timeout, Duration::from_secs(1));
    let ProbeKind::Http { request, codes } = &p.kind else {
        panic!("{p:?}");
    };
    assert_eq!(
        std::str::from_utf8(request).unwrap(),
        "HEAD /healthz HTTP/1.1\r\nHost: 198.18.1.10:9000\r\nUser-Agent: lb-ctl-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(codes, &HttpCheck::default().codes);
    assert_eq!(probe(&check(HealthCheckKind::None), LOCALHOST, 80), None);
    let ProbeKind::Udp { request, expect } = probe(&check(HealthCheckKind::Udp), LOCALHOST, 53)
        .unwrap()
        .kind
    else {
        panic!("udp");
    };
    assert!(request.is_empty(), "no request: an empty datagram");
    assert_eq!(expect, None);
}

#[tokio::test]
async fn http_probe_against_a_server() {
    let (port, mut requests) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(run(&http_check(None, HttpMethod::Get), port).await, Ok(()));
    let head = requests.recv().await.unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(head.contains("\r\nUser-Agent: lb-ctl-health\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");

    let mut named = http_check(None, HttpMethod::Head);
    if let Some(http) = &mut named.http {
        http.host = Some("example.test".to_owned());
    }
    assert_eq!(run(&named, port).await, Ok(()));
    let head = requests.recv().await.unwrap();
    assert!(head.starts_with("HEAD /healthz HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nHost: example.test\r\n"), "{head}");
}

#[tokio::test]
async fn http_probe_status_classes() {
    let (unavailable, _r1) = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
    let (missing, _r2) = http_server("HTTP/1.0 404 Not Found\r\n\r\n").await;
    let (moved, _r3) = http_server("HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n").await;
    let (garbage, _r4) = http_server("220 smtp.example.test ESMTP\r\n").await;
    let default = http_check(None, HttpMethod::Get);
    assert_eq!(
        run(&default, unavailable).await,
        Err(ProbeError::Status(503))
    );
    assert_eq!(
        run(&default, unavailable).await.unwrap_err().to_string(),
        "status 503"
    );
    assert_eq!(run(&default, missing).await, Err(ProbeError::Status(404)));
    assert_eq!(run(&default, moved).await, Ok(()));
    assert_eq!(run(&default, garbage).await, Err(ProbeError::BadResponse));
    let four = http_check(Some(vec![HttpCodeClass::Http4xx]), HttpMethod::Get);
    assert_eq!(run(&four, missing).await, Ok(()));
    assert_eq!(run(&four, moved).await, Err(ProbeError::Status(302)));
}

#[tokio::test]
async fn http_probe_closed_before_a_status_line() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = port_of(listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let result = run(&http_check(None, HttpMethod::Get), port).await;
    // The server's close arrives as EOF, or as a reset if our request was still unread.
    assert!(
        matches!(
            result,
            Err(ProbeError::BadResponse | ProbeError::Io(io::ErrorKind::ConnectionReset))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn tcp_probe_connects_or_is_refused() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = port_of(listener.local_addr().unwrap());
    assert_eq!(run(&check(HealthCheckKind::Tcp), port).await, Ok(()));
    // The check's port overrides the backend's.
    let mut elsewhere = check(HealthCheckKind::Tcp);
    elsewhere.port = Some(port);
    assert_eq!(run(&elsewhere, closed_tcp_port().await).await, Ok(()));
    drop(listener);
    let closed = closed_tcp_port().await;
    let result = run(&check(HealthCheckKind::Tcp), closed).await;
    assert_eq!(result, Err(ProbeError::Refused));
    assert_eq!(result.unwrap_err().to_string(), "refused");
}

#[tokio::test]
async fn probes_bind_the_source_address() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = port_of(listener.local_addr().unwrap());
    let tcp = probe(&check(HealthCheckKind::Tcp), LOCALHOST, port).unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.map(|(_, peer)| peer) });
    assert_eq!(tcp.run(Some(LOCALHOST)).await, Ok(()));
    let peer = accepted.await.unwrap().unwrap();
    assert_eq!(peer.ip(), LOCALHOST);
    // An address this host does not have cannot be bound: the probe fails at once,
    // without a packet sent.
    let foreign = Some(Ipv4Addr::new(198, 18, 255, 254).into());
    assert_eq!(
        tcp.run(foreign).await,
        Err(ProbeError::Source(io::ErrorKind::AddrNotAvailable))
    );
    let udp = probe(&udp_check("ping", None), LOCALHOST, port).unwrap();
    assert_eq!(
        udp.run(foreign).await,
        Err(ProbeError::Source(io::ErrorKind::AddrNotAvailable))
    );
}

#[tokio::test]
async fn timeout_when_the_server_never_answers() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = port_of(listener.local_addr().unwrap());
    // Accepts, holds the connection, never writes.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = tokio::time::Instant::now();
    let result = run(&http_check(None, HttpMethod::Get), port).await;
    assert_eq!(result, Err(ProbeError::Timeout));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    server.abort();
}

async fn udp_server(reply: Option<&'static str>) -> u16 {
    udp_server_on(LOCALHOST, reply).await
}

/// A UDP server on `host` that answers every datagram with `reply` (or stays silent on
/// `None`).
async fn udp_server_on(host: IpAddr, reply: Option<&'static str>) -> u16 {
    let socket = UdpSocket::bind((host, 0)).await.unwrap();
    let port = port_of(socket.local_addr().unwrap());
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = socket.recv_from(&mut buf).await {
            if let Some(reply) = reply {
                let _ = socket.send_to(reply.as_bytes(), peer).await;
            }
        }
    });
    port
}

#[tokio::test]
async fn udp_probe_with_expect() {
    let pong = udp_server(Some("+PONG\r\n")).await;
    let other = udp_server(Some("-ERR unknown command\r\n")).await;
    let silent = udp_server(None).await;
    let expect = udp_check("PING\r\n", Some("PONG"));
    assert_eq!(run(&expect, pong).await, Ok(()));
    assert_eq!(run(&expect, other).await, Err(ProbeError::UnexpectedReply));
    assert_eq!(run(&expect, silent).await, Err(ProbeError::Timeout));
}

#[tokio::test]
async fn udp_probe_refused_by_icmp_port_unreachable() {
    let closed = closed_udp_port().await;
    let started = tokio::time::Instant::now();
    for check in [udp_check("ping", Some("pong")), udp_check("ping", None)] {
        assert_eq!(run(&check, closed).await, Err(ProbeError::Refused));
    }
    // The ICMP error arrives long before the timeout.
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn udp_probe_without_expect() {
    // Any reply passes at once; silence passes when the timeout ends.
    let answering = udp_server(Some("whatever")).await;
    let silent = udp_server(None).await;
    let no_expect = udp_check("ping", None);
    assert_eq!(run(&no_expect, answering).await, Ok(()));
    let started = tokio::time::Instant::now();
    assert_eq!(run(&no_expect, silent).await, Ok(()));
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// In DSR the probe goes to the VIP, marked for the tunnel of its backend; an HTTP check
/// names the VIP as its host, as clients do.
#[test]
fn a_dsr_probe_is_addressed_to_the_vip_and_marked() {
    let check = HealthCheck {
        kind: Some(HealthCheckKind::Http),
        ..HealthCheck::default()
    };
    let vip = Ipv4Addr::new(198, 19, 0, 100);
    let tunnel = crate::health::ProbeTunnel {
        vip: vip.into(),
        mark: lb_common::probe_mark(7),
    };
    let p = Probe::new(
        HealthCheckKind::Http,
        &check,
        Ipv4Addr::new(198, 18, 1, 11).into(),
        80,
        Some(tunnel),
    )
    .unwrap();
    assert_eq!(p.target, SocketAddr::V4(SocketAddrV4::new(vip, 80)));
    assert_eq!(p.mark, Some(0x4c00_0007));
    let ProbeKind::Http { request, .. } = &p.kind else {
        panic!("an HTTP probe");
    };
    assert!(
        String::from_utf8_lossy(request).contains("Host: 198.19.0.100\r\n"),
        "{}",
        String::from_utf8_lossy(request)
    );
}

// --- IPv6 backends: the same probes over ::1 ----------------------------------------

#[tokio::test]
async fn tcp_probe_of_an_ipv6_backend() {
    let listener = TcpListener::bind((LOCALHOST6, 0)).await.unwrap();
    let port = port_of(listener.local_addr().unwrap());
    let (peers, mut accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((_, peer)) = listener.accept().await {
            let _ = peers.send(peer);
        }
    });
    let tcp = check(HealthCheckKind::Tcp);
    assert_eq!(run_at(&tcp, LOCALHOST6, port).await, Ok(()));
    assert!(accepted.recv().await.unwrap().is_ipv6());
    // From a source of the backend's family, as the checker picks it.
    let p = probe(&tcp, LOCALHOST6, port).unwrap();
    assert_eq!(p.run(Some(LOCALHOST6)).await, Ok(()));
    assert_eq!(accepted.recv().await.unwrap().ip(), LOCALHOST6);
}

#[tokio::test]
async fn a_closed_ipv6_port_is_down() {
    let tcp = run_at(
        &check(HealthCheckKind::Tcp),
        LOCALHOST6,
        closed_tcp_port_on(LOCALHOST6).await,
    )
    .await;
    assert_eq!(tcp, Err(ProbeError::Refused));
    // UDP: the ICMPv6 port unreachable, long before the timeout.
    let started = tokio::time::Instant::now();
    let udp = run_at(
        &udp_check("ping", None),
        LOCALHOST6,
        closed_udp_port_on(LOCALHOST6).await,
    )
    .await;
    assert_eq!(udp, Err(ProbeError::Refused));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn http_probe_of_an_ipv6_backend_names_it_in_brackets() {
    let (port, mut requests) =
        http_server_on(LOCALHOST6, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let get = http_check(None, HttpMethod::Get);
    assert_eq!(run_at(&get, LOCALHOST6, port).await, Ok(()));
    let head = requests.recv().await.unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nHost: [::1]:{port}\r\n")),
        "{head}"
    );
    let (failing, _requests) = http_server_on(LOCALHOST6, "HTTP/1.1 503 Busy\r\n\r\n").await;
    assert_eq!(
        run_at(&get, LOCALHOST6, failing).await,
        Err(ProbeError::Status(503))
    );
    // On port 80 the Host header carries no port, the brackets stay (RFC 3986).
    let ProbeKind::Http { request, .. } = probe(&get, LOCALHOST6, 80).unwrap().kind else {
        panic!("an HTTP probe");
    };
    assert!(
        String::from_utf8_lossy(&request).contains("\r\nHost: [::1]\r\n"),
        "{}",
        String::from_utf8_lossy(&request)
    );
}

#[tokio::test]
async fn udp_probe_of_an_ipv6_backend() {
    let pong = udp_server_on(LOCALHOST6, Some("+PONG\r\n")).await;
    let other = udp_server_on(LOCALHOST6, Some("-ERR\r\n")).await;
    let expect = udp_check("PING\r\n", Some("PONG"));
    assert_eq!(run_at(&expect, LOCALHOST6, pong).await, Ok(()));
    assert_eq!(
        run_at(&expect, LOCALHOST6, other).await,
        Err(ProbeError::UnexpectedReply)
    );
    assert_eq!(
        run_at(&udp_check("ping", None), LOCALHOST6, pong).await,
        Ok(())
    );
}

/// A socket has one family: a source of the other one fails the probe before any packet
/// leaves. The checker never hands one (`HealthCheckSource::for_backend`).
#[tokio::test]
async fn a_source_of_the_other_family_fails_the_probe() {
    let port = closed_tcp_port_on(LOCALHOST6).await;
    let mismatch = Err(ProbeError::Source(io::ErrorKind::InvalidInput));
    for check in [check(HealthCheckKind::Tcp), udp_check("ping", None)] {
        let p = probe(&check, LOCALHOST6, port).unwrap();
        assert_eq!(p.run(Some(LOCALHOST)).await, mismatch);
        let p = probe(&check, LOCALHOST, port).unwrap();
        assert_eq!(p.run(Some(LOCALHOST6)).await, mismatch);
    }
}
