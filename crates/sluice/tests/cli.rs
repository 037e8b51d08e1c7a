//! The command line a user meets first: --version, --help, config errors.

use std::process::Command;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

/// A directory of the test's own under the system's temp dir, removed when dropped (also
/// when the test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn version_and_help_are_clean() {
    let out = sluice(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
    let out = sluice(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("serve"), "{help}");
    let out = sluice(&["serve", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

/// The benchmark tools are not part of the product (they are `sluice-bench`, in
/// tools/bench): `sluice bench …` is refused as any unknown command is, and not offered.
#[test]
fn bench_is_an_unknown_command() {
    let out = sluice(&["bench", "load", "rtsp://127.0.0.1:9/x", "--readers", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "clap's usage error: {err}");
    assert!(err.contains("unrecognized subcommand 'bench'"), "{err}");
    let help = sluice(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.contains("bench"), "{help}");
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let tmp = TempDir::new("sluice-cli");
    let dir = &tmp.0;
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[rtsp]\nlisten = \"127.0.0.1:0\"\nsesion_timeout = \"5s\"\n",
    )
    .unwrap();
    let out = sluice(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sesion_timeout"), "{err}");

    let out = sluice(&[
        "serve",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = TempDir::new("sluice-cli-busy");
    let cfg = tmp.0.join("busy.toml");
    std::fs::write(
        &cfg,
        format!("[rtsp]\nlisten = \"127.0.0.1:{port}\"\ntransports = [\"tcp\"]\n"),
    )
    .unwrap();
    let out = sluice(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot bind RTSP listener") && err.contains(&port.to_string()),
        "{err}"
    );
}
