//! Reading PyTorch checkpoints without Python: `torch.save`'s zip archive (PyTorch 1.6 on), its
//! legacy format (before 1.6: how most published GAN weights were saved), and safetensors.
//!
//! The pickle is parsed by Candle's `candle_core::pickle::Stack`, which builds a tree of objects
//! and executes nothing; here that tree becomes [`Value`]s, with every tensor read from the
//! storage it names (any offset and strides, shared storages read once). Candle's parser knows
//! pickle protocol 2, `torch.save`'s default; a file saved with a higher `pickle_protocol` is
//! refused with an error that says so.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

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

/// The legacy format's first pickle: protocol 2, then `LONG1` of the 10-byte magic number
/// 0x1950a86a20f9469cfc6c, then `STOP`. Matched as bytes: Candle's `LONG1` decoder shifts past
/// 64 bits on a 10-byte integer.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

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
    } else if bytes.starts_with(&LEGACY_MAGIC) {
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
    let mut stack = Stack::empty();
    stack.read_loop(r).map_err(|e| {
        anyhow::anyhow!(
            "cannot parse its pickle ({e}); genzoo reads pickle protocol 2, torch.save's default: \
             a file saved with a higher pickle_protocol, or a damaged one, cannot be read"
        )
    })?;
    Ok(stack.finalize()?)
}

/// Where a tensor's data lives: the storages of one file.
trait Storages {
    /// Storage `key` as a 1-D tensor of `numel` elements of `dtype`.
    fn storage(&mut self, key: &str, dtype: DType, numel: usize) -> Result<Tensor>;
}

/// The zip format's storages: entry `<archive>/data/<key>` each.
struct ZipStorages<'a> {
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    /// `<archive>/`.
    prefix: String,
    read: HashMap<String, Tensor>,
}

impl Storages for ZipStorages<'_> {
    fn storage(&mut self, key: &str, dtype: DType, numel: usize) -> Result<Tensor> {
        if let Some(t) = self.read.get(key) {
            return Ok(t.clone());
        }
        let name = format!("{}data/{key}", self.prefix);
        let mut entry = self
            .zip
            .by_name(&name)
            .with_context(|| format!("the archive has no storage `{name}`"))?;
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read storage `{name}` (damaged or truncated?)"))?;
        let t = storage_tensor(&data, dtype, numel, key)?;
        self.read.insert(key.to_string(), t.clone());
        Ok(t)
    }
}

fn read_zip(bytes: &[u8]) -> Result<Value> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("damaged or truncated zip archive ({e})"))?;
    let pickle_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .context("a zip archive without `data.pkl`: not written by torch.save")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut order) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut text = String::new();
        order.read_to_string(&mut text)?;
        ensure!(
            text.trim() != "big",
            "saved on a big-endian machine, which genzoo does not read"
        );
    }
    let mut pickle = Vec::new();
    zip.by_name(&pickle_name)?
        .read_to_end(&mut pickle)
        .context("cannot read `data.pkl` (damaged or truncated?)")?;
    let object = unpickle(&mut pickle.as_slice())?;
    let mut storages = ZipStorages {
        zip,
        prefix,
        read: HashMap::new(),
    };
    to_value(object, &mut storages)
}

/// The legacy format's storages, read in advance: each `key` in the order of the key list,
/// as its element count (little-endian u64) and its bytes.
struct LegacyStorages<'a>(HashMap<String, &'a [u8]>);

impl Storages for LegacyStorages<'_> {
    fn storage(&mut self, key: &str, dtype: DType, numel: usize) -> Result<Tensor> {
        let data = self
            .0
            .get(key)
            .with_context(|| format!("storage `{key}` is not in the file"))?;
        storage_tensor(data, dtype, numel, key)
    }
}

fn read_legacy(bytes: &[u8]) -> Result<Value> {
    let mut r = &bytes[LEGACY_MAGIC.len()..];
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
        let class = classes
            .get(&key)
            .with_context(|| format!("storage `{key}` is listed but nothing refers to it"))?;
        let size = element_size(class)
            .with_context(|| format!("storage `{key}` is a {class}, of unknown element size"))?;
        ensure!(r.len() >= 8, "truncated: storage `{key}` is missing");
        let numel = u64::from_le_bytes(r[..8].try_into()?) as usize;
        let len = numel.checked_mul(size).context("a storage too large")?;
        ensure!(
            r.len() >= 8 + len,
            "truncated: storage `{key}` holds {} of its {len} bytes",
            r.len() - 8
        );
        storages.insert(key, &r[8..8 + len]);
        r = &r[8 + len..];
    }
    to_value(object, &mut LegacyStorages(storages))
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
    let len = numel * dtype.size_in_bytes();
    ensure!(
        data.len() >= len,
        "storage `{key}` holds {} bytes, {numel} {dtype:?} values need {len} (truncated?)",
        data.len()
    );
    Ok(Tensor::from_raw_buffer(
        &data[..len],
        dtype,
        &[numel],
        &Device::Cpu,
    )?)
}

