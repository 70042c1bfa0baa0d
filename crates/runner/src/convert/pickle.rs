//! A walk over a pickle's opcodes before Candle's parser (`candle_core::pickle::Stack`) sees
//! it, because that parser trusts its input: `LONG1` of more than 8 bytes shifts past 64 bits
//! (a panic in debug builds, a wrong number in release), `BINUNICODE` allocates whatever length
//! the file claims, memoised objects are deep-copied on every `BINGET` (a few bytes can ask for
//! gigabytes), and its objects are cloned and dropped recursively (deep nesting overflows the
//! stack). The walk mirrors what the parser will build, in sizes only, and refuses a pickle
//! whose lengths exceed the bytes there are or whose objects would outgrow [`budget`] or
//! [`MAX_DEPTH`].

use std::borrow::Cow;
use std::collections::HashMap;

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
#[derive(Debug, Clone, Copy)]
struct Item {
    /// Bytes it takes with everything inside it.
    bytes: u64,
    /// 1 for a leaf.
    depth: u32,
    /// The parser's `MARK`, which `TUPLE`, `APPENDS`, `SETITEMS` look back to.
    mark: bool,
}

impl Item {
    fn leaf(text: usize) -> Self {
        Self {
            bytes: OBJECT_BYTES + text as u64,
            depth: 1,
            mark: false,
        }
    }

    fn holding(items: &[Item]) -> Self {
        Self {
            bytes: items
                .iter()
                .fold(OBJECT_BYTES, |sum, i| sum.saturating_add(i.bytes)),
            depth: 1 + items.iter().map(|i| i.depth).max().unwrap_or(0),
            mark: false,
        }
    }
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
    /// `LONG1` opcodes of more than 8 bytes, read as `None` instead (see [`check`]).
    too_long: Vec<std::ops::Range<usize>>,
}

/// Checks the pickle at the front of `bytes` and returns it as Candle's parser may read it,
/// with the number of bytes it spans (its `STOP` included). Integers of more than 8 bytes,
/// which no tensor's size, offset or stride can be, are replaced by `None`, so that a
/// checkpoint carrying one elsewhere (a seed, a hash) is still read.
pub(super) fn check(bytes: &[u8]) -> Result<(Cow<'_, [u8]>, usize)> {
    let mut walk = Walk {
        bytes,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        spent: 0,
        budget: budget(bytes.len()),
        too_long: Vec::new(),
    };
    while !walk.step()? {}
    let end = walk.at;
    if walk.too_long.is_empty() {
        return Ok((Cow::Borrowed(&bytes[..end]), end));
    }
    let mut fixed = Vec::with_capacity(end);
    let mut from = 0;
    for long in &walk.too_long {
        fixed.extend_from_slice(&bytes[from..long.start]);
        fixed.push(b'N');
        from = long.end;
    }
    fixed.extend_from_slice(&bytes[from..end]);
    Ok((Cow::Owned(fixed), end))
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
                self.take(len)?;
                self.push(Item::leaf(len))?;
            }
            0x8a => {
                let n = self.u8()? as usize;
                self.take(n)?;
                if n > 8 {
                    self.too_long.push(at..self.at);
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
                let top = *self
                    .stack
                    .last()
                    .context("damaged pickle: BINPUT on an empty stack")?;
                // The parser stores a copy.
                self.spent = self.spent.saturating_add(top.bytes);
                ensure!(self.spent <= self.budget, "its pickle copies too much");
                self.memo.insert(id, top);
            }
            b'h' | b'j' => {
                let id = if op == b'h' {
                    self.u8()? as u32
                } else {
                    self.u32()?
                };
                let item = *self
                    .memo
                    .get(&id)
                    .with_context(|| format!("damaged pickle: BINGET of {id}, never put"))?;
                self.push(item)?;
            }
            other => bail!(
                "unknown pickle opcode 0x{other:02x} at byte {at}: genzoo reads pickle protocol 2, \
                 torch.save's default; a file saved with a higher pickle_protocol, or a damaged \
                 one, cannot be read"
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
