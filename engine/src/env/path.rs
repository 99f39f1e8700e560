//! Storage paths: relative, `/`-separated, and checked before they reach any
//! storage implementation, so that no caller (or client-supplied handle) can
//! name something outside the storage root.

use std::io;

/// Accepts `""` (the root) and paths like `shapes/abc/log`. Rejects absolute
/// paths, empty components, `.`/`..`, backslashes and NUL bytes.
pub fn check_path(path: &str) -> io::Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    // One scan: each component is checked when its `/` (or the end) is
    // reached; a forbidden byte fails its component at once.
    let bytes = path.as_bytes();
    let mut start = 0;
    for at in 0..=bytes.len() {
        match bytes.get(at) {
            Some(b'\\' | 0) => return Err(bad_component(path, start)),
            Some(b'/') | None => {
                if matches!(&bytes[start..at], b"" | b"." | b"..") {
                    return Err(bad_component(path, start));
                }
                start = at + 1;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The error for the component of `path` that starts at byte `start`.
fn bad_component(path: &str, start: usize) -> io::Error {
    let component = components(&path[start..]).next().unwrap_or_default();
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("invalid storage path {path:?}: component {component:?} is not allowed"),
    )
}

/// `dir` + `/` + `name`, with `""` as the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        return name.to_string();
    }
    let mut path = String::with_capacity(dir.len() + 1 + name.len());
    path.push_str(dir);
    path.push('/');
    path.push_str(name);
    path
}

/// The `/`-separated parts of `path`, as `path.split('/')` gives them, by a
/// plain byte scan (every storage call walks its path: no pattern
/// machinery per part).
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == b'/') {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The directory holding `path` (`""` for top-level entries).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes_and_accepts_plain_paths() {
        for bad in ["/abs", "a//b", "a/", "..", "a/../b", "./a", "a\\b", "a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["", "a", "a/b", "shapes/1234-5678/log", "a.b/c..d"] {
            assert!(check_path(good).is_ok(), "{good:?} should be accepted");
        }
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a/b", "x"), "a/b/x");
        assert_eq!(parent("a/b/x"), "a/b");
        assert_eq!(parent("x"), "");
    }

    #[test]
    fn components_are_what_split_gives() {
        for path in [
            "",
            "a",
            "a/b",
            "/a",
            "a/",
            "a//b",
            "shapes/1234-5678/log",
            "é/ü",
        ] {
            let ours: Vec<&str> = components(path).collect();
            let split: Vec<&str> = path.split('/').collect();
            assert_eq!(ours, split, "{path:?}");
        }
    }
}
