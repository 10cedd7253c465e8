//! Image preprocessing exactly as open_clip's transforms do it (torchvision on PIL images):
//! evaluation resizes the shorter side to the crop size with PIL's bicubic filter and crops the
//! centre; training takes a `RandomResizedCrop` (area 90–100 %, aspect ratio 3/4–4/3) resized
//! bicubically to the crop size. Both then scale to [0, 1] and normalise with the model's mean
//! and standard deviation, channel-major ([3, crop, crop]).
//!
//! Resizing is Pillow's `BICUBIC` resampling, reproduced to the bit: the Keys cubic (a = −0.5)
//! with its support widened by the downscaling factor, coefficients normalised then rounded to
//! 22-bit fixed point, a horizontal pass rounded to 8 bits, then a vertical pass.

use crate::engine::rng::Rng;
use crate::model::PreprocessSpec;

/// A decoded image: 8-bit RGB, row-major.
#[derive(Clone, Debug)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb {
    /// A grey image (one byte per pixel) as RGB.
    pub fn from_grey(width: u32, height: u32, grey: &[u8]) -> Rgb {
        Rgb {
            width,
            height,
            data: grey.iter().flat_map(|&g| [g, g, g]).collect(),
        }
    }

    /// Decodes JPEG or PNG bytes (any colour type becomes RGB).
    pub fn decode(bytes: &[u8]) -> Result<Rgb, String> {
        let image = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
        let rgb = image.to_rgb8();
        Ok(Rgb {
            width: rgb.width(),
            height: rgb.height(),
            data: rgb.into_raw(),
        })
    }
}

/// A crop box in source pixels: (left, top, width, height).
pub type Crop = (u32, u32, u32, u32);

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// torchvision's `Resize(resize)` then `CenterCrop(crop)`: the size the image is resized to
/// (shorter side `resize`, longer side truncated), and the centre crop in that image.
fn eval_geometry(width: u32, height: u32, resize: u32, crop: u32) -> ((u32, u32), Crop) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (resize as u64 * long as u64 / short as u64) as u32;
    let (rw, rh) = if width <= height {
        (resize, new_long)
    } else {
        (new_long, resize)
    };
    let top = round_half_even((rh as f64 - crop as f64) / 2.0).max(0.0) as u32;
    let left = round_half_even((rw as f64 - crop as f64) / 2.0).max(0.0) as u32;
    ((rw, rh), (left, top, crop.min(rw), crop.min(rh)))
}

