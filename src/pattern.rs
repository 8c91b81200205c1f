//! Redis-compatible glob patterns, for `invalidate_pattern`.
//!
//! [`Pattern::matches`] is a port of Redis's `stringmatchlen` (`src/util.c`), so a
//! pattern removes from L1 exactly the keys that `SCAN MATCH` finds in Redis: `*`,
//! `?`, `[abc]`, `[^a]`, `[a-z]` (ends in either order), `\` escapes, bytes rather
//! than characters (`?` matches one byte of a multi-byte UTF-8 character), an
//! unclosed `[` that takes the rest of the pattern as its set, and the same limit
//! on nesting (a pattern with more than 1000 `*` groups matches nothing).

use std::fmt;

/// How deep Redis lets `*` recurse before it gives up (no match).
const MAX_NESTING: u32 = 1000;

/// A glob over a key's string form, with Redis's semantics.
///
/// ```
/// use tiered::Pattern;
///
/// let p = Pattern::new("user:[0-9]*:profile");
/// assert!(p.matches("user:42:profile"));
/// assert!(!p.matches("user:x:profile"));
/// // A literal part that may contain glob characters:
/// let q = Pattern::new(format!("{}:*", tiered::escape_glob("team[7]")));
/// assert!(q.matches("team[7]:alice"));
/// assert!(!q.matches("team7:alice"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    glob: String,
}

impl Pattern {
    /// A pattern from a Redis glob. Every string is a valid glob.
    pub fn new(glob: impl Into<String>) -> Self {
        Pattern { glob: glob.into() }
    }

    /// The glob, as given.
    pub fn as_str(&self) -> &str {
        &self.glob
    }

    /// Whether `key` matches, exactly as Redis's `SCAN MATCH` decides for the key
    /// inside a cache's namespace (`{namespace}{key}` against
    /// `{escaped namespace}{pattern}`). That differs from matching the bare key in
    /// one case only: the empty key, which a pattern of `*`s matches.
    pub fn matches(&self, key: &str) -> bool {
        if key.is_empty() {
            return self.glob.bytes().all(|b| b == b'*');
        }
        let mut skip_longer = false;
        match_bytes(self.glob.as_bytes(), key.as_bytes(), &mut skip_longer, 0)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.glob).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.glob)
    }
}

/// Escapes every glob character of `literal`, so that it matches only itself inside
/// a pattern (`escape_glob("a*b") + "*"` matches every key starting with `a*b`).
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The byte at `i`, or 0 past the end (the C original reads the terminating NUL).
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// `stringmatchlen_impl` of Redis 7, case-sensitive. `p` and `s` are the pattern
/// and string still to match.
fn match_bytes(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_bytes(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                let whole = p;
                p = &p[1..];
                let not = at(p, 0) == b'^';
                if not {
                    p = &p[1..];
                }
                // `i` walks the set; the C code moves `pattern` itself and may step
                // back one byte when the set is unclosed.
                let mut i = 0usize;
                let mut matched = false;
                let mut unclosed = false;
                loop {
                    let rest = p.len().saturating_sub(i);
                    if at(p, i) == b'\\' && rest >= 2 {
                        i += 1;
                        if at(p, i) == s[0] {
                            matched = true;
                        }
                    } else if at(p, i) == b']' {
                        break;
                    } else if rest == 0 {
                        unclosed = true;
                        break;
                    } else if rest >= 3 && at(p, i + 1) == b'-' {
                        // `char` is signed in Redis's build: compare as i8.
                        let (mut start, mut end) = (at(p, i) as i8, at(p, i + 2) as i8);
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        let c = s[0] as i8;
                        i += 2;
                        if c >= start && c <= end {
                            matched = true;
                        }
                    } else if at(p, i) == s[0] {
                        matched = true;
                    }
                    i += 1;
                }
                // Unclosed: the set took the rest; stay on the pattern's last byte.
                p = if unclosed {
                    &whole[whole.len() - 1..]
                } else {
                    &p[i..]
                };
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s = &s[1..];
            }
            b'\\' => {
                if p.len() >= 2 {
                    p = &p[1..];
                }
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while at(p, 0) == b'*' {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, key: &str) -> bool {
        Pattern::new(glob).matches(key)
    }

    #[test]
    fn the_documented_forms() {
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "reversed ranges are swapped");
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("", "") && !m("", "a") && m("a*", "a"));
        // The empty key (after its namespace) matches `*`s only.
        assert!(m("*", "") && m("**", "") && !m("?", "") && !m("[a]*", ""));
    }

    #[test]
    fn redis_quirks() {
        // An unclosed set takes the rest of the pattern.
        assert!(m("a[bc", "ab") && m("a[bc", "ac") && !m("a[bc", "ad"));
        // A trailing backslash matches itself.
        assert!(m("a\\", "a\\"));
        // An escaped byte inside a set.
        assert!(m("[\\]]", "]") && m("[\\-]", "-"));
        // `?` is one byte, not one character.
        assert!(m("??", "é") && !m("?", "é"));
        // `[a-]` is the range `a`..`]` (swapped), and the set is unclosed.
        assert!(m("[a-]", "^") && !m("[a-]", "-"));
    }

    #[test]
    fn hostile_patterns_finish() {
        let glob = "*a".repeat(2000) + "b";
        let key = "a".repeat(5000);
        assert!(!m(&glob, &key));
        let glob = "*".repeat(100_000);
        assert!(m(&glob, "anything"));
        let glob = "[".repeat(10_000);
        assert!(!m(&glob, "x"));
    }

    #[test]
    fn escaped_literals_match_only_themselves() {
        for literal in ["a*b", "x?[y]", "\\", "^-", "plain:1", "é*"] {
            let p = Pattern::new(escape_glob(literal));
            assert!(p.matches(literal), "{literal:?}");
            assert!(!p.matches(&format!("{literal}x")), "{literal:?}");
        }
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
