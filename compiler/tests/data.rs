//! Reading data never crashes on bad input: a malformed CSV row, a missing or corrupt image, a
//! file in a class folder that is not an image, a webdataset sample without image or caption
//! is a skipped sample, counted by the loader with an example naming the path and the reason;
//! too many of them stop the run with `DataError::TooManyBad` showing examples; a missing CSV,
//! folder or shard is an error at open naming the path. Webdataset shards (built here with the
//! `tar` crate) are indexed from their headers and read by index; shard patterns expand as
//! open_clip's `--train-data` does, and a malformed one is a located diagnostic.

use kdc::data::loader::{Loader, Options, Position, Stats};
use kdc::data::webdataset::{count, expand, key_and_extension};
use kdc::data::{self, image::Rgb, DataError, Dataset};
use kdc::ir::{DataSource, DataSpec};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fresh, empty folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `width`×`height` PNG of one colour.
fn png(width: u32, height: u32, colour: [u8; 3]) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb(colour));
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

/// A PNG cut off in the middle of its image data.
fn truncated_png() -> Vec<u8> {
    let mut bytes = png(16, 16, [9, 9, 9]);
    bytes.truncate(bytes.len() / 2);
    bytes
}

fn spec(source: DataSource) -> DataSpec {
    DataSpec {
        source,
        batch: 1,
        shuffle: false,
        seed: 0,
    }
}

fn open(source: DataSource, base: &Path) -> Result<Box<dyn Dataset>, DataError> {
    data::open(&spec(source), &kdc::manifest::Base::new(base))
}

fn open_err(source: DataSource, base: &Path) -> String {
    match open(source, base) {
        Ok(d) => panic!("{} opened", d.describe()),
        Err(e) => e.to_string(),
    }
}

fn pairs(csv: &str) -> DataSource {
    DataSource::Pairs {
        csv: csv.into(),
        image: "filepath".into(),
        caption: "title".into(),
        sep: "\t".into(),
    }
}

/// One in-order pass through the loader (no images prepared, no tokenizer): the captions of
/// the samples that could be read, and what the loader counted.
fn one_epoch(dataset: Box<dyn Dataset>) -> (Vec<String>, Stats) {
    let mut options = Options::new(1, 0, false, None);
    options.keep_last = true;
    options.workers = 2;
    let mut loader = Loader::new(
        Arc::from(dataset),
        Vec::new(),
        Vec::new(),
        options,
        Position {
            epoch: 0,
            cursor: 0,
        },
    )
    .unwrap();
    let mut captions = Vec::new();
    while let Some(batch) = loader.next_in_epoch().unwrap() {
        captions.extend(batch.captions);
    }
    (captions, loader.stats().clone())
}

fn has_example(stats: &Stats, parts: &[&str]) -> bool {
    stats
        .examples
        .iter()
        .any(|e| parts.iter().all(|p| e.contains(p)))
}

// ------------------------------------------------------------------------------------------
// CSV pairs and class folders.

#[test]
fn bad_csv_rows_and_images_are_skipped_counted_and_shown() {
    let dir = temp_dir("csv");
    std::fs::write(dir.join("red.png"), png(5, 3, [255, 0, 0])).unwrap();
    std::fs::write(dir.join("blue.png"), png(4, 4, [0, 0, 255])).unwrap();
    std::fs::write(dir.join("broken.png"), truncated_png()).unwrap();
    let rows = [
        "filepath\ttitle",
        "red.png\ta red rectangle",
        "blue.png\ta blue square\tan extra field",
        "missing.png\ta photo that is not there",
        "blue.png\t  ",
        "only-one-field",
        "broken.png\ta truncated file",
        "blue.png\ta blue square",
    ];
    std::fs::write(dir.join("pairs.tsv"), rows.join("\n") + "\n").unwrap();
    let dataset = open(pairs("pairs.tsv"), &dir).unwrap();
    assert_eq!(dataset.len(), 7, "every row is a sample, malformed or not");
    assert!(
        dataset.describe().contains("(4 pairs, 3 malformed rows)"),
        "{}",
        dataset.describe()
    );
    let (captions, stats) = one_epoch(dataset);
    assert_eq!(captions, ["a red rectangle", "a blue square"]);
    assert_eq!((stats.read, stats.skipped), (7, 5), "{stats:?}");
    let csv = dir.join("pairs.tsv").display().to_string();
    assert!(
        has_example(
            &stats,
            &[&format!("{csv}:3:"), "3 fields where the header has 2"]
        ),
        "{stats:?}"
    );
    assert!(
        has_example(&stats, &["missing.png", "No such file"]),
        "{stats:?}"
    );
    assert!(
        has_example(&stats, &[&format!("{csv}:5:"), "an empty caption"]),
        "{stats:?}"
    );
    assert!(
        has_example(
            &stats,
            &[&format!("{csv}:6:"), "1 fields where the header has 2"]
        ),
        "{stats:?}"
    );
    assert!(has_example(&stats, &["broken.png"]), "{stats:?}");
}

