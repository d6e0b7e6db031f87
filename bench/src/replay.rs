//! The pgbench baseline: the exact statements linkd issues for a call,
//! captured on the wire (pgcapture between a linkd process and Postgres) and
//! replayed by pgbench at the same concurrency, so "how close to the
//! database's own speed is linkd" is a ratio measured in the same run.
//!
//! Each captured parameter becomes a literal in the script, except ids and
//! token hashes the call created (values the database did not hold before
//! the call): those are derived from a per-transaction random number, so
//! every replayed transaction inserts new rows and finds its own rows again,
//! as the call did. The pool's pings (a bare Sync when a connection goes back)
//! cannot be expressed in pgbench and are left out, counted apart.

use anyhow::{Context, bail};
use pgcapture::{Statement, Trip};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use uuid::Uuid;

/// A call's statements as a pgbench script.
pub struct Script {
    pub text: String,
    /// Round trips the script makes per transaction.
    pub round_trips: usize,
    /// Pings the call made that the script leaves out.
    pub pings: usize,
}

/// Turns the trips of one call into a script. `known` are ids that existed
/// before the call (tenant, app, key, seeded rows).
pub fn script(trips: &[Trip], known: &[Uuid]) -> anyhow::Result<Script> {
    let mut fresh = Fresh {
        known: known.to_vec(),
        names: HashMap::new(),
    };
    let mut text = String::from("\\set n random(1, 9000000000000000000)\n");
    let (mut round_trips, mut pings) = (0, 0);
    for trip in trips {
        match trip {
            Trip::Ping => pings += 1,
            Trip::Simple(sql) => {
                round_trips += 1;
                text.push_str(sql.trim().trim_end_matches(';'));
                text.push_str(";\n");
            }
            Trip::Statements(statements) => {
                round_trips += 1;
                for statement in statements {
                    text.push_str(&render(statement, &mut fresh)?);
                    text.push_str(";\n");
                }
            }
        }
    }
    Ok(Script {
        text,
        round_trips,
        pings,
    })
}

/// Values the call created, each mapped to the same derived expression
/// wherever it appears.
struct Fresh {
    known: Vec<Uuid>,
    names: HashMap<Vec<u8>, usize>,
}

impl Fresh {
    fn tag(&mut self, value: &[u8]) -> usize {
        let next = self.names.len();
        *self.names.entry(value.to_vec()).or_insert(next)
    }
}

fn render(statement: &Statement, fresh: &mut Fresh) -> anyhow::Result<String> {
    let mut values = Vec::with_capacity(statement.params.len());
    for (i, value) in statement.params.iter().enumerate() {
        let oid = statement.param_types.get(i).copied().unwrap_or(0);
        values.push(match value {
            None => "NULL".to_string(),
            Some(bytes) if statement.format(i) == 0 => {
                text_literal(&String::from_utf8_lossy(bytes))
            }
            Some(bytes) => binary_literal(oid, bytes, fresh)
                .with_context(|| format!("parameter ${} of: {}", i + 1, statement.sql))?,
        });
    }
    Ok(substitute(&statement.sql, &values))
}

