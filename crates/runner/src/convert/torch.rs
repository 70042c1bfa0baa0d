//! Reading PyTorch checkpoints without Python: `torch.save`'s zip archive (PyTorch 1.6 on), its
//! legacy format (before 1.6: how most published GAN weights were saved), and safetensors. A
//! whole pickled module (`torch.save(model)`) or a TorchScript archive (`torch.jit.save`) is
//! read as its state dict, from the attributes the pickle sets on each module object; no class
//! is looked up or run.
//!
//! The pickle is parsed by Candle's `candle_core::pickle::Stack`, which builds a tree of objects
//! and executes nothing; here that tree becomes [`Value`]s, with every tensor read from the
//! storage it names (any offset and strides, shared storages read once). Candle's parser knows
//! pickle protocol 2, `torch.save`'s default; a file saved with `pickle_protocol` 3 to 5 is
//! rewritten into it on the way (`pickle`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use super::pickle;

/// A file's content as far as weights are concerned.
#[derive(Debug)]
pub enum Value {
    /// A dict with text keys (a state dict, a checkpoint's wrapper), in the file's order.
    Dict(Vec<(String, Value)>),
    Tensor(Tensor),
    /// Anything else (numbers, text, lists, objects, dicts keyed by numbers), described.
    Other(String),
}

/// How a file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` since PyTorch 1.6: a zip archive of `data.pkl` and one entry per storage.
    Zip,
    /// `torch.save` before 1.6 (or `_use_new_zipfile_serialization=False`): pickles and raw
    /// storages in one stream.
    Legacy,
    Safetensors,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Zip => "PyTorch zip",
            Format::Legacy => "PyTorch legacy (before 1.6)",
            Format::Safetensors => "safetensors",
        })
    }
}

/// The legacy format's first pickle after its `PROTO`: `LONG1` of the 10-byte magic number
/// 0x1950a86a20f9469cfc6c, then `STOP`. Matched as bytes: Candle's `LONG1` decoder shifts past
/// 64 bits on a 10-byte integer.
const LEGACY_MAGIC: [u8; 13] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The length of the legacy format's first pickle at the front of `bytes`, if it is there:
/// `PROTO` 2 (torch.save's default) or 3, or 4 or 5 with the `FRAME` that announces the magic
/// number's 13 bytes, then [`LEGACY_MAGIC`].
fn legacy_header_len(bytes: &[u8]) -> Option<usize> {
    let (proto, rest) = match bytes {
        [0x80, 2 | 3, rest @ ..] => (2, rest),
        [0x80, 4 | 5, 0x95, 13, 0, 0, 0, 0, 0, 0, 0, rest @ ..] => (11, rest),
        _ => return None,
    };
    rest.starts_with(&LEGACY_MAGIC)
        .then_some(proto + LEGACY_MAGIC.len())
}

/// Reads `path` as whichever of the three formats its first bytes say it is.
pub fn read(path: &Path) -> Result<(Value, Format)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let named_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let format = match sniff(&bytes) {
        Some(format) => format,
        // The header's own complaint says more than "not a checkpoint" (truncated, say).
        None if named_safetensors => match safetensors::SafeTensors::read_metadata(&bytes) {
            Err(e) => bail!(
                "{} is not a valid safetensors file ({e}); it may be truncated",
                path.display()
            ),
            Ok(_) => Format::Safetensors,
        },
        None => bail!(
            "{} is not a PyTorch checkpoint (a torch.save zip archive or its legacy format) \
             nor a safetensors file",
            path.display()
        ),
    };
    let value = match format {
        Format::Zip => read_zip(&bytes),
        Format::Legacy => read_legacy(&bytes),
        Format::Safetensors => read_safetensors(&bytes),
    }
    .with_context(|| format!("{} ({format})", path.display()))?;
    Ok((value, format))
}

/// The format the leading bytes announce.
fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Some(Format::Zip)
    } else if legacy_header_len(bytes).is_some() {
        Some(Format::Legacy)
    } else if safetensors::SafeTensors::read_metadata(bytes).is_ok() {
        Some(Format::Safetensors)
    } else {
        None
    }
}