#[test]
fn a_truncated_image_is_an_error_not_a_crash() {
    let error = Rgb::decode(&truncated_png()).unwrap_err();
    assert!(!error.is_empty());
    assert!(Rgb::decode(b"this is not an image").is_err());
    assert!(Rgb::decode(&[]).is_err());
    let image = Rgb::decode(&png(7, 2, [1, 2, 3])).unwrap();
    assert_eq!(
        (image.width, image.height, image.data.len()),
        (7, 2, 7 * 2 * 3)
    );
}

#[test]
fn a_file_in_a_class_folder_that_is_not_an_image_is_skipped_and_counted() {
    let dir = temp_dir("folders");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(dir.join("root").join(class)).unwrap();
    }
    std::fs::write(dir.join("root/cat/1.png"), png(3, 3, [1, 1, 1])).unwrap();
    std::fs::write(dir.join("root/cat/2.png"), png(3, 3, [2, 2, 2])).unwrap();
    // Named as an image but text: a sample that fails.
    std::fs::write(dir.join("root/cat/notes.jpg"), "not a photo").unwrap();
    // Not named as an image: not a sample at all.
    std::fs::write(dir.join("root/cat/README.txt"), "cats").unwrap();
    std::fs::write(dir.join("root/dog/1.png"), png(3, 3, [3, 3, 3])).unwrap();
    let source = DataSource::Folders {
        root: "root".into(),
        template: "a photo of a {}.".into(),
    };
    let dataset = open(source, &dir).unwrap();
    assert_eq!(dataset.len(), 4);
    assert_eq!(dataset.classes().unwrap(), ["cat", "dog"]);
    let (captions, stats) = one_epoch(dataset);
    assert_eq!(
        captions,
        [
            "a photo of a cat.",
            "a photo of a cat.",
            "a photo of a dog."
        ]
    );
    assert_eq!((stats.read, stats.skipped), (4, 1), "{stats:?}");
    assert!(has_example(&stats, &["root/cat/notes.jpg"]), "{stats:?}");
}

