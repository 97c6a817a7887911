//! Text replacements that keep track of how offsets move, so that a span
//! found in one text can be shown in another (rendered text with markers →
//! text shown with values; shown text → text with secrets masked).

/// Replacements made to a text: `(start, end, new length)`, sorted, in the
/// old text's offsets.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Edits(Vec<(usize, usize, usize)>);

impl Edits {
    /// Where offset `o` of the old text is in the new one (inside a
    /// replaced range: at the same distance into the replacement, at most
    /// its end).
    pub fn map(&self, o: usize) -> usize {
        let mut shift: isize = 0;
        for &(start, end, len) in &self.0 {
            if o >= end {
                shift += len as isize - (end - start) as isize;
            } else if o > start {
                return (start as isize + shift) as usize + (o - start).min(len);
            } else {
                break;
            }
        }
        (o as isize + shift).max(0) as usize
    }

    /// `self`, then `next` (made on the text `self` produced).
    pub fn then(&self, next: &Edits) -> Composed<'_> {
        Composed(self, next.clone())
    }
}

/// Two rounds of edits.
pub struct Composed<'a>(&'a Edits, Edits);

impl Composed<'_> {
    pub fn map(&self, o: usize) -> usize {
        self.1.map(self.0.map(o))
    }
}

/// Applies non-overlapping `(start, end, replacement)` edits (sorted by
/// start) to `text`.
pub fn apply(text: &str, edits: &[(usize, usize, String)]) -> (String, Edits) {
    let mut out = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(edits.len());
    let mut last = 0;
    for (start, end, with) in edits {
        if *start < last || *end > text.len() {
            continue;
        }
        out.push_str(&text[last..*start]);
        out.push_str(with);
        map.push((*start, *end, with.len()));
        last = *end;
    }
    out.push_str(&text[last..]);
    (out, Edits(map))
}

/// Every occurrence of each of `needles` (longest first, not overlapping)
/// replaced by `with`.
pub fn replace_all(text: &str, needles: &[String], with: &str) -> (String, Edits) {
    let mut found: Vec<(usize, usize, String)> = Vec::new();
    for n in needles.iter().filter(|n| !n.is_empty()) {
        for (at, _) in text.match_indices(n.as_str()) {
            let end = at + n.len();
            if !found.iter().any(|(s, e, _)| at < *e && *s < end) {
                found.push((at, end, with.to_string()));
            }
        }
    }
    found.sort_by_key(|(s, _, _)| *s);
    apply(text, &found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_replacements() {
        let (out, e) = apply("ab<x>cd<yy>e", &[(2, 5, "1234".into()), (7, 11, "".into())]);
        assert_eq!(out, "ab1234cde");
        assert_eq!(e.map(0), 0);
        assert_eq!(e.map(5), 6); // `c`
        assert_eq!(e.map(11), 8); // `e`
        assert_eq!(e.map(3), 3); // inside the first replacement
    }

    #[test]
    fn masking_keeps_later_columns_right() {
        let (out, e) = replace_all("pw=hunter22; x=1", &["hunter22".into()], "*****");
        assert_eq!(out, "pw=*****; x=1");
        let x = "pw=hunter22; x=1".find('x').expect("x");
        assert_eq!(&out[e.map(x)..e.map(x) + 1], "x");
    }
}
