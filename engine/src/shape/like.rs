//! LIKE and ILIKE patterns: compiled once when the clause is parsed, matched
//! per row. `%` matches any run of characters, `_` exactly one, and the escape
//! character (backslash unless an ESCAPE clause says otherwise) makes the next
//! character literal. ILIKE folds ASCII letters only: under the "C" collation
//! no other character has case.

use super::expr::LikeToken;

/// Compiles a LIKE pattern. `%` matches any run, `_` one character, and the
/// escape character makes the next character literal. For ILIKE the literal
/// characters are folded to ASCII lower case (C collation: only ASCII letters
/// have case).
pub fn compile_like(
    pattern: &str,
    escape: Option<char>,
    case_insensitive: bool,
) -> std::result::Result<Vec<LikeToken>, String> {
    let fold = |c: char| {
        if case_insensitive {
            c.to_ascii_lowercase()
        } else {
            c
        }
    };
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(if Some(c) == escape {
            let literal = chars
                .next()
                .ok_or("a LIKE pattern must not end with its escape character")?;
            LikeToken::Char(fold(literal))
        } else if c == '%' {
            LikeToken::AnyRun
        } else if c == '_' {
            LikeToken::AnyOne
        } else {
            LikeToken::Char(fold(c))
        });
    }
    Ok(tokens)
}

/// Wildcard matching with backtracking to the most recent `%`: linear in
/// practice, `O(text * pattern)` at worst.
pub fn like_matches(tokens: &[LikeToken], text: &str, case_insensitive: bool) -> bool {
    let text: Vec<char> = text
        .chars()
        .map(|c| {
            if case_insensitive {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();
    let (mut t, mut p) = (0usize, 0usize);
    // (pattern index after the last `%`, text index it is currently matched up to)
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(LikeToken::AnyRun) => {
                backtrack = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(LikeToken::AnyOne) => {
                t += 1;
                p += 1;
                continue;
            }
            Some(LikeToken::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            // Let the last `%` swallow one more character and retry.
            Some((after_run, matched_to)) => {
                backtrack = Some((after_run, matched_to + 1));
                p = after_run;
                t = matched_to + 1;
            }
            None => return false,
        }
    }
    tokens[p..].iter().all(|tok| *tok == LikeToken::AnyRun)
}
