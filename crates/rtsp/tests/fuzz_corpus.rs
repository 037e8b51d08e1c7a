//! Runs every fuzz target's logic over its seed corpus in `/fuzz/corpus`.

use std::fs;
use std::path::PathBuf;

use sluice_rtsp::fuzzing;

/// Calls `check` on every file of `fuzz/corpus/<target>`, returning how many.
fn run_corpus(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_file() {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{target}: {}", path.display());
            check(&data);
            count += 1;
        }
    }
    count
}

#[test]
fn rtsp_decoder_corpus() {
    assert!(run_corpus("rtsp_decoder", fuzzing::decoder_roundtrip) > 0);
}

#[test]
fn rtsp_headers_corpus() {
    assert!(run_corpus("rtsp_headers", fuzzing::headers) > 0);
}

#[test]
fn interleaved_corpus() {
    assert!(run_corpus("interleaved", fuzzing::interleaved) > 0);
}

#[test]
fn rtsp_response_corpus() {
    assert!(run_corpus("rtsp_response", fuzzing::responses) > 0);
}

#[test]
fn auth_corpus() {
    assert!(run_corpus("auth", fuzzing::auth) > 0);
}

#[test]
fn client_session_corpus() {
    assert!(run_corpus("client_session", fuzzing::client_session) > 0);
}

#[test]
fn server_connection_corpus() {
    assert!(run_corpus("server_connection", fuzzing::server_connection) > 0);
}
