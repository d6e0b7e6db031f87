//! The results: one row per measured run, ratios to the baselines of the
//! same run, the targets checked, a table and a JSON file.

use crate::load::Sample;
use crate::replay::{PgbenchResult, Script};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    /// gRPC, REST, pgbench, or webhooks.
    pub surface: String,
    pub mode: String,
    pub concurrency: usize,
    /// Requests (or transactions, or deliveries) per second.
    pub rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// linkd's CPU per request (all replicas for webhooks).
    pub linkd_cpu_ms_per_request: Option<f64>,
    pub postgres_cpu_ms_per_request: f64,
    pub rss_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub load_average: f64,
    /// This rate over pgbench's on the same statements at the same concurrency.
    pub vs_pgbench: Option<f64>,
    /// This rate over the stack floor (health check of the same surface).
    pub vs_floor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    fn blank(scenario: &str, surface: &str, mode: &str, concurrency: usize) -> Row {
        Row {
            scenario: scenario.into(),
            surface: surface.into(),
            mode: mode.into(),
            concurrency,
            rate: 0.0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            requests: 0,
            errors: 0,
            first_error: None,
            linkd_cpu_ms_per_request: None,
            postgres_cpu_ms_per_request: 0.0,
            rss_mb: None,
            peak_rss_mb: None,
            load_average: crate::stats::load_average(),
            vs_pgbench: None,
            vs_floor: None,
            note: None,
        }
    }

    pub fn measured(
        scenario: &str,
        surface: &str,
        mode: &str,
        concurrency: usize,
        sample: &Sample,
    ) -> Row {
        Row {
            rate: sample.rate(),
            p50_ms: sample.percentile_ms(0.5),
            p90_ms: sample.percentile_ms(0.9),
            p99_ms: sample.percentile_ms(0.99),
            requests: sample.requests(),
            errors: sample.errors,
            first_error: sample.first_error.clone(),
            ..Row::blank(scenario, surface, mode, concurrency)
        }
    }

    pub fn pgbench(
        scenario: &str,
        concurrency: usize,
        result: &PgbenchResult,
        script: &Script,
        duration: Duration,
    ) -> Row {
        Row {
            rate: result.tps,
            p50_ms: result.latency_ms,
            p90_ms: result.latency_ms,
            p99_ms: result.latency_ms,
            // pgbench reports a rate over the run's length.
            requests: (result.tps * duration.as_secs_f64()) as u64,
            errors: result.failed,
            note: Some(format!(
                "{} round trips per transaction (pings left out: {}); latency is pgbench's average",
                script.round_trips, script.pings
            )),
            ..Row::blank(
                scenario,
                "pgbench",
                &format!("closed c={concurrency}"),
                concurrency,
            )
        }
    }

    pub fn webhooks(
        label: &str,
        events: i64,
        replicas: usize,
        delivered: usize,
        elapsed: Duration,
        finished: bool,
        delays: &[Duration],
    ) -> Row {
        let at = |q: f64| {
            delays
                .get(((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Row {
            rate: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            requests: delivered as u64,
            errors: if finished {
                0
            } else {
                (events as u64).saturating_sub(delivered as u64)
            },
            note: Some(format!(
                "{events} due events, {replicas} replica(s); latency = delay from commit to arrival{}",
                if finished {
                    ""
                } else {
                    "; NOT drained in time"
                }
            )),
            ..Row::blank(
                &format!("webhooks: {label}"),
                "webhooks",
                &format!("{replicas} replica(s)"),
                replicas,
            )
        }
    }

    pub fn with_cpu(mut self, linkd_seconds: Option<f64>, postgres_seconds: f64) -> Row {
        let n = self.requests.max(1) as f64;
        self.linkd_cpu_ms_per_request = linkd_seconds.map(|s| s * 1000.0 / n);
        self.postgres_cpu_ms_per_request = postgres_seconds * 1000.0 / n;
        self
    }

    pub fn with_memory(mut self, pid: u32) -> Row {
        let (rss, peak) = crate::stats::memory_mb(pid);
        self.rss_mb = Some(rss);
        self.peak_rss_mb = Some(peak);
        self
    }

    /// One line for the progress log.
    pub fn line(&self) -> String {
        format!(
            "{:<34} {:<8} {:<14} {:>9.0}/s p50 {:>7.2} p99 {:>8.2} ms errors {}{}",
            self.scenario,
            self.surface,
            self.mode,
            self.rate,
            self.p50_ms,
            self.p99_ms,
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Round trips per call, as captured (pings included).
    pub round_trips: BTreeMap<String, usize>,
    pub idle_rss_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// ListConnections p50, deep page over first page.
    pub deep_over_first: Option<f64>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    fn rate_of(&self, scenario: &str, surface: &str, concurrency: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| {
                r.scenario == scenario
                    && r.surface == surface
                    && r.concurrency == concurrency
                    && r.mode.starts_with("closed")
            })
            .map(|r| r.rate)
    }

    /// Fills in the ratios and checks the targets.
    fn finish(&mut self) {
        for i in 0..self.rows.len() {
            let row = &self.rows[i];
            if !row.mode.starts_with("closed") || !matches!(row.surface.as_str(), "gRPC" | "REST") {
                continue;
            }
            let pgbench = self.rate_of(&row.scenario, "pgbench", row.concurrency);
            let floor = (row.scenario != "health")
                .then(|| self.rate_of("health", &row.surface, row.concurrency))
                .flatten();
            let rate = row.rate;
            self.rows[i].vs_pgbench = pgbench.map(|p| rate / p);
            self.rows[i].vs_floor = floor.map(|f| rate / f);
        }
        let health = (
            self.rate_of("health", "gRPC", 8),
            self.rate_of("health", "REST", 8),
        );
        let (deep_over_first, idle_rss, peak_rss) =
            (self.deep_over_first, self.idle_rss_mb, self.peak_rss_mb);
        let mut targets = Vec::new();
        let mut target = |what: String, measured: String, met: bool| {
            targets.push(Target {
                what,
                measured,
                met,
            })
        };
        let rows = self.rows.clone();
        for scenario in ["CreateLink (1 op)", "CreateLink (3 ops)", "InitLinkSession"] {
            for surface in ["gRPC", "REST"] {
                let ratios: Vec<(usize, f64)> = rows
                    .iter()
                    .filter(|r| r.scenario == scenario && r.surface == surface)
                    .filter_map(|r| Some((r.concurrency, r.vs_pgbench?)))
                    .collect();
                if let Some(worst) = ratios.iter().map(|(_, r)| *r).reduce(f64::min) {
                    let shown: Vec<String> = ratios
                        .iter()
                        .map(|(c, r)| format!("c={c}: {r:.2}"))
                        .collect();
                    target(
                        format!("{surface} {scenario} ≥ 0.8 × pgbench at every concurrency"),
                        shown.join(", "),
                        worst >= 0.8,
                    );
                }
            }
            let p50 = |surface: &str| {
                rows.iter()
                    .find(|r| {
                        r.scenario == scenario && r.surface == surface && r.mode == "closed c=1"
                    })
                    .map(|r| r.p50_ms)
            };
            if let (Some(grpc), Some(rest)) = (p50("gRPC"), p50("REST")) {
                target(
                    format!("{scenario}: gRPC p50 within 1.2 × REST at c=1"),
                    format!("{grpc:.2} ms vs {rest:.2} ms ({:.2}×)", grpc / rest),
                    grpc <= 1.2 * rest,
                );
            }
            for row in rows
                .iter()
                .filter(|r| r.scenario == scenario && r.mode.starts_with("open"))
            {
                target(
                    format!(
                        "{scenario} {}: p99 ≤ 10 ms at half the peak rate",
                        row.surface
                    ),
                    format!("{:.2} ms at {}", row.p99_ms, row.mode),
                    row.p99_ms <= 10.0 && row.errors == 0,
                );
            }
        }
        if let (Some(grpc), Some(rest)) = health {
            target(
                "gRPC Health/Check ≥ 0.5 × GET /healthz at c=8".into(),
                format!("{grpc:.0}/s vs {rest:.0}/s ({:.2}×)", grpc / rest),
                grpc >= 0.5 * rest,
            );
        }
        let hooks = |label: &str| {
            rows.iter()
                .find(|r| r.scenario == format!("webhooks: {label}"))
        };
        if let Some(one) = hooks("1 replica") {
            target(
                "webhooks ≥ 2,000 deliveries/s with one replica".into(),
                format!("{:.0}/s", one.rate),
                one.rate >= 2000.0,
            );
            target(
                "webhook backlog drains with p99 delay ≤ 10 s".into(),
                format!("{:.1} s", one.p99_ms / 1000.0),
                one.p99_ms <= 10_000.0 && one.errors == 0,
            );
            if let Some(two) = hooks("2 replicas") {
                target(
                    "two replicas deliver ≥ 1.8 × one".into(),
                    format!(
                        "{:.0}/s vs {:.0}/s ({:.2}×)",
                        two.rate,
                        one.rate,
                        two.rate / one.rate
                    ),
                    two.rate >= 1.8 * one.rate,
                );
            }
        }
        if let (Some(small), Some(big)) = (
            hooks("1 replica, 1k due"),
            hooks("1 replica, 100k due (first 10 s)"),
        ) {
            target(
                "claim cost flat from 1k to 100k due (rate at 100k ≥ 0.8 × at 1k)".into(),
                format!(
                    "{:.0}/s vs {:.0}/s ({:.2}×)",
                    big.rate,
                    small.rate,
                    big.rate / small.rate
                ),
                big.rate >= 0.8 * small.rate,
            );
        }
        let behind = rows.iter().find(|r| {
            r.scenario
                .starts_with("webhooks: healthy receiver behind a hanging one")
        });
        if let (Some(alone), Some(behind)) = (hooks("1 replica, 1k due"), behind) {
            target(
                "a hanging destination costs a healthy one ≤ 20 % (rate ≥ 0.8 × without it)".into(),
                format!(
                    "{:.0}/s vs {:.0}/s ({:.2}×)",
                    behind.rate,
                    alone.rate,
                    behind.rate / alone.rate
                ),
                behind.rate >= 0.8 * alone.rate,
            );
        }
        if let Some(ratio) = deep_over_first {
            target(
                "page-token listing at depth: deep / first p50 ≤ 1.5".into(),
                format!("{ratio:.2}"),
                ratio <= 1.5,
            );
        }
        if let Some(idle) = idle_rss {
            target(
                "idle RSS ≤ 30 MB".into(),
                format!("{idle:.1} MB"),
                idle <= 30.0,
            );
        }
        if let Some(peak) = peak_rss {
            target(
                "peak RSS ≤ 64 MB".into(),
                format!("{peak:.1} MB"),
                peak <= 64.0,
            );
        }
        self.targets = targets;
    }

    pub fn print(&mut self) {
        self.finish();
        println!(
            "\n| scenario | surface | mode | req/s | p50 ms | p90 ms | p99 ms | errors | linkd CPU ms/req | PG CPU ms/req | RSS MB | vs pgbench | vs floor | load |"
        );
        println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("".to_string(), |v| format!("{v:.digits$}"));
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.3} | {} | {} | {} | {:.2} |",
                r.scenario,
                r.surface,
                r.mode,
                r.rate,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.errors,
                opt(r.linkd_cpu_ms_per_request, 3),
                r.postgres_cpu_ms_per_request,
                opt(r.rss_mb, 1),
                opt(r.vs_pgbench, 2),
                opt(r.vs_floor, 2),
                r.load_average,
            );
        }
        if !self.round_trips.is_empty() {
            println!("\nDatabase round trips per call (captured, pings included):");
            for (call, n) in &self.round_trips {
                println!("- {call}: {n}");
            }
        }
        println!("\nTargets:");
        for t in &self.targets {
            println!(
                "- [{}] {}: {}",
                if t.met { "met" } else { "MISSED" },
                t.what,
                t.measured
            );
        }
    }

    pub fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}
