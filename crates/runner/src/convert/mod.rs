//! PyTorch weights into a self-describing genzoo file (`genzoo convert`), without Python.
//!
//! 1. [`torch`] reads each file (torch.save's zip or legacy format, or safetensors), a whole
//!    pickled module or a TorchScript module as its state dict;
//! 2. [`state_dict`] finds the state dicts in it (a wrapper's `state_dict`, `netG`, `avgG`, ...)
//!    and removes DataParallel's `module.`;
//! 3. [`reference`] tells which of genzoo's networks each holds and renames its keys; a model
//!    without reference knowledge is placed by its names ([`place_by_names`]);
//! 4. the shapes fill in the `[model_config]` where they determine it, merged with a run file;
//! 5. the model is built from that config, every tensor checked against it (a network missing
//!    from the files is left as initialised where sampling does not need it: a discriminator);
//! 6. the file is written beside its destination, loaded back as `sample` and `eval` load it,
//!    and only then renamed into place.

mod pickle;
mod reference;
mod state_dict;
mod torch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;
use layers::Checkpoint;

use crate::config::RunConfig;
use crate::registry::{self, BuildInput};
use crate::run::checkpoint::{self as ck, build_model, load_for_sampling};
use reference::{Inference, Place, Reference, Shapes};
use state_dict::{file_name, StateDict};

/// Metadata key: the files a genzoo file was converted from.
pub const META_CONVERTED_FROM: &str = "genzoo.converted_from";
/// Metadata key: the networks that were not in them and are left as initialised.
pub const META_INITIALISED: &str = "genzoo.converted_initialised";

/// Buffers of norm layers, which a reference may keep where genzoo does not (old junyanz
/// checkpoints' InstanceNorm running statistics) and which never decide where a dict goes.
const BUFFERS: [&str; 3] = ["num_batches_tracked", "running_mean", "running_var"];

fn is_buffer(key: &str) -> bool {
    BUFFERS.iter().any(|b| key.rsplit('.').next() == Some(b))
}

/// One file to convert, and the network the user placed it under (`NET=FILE`).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub path: PathBuf,
    pub network: Option<String>,
}

impl Input {
    /// `FILE` or `NET=FILE` (a file whose own name holds `=` stays a file).
    pub fn parse(arg: &str) -> Self {
        match arg.split_once('=') {
            Some((net, path)) if !Path::new(arg).exists() && !net.is_empty() => Self {
                path: PathBuf::from(path),
                network: Some(net.to_string()),
            },
            _ => Self {
                path: PathBuf::from(arg),
                network: None,
            },
        }
    }
}

pub struct Request {
    pub inputs: Vec<Input>,
    pub model: String,
    /// A run file whose `[model_config]` (and `[train]`, `[data]`) the result carries.
    pub config: Option<PathBuf>,
    /// Only the state dicts under this entry of each file (`avgG`).
    pub key: Option<String>,
    pub out: PathBuf,
}

/// What a conversion did, for the command to print.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per state dict: where it came from, where it went.
    pub placed: Vec<String>,
    /// One line per `[model_config]` key the conversion speaks for.
    pub config: Vec<String>,
    /// Networks left as initialised, dropped buffers, keys that went nowhere.
    pub notes: Vec<String>,
    pub tensors: usize,
    pub parameters: usize,
}

/// Converts `req.inputs` for `req.model` into `req.out`.
pub fn convert(req: &Request) -> Result<Report> {
    registry::builder(&req.model)?;
    refuse_overwriting_an_input(req)?;
    let mut run = match &req.config {
        Some(path) => RunConfig::from_file(path, Some(&req.model))?,
        None => RunConfig::new(&req.model),
    };
    let reference = reference::of(&req.model);
    let mut report = Report::default();
    let dicts = read_inputs(req, &mut report)?;
    let mut names = Names {
        run: &run,
        shapes: None,
    };
    let weights = Weights::place(dicts, reference.as_ref(), &mut names, &mut report)?;
    let inference = reference
        .infer(&weights.shapes())
        .context("reading the model's config from the weights")?;
    let given = run.model_config.clone();
    merge(&mut run, &inference, req.config.as_deref())?;
    weights.check_model_size(&run)?;
    let (_, varmap, run) = build_model(&run, &Device::Cpu).with_context(|| {
        format!(
            "the weights read as model `{}` with [model_config] {}",
            req.model,
            inline(&run.model_config)
        )
    })?;
    describe_config(&inference, &given, &run, req.config.as_deref(), &mut report);
    let (tensors, fresh) =
        weights.assemble(&req.model, &varmap, reference.as_ref(), &mut report)?;
    report.tensors = tensors.len();
    report.parameters = parameters(&tensors);
    let sources: Vec<String> = req.inputs.iter().map(|i| file_name(&i.path)).collect();
    write_checked(&req.out, &run, tensors, &sources, &fresh)?;
    Ok(report)
}

