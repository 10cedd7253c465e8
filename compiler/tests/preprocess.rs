//! kdc's image preprocessing against open_clip's transforms (torchvision on PIL) on real
//! photos (tests/fixtures/preprocess, made by make_fixture.py): shorter side resized with
//! Pillow's bicubic filter, centre crop, [0, 1], CLIP's mean and standard deviation — the same
//! pixels to the bit.

use kdc::data::image::{eval_transform, Rgb};
use kdc::engine::weights::read_safetensors;
use kdc::model::{PreprocessSpec, CLIP_MEAN, CLIP_STD};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/fixtures/preprocess")
}

#[test]
fn the_evaluation_transform_matches_open_clip() {
    let expected = read_safetensors(&dir().join("expected.safetensors")).unwrap();
    let mut worst = 0f32;
    let mut compared = 0;
    for name in ["chelsea", "coffee", "camera"] {
        let image =
            Rgb::decode(&std::fs::read(dir().join(format!("{name}.png"))).unwrap()).unwrap();
        for (key, resize, crop) in [
            ("eval64", 64, 64),
            ("eval37", 37, 37),
            ("resize72crop64", 72, 64),
        ] {
            let spec = PreprocessSpec {
                resize,
                crop,
                mean: CLIP_MEAN,
                std: CLIP_STD,
            };
            let mut got = vec![0f32; (3 * crop * crop) as usize];
            eval_transform(&image, &spec, &mut got);
            let (shape, want) = &expected[&format!("{name}.{key}")];
            assert_eq!(shape, &vec![3, crop as usize, crop as usize]);
            // The resampling is Pillow's to the bit, so only the float normalisation may
            // differ (one 8-bit level would be 1/255/0.2613 ≈ 0.015).
            let d = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-6, "{name}.{key}: largest difference {d}");
            worst = worst.max(d);
            compared += 1;
        }
    }
    assert_eq!(compared, 9);
    println!("worst difference {worst}");
}
