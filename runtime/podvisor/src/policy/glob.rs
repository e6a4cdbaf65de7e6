//! The `*` and `?` wildcards of profile selectors.

/// Whether `text` matches `pattern`: `*` matches any run of characters
/// (none included), `?` exactly one character, anything else itself. There
/// is no escape: Kubernetes namespaces, label keys and label values cannot
/// contain `*` or `?`, so a literal one is never needed.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it has absorbed up to:
    // backtracking only to the last star keeps this O(len(p) * len(t))
    // without recursion, whatever the input.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn wildcards_match_as_documented() {
        let table = [
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "a", false),
            ("default", "default", true),
            ("default", "defaults", false),
            ("default", "Default", false),
            ("dev-*", "dev-", true),
            ("dev-*", "dev-team-a", true),
            ("dev-*", "prod-team-a", false),
            ("*-prod", "team-a-prod", true),
            ("*-prod", "team-a-prod2", false),
            ("team-?", "team-a", true),
            ("team-?", "team-", false),
            ("team-?", "team-ab", false),
            ("??", "ab", true),
            ("??", "a", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*?", "a", false),
            ("a*?", "ab", true),
            ("**", "x", true),
            ("*a", "bbba", true),
            ("*a", "bbbab", false),
            ("é?", "éx", true),
        ];
        for (pattern, text, want) in table {
            assert_eq!(glob_match(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }
}
