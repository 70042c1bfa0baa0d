//! A walk over a pickle's opcodes before Candle's parser (`candle_core::pickle::Stack`) sees
//! it, because that parser trusts its input: `LONG1` of more than 8 bytes shifts past 64 bits
//! (a panic in debug builds, a wrong number in release), `BINUNICODE` allocates whatever length
//! the file claims, memoised objects are deep-copied on every `BINGET` (a few bytes can ask for
//! gigabytes), and its objects are cloned and dropped recursively (deep nesting overflows the
//! stack). The walk mirrors what the parser will build, in sizes only, and refuses a pickle
//! whose lengths exceed the bytes there are or whose objects would outgrow [`budget`] or
//! [`MAX_DEPTH`].
//!
//! Candle's parser knows protocol 2, `torch.save`'s default. A file saved with
//! `pickle_protocol=3, 4 or 5` is rewritten into protocol 2 on the way, opcode by opcode, with the
//! meaning kept: `FRAME` dropped, `SHORT_BINUNICODE` / `BINUNICODE8` as `BINUNICODE`, `MEMOIZE`
//! as `LONG_BINPUT` of the index Python's unpickler gives it (the memo's size), and
//! `STACK_GLOBAL`, which takes the module and class names from the stack, as `GLOBAL` with the
//! two names written out in place of the opcodes that pushed them (a name put in the memo there
//! and read back later is then written out where it is read). Byte strings (protocol 3), which no
//! tensor's description holds, become `None`, as integers past 8 bytes do.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use anyhow::{bail, ensure, Context, Result};

/// Deepest nesting of objects accepted: a state dict inside a checkpoint's wrapper is a few
/// levels deep, its tensors a few more; this leaves room for nested hyper-parameters while
/// keeping Candle's recursive clones and drops far from the stack's end.
const MAX_DEPTH: u32 = 200;

/// What one of Candle's `Object`s takes, roughly, before any text it holds.
const OBJECT_BYTES: u64 = 64;

/// The memory the parser may use for a pickle of `len` bytes: a generous multiple of what its
/// objects take when nothing is copied, with a floor for small files.
fn budget(len: usize) -> u64 {
    (64 << 20) + 4 * OBJECT_BYTES * len as u64
}

/// One object of the parser's stack, as sizes.
#[derive(Debug, Clone)]
struct Item {
    /// Bytes it takes with everything inside it.
    bytes: u64,
    /// 1 for a leaf.
    depth: u32,
    /// The parser's `MARK`, which `TUPLE`, `APPENDS`, `SETITEMS` look back to.
    mark: bool,
    /// A string's text, and the byte where the opcode that pushed it begins: what rewriting a
    /// `STACK_GLOBAL` needs.
    text: Option<(Rc<str>, usize)>,
}

impl Item {
    fn leaf(text: usize) -> Self {
        Self {
            bytes: OBJECT_BYTES + text as u64,
            depth: 1,
            mark: false,
            text: None,
        }
    }

    /// A string pushed by the opcode at byte `at`.
    fn string(raw: &[u8], at: usize) -> Self {
        Self {
            text: std::str::from_utf8(raw).ok().map(|t| (Rc::from(t), at)),
            ..Self::leaf(raw.len())
        }
    }

    fn holding(items: &[Item]) -> Self {
        Self {
            bytes: items
                .iter()
                .fold(OBJECT_BYTES, |sum, i| sum.saturating_add(i.bytes)),
            depth: 1 + items.iter().map(|i| i.depth).max().unwrap_or(0),
            mark: false,
            text: None,
        }
    }
}

/// Bytes of the pickle that Candle's parser reads as something else.
#[derive(Debug)]
struct Edit {
    range: Range<usize>,
    with: Vec<u8>,
}

/// The parser's state, in sizes.
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Item>,
    /// Bytes allocated so far (copies included), and the most allowed.
    spent: u64,
    budget: u64,
    /// What Candle's parser reads instead, in the order of the bytes (see [`check`]).
    edits: Vec<Edit>,
    /// Where the run of opcodes that only push strings, read or write the memo or frame the
    /// pickle began: the opcodes a `STACK_GLOBAL` may replace.
    names_from: usize,
    /// The memo puts of that run: (byte, id).
    names_put: Vec<(usize, u32)>,
    /// Memo entries whose put a `STACK_GLOBAL` replaced, with their text: read back, they are
    /// written out.
    written_out: HashMap<u32, Rc<str>>,
}

