//! Caption cleaning as open_clip does it before tokenizing (its `clean='lower'`):
//! `ftfy.fix_text`, Python's `html.unescape` twice, white space collapsed, lower case.
//!
//! ftfy's repairs that apply to well-formed text are reproduced here, in ftfy's order, repeated
//! until nothing changes, line by line: decoding HTML entities that end in a semicolon (unless
//! the text contains `<`), C1 control characters read as Windows-1252, Latin ligatures split,
//! fullwidth and halfwidth forms to their usual width, curly quotes straightened, line breaks
//! unified, terminal escape sequences and control characters removed, then NFC. Its mojibake
//! detection (text decoded in the wrong encoding) is not reproduced: such text is tokenized as
//! it stands.

use regex::Regex;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

/// The text open_clip's tokenizer splits into words.
pub fn clean_lower(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = htmlize::unescape(htmlize::unescape(fixed.trim()).as_ref()).into_owned();
    // Python's `str.split()` with no argument splits on Unicode white space.
    let words: Vec<&str> = unescaped
        .trim()
        .split(is_python_space)
        .filter(|w| !w.is_empty())
        .collect();
    words.join(" ").trim().to_lowercase()
}

/// Python's `str.isspace()` for one character.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// ftfy's `fix_text` for well-formed text (see the module documentation).
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        // Once a segment contains `<`, ftfy stops decoding entities for the rest of the text.
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let before = text.clone();
        if unescape {
            text = unescape_entities(&text);
        }
        text = fix_c1_controls(&text);
        text = text.chars().flat_map(ligature).collect();
        text = text.chars().map(width).collect();
        text = text
            .chars()
            .map(|c| match c {
                '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
                '\u{201c}'..='\u{201f}' => '"',
                c => c,
            })
            .collect();
        text = text
            .replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
        text = ansi_escapes().replace_all(&text, "").into_owned();
        text.retain(|c| !is_control(c));
        text = text.nfc().collect();
        if text == before {
            return text;
        }
    }
}

/// Entities that end in a semicolon: named ones of the HTML5 table (and all-caps versions of
/// the lower-case ones that are not entities themselves), and numeric references.
fn unescape_entities(text: &str) -> String {
    static ENTITY: OnceLock<Regex> = OnceLock::new();
    let entity = ENTITY.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").unwrap());
    entity
        .replace_all(text, |m: &regex::Captures| {
            let whole = &m[0];
            if let Some(c) = named_entity(whole) {
                return c;
            }
            if whole.starts_with("&#") {
                let decoded = htmlize::unescape(whole).into_owned();
                if !decoded.contains(';') {
                    return decoded;
                }
            }
            whole.to_string()
        })
        .into_owned()
}

fn named_entity(entity: &str) -> Option<String> {
    let bytes = entity.as_bytes();
    if let Some(expansion) = htmlize::ENTITIES.get(bytes) {
        return Some(String::from_utf8_lossy(expansion).into_owned());
    }
    // ftfy also reads `&EACUTE;` as `&eacute;` upper-cased, when the all-caps name is not an
    // entity of its own.
    let lower = entity.to_lowercase();
    if lower != entity && entity.to_uppercase() == entity {
        if let Some(expansion) = htmlize::ENTITIES.get(lower.as_bytes()) {
            return Some(String::from_utf8_lossy(expansion).to_uppercase());
        }
    }
    None
}

/// C1 control characters (U+0080–U+009F) as the Windows-1252 characters of the same bytes
/// (the five bytes Windows-1252 leaves undefined stay as they are).
fn fix_c1_controls(text: &str) -> String {
    const CP1252: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    text.chars()
        .map(|c| match c {
            '\u{80}'..='\u{9f}' => CP1252[c as usize - 0x80],
            c => c,
        })
        .collect()
}

/// Latin ligatures and digraphs ftfy splits.
fn ligature(c: char) -> Vec<char> {
    let s = match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        c => return vec![c],
    };
    s.chars().collect()
}

/// Halfwidth and fullwidth forms (U+FF01–U+FFEF) to their NFKC forms, and the ideographic
/// space to a space.
fn width(c: char) -> char {
    match c {
        '\u{3000}' => ' ',
        '\u{ff01}'..='\u{ffef}' => {
            let mut alternate = std::iter::once(c).nfkc();
            match (alternate.next(), alternate.next()) {
                (Some(a), None) => a,
                _ => c,
            }
        }
        c => c,
    }
}

fn ansi_escapes() -> &'static Regex {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    ANSI.get_or_init(|| Regex::new("\x1b\\[((?:\\d|;)*)([a-zA-Z])").unwrap())
}

/// The control characters ftfy removes.
fn is_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}'
        | '\u{b}'
        | '\u{e}'..='\u{1f}'
        | '\u{7f}'
        | '\u{206a}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffc}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_as_ftfy_and_open_clip_do() {
        assert_eq!(clean_lower("  A  Photo\tof\n a CAT. "), "a photo of a cat.");
        assert_eq!(clean_lower("&lt;b&gt; &amp;amp; caf&eacute;"), "<b> & café");
        assert_eq!(clean_lower("P&EACUTE;REZ"), "pérez");
        assert_eq!(clean_lower("“curly” ‘quotes’"), "\"curly\" 'quotes'");
        assert_eq!(clean_lower("ﬁne ＡＢＣ"), "fine abc");
        assert_eq!(clean_lower("\x1b[36mblue\x1b[0m"), "blue");
        assert_eq!(clean_lower("e\u{301}"), "é");
    }
}
