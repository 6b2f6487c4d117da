//! A TCP proxy in front of PostgreSQL that injects the database-side stalls the real
//! server cannot produce on demand: the first connection that meets a `Trigger` (a COPY
//! streaming its data) is either paused (the proxy stops reading from it for a while, so the
//! client's socket buffer fills mid-COPY) or frozen for good (nothing is forwarded either
//! way, and the sockets stay open: a black hole). TLS passes through untouched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Which connection stalls: the first one whose client...
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    /// ...sends this many bytes in a row with nothing from the server in between (works
    /// through TLS: a COPY streams, the other statements wait for answers).
    Unanswered(u64),
    /// ...has sent this many bytes after the signature of a binary COPY (plain
    /// connections only: the proxy reads the stream).
    CopyData(u64),
}

/// What happens to the connection that meets the trigger.
#[derive(Clone, Copy, Debug)]
pub enum Stall {
    /// The proxy stops reading from the client for this long, then goes on.
    Pause(Duration),
    /// Nothing more is forwarded on that connection, ever.
    Freeze,
}

pub struct PgProxy {
    pub port: u16,
    /// The stall has begun.
    pub stalled: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// The connections' pumps: aborted with the proxy, which closes every socket (a
    /// frozen connection's server session then ends, as when a client process dies).
    pumps: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl PgProxy {
    /// Listens on a free port and forwards to `upstream`. The listening socket's receive
    /// buffer is small, so that a client's writes block soon after the proxy stops reading.
    pub async fn start(upstream: SocketAddr, trigger: Trigger, stall: Stall) -> PgProxy {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(32 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let armed = Arc::new(AtomicBool::new(true));
        let flag = stalled.clone();
        let pumps: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let spawned = pumps.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let rule = Rule {
                    trigger,
                    stall,
                    armed: armed.clone(),
                    stalled: flag.clone(),
                };
                let pump = tokio::spawn(rule.pump(client, server));
                spawned.lock().unwrap().push(pump);
            }
        });
        PgProxy {
            port,
            stalled,
            task,
            pumps,
        }
    }

    /// Waits until the stall has begun (panics after `limit`).
    pub async fn wait_for_stall(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.stalled.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy never stalled a connection"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
        for pump in self.pumps.lock().unwrap().drain(..) {
            pump.abort();
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
struct Rule {
    trigger: Trigger,
    stall: Stall,
    /// Only one connection is stalled per proxy.
    armed: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

impl Rule {
    async fn pump(self, client: TcpStream, server: TcpStream) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let frozen = Arc::new(AtomicBool::new(false));
        let down_frozen = frozen.clone();
        // Client bytes since the server last sent something.
        let unanswered = Arc::new(AtomicU64::new(0));
        let answered = unanswered.clone();
        let down = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let read = server_read.read(&mut buf).await;
                if down_frozen.load(Ordering::SeqCst) {
                    // Not even the server's close reaches the client.
                    std::future::pending::<()>().await;
                }
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                answered.store(0, Ordering::SeqCst);
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
        });
        // The server-to-client half ends with this pump (and its sockets with it).
        let _down = AbortOnDrop(down.abort_handle());
        let mut buf = vec![0u8; 16 * 1024];
        // Bytes after the COPY signature (None: not seen yet); the end of the last read,
        // for a signature split across two reads.
        let (mut copied, mut tail): (Option<u64>, Vec<u8>) = (None, Vec::new());
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let run = unanswered.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let met = match self.trigger {
                Trigger::Unanswered(bytes) => run >= bytes,
                Trigger::CopyData(bytes) => {
                    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
                    if let Some(c) = copied.as_mut() {
                        *c += n as u64;
                    } else {
                        tail.extend_from_slice(&buf[..n]);
                        if let Some(at) = tail.windows(SIGNATURE.len()).position(|w| w == SIGNATURE)
                        {
                            copied = Some((tail.len() - at) as u64);
                        }
                        let keep = tail.len().saturating_sub(SIGNATURE.len());
                        tail.drain(..keep);
                    }
                    copied.is_some_and(|c| c >= bytes)
                }
            };
            if met && self.armed.swap(false, Ordering::SeqCst) {
                self.stalled.store(true, Ordering::SeqCst);
                match self.stall {
                    Stall::Pause(d) => tokio::time::sleep(d).await,
                    Stall::Freeze => {
                        frozen.store(true, Ordering::SeqCst);
                        // Hold both sockets open, forwarding nothing, until the test ends.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
        let _ = down.await;
    }
}
