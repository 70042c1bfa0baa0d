//! A seeded mutation fuzzer for the loaders: valid seed inputs, mutated (bit flips, interesting
//! bytes and little-endian lengths, truncation, duplication, insertion, numbers in text made
//! huge), each fed to a real loader on a thread of its own. An input fails the run when the
//! loader panics, runs past a deadline, allocates more than its target allows, or fails with an
//! error that does not name the file; the input is saved under the test's target directory
//! and the failure names the file to replay it with (`GENZOO_FUZZ_REPLAY=PATH`).
//!
//! `GENZOO_FUZZ_ITERATIONS` sets the inputs per target (the default fits CI),
//! `GENZOO_FUZZ_SEED` the seed, `GENZOO_FUZZ_TIMEOUT_S` the deadline per input.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use layers::Rng;

/// The system allocator, counting the bytes live and their peak, so that a target can require
/// that no input makes its loader allocate more than the input could justify.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// One allocation larger than this aborts the process (after saving the input): it would be
/// sized by a header field, and letting it through could take the machine's memory.
const HARD_CAP: usize = 1 << 30;

/// The input being fed, for the allocator to save before it aborts.
static CURRENT: Mutex<Option<(String, Vec<u8>)>> = Mutex::new(None);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP {
            refuse(layout.size());
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP {
            refuse(layout.size());
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HARD_CAP {
            refuse(new_size);
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count(new_size);
        }
        p
    }
}

fn count(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Saves the current input and aborts: an allocation past [`HARD_CAP`] is a failure, and an
/// abort (not a panic, which an allocator must not raise) is the one safe way out of it.
fn refuse(size: usize) -> ! {
    let saved = CURRENT
        .try_lock()
        .ok()
        .and_then(|c| c.as_ref().map(|(name, input)| save_failure(name, input)));
    eprintln!(
        "fuzz: an allocation of {size} bytes (over {HARD_CAP}); input saved to {}",
        saved.map_or("<unknown>".into(), |p| p.display().to_string())
    );
    std::process::abort();
}

/// Where failing inputs are kept: `target/tmp/fuzz-failures/`.
fn failure_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures")
}

fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{:016x}.bin", fnv(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// FNV-1a: a stable name for a saved input.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The loader under test: writes an input where it reads it, loads it and uses what it loaded
/// as the program would. Errors must contain [`Target::names`].
pub type Loader = Arc<dyn Fn(&[u8]) -> anyhow::Result<()> + Send + Sync>;

/// A format-aware mutation (a shape in a header made huge), tried beside the generic ones.
pub type Structured = Box<dyn Fn(&mut Rng, &[u8]) -> Vec<u8>>;

/// One loader and its seed inputs.
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    pub structured: Option<Structured>,
    pub load: Loader,
    /// What every error must contain: the file (or folder) the loader read.
    pub names: String,
    /// The most bytes the loader may allocate for any one input (at its peak).
    pub memory_limit: usize,
    /// Inputs per run when `GENZOO_FUZZ_ITERATIONS` is not set.
    pub default_iterations: usize,
}

/// What a run tried.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: usize,
    pub errors: usize,
    pub seconds: f64,
}

fn env_number(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// The fuzz targets share the allocation counters, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Fuzzes the target `make` builds: its seeds as they are, then mutants of them; panics on
/// the first failure. The target is built under the lock too, so that building one target's
/// seeds never counts as another's loader allocating.
pub fn fuzz(make: impl FnOnce() -> Target) -> Report {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = make();
    if let Ok(replay) = std::env::var("GENZOO_FUZZ_REPLAY") {
        return replay_one(&target, &replay);
    }
    let iterations = env_number("GENZOO_FUZZ_ITERATIONS")
        .map_or(target.default_iterations, |n| n as usize)
        .max(target.seeds.len());
    let seed = env_number("GENZOO_FUZZ_SEED").unwrap_or(0);
    let mut rng = Rng::new(seed ^ fnv(target.name.as_bytes()));
    let start = Instant::now();
    let mut report = Report::default();
    for i in 0..iterations {
        let input = match target.seeds.get(i) {
            Some(s) => s.clone(),
            None => mutant(&target, &mut rng),
        };
        report.errors += usize::from(check(&target, input));
        report.inputs += 1;
    }
    report.seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {}: {} inputs ({} refused with an error) in {:.1} s",
        target.name, report.inputs, report.errors, report.seconds
    );
    report
}

/// Runs the one saved input `path` if it belongs to `target`.
fn replay_one(target: &Target, path: &str) -> Report {
    let file = std::path::Path::new(path);
    let ours = file
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{}-", target.name)));
    if !ours {
        return Report::default();
    }
    let input = std::fs::read(file).expect("the input to replay");
    let errors = usize::from(check(target, input));
    Report {
        inputs: 1,
        errors,
        seconds: 0.0,
    }
}

/// A mutant of a random seed: the structured mutation a third of the time, then 1-4 generic
/// mutations (or none, after a structured one), capped at 1 MiB so a run stays fast.
fn mutant(target: &Target, rng: &mut Rng) -> Vec<u8> {
    let mut input = target.seeds[rng.below(target.seeds.len())].clone();
    let structured = target.structured.as_ref().filter(|_| rng.below(3) == 0);
    let mut rounds = 1 + rng.below(4);
    if let Some(s) = structured {
        input = s(rng, &input);
        rounds = rng.below(2);
    }
    for _ in 0..rounds {
        mutate(rng, &mut input);
    }
    input.truncate(1 << 20);
    input
}