fn read_safetensors(bytes: &[u8]) -> Result<Value> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
    if let Some(model) = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(crate::run::checkpoint::META_MODEL))
    {
        bail!(
            "already a genzoo file (model `{model}`): nothing to convert (`genzoo export` strips a \
             checkpoint to its weights)"
        );
    }
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    let mut entries: Vec<(String, Value)> = tensors
        .into_iter()
        .map(|(k, t)| (k, Value::Tensor(t)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Value::Dict(entries))
}

/// One pickle from the front of `r`, which is left just past its `STOP`.
fn unpickle(r: &mut &[u8]) -> Result<Object> {
    let (pickle, len) = pickle::check(r)?;
    *r = &r[len..];
    // The walk rules out the panics known in Candle's parser (see `pickle`); should another
    // version bring a new one, a damaged download is still an error naming the file, not a
    // crash.
    let parsed = std::panic::catch_unwind(|| {
        let mut stack = Stack::empty();
        stack.read_loop(&mut &pickle[..])?;
        stack.finalize()
    });
    match parsed {
        Ok(Ok(object)) => Ok(object),
        Ok(Err(e)) => bail!("cannot parse its pickle ({e}): damaged?"),
        Err(_) => bail!("Candle's pickle parser failed on it: damaged?"),
    }
}

/// Where a tensor's data lives: the raw bytes of each storage of one file, by key.
trait StorageBytes {
    fn bytes(&mut self, key: &str) -> Result<Cow<'_, [u8]>>;
}

/// The file's storages as 1-D tensors, each read once however many tensors view it.
struct Storages<S> {
    source: S,
    read: HashMap<String, Tensor>,
}

impl<S: StorageBytes> Storages<S> {
    fn new(source: S) -> Self {
        Self {
            source,
            read: HashMap::new(),
        }
    }

    /// Storage `r.key` as `numel` elements of `dtype`, which every reference must agree on.
    fn get(&mut self, r: &StorageRef, dtype: DType) -> Result<Tensor> {
        if let Some(t) = self.read.get(&r.key) {
            ensure!(
                t.dtype() == dtype && t.elem_count() == r.numel,
                "storage `{}` is referred to as {} {dtype:?} values and as {} {:?} values",
                r.key,
                r.numel,
                t.elem_count(),
                t.dtype()
            );
            return Ok(t.clone());
        }
        let t = storage_tensor(&self.source.bytes(&r.key)?, dtype, r.numel, &r.key)?;
        self.read.insert(r.key.clone(), t.clone());
        Ok(t)
    }
}

/// The zip format's storages: entry `<archive>/data/<key>` each.
struct ZipStorages<'a> {
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    /// `<archive>/`.
    prefix: String,
    file_len: usize,
}

impl StorageBytes for ZipStorages<'_> {
    fn bytes(&mut self, key: &str) -> Result<Cow<'_, [u8]>> {
        let name = format!("{}data/{key}", self.prefix);
        Ok(Cow::Owned(read_entry(&mut self.zip, &name, self.file_len)?))
    }
}

/// The bytes of entry `name`, checked to be stored as torch.save stores them (a compressed
/// entry could inflate far beyond the file) and no longer than the archive.
fn read_entry(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    file_len: usize,
) -> Result<Vec<u8>> {
    let archive_len = file_len as u64;
    let entry = zip
        .by_name(name)
        .with_context(|| format!("the archive has no entry `{name}`"))?;
    ensure!(
        entry.compression() == zip::CompressionMethod::Stored,
        "entry `{name}` is compressed ({}), which torch.save never does",
        entry.compression()
    );
    ensure!(
        entry.size() <= archive_len,
        "entry `{name}` claims {} bytes, more than the whole file's {archive_len}",
        entry.size()
    );
    let mut data = Vec::with_capacity(entry.size() as usize);
    entry
        .take(archive_len)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read entry `{name}` (damaged or truncated?)"))?;
    Ok(data)
}

