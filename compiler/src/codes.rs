//! Every diagnostic code, with the text `kdc explain KD0xxx` prints: what it means, why it
//! matters, an example that triggers it and how to fix it.

use std::fmt;

macro_rules! codes {
    ($($variant:ident = $number:literal, $title:literal, $text:literal;)*) => {
        /// A diagnostic code. The number never changes meaning once released.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub fn number(self) -> u32 {
                match self { $(Code::$variant => $number),* }
            }

            /// A one-line summary.
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title),* }
            }

            /// The long explanation, in Markdown-like plain text.
            pub fn explanation(self) -> &'static str {
                match self { $(Code::$variant => $text),* }
            }
        }
    };
}

impl Code {
    pub fn as_str(self) -> String {
        format!("KD{:04}", self.number())
    }

    /// Looks a code up by its written form, `KD0009` or `kd9`.
    pub fn parse(text: &str) -> Option<Code> {
        let digits = text
            .strip_prefix("KD")
            .or_else(|| text.strip_prefix("kd"))?;
        let number: u32 = digits.parse().ok()?;
        Code::ALL.iter().copied().find(|c| c.number() == number)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

codes! {
Syntax = 1, "syntax error",
"The recipe does not follow kdc's grammar (grammar/kdc.pest). Parsing stops at the first
syntax error, so fix it and run `kdc check` again to see any further errors.

Example:
    loss = clip_loss(student) +
The expression ends after `+` with nothing to add.

Fix: complete the expression. Named arguments are written `name: value`, strings use double
quotes, and no semicolons are needed.";

UnknownName = 2, "unknown name",
"A name is used that no binding, `let`, parameter, import or built-in defines.

Example:
    loss = clip_loss(studnet)
`studnet` is not defined; kdc suggests the closest defined name (`student`).

Fix: correct the spelling, define the name, or import it with `use`.";

UnknownFunction = 3, "unknown function",
"A call names a function that is neither built in, defined with `fn`, nor imported.

Example:
    loss = clip_loss(student) + 1 * crd(student, teacher)
without `use std.clip_kd.crd`.

Fix: import the function from the standard library (`use std.clip_kd.{crd}`), define it,
or correct the spelling.";

UnknownArgument = 4, "unknown argument name",
"A named argument is not a parameter of the function called.

Example:
    data = pairs(csv: \"data/cc3m.csv\", batch_size: 256)
`pairs` has a parameter `batch`, not `batch_size`.

Fix: use one of the parameter names the message lists (`kdc explain` on a recipe shows each
call's full argument list).";

MissingArgument = 5, "missing required argument",
"A call leaves out a parameter that has no default.

Example:
    data = pairs(csv: \"data/cc3m.csv\")
`pairs` needs `batch`.

Fix: pass the argument, by position or by name.";

TooManyArguments = 6, "too many positional arguments",
"A call passes more positional arguments than the function has parameters.

Example:
    loss = fd(student, teacher, teacher)

Fix: remove the extra argument or pass it by name to the parameter it was meant for.";

DuplicateArgument = 7, "argument given twice",
"The same parameter receives two values, by name twice or by position and by name.

Example:
    train = adamw(lr: 1e-3, lr: 5e-4) | epochs(3)

Fix: keep one of them.";

TypeMismatch = 8, "type mismatch",
"A value of one kind is used where another is needed: a model where a tensor is expected, a
string where a number is expected, a tensor where a loss (a scalar) is expected, and so on.

Example:
    loss = mse(student, teacher)
`mse` compares tensors such as `student.image`, not whole models.

Fix: pass a value of the expected kind; the message names both kinds.";

ShapeMismatch = 9, "shape mismatch",
"Two tensors whose shapes must agree do not. kdc tracks every tensor's shape with symbolic
dimensions (B for the batch) and the model's real widths, so the error is found before any
training.

Example:
    loss = mse(student.image, teacher.image)
with a student embedding width of 192 and a teacher width of 512.

Fix: map one side onto the other's width first, for instance with
`proj(student.image, to: teacher.dim)` (identity when widths already match, otherwise a
learnable linear map owned by the loss) or `linear(…, to: …)`.";

BadAxis = 10, "axis out of range",
"An `axis:` argument names an axis the tensor does not have.

Example:
    mean(student.image, axis: 2)
`student.image` is [B, D]: its axes are 0 and 1 (or -1 and -2).

Fix: use an axis between -rank and rank-1.";

NotFinite = 11, "number is not finite",
"A number is infinite or not a number: a literal too large for a 64-bit float, a division by
zero in a constant, or a loss weight that evaluates to infinity.

Example:
    loss = clip_loss(student) + 1e999 * fd(student, teacher)

Fix: write a finite number.";

OutOfRange = 12, "value out of range",
"A number is outside the range its parameter allows: a probability or masking ratio outside
[0, 1), a negative learning rate, a weight decay below zero, a temperature of zero, and so on.

Example:
    masked = student.masked(1.0)
A masking ratio of 1 would drop every patch.

Fix: use a value in the range the message gives.";

NotPositive = 13, "size must be positive",
"A size, count or step number must be a positive whole number: batch sizes, widths, layers,
heads, epochs, steps, accumulation counts.

Example:
    data = pairs(csv: \"data/cc3m.csv\", batch: 0)

Fix: use a whole number of at least 1.";

HeadsDoNotDivide = 14, "heads do not divide the width",
"Multi-head attention splits the width evenly across heads, so the number of heads must
divide the width.

Example:
    image: vit(size: 224, patch: 16, width: 192, layers: 12, heads: 5)

Fix: choose a number of heads that divides the width (192 = 3 × 64: 3 heads of 64).";

FrozenWithoutWeights = 15, "frozen model without weights",
"A frozen model (or tower) is never trained, so without pretrained weights it would stay at
its random initialisation and teach nothing.

Example:
    teacher = clip(preset: \"ViT-B-16\", frozen)

Fix: give `weights: \"path/to/model.safetensors\"` (Hugging Face or open_clip names), or
remove `frozen` if the model is meant to be trained.";

UnknownPreset = 16, "unknown preset",
"A `preset:` names no model configuration kdc knows.

Example:
    student = clip(preset: \"ViT-T-61\")

Fix: use one of the presets listed in the message, or describe the towers explicitly with
`image: vit(…)`, `text: transformer(…)` and `embed:`.";

DuplicateDefinition = 17, "defined twice",
"The same name is bound twice in one scope (two top-level bindings, two functions, two
parameters, two stages, or a binding that clashes with an import).

Example:
    student = clip(preset: \"ViT-T-16\")
    student = clip(preset: \"ViT-S-16\")

Fix: rename or remove one of them.";

Cycle = 18, "cyclic definition",
"Bindings refer to each other in a circle, so none of them can be computed, or a function
calls itself (kdc functions are not recursive).

Example:
    a = b * 2
    b = a + 1

Fix: break the cycle.";

StageChain = 19, "stages do not chain",
"Stages run in order, and each stage starts from the checkpoint of the stage named in its
`from:`. That stage must exist and come earlier in the file.

Example:
    stage align(from: featurs) { … }

Fix: name an earlier stage in `from:`, or leave `from:` out to start from the models'
initial weights.";

MissingBinding = 20, "required binding missing",
"A recipe (or each of its stages) needs a `loss`, `data` and `train` binding to know what to
optimise, on what, and how.

Example: a recipe with `loss` and `data` but no `train`.

Fix: add the missing binding at the top level (shared by all stages) or in the stage.";

NotALoss = 21, "loss is not a trainable scalar",
"The `loss` binding must be a scalar that depends on at least one trainable parameter;
otherwise there is nothing for the optimiser to do.

Example:
    loss = crd(teacher, teacher)
with a frozen teacher: nothing in it can be trained.

Fix: make the loss depend on the student (and reduce tensors to scalars with `mean`, `mse`,
`cross_entropy` and the like).";

UnknownModule = 22, "unknown module or import",
"A `use` names a module that does not exist, or an item the module does not define.

Example:
    use std.clip_kd.{crd, fdd}

Fix: correct the path or the item name; `std.clip`, `std.clip_kd`, `std.comkd`,
`std.dcclip`, `std.tinyclip` and `std.kd` are the standard library's modules, and a
module path not starting with `std` is a `.kd` file relative to the recipe.";

UnknownField = 23, "unknown field",
"A `.field` is read that the value does not have.

Example:
    student.img
A model has fields `image`, `text`, `scale`, `dim`, `patches`, `image_width`, `text_width`,
the parts `vision`, `visual_projection`, `text_tower`, `text_projection`, `logit_scale` (for
`freeze`), and methods `image_layer(k)`, `text_layer(k)`, `masked(ratio)`.

Fix: use one of the fields listed in the message.";

ParamConflict = 24, "learnable part reused with another shape",
"Two learnable parts of the loss were given the same `name:` but different shapes. A name
identifies one parameter (that is how FD and ICL share their projection W), so its shape must
agree everywhere.

Example:
    linear(student.image, to: 512, name: \"w\") and linear(student.text, to: 768, name: \"w\")

Fix: give the two parts distinct names.";

ConflictingArguments = 25, "arguments conflict",
"Two arguments that exclude each other were both given, such as a `preset:` together with an
explicit `image:` tower, or a preset and a different activation.

Example:
    student = clip(preset: \"ViT-T-16\", embed: 256)

Fix: keep one of them.";

LayerOutOfRange = 27, "layer out of range",
"A tap names a layer the tower does not have.

Example:
    student.image_layer(13)
on a 12-layer tower. Layer 0 is the input to the first block; layer k the output of block k.

Fix: use a layer between 0 and the number of layers.";

BadReturnType = 29, "wrong result kind",
"A function's body produces a value of a different kind than its declared result type.

Example:
    fn f(s: Clip) -> Scalar { s.image }
`s.image` is a [B, D] tensor, not a scalar.

Fix: reduce the tensor (for instance with `mean`) or change the declared type.";

UnusedBinding = 31, "unused binding",
"A binding is defined but never used by the loss, data, training or evaluation. This is a
warning: the value is checked but has no effect.

Example:
    lambda = 0.75
    loss = clip_loss(student)
`lambda` was meant to weight a term but nothing uses it.

Fix: remove it, or use it.";

MisplacedBinding = 32, "binding not allowed here",
"A binding kdc gives a meaning to appears where it has none: `eval` inside a stage (evaluation
runs once, on the recipe's models, after training), or a stage binding that nothing in the
stage uses.

Example:
    stage features { eval = [zero_shot(…)] }

Fix: move `eval` to the top level; remove or use the stage binding.";

PatchDoesNotDivide = 33, "patch size does not divide image size",
"A ViT cuts the image into patch × patch squares, so the patch size must divide the image
size.

Example:
    image: vit(size: 224, patch: 15, width: 192, layers: 12, heads: 3)

Fix: choose an image size that is a multiple of the patch size.";

BadSchedule = 36, "invalid schedule",
"A schedule's numbers do not make sense together: a warm-up longer than the schedule, a step
schedule whose `values` and `at` lists do not match, boundaries out of order.

Example:
    lr: cosine(1e-3, warmup: 2000, steps: 1000)

Fix: make the warm-up shorter than the schedule, and give `step` one more value than
boundaries, in increasing order.";

BadTemplate = 37, "invalid caption template",
"A caption or prompt template must contain `{}` where the class name goes.

Example:
    templates: [\"a photo\"]

Fix: write for instance \"a photo of a {}.\".";

DuplicateTrainSetting = 38, "training setting given twice",
"A `train` pipeline gives the same setting twice (two optimisers, two `epochs`), or none of a
required one (an optimiser, and a length: `epochs` or `steps`).

Example:
    train = adamw(lr: 1e-3) | adamw(lr: 5e-4) | epochs(3)

Fix: keep exactly one of each.";

AmbiguousBroadcast = 39, "ambiguous broadcast",
"A tensor of lower rank meets one of higher rank, and its axes match more than one place in
the other's shape. Broadcasting follows NumPy's rule: the shorter shape lines up with the
LAST axes of the longer, and that may not be the alignment meant. This is a warning: the
recipe runs with NumPy's alignment.

Example:
    a = s @ s.T                       # [B, B]
    centred = a - mean(a, axis: 1)    # [B, B] - [B]: subtracts column means, not row means
The row means [B] line up with the last axis, so entry (i, j) loses the mean of row j.

Fix: keep the reduced axis, `mean(a, axis: 1, keepdim: true)` ([B, 1]), or add the axis
where it belongs, `unsqueeze(m, axis: -1)`. If the trailing alignment is meant, make it
explicit with `unsqueeze(m, axis: 0)` ([1, B]).";

BadIndex = 40, "index out of range",
"An index `x[…]` names a position outside its axis, a range that selects nothing, more
indices than the tensor has axes, or a position along the batch `B`, whose size is known
only when data arrives. Positions count from 0; negative ones from the end (−1 is the last).

Example:
    cls = student.image_layer(12)[:, 50]    # [B, 50, 768]: positions are −50 to 49

Fix: index within the axis (`[:, 0]` is the class token), and keep the batch axis whole
with `:`.";

BadReshape = 41, "invalid reshape",
"`reshape` must keep every element: the product of the new sizes must equal the old one,
with the batch `B` kept as a size of its own, and at most one size given as −1 (inferred).
`squeeze` removes only an axis of size 1.

Example:
    x = reshape(student.image, shape: [rows(student.image), 2, 100])    # [B, 512] has 512 per row

Fix: choose sizes whose product is the original one, for example `[rows(x), 2, 256]` or
`[rows(x), 2, -1]`.";

NoSuchParameter = 42, "no parameter matches",
"A parameter pattern in `freeze` or in an optimiser `group(…)` names no parameter of the
stage. Patterns are full parameter names as `kdc explain RECIPE --stage graph` lists them: a
model's name, `/`, its Hugging Face name (`student/vision_model.encoder.layers.0.mlp.fc1.weight`)
or `loss/` and a loss part's name (`loss/clip_kd.w_image.weight`), with `*` for any run of
characters and `{0..5}` for a range of numbers.

Example:
    freeze = [\"student/vision_model.encoder.layer.{0..5}.*\"]    # CLIP layers are `layers.i`

Fix: correct the name; the hint shows the closest parameter.";

BadManifest = 43, "invalid kdc.toml",
"A recipe library's manifest, kdc.toml (found in the recipe's folder or the nearest one above
it), is not valid TOML or has a table, key or value kdc does not know.

Example:
    [defaults]
    device = \"gpu\"

Fix: a kdc.toml has the tables [library] (`name`, `description`), [roots] (`name = \"path\"`,
relative paths from the manifest's folder), [defaults] (`device` = \"cpu\" or \"cuda\",
`threads`, `runs`) and [snap] (`exclude` = glob patterns, `lowered` = true or false).";

UnknownRoot = 44, "unknown root",
"A path starts with `$name`, which refers to a root of the recipe library's manifest
(kdc.toml), and the manifest declares no root of that name, or no manifest was found above the
recipe.

Example:
    weights: \"$teacher/vit-b-16.safetensors\"     # kdc.toml declares `teachers`

Fix: correct the name (the hint shows the closest root), declare the root under [roots] in
kdc.toml, or write the path without `$` (`./$name` for a file whose name starts with `$`).";

MissingRoot = 45, "root does not exist",
"A recipe uses a root of kdc.toml whose folder does not exist on this machine. This is a
warning: the recipe checks, but reading a file under the root will fail when it runs. A root
may be missing on purpose (the runs folder before the first run, data not fetched in CI).

Example:
    [roots]
    teachers = \"/shared/weights\"    # not mounted here

Fix: create or fetch the folder, correct the path in kdc.toml, or point the root elsewhere on
this machine with the environment variable KDC_ROOT_<NAME> (`KDC_ROOT_TEACHERS=/mnt/w`).";
}
