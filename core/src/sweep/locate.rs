//! Where in a YAML document a field path was written, so validation errors read like parse
//! errors (`sweep.yaml:7:3: ...`). A line scan by indentation: good for the block-style YAML
//! people write; when a key cannot be found, the error keeps just the file name.

use crate::Error;

/// Turns a validation error into one located in `text` (`origin:line:column`) when its field can
/// be found there; other errors pass through.
pub fn with_location(err: Error, text: &str, origin: &str) -> Error {
    match err {
        Error::InvalidField { field, message } => {
            let location = find(text, &segments(&field))
                .map_or_else(|| origin.to_owned(), |(l, c)| format!("{origin}:{l}:{c}"));
            Error::InvalidConfig {
                origin: location,
                field,
                message,
            }
        }
        other => other,
    }
}

/// `space.training.learning_rate` → `["space", "training.learning_rate"]` (space keys are
/// dotted paths themselves); `warm_start[2].x` → `["warm_start"]`; others split on dots.
fn segments(field: &str) -> Vec<String> {
    let (top, rest) = field.split_once('.').unwrap_or((field, ""));
    let top = top.split('[').next().unwrap_or(top).to_owned();
    if field.starts_with("warm_start") || rest.is_empty() {
        vec![top]
    } else if top == "space" {
        vec![top, rest.to_owned()]
    } else {
        std::iter::once(top)
            .chain(rest.split('.').map(str::to_owned))
            .collect()
    }
}

/// 1-based line and column of the deepest key of `path` found, nested by indentation (the
/// parent's when the key itself is absent: a default that failed validation).
fn find(text: &str, path: &[String]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for key in path {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let indent = line.len() - content.len();
            if parent_indent.is_some_and(|p| indent <= p) {
                break;
            }
            let bare = content.trim_start_matches("- ");
            let col = indent + (content.len() - bare.len());
            let named = [
                format!("{key}:"),
                format!("\"{key}\":"),
                format!("'{key}':"),
            ];
            if named.iter().any(|n| bare.starts_with(n.as_str())) {
                hit = Some((i, col));
                break;
            }
        }
        let Some((i, col)) = hit else { break };
        found = Some((i + 1, col + 1));
        from = i + 1;
        parent_indent = Some(col);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_and_dotted_keys() {
        let text = "name: s\nspace:\n  model.dropout: {double: [0, 0.5]}\n  training.learning_rate: {log: [1, 0.1]}\nasha:\n  eta: 1\n";
        let seg = |f: &str| find(text, &segments(f));
        assert_eq!(seg("space.training.learning_rate"), Some((4, 3)));
        assert_eq!(seg("asha.eta"), Some((6, 3)));
        assert_eq!(
            seg("asha.min_epochs"),
            Some((5, 1)),
            "the parent, when the key is absent"
        );
        assert_eq!(seg("seed"), None);
        assert_eq!(seg("name"), Some((1, 1)));
    }
}