fn read_zip(bytes: &[u8]) -> Result<Value> {
    // The archive starts at byte 0: torch.save prepends nothing. The zip crate's default
    // (`ArchiveOffset::Detect`) looks for prepended bytes, and PyTorch's writer adds zip64 end
    // records that the plain end record's offsets do not count; for some lengths of the
    // archive's folder name the detection then took them for 76 prepended bytes and refused
    // the file ("Invalid Central Directory header": a whole module saved as
    // `netG_module.protocol4.pth`, which Python reads).
    let config = zip::read::Config {
        archive_offset: zip::read::ArchiveOffset::Known(0),
    };
    let mut zip = zip::ZipArchive::with_config(config, Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("damaged or truncated zip archive ({e})"))?;
    let pickle_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .context("a zip archive without `data.pkl`: not written by torch.save")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some() {
        ensure!(
            read_entry(&mut zip, &byteorder, bytes.len())?.trim_ascii() != b"big",
            "saved on a big-endian machine, which genzoo does not read"
        );
    }
    let pickle = read_entry(&mut zip, &pickle_name, bytes.len())?;
    let object = unpickle(&mut pickle.as_slice())?;
    let storages = ZipStorages {
        zip,
        prefix,
        file_len: bytes.len(),
    };
    Tensors::new(storages, bytes.len()).value(object)
}

/// The legacy format's storages, found in advance: each `key` in the order of the key list,
/// as its element count (little-endian u64) and its bytes.
struct LegacyStorages<'a>(HashMap<String, &'a [u8]>);

impl StorageBytes for LegacyStorages<'_> {
    fn bytes(&mut self, key: &str) -> Result<Cow<'_, [u8]>> {
        let data = self
            .0
            .get(key)
            .with_context(|| format!("storage `{key}` is not in the file"))?;
        Ok(Cow::Borrowed(data))
    }
}

fn read_legacy(bytes: &[u8]) -> Result<Value> {
    let header = legacy_header_len(bytes).context("no legacy header")?;
    let mut r = &bytes[header..];
    let _protocol = unpickle(&mut r)?;
    let _sys_info = unpickle(&mut r)?;
    let object = unpickle(&mut r)?;
    let keys = match unpickle(&mut r)? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|_| anyhow::anyhow!("a storage key that is not text"))
            })
            .collect::<Result<Vec<String>>>()?,
        _ => bail!("no list of storage keys after the pickle"),
    };
    // The element sizes come from the storages' types, which only the object's references give.
    let mut classes = HashMap::new();
    collect_storage_classes(&object, &mut classes);
    let mut storages = HashMap::new();
    for key in keys {
        let (data, rest) = legacy_storage(r, &key, &classes)?;
        storages.insert(key, data);
        r = rest;
    }
    Tensors::new(LegacyStorages(storages), bytes.len()).value(object)
}

/// Storage `key`'s record at the front of `r`: its bytes, and what follows.
fn legacy_storage<'a>(
    r: &'a [u8],
    key: &str,
    classes: &HashMap<String, String>,
) -> Result<(&'a [u8], &'a [u8])> {
    let class = classes
        .get(key)
        .with_context(|| format!("storage `{key}` is listed but nothing refers to it"))?;
    let size = element_size(class)
        .with_context(|| format!("storage `{key}` is a {class}, of unknown element size"))?;
    let (count, r) = r
        .split_first_chunk::<8>()
        .with_context(|| format!("truncated: storage `{key}` is missing"))?;
    let numel = u64::from_le_bytes(*count);
    let len = usize::try_from(numel)
        .ok()
        .and_then(|n| n.checked_mul(size))
        .filter(|len| *len <= r.len())
        .with_context(|| {
            format!(
                "truncated: storage `{key}` claims {numel} values of {size} bytes, the file has \
                 {} bytes left",
                r.len()
            )
        })?;
    Ok(r.split_at(len))
}

