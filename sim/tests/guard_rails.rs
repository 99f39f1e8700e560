//! Rules of the house that a compiler does not check, checked over the
//! workspace's source: every property test runs on the shared seeded
//! configuration (so CI gives the same answer on the same commit), and no
//! proptest regression file is kept (minimized failures are corpus entries).

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() && name != "target" && !name.starts_with('.') {
            files(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let mut all = Vec::new();
    for crate_dir in ["engine", "sim"] {
        files(&workspace().join(crate_dir), &mut all);
    }
    all
}

#[test]
fn every_proptest_block_uses_the_shared_seeded_configuration() {
    let mut unseeded = Vec::new();
    for file in sources()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(file).expect("a source file");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let opens_block = line.trim_end().ends_with("proptest! {");
            let configured = lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|next| next.contains("testing::proptest_config("));
            if opens_block && !configured {
                unseeded.push(format!("{}:{}", file.display(), i + 1));
            }
        }
    }
    assert!(
        unseeded.is_empty(),
        "proptest blocks without `#![proptest_config(engine::testing::proptest_config(N))]`: {unseeded:?}"
    );
}

#[test]
fn no_proptest_regression_files_are_kept() {
    let kept: Vec<PathBuf> = sources()
        .into_iter()
        .filter(|p| {
            p.components()
                .any(|c| c.as_os_str() == "proptest-regressions")
                || p.extension().is_some_and(|e| e == "proptest-regressions")
        })
        .collect();
    assert!(
        kept.is_empty(),
        "minimized failures belong in corpus/, not in {kept:?}"
    );
}
