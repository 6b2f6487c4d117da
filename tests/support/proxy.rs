//! A fault-injecting HTTP proxy between civicload and the real Datasette: the test double
//! for faults the real server cannot be made to produce (5xx, 429 with Retry-After,
//! connections reset mid-body, truncated bodies, slow answers). One request per
//! connection; the fault for each request is drawn from a seeded RNG.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Probabilities of each fault, per request.
#[derive(Clone, Copy, Debug)]
pub struct FaultPlan {
    pub server_error: f64,
    pub reset_mid_body: f64,
    pub truncated_body: f64,
    pub too_many_requests: f64,
    pub slow: f64,
    pub slow_for: Duration,
    /// The first request whose answer is a full page stalls after half its body, for
    /// good (the connection stays open): only a watchdog gets past it.
    pub stall_once_mid_body: bool,
    pub seed: u64,
}

impl FaultPlan {
    /// The mix of the acceptance check: ~5% 5xx, ~2% resets, ~1% truncated, 429s.
    pub fn acceptance(seed: u64) -> Self {
        FaultPlan {
            server_error: 0.05,
            reset_mid_body: 0.02,
            truncated_body: 0.01,
            too_many_requests: 0.02,
            slow: 0.01,
            slow_for: Duration::from_millis(1500),
            stall_once_mid_body: false,
            seed,
        }
    }
}

/// How many requests met each fault.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    pub server_errors: AtomicU64,
    pub resets: AtomicU64,
    pub truncated: AtomicU64,
    pub too_many: AtomicU64,
    pub slow: AtomicU64,
    pub stalled: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

enum Fault {
    None,
    ServerError,
    Reset,
    Truncated,
    TooMany,
    Slow,
    /// Half the body, then nothing (if no other request stalled before).
    StallOnce,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, plan: FaultPlan) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(FaultCounts::default());
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(plan.seed)));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let fault = {
                    let mut r = rng.lock().unwrap();
                    let x: f64 = r.random();
                    let mut edge = 0.0;
                    let mut pick = |p: f64| {
                        edge += p;
                        x < edge
                    };
                    if pick(plan.server_error) {
                        Fault::ServerError
                    } else if pick(plan.reset_mid_body) {
                        Fault::Reset
                    } else if pick(plan.truncated_body) {
                        Fault::Truncated
                    } else if pick(plan.too_many_requests) {
                        Fault::TooMany
                    } else if pick(plan.slow) {
                        Fault::Slow
                    } else if plan.stall_once_mid_body {
                        Fault::StallOnce
                    } else {
                        Fault::None
                    }
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, fault, plan.slow_for, &c).await;
                });
            }
        });
        FaultProxy { addr, counts, task }
    }

    /// A source template that goes through this proxy.
    pub fn template(&self, upstream_template: &str, upstream: SocketAddr) -> String {
        upstream_template.replace(&upstream.to_string(), &self.addr.to_string())
    }

    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} requests: {} 5xx, {} resets, {} truncated, {} 429, {} slow",
            c.requests.load(Ordering::Relaxed),
            c.server_errors.load(Ordering::Relaxed),
            c.resets.load(Ordering::Relaxed),
            c.truncated.load(Ordering::Relaxed),
            c.too_many.load(Ordering::Relaxed),
            c.slow.load(Ordering::Relaxed)
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    slow_for: Duration,
    counts: &FaultCounts,
) -> std::io::Result<()> {
    let head = read_head(&mut client).await?;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    match fault {
        Fault::ServerError => {
            counts.server_errors.fetch_add(1, Ordering::Relaxed);
            let body = r#"{"ok": false, "error": "injected: QueryInterrupted", "status": 500, "title": null}"#;
            return respond(&mut client, "500 Internal Server Error", &[], body).await;
        }
        Fault::TooMany => {
            counts.too_many.fetch_add(1, Ordering::Relaxed);
            let body = r#"{"error": "rate_limit_exceeded", "detail": "injected"}"#;
            return respond(
                &mut client,
                "429 Too Many Requests",
                &[("Retry-After", "1")],
                body,
            )
            .await;
        }
        _ => {}
    }
    // Forward the request with `Connection: close` so the answer ends at EOF.
    let head_text = String::from_utf8_lossy(&head).to_string();
    let mut lines: Vec<&str> = head_text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let forwarded = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"));
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(response.len());
    match fault {
        Fault::Reset => {
            counts.resets.fetch_add(1, Ordering::Relaxed);
            let cut = split + (response.len() - split) / 2;
            client.write_all(&response[..cut]).await?;
            client.flush().await?;
            // Linger 0: the close sends a TCP reset, as a dropped connection does.
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            drop(client);
            Ok(())
        }
        Fault::Truncated => {
            counts.truncated.fetch_add(1, Ordering::Relaxed);
            // A complete HTTP answer whose JSON body is cut short.
            let body = &response[split..];
            let cut = &body[..body.len() / 2];
            let status_line = String::from_utf8_lossy(&response[..split])
                .lines()
                .next()
                .unwrap_or("HTTP/1.1 200 OK")
                .to_string();
            let status = status_line
                .split_once(' ')
                .map(|x| x.1)
                .unwrap_or("200 OK")
                .to_string();
            respond(
                &mut client,
                &status,
                &[],
                std::str::from_utf8(cut).unwrap_or("{\"ok\": tr"),
            )
            .await
        }
        Fault::Slow => {
            counts.slow.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(slow_for).await;
            client.write_all(&response).await
        }
        // A full page (100 KB or more) of the first stalled request: half of it, then silence.
        Fault::StallOnce
            if response.len() - split > 100_000
                && counts
                    .stalled
                    .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok() =>
        {
            let cut = split + (response.len() - split) / 2;
            client.write_all(&response[..cut]).await?;
            client.flush().await?;
            std::future::pending::<()>().await;
            Ok(())
        }
        _ => client.write_all(&response).await,
    }
}

async fn respond(
    client: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    client.write_all(out.as_bytes()).await?;
    client.flush().await
}
