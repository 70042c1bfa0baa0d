//! Weights from a model hub for users who are online: `hf:OWNER/REPO[@REVISION]/PATH.safetensors`
//! wherever a command takes a checkpoint, downloaded once into a cache and checked by SHA-256.
//!
//! The file comes from `{GENZOO_HUB_ENDPOINT}/{OWNER}/{REPO}/resolve/{REVISION}/{PATH}` (the
//! Hugging Face Hub by default, `HF_TOKEN` as a bearer token) and lies at
//! `{cache}/hub/OWNER/REPO/REVISION/PATH` beside a `PATH.sha256` sidecar (`sha256sum` format).
//! The hub's own answer names the file's SHA-256 (`X-Linked-Etag` for LFS files, before its
//! redirect to the storage host), and a download that does not match it is not kept. A cached
//! file is used without the network while its content matches its sidecar; with
//! `GENZOO_OFFLINE=1` or `HF_HUB_OFFLINE=1` the cache is all there is.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// What marks a checkpoint argument as a hub file rather than a path.
pub const PREFIX: &str = "hf:";
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Larger downloads are refused: every shipped model is under 20 MB, and a file a command reads
/// whole into memory should not fill the disk or the memory by mistake.
pub const MAX_BYTES: u64 = 2 << 30;
/// The hub answers with one redirect (to its storage host); a few more are tolerated.
const MAX_REDIRECTS: usize = 5;
const GRAMMAR: &str = "expected hf:OWNER/REPO[@REVISION]/PATH/IN/REPO.safetensors";

/// A file in a hub repository, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub owner: String,
    pub repo: String,
    /// A branch, tag or commit (`main` unless `@REVISION` follows the repository).
    pub revision: String,
    /// The file's path inside the repository, one entry per directory level.
    pub path: Vec<String>,
    /// The spec as written, for messages.
    text: String,
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Spec {
    /// Parses `hf:OWNER/REPO[@REVISION]/PATH`; every part is checked here, since each becomes
    /// a URL segment and a directory of the cache (no `..`, no separators, no empty parts).
    pub fn parse(text: &str) -> Result<Spec> {
        let bad = |why: String| anyhow!("bad hub file `{text}`: {why} ({GRAMMAR})");
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("it does not start with `{PREFIX}`")))?;
        let mut parts = rest.split('/');
        let owner = parts.next().unwrap_or_default();
        let repo_part = parts.next().unwrap_or_default();
        let path: Vec<String> = parts.map(str::to_string).collect();
        let (repo, revision) = repo_part.split_once('@').unwrap_or((repo_part, "main"));
        check_segment(owner, "owner").map_err(bad)?;
        check_segment(repo, "repository").map_err(bad)?;
        check_segment(revision, "revision").map_err(bad)?;
        if path.is_empty() {
            return Err(bad("no file after the repository".into()));
        }
        for segment in &path {
            check_segment(segment, "file path segment").map_err(bad)?;
        }
        if !path
            .last()
            .is_some_and(|name| name.ends_with(".safetensors"))
        {
            return Err(bad("genzoo reads .safetensors files only".into()));
        }
        Ok(Spec {
            owner: owner.into(),
            repo: repo.into(),
            revision: revision.into(),
            path,
            text: text.into(),
        })
    }

    pub fn url(&self, endpoint: &str) -> String {
        format!(
            "{}/{}/{}/resolve/{}/{}",
            endpoint.trim_end_matches('/'),
            self.owner,
            self.repo,
            self.revision,
            self.path.join("/")
        )
    }

    /// Where the file lies in the cache rooted at `cache`.
    pub fn cache_path(&self, cache: &Path) -> PathBuf {
        let dir = cache
            .join("hub")
            .join(&self.owner)
            .join(&self.repo)
            .join(&self.revision);
        self.path.iter().fold(dir, |p, segment| p.join(segment))
    }
}