/// Feeds one input to the loader on a thread of its own, within the deadline; returns whether
/// the loader refused it with an error.
fn check(target: &Target, input: Vec<u8>) -> bool {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((target.name.into(), input.clone()));
    let timeout = Duration::from_secs(env_number("GENZOO_FUZZ_TIMEOUT_S").unwrap_or(20));
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    let load = target.load.clone();
    let data = input.clone();
    let worker = std::thread::spawn(move || {
        let result = load(&data);
        // The peak is read before the error is formatted: with RUST_BACKTRACE set, Candle's
        // errors carry a backtrace whose symbols take ~100 MB to resolve, which is not the
        // loader's doing.
        let peak = PEAK.load(Ordering::Relaxed);
        let _ = tx.send((result.map_err(|e| format!("{e:#}")), peak));
    });
    let (result, peak) = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => fail(
            target,
            &input,
            &format!("did not finish in {} s (a hang?)", timeout.as_secs()),
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let why = panic_message(worker.join().err());
            fail(target, &input, &format!("panicked: {why}"))
        }
    };
    let _ = worker.join();
    let grown = peak.saturating_sub(baseline);
    if grown > target.memory_limit {
        fail(
            target,
            &input,
            &format!(
                "allocated {grown} bytes at its peak (the limit is {})",
                target.memory_limit
            ),
        );
    }
    match result {
        Ok(()) => false,
        Err(e) if e.contains(&target.names) => true,
        Err(e) => fail(
            target,
            &input,
            &format!(
                "failed with an error that does not name {}: {e}",
                target.names
            ),
        ),
    }
}

fn panic_message(payload: Option<Box<dyn std::any::Any + Send>>) -> String {
    let Some(p) = payload else {
        return "the loader's thread ended without an answer".into();
    };
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[track_caller]
fn fail(target: &Target, input: &[u8], what: &str) -> ! {
    let path = save_failure(target.name, input);
    panic!(
        "fuzz {}: an input of {} bytes {what}\n  saved to {} (replay: GENZOO_FUZZ_REPLAY={} cargo test --test fuzz_loaders {})",
        target.name,
        input.len(),
        path.display(),
        path.display(),
        target.name.replace('-', "_"),
    );
}

/// Bytes that break parsers: zero, all ones, the sign bits, text delimiters.
const BYTES: [u8; 14] = [
    0, 0xff, 0x7f, 0x80, 1, b'9', b'-', b'"', b'\n', b',', b'{', b'}', b'.', b' ',
];

/// Lengths and counts that break sizes: zero, the top of each width, past 32 bits.
const LENGTHS: [u64; 10] = [
    0,
    1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 7,
];

/// Numbers as text that break parsers and sizes.
const NUMERALS: [&str; 12] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "99999999999999999999999",
    "1e308",
    "1e-320",
    "NaN",
    "2147483648",
    "65536",
];

/// One generic mutation of `input`, in place.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    let len = input.len();
    let at = |rng: &mut Rng| rng.below(len.max(1));
    match rng.below(11) {
        0 if len > 0 => {
            let i = at(rng);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = at(rng);
            input[i] = BYTES[rng.below(BYTES.len())];
        }
        2 if len >= 8 => {
            let i = rng.below(len - 7);
            let v = LENGTHS[rng.below(LENGTHS.len())];
            input[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        3 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = LENGTHS[rng.below(LENGTHS.len())] as u32;
            input[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
        4 => input.truncate(at(rng)),
        5 if len > 0 => {
            let (a, b) = span(rng, len);
            let chunk = input[a..b].to_vec();
            let to = at(rng);
            input.splice(to..to, chunk);
        }
        6 => {
            let to = at(rng).min(len);
            let chunk: Vec<u8> = (0..1 + rng.below(16))
                .map(|_| rng.next_u64() as u8)
                .collect();
            input.splice(to..to, chunk);
        }
        7 if len > 0 => {
            let (a, b) = span(rng, len);
            input.drain(a..b);
        }
        8 => replace_number(rng, input),
        9 => shuffle_lines(rng, input),
        _ => {
            let to = at(rng).min(len);
            let n = NUMERALS[rng.below(NUMERALS.len())];
            input.splice(to..to, n.bytes());
        }
    }
}

/// A random range `a..b` within `0..len` (at most 64 bytes).
fn span(rng: &mut Rng, len: usize) -> (usize, usize) {
    let a = rng.below(len);
    let b = (a + 1 + rng.below(64)).min(len);
    (a, b)
}

/// Replaces a run of digits in text with one of [`NUMERALS`]: counts, sizes and coordinates
/// made huge, negative or not numbers.
pub fn replace_number(rng: &mut Rng, input: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..input.len())
        .filter(|&i| input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let a = starts[rng.below(starts.len())];
    let b = (a..input.len())
        .find(|&i| !input[i].is_ascii_digit())
        .unwrap_or(input.len());
    let n = NUMERALS[rng.below(NUMERALS.len())];
    input.splice(a..b, n.bytes());
}

/// Duplicates, drops or swaps whole lines of a text input.
fn shuffle_lines(rng: &mut Rng, input: &mut Vec<u8>) {
    let mut lines: Vec<Vec<u8>> = input.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    let (i, j) = (rng.below(n), rng.below(n));
    match rng.below(3) {
        0 => {
            let line = lines[i].clone();
            lines.insert(j, line);
        }
        1 if n > 1 => {
            lines.remove(i);
        }
        _ => lines.swap(i, j),
    }
    *input = lines.join(&b'\n');
}

/// A number from [`LENGTHS`] (for structured mutations).
pub fn interesting_length(rng: &mut Rng) -> u64 {
    LENGTHS[rng.below(LENGTHS.len())]
}

/// A numeral from [`NUMERALS`] (for structured mutations).
pub fn interesting_numeral(rng: &mut Rng) -> &'static str {
    NUMERALS[rng.below(NUMERALS.len())]
}
