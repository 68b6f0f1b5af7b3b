//! Where the bench's generated logits go: through the system's temporary
//! folder, never into a folder of the checkout, whatever target folder
//! cargo builds into.

// A test stops with a message on any surprise.
#![allow(clippy::expect_used, clippy::panic)]

use std::process::Command;

use talkback_tests::{model, root};

#[test]
fn generated_logits_pass_through_the_temporary_folder_and_are_removed() {
    let steps = 3;
    // The file the bench once wrote under the checkout: it may be there
    // from such a run, and then it must stay as it is.
    let old = root()
        .join("target")
        .join("bench")
        .join(format!("logits-{steps}.f32"));
    let before = std::fs::metadata(&old).and_then(|m| m.modified()).ok();
    let tmp = std::env::temp_dir().join(format!("talkback-bench-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("make the temporary folder");

    let out = Command::new(env!("CARGO_BIN_EXE_talkback-bench"))
        .args([
            "kernels", "--rounds", "1", "--vocab", "1000", "--filter", "greedy",
        ])
        .args(["--steps", &steps.to_string()])
        .arg("--model")
        .arg(model())
        .env("TMPDIR", &tmp)
        .output()
        .expect("run the bench");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .expect("read the temporary folder")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    let _ = std::fs::remove_dir_all(&tmp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "both pick the same token at {steps}/{steps} steps"
        )),
        "the logits of {steps} steps were not read back:\n{stdout}"
    );
    assert!(left.is_empty(), "left in the temporary folder: {left:?}");
    let after = std::fs::metadata(&old).and_then(|m| m.modified()).ok();
    assert_eq!(after, before, "{} was written", old.display());
}
