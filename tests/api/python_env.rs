//! The tests' own Python: a virtual environment under `target/tmp/python`
//! holding `tests/python-requirements.txt`, made on first use and remade when
//! that file changes, so `cargo test` needs no `pip install` by hand (and
//! works where the system Python refuses system-wide installs, as Debian's
//! does).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python-requirements.txt");

/// A `python` of the environment, ready to run (panics with what to do when
/// the environment cannot be made).
pub fn python() -> Command {
    Command::new(environment().join("bin/python"))
}

/// A console script the environment installed (`schemathesis`).
pub fn python_tool(name: &str) -> Command {
    Command::new(environment().join("bin").join(name))
}

fn environment() -> &'static Path {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match READY.get_or_init(make_environment) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn make_environment() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join("python");
    let stamp = venv.join("requirements.txt");
    let wanted = fs::read_to_string(REQUIREMENTS).map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    // Another `cargo test` on the same tree waits here rather than racing
    // this one's install.
    let lock = File::create(root.join("python.lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| e.to_string())?;
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(venv);
    }
    let _ = fs::remove_dir_all(&venv);
    let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let created = run(Command::new(&system).args(["-m", "venv"]).arg(&venv));
    if created.is_err() && nix::unistd::Uid::effective().is_root() {
        // Debian ships `venv` in its own package.
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        let _ = fs::remove_dir_all(&venv);
        run(Command::new(&system).args(["-m", "venv"]).arg(&venv))
    } else {
        created
    }
    .map_err(|cause| {
        format!("the Python tests need a virtual environment: `{system} -m venv` failed ({cause}); install python3-venv (or run .ci/run)")
    })?;
    run(Command::new(venv.join("bin/python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        REQUIREMENTS,
    ]))
    .map_err(|cause| {
        format!(
            "installing {REQUIREMENTS} into {} failed: {cause}",
            venv.display()
        )
    })?;
    fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(venv)
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