/// Every storage key the object refers to, with its storage class (`FloatStorage`).
fn collect_storage_classes(obj: &Object, out: &mut HashMap<String, String>) {
    match obj {
        Object::PersistentLoad(id) => {
            if let Ok(r) = storage_ref(id) {
                out.insert(r.key, r.class);
            }
        }
        Object::Tuple(items) | Object::List(items) => {
            items.iter().for_each(|o| collect_storage_classes(o, out))
        }
        Object::Dict(entries) => entries.iter().for_each(|(k, v)| {
            collect_storage_classes(k, out);
            collect_storage_classes(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storage_classes(callable, out);
            collect_storage_classes(args, out)
        }
        _ => {}
    }
}

/// Bytes per element of a `torch.*Storage` class, read or not.
fn element_size(class: &str) -> Option<usize> {
    match storage_dtype(class) {
        Some(dtype) => Some(dtype.size_in_bytes()),
        None => match class {
            "CharStorage" | "QInt8Storage" | "QUInt8Storage" => Some(1),
            "QInt32Storage" => Some(4),
            "ComplexFloatStorage" => Some(8),
            "ComplexDoubleStorage" => Some(16),
            _ => None,
        },
    }
}

/// A persistent id `('storage', torch.FloatStorage, key, location, numel, ...)`.
struct StorageRef {
    key: String,
    /// `None` for a storage type genzoo does not read.
    dtype: Option<DType>,
    class: String,
    numel: usize,
}

fn storage_ref(id: &Object) -> Result<StorageRef> {
    let Object::Tuple(items) = id else {
        bail!("a persistent id that is not a tuple")
    };
    match items.as_slice() {
        [Object::Unicode(kind), Object::Class { class_name, .. }, Object::Unicode(key), _, numel, ..]
            if kind == "storage" =>
        {
            Ok(StorageRef {
                key: key.clone(),
                dtype: storage_dtype(class_name),
                class: class_name.clone(),
                numel: usize_of(numel)?,
            })
        }
        _ => bail!("a persistent id that is not a storage"),
    }
}

/// The dtype of a `torch.*Storage` class, where Candle has one.
fn storage_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "ByteStorage" | "BoolStorage" => DType::U8,
        _ => return None,
    })
}

fn usize_of(obj: &Object) -> Result<usize> {
    match obj {
        Object::Int(i) if *i >= 0 => Ok(*i as usize),
        Object::Long(i) if *i >= 0 => Ok(*i as usize),
        other => bail!("expected a size, found {}", describe(other)),
    }
}

fn sizes_of(obj: &Object) -> Result<Vec<usize>> {
    match obj {
        Object::Tuple(items) | Object::List(items) => items.iter().map(usize_of).collect(),
        other => bail!("expected a shape, found {}", describe(other)),
    }
}

/// A storage's bytes as a 1-D tensor, checked against the element count its reference gives.
fn storage_tensor(data: &[u8], dtype: DType, numel: usize, key: &str) -> Result<Tensor> {
    let len = numel
        .checked_mul(dtype.size_in_bytes())
        .filter(|len| *len <= data.len())
        .with_context(|| {
            format!(
                "storage `{key}` holds {} bytes, fewer than {numel} {dtype:?} values need \
                 (truncated?)",
                data.len()
            )
        })?;
    Ok(Tensor::from_raw_buffer(
        &data[..len],
        dtype,
        &[numel],
        &Device::Cpu,
    )?)
}

