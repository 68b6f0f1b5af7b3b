//! Replays every golden vector in `fixtures/golden/` and compares tokens and
//! log-probability bits. A mismatch means seeded output changed: either a
//! bug, or a deliberate change that must regenerate the files
//! (`cargo run -p sampler-core --example golden`) and say why.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "support/golden.rs"]
mod golden;

use std::path::Path;

/// How many vectors `examples/golden.rs` writes; fewer files means some were lost.
const EXPECTED_FILES: usize = 6;

#[test]
fn golden_vectors_replay_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        EXPECTED_FILES,
        "golden files in {}",
        dir.display()
    );
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let (case, recorded) = golden::parse(&name, &text).unwrap();
        // The writer must reproduce the file byte for byte, so the format
        // round-trips and nothing in the file goes unread.
        assert_eq!(
            golden::write(&case, &recorded),
            text,
            "{name}: format round trip"
        );
        let replayed = golden::run(&case).unwrap();
        for (step, (got, want)) in replayed.iter().zip(&recorded).enumerate() {
            assert_eq!(
                got, want,
                "{name} step {step}: got id {} logprob {:08x}, recorded id {} logprob {:08x}",
                got.0, got.1, want.0, want.1
            );
        }
        // Not every step may pick the same token, or the vector pins little.
        let distinct: std::collections::BTreeSet<u32> = recorded.iter().map(|r| r.0).collect();
        assert!(distinct.len() > 1, "{name}: a single token throughout");
    }
}
