//! Runs the `sdp` and `config` fuzz targets' logic over their seed corpora in
//! `/fuzz/corpus/`.

use std::fs;
use std::path::PathBuf;

/// Runs `check` over every seed of `/fuzz/corpus/<target>`; there must be some.
fn replay(target: &str, check: fn(&[u8])) {
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
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn sdp_corpus() {
    replay("sdp", sluice_server::fuzzing::sdp);
}

#[test]
fn config_corpus() {
    replay("config", sluice_server::fuzzing::config);
}
