//! A Postgres cluster that linkd runs for itself when no `DATABASE_URL` is
//! given: `cargo run` for development, and the test suite.
//!
//! The cluster lives under a directory of ours (`<root>/pgdata`), listens on
//! 127.0.0.1 only, on a port picked at `initdb` time, with a generated
//! password (SCRAM). Run as root, every Postgres binary runs as the
//! `postgres` user, since `initdb` refuses root.
//!
//! Stopping is owned by a small watchdog shell that waits on a pipe from this
//! process: when linkd exits, cleanly or killed, the pipe closes and the
//! watchdog stops the cluster. Both run in their own process group so a
//! terminal's Ctrl-C reaches linkd (which drains) but not Postgres.

use anyhow::{Context, bail};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

const SUPERUSER: &str = "linkd";
const STATE_FILE: &str = "postgres.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct ClusterState {
    port: u16,
    password: String,
}

/// How the cluster is used; tests trade durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on: development data survives a power cut.
    Durable,
    /// fsync off, and the whole directory is removed when the owner exits.
    Throwaway,
}

pub struct LocalPostgres {
    root: PathBuf,
    state: ClusterState,
    /// Closing this pipe tells the watchdog to stop the cluster. `None` when
    /// the cluster was already running (another linkd process owns it).
    watchdog: Option<(ChildStdin, Child)>,
}

impl std::fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPostgres")
            .field("root", &self.root)
            .field("port", &self.state.port)
            .finish_non_exhaustive()
    }
}

/// Who runs the Postgres binaries: ourselves, or `postgres` when we are root.
#[derive(Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

impl RunAs {
    fn detect() -> anyhow::Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs(None));
        }
        let user = nix::unistd::User::from_name("postgres")?
            .context("running as root needs a `postgres` system user to run Postgres (install the postgresql package)")?;
        Ok(RunAs(Some((user.uid.as_raw(), user.gid.as_raw()))))
    }

    fn command(self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.0 {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Shell prefix for running a binary as this user from the watchdog.
    fn shell_prefix(self) -> String {
        match self.0 {
            Some((uid, gid)) => format!("setpriv --reuid={uid} --regid={gid} --clear-groups "),
            None => String::new(),
        }
    }

    fn chown(self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
        Ok(())
    }
}

/// Finds a Postgres server binary: on `PATH`, else in Debian's versioned
/// directories (newest first).
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    debian.sort_by(|a, b| b.cmp(a));
    on_path
        .chain(debian)
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found: install the PostgreSQL server (Debian: apt-get install postgresql), or set DATABASE_URL"))
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn free_local_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for Postgres")?;
    Ok(listener.local_addr()?.port())
}

impl LocalPostgres {
    /// Initialises the cluster under `root` on first use, starts it unless it
    /// is already running, and returns a handle that stops it when dropped
    /// (or when this process dies).
    pub fn start(root: &Path, durability: Durability) -> anyhow::Result<Self> {
        let run_as = RunAs::detect()?;
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating data directory {}", root.display()))?;
        let root = root.canonicalize()?;
        // The postgres user must be able to reach pgdata inside our directory.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let pgdata = root.join("pgdata");
        let pg_ctl = find_binary("pg_ctl")?;

        let state_path = root.join(STATE_FILE);
        let state = if pgdata.join("PG_VERSION").exists() {
            let raw = std::fs::read(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?;
            serde_json::from_slice(&raw)
                .with_context(|| format!("{} is corrupt", state_path.display()))?
        } else {
            Self::init(&root, &pgdata, run_as, durability)?
        };

        let running = run_as
            .command(&pg_ctl)
            .args(["status", "-D"])
            .arg(&pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        let watchdog = if running {
            tracing::info!(
                port = state.port,
                "local Postgres already running; reusing it"
            );
            None
        } else {
            let mut start = run_as.command(&pg_ctl);
            start
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&pgdata)
                .arg("-l")
                .arg(pgdata.join("server.log"))
                .stdin(Stdio::null())
                .process_group(0);
            run(start, "pg_ctl start").with_context(|| {
                format!(
                    "starting local Postgres (log: {})",
                    pgdata.join("server.log").display()
                )
            })?;
            Some(Self::spawn_watchdog(
                &root, &pgdata, &pg_ctl, run_as, durability,
            )?)
        };
        Ok(LocalPostgres {
            root,
            state,
            watchdog,
        })
    }

    fn init(
        root: &Path,
        pgdata: &Path,
        run_as: RunAs,
        durability: Durability,
    ) -> anyhow::Result<ClusterState> {
        let state = ClusterState {
            port: free_local_port()?,
            password: crate::kernel::ids::random_hex(24),
        };
        std::fs::create_dir_all(pgdata)?;
        std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))?;
        run_as.chown(pgdata)?;
        // initdb reads the password from a file the postgres user can read;
        // it lives only for the duration of initdb.
        let pwfile = root.join(".initdb-password");
        std::fs::write(&pwfile, &state.password)?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
        run_as.chown(&pwfile)?;
        let mut initdb = run_as.command(&find_binary("initdb")?);
        initdb
            .arg("-D")
            .arg(pgdata)
            .args([
                "-U",
                SUPERUSER,
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        if durability == Durability::Throwaway {
            initdb.arg("--no-sync");
        }
        let result = run(initdb, "initdb");
        std::fs::remove_file(&pwfile).ok();
        result?;

        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.conf"))?;
        writeln!(conf, "\n# written by linkd")?;
        writeln!(conf, "listen_addresses = '127.0.0.1'")?;
        writeln!(conf, "port = {}", state.port)?;
        writeln!(conf, "unix_socket_directories = ''")?;
        writeln!(conf, "max_connections = 300")?;
        if durability == Durability::Throwaway {
            writeln!(
                conf,
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off"
            )?;
        }
        let state_path = root.join(STATE_FILE);
        std::fs::write(&state_path, serde_json::to_vec(&state)?)?;
        std::fs::set_permissions(&state_path, std::fs::Permissions::from_mode(0o600))?;
        Ok(state)
    }

    fn spawn_watchdog(
        root: &Path,
        pgdata: &Path,
        pg_ctl: &Path,
        run_as: RunAs,
        durability: Durability,
    ) -> anyhow::Result<(ChildStdin, Child)> {
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let mode = match durability {
            Durability::Durable => "fast",
            Durability::Throwaway => "immediate",
        };
        let mut script = format!(
            "read _ignored; {}{} stop -w -m {mode} -D {} >/dev/null 2>&1",
            run_as.shell_prefix(),
            quote(pg_ctl),
            quote(pgdata)
        );
        if durability == Durability::Throwaway {
            script.push_str(&format!("; rm -rf {}", quote(root)));
        }
        let mut child = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the local Postgres watchdog")?;
        let stdin = child.stdin.take().expect("stdin is piped");
        Ok((stdin, child))
    }

    /// Connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.state.password, self.state.port
        )
    }

    /// Stops the cluster (if this handle started it) and waits until it is
    /// down.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some((stdin, mut child)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