/// Replaces `$1`, `$2`… outside string literals.
fn substitute(sql: &str, values: &[String]) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut chars = sql.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_string = !in_string;
            out.push(c);
        } else if c == '$' && !in_string && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut digits = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                digits.push(d);
                chars.next();
            }
            let index: usize = digits.parse().unwrap_or(0);
            match values.get(index.wrapping_sub(1)) {
                Some(value) => {
                    out.push('(');
                    out.push_str(value);
                    out.push(')');
                }
                None => {
                    out.push('$');
                    out.push_str(&digits);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A string literal pgbench will not mistake for a `:variable`.
fn text_literal(s: &str) -> String {
    if s.contains(':') {
        format!("convert_from('\\x{}'::bytea, 'UTF8')", hex(s.as_bytes()))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn be<const N: usize>(bytes: &[u8]) -> anyhow::Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected {N} bytes"))
}

fn binary_literal(oid: u32, bytes: &[u8], fresh: &mut Fresh) -> anyhow::Result<String> {
    Ok(match oid {
        16 => (bytes.first() == Some(&1)).to_string(),
        21 => i16::from_be_bytes(be(bytes)?).to_string(),
        23 => i32::from_be_bytes(be(bytes)?).to_string(),
        20 => i64::from_be_bytes(be(bytes)?).to_string(),
        700 => format!("{}::float4", f32::from_be_bytes(be(bytes)?)),
        701 => format!("{}::float8", f64::from_be_bytes(be(bytes)?)),
        25 | 1043 | 19 => format!("{}::text", text_literal(&String::from_utf8_lossy(bytes))),
        114 => format!("{}::json", text_literal(&String::from_utf8_lossy(bytes))),
        // jsonb: a version byte, then the text.
        3802 => format!(
            "{}::jsonb",
            text_literal(&String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()))
        ),
        2950 => {
            let id = Uuid::from_bytes(be(bytes)?);
            if fresh.known.contains(&id) {
                format!("'{id}'::uuid")
            } else {
                format!("md5((:n)::text || '-u{}')::uuid", fresh.tag(bytes))
            }
        }
        // Short byte strings are token hashes the call made; longer ones
        // (ciphertexts) are copied as they are.
        17 if bytes.len() <= 64 => {
            format!("sha256(((:n)::text || '-b{}')::bytea)", fresh.tag(bytes))
        }
        17 => format!("'\\x{}'::bytea", hex(bytes)),
        1184 | 1114 => {
            let micros = i64::from_be_bytes(be(bytes)?);
            let epoch_2000 = chrono::DateTime::from_timestamp(946_684_800, 0).expect("valid");
            let at = epoch_2000 + chrono::Duration::microseconds(micros);
            format!("'{}'::timestamptz", at.to_rfc3339())
        }
        1009 | 1015 => text_array(bytes)?,
        other => bail!("cannot replay a parameter of type OID {other}"),
    })
}

/// A one-dimensional text array in the binary format.
fn text_array(bytes: &[u8]) -> anyhow::Result<String> {
    let mut at = 0;
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        let slice = bytes.get(at..at + n).context("short array")?;
        at += n;
        Ok(slice)
    };
    let dims = i32::from_be_bytes(be(take(4)?)?);
    let _has_nulls = take(4)?;
    let _element_type = take(4)?;
    if dims == 0 {
        return Ok("ARRAY[]::text[]".into());
    }
    let len = i32::from_be_bytes(be(take(4)?)?);
    let _lower = take(4)?;
    let mut items = Vec::new();
    for _ in 0..len {
        let n = i32::from_be_bytes(be(take(4)?)?);
        items.push(if n < 0 {
            "NULL".to_string()
        } else {
            text_literal(&String::from_utf8_lossy(take(n as usize)?))
        });
    }
    Ok(format!("ARRAY[{}]::text[]", items.join(", ")))
}

/// What pgbench measured.
pub struct PgbenchResult {
    pub tps: f64,
    pub latency_ms: f64,
    pub failed: u64,
}

/// Runs `script` with pgbench: prepared statements (as linkd uses them),
/// `clients` connections, for `seconds`.
pub fn run_pgbench(
    script: &Path,
    url: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<PgbenchResult> {
    let pgbench = linkd::ops::local_postgres::find_binary("pgbench")?;
    let out = Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-c"])
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("aborted") {
        bail!("pgbench failed: {}{}", stdout.trim(), stderr.trim());
    }
    let number = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))?
            .trim_start_matches(prefix)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Ok(PgbenchResult {
        tps: number("tps = ").context("pgbench printed no tps")?,
        latency_ms: number("latency average = ").unwrap_or(0.0),
        failed: number("number of failed transactions: ").unwrap_or(0.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_strings_are_replaced_and_colons_are_hidden() {
        let sql = "SELECT $1, '$1', $10 WHERE x = $2";
        let values: Vec<String> = (1..=10).map(|i| format!("v{i}")).collect();
        assert_eq!(
            substitute(sql, &values),
            "SELECT (v1), '$1', (v10) WHERE x = (v2)"
        );
        assert_eq!(text_literal("it's"), "'it''s'");
        // pgbench would read `:true` as a variable; a `::` cast it skips.
        let json = text_literal("{\"a\":true}");
        assert!(!json.replace("::", "").contains(':'), "{json}");
    }

    #[test]
    fn fresh_ids_map_to_one_expression_and_known_ids_stay_literal() {
        let known = Uuid::now_v7();
        let made = Uuid::now_v7();
        let mut fresh = Fresh {
            known: vec![known],
            names: HashMap::new(),
        };
        let a = binary_literal(2950, made.as_bytes(), &mut fresh).unwrap();
        let b = binary_literal(2950, made.as_bytes(), &mut fresh).unwrap();
        assert_eq!(a, b);
        assert!(a.contains(":n"));
        let k = binary_literal(2950, known.as_bytes(), &mut fresh).unwrap();
        assert_eq!(k, format!("'{known}'::uuid"));
    }
}