/// Writing over one of the inputs would lose the original checkpoint.
fn refuse_overwriting_an_input(req: &Request) -> Result<()> {
    let Ok(out) = req.out.canonicalize() else {
        return Ok(()); // no such file yet
    };
    if req
        .inputs
        .iter()
        .any(|i| i.path.canonicalize().ok().as_ref() == Some(&out))
    {
        bail!(
            "--out {} is one of the files to convert; write elsewhere",
            req.out.display()
        );
    }
    Ok(())
}

/// `ema.`: where genzoo keeps a network's weight average.
fn average_prefix() -> String {
    format!("{}.", ck::AVERAGE_PREFIX)
}

/// Scalars in the networks (weight averages not counted).
fn parameters(tensors: &HashMap<String, Tensor>) -> usize {
    tensors
        .iter()
        .filter(|(k, _)| !k.starts_with(&average_prefix()))
        .map(|(_, t)| t.elem_count())
        .sum()
}

/// Every state dict of every input, with a note of the training state passed over.
fn read_inputs(req: &Request, report: &mut Report) -> Result<Vec<StateDict>> {
    let mut all = Vec::new();
    for input in &req.inputs {
        let (value, format) = torch::read(&input.path)?;
        let (dicts, skipped) = state_dict::find(
            &input.path,
            value,
            input.network.as_deref(),
            req.key.as_deref(),
        )?;
        if input.network.is_some() && dicts.len() > 1 {
            bail!(
                "{} holds {} state dicts ({}): pick one with --key before naming its network",
                input.path.display(),
                dicts.len(),
                dicts
                    .iter()
                    .map(|d| d.entry.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !skipped.is_empty() {
            report.notes.push(format!(
                "{}: passed over {} (training state)",
                file_name(&input.path),
                skipped.join(", ")
            ));
        }
        tracing::debug!(
            "{}: {format}, {} state dict(s)",
            input.path.display(),
            dicts.len()
        );
        all.extend(dicts);
    }
    Ok(all)
}

/// genzoo's names and shapes for the model as configured before inference, built only when a
/// state dict needs them (to be placed by names, or to check a network named on the command
/// line). A run file that leaves keys to the weights may not build on its own (a PatchGAN too
/// deep for its image size until `n_layers_d` is read): then the defaults' names serve.
struct Names<'a> {
    run: &'a RunConfig,
    shapes: Option<Shapes>,
}

impl Names<'_> {
    fn get(&mut self) -> Result<&Shapes> {
        if self.shapes.is_none() {
            let shapes = model_shapes(self.run)
                .or_else(|_| model_shapes(&RunConfig::new(&self.run.model)))?;
            self.shapes = Some(shapes);
        }
        Ok(self.shapes.as_ref().expect("built above"))
    }

    /// The model's networks, listed for messages.
    fn listed(&mut self) -> Result<String> {
        Ok(networks(self.get()?)
            .into_iter()
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// A `VarBuilder` backend that records each variable's shape and hands out a broadcast zero in
/// its place: a model's names and sizes without allocating its weights.
struct ShapesOnly(Arc<Mutex<Shapes>>);

impl SimpleBackend for ShapesOnly {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut shapes = self.0.lock().expect("shapes lock poisoned");
        shapes.insert(name.to_string(), shape.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter `{name}` must be created with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let shapes = self.0.lock().expect("shapes lock poisoned");
        shapes.contains_key(name)
    }
}

/// The variables of `run`'s model and their shapes, the model built without its weights.
fn model_shapes(run: &RunConfig) -> Result<Shapes> {
    let build = registry::builder(&run.model)?;
    let shapes = Arc::new(Mutex::new(Shapes::new()));
    let backend = Box::new(ShapesOnly(shapes.clone()));
    let vb = candle_nn::VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    let input = BuildInput {
        model_config: &run.model_config,
        adversarial: run.gan.adversarial(),
    };
    build(&input, vb)?;
    let shapes = shapes.lock().expect("shapes lock poisoned");
    Ok(shapes.clone())
}

fn var_shapes(varmap: &candle_nn::VarMap) -> Shapes {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

/// The networks of a model: the first parts of its names.
fn networks(names: &Shapes) -> BTreeSet<String> {
    names
        .keys()
        .filter_map(|n| n.split_once('.').map(|(net, _)| net.to_string()))
        .collect()
}

/// The network of one of genzoo's names: its first part.
fn network(name: &str) -> &str {
    name.split('.').next().unwrap_or("")
}

/// Where a state dict goes when only names can say: its keys are genzoo's names as they are,
/// or under exactly one network (shapes break a tie), possibly once a first part that every
/// key shares is removed (a LightningModule's `model.`). Returns the place and that first part.
fn place_by_names(
    dict: &StateDict,
    reference: &dyn Reference,
    names: &Shapes,
) -> Result<Option<(Place, Option<String>)>> {
    let keys: Vec<(String, &[usize])> = dict
        .tensors
        .iter()
        .filter(|(k, _)| !is_buffer(k) && !k.starts_with(&average_prefix()))
        .map(|(k, t)| (reference.rename(k), t.dims()))
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let first = keys[0].0.split_once('.').map(|(f, _)| f.to_string());
    let shared = first.filter(|f| keys.iter().all(|(k, _)| k.starts_with(&format!("{f}."))));
    for strip in [None, shared] {
        let keys: Vec<(&str, &[usize])> = match &strip {
            None => keys.iter().map(|(k, s)| (k.as_str(), *s)).collect(),
            Some(f) => keys.iter().map(|(k, s)| (&k[f.len() + 1..], *s)).collect(),
        };
        let fits = |net: &str, shapes: bool| {
            keys.iter().all(|(k, s)| {
                let name = match net {
                    "" => k.to_string(),
                    net => format!("{net}.{k}"),
                };
                names.get(&name).is_some_and(|want| !shapes || want == s)
            })
        };
        if fits("", false) {
            return Ok(Some((Place::of(""), strip)));
        }
        let mut fit: Vec<String> = networks(names)
            .into_iter()
            .filter(|n| fits(n, false))
            .collect();
        if fit.len() > 1 {
            fit.retain(|n| fits(n, true));
        }
        match fit.as_slice() {
            [one] => return Ok(Some((Place::of(one), strip))),
            [] => {}
            many => bail!(
                "{}: its keys fit genzoo's {} alike; say which with NET=FILE (e.g. {}={})",
                dict.origin(),
                many.join(" and "),
                many[0],
                dict.file.display()
            ),
        }
    }
    Ok(None)
}

/// A tensor on its way into the file, with where it came from.
struct Entry {
    tensor: Tensor,
    /// `FILE` or `FILE[entry]`.
    origin: String,
    /// Its key in that file.
    key: String,
}

/// The placed tensors under genzoo's names: the networks' and their weight averages'.
#[derive(Default)]
struct Weights {
    plain: BTreeMap<String, Entry>,
    average: BTreeMap<String, Entry>,
    /// Per network, the dict that filled it and what its keys had in front of genzoo's.
    sources: BTreeMap<String, (String, String)>,
}

impl Weights {
    /// Places every dict, each under the network its user, its reference or its names say.
    fn place(
        dicts: Vec<StateDict>,
        reference: &dyn Reference,
        names: &mut Names,
        report: &mut Report,
    ) -> Result<Self> {
        let mut placed: Vec<(StateDict, Place, Option<String>)> = Vec::new();
        for dict in dicts {
            let (place, strip) = Self::place_one(&dict, reference, names)?;
            let same = placed.iter().find(|(_, p, _)| {
                !p.network.is_empty() && p.network == place.network && p.average == place.average
            });
            if let Some((other, _, _)) = same {
                bail!(
                    "{} and {} both hold {}: give one file per network, naming them with \
                     NET=FILE where their names do not say",
                    other.origin(),
                    dict.origin(),
                    place.network
                );
            }
            placed.push((dict, place, strip));
        }
        // A weight average with no trained weights beside it is the network's weights.
        let trained: BTreeSet<String> = placed
            .iter()
            .filter(|(_, p, _)| !p.average)
            .map(|(_, p, _)| p.network.clone())
            .collect();
        let mut weights = Self::default();
        for (dict, mut place, strip) in placed {
            if place.average && !trained.contains(&place.network) {
                place.average = false;
                report.notes.push(format!(
                    "{}: a weight average with no trained weights beside it: used as {}",
                    dict.origin(),
                    place.network
                ));
            }
            weights.add(dict, &place, strip.as_deref(), reference, report)?;
        }
        Ok(weights)
    }

    /// The place of one dict: the network named on the command line, else the reference's
    /// reading of it, else its names'.
    fn place_one(
        dict: &StateDict,
        reference: &dyn Reference,
        names: &mut Names,
    ) -> Result<(Place, Option<String>)> {
        if let Some(net) = &dict.named {
            if !networks(names.get()?).contains(net) {
                bail!(
                    "`{net}` is not a network of this model; its networks are {}",
                    names.listed()?
                );
            }
            return Ok((Place::of(net), None));
        }
        if let Some(place) = reference.place(dict) {
            return Ok((place, None));
        }
        match place_by_names(dict, reference, names.get()?)? {
            Some(found) => Ok(found),
            None => bail!(
                "{}: cannot tell which network of the model its keys ({}) are; name it with \
                 NET=FILE (networks: {})",
                dict.origin(),
                sample_keys(dict),
                names.listed()?
            ),
        }
    }

    fn add(
        &mut self,
        dict: StateDict,
        place: &Place,
        strip: Option<&str>,
        reference: &dyn Reference,
        report: &mut Report,
    ) -> Result<()> {
        let origin = dict.origin();
        report.placed.push(format!(
            "{origin} -> {}",
            describe_place(&dict, place, strip)
        ));
        report.notes.extend(place.note.clone());
        let module = if dict.stripped > 0 { "module." } else { "" };
        let back = format!(
            "{module}{}",
            strip.map(|s| format!("{s}.")).unwrap_or_default()
        );
        if !place.average {
            self.sources
                .insert(place.network.clone(), (origin.clone(), back));
        }
        for (key, tensor) in dict.tensors {
            let renamed = reference.rename(&key);
            let inner = match strip {
                Some(s) => renamed
                    .strip_prefix(&format!("{s}."))
                    .unwrap_or(&renamed)
                    .to_string(),
                None => renamed,
            };
            // genzoo's own whole names may carry a weight average (`ema.generator...`).
            let (average, name) = match (
                place.network.as_str(),
                inner.strip_prefix(&average_prefix()),
            ) {
                ("", Some(averaged)) => (true, averaged.to_string()),
                ("", None) => (place.average, inner),
                (net, _) => (place.average, format!("{net}.{inner}")),
            };
            let into = if average {
                &mut self.average
            } else {
                &mut self.plain
            };
            if let Some(other) = into.get(&name) {
                bail!(
                    "{} and {} both hold genzoo's `{name}`: give one file per network",
                    other.origin,
                    origin
                );
            }
            let key = format!("{module}{key}");
            into.insert(
                name,
                Entry {
                    tensor,
                    origin: origin.clone(),
                    key,
                },
            );
        }
        Ok(())
    }

    /// Refuses a model larger than the weights justify before it is built: its config comes
    /// from the files' shapes, and a damaged or hostile file could otherwise ask for terabytes.
    /// Networks left as initialised may add up to [`ck::ABSENT_NETWORK_VALUES`].
    fn check_model_size(&self, run: &RunConfig) -> Result<()> {
        let model: usize = model_shapes(run)?
            .values()
            .map(|s| torch::elements(s).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add);
        let held: usize = self
            .plain
            .values()
            .chain(self.average.values())
            .map(|e| e.tensor.elem_count())
            .sum();
        if model > held.saturating_add(ck::ABSENT_NETWORK_VALUES) {
            bail!(
                "model `{}` with [model_config] {} would have {model} parameters, far more than \
                 the {held} values in the files: not weights of this model (a damaged file?)",
                run.model,
                inline(&run.model_config)
            );
        }
        Ok(())
    }

    fn shapes(&self) -> Shapes {
        self.plain
            .iter()
            .map(|(k, e)| (k.clone(), e.tensor.dims().to_vec()))
            .collect()
    }

    /// The file's tensors: every variable of the model from the weights (checked), or as
    /// initialised where its network is missing and may be; and the weight averages. Returns
    /// them with the networks left as initialised.
    fn assemble(
        self,
        model: &str,
        varmap: &candle_nn::VarMap,
        reference: &dyn Reference,
        report: &mut Report,
    ) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
        let vars = var_shapes(varmap);
        let present: BTreeSet<String> = self
            .plain
            .keys()
            .filter(|k| vars.contains_key(*k))
            .map(|k| network(k).to_string())
            .collect();
        if present.is_empty() {
            let like = |names: &mut dyn Iterator<Item = &String>| {
                let shown: Vec<String> = names.take(3).map(|k| format!("`{k}`")).collect();
                shown.join(", ")
            };
            bail!(
                "nothing in the files fits model `{model}`: its names are like {}, the files' \
                 like {}",
                like(&mut vars.keys()),
                like(&mut self.plain.keys())
            );
        }
        let initial = layers::train::checkpoint::varmap_tensors(varmap);
        let mut out = Assembly::default();
        for (name, want) in &vars {
            let net = network(name);
            match self.plain.get(name) {
                Some(e) => out.take(name.clone(), fit(e, name, want)),
                None if present.contains(net) => out.problems.push(self.missing(name, want)),
                None => match reference.optional(net, &present) {
                    Some(why) => {
                        if out.fresh.insert(net.to_string()) {
                            report.notes.push(why);
                        }
                        out.tensors.insert(name.clone(), initial[name].clone());
                    }
                    None => *out.absent.entry(net.to_string()).or_default() += 1,
                },
            }
        }
        self.take_averages(&vars, &mut out);
        out.check(model)?;
        self.note_unused(&vars, report);
        Ok((out.tensors, out.fresh.into_iter().collect()))
    }

    /// The weight average of every network that has one, under `ema.`.
    fn take_averages(&self, vars: &Shapes, out: &mut Assembly) {
        let averaged: BTreeSet<&str> = self.average.keys().map(|k| network(k)).collect();
        for (name, want) in vars.iter().filter(|(n, _)| averaged.contains(network(n))) {
            match self.average.get(name) {
                Some(e) => out.take(format!("{}{name}", average_prefix()), fit(e, name, want)),
                None => out.problems.push(format!(
                    "the weight average lacks `{name}` (shape {want:?})"
                )),
            }
        }
    }

    /// The problem line of a variable no file holds: the key its network's file lacks.
    fn missing(&self, name: &str, want: &[usize]) -> String {
        let net = network(name);
        let (source, inner) = match self.sources.get(net) {
            Some(s) => (
                Some(s),
                name.strip_prefix(&format!("{net}.")).unwrap_or(name),
            ),
            // A dict of genzoo's whole names.
            None => (self.sources.get(""), name),
        };
        match source {
            Some((origin, back)) => {
                format!("{origin}: missing key `{back}{inner}` (genzoo's `{name}`, shape {want:?})")
            }
            None => format!("no file holds `{name}` (shape {want:?})"),
        }
    }

    /// Notes of what went nowhere: norm buffers genzoo does not keep, and anything else.
    fn note_unused(&self, vars: &Shapes, report: &mut Report) {
        let unused: Vec<&Entry> = self
            .plain
            .iter()
            .chain(&self.average)
            .filter(|(name, _)| !vars.contains_key(*name))
            .map(|(_, e)| e)
            .collect();
        let (buffers, other): (Vec<&Entry>, Vec<&Entry>) =
            unused.into_iter().partition(|e| is_buffer(&e.key));
        if !buffers.is_empty() {
            report.notes.push(format!(
                "dropped {} norm buffer(s) genzoo's model does not keep (old InstanceNorm running \
                 statistics, which junyanz's loader drops too; BatchNorm's batch counters): {}",
                buffers.len(),
                by_origin(&buffers)
            ));
        }
        if !other.is_empty() {
            report.notes.push(format!(
                "could not place {} tensor(s), left out: {}",
                other.len(),
                by_origin(&other)
            ));
        }
    }
}

/// `FILE: key, key; FILE: key`.
fn by_origin(entries: &[&Entry]) -> String {
    let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in entries {
        grouped.entry(&e.origin).or_default().push(&e.key);
    }
    grouped
        .iter()
        .map(|(o, keys)| format!("{o}: {}", keys.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `FILE[entry] -> network` details: what the dict became and what was removed from its keys.
fn describe_place(dict: &StateDict, place: &Place, strip: Option<&str>) -> String {
    let target = if place.average {
        format!("{}.{} (weight average)", ck::AVERAGE_PREFIX, place.network)
    } else if place.network.is_empty() {
        "the model's names as they are".to_string()
    } else {
        place.network.clone()
    };
    let mut how = vec![format!("{} tensors", dict.tensors.len())];
    if dict.stripped > 0 {
        how.push(format!("`module.` removed from {} keys", dict.stripped));
    }
    if let Some(s) = strip {
        how.push(format!("`{s}.` removed from every key"));
    }
    format!("{target} ({})", how.join("; "))
}

/// The output file's tensors as they are gathered, and what stands in the way.
#[derive(Default)]
struct Assembly {
    tensors: HashMap<String, Tensor>,
    /// Networks left as initialised.
    fresh: BTreeSet<String>,
    /// Networks that must be there and are not, with their variable counts.
    absent: BTreeMap<String, usize>,
    problems: Vec<String>,
}

impl Assembly {
    fn take(&mut self, name: String, fitted: std::result::Result<Tensor, String>) {
        match fitted {
            Ok(t) => {
                self.tensors.insert(name, t);
            }
            Err(problem) => self.problems.push(problem),
        }
    }

    /// Every problem in one error: one line for one, a list for more.
    fn check(&self, model: &str) -> Result<()> {
        let mut problems: Vec<String> = self
            .absent
            .iter()
            .map(|(net, n)| {
                format!("no file holds `{net}` ({n} tensors), which model `{model}` needs")
            })
            .collect();
        problems.extend(self.problems.iter().cloned());
        match problems.as_slice() {
            [] => Ok(()),
            [one] => bail!("{one}"),
            many => {
                let shown = many.len().min(12);
                let more = match many.len() - shown {
                    0 => String::new(),
                    n => format!("\n  ... and {n} more"),
                };
                bail!(
                    "{} tensors do not fit model `{model}` as configured:\n  {}{more}",
                    many.len(),
                    many[..shown].join("\n  ")
                )
            }
        }
    }
}

/// A few of a dict's keys, for messages.
fn sample_keys(dict: &StateDict) -> String {
    let mut keys: Vec<String> = dict
        .tensors
        .iter()
        .take(4)
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    if dict.tensors.len() > 4 {
        keys.push("...".into());
    }
    keys.join(", ")
}

/// The entry as the variable `name` of shape `want` takes it (float32), or the problem line.
fn fit(e: &Entry, name: &str, want: &[usize]) -> std::result::Result<Tensor, String> {
    if e.tensor.dims() != want {
        return Err(format!(
            "{}: `{}` (genzoo's `{name}`) has shape {:?}, the model expects {want:?}",
            e.origin,
            e.key,
            e.tensor.dims()
        ));
    }
    if !e.tensor.dtype().is_float() {
        return Err(format!(
            "{}: `{}` (genzoo's `{name}`) holds {:?} values, the model expects floating point",
            e.origin,
            e.key,
            e.tensor.dtype()
        ));
    }
    e.tensor
        .to_dtype(DType::F32)
        .map_err(|err| format!("{}: `{}`: {err}", e.origin, e.key))
}

/// Lays the inferred values into the run's `[model_config]`: a value the run file sets must
/// agree with the shapes; an assumed one gives way to it.
fn merge(run: &mut RunConfig, inf: &Inference, run_file: Option<&Path>) -> Result<()> {
    for (key, (value, evidence)) in &inf.values {
        if let Some(given) = run.model_config.get(key) {
            if given != value {
                bail!(
                    "{} sets [model_config] {key} = {given}, but the weights have {key} = {value} \
                     ({evidence})",
                    run_file.map_or("the run file".into(), |p| p.display().to_string())
                );
            }
        }
        run.model_config.insert(key.clone(), value.clone());
    }
    for (key, (value, _)) in &inf.assumed {
        run.model_config
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    Ok(())
}

/// One line per `[model_config]` key the conversion read, assumed or could not determine.
fn describe_config(
    inf: &Inference,
    given: &toml::Table,
    run: &RunConfig,
    run_file: Option<&Path>,
    report: &mut Report,
) {
    let file = run_file.map(file_name).unwrap_or_default();
    let resolved = |key: &str| {
        run.model_config
            .get(key)
            .map_or("unset".to_string(), |v| v.to_string())
    };
    for (key, (value, evidence)) in &inf.values {
        report
            .config
            .push(format!("{key} = {value} (from {evidence})"));
    }
    for (key, (_, why)) in &inf.assumed {
        let line = match given.get(key) {
            Some(_) => format!("{key} = {} (from {file})", resolved(key)),
            None => format!("{key} = {} (assumed: {why})", resolved(key)),
        };
        report.config.push(line);
    }
    for (key, why) in &inf.open {
        let source = match given.contains_key(key) {
            true => format!("from {file}"),
            false => "the default".into(),
        };
        report.config.push(format!(
            "{key} = {} (not in the weights: {why}; {source})",
            resolved(key)
        ));
    }
}

fn inline(table: &toml::Table) -> String {
    let parts: Vec<String> = table.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", parts.join(", "))
}

/// Writes the file beside `out`, loads it back as `sample` and `eval` will (the model built
/// from its metadata, every tensor checked), and only then moves it to `out`: an error at any
/// point leaves nothing behind.
fn write_checked(
    out: &Path,
    run: &RunConfig,
    tensors: HashMap<String, Tensor>,
    sources: &[String],
    fresh: &[String],
) -> Result<()> {
    let mut file = Checkpoint {
        tensors,
        metadata: BTreeMap::new(),
    };
    file.metadata
        .extend(ck::identity_metadata(run, 0, 0, "converted")?);
    for (k, v) in [
        (META_CONVERTED_FROM, sources.join(", ")),
        (META_INITIALISED, fresh.join(", ")),
    ] {
        file.metadata.insert(k.to_string(), v);
    }
    let name = file_name(out);
    let staged = out.with_file_name(format!(".{name}.{}.convert.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        file.save(&staged)?;
        load_for_sampling(&staged, &Device::Cpu, None, false)
            .context("the written file does not load back")?;
        std::fs::rename(&staged, out)
            .with_context(|| format!("cannot move the result to {}", out.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_may_name_their_network() {
        assert_eq!(
            Input::parse("netG_B=x/latest_net_G.pth"),
            Input {
                path: "x/latest_net_G.pth".into(),
                network: Some("netG_B".into())
            }
        );
        assert_eq!(Input::parse("a.pth").network, None);
        assert_eq!(Input::parse("=a.pth").network, None);
    }

    #[test]
    fn models_built_without_weights_have_the_names_and_shapes_of_built_ones() -> Result<()> {
        for entry in registry::MODELS.iter().filter(|m| m.build.is_some()) {
            let run = RunConfig::new(entry.name);
            let (_, varmap, _) = build_model(&run, &Device::Cpu)?;
            assert_eq!(model_shapes(&run)?, var_shapes(&varmap), "{}", entry.name);
        }
        Ok(())
    }

    #[test]
    fn norm_buffers_are_told_from_weights() {
        assert!(is_buffer("model.2.running_mean") && is_buffer("main.1.num_batches_tracked"));
        assert!(!is_buffer("main.1.weight") && !is_buffer("running_meaning"));
    }
}
