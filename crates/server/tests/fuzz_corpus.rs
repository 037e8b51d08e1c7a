//! Runs the `sdp` and `config` fuzz targets' logic over their seed corpora in
//! `/fuzz/corpus/`.

use std::fs;
use std::path::PathBuf;

#[test]
fn sdp_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sdp");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_file() {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("sdp: {}", path.display());
            sluice_server::fuzzing::sdp(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn config_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_file() {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("config: {}", path.display());
            sluice_server::fuzzing::config(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}