/// The product of `dims`, or `None` where it overflows at any point (Candle multiplies them in
/// this order too).
pub(super) fn elements(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

/// The tensor of `size` at `offset` with `stride` in `storage`: a slice where the layout is
/// row-major, a gather otherwise (transposed or expanded views), which takes its elements from
/// `allowance`.
fn view(
    storage: &Tensor,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    allowance: &mut usize,
) -> Result<Tensor> {
    ensure!(
        size.len() == stride.len(),
        "a tensor of shape {size:?} with strides {stride:?}"
    );
    let n = elements(size).with_context(|| format!("a tensor of shape {size:?}: too large"))?;
    if n == 0 {
        return Ok(Tensor::zeros(size, storage.dtype(), &Device::Cpu)?);
    }
    let last = size.iter().zip(stride).try_fold(offset, |at, (s, st)| {
        (s - 1).checked_mul(*st)?.checked_add(at)
    });
    ensure!(
        last.is_some_and(|last| last < storage.elem_count()),
        "a tensor of shape {size:?} at offset {offset} with strides {stride:?} reaches past the \
         end of its storage of {}",
        storage.elem_count()
    );
    let mut row_major = vec![1; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        row_major[d] = row_major[d + 1] * size[d + 1];
    }
    let contiguous = size
        .iter()
        .zip(stride.iter().zip(&row_major))
        .all(|(s, (a, b))| *s == 1 || a == b);
    if contiguous {
        return Ok(storage.narrow(0, offset, n)?.reshape(size)?);
    }
    ensure!(
        storage.elem_count() <= u32::MAX as usize,
        "a strided view of a storage too large to gather"
    );
    // An expanded view (stride 0) has more elements than its storage: what gathers copy is
    // bounded, so that a few bytes cannot ask for gigabytes.
    *allowance = allowance.checked_sub(n).with_context(|| {
        format!("a strided view of shape {size:?}: more elements than the file could hold")
    })?;
    let indices: Vec<u32> = (0..n)
        .map(|flat| {
            let mut rest = flat;
            let mut at = offset;
            for d in 0..size.len() {
                at += (rest / row_major[d]) * stride[d];
                rest %= row_major[d];
            }
            at as u32
        })
        .collect();
    let indices = Tensor::from_vec(indices, n, &Device::Cpu)?;
    Ok(storage.index_select(&indices, 0)?.reshape(size)?)
}

/// Candle's object tree made [`Value`]s, tensors read from `storages`.
struct Tensors<S> {
    storages: Storages<S>,
    /// Elements strided views may still gather: twice the file's bytes, and a floor.
    allowance: usize,
}

impl<S: StorageBytes> Tensors<S> {
    fn new(source: S, file_len: usize) -> Self {
        Self {
            storages: Storages::new(source),
            allowance: file_len.saturating_mul(2).saturating_add(1 << 24),
        }
    }

    fn value(&mut self, obj: Object) -> Result<Value> {
        match obj {
            Object::Dict(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let Object::Unicode(key) = k else {
                        return Ok(Value::Other("a dict keyed by numbers".into()));
                    };
                    out.push((key, self.value(v)?));
                }
                Ok(Value::Dict(out))
            }
            Object::Reduce { callable, args } => Ok(self
                .reduce(&callable, &args)?
                .unwrap_or_else(|| Value::Other(describe(&callable)))),
            // A tensor with Python attributes set by BUILD: the tensor. An object built from a
            // dict of its attributes: a whole pickled module (`torch.save(model)`) or a
            // TorchScript module (`torch.jit.save`), read as its state dict.
            Object::Build { callable, args } => match *callable {
                Object::Reduce {
                    callable,
                    args: new_args,
                } => {
                    if let Some(tensor) = self.reduce(&callable, &new_args)? {
                        return Ok(tensor);
                    }
                    match self.module_state(&callable, *args)? {
                        Some(state) => Ok(state),
                        None => Ok(Value::Other(describe(&callable))),
                    }
                }
                other => Ok(Value::Other(describe(&other))),
            },
            other => Ok(Value::Other(describe(&other))),
        }
    }

    /// A module's state dict from the attributes its BUILD sets, if `class` with `attributes`
    /// is a module: an eager `nn.Module` (its `_parameters`, `_buffers` but those in
    /// `_non_persistent_buffers_set`, and `_modules`, each submodule's entries under its name
    /// and a dot, as `state_dict()` names them), or a TorchScript module (a `__torch__` class
    /// whose parameters, buffers and submodules are plain attributes: every tensor attribute
    /// is taken, since the archive does not say which buffers `state_dict()` would leave out;
    /// one genzoo does not place is named in the conversion's notes). `None` values (an absent
    /// bias) are left out, as `state_dict()` leaves them.
    fn module_state(&mut self, class: &Object, attributes: Object) -> Result<Option<Value>> {
        let Object::Dict(attributes) = attributes else {
            return Ok(None);
        };
        let has = |name: &str| {
            attributes
                .iter()
                .any(|(k, _)| matches!(k, Object::Unicode(key) if key == name))
        };
        if has("_modules") && has("_parameters") {
            return self.eager_module(attributes).map(Some);
        }
        let scripted = matches!(class, Object::Class { module_name, .. } if module_name.starts_with("__torch__"));
        if scripted {
            return self.scripted_module(attributes).map(Some);
        }
        Ok(None)
    }

    fn eager_module(&mut self, attributes: Vec<(Object, Object)>) -> Result<Value> {
        let mut parts: HashMap<String, Object> = attributes
            .into_iter()
            .filter_map(|(k, v)| match k {
                Object::Unicode(key) => Some((key, v)),
                _ => None,
            })
            .collect();
        let non_persistent = parts
            .remove("_non_persistent_buffers_set")
            .map(set_members)
            .unwrap_or_default();
        let mut out = Vec::new();
        for (group, skip) in [("_parameters", &Vec::new()), ("_buffers", &non_persistent)] {
            let Some(Object::Dict(entries)) = parts.remove(group) else {
                continue;
            };
            for (k, v) in entries {
                let Object::Unicode(name) = k else { continue };
                if v == Object::None || skip.contains(&name) {
                    continue;
                }
                out.push((name, self.value(v)?));
            }
        }
        if let Some(Object::Dict(children)) = parts.remove("_modules") {
            for (k, v) in children {
                let Object::Unicode(name) = k else { continue };
                if v == Object::None {
                    continue;
                }
                self.push_prefixed(&mut out, &name, v)?;
            }
        }
        Ok(Value::Dict(out))
    }

    fn scripted_module(&mut self, attributes: Vec<(Object, Object)>) -> Result<Value> {
        let mut out = Vec::new();
        for (k, v) in attributes {
            let Object::Unicode(name) = k else { continue };
            match &v {
                Object::Reduce { .. } | Object::Build { .. } => {
                    self.push_prefixed(&mut out, &name, v)?
                }
                _ => {}
            }
        }
        Ok(Value::Dict(out))
    }

    /// `value`'s tensor as `name`, or its state dict's entries as `name.key`; anything else is
    /// not part of a state dict and is left out.
    fn push_prefixed(
        &mut self,
        out: &mut Vec<(String, Value)>,
        name: &str,
        v: Object,
    ) -> Result<()> {
        match self.value(v)? {
            Value::Tensor(t) => out.push((name.to_string(), Value::Tensor(t))),
            Value::Dict(entries) => {
                out.extend(entries.into_iter().map(|(k, v)| (format!("{name}.{k}"), v)))
            }
            Value::Other(_) => {}
        }
        Ok(())
    }

    /// The tensor a `REDUCE` rebuilds, if it rebuilds one.
    fn reduce(&mut self, callable: &Object, args: &Object) -> Result<Option<Value>> {
        let Object::Class {
            module_name,
            class_name,
        } = callable
        else {
            return Ok(None);
        };
        let Object::Tuple(args) = args else {
            return Ok(None);
        };
        Ok(match (module_name.as_str(), class_name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                Some(self.rebuild_tensor(args)?)
            }
            // `nn.Parameter(data, requires_grad, hooks[, state])`: the data; PyTorch before 1.0
            // pickled a parameter as `Parameter(data, requires_grad)`.
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match args.first() {
                Some(data) => Some(self.value(data.clone())?),
                None => None,
            },
            // A tensor subclass: `_rebuild_from_type_v2(func, type, args, state)` calls
            // func(*args).
            ("torch._tensor", "_rebuild_from_type_v2") if args.len() >= 3 => {
                self.reduce(&args[0], &args[2])?
            }
            _ => None,
        })
    }

    /// The arguments of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
    /// (and of the older `_rebuild_tensor`, which takes the same four first).
    fn rebuild_tensor(&mut self, args: &[Object]) -> Result<Value> {
        let [Object::PersistentLoad(id), offset, size, stride, ..] = args else {
            bail!("tensor arguments of an unknown layout")
        };
        let r = storage_ref(id)?;
        let Some(dtype) = r.dtype else {
            return Ok(Value::Other(format!(
                "a tensor of {}, which genzoo does not read",
                r.class
            )));
        };
        let storage = self.storages.get(&r, dtype)?;
        let (offset, size, stride) = (usize_of(offset)?, sizes_of(size)?, sizes_of(stride)?);
        let t = view(&storage, offset, &size, &stride, &mut self.allowance)
            .with_context(|| format!("storage `{}`", r.key))?;
        Ok(Value::Tensor(t))
    }
}

