//! The reference matcher the pattern target compares against, and the split of a
//! fuzz input into a glob and a key.

/// Splits `bytes` at its first 0 byte into a glob and a key (both UTF-8, as
/// `Pattern` takes them) and checks the two matchers agree.
pub fn pattern(bytes: &[u8]) {
    let (glob, key) = match bytes.iter().position(|&b| b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[][..]),
    };
    if let (Ok(glob), Ok(key)) = (std::str::from_utf8(glob), std::str::from_utf8(key)) {
        tiered::fuzzing::pattern(glob, key, redis_stringmatch);
    }
}

/// Redis 7's `stringmatchlen` (`src/util.c`, case-sensitive), transcribed line
/// by line with the C's pointer moves kept as index moves: independent of the
/// crate's matcher, which is written for Rust. Reads past the end give 0, as the
/// C reads the string's terminating NUL.
pub fn redis_stringmatch(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    impl_(
        pattern,
        0,
        pattern.len() as isize,
        string,
        0,
        string.len() as isize,
        &mut skip_longer,
        0,
    )
}

fn byte(s: &[u8], i: isize) -> u8 {
    usize::try_from(i)
        .ok()
        .and_then(|i| s.get(i))
        .copied()
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn impl_(
    pat: &[u8],
    mut p: isize,
    mut pattern_len: isize,
    s: &[u8],
    mut i: isize,
    mut string_len: isize,
    skip_longer: &mut bool,
    nesting: u32,
) -> bool {
    if nesting > 1000 {
        return false;
    }
    while pattern_len != 0 && string_len != 0 {
        match byte(pat, p) {
            b'*' => {
                while pattern_len != 0 && byte(pat, p + 1) == b'*' {
                    p += 1;
                    pattern_len -= 1;
                }
                if pattern_len == 1 {
                    return true;
                }
                while string_len != 0 {
                    if impl_(
                        pat,
                        p + 1,
                        pattern_len - 1,
                        s,
                        i,
                        string_len,
                        skip_longer,
                        nesting + 1,
                    ) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    i += 1;
                    string_len -= 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => {
                i += 1;
                string_len -= 1;
            }
            b'[' => {
                p += 1;
                pattern_len -= 1;
                let not = byte(pat, p) == b'^';
                if not {
                    p += 1;
                    pattern_len -= 1;
                }
                let mut matched = false;
                loop {
                    if byte(pat, p) == b'\\' && pattern_len >= 2 {
                        p += 1;
                        pattern_len -= 1;
                        if byte(pat, p) == byte(s, i) {
                            matched = true;
                        }
                    } else if byte(pat, p) == b']' {
                        break;
                    } else if pattern_len == 0 {
                        p -= 1;
                        pattern_len += 1;
                        break;
                    } else if pattern_len >= 3 && byte(pat, p + 1) == b'-' {
                        // `char` is signed where Redis is built.
                        let mut start = byte(pat, p) as i8;
                        let mut end = byte(pat, p + 2) as i8;
                        let c = byte(s, i) as i8;
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p += 2;
                        pattern_len -= 2;
                        if c >= start && c <= end {
                            matched = true;
                        }
                    } else if byte(pat, p) == byte(s, i) {
                        matched = true;
                    }
                    p += 1;
                    pattern_len -= 1;
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                i += 1;
                string_len -= 1;
            }
            first => {
                let mut c = first;
                if first == b'\\' && pattern_len >= 2 {
                    p += 1;
                    pattern_len -= 1;
                    c = byte(pat, p);
                }
                if c != byte(s, i) {
                    return false;
                }
                i += 1;
                string_len -= 1;
            }
        }
        p += 1;
        pattern_len -= 1;
        if string_len == 0 {
            while byte(pat, p) == b'*' {
                p += 1;
                pattern_len -= 1;
            }
            break;
        }
    }
    pattern_len == 0 && string_len == 0
}
