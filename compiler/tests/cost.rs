//! The step cost model (`engine::cost`) against an independent count: the matrix-product
//! operations of a ViT image tower's forward pass, written out from its architecture.

use kdc::engine::compile::{compile, Options};
use kdc::engine::cost::{estimate, gpu, operations};

const RECIPE: &str = r#"
student = clip(
  image: vit(size: 32, patch: 8, width: 48, layers: 3, heads: 4, mlp: 96),
  text: transformer(context: 8, vocab: 100, width: 16, layers: 1, heads: 2),
  embed: 24,
)
data = synthetic(batch: 6, samples: 24, seed: 0)
loss = clip_loss(student)
train = adamw(lr: 1e-3) | steps(2)
"#;

#[test]
fn matmul_operations_of_a_vit_forward_match_the_architecture() {
    let compiled = kdc::compile("cost.kd", RECIPE, &kdc::FsLoader);
    let recipe = compiled.recipe.expect("the recipe checks");
    let backend = kdc::engine::device::cpu();
    let b = kdc::engine::exec::lock(&backend);
    let batch = 6usize;
    let options = Options::forward(vec![(0, kdc::ir::Tap::Image)], batch);
    let step = compile(&recipe, 0, &options, &**b);
    let measured: f64 = operations(&step)
        .iter()
        .filter(|o| o.matmul)
        .map(|o| o.flops)
        .sum();

    // By hand: 16 patches of 3·8·8 values; 17 tokens with the class token; per block the
    // q, k, v and output projections (4·W²), the two MLP layers (2·W·M), and attention's
    // scores and weighted sum (2·T²·W over all heads); then the projection to the embedding.
    // The image embedding reads only the class token, so the last block computes keys and
    // values for every token but its query, attention output and MLP for the class token.
    let (p, w, m, t, layers, e) = (16.0, 48.0, 96.0, 17.0, 3.0, 24.0);
    let patch_embed = 2.0 * p * (3.0 * 64.0) * w;
    let block = 2.0 * t * (4.0 * w * w + 2.0 * w * m) + 2.0 * 2.0 * t * t * w;
    let last_block = 2.0 * (w * w + 2.0 * t * w * w + w * w + 2.0 * w * m) + 2.0 * 2.0 * t * w;
    let projection = 2.0 * w * e;
    let expected = batch as f64 * (patch_embed + (layers - 1.0) * block + last_block + projection);
    // Biases (and the position embedding) fused into products (MatMulAdd) add one operation
    // per output value.
    let bias_adds = batch as f64
        * (p * w + (layers - 1.0) * t * (4.0 * w + m + w) + (w + 2.0 * t * w + w + m + w));
    // Attention's scores and weighted sum run inside the fused attention operation (2d + 2e
    // per query–key pair, plus about 5 for the softmax), not as matrix products.
    let heads = 4.0;
    let pairs = heads * ((layers - 1.0) * t * t + t);
    let attention_products =
        batch as f64 * ((layers - 1.0) * 2.0 * 2.0 * t * t * w + 2.0 * 2.0 * t * w);
    let attention: f64 = operations(&step)
        .iter()
        .filter(|o| o.kind == "Attention")
        .map(|o| o.flops)
        .sum();
    let attention_expected = attention_products + batch as f64 * 5.0 * pairs;
    assert!(
        (attention - attention_expected).abs() <= 1.0,
        "attention FLOPs {attention} against {attention_expected}"
    );
    let expected = expected - attention_products;
    assert!(
        (measured - expected - bias_adds).abs() <= 1.0,
        "matmul FLOPs {measured} against {expected} (+ at most {bias_adds} fused additions)"
    );
}

#[test]
fn a_training_step_costs_about_three_forward_passes_and_fits_an_a100() {
    let compiled = kdc::compile("cost.kd", RECIPE, &kdc::FsLoader);
    let recipe = compiled.recipe.expect("the recipe checks");
    let backend = kdc::engine::device::cpu();
    let b = kdc::engine::exec::lock(&backend);
    let train = compile(&recipe, 0, &Options::train(), &**b);
    let a100 = gpu("A100").unwrap();
    let e = estimate(&train, a100);
    let forward = compile(
        &recipe,
        0,
        &Options::forward(vec![(0, kdc::ir::Tap::Image), (0, kdc::ir::Tap::Text)], 6),
        &**b,
    );
    let f = estimate(&forward, a100);
    // Backward costs about twice the forward in products (two products per product).
    let ratio = e.matmul_flops / f.matmul_flops;
    assert!(
        (2.5..3.5).contains(&ratio),
        "train/forward matmul FLOPs {ratio}"
    );
    assert!(e.flops > e.matmul_flops && e.bytes > 0.0);
    assert!(e.memory_bytes < a100.memory_gib * (1u64 << 30) as f64);
    let h100 = estimate(&train, gpu("h100").unwrap());
    assert!(h100.seconds < e.seconds, "an H100 is faster than an A100");
    // The recipe trains in f32: nothing on the tensor cores. Under bf16 autocast every product
    // is (forward and backward); the work is the same but for the residual additions autocast
    // leaves unfused; the conversions and roundings move more bytes. On a model this small
    // every operation is bound by bandwidth, so those extra bytes make the bf16 step slower:
    // autocast pays only where products dominate (`kdc explain` on recipes/clip_kd/best.kd).
    assert_eq!(e.tensor_flops, 0.0);
    let bf16 = compile(
        &recipe,
        0,
        &Options {
            precision: Some(kdc_backend::Dtype::Bf16),
            ..Options::train()
        },
        &**b,
    );
    let eb = estimate(&bf16, a100);
    assert_eq!(eb.precision, kdc_backend::Dtype::Bf16);
    assert!(
        (eb.flops - e.flops).abs() <= 0.02 * e.flops,
        "{} vs {}",
        eb.flops,
        e.flops
    );
    assert_eq!(eb.tensor_flops, eb.matmul_flops);
    assert!(eb.bytes > e.bytes && eb.launches > e.launches);
    assert!(eb.seconds > e.seconds, "{} vs {}", eb.seconds, e.seconds);
}