/// Checks the pickle at the front of `bytes` and returns it as Candle's parser may read it
/// (protocol 2), with the number of bytes it spans (its `STOP` included). Integers of more than
/// 8 bytes, which no tensor's size, offset or stride can be, are replaced by `None`, so that a
/// checkpoint carrying one elsewhere (a seed, a hash) is still read.
pub(super) fn check(bytes: &[u8]) -> Result<(Cow<'_, [u8]>, usize)> {
    let mut walk = Walk {
        bytes,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        spent: 0,
        budget: budget(bytes.len()),
        edits: Vec::new(),
        names_from: 0,
        names_put: Vec::new(),
        written_out: HashMap::new(),
    };
    while !walk.step()? {}
    let end = walk.at;
    if walk.edits.is_empty() {
        return Ok((Cow::Borrowed(&bytes[..end]), end));
    }
    let mut fixed = Vec::with_capacity(end);
    let mut from = 0;
    for edit in &walk.edits {
        fixed.extend_from_slice(&bytes[from..edit.range.start]);
        fixed.extend_from_slice(&edit.with);
        from = edit.range.end;
    }
    fixed.extend_from_slice(&bytes[from..end]);
    Ok((Cow::Owned(fixed), end))
}

/// `BINUNICODE` of `text`.
fn binunicode(text: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(text.len()).context("a string of 4 GiB or more in the pickle")?;
    let mut op = vec![b'X'];
    op.extend(len.to_le_bytes());
    op.extend_from_slice(text);
    Ok(op)
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let at = self.at;
        let end = at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .with_context(|| {
                format!("truncated pickle: {n} bytes wanted at byte {at}, the file ends first")
            })?;
        self.at = end;
        Ok(&self.bytes[at..end])
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    /// An 8-byte length, which must fit in what is left of the pickle.
    fn len8(&mut self) -> Result<usize> {
        let len = u64::from_le_bytes(self.take(8)?.try_into()?);
        let left = self.bytes.len() - self.at;
        usize::try_from(len)
            .ok()
            .filter(|len| *len <= left)
            .with_context(|| format!("truncated pickle: {len} bytes wanted at byte {}", self.at))
    }

    /// Candle's parser reads `with` for the opcodes from byte `from` to here.
    fn edit(&mut self, from: usize, with: Vec<u8>) {
        self.edits.push(Edit {
            range: from..self.at,
            with,
        });
    }

    /// A string of `len` bytes, pushed by the opcode at `from`; written as `BINUNICODE` unless
    /// `as_is`.
    fn string(&mut self, from: usize, len: usize, as_is: bool) -> Result<()> {
        let raw = self.take(len)?;
        let item = Item::string(raw, from);
        if !as_is {
            let with = binunicode(raw)?;
            self.edit(from, with);
        }
        self.push(item)
    }

    /// Puts the top of the stack in the memo at `id` (the opcode began at `from`).
    fn memo_put(&mut self, from: usize, id: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .context("damaged pickle: BINPUT on an empty stack")?
            .clone();
        // The parser stores a copy.
        self.spent = self.spent.saturating_add(top.bytes);
        ensure!(self.spent <= self.budget, "its pickle copies too much");
        self.memo.insert(id, top);
        self.written_out.remove(&id);
        self.names_put.push((from, id));
        Ok(())
    }

    /// `STACK_GLOBAL` (the opcode began at `from`): the class whose module and name are the top
    /// two strings, as a `GLOBAL` that replaces the opcodes from the module's push on.
    fn stack_global(&mut self, from: usize) -> Result<()> {
        let name = self.pop()?;
        let module = self.pop()?;
        let (Some((module, start)), Some((name, _))) = (module.text, name.text) else {
            bail!("damaged pickle: STACK_GLOBAL at byte {from} without a module and a name");
        };
        ensure!(
            start >= self.names_from && !module.contains('\n') && !name.contains('\n'),
            "a STACK_GLOBAL at byte {from} whose names genzoo cannot write as GLOBAL: a pickle \
             torch.save did not write"
        );
        // The memo puts in the replaced opcodes are written out wherever they are read.
        while let Some(&(_, id)) = self.names_put.last().filter(|(at, _)| *at >= start) {
            self.names_put.pop();
            if let Some((text, _)) = self.memo.get(&id).and_then(|i| i.text.clone()) {
                self.written_out.insert(id, text);
            }
        }
        while self.edits.last().is_some_and(|e| e.range.start >= start) {
            self.edits.pop();
        }
        self.edit(start, format!("c{module}\n{name}\n").into_bytes());
        self.push(Item::leaf(module.len() + name.len()))
    }

    /// `BINGET` / `LONG_BINGET` of `id` (the opcode began at `from`).
    fn memo_get(&mut self, from: usize, id: u32) -> Result<()> {
        let mut item = self
            .memo
            .get(&id)
            .with_context(|| format!("damaged pickle: BINGET of {id}, never put"))?
            .clone();
        if let Some(text) = self.written_out.get(&id) {
            let with = binunicode(text.as_bytes())?;
            self.edit(from, with);
        }
        if let Some((_, start)) = item.text.as_mut() {
            *start = from;
        }
        self.push(item)
    }

    /// A line of `GLOBAL`'s text, its length.
    fn line(&mut self) -> Result<usize> {
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|b| *b == b'\n')
            .context("truncated pickle: a class name without its end of line")?;
        self.at += len + 1;
        Ok(len)
    }

    /// Accounts for `item`, newly built or copied, and pushes it.
    fn push(&mut self, item: Item) -> Result<()> {
        ensure!(
            item.depth <= MAX_DEPTH,
            "objects nested deeper than {MAX_DEPTH} levels: not a checkpoint genzoo reads"
        );
        self.spent = self.spent.saturating_add(item.bytes);
        ensure!(
            self.spent <= self.budget,
            "its pickle builds more than {} MiB of objects from {} bytes (copies of copies): \
             damaged or hostile",
            self.budget >> 20,
            self.bytes.len()
        );
        self.stack.push(item);
        Ok(())
    }

    fn pop(&mut self) -> Result<Item> {
        self.stack
            .pop()
            .context("damaged pickle: an opcode takes from an empty stack")
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Item>> {
        (0..n).map(|_| self.pop()).collect()
    }

    /// The items above the last `MARK`, which goes too.
    fn pop_to_mark(&mut self) -> Result<Vec<Item>> {
        let mark = self
            .stack
            .iter()
            .rposition(|i| i.mark)
            .context("damaged pickle: no MARK before a TUPLE, APPENDS, SETITEMS or DICT")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    /// `items` appended to the container on top of the stack (a list or dict grows in place).
    fn add_to_top(&mut self, items: &[Item]) -> Result<()> {
        let top = self
            .pop()
            .context("damaged pickle: nothing to add items to")?;
        let mut grown = Item::holding(items);
        grown.bytes = grown.bytes.saturating_add(top.bytes) - OBJECT_BYTES;
        grown.depth = grown.depth.max(top.depth);
        // Not newly allocated: pushed without counting it again.
        self.spent = self.spent.saturating_sub(grown.bytes);
        self.push(grown)
    }

    /// One opcode, as Candle's parser reads it; `true` at `STOP`.
    fn step(&mut self) -> Result<bool> {
        let at = self.at;
        let op = self.u8()?;
        // The opcodes a STACK_GLOBAL may replace: strings, the memo, frames.
        if !matches!(
            op,
            b'X' | 0x8c | 0x8d | b'q' | b'r' | 0x94 | b'h' | b'j' | 0x95 | 0x93
        ) {
            self.names_from = usize::MAX;
            self.names_put.clear();
        } else if self.names_from == usize::MAX {
            self.names_from = at;
        }
        match op {
            b'.' => return Ok(true),
            0x80 => {
                self.u8()?; // PROTO's version
            }
            b'c' => {
                let text = self.line()? + self.line()?;
                self.push(Item::leaf(text))?;
            }
            b'X' => {
                let len = self.u32()? as usize;
                self.string(at, len, true)?;
            }
            // SHORT_BINUNICODE, BINUNICODE8 (protocol 4).
            0x8c => {
                let len = self.u8()? as usize;
                self.string(at, len, false)?;
            }
            0x8d => {
                let len = self.len8()?;
                self.string(at, len, false)?;
            }
            // SHORT_BINBYTES, BINBYTES (protocol 3), BINBYTES8 (4): read as None.
            b'C' | b'B' | 0x8e => {
                let len = match op {
                    b'C' => self.u8()? as usize,
                    b'B' => self.u32()? as usize,
                    _ => self.len8()?,
                };
                self.take(len)?;
                self.edit(at, vec![b'N']);
                self.push(Item::leaf(0))?;
            }
            // FRAME (protocol 4): only a hint for buffering.
            0x95 => {
                self.len8()?;
                self.edit(at, Vec::new());
            }
            0x93 => self.stack_global(at)?,
            0x8a => {
                let n = self.u8()? as usize;
                self.take(n)?;
                if n > 8 {
                    self.edit(at, vec![b'N']);
                }
                self.push(Item::leaf(0))?;
            }
            b'K' | b'M' | b'J' | b'G' => {
                let n = match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                };
                self.take(n)?;
                self.push(Item::leaf(0))?;
            }
            // Candle reads DICT (`d`) as EMPTY_DICT, leaving its MARK on the stack.
            b')' | b'}' | b'd' | b']' | b'N' | 0x88 | 0x89 => self.push(Item::leaf(0))?,
            b'(' => self.push(Item {
                mark: true,
                ..Item::leaf(0)
            })?,
            b'R' | b'b' | 0x81 => {
                let items = self.pop_n(2)?;
                self.push(Item::holding(&items))?;
            }
            b'Q' | 0x85 | 0x86 | 0x87 => {
                let n = match op {
                    0x86 => 2,
                    0x87 => 3,
                    _ => 1,
                };
                let items = self.pop_n(n)?;
                self.push(Item::holding(&items))?;
            }
            b't' => {
                let items = self.pop_to_mark()?;
                self.push(Item::holding(&items))?;
            }
            b'a' => {
                let items = self.pop_n(1)?;
                self.add_to_top(&items)?;
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.add_to_top(&items)?;
            }
            b'e' | b'u' => {
                let items = self.pop_to_mark()?;
                self.add_to_top(&items)?;
            }
            b'q' | b'r' => {
                let id = if op == b'q' {
                    self.u8()? as u32
                } else {
                    self.u32()?
                };
                self.memo_put(at, id)?;
            }
            // MEMOIZE (protocol 4): the next index, as Python's unpickler counts it.
            0x94 => {
                let id = u32::try_from(self.memo.len()).context("a memo of 2^32 entries")?;
                let mut put = vec![b'r'];
                put.extend(id.to_le_bytes());
                self.edit(at, put);
                self.memo_put(at, id)?;
            }
            // EMPTY_SET and ADDITEMS (protocol 4): a set, read as the list of its members (a
            // module pickled whole holds one, `_non_persistent_buffers_set`).
            0x8f => {
                self.edit(at, vec![b']']);
                self.push(Item::leaf(0))?;
            }
            0x90 => {
                self.edit(at, vec![b'e']);
                let items = self.pop_to_mark()?;
                self.add_to_top(&items)?;
            }
            b'h' | b'j' => {
                let id = if op == b'h' {
                    self.u8()? as u32
                } else {
                    self.u32()?
                };
                self.memo_get(at, id)?;
            }
            other => bail!(
                "unknown pickle opcode 0x{other:02x} at byte {at}: genzoo reads the pickles \
                 torch.save writes (protocols 2 to 5); this one holds something a state dict does \
                 not (a set, keyword arguments, an out-of-band buffer) or is damaged"
            ),
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"a": 1}` as torch.save's pickler writes it (protocol 2).
    const SMALL: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";

    #[test]
    fn a_plain_pickle_passes_as_it_is() -> Result<()> {
        let (pickle, len) = check(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.trailing")?;
        assert_eq!((&*pickle, len), (SMALL, SMALL.len()));
        Ok(())
    }

    #[test]
    fn integers_longer_than_8_bytes_become_none() -> Result<()> {
        // {"a": 2**80}: Candle's LONG1 decoder would shift past 64 bits.
        let mut long = b"\x80\x02}X\x01\x00\x00\x00a\x8a\x0b".to_vec();
        long.extend([0; 10]);
        long.extend(b"\x01s.");
        let (pickle, len) = check(&long)?;
        assert_eq!(len, long.len());
        assert_eq!(&*pickle, b"\x80\x02}X\x01\x00\x00\x00aNs.");
        Ok(())
    }

    /// Python's `pickle.dumps([collections.OrderedDict, "collections", b"xy"], protocol=4)`: a
    /// frame, short strings, MEMOIZE, a STACK_GLOBAL whose module name is read back from the
    /// memo afterwards, and bytes.
    const PROTOCOL_4: &[u8] =
        b"\x80\x04\x95*\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x0bcollections\x94\
        \x8c\x0bOrderedDict\x94\x93\x94h\x01C\x02xy\x94e.";

    #[test]
    fn protocol_4_is_rewritten_into_protocol_2_with_its_meaning() -> Result<()> {
        let (pickle, len) = check(PROTOCOL_4)?;
        assert_eq!(len, PROTOCOL_4.len());
        // The frame gone, MEMOIZE as LONG_BINPUT of Python's index, the two names and their
        // memo puts as one GLOBAL, the module name read back written out, the bytes as None.
        let expected: &[u8] =
            b"\x80\x04]r\x00\x00\x00\x00(ccollections\nOrderedDict\nr\x03\x00\x00\x00\
            X\x0b\x00\x00\x00collectionsNr\x04\x00\x00\x00e.";
        assert_eq!(&*pickle, expected);
        let mut stack = candle_core::pickle::Stack::empty();
        stack.read_loop(&mut &pickle[..])?;
        use candle_core::pickle::Object;
        let class = Object::Class {
            module_name: "collections".into(),
            class_name: "OrderedDict".into(),
        };
        let read = vec![class, Object::Unicode("collections".into()), Object::None];
        assert_eq!(stack.finalize()?, Object::List(read));
        Ok(())
    }

    #[test]
    fn what_protocol_2_cannot_say_is_refused_by_name() {
        // STACK_GLOBAL of an integer and a string.
        let e = check(b"\x80\x04K\x01\x8c\x01a\x93.").unwrap_err();
        assert!(e.to_string().contains("without a module and a name"), "{e}");
        assert!(check(b"\x80\x04]\x8c\x01m\x8c\x01n\x93.").is_ok());
        let e = check(b"\x80\x04\x8c\x01m]\x8c\x01n\x93.").unwrap_err();
        assert!(e.to_string().contains("without a module and a name"), "{e}");
        // Names with another opcode between them (PROTO), or a line break inside, cannot be
        // written as one GLOBAL in their place.
        let e = check(b"\x80\x04\x8c\x01m\x80\x04\x8c\x01n\x93.").unwrap_err();
        assert!(e.to_string().contains("cannot write as GLOBAL"), "{e}");
        let e = check(b"\x80\x04\x8c\x02m\n\x8c\x01n\x93.").unwrap_err();
        assert!(e.to_string().contains("cannot write as GLOBAL"), "{e}");
        // A frozen set (FROZENSET), which neither a state dict nor a module holds.
        let e = check(b"\x80\x04(\x91.").unwrap_err();
        assert!(e.to_string().contains("opcode 0x91"), "{e}");
        // A frame longer than the file.
        let e = check(b"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00.").unwrap_err();
        assert!(e.to_string().contains("truncated pickle"), "{e}");
    }

    #[test]
    fn lengths_past_the_end_are_refused() {
        let e = check(b"\x80\x02X\xff\xff\xff\x7fabc.").unwrap_err();
        assert!(e.to_string().contains("truncated pickle"), "{e}");
        let e = check(SMALL.strip_suffix(b".").unwrap()).unwrap_err();
        assert!(e.to_string().contains("truncated pickle"), "{e}");
    }

    #[test]
    fn copies_of_copies_are_bounded() {
        // A list put in the memo, then [m, m] put back, 40 times: 2^40 objects from 200 bytes.
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            bomb.extend(b"h\x00h\x00\x86q\x00");
        }
        bomb.push(b'.');
        let e = check(&bomb).unwrap_err();
        assert!(e.to_string().contains("MiB of objects"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 1000));
        deep.extend(std::iter::repeat_n(b'a', 999));
        deep.push(b'.');
        let e = check(&deep).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }
}
