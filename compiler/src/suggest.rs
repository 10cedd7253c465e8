//! Did-you-mean suggestions.

/// The candidate closest to `name`, if any is close enough to be a plausible typo: a
/// Damerau-Levenshtein distance of at most a third of the name's length (at least 1, and 2 for
/// names of three letters or more), a case-insensitive match, or, failing those, one name
/// being a prefix of the other (`batch_size` for `batch`). Ties go to the smaller edit
/// distance, then to the alphabetically first.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let length = name.chars().count();
    let limit = if length <= 2 { 1 } else { (length / 3).max(2) };
    let mut best: Option<(usize, usize, usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let edit = strsim::damerau_levenshtein(name, candidate);
        let shorter = name.len().min(candidate.len());
        let distance = if candidate.eq_ignore_ascii_case(name) {
            0
        } else if edit <= limit {
            edit
        } else if shorter >= 3 && (name.starts_with(candidate) || candidate.starts_with(name)) {
            limit
        } else {
            continue;
        };
        // Typos rarely change the first letter.
        let other_start = (candidate.chars().next() != name.chars().next()) as usize;
        let key = (distance, edit, other_start, candidate);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map(|(_, _, _, c)| c)
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
        assert_eq!(
            closest("clip_los", ["clip", "clip_loss"]),
            Some("clip_loss")
        );
        assert_eq!(closest("img", ["image", "text"]), Some("image"));
        assert_eq!(
            closest("image_layers", ["image", "image_layer"]),
            Some("image_layer")
        );
    }
}