/// The tensor of `size` at `offset` with `stride` in `storage`: a slice where the layout is
/// row-major, a gather otherwise (transposed or expanded views).
fn view(storage: &Tensor, offset: usize, size: &[usize], stride: &[usize]) -> Result<Tensor> {
    ensure!(
        size.len() == stride.len(),
        "a tensor of shape {size:?} with strides {stride:?}"
    );
    let n: usize = size.iter().product();
    if n == 0 {
        return Ok(Tensor::zeros(size, storage.dtype(), &Device::Cpu)?);
    }
    let last = offset
        + size
            .iter()
            .zip(stride)
            .map(|(s, st)| (s - 1) * st)
            .sum::<usize>();
    ensure!(
        last < storage.elem_count(),
        "a tensor of shape {size:?} reaches element {last} of a storage of {}",
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

/// The arguments of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` (and
/// of the older `_rebuild_tensor`, which takes the same four first).
fn rebuild_tensor(args: &Object, storages: &mut dyn Storages) -> Result<Value> {
    let Object::Tuple(args) = args else {
        bail!("tensor arguments that are not a tuple")
    };
    let [Object::PersistentLoad(id), offset, size, stride, ..] = args.as_slice() else {
        bail!("tensor arguments of an unknown layout")
    };
    let r = storage_ref(id)?;
    let Some(dtype) = r.dtype else {
        return Ok(Value::Other(format!(
            "a tensor of {}, which genzoo does not read",
            r.class
        )));
    };
    let storage = storages.storage(&r.key, dtype, r.numel)?;
    let (offset, size, stride) = (usize_of(offset)?, sizes_of(size)?, sizes_of(stride)?);
    Ok(Value::Tensor(view(&storage, offset, &size, &stride)?))
}

/// The tensor a `REDUCE` rebuilds, if it rebuilds one.
fn reduce(callable: &Object, args: &Object, storages: &mut dyn Storages) -> Result<Option<Value>> {
    let Object::Class {
        module_name,
        class_name,
    } = callable
    else {
        return Ok(None);
    };
    let first = |args: &Object| match args {
        Object::Tuple(items) => items.first().cloned(),
        _ => None,
    };
    Ok(match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            Some(rebuild_tensor(args, storages)?)
        }
        // `nn.Parameter(data, requires_grad, hooks[, state])`: the data.
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match first(args) {
                Some(data) => Some(to_value(data, storages)?),
                None => None,
            }
        }
        // A tensor subclass: `_rebuild_from_type_v2(func, type, args, state)` calls func(*args).
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            Object::Tuple(items) if items.len() >= 3 => reduce(&items[0], &items[2], storages)?,
            _ => None,
        },
        _ => None,
    })
}

/// Candle's object tree as [`Value`]s, tensors read.
fn to_value(obj: Object, storages: &mut dyn Storages) -> Result<Value> {
    match obj {
        Object::Dict(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let Object::Unicode(key) = k else {
                    return Ok(Value::Other("a dict keyed by numbers".into()));
                };
                out.push((key, to_value(v, storages)?));
            }
            Ok(Value::Dict(out))
        }
        Object::Reduce { callable, args } => Ok(reduce(&callable, &args, storages)?
            .unwrap_or_else(|| Value::Other(describe(&callable)))),
        // A tensor with Python attributes set by BUILD: the tensor.
        Object::Build { callable, .. } => match *callable {
            Object::Reduce { callable, args } => Ok(reduce(&callable, &args, storages)?
                .unwrap_or_else(|| Value::Other(describe(&callable)))),
            other => Ok(Value::Other(describe(&other))),
        },
        other => Ok(Value::Other(describe(&other))),
    }
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
        let t = view(&storage, 2, &[2, 3], &[3, 1])?;
        assert_eq!(t.to_vec2::<f32>()?, [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]);
        // A transpose: column-major strides.
        let t = view(&storage, 0, &[3, 2], &[1, 3])?;
        assert_eq!(t.to_vec2::<f32>()?, [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]);
        // A scalar and an expanded (stride 0) view.
        assert_eq!(view(&storage, 5, &[], &[])?.to_scalar::<f32>()?, 5.0);
        let t = view(&storage, 1, &[2, 2], &[0, 1])?;
        assert_eq!(t.to_vec2::<f32>()?, [[1.0, 2.0], [1.0, 2.0]]);
        let e = view(&storage, 10, &[2, 3], &[3, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("reaches element 15 of a storage of 12"), "{e}");
        Ok(())
    }

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(sniff(b"PK\x03\x04rest"), Some(Format::Zip));
        assert_eq!(sniff(&LEGACY_MAGIC), Some(Format::Legacy));
        assert_eq!(sniff(b"hello, not weights"), None);
        assert_eq!(sniff(b""), None);
    }
}
