//! Names users give things (datasets, models): they appear in URLs and file names, so one
//! conservative rule for all.

/// Checks a name: 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, starting with a letter or
/// digit. The error says so, naming what kind of name it was.
pub fn check(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} is invalid: use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_one_rule() {
        for good in ["a", "iris-v2", "x.y_z", &"n".repeat(64)] {
            assert!(super::check("model", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a b", "a/b", "..", &"n".repeat(65)] {
            let error = super::check("model", bad).unwrap_err();
            assert!(error.starts_with("model name"), "{error}");
        }
    }
}
