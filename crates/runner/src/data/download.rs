//! `genzoo download`: the full MNIST / Fashion-MNIST in IDX format, checked by MD5, for users
//! who are online. Each file is written atomically; files already present and intact are kept.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};

use crate::data::IDX_FILES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    Mnist,
    FashionMnist,
}

impl Dataset {
    pub fn default_mirror(self) -> &'static str {
        match self {
            Dataset::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist/",
            Dataset::FashionMnist => "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        }
    }

    /// MD5 of the gzipped files, in the order of [`IDX_FILES`] (as torchvision checks them).
    pub fn md5s(self) -> [&'static str; 4] {
        match self {
            Dataset::Mnist => [
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ],
            Dataset::FashionMnist => [
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ],
        }
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", Md5::digest(bytes))
}

/// Downloads the four files of `dataset` from `mirror` into `out`. `expected` overrides the
/// checksums (None: the dataset's published ones).
pub fn download(
    dataset: Dataset,
    mirror: &str,
    out: &Path,
    expected: Option<[&str; 4]>,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let md5s = expected.unwrap_or(dataset.md5s());
    let base = if mirror.ends_with('/') {
        mirror.to_string()
    } else {
        format!("{mirror}/")
    };
    for (stem, md5) in IDX_FILES.iter().zip(md5s) {
        let name = format!("{stem}.gz");
        let target = out.join(&name);
        if let Ok(existing) = std::fs::read(&target) {
            if md5_hex(&existing) == md5 {
                eprintln!("{} is present and intact", target.display());
                continue;
            }
        }
        let url = format!("{base}{name}");
        eprintln!("downloading {url}");
        let bytes = fetch(&url)?;
        let found = md5_hex(&bytes);
        if found != md5 {
            bail!("{url}: MD5 {found} does not match the expected {md5}; the file was not saved");
        }
        layers::train::checkpoint::write_atomically(&target, &bytes)?;
    }
    eprintln!(
        "{} is ready: train with --data {}",
        out.display(),
        out.display()
    );
    Ok(())
}

fn fetch(url: &str) -> Result<Vec<u8>> {
    let response = ureq::get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => anyhow::anyhow!("{url}: the server answered HTTP {code}"),
        other => anyhow::anyhow!(
            "cannot reach {url} ({other}). Are you offline? Copy the four IDX files ({}) into the output directory by hand, or pass --mirror",
            IDX_FILES.join(", ")
        ),
    })?;
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut bytes)
        .with_context(|| format!("{url}: the download was cut off"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A loopback HTTP server that serves `files` for a bounded number of requests.
    fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let found = files.iter().find(|(n, _)| path.ends_with(n.as_str()));
                match found {
                    Some((_, body)) => {
                        write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .unwrap();
                        stream.write_all(body).unwrap();
                    }
                    None => {
                        write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                    }
                }
            }
        });
        format!("http://{addr}/")
    }

    fn shared_files() -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        IDX_FILES
            .iter()
            .map(|s| {
                (
                    format!("{s}.gz"),
                    std::fs::read(dir.join(format!("{s}.gz"))).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn downloads_checks_and_loads_local_files() -> Result<()> {
        let files = shared_files();
        let md5s: Vec<String> = files.iter().map(|(_, b)| md5_hex(b)).collect();
        let expected = [
            md5s[0].as_str(),
            md5s[1].as_str(),
            md5s[2].as_str(),
            md5s[3].as_str(),
        ];
        let url = serve(files, 4);
        let out = tempfile::tempdir()?;
        download(Dataset::Mnist, &url, out.path(), Some(expected))?;
        let test = crate::data::load_idx_dir(out.path(), crate::data::Split::Test)?;
        assert_eq!(test.len(), 997);
        // A second run finds every file intact and fetches nothing (the server is gone).
        download(
            Dataset::Mnist,
            "http://127.0.0.1:9/",
            out.path(),
            Some(expected),
        )?;
        Ok(())
    }

    #[test]
    fn checksum_mismatch_saves_nothing() -> Result<()> {
        let url = serve(shared_files(), 1);
        let out = tempfile::tempdir()?;
        let e = download(Dataset::Mnist, &url, out.path(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not match the expected f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(out.path())?.count(), 0);
        Ok(())
    }

    #[test]
    fn unreachable_and_missing_are_clear() -> Result<()> {
        let out = tempfile::tempdir()?;
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let e = download(
            Dataset::FashionMnist,
            "http://127.0.0.1:9/",
            out.path(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Are you offline?"), "{e}");
        let url = serve(vec![], 1);
        let e = download(Dataset::Mnist, &url, out.path(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP 404"), "{e}");
        Ok(())
    }
}