/// torchvision's `RandomResizedCrop.get_params` with `scale` and ratio (3/4, 4/3).
pub fn random_resized_crop(width: u32, height: u32, scale: (f64, f64), rng: &mut Rng) -> Crop {
    let (w0, h0) = (width as f64, height as f64);
    let area = w0 * h0;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.uniform());
        let aspect = (lo + (hi - lo) * rng.uniform()).exp();
        let w = round_half_even((target * aspect).sqrt());
        let h = round_half_even((target / aspect).sqrt());
        if w > 0.0 && w <= w0 && h > 0.0 && h <= h0 {
            let top = rng.below(height as usize - h as usize + 1) as u32;
            let left = rng.below(width as usize - w as usize + 1) as u32;
            return (left, top, w as u32, h as u32);
        }
    }
    // The centre crop torchvision falls back to.
    let ratio = w0 / h0;
    let (w, h) = if ratio < 3.0 / 4.0 {
        (w0, round_half_even(w0 / (3.0 / 4.0)))
    } else if ratio > 4.0 / 3.0 {
        (round_half_even(h0 * (4.0 / 3.0)), h0)
    } else {
        (w0, h0)
    };
    let (w, h) = (w as u32, h as u32);
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// The `crop` region of `image`, resized to `out_w` × `out_h` with Pillow's bicubic filter
/// (as torchvision's `resized_crop` does: crop, then resize).
fn resize(image: &Rgb, crop: Crop, out_w: u32, out_h: u32) -> Vec<u8> {
    let (left, top, w, h) = crop;
    let mut region = Vec::with_capacity((w * h * 3) as usize);
    for y in top..top + h {
        let row = ((y * image.width + left) * 3) as usize;
        region.extend_from_slice(&image.data[row..row + (w * 3) as usize]);
    }
    pillow_bicubic(
        &region,
        w as usize,
        h as usize,
        out_w as usize,
        out_h as usize,
    )
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = −0.5), support 2.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`: per output pixel, the first input
/// pixel, how many it reads, and their fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<Vec<i32>>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut k: Vec<f64> = (0..xmax)
            .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = k.iter().sum();
        if total != 0.0 {
            k.iter_mut().for_each(|w| *w /= total);
        }
        let one = (1u64 << PRECISION_BITS) as f64;
        let fixed = k
            .iter()
            .map(|&w| {
                if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                }
            })
            .collect();
        bounds.push((xmin, xmax));
        weights.push(fixed);
    }
    (bounds, weights)
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS) << 8 {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's two-pass 8-bit resampling of an RGB image: horizontal first (over the rows the
/// vertical pass reads), rounded to 8 bits, then vertical.
fn pillow_bicubic(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let (hb, hk) = coefficients(w, out_w);
    let (vb, vk) = coefficients(h, out_h);
    let need_horizontal = out_w != w;
    let need_vertical = out_h != h;
    let half = 1i64 << (PRECISION_BITS - 1);
    // Rows the vertical pass reads.
    let (first, last) = (vb[0].0, vb[out_h - 1].0 + vb[out_h - 1].1);
    let (mut img, mut iw, mut row0) = (src.to_vec(), w, 0);
    if need_horizontal {
        let rows = last - first;
        let mut tmp = vec![0u8; rows * out_w * 3];
        for y in 0..rows {
            let line = &src[(y + first) * w * 3..(y + first + 1) * w * 3];
            for (xx, ((xmin, n), k)) in hb.iter().zip(&hk).enumerate() {
                for c in 0..3 {
                    let mut acc = half;
                    for x in 0..*n {
                        acc += line[(x + xmin) * 3 + c] as i64 * k[x] as i64;
                    }
                    tmp[(y * out_w + xx) * 3 + c] = clip8(acc);
                }
            }
        }
        img = tmp;
        iw = out_w;
        row0 = first;
    }
    if !need_vertical {
        return img;
    }
    let mut out = vec![0u8; out_h * iw * 3];
    for (yy, ((ymin, n), k)) in vb.iter().zip(&vk).enumerate() {
        let ymin = ymin - row0;
        for x in 0..iw * 3 {
            let mut acc = half;
            for y in 0..*n {
                acc += img[(y + ymin) * iw * 3 + x] as i64 * k[y] as i64;
            }
            out[yy * iw * 3 + x] = clip8(acc);
        }
    }
    out
}

/// Scales an RGB crop to [0, 1], normalises it and writes it channel-major into `out`.
fn normalise(pixels: &[u8], spec: &PreprocessSpec, out: &mut [f32]) {
    let n = pixels.len() / 3;
    debug_assert_eq!(out.len(), pixels.len());
    for c in 0..3 {
        let (mean, std) = (spec.mean[c] as f32, spec.std[c] as f32);
        let plane = &mut out[c * n..(c + 1) * n];
        for (i, o) in plane.iter_mut().enumerate() {
            *o = (pixels[3 * i + c] as f32 / 255.0 - mean) / std;
        }
    }
}

/// open_clip's evaluation transform into `out` ([3, crop, crop]).
pub fn eval_transform(image: &Rgb, spec: &PreprocessSpec, out: &mut [f32]) {
    let crop = spec.crop as u32;
    let ((rw, rh), (left, top, w, h)) =
        eval_geometry(image.width, image.height, spec.resize as u32, crop);
    let resized = resize(image, (0, 0, image.width, image.height), rw, rh);
    let mut cropped = Vec::with_capacity((crop * crop * 3) as usize);
    for y in 0..h {
        let row = ((top + y) * rw + left) as usize * 3;
        cropped.extend_from_slice(&resized[row..row + w as usize * 3]);
    }
    normalise(&cropped, spec, out);
}

/// open_clip's training transform (`RandomResizedCrop` with `scale`) into `out`.
pub fn train_transform(
    image: &Rgb,
    spec: &PreprocessSpec,
    scale: (f64, f64),
    rng: &mut Rng,
    out: &mut [f32],
) {
    let crop = random_resized_crop(image.width, image.height, scale, rng);
    let size = spec.crop as u32;
    let pixels = resize(image, crop, size, size);
    normalise(&pixels, spec, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_geometry_follow_torchvision() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-0.5), -0.0);
        // 640×480 to 224: the short side 224, the long int(224·640/480) = 298.
        let ((rw, rh), crop) = eval_geometry(640, 480, 224, 224);
        assert_eq!((rw, rh), (298, 224));
        assert_eq!(crop, (37, 0, 224, 224));
    }

    #[test]
    fn a_random_resized_crop_stays_inside_and_keeps_most_of_the_area() {
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let (l, t, w, h) = random_resized_crop(64, 64, (0.9, 1.0), &mut rng);
            assert!(l + w <= 64 && t + h <= 64);
            let area = (w * h) as f64 / 4096.0;
            assert!(area > 0.85, "area {area}");
        }
        // Too wide for any 90 % crop within the ratios: torchvision's fallback, the centre
        // crop at ratio 4/3.
        for _ in 0..20 {
            assert_eq!(
                random_resized_crop(100, 60, (0.9, 1.0), &mut rng),
                (10, 0, 80, 60)
            );
        }
    }
}
