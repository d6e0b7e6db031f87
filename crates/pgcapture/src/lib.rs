//! A proxy in front of a Postgres server that forwards bytes both ways
//! untouched and records the client's round trips: how many, and what each
//! ran (statements with their parameters). linkd's tests assert round-trip
//! counts with it; the benchmark captures the exact statements of a call to
//! replay them with pgbench.
//!
//! A round trip is one batch the client sends and then waits on: an
//! extended-protocol batch ended by `Sync` (one or more statements, or a bare
//! `Sync` as in a pool's ping), or a simple `Query` (`BEGIN`, `COMMIT`).
//! Batches that only prepare a statement (`Parse` without `Execute`) are
//! counted apart: they happen once per statement and connection, and a warm
//! connection does not repeat them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// One statement of an extended-protocol batch, as bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    /// Parameter type OIDs the client declared when preparing (0: unknown).
    pub param_types: Vec<u32>,
    /// Parameter formats as sent in `Bind` (0 text, 1 binary; one entry
    /// applies to all, none means text).
    pub formats: Vec<i16>,
    /// Parameter values (`None` is SQL NULL).
    pub params: Vec<Option<Vec<u8>>>,
}

impl Statement {
    /// The format of parameter `i`.
    pub fn format(&self, i: usize) -> i16 {
        match self.formats.as_slice() {
            [] => 0,
            [all] => *all,
            each => each.get(i).copied().unwrap_or(0),
        }
    }
}

/// What one round trip ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Trip {
    /// A bare `Sync`: a pool checking its connection.
    Ping,
    /// A simple-protocol query (`BEGIN`, `COMMIT`, …).
    Simple(String),
    /// Extended-protocol statements sent together.
    Statements(Vec<Statement>),
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trip::Ping => f.write_str("ping"),
            Trip::Simple(sql) => f.write_str(&squeeze(sql)),
            Trip::Statements(statements) => {
                let sqls: Vec<String> = statements.iter().map(|s| squeeze(&s.sql)).collect();
                f.write_str(&sqls.join("; "))
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    round_trips: AtomicU64,
    prepares: AtomicU64,
    trips: Mutex<Vec<Trip>>,
}

/// A running proxy; it serves until the runtime it was started on ends.
pub struct Proxy {
    /// The database URL with the proxy in place of the server.
    pub url: String,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy for the server in `database_url` (a TCP address).
    pub async fn start(database_url: &str) -> std::io::Result<Proxy> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        let mut url = Url::parse(database_url).map_err(|e| invalid(&e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| invalid("database URL without a host"))?;
        let upstream: SocketAddr = format!("{host}:{}", url.port().unwrap_or(5432))
            .parse()
            .map_err(|_| invalid("the database host must be an IP address"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        url.set_port(Some(listener.local_addr()?.port()))
            .map_err(|()| invalid("database URL cannot take a port"))?;
        // Plain text, so the proxy can read the protocol.
        url.query_pairs_mut().append_pair("sslmode", "disable");
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accepting.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = forward(client, server, shared).await;
                    }
                });
            }
        });
        Ok(Proxy {
            url: url.to_string(),
            shared,
        })
    }

    /// Round trips so far, over every connection.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::SeqCst)
    }

    /// Prepare-only batches so far.
    pub fn prepares(&self) -> u64 {
        self.shared.prepares.load(Ordering::SeqCst)
    }

    /// Waits until nothing has crossed the proxy for a while: a pool returns
    /// a connection (and pings it) in the background after a call answered.
    pub async fn settle(&self) {
        let mut last = (self.round_trips(), self.prepares());
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let now = (self.round_trips(), self.prepares());
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// The round trips from the `from`th on.
    pub fn trips_since(&self, from: u64) -> Vec<Trip> {
        let trips = self.shared.trips.lock().expect("trip log");
        trips[(from as usize).min(trips.len())..].to_vec()
    }
}

/// A prepared statement of one connection.
struct Prepared {
    sql: String,
    param_types: Vec<u32>,
}

async fn forward(client: TcpStream, server: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
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
            let mut rest = vec![0; (len as usize).saturating_sub(8)];
            client_read.read_exact(&mut rest).await?;
            let mut message = Vec::with_capacity(len as usize);
            message.extend_from_slice(&len.to_be_bytes());
            message.extend_from_slice(&code.to_be_bytes());
            message.extend_from_slice(&rest);
            server_write.write_all(&message).await?;
            if code != SSL_REQUEST && code != GSSENC_REQUEST {
                break;
            }
        }
        let mut statements: HashMap<Vec<u8>, Prepared> = HashMap::new();
        let (mut parsed, mut executed) = (false, false);
        let mut batch: Vec<Statement> = Vec::new();
        loop {
            let kind = client_read.read_u8().await?;
            let len = client_read.read_u32().await?;
            let mut body = vec![0; (len as usize).saturating_sub(4)];
            client_read.read_exact(&mut body).await?;
            // Recorded before forwarding: the answer can only come after.
            match kind {
                b'P' => {
                    parsed = true;
                    if let Some((name, prepared)) = parse_message(&body) {
                        statements.insert(name, prepared);
                    }
                }
                b'B' => {
                    if let Some(statement) = bind_message(&body, &statements) {
                        batch.push(statement);
                    }
                }
                b'E' => executed = true,
                b'S' => {
                    if parsed && !executed {
                        shared.prepares.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let trip = if batch.is_empty() {
                            Trip::Ping
                        } else {
                            Trip::Statements(std::mem::take(&mut batch))
                        };
                        // Logged before counted, so a counted trip is logged.
                        shared.trips.lock().expect("trip log").push(trip);
                        shared.round_trips.fetch_add(1, Ordering::SeqCst);
                    }
                    (parsed, executed) = (false, false);
                    batch.clear();
                }
                b'Q' => {
                    let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body));
                    shared
                        .trips
                        .lock()
                        .expect("trip log")
                        .push(Trip::Simple(sql.into_owned()));
                    shared.round_trips.fetch_add(1, Ordering::SeqCst);
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

/// Reads network-order integers and C strings off a message body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|b| *b == 0)?;
        let (s, rest) = self.0.split_at(end);
        self.0 = &rest[1..];
        Some(s)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.bytes(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }
}

fn parse_message(body: &[u8]) -> Option<(Vec<u8>, Prepared)> {
    let mut r = Reader(body);
    let name = r.cstr()?.to_vec();
    let sql = String::from_utf8_lossy(r.cstr()?).into_owned();
    let count = r.i16()?.max(0) as usize;
    let param_types = (0..count)
        .map(|_| r.i32().map(|oid| oid as u32))
        .collect::<Option<Vec<_>>>()?;
    Some((name, Prepared { sql, param_types }))
}

fn bind_message(body: &[u8], statements: &HashMap<Vec<u8>, Prepared>) -> Option<Statement> {
    let mut r = Reader(body);
    let _portal = r.cstr()?;
    let prepared = statements.get(r.cstr()?)?;
    let format_count = r.i16()?.max(0) as usize;
    let formats = (0..format_count)
        .map(|_| r.i16())
        .collect::<Option<Vec<_>>>()?;
    let param_count = r.i16()?.max(0) as usize;
    let mut params = Vec::with_capacity(param_count);
    for _ in 0..param_count {
        let len = r.i32()?;
        params.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len as usize)?.to_vec())
        });
    }
    Some(Statement {
        sql: prepared.sql.clone(),
        param_types: prepared.param_types.clone(),
        formats,
        params,
    })
}

/// A statement on one line, shortened.
fn squeeze(sql: &str) -> String {
    let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}
