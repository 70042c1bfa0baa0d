//! What genzoo knows of each model's reference code: which of genzoo's networks a reference
//! state dict holds (from its entry, its file's name or its keys), how a reference key is named
//! in genzoo, and the `[model_config]` values the shapes determine.
//!
//! genzoo's models keep the reference PyTorch names under a network prefix (`vb.pp(..)`):
//! pytorch/examples' DCGAN `main.0.weight` is `generator.main.0.weight`, junyanz's `model.1.weight`
//! of `latest_net_G_A.pth` is `netG_A.model.1.weight`, yunjey's StarGAN `main.0.weight` of
//! `200000-G.ckpt` is `generator.main.0.weight`, pytorch_GAN_zoo's `netG` / `avgG` entries are
//! `generator.` and its weight average `ema.generator.`. A model without an entry here is placed
//! by its names alone (see `super::place_by_names`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

use super::state_dict::StateDict;

/// Where one state dict goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// genzoo's prefix of the network (`generator`, `netG_A`); empty where the keys are genzoo's
    /// whole names.
    pub network: String,
    /// The network's weight average (pytorch_GAN_zoo's `avgG`), saved under `ema.`.
    pub average: bool,
    /// How the place was told, where it is a guess the user may want to override.
    pub note: Option<String>,
}

impl Place {
    pub fn of(network: &str) -> Self {
        Self {
            network: network.to_string(),
            average: false,
            note: None,
        }
    }

    fn average_of(network: &str) -> Self {
        Self {
            average: true,
            ..Self::of(network)
        }
    }

    fn noted(mut self, note: String) -> Self {
        self.note = Some(note);
        self
    }
}

/// Shapes of the placed tensors under genzoo's names.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// What the shapes say of a model's `[model_config]`.
#[derive(Debug, Default)]
pub struct Inference {
    /// Keys the shapes determine: value and the tensor that tells it.
    pub values: BTreeMap<String, (toml::Value, String)>,
    /// Keys set by the reference's convention rather than a shape (pytorch_GAN_zoo's gains); a
    /// run file may say otherwise.
    pub assumed: BTreeMap<String, (toml::Value, String)>,
    /// Keys that shape the networks but that the files do not determine, and why.
    pub open: BTreeMap<String, String>,
}

impl Inference {
    /// Records `key = value` as `name [shape]` tells it; two tensors that disagree are an error.
    fn set(
        &mut self,
        key: &str,
        value: impl Into<toml::Value>,
        shapes: &Shapes,
        name: &str,
    ) -> Result<()> {
        let value = value.into();
        let evidence = evidence(shapes, name);
        if !plausible(&value) {
            bail!(
                "{evidence} gives {key} = {value}: beyond {MAX_VALUE}, larger than any network \
                 genzoo builds (a damaged file?)"
            );
        }
        if let Some((old, was)) = self.values.get(key) {
            if *old != value {
                bail!("the weights disagree on {key}: {was} says {old}, {evidence} says {value}");
            }
            return Ok(());
        }
        self.values.insert(key.to_string(), (value, evidence));
        Ok(())
    }

    fn assume(&mut self, key: &str, value: impl Into<toml::Value>, why: &str) {
        self.assumed
            .insert(key.to_string(), (value.into(), why.to_string()));
    }

    fn open(&mut self, key: &str, why: &str) {
        if !self.values.contains_key(key) {
            self.open.insert(key.to_string(), why.to_string());
        }
    }
}

/// The largest value the weights may give a `[model_config]` key (widths, counts): far beyond
/// any reference network, and small enough that the model built from it cannot overflow its
/// sizes.
const MAX_VALUE: i64 = 1 << 16;

/// The largest image side read from the weights (a count of doublings).
const MAX_SIDE: usize = 1 << 12;

fn plausible(value: &toml::Value) -> bool {
    match value {
        toml::Value::Integer(i) => (0..=MAX_VALUE).contains(i),
        toml::Value::Array(values) => values.iter().all(plausible),
        _ => true,
    }
}

