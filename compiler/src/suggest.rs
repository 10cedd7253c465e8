//! Did-you-mean suggestions.

/// The candidate closest to `name`, if any is close enough to be a plausible typo: a
/// Damerau-Levenshtein distance of at most a third of the name's length (at least 1), or a
/// case-insensitive match.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let shorter = name.len().min(candidate.len());
        let distance = if candidate.eq_ignore_ascii_case(name) {
            0
        } else if shorter >= 3 && (name.starts_with(candidate) || candidate.starts_with(name)) {
            // `batch_size` for `batch`, `temp` for `temperature`.
            1
        } else {
            strsim::damerau_levenshtein(name, candidate)
        };
        if distance <= limit
            && best.is_none_or(|(d, c)| distance < d || (distance == d && candidate < c))
        {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn finds_transpositions_and_typos() {
        assert_eq!(closest("studnet", ["student", "teacher"]), Some("student"));
        assert_eq!(closest("batch_size", ["batch", "seed"]), Some("batch"));
        assert_eq!(closest("zzz", ["batch", "seed"]), None);
        assert_eq!(closest("lr", ["lr", "eps"]), None);
        assert_eq!(closest("Fd", ["fd", "crd"]), Some("fd"));
    }
}