/// Why `segment` cannot be part of a spec, if it cannot: the characters allowed are those of
/// Hugging Face repository names, so nothing needs escaping in a URL or a file name.
fn check_segment(segment: &str, what: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!("empty {what}"));
    }
    if segment == "." || segment == ".." {
        return Err(format!("`{segment}` is not allowed as {what}"));
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.+".contains(*c)))
    {
        Some(c) => Err(format!(
            "{what} `{segment}` has the character `{c}` (letters, digits, `-`, `_`, `.`, `+` only)"
        )),
        None => Ok(()),
    }
}

/// Where and how to fetch hub files.
pub struct Hub {
    pub endpoint: String,
    pub cache: PathBuf,
    pub token: Option<String>,
    /// Cache only: a missing file is an error rather than a download.
    pub offline: bool,
    pub max_bytes: u64,
}

impl Hub {
    /// The hub the environment describes (`GENZOO_HUB_ENDPOINT`, `HF_TOKEN`, `GENZOO_CACHE` /
    /// `XDG_CACHE_HOME` / `HOME`, `GENZOO_OFFLINE` / `HF_HUB_OFFLINE`).
    pub fn from_env() -> Result<Hub> {
        Hub::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Hub::from_env`] over any source of variables, so tests need not change the process's.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Hub> {
        let endpoint = var("GENZOO_HUB_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("GENZOO_HUB_ENDPOINT `{endpoint}` is not an http:// or https:// URL");
        }
        let cache = match (var("GENZOO_CACHE"), var("XDG_CACHE_HOME"), var("HOME")) {
            (Some(dir), _, _) => PathBuf::from(dir),
            (None, Some(xdg), _) => Path::new(&xdg).join("genzoo"),
            (None, None, Some(home)) => Path::new(&home).join(".cache/genzoo"),
            (None, None, None) => bail!(
                "no cache directory for hub files: set GENZOO_CACHE (or XDG_CACHE_HOME or HOME)"
            ),
        };
        let truthy = |name: &str| {
            var(name).is_some_and(|v| ["1", "true", "yes", "on"].contains(&&*v.to_lowercase()))
        };
        Ok(Hub {
            endpoint,
            cache,
            token: var("HF_TOKEN"),
            offline: truthy("GENZOO_OFFLINE") || truthy("HF_HUB_OFFLINE"),
            max_bytes: MAX_BYTES,
        })
    }

    /// The local copy of `spec`: the cached one while it is intact, else a fresh download.
    pub fn fetch(&self, spec: &Spec) -> Result<PathBuf> {
        let target = spec.cache_path(&self.cache);
        let damage = match cached(&target)? {
            Cached::Intact => return Ok(target),
            Cached::Absent => None,
            Cached::Damaged(why) => Some(why),
        };
        if self.offline {
            let state = damage.map_or("is not in the cache".into(), |why| {
                format!("has a damaged cached copy ({why})")
            });
            bail!(
                "{spec} {state} and GENZOO_OFFLINE / HF_HUB_OFFLINE asks for the cache only: \
                 unset it to download, or copy the file to {}",
                target.display()
            );
        }
        if let Some(why) = damage {
            eprintln!(
                "the cached {} {why}: downloading it again",
                target.display()
            );
            // Gone before the download, so a failed one leaves no damaged copy behind either.
            let _ = std::fs::remove_file(sidecar(&target));
            std::fs::remove_file(&target)
                .with_context(|| format!("cannot remove {}", target.display()))?;
        }
        self.download(spec, &target)?;
        Ok(target)
    }

    fn download(&self, spec: &Spec, target: &Path) -> Result<()> {
        let url = spec.url(&self.endpoint);
        eprintln!("downloading {spec} from {url}");
        let (response, expected) = self.request(spec, &url, target)?;
        // Only once the hub has the file, so a failed request leaves no empty directories.
        let dir = target.parent().expect("a cache path has a directory");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
        // A temporary file beside the target (so the rename is atomic), removed on drop: no
        // error leaves a partial file in the cache.
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let mut part = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let (found, bytes) = self.stream(spec, &url, response, part.as_file_mut())?;
        if let Some(expected) = expected.as_ref().filter(|e| **e != found) {
            bail!(
                "{spec} from {url}: SHA-256 {found} does not match the {expected} the hub \
                 published; the file was not saved"
            );
        }
        part.as_file()
            .sync_all()
            .with_context(|| format!("cannot sync {}", part.path().display()))?;
        part.persist(target).map_err(|e| {
            anyhow!(
                "cannot move the download to {}: {}",
                target.display(),
                e.error
            )
        })?;
        layers::train::checkpoint::write_atomically(
            &sidecar(target),
            format!("{found}  {}\n", spec.path.last().expect("parsed")).as_bytes(),
        )?;
        eprintln!(
            "saved {} ({bytes} bytes, sha256 {found}{})",
            target.display(),
            if expected.is_some() {
                ", as published"
            } else {
                "; the hub published no digest"
            }
        );
        Ok(())
    }

    /// The file's response, following redirects by hand: the digest is a header of the hub's
    /// own answer (its redirect to the storage host), which an automatic follow discards.
    fn request(
        &self,
        spec: &Spec,
        url: &str,
        target: &Path,
    ) -> Result<(ureq::http::Response<ureq::Body>, Option<String>)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut current = url.to_string();
        let mut expected = None;
        for hop in 0..=MAX_REDIRECTS {
            let mut request = agent.get(&current);
            // The token is for the hub, never for the storage host it redirects to.
            if let Some(token) = self.token.as_ref().filter(|_| same_origin(&current, url)) {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request
                .call()
                .map_err(|e| unreachable_error(spec, &current, &e, target))?;
            if hop == 0 {
                expected = published_sha256(response.headers());
            }
            match response.status().as_u16() {
                200..=299 => return Ok((response, expected)),
                300..=399 => current = redirect_target(&current, &response)?,
                code => return Err(status_error(spec, &current, code)),
            }
        }
        bail!("could not download {spec} from {url}: more than {MAX_REDIRECTS} redirects")
    }

    /// Writes the body to `file` while hashing it; at most `max_bytes`, announced or not.
    fn stream(
        &self,
        spec: &Spec,
        url: &str,
        response: ureq::http::Response<ureq::Body>,
        file: &mut File,
    ) -> Result<(String, u64)> {
        let cap = self.max_bytes;
        let too_large = |size: String| {
            anyhow!("{spec} from {url} is {size} bytes, more than the {cap}-byte limit; not saved")
        };
        let announced = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = announced.filter(|&l| l > cap) {
            return Err(too_large(length.to_string()));
        }
        let mut sink = HashingWriter {
            file,
            hasher: Sha256::new(),
        };
        // One byte past the cap tells a file at the cap from a larger one.
        let mut body = response.into_body().into_reader().take(cap + 1);
        let bytes = std::io::copy(&mut body, &mut sink)
            .with_context(|| format!("{spec} from {url}: the download was cut off"))?;
        if bytes > cap {
            return Err(too_large("over".into()));
        }
        Ok((format!("{:x}", sink.hasher.finalize()), bytes))
    }
}

/// Whether `path` names a file on the hub (an `hf:` spec) rather than a local file.
pub fn is_spec(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with(PREFIX))
}

/// A file's local path: `path` itself, or the cached download of an `hf:` spec. The one place
/// every command that reads a checkpoint or weights goes through.
pub fn local_path(path: &Path) -> Result<Cow<'_, Path>> {
    match path.to_str().filter(|_| is_spec(path)) {
        None => Ok(Cow::Borrowed(path)),
        Some(text) => {
            let spec = Spec::parse(text)?;
            Ok(Cow::Owned(Hub::from_env()?.fetch(&spec)?))
        }
    }
}

enum Cached {
    Intact,
    Absent,
    /// Present, but its content does not match its sidecar (or it has none): why.
    Damaged(String),
}

fn cached(target: &Path) -> Result<Cached> {
    if !target.is_file() {
        return Ok(Cached::Absent);
    }
    let recorded = std::fs::read_to_string(sidecar(target)).ok();
    let Some(recorded) = recorded.as_deref().and_then(|s| s.get(..64)) else {
        return Ok(Cached::Damaged("has no recorded SHA-256".into()));
    };
    let found = file_sha256(target)?;
    Ok(if found == recorded {
        Cached::Intact
    } else {
        Cached::Damaged(format!(
            "does not match its recorded SHA-256 {recorded} (found {found})"
        ))
    })
}

/// `FILE.sha256` beside `FILE`.
pub fn sidecar(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    target.with_file_name(name)
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The SHA-256 the hub's answer names: `X-Linked-Etag` (an LFS file's sha256, sent with the
/// redirect to storage), else `ETag`, when either is 64 hex digits (a plain git file's ETag is
/// its 40-digit blob id, which says nothing about SHA-256).
fn published_sha256(headers: &ureq::http::HeaderMap) -> Option<String> {
    ["x-linked-etag", "etag"].iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?;
        let value = value.trim().trim_start_matches("W/").trim_matches('"');
        let is_sha256 = value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit());
        is_sha256.then(|| value.to_ascii_lowercase())
    })
}

fn redirect_target(current: &str, response: &ureq::http::Response<ureq::Body>) -> Result<String> {
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .with_context(|| format!("{current} redirected without a Location"))?;
    Ok(if location.contains("://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(current))
    } else {
        let dir = current.rsplit_once('/').map_or(current, |(d, _)| d);
        format!("{dir}/{location}")
    })
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a) == origin(b)
}

fn unreachable_error(spec: &Spec, url: &str, e: &ureq::Error, target: &Path) -> anyhow::Error {
    anyhow!(
        "could not download {spec} from {url}: {e} (offline? set GENZOO_HUB_ENDPOINT or copy \
         the file to {})",
        target.display()
    )
}

fn status_error(spec: &Spec, url: &str, code: u16) -> anyhow::Error {
    let repo = format!("{}/{}", spec.owner, spec.repo);
    let file = spec.path.join("/");
    match code {
        404 => anyhow!(
            "{spec}: the hub has no file `{file}` at revision `{}` of {repo} ({url}: HTTP 404)",
            spec.revision
        ),
        401 | 403 => anyhow!(
            "{spec}: {url} answered HTTP {code}: {repo} may be private or gated; set HF_TOKEN \
             to a token with access to it"
        ),
        _ => anyhow!("could not download {spec} from {url}: the server answered HTTP {code}"),
    }
}

struct HashingWriter<'a> {
    file: &'a mut File,
    hasher: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// One answer of the test server.
    #[derive(Clone)]
    struct Reply {
        status: &'static str,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        /// Whether to announce the body's length (else it ends when the connection closes).
        length: bool,
    }

    fn ok(body: &[u8], headers: Vec<(&'static str, String)>) -> Reply {
        Reply {
            status: "200 OK",
            headers,
            body: body.to_vec(),
            length: true,
        }
    }

    fn status(status: &'static str) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: vec![],
            length: true,
        }
    }

    /// The requests a server saw: path and Authorization header.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A loopback HTTP server answering `routes` by exact path (404 otherwise), for at most 8
    /// requests; returns its endpoint and what it saw.
    fn serve(routes: Vec<(&'static str, Reply)>) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let mut stream = stream.unwrap();
                let (path, auth) = read_request(&mut stream);
                log.lock().unwrap().push((path.clone(), auth));
                let reply = routes
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map_or_else(|| status("404 Not Found"), |(_, r)| r.clone());
                let mut head = format!("HTTP/1.1 {}\r\nConnection: close\r\n", reply.status);
                for (name, value) in &reply.headers {
                    head += &format!("{name}: {value}\r\n");
                }
                if reply.length {
                    head += &format!("Content-Length: {}\r\n", reply.body.len());
                }
                let _ = stream.write_all(format!("{head}\r\n").as_bytes());
                let _ = stream.write_all(&reply.body);
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn read_request(stream: &mut std::net::TcpStream) -> (String, Option<String>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut auth = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("authorization") {
                    auth = Some(value.trim().to_string());
                }
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        (path, auth)
    }

    fn hub(endpoint: &str, cache: &Path) -> Hub {
        Hub {
            endpoint: endpoint.into(),
            cache: cache.into(),
            token: None,
            offline: false,
            max_bytes: MAX_BYTES,
        }
    }

    /// Every file under `dir`, at any depth.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return vec![];
        };
        entries
            .flat_map(|e| {
                let path = e.unwrap().path();
                if path.is_dir() {
                    files_under(&path)
                } else {
                    vec![path]
                }
            })
            .collect()
    }

    const FILE: &str = "/owner/repo/resolve/main/sub/w.safetensors";
    const SPEC: &str = "hf:owner/repo/sub/w.safetensors";
    const BODY: &[u8] = b"not really safetensors, but bytes to hash";

    fn quoted_sha(bytes: &[u8]) -> String {
        format!("\"{}\"", sha256_hex(bytes))
    }

    #[test]
    fn downloads_once_then_uses_the_cache() -> Result<()> {
        let (url, seen) = serve(vec![(FILE, ok(BODY, vec![("ETag", quoted_sha(BODY))]))]);
        let cache = tempfile::tempdir()?;
        let mut hub = hub(&url, cache.path());
        hub.token = Some("secret".into());
        let spec = Spec::parse(SPEC)?;
        let path = hub.fetch(&spec)?;
        assert_eq!(
            path,
            cache.path().join("hub/owner/repo/main/sub/w.safetensors")
        );
        assert_eq!(std::fs::read(&path)?, BODY);
        let recorded = std::fs::read_to_string(sidecar(&path))?;
        assert_eq!(recorded, format!("{}  w.safetensors\n", sha256_hex(BODY)));
        assert_eq!(
            *seen.lock().unwrap(),
            [(FILE.to_string(), Some("Bearer secret".to_string()))]
        );
        // The second use, and an offline one, read the cache: the server sees nothing more.
        assert_eq!(hub.fetch(&spec)?, path);
        hub.offline = true;
        assert_eq!(hub.fetch(&spec)?, path);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(files_under(cache.path()).len(), 2);
        Ok(())
    }

    /// Hugging Face's way: the hub redirects to its storage host with the LFS sha256 in
    /// `X-Linked-Etag`; the storage host's own ETag (another 64-digit hash) is not the sha256.
    #[test]
    fn follows_the_hub_redirect_and_checks_its_linked_etag() -> Result<()> {
        let redirect = Reply {
            status: "302 Found",
            headers: vec![
                ("X-Linked-Etag", quoted_sha(BODY)),
                ("Location", "/storage/blob?sig=1".into()),
            ],
            body: vec![],
            length: true,
        };
        let storage = ok(BODY, vec![("ETag", format!("\"{}\"", "ab".repeat(32)))]);
        let (url, seen) = serve(vec![
            ("/owner/repo/resolve/v2/w.safetensors", redirect),
            ("/storage/blob?sig=1", storage),
        ]);
        let cache = tempfile::tempdir()?;
        let path =
            hub(&url, cache.path()).fetch(&Spec::parse("hf:owner/repo@v2/w.safetensors")?)?;
        assert_eq!(std::fs::read(&path)?, BODY);
        assert_eq!(seen.lock().unwrap().len(), 2);
        Ok(())
    }

    #[test]
    fn checksum_mismatch_saves_nothing() -> Result<()> {
        let published = sha256_hex(b"other bytes");
        let headers = vec![("X-Linked-Etag", format!("\"{published}\""))];
        let (url, _) = serve(vec![(FILE, ok(BODY, headers))]);
        let cache = tempfile::tempdir()?;
        let e = hub(&url, cache.path())
            .fetch(&Spec::parse(SPEC)?)
            .unwrap_err()
            .to_string();
        let found = sha256_hex(BODY);
        assert!(e.starts_with(SPEC), "{e}");
        assert!(
            e.contains(&format!("SHA-256 {found} does not match the {published}")),
            "{e}"
        );
        assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
        Ok(())
    }

    #[test]
    fn missing_and_forbidden_files_are_clear() -> Result<()> {
        let (url, _) = serve(vec![(
            "/owner/private/resolve/main/w.safetensors",
            status("401 Unauthorized"),
        )]);
        let cache = tempfile::tempdir()?;
        let hub = hub(&url, cache.path());
        let e = hub
            .fetch(&Spec::parse("hf:owner/repo@v1/sub/w.safetensors")?)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the hub has no file `sub/w.safetensors` at revision `v1` of owner/repo"),
            "{e}"
        );
        assert!(e.contains("HTTP 404"), "{e}");
        let e = hub
            .fetch(&Spec::parse("hf:owner/private/w.safetensors")?)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP 401") && e.contains("set HF_TOKEN"), "{e}");
        assert_eq!(
            std::fs::read_dir(cache.path())?.count(),
            0,
            "nothing, not even a directory"
        );
        Ok(())
    }

    #[test]
    fn connection_refused_is_one_clear_line() -> Result<()> {
        // A port that was just free: nothing listens there once the listener is dropped.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let cache = tempfile::tempdir()?;
        let endpoint = format!("http://{addr}");
        let e = hub(&endpoint, cache.path())
            .fetch(&Spec::parse(SPEC)?)
            .unwrap_err()
            .to_string();
        let target = cache.path().join("hub/owner/repo/main/sub/w.safetensors");
        let expected = format!("could not download {SPEC} from {endpoint}{FILE}: ");
        assert!(e.starts_with(&expected), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
        assert!(
            e.ends_with(&format!(
                "(offline? set GENZOO_HUB_ENDPOINT or copy the file to {})",
                target.display()
            )),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(
            std::fs::read_dir(cache.path())?.count(),
            0,
            "nothing, not even a directory"
        );
        Ok(())
    }

    #[test]
    fn a_damaged_cached_file_is_downloaded_again() -> Result<()> {
        let reply = ok(BODY, vec![("ETag", quoted_sha(BODY))]);
        let (url, seen) = serve(vec![(FILE, reply)]);
        let cache = tempfile::tempdir()?;
        let mut hub = hub(&url, cache.path());
        let spec = Spec::parse(SPEC)?;
        let path = hub.fetch(&spec)?;
        std::fs::write(&path, b"flipped bits")?;
        // Offline, the damage is an error rather than the damaged file.
        hub.offline = true;
        let e = hub.fetch(&spec).unwrap_err().to_string();
        assert!(e.contains("has a damaged cached copy"), "{e}");
        hub.offline = false;
        assert_eq!(hub.fetch(&spec)?, path);
        assert_eq!(std::fs::read(&path)?, BODY);
        assert_eq!(seen.lock().unwrap().len(), 2);
        Ok(())
    }

    #[test]
    fn offline_without_a_cached_copy_is_an_error() -> Result<()> {
        let cache = tempfile::tempdir()?;
        let mut hub = hub("http://127.0.0.1:9", cache.path());
        hub.offline = true;
        let e = hub.fetch(&Spec::parse(SPEC)?).unwrap_err().to_string();
        assert!(e.contains("is not in the cache"), "{e}");
        assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
        Ok(())
    }

    #[test]
    fn downloads_past_the_size_cap_are_refused() -> Result<()> {
        let big = vec![7u8; 100];
        let unannounced = Reply {
            length: false,
            ..ok(&big, vec![])
        };
        let (url, _) = serve(vec![
            (FILE, ok(&big, vec![])),
            ("/owner/repo/resolve/main/quiet.safetensors", unannounced),
        ]);
        let cache = tempfile::tempdir()?;
        let mut hub = hub(&url, cache.path());
        hub.max_bytes = 99;
        let e = hub.fetch(&Spec::parse(SPEC)?).unwrap_err().to_string();
        assert!(
            e.contains("is 100 bytes, more than the 99-byte limit"),
            "{e}"
        );
        let quiet = Spec::parse("hf:owner/repo/quiet.safetensors")?;
        let e = hub.fetch(&quiet).unwrap_err().to_string();
        assert!(
            e.contains("is over bytes, more than the 99-byte limit"),
            "{e}"
        );
        assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
        Ok(())
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, why) in [
            ("hf:owner/repo", "no file after the repository"),
            ("hf:owner", "empty repository"),
            ("hf:/repo/w.safetensors", "empty owner"),
            ("hf:owner/repo@/w.safetensors", "empty revision"),
            ("hf:owner/repo/../w.safetensors", "`..` is not allowed"),
            ("hf:owner/repo/a//w.safetensors", "empty file path segment"),
            ("hf:owner/repo/w.pth", ".safetensors files only"),
            (
                "hf:own er/repo/w.safetensors",
                "owner `own er` has the character ` `",
            ),
            ("hf:owner/repo@a@b/w.safetensors", "revision `a@b`"),
        ] {
            let e = Spec::parse(spec).unwrap_err().to_string();
            assert!(e.starts_with(&format!("bad hub file `{spec}`")), "{e}");
            assert!(e.contains(why) && e.contains(GRAMMAR), "{spec}: {e}");
        }
        let spec = Spec::parse("hf:o/r@v1.0/a/b.safetensors").unwrap();
        assert_eq!(
            (&*spec.owner, &*spec.repo, &*spec.revision),
            ("o", "r", "v1.0")
        );
        assert_eq!(
            spec.url("http://h/"),
            "http://h/o/r/resolve/v1.0/a/b.safetensors"
        );
    }

    #[test]
    fn the_environment_names_the_endpoint_cache_token_and_offline() -> Result<()> {
        let vars = |pairs: &'static [(&str, &str)]| {
            move |name: &str| {
                let found = pairs.iter().find(|(n, _)| *n == name);
                found.map(|(_, v)| v.to_string())
            }
        };
        let hub = Hub::from_vars(vars(&[("HOME", "/h")]))?;
        assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(hub.cache, Path::new("/h/.cache/genzoo"));
        assert!(!hub.offline && hub.token.is_none());
        let hub = Hub::from_vars(vars(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]))?;
        assert_eq!(hub.cache, Path::new("/x/genzoo"));
        let hub = Hub::from_vars(vars(&[
            ("XDG_CACHE_HOME", "/x"),
            ("GENZOO_CACHE", "/g"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "t"),
            ("GENZOO_HUB_ENDPOINT", "http://local:8080"),
        ]))?;
        assert_eq!(hub.cache, Path::new("/g"));
        assert!(hub.offline);
        assert_eq!(
            (hub.token.as_deref(), &*hub.endpoint),
            (Some("t"), "http://local:8080")
        );
        let e = Hub::from_vars(vars(&[("HOME", "/h"), ("GENZOO_HUB_ENDPOINT", "local")]));
        assert!(e.is_err());
        assert!(Hub::from_vars(vars(&[])).is_err());
        Ok(())
    }

    #[test]
    fn plain_paths_are_left_alone() -> Result<()> {
        let path = Path::new("models/vae.safetensors");
        assert!(matches!(local_path(path)?, Cow::Borrowed(p) if p == path));
        Ok(())
    }
}