/// `side` doubled `times` times: an image side, where it is one genzoo could make.
fn doubled(side: usize, times: usize) -> Result<i64> {
    match (times <= 12)
        .then(|| side.checked_mul(1 << times))
        .flatten()
    {
        Some(s) if s <= MAX_SIDE => Ok(s as i64),
        _ => bail!(
            "{side} doubled {times} times is beyond the {MAX_SIDE}-pixel images genzoo reads from \
             weights (a damaged file?)"
        ),
    }
}

/// `name [d0, d1, ...]`, the evidence for a value.
fn evidence(shapes: &Shapes, name: &str) -> String {
    match shapes.get(name) {
        Some(s) => format!("`{name}` {s:?}"),
        None => format!("`{name}`"),
    }
}

/// One model's reference code.
pub trait Reference {
    /// The network a state dict holds, where this reference can tell it.
    fn place(&self, dict: &StateDict) -> Option<Place> {
        by_entry(dict.entry_name())
    }

    /// genzoo's key, inside the network, for one of the reference's keys.
    fn rename(&self, key: &str) -> String {
        key.to_string()
    }

    /// The `[model_config]` values the placed tensors' shapes determine.
    fn infer(&self, _shapes: &Shapes) -> Result<Inference> {
        Ok(Inference::default())
    }

    /// Why `network` may be missing from the files (it is then left as initialised), or `None`
    /// if it must be there. `present` holds the networks that are.
    fn optional(&self, network: &str, _present: &BTreeSet<String>) -> Option<String> {
        let discriminator = network.contains("discriminator") || network.starts_with("netD");
        discriminator.then(|| {
            format!(
                "{network} is not in the files: left as initialised (sampling and evaluation use \
                 the generator only; training from here starts it afresh)"
            )
        })
    }
}

/// Common wrapper entries: `netG` / `G` / `generator`, `netD` / `D` / `discriminator`, and a
/// generator's weight average (`avgG` of pytorch_GAN_zoo, `g_ema`).
fn by_entry(entry: &str) -> Option<Place> {
    match entry {
        "netG" | "G" | "generator" => Some(Place::of("generator")),
        "netD" | "D" | "discriminator" => Some(Place::of("discriminator")),
        "avgG" | "g_ema" | "G_ema" | "netG_ema" | "ema" => Some(Place::average_of("generator")),
        _ => None,
    }
}

/// The reference of `model`.
pub fn of(model: &str) -> Box<dyn Reference> {
    match model {
        "dcgan" => Box::new(Dcgan),
        "cyclegan" => Box::new(CycleGan),
        "stargan" => Box::new(StarGan),
        "progan" => Box::new(ProGan),
        "vae" => Box::new(Vae),
        _ => Box::new(ByNames),
    }
}

/// A model whose reference keys are genzoo's names (or one network prefix short of them).
struct ByNames;

impl Reference for ByNames {}

