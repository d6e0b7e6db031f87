//! A counting proxy in front of the test Postgres: it forwards bytes both
//! ways untouched and counts the client's round trips, so tests can assert how
//! many a call costs. A round trip is one batch the client sends and then
//! waits on: an extended-protocol batch ended by `Sync` (a statement, or a
//! bare `Sync` as in a pool's ping), or a simple `Query` (`BEGIN`, `COMMIT`).
//! Batches that only prepare a statement (`Parse` without `Execute`) are
//! counted apart: they happen once per statement and connection, and a warm
//! connection does not repeat them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

#[derive(Default)]
struct Counts {
    round_trips: AtomicU64,
    prepares: AtomicU64,
    /// What each round trip ran, in order, for failure messages.
    log: Mutex<Vec<String>>,
}

pub struct CountingProxy {
    /// The database URL with the proxy in place of the server.
    pub url: String,
    counts: Arc<Counts>,
}

impl CountingProxy {
    /// Starts a proxy for the server in `database_url`.
    pub async fn start(database_url: &str) -> CountingProxy {
        let mut url = Url::parse(database_url).unwrap();
        let upstream: SocketAddr =
            format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
                .parse()
                .expect("the test Postgres listens on an IP address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        url.set_port(Some(listener.local_addr().unwrap().port()))
            .unwrap();
        // Plain text, so the proxy can read the protocol.
        url.query_pairs_mut().append_pair("sslmode", "disable");
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counts = shared.clone();
                tokio::spawn(async move {
                    let server = TcpStream::connect(upstream).await.unwrap();
                    let _ = forward(client, server, counts).await;
                });
            }
        });
        CountingProxy {
            url: url.to_string(),
            counts,
        }
    }

    /// Round trips so far, over every connection.
    pub fn round_trips(&self) -> u64 {
        self.counts.round_trips.load(Ordering::SeqCst)
    }

    /// What the round trips from the `from`th on ran (statements, `BEGIN`,
    /// `COMMIT`, or `ping` for a bare `Sync`).
    pub fn log_since(&self, from: u64) -> Vec<String> {
        let log = self.counts.log.lock().unwrap();
        log[(from as usize).min(log.len())..].to_vec()
    }

    /// Prepare-only batches so far.
    pub fn prepares(&self) -> u64 {
        self.counts.prepares.load(Ordering::SeqCst)
    }
}

async fn forward(client: TcpStream, server: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_client = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let result = async {
        // Start-up messages have no type byte: an SSL or GSS request (refused
        // by the server with one byte, then retried plain) and the startup
        // message itself.
        loop {
            let len = client_read.read_u32().await?;
            let code = client_read.read_u32().await?;
            let mut rest = vec![0; len as usize - 8];
            client_read.read_exact(&mut rest).await?;
            server_write.write_u32(len).await?;
            server_write.write_u32(code).await?;
            server_write.write_all(&rest).await?;
            if code != SSL_REQUEST && code != GSSENC_REQUEST {
                break;
            }
        }
        let (mut parsed, mut executed) = (false, false);
        // Prepared statements of this connection, by name.
        let mut statements: HashMap<Vec<u8>, String> = HashMap::new();
        let mut batch: Vec<String> = Vec::new();
        loop {
            let kind = client_read.read_u8().await?;
            let len = client_read.read_u32().await?;
            let mut body = vec![0; len as usize - 4];
            client_read.read_exact(&mut body).await?;
            // Count before forwarding: the answer can only come after.
            match kind {
                b'P' => {
                    parsed = true;
                    let mut parts = body.split(|b| *b == 0);
                    let name = parts.next().unwrap_or_default().to_vec();
                    let sql = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    statements.insert(name, squeeze(&sql));
                }
                b'B' => {
                    let mut parts = body.split(|b| *b == 0);
                    let _portal = parts.next();
                    let name = parts.next().unwrap_or_default();
                    batch.push(statements.get(name).cloned().unwrap_or_default());
                }
                b'E' => executed = true,
                b'S' => {
                    if parsed && !executed {
                        counts.prepares.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let entry = if batch.is_empty() {
                            "ping".to_string()
                        } else {
                            batch.join("; ")
                        };
                        // Logged before counted, so a counted trip is logged.
                        counts.log.lock().unwrap().push(entry);
                        counts.round_trips.fetch_add(1, Ordering::SeqCst);
                    }
                    (parsed, executed) = (false, false);
                    batch.clear();
                }
                b'Q' => {
                    let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body));
                    counts.log.lock().unwrap().push(squeeze(&sql));
                    counts.round_trips.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            let mut message = Vec::with_capacity(1 + len as usize);
            message.push(kind);
            message.extend_from_slice(&len.to_be_bytes());
            message.extend_from_slice(&body);
            server_write.write_all(&message).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    }
    .await;
    to_client.abort();
    result
}

/// A statement on one line, shortened.
fn squeeze(sql: &str) -> String {
    let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}