#[test]
fn too_many_bad_samples_stop_training_with_examples() {
    let dir = temp_dir("too-many");
    std::fs::write(dir.join("good.png"), png(4, 4, [0, 128, 0])).unwrap();
    let mut rows = vec!["filepath\ttitle".to_string()];
    for i in 0..40 {
        rows.push(if i % 4 == 0 {
            format!("good.png\tgood {i}")
        } else {
            format!("gone-{i}.png\tmissing {i}")
        });
    }
    std::fs::write(dir.join("pairs.tsv"), rows.join("\n")).unwrap();
    let dataset: Arc<dyn Dataset> = Arc::from(open(pairs("pairs.tsv"), &dir).unwrap());
    // The training loader's defaults: shuffled, full batches, the threshold of loader.rs.
    let options = Options::new(2, 7, true, None);
    let (fraction, floor) = (options.max_bad_fraction, options.min_bad);
    let mut loader = Loader::new(
        dataset,
        Vec::new(),
        Vec::new(),
        options,
        Position {
            epoch: 0,
            cursor: 0,
        },
    )
    .unwrap();
    let error = loop {
        match loader.next_batch() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    match &error {
        DataError::TooManyBad { skipped, read, .. } => {
            assert_eq!(*skipped, floor + 1);
            assert!(*skipped as f64 > fraction * *read as f64);
            assert!(*read <= 40);
        }
        other => panic!("expected TooManyBad, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains("could not be read"), "{message}");
    assert!(message.contains("for example:"), "{message}");
    assert!(
        message.contains("gone-") && message.contains("No such file"),
        "{message}"
    );
    assert_eq!(
        message.lines().filter(|l| l.starts_with("  ")).count(),
        5,
        "{message}"
    );
}

#[test]
fn a_missing_csv_folder_or_shard_is_an_error_naming_the_path() {
    let dir = temp_dir("missing");
    let message = open_err(pairs("nowhere/pairs.tsv"), &dir);
    assert!(
        message.contains(&dir.join("nowhere/pairs.tsv").display().to_string()),
        "{message}"
    );
    let folders = DataSource::Folders {
        root: "no-such-root".into(),
        template: "a photo of a {}.".into(),
    };
    let message = open_err(folders, &dir);
    assert!(
        message.contains(&dir.join("no-such-root").display().to_string()),
        "{message}"
    );
    std::fs::write(dir.join("pairs.tsv"), "path\tcaption\nred.png\tred\n").unwrap();
    let message = open_err(pairs("pairs.tsv"), &dir);
    assert!(
        message.contains("no column `filepath`") && message.contains("`path`, `caption`"),
        "{message}"
    );
    let shards = DataSource::WebDataset {
        shards: "shards/{0..3}.tar".into(),
    };
    let message = open_err(shards, &dir);
    assert!(
        message.contains(&dir.join("shards/0.tar").display().to_string()),
        "{message}"
    );
    assert!(message.contains("4 of the 4 shards"), "{message}");
}

// ------------------------------------------------------------------------------------------
// Webdataset shards.

/// Writes a tar file with these members, in order.
fn write_tar(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    builder.into_inner().unwrap();
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Two shards: seven samples, of which two cannot be used (a corrupt image, no caption).
fn two_shards(dir: &Path) {
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    write_tar(
        &dir.join("shards/part-000.tar"),
        &[
            ("000000.png", png(8, 6, [255, 0, 0])),
            ("000000.txt", text("a red rectangle\n")),
            (
                "000001.json",
                text(r#"{"caption": "a green square", "width": 5}"#),
            ),
            ("000001.png", png(5, 5, [0, 255, 0])),
            ("000002.png", truncated_png()),
            ("000002.txt", text("a broken image")),
            // A caption in both: txt wins.
            ("sub/000003.PNG", png(2, 9, [0, 0, 255])),
            ("sub/000003.txt", text("a tall blue bar")),
            ("sub/000003.json", text(r#"{"caption": "not this one"}"#)),
        ],
    );
    write_tar(
        &dir.join("shards/part-001.tar"),
        &[
            ("000004.jpg.txt", text("an odd extension")),
            ("000004.png", png(3, 3, [1, 2, 3])),
            ("000005.png", png(4, 4, [4, 5, 6])),
            ("000006.png", png(6, 2, [7, 8, 9])),
            (
                "000006.json",
                text(r#"{"text": "a caption in the text field"}"#),
            ),
        ],
    );
}

fn shards(pattern: &str) -> DataSource {
    DataSource::WebDataset {
        shards: pattern.into(),
    }
}

#[test]
fn webdataset_shards_are_indexed_by_key_and_read_by_index() {
    let dir = temp_dir("wds");
    two_shards(&dir);
    let dataset = open(shards("shards/part-{000..001}.tar"), &dir).unwrap();
    assert_eq!(dataset.len(), 7);
    assert!(
        dataset
            .describe()
            .contains("7 samples, 2 without a usable image or caption, 2 shards"),
        "{}",
        dataset.describe()
    );
    // Random access, in any order, as often as asked.
    for index in [6, 0, 3, 1, 0, 6] {
        let sample = dataset.sample(index, 0).unwrap();
        let (caption, width, height) = match index {
            0 => ("a red rectangle", 8, 6),
            1 => ("a green square", 5, 5),
            3 => ("a tall blue bar", 2, 9),
            6 => ("a caption in the text field", 6, 2),
            _ => unreachable!(),
        };
        assert_eq!(sample.caption, caption);
        assert_eq!((sample.image.width, sample.image.height), (width, height));
        assert_eq!(sample.image.data.len(), (width * height * 3) as usize);
        assert_eq!(sample.label, None);
    }
    assert_eq!(&dataset.sample(0, 0).unwrap().image.data[..3], &[255, 0, 0]);
    // `000004.jpg.txt` has the extension `jpg.txt`: sample 4 has an image and no caption.
    let part0 = dir.join("shards/part-000.tar").display().to_string();
    let part1 = dir.join("shards/part-001.tar").display().to_string();
    let broken = dataset.sample(2, 0).unwrap_err();
    assert!(
        broken.starts_with(&format!("{part0}: 000002.png: ")),
        "{broken}"
    );
    let uncaptioned = dataset.sample(4, 0).unwrap_err();
    assert!(
        uncaptioned.contains(&part1) && uncaptioned.contains("000004: no caption"),
        "{uncaptioned}"
    );
    assert!(uncaptioned.contains("jpg.txt, png"), "{uncaptioned}");
    let uncaptioned = dataset.sample(5, 0).unwrap_err();
    assert!(uncaptioned.contains("000005: no caption"), "{uncaptioned}");

    let (captions, stats) = one_epoch(dataset);
    assert_eq!(
        captions,
        [
            "a red rectangle",
            "a green square",
            "a tall blue bar",
            "a caption in the text field"
        ]
    );
    assert_eq!((stats.read, stats.skipped), (7, 3), "{stats:?}");
    assert!(has_example(&stats, &[&part0, "000002.png"]), "{stats:?}");
    assert!(
        has_example(&stats, &[&part1, "000005: no caption"]),
        "{stats:?}"
    );
}

#[test]
fn webdataset_patterns_join_with_double_colons_and_resolve_against_the_recipe() {
    let dir = temp_dir("wds-join");
    two_shards(&dir);
    let one = open(shards("shards/part-001.tar"), &dir).unwrap();
    assert_eq!(one.len(), 3);
    let both = open(shards("shards/part-001.tar::shards/part-000.tar"), &dir).unwrap();
    assert_eq!(both.len(), 7);
    // part-001 first: its one good sample comes first.
    assert_eq!(
        both.sample(2, 0).unwrap().caption,
        "a caption in the text field"
    );
    let listed = open(shards("shards/part-{001,000}.tar"), &dir).unwrap();
    assert_eq!(listed.sample(3, 0).unwrap().caption, "a red rectangle");
    // An absolute pattern ignores the base.
    let absolute = format!("{}/shards/part-000.tar", dir.display());
    assert_eq!(
        open(shards(&absolute), Path::new("/nonexistent"))
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn many_shards_open_from_their_headers_alone() {
    let dir = temp_dir("wds-many");
    std::fs::create_dir_all(dir.join("many")).unwrap();
    // 200 shards of 50 samples whose images would not even decode: nothing is decoded at
    // open, only headers are read.
    let image = vec![7u8; 4 << 10];
    for shard in 0..200 {
        let members: Vec<(String, Vec<u8>)> = (0..50)
            .flat_map(|i| {
                let key = format!("{shard:04}{i:03}");
                [
                    (format!("{key}.jpg"), image.clone()),
                    (format!("{key}.txt"), text("a caption")),
                ]
            })
            .collect();
        let members: Vec<(&str, Vec<u8>)> = members
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        write_tar(&dir.join(format!("many/{shard:04}.tar")), &members);
    }
    let started = std::time::Instant::now();
    let dataset = open(shards("many/{0000..0199}.tar"), &dir).unwrap();
    let took = started.elapsed();
    assert_eq!(dataset.len(), 200 * 50);
    println!("{} opened in {took:?}", dataset.describe());
    let why = dataset.sample(123 * 50 + 7, 0).unwrap_err();
    assert!(why.contains("many/0123.tar: 0123007.jpg: "), "{why}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_truncated_shard_skips_the_samples_it_cut_off() {
    let dir = temp_dir("wds-truncated");
    two_shards(&dir);
    let path = dir.join("shards/part-001.tar");
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the last member (000006.json), past its header.
    let cut = bytes.windows(6).rposition(|w| w == b"{\"text").unwrap() + 3;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let dataset = open(shards("shards/part-001.tar"), &dir).unwrap();
    assert_eq!(dataset.len(), 3);
    let why = dataset.sample(2, 0).unwrap_err();
    assert!(why.contains("000006") && why.contains("truncated"), "{why}");
}

#[test]
fn shards_that_are_not_tar_files_are_errors_naming_them() {
    let dir = temp_dir("wds-bad");
    std::fs::write(dir.join("text.tar"), "hello, this is not a tar file").unwrap();
    let message = open_err(shards("text.tar"), &dir);
    assert!(
        message.contains(&dir.join("text.tar").display().to_string()),
        "{message}"
    );
    assert!(message.contains("not a readable tar file"), "{message}");
    let mut gz = vec![0x1f, 0x8b];
    gz.extend([0u8; 600]);
    std::fs::write(dir.join("packed.tar.gz"), gz).unwrap();
    let message = open_err(shards("packed.tar.gz"), &dir);
    assert!(
        message.contains("packed.tar.gz") && message.contains("gzip"),
        "{message}"
    );
    // An empty shard is a valid tar; no samples at all is an error.
    write_tar(&dir.join("empty.tar"), &[]);
    let message = open_err(shards("empty.tar"), &dir);
    assert!(
        message.contains("empty.tar") && message.contains("no samples"),
        "{message}"
    );
    std::fs::create_dir_all(dir.join("folder.tar")).unwrap();
    let message = open_err(shards("folder.tar"), &dir);
    assert!(
        message.contains("folder.tar") && message.contains("not a file"),
        "{message}"
    );
    let message = open_err(shards("x-{3..1}.tar"), &dir);
    assert!(message.contains("counts down"), "{message}");
}

#[test]
fn members_are_keyed_as_webdataset_does() {
    assert_eq!(
        key_and_extension("000001.jpg"),
        Some(("000001", "jpg".into()))
    );
    assert_eq!(
        key_and_extension("a/b.c/000001.Seg.PNG"),
        Some(("a/b.c/000001", "seg.png".into()))
    );
    assert_eq!(key_and_extension("README"), None);
    assert_eq!(key_and_extension("dir/.hidden"), None);
    assert_eq!(key_and_extension("trailing."), None);
}

// ------------------------------------------------------------------------------------------
// Shard patterns.

fn expanded(pattern: &str) -> Vec<String> {
    let out = expand(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
    assert_eq!(count(pattern).unwrap(), out.len());
    out
}

#[test]
fn ranges_keep_their_zero_padded_width() {
    let out = expanded("data/shard-{000..010}.tar");
    assert_eq!(out.len(), 11);
    assert_eq!(out[0], "data/shard-000.tar");
    assert_eq!(out[9], "data/shard-009.tar");
    assert_eq!(out[10], "data/shard-010.tar");
    assert_eq!(expanded("{8..10}"), ["8", "9", "10"]);
    assert_eq!(expanded("{08..10}"), ["08", "09", "10"]);
    assert_eq!(expanded("{0..2}"), ["0", "1", "2"]);
    assert_eq!(expanded("{7..7}"), ["7"]);
    assert_eq!(expanded("{0..00099}").len(), 100);
    assert_eq!(expanded("{0..00099}")[42], "00042");
}

#[test]
fn lists_double_colons_and_plain_paths_expand() {
    assert_eq!(expanded("{a,b}.tar"), ["a.tar", "b.tar"]);
    assert_eq!(
        expanded("x/{a,b}/{0..1}.tar"),
        ["x/a/0.tar", "x/a/1.tar", "x/b/0.tar", "x/b/1.tar"]
    );
    assert_eq!(expanded("{a,b{1..2}}"), ["a", "b1", "b2"]);
    assert_eq!(expanded("plain/shard.tar"), ["plain/shard.tar"]);
    assert_eq!(
        expanded("cc3m/{0..1}.tar::cc12m/{a,b}.tar::one.tar"),
        [
            "cc3m/0.tar",
            "cc3m/1.tar",
            "cc12m/a.tar",
            "cc12m/b.tar",
            "one.tar"
        ]
    );
    assert_eq!(expanded("{a}"), ["a"]);
}

#[test]
fn malformed_patterns_are_errors_naming_the_part() {
    for (pattern, says, part) in [
        ("shard-{5..1}.tar", "counts down", "{5..1}"),
        ("shard-{a..e}.tar", "whole numbers", "{a..e}"),
        ("shard-{1..}.tar", "whole numbers", "{1..}"),
        ("shard-{000..009.tar", "never closed", "{000..009.tar"),
        ("shard-000..009}.tar", "closes no", "shard-000..009}"),
        ("shard-{}.tar", "lists nothing", "{}"),
        ("shard-{a,}.tar", "empty alternative", "{a,}"),
        ("a.tar::", "empty pattern", "::"),
        ("::a.tar", "empty pattern", "::"),
        ("{0..999999}{0..9}", "more than", "{0..999999}{0..9}"),
    ] {
        let e = expand(pattern).unwrap_err();
        assert!(e.message.contains(says), "{pattern}: {}", e.message);
        assert_eq!(e.part, part, "{pattern}");
        assert_eq!(count(pattern).unwrap_err(), e);
    }
}

// ------------------------------------------------------------------------------------------
// The built-in.

const RECIPE: &str = r#"student = clip(preset: "ViT-T-16")
data = DATA
loss = clip_loss(student)
train = adamw(lr: 1e-3) | steps(10)
"#;

fn compile(data: &str) -> kdc::Compiled {
    let text = RECIPE.replace("DATA", data);
    kdc::compile("recipe.kd", &text, &kdc::FsLoader)
}

#[test]
fn the_webdataset_builtin_checks_its_pattern_and_keeps_it_as_written() {
    let compiled = compile(
        r#"webdataset(shards: "data/{00000..00099}.tar::more/{a,b}.tar", batch: 8, seed: 3)"#,
    );
    let recipe = compiled.recipe.expect("the recipe checks");
    let spec = &recipe.stages[0].data;
    assert_eq!(
        spec.source,
        DataSource::WebDataset {
            shards: "data/{00000..00099}.tar::more/{a,b}.tar".into()
        }
    );
    assert_eq!((spec.batch, spec.shuffle, spec.seed), (8, true, 3));
    let explained = kdc::explain::ir(&recipe);
    assert!(
        explained.contains(
            "webdataset shards data/{00000..00099}.tar::more/{a,b}.tar; batch 8, shuffled, seed 3"
        ),
        "{explained}"
    );
    let described = kdc::check::describe_function("webdataset").unwrap();
    assert!(
        described.starts_with("webdataset(shards, batch, shuffle? = true, seed? = 0)"),
        "{described}"
    );
}

#[test]
fn a_malformed_shard_pattern_is_a_located_diagnostic() {
    let data = r#"webdataset(shards: "data/{5..1}.tar", batch: 8)"#;
    let compiled = compile(data);
    assert!(compiled.recipe.is_none());
    let errors = compiled.diagnostics.sorted();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let d = errors[0];
    assert_eq!(d.code, kdc::codes::Code::OutOfRange);
    assert!(d.message.contains("counts down"), "{}", d.message);
    let text = RECIPE.replace("DATA", data);
    let at = text.find("\"data/{5..1}.tar\"").unwrap();
    assert_eq!(d.primary.span.range(), at..at + "\"data/{5..1}.tar\"".len());
    for bad in [r#""x/{0..3.tar""#, r#""x/{}.tar""#] {
        let compiled = compile(&format!("webdataset(shards: {bad}, batch: 8)"));
        assert!(compiled.recipe.is_none(), "{bad}");
        assert!(
            compiled
                .diagnostics
                .sorted()
                .iter()
                .all(|d| d.code == kdc::codes::Code::OutOfRange),
            "{bad}"
        );
    }
    // webdataset samples have no classes.
    let compiled = compile(
        r#"synthetic(batch: 8)
eval = zero_shot(model: student, data: webdataset(shards: "a.tar", batch: 8))"#,
    );
    assert!(compiled.recipe.is_none());
    assert!(compiled
        .diagnostics
        .sorted()
        .iter()
        .any(|d| d.code == kdc::codes::Code::TypeMismatch));
}