/// The text members of a pickled `set`: `builtins.set` reduced from a list, as protocol 2
/// writes it, or the list `pickle` makes of protocol 4's `EMPTY_SET` and `ADDITEMS`.
fn set_members(set: Object) -> Vec<String> {
    let items = match set {
        Object::List(items) => items,
        Object::Reduce { args, .. } => match *args {
            Object::Tuple(args) => match args.into_iter().next() {
                Some(Object::List(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|i| match i {
            Object::Unicode(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// A few words on what an object is, for messages.
fn describe(obj: &Object) -> String {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("a {module_name}.{class_name} object"),
        Object::Int(_) | Object::Long(_) => "a number".into(),
        Object::Float(_) => "a number".into(),
        Object::Unicode(_) => "text".into(),
        Object::Bool(_) => "a boolean".into(),
        Object::None => "None".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::List(_) => "a list".into(),
        Object::Dict(_) => "a dict".into(),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => describe(callable),
        Object::Mark | Object::PersistentLoad(_) => "a pickle internal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_follow_offsets_and_strides() -> Result<()> {
        let storage = Tensor::arange(0f32, 12.0, &Device::Cpu)?;
        let mut allowance = 100;
        let mut view = |offset, size: &[usize], stride: &[usize]| {
            view(&storage, offset, size, stride, &mut allowance)
        };
        let t = view(2, &[2, 3], &[3, 1])?;
        assert_eq!(t.to_vec2::<f32>()?, [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]);
        // A transpose: column-major strides.
        let t = view(0, &[3, 2], &[1, 3])?;
        assert_eq!(t.to_vec2::<f32>()?, [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]);
        // A scalar and an expanded (stride 0) view.
        assert_eq!(view(5, &[], &[])?.to_scalar::<f32>()?, 5.0);
        let t = view(1, &[2, 2], &[0, 1])?;
        assert_eq!(t.to_vec2::<f32>()?, [[1.0, 2.0], [1.0, 2.0]]);
        let e = view(10, &[2, 3], &[3, 1]).unwrap_err().to_string();
        assert!(
            e.contains("reaches past the end of its storage of 12"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn sizes_a_file_claims_cannot_overflow_or_allocate() -> Result<()> {
        let storage = Tensor::arange(0f32, 12.0, &Device::Cpu)?;
        let huge = usize::MAX / 2;
        let mut allowance = 100;
        for (offset, size, stride) in [
            (0, vec![huge, huge, 0], vec![0, 0, 1]),
            (0, vec![2, huge], vec![huge, 1]),
            (huge * 2, vec![2], vec![1]),
        ] {
            let e = view(&storage, offset, &size, &stride, &mut allowance).unwrap_err();
            assert!(e.to_string().contains("a tensor of shape"), "{e}");
        }
        // A broadcast of one element to 2^40: within the storage, beyond the allowance.
        let e = view(&storage, 0, &[1 << 20, 1 << 20], &[0, 0], &mut allowance).unwrap_err();
        assert!(e.to_string().contains("more elements than the file"), "{e}");
        let e = storage_tensor(&[0; 16], DType::F32, huge, "0").unwrap_err();
        assert!(e.to_string().contains("fewer than"), "{e}");
        Ok(())
    }

    #[test]
    fn legacy_records_cannot_claim_more_than_the_file_has() {
        let classes = HashMap::from([("0".to_string(), "FloatStorage".to_string())]);
        let mut record = u64::MAX.to_le_bytes().to_vec();
        record.extend([0; 16]);
        let e = legacy_storage(&record, "0", &classes).unwrap_err();
        assert!(
            e.to_string().contains("claims 18446744073709551615 values"),
            "{e}"
        );
        record[..8].copy_from_slice(&4u64.to_le_bytes());
        let (data, rest) = legacy_storage(&record, "0", &classes).unwrap();
        assert_eq!((data.len(), rest.len()), (16, 0));
    }

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(sniff(b"PK\x03\x04rest"), Some(Format::Zip));
        let legacy = |head: &[u8]| [head, &LEGACY_MAGIC[..]].concat();
        assert_eq!(sniff(&legacy(b"\x80\x02")), Some(Format::Legacy));
        let framed = b"\x80\x04\x95\x0d\0\0\0\0\0\0\0";
        assert_eq!(sniff(&legacy(framed)), Some(Format::Legacy));
        assert_eq!(legacy_header_len(&legacy(framed)), Some(24));
        // A frame of another length does not hold the magic number alone.
        assert_eq!(sniff(&legacy(b"\x80\x04\x95\x0e\0\0\0\0\0\0\0")), None);
        assert_eq!(sniff(&LEGACY_MAGIC), None);
        assert_eq!(sniff(b"hello, not weights"), None);
        assert_eq!(sniff(b""), None);
    }
}