/// The indices `i` of `{prefix}.{i}.weight` entries of rank `rank`, ascending: the weighted
/// layers of an `nn.Sequential`.
fn layers(shapes: &Shapes, prefix: &str, rank: usize) -> Vec<usize> {
    let mut out: Vec<usize> = shapes
        .iter()
        .filter(|(_, s)| s.len() == rank)
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
            rest.strip_suffix(".weight")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Distinct `i` of `{prefix}.{i}.{inner}` names: the residual blocks of a sequential.
fn blocks(shapes: &Shapes, prefix: &str, inner: &str) -> usize {
    shapes
        .keys()
        .filter_map(|n| {
            let rest = n.strip_prefix(prefix)?.strip_prefix('.')?;
            let (i, tail) = rest.split_once('.')?;
            (tail == inner && i.parse::<usize>().is_ok()).then_some(i)
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// The shape of `name` where it has `rank` dimensions (one of another rank infers nothing: the
/// model's check of every tensor then says what is wrong with it).
fn shape<'a>(shapes: &'a Shapes, name: &str, rank: usize) -> Option<&'a [usize]> {
    shapes
        .get(name)
        .map(Vec::as_slice)
        .filter(|s| s.len() == rank)
}

/// pytorch/examples `dcgan/main.py`: `netG_epoch_N.pth`, `netD_epoch_N.pth`, each
/// `torch.save(net.state_dict())` of a module whose layers are `self.main`.
struct Dcgan;

impl Reference for Dcgan {
    fn place(&self, dict: &StateDict) -> Option<Place> {
        by_entry(dict.entry_name()).or_else(|| {
            // G has a BatchNorm right after its first layer, D a LeakyReLU.
            match (dict.has("main.0.weight"), dict.has("main.1.weight")) {
                (true, true) => Some(Place::of("generator")),
                (true, false) => Some(Place::of("discriminator")),
                _ => None,
            }
        })
    }

    fn infer(&self, shapes: &Shapes) -> Result<Inference> {
        let mut inf = Inference::default();
        let g = layers(shapes, "generator.main", 4);
        if let (Some(&first), Some(&last)) = (g.first(), g.last()) {
            let (first, last) = (
                format!("generator.main.{first}.weight"),
                format!("generator.main.{last}.weight"),
            );
            inf.set("nz", shapes[&first][0] as i64, shapes, &first)?;
            inf.set("ngf", shapes[&last][0] as i64, shapes, &last)?;
            inf.set("channels", shapes[&last][1] as i64, shapes, &last)?;
            // One 4 x 4 start, then a doubling per transposed convolution.
            inf.set("image_size", doubled(4, g.len() - 1)?, shapes, &last)?;
        }
        let d = layers(shapes, "discriminator.main", 4);
        if let Some(&first) = d.first() {
            let first = format!("discriminator.main.{first}.weight");
            inf.set("ndf", shapes[&first][0] as i64, shapes, &first)?;
            inf.set("channels", shapes[&first][1] as i64, shapes, &first)?;
            // Halvings to 4 x 4, then the 4 x 4 valid convolution.
            inf.set("image_size", doubled(4, d.len() - 1)?, shapes, &first)?;
        }
        inf.open("ndf", "the discriminator is not in the files");
        Ok(inf)
    }
}

/// junyanz/pytorch-CycleGAN-and-pix2pix: `<epoch>_net_G_A.pth`, `_G_B`, `_D_A`, `_D_B` (its
/// `save_networks`), or a pretrained `latest_net_G.pth` of one direction.
struct CycleGan;

impl CycleGan {
    /// `A` or `B` where a name ends in `G_A`, `netD_B`, ...
    fn direction(name: &str) -> Option<char> {
        ["G_A", "G_B", "D_A", "D_B"]
            .iter()
            .find(|s| name.ends_with(*s))
            .and_then(|s| s.chars().last())
    }
}

impl Reference for CycleGan {
    fn place(&self, dict: &StateDict) -> Option<Place> {
        // The ResnetGenerator starts with a reflection pad, its first weight is model.1's; the
        // PatchGAN's is model.0's.
        let role = match (dict.shape("model.1.weight"), dict.has("model.0.weight")) {
            (Some(s), false) if s.len() == 4 && s[2] == 7 => 'G',
            (_, true) => 'D',
            _ => return None,
        };
        let told =
            Self::direction(dict.entry_name()).or_else(|| Self::direction(&dict.file_stem()));
        let place = Place::of(&format!("net{role}_{}", told.unwrap_or('A')));
        Some(match told {
            Some(_) => place,
            None => place.noted(format!(
                "{} taken as net{role}_A (A -> B); name it `net{role}_B=FILE` for the other direction",
                dict.origin()
            )),
        })
    }

    fn infer(&self, shapes: &Shapes) -> Result<Inference> {
        let mut inf = Inference::default();
        for g in ["netG_A", "netG_B"] {
            let first = format!("{g}.model.1.weight");
            let Some(s) = shape(shapes, &first, 4) else {
                continue;
            };
            inf.set("ngf", s[0] as i64, shapes, &first)?;
            inf.set("channels", s[1] as i64, shapes, &first)?;
            let last = layers(shapes, &format!("{g}.model"), 4);
            let last = format!("{g}.model.{}.weight", last.last().copied().unwrap_or(1));
            if shapes[&last][0] != s[1] {
                bail!(
                    "{} maps {} channels to {}: genzoo's CycleGAN translates between domains of \
                     the same channels",
                    g,
                    s[1],
                    shapes[&last][0]
                );
            }
            let n = blocks(shapes, &format!("{g}.model"), "conv_block.1.weight");
            inf.set("n_blocks", n as i64, shapes, &first)?;
        }
        for d in ["netD_A", "netD_B"] {
            let convs = layers(shapes, &format!("{d}.model"), 4);
            let Some(&first) = convs.first() else {
                continue;
            };
            let first = format!("{d}.model.{first}.weight");
            inf.set("ndf", shapes[&first][0] as i64, shapes, &first)?;
            inf.set("channels", shapes[&first][1] as i64, shapes, &first)?;
            // The first convolution, n_layers_d - 1 normed ones, one at stride 1, the output.
            inf.set(
                "n_layers_d",
                convs.len().saturating_sub(2) as i64,
                shapes,
                &first,
            )?;
        }
        inf.open("image_size", "the networks are fully convolutional");
        for key in ["ndf", "n_layers_d"] {
            inf.open(key, "no discriminator is in the files");
        }
        Ok(inf)
    }

    fn optional(&self, network: &str, present: &BTreeSet<String>) -> Option<String> {
        let other = match network {
            "netG_A" => "netG_B",
            "netG_B" => "netG_A",
            _ => return ByNames.optional(network, present),
        };
        let direction = if network == "netG_A" { "a2b" } else { "b2a" };
        present.contains(other).then(|| {
            format!(
                "{network} is not in the files: left as initialised, so {direction} translations \
                 are untrained"
            )
        })
    }
}

/// yunjey/stargan: `torch.save(self.G.state_dict(), '{}-G.ckpt')` and `-D.ckpt`.
struct StarGan;

impl Reference for StarGan {
    fn place(&self, dict: &StateDict) -> Option<Place> {
        by_entry(dict.entry_name()).or_else(|| {
            if dict.has("conv1.weight") && dict.has("conv2.weight") {
                Some(Place::of("discriminator"))
            } else if dict
                .shape("main.0.weight")
                .is_some_and(|s| s.len() == 4 && s[2] == 7)
            {
                Some(Place::of("generator"))
            } else {
                None
            }
        })
    }

    fn infer(&self, shapes: &Shapes) -> Result<Inference> {
        let mut inf = Inference::default();
        let first = "generator.main.0.weight";
        if let Some(s) = shape(shapes, first, 4) {
            // The last 7 x 7 convolution maps back to the image's channels; the first reads them
            // with the domain's c_dim channels tiled beside.
            let convs = layers(shapes, "generator.main", 4);
            let last = format!(
                "generator.main.{}.weight",
                convs.last().copied().unwrap_or(0)
            );
            let channels = shapes[&last][0];
            if s[1] <= channels {
                bail!(
                    "{} reads {} channels and {} writes {channels}: no room for domain labels",
                    evidence(shapes, first),
                    s[1],
                    evidence(shapes, &last)
                );
            }
            inf.set("channels", channels as i64, shapes, &last)?;
            inf.set("c_dim", (s[1] - channels) as i64, shapes, first)?;
            inf.set("g_conv_dim", s[0] as i64, shapes, first)?;
            let repeat = blocks(shapes, "generator.main", "main.0.weight");
            inf.set("g_repeat_num", repeat as i64, shapes, first)?;
            // Stride-2 4 x 4 layers, as many down as up.
            let fours = convs
                .iter()
                .filter(|i| shapes[&format!("generator.main.{i}.weight")][2] == 4)
                .count();
            inf.set("g_down_num", (fours / 2) as i64, shapes, first)?;
        }
        let convs = layers(shapes, "discriminator.main", 4);
        if let (Some(&first), Some(cls)) = (
            convs.first(),
            shape(shapes, "discriminator.conv2.weight", 4),
        ) {
            let first = format!("discriminator.main.{first}.weight");
            inf.set("d_conv_dim", shapes[&first][0] as i64, shapes, &first)?;
            inf.set("channels", shapes[&first][1] as i64, shapes, &first)?;
            inf.set("d_repeat_num", convs.len() as i64, shapes, &first)?;
            let conv2 = "discriminator.conv2.weight";
            inf.set("c_dim", cls[0] as i64, shapes, conv2)?;
            // conv2's kernel covers what is left of the image after d_repeat_num halvings.
            inf.set("image_size", doubled(cls[2], convs.len())?, shapes, conv2)?;
        }
        for key in ["image_size", "d_conv_dim", "d_repeat_num"] {
            inf.open(key, "the discriminator is not in the files");
        }
        inf.open("attributes", "a run file's [model_config] names them");
        Ok(inf)
    }
}

/// facebookresearch/pytorch_GAN_zoo's PGAN: `{config, netG, netD, avgG}` per saved scale.
struct ProGan;

impl Reference for ProGan {
    fn place(&self, dict: &StateDict) -> Option<Place> {
        by_entry(dict.entry_name()).or_else(|| {
            let has = |layer: &str| dict.tensors.iter().any(|(k, _)| k.starts_with(layer));
            if has("formatLayer.") {
                Some(Place::of("generator"))
            } else if has("decisionLayer.") {
                Some(Place::of("discriminator"))
            } else {
                None
            }
        })
    }

    /// The zoo's equalized layers wrap an `nn.Conv2d` / `nn.Linear` as `.module`, which its
    /// `state_dict` override leaves out of the names; checkpoints saved without it keep it.
    fn rename(&self, key: &str) -> String {
        key.replace(".module.", ".")
    }

    fn infer(&self, shapes: &Shapes) -> Result<Inference> {
        let mut inf = Inference::default();
        for (net, layer, axis) in [
            ("generator", "toRGBLayers", 1),
            ("discriminator", "fromRGBLayers", 0),
        ] {
            let rgb = layers(shapes, &format!("{net}.{layer}"), 4);
            let Some(&last) = rgb.last() else { continue };
            let name = |l: usize| format!("{net}.{layer}.{l}.weight");
            let depths: Vec<i64> = rgb.iter().map(|l| shapes[&name(*l)][axis] as i64).collect();
            if rgb != (0..rgb.len()).collect::<Vec<_>>() {
                bail!("{net}.{layer} are numbered {rgb:?}: a scale is missing");
            }
            inf.set("depths", depths, shapes, &name(last))?;
            inf.set(
                "channels",
                shapes[&name(last)][1 - axis] as i64,
                shapes,
                &name(last),
            )?;
            inf.set("resolution", doubled(4, last)?, shapes, &name(last))?;
        }
        let format = "generator.formatLayer.weight";
        if let Some(s) = shape(shapes, format, 2) {
            inf.set("latent_dim", s[1] as i64, shapes, format)?;
        }
        let scale0 = "discriminator.groupScaleZero.0.weight";
        match shape(shapes, scale0, 4) {
            Some(s) if s[1] == s[0] => inf.set("minibatch_group", 0, shapes, scale0)?,
            Some(_) => {
                inf.open("minibatch_group", "the group size is not in the weights");
            }
            None => {}
        }
        inf.assume(
            "official_gains",
            false,
            "pytorch_GAN_zoo's equalized-learning-rate gains, sqrt(2) everywhere",
        );
        Ok(inf)
    }
}

/// pytorch/examples `vae/main.py`: fc1, fc21, fc22, fc3, fc4, genzoo's names as they are.
struct Vae;

impl Reference for Vae {
    fn infer(&self, shapes: &Shapes) -> Result<Inference> {
        let mut inf = Inference::default();
        if let Some(s) = shape(shapes, "fc1.weight", 2) {
            inf.set("hidden_dim", s[0] as i64, shapes, "fc1.weight")?;
            // A flat image of c s^2 values: grey if it is a square, else colour if a third is.
            let pixels = s[1];
            let side = |n: usize| Some(n.isqrt()).filter(|k| k * k == n && n > 0);
            let (channels, size) = match (side(pixels), side(pixels / 3)) {
                (Some(size), _) => (1, size),
                (None, Some(size)) if pixels % 3 == 0 => (3, size),
                _ => bail!(
                    "{} reads {pixels} values: not an image of 1 or 3 square channels",
                    evidence(shapes, "fc1.weight")
                ),
            };
            let why = format!("{pixels} inputs of {}", evidence(shapes, "fc1.weight"));
            inf.assume("image_channels", channels as i64, &why);
            inf.assume("image_size", size as i64, &why);
        }
        if let Some(s) = shape(shapes, "fc21.weight", 2) {
            inf.set("latent_dim", s[0] as i64, shapes, "fc21.weight")?;
        }
        Ok(inf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(entries: &[(&str, &[usize])]) -> Shapes {
        entries
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn dcgan_sizes_come_from_the_layers_and_must_agree() -> Result<()> {
        let mut both = shapes(&[
            ("generator.main.0.weight", &[100, 256, 4, 4]),
            ("generator.main.1.weight", &[256]),
            ("generator.main.3.weight", &[256, 128, 4, 4]),
            ("generator.main.6.weight", &[128, 64, 4, 4]),
            ("generator.main.9.weight", &[64, 3, 4, 4]),
        ]);
        let inf = Dcgan.infer(&both)?;
        let v = |k: &str| inf.values[k].0.as_integer().unwrap();
        assert_eq!(
            (v("nz"), v("ngf"), v("channels"), v("image_size")),
            (100, 64, 3, 32)
        );
        assert!(inf.open.contains_key("ndf"));
        // A 64 x 64 discriminator beside a 32 x 32 generator.
        both.extend(shapes(&[
            ("discriminator.main.0.weight", &[64, 3, 4, 4]),
            ("discriminator.main.2.weight", &[128, 64, 4, 4]),
            ("discriminator.main.5.weight", &[256, 128, 4, 4]),
            ("discriminator.main.8.weight", &[512, 256, 4, 4]),
            ("discriminator.main.11.weight", &[1, 512, 4, 4]),
        ]));
        let e = Dcgan.infer(&both).unwrap_err().to_string();
        assert!(
            e.contains("disagree on image_size") && e.contains("says 32") && e.contains("says 64"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn stargan_and_progan_read_their_widths() -> Result<()> {
        let inf = StarGan.infer(&shapes(&[
            ("generator.main.0.weight", &[64, 8, 7, 7]),
            ("generator.main.3.weight", &[128, 64, 4, 4]),
            ("generator.main.6.weight", &[256, 128, 4, 4]),
            ("generator.main.9.main.0.weight", &[256, 256, 3, 3]),
            ("generator.main.10.main.0.weight", &[256, 256, 3, 3]),
            ("generator.main.11.weight", &[256, 128, 4, 4]),
            ("generator.main.14.weight", &[128, 64, 4, 4]),
            ("generator.main.17.weight", &[3, 64, 7, 7]),
        ]))?;
        let v = |k: &str| inf.values[k].0.as_integer().unwrap();
        assert_eq!(
            (
                v("c_dim"),
                v("g_conv_dim"),
                v("g_repeat_num"),
                v("g_down_num")
            ),
            (5, 64, 2, 2)
        );
        assert!(inf.open.contains_key("image_size"));
        let inf = ProGan.infer(&shapes(&[
            ("generator.formatLayer.weight", &[128, 16]),
            ("generator.toRGBLayers.0.weight", &[3, 8, 1, 1]),
            ("generator.toRGBLayers.1.weight", &[3, 4, 1, 1]),
            ("discriminator.groupScaleZero.0.weight", &[8, 9, 3, 3]),
        ]))?;
        assert_eq!(inf.values["depths"].0, toml::Value::from(vec![8i64, 4]));
        assert_eq!(inf.values["resolution"].0.as_integer(), Some(8));
        assert!(inf.open.contains_key("minibatch_group"));
        assert_eq!(
            ProGan.rename("formatLayer.module.weight"),
            "formatLayer.weight"
        );
        Ok(())
    }
}
