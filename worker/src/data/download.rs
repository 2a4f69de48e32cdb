//! Downloads of builtin datasets: every file has a pinned sha256 and a list of URLs tried in
//! order (a configured mirror first), each with retries. Bytes stream into a temporary file in
//! the cache directory while they are hashed; only a complete file with the right checksum is
//! renamed into place, so the cache never holds a partial or wrong file. A cached file is
//! re-hashed before use, and replaced if it does not match.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::data::hex;
use crate::error::{Error, Result};

/// Environment variable naming a mirror base URL, tried before the canonical URLs: a file
/// `F` of dataset `D` is fetched from `{mirror}/{D}/{F}`.
pub const MIRROR_ENV: &str = "TRAINFLEET_DATASET_MIRROR";

/// A file to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name, in the cache and at the end of each URL.
    pub name: &'static str,
    /// Pinned sha256, lower-case hex.
    pub sha256: &'static str,
}

/// How downloads behave.
#[derive(Debug, Clone)]
pub struct Downloader {
    /// Tried before a dataset's canonical base URLs.
    pub mirror: Option<String>,
    /// Attempts per URL for transient failures (connection errors, truncated transfers, 5xx).
    pub attempts: u32,
    /// Giving up on a connection attempt after this long.
    pub connect_timeout: Duration,
    /// Giving up on a stalled transfer after this long without data.
    pub read_timeout: Duration,
    /// First delay between attempts (doubles).
    pub retry_delay: Duration,
    /// Draw a progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for Downloader {
    fn default() -> Self {
        Self {
            mirror: std::env::var(MIRROR_ENV)
                .ok()
                .filter(|m| !m.trim().is_empty()),
            attempts: 3,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            retry_delay: Duration::from_millis(500),
            progress: true,
        }
    }
}

/// Why one attempt failed, and whether trying the same URL again could help.
struct Failure {
    message: String,
    retry: bool,
}

impl Downloader {
    /// The URLs tried for `file` of `dataset`, in order.
    pub fn urls(&self, dataset: &str, bases: &[&str], file: &RemoteFile) -> Vec<String> {
        let mut urls: Vec<String> = self
            .mirror
            .iter()
            .map(|m| format!("{}/{dataset}/{}", m.trim_end_matches('/'), file.name))
            .collect();
        urls.extend(
            bases
                .iter()
                .map(|b| format!("{}/{}", b.trim_end_matches('/'), file.name)),
        );
        urls
    }

    /// The verified local copy of `file` under `dir`, downloading it if it is missing or wrong.
    pub fn ensure(
        &self,
        dir: &Path,
        dataset: &str,
        bases: &[&str],
        file: &RemoteFile,
    ) -> Result<PathBuf> {
        let path = dir.join(file.name);
        if path.exists() {
            let (_, sha) = crate::data::file_sha256(&path)?;
            if sha == file.sha256 {
                return Ok(path);
            }
            tracing::warn!(file = %path.display(), expected = file.sha256, got = %sha, "cached file is corrupt; downloading it again");
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(self.connect_timeout))
            .timeout_per_read(Some(self.read_timeout))
            .build()
            .into();
        let mut tried = Vec::new();
        for url in self.urls(dataset, bases, file) {
            let mut delay = self.retry_delay;
            for attempt in 1..=self.attempts.max(1) {
                match self.fetch(&agent, &url, dir, &path, file) {
                    Ok(()) => return Ok(path),
                    Err(failure) => {
                        tracing::warn!(%url, attempt, error = %failure.message, "download failed");
                        let retry = failure.retry && attempt < self.attempts;
                        tried.push(format!("{url} (attempt {attempt}): {}", failure.message));
                        if !retry {
                            break;
                        }
                        std::thread::sleep(delay);
                        delay *= 2;
                    }
                }
            }
        }
        Err(Error::Download {
            file: file.name.to_owned(),
            message: format!("every source failed:\n  {}", tried.join("\n  ")),
        })
    }

    fn fetch(
        &self,
        agent: &ureq::Agent,
        url: &str,
        dir: &Path,
        dest: &Path,
        file: &RemoteFile,
    ) -> Result<(), Failure> {
        let failure = |message: String, retry: bool| Failure { message, retry };
        let mut response = agent.get(url).call().map_err(|e| match e {
            ureq::Error::StatusCode(code) => failure(format!("HTTP {code}"), code >= 500),
            other => failure(other.to_string(), true),
        })?;
        let expected_len = response.body().content_length();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", file.name))
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(|e| {
                failure(
                    format!("cannot create a temporary file in {}: {e}", dir.display()),
                    false,
                )
            })?;
        let bar = if self.progress {
            ProgressBar::new(expected_len.unwrap_or(0))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(file.name);
        let mut hasher = Sha256::new();
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut received: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.abandon();
                    return Err(failure(
                        format!(
                            "transfer broke after {received} bytes{}: {e}",
                            of(expected_len)
                        ),
                        true,
                    ));
                }
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| failure(format!("cannot write {}: {e}", dir.display()), false))?;
            received += n as u64;
            bar.set_position(received);
        }
        bar.finish_and_clear();
        if let Some(len) = expected_len
            && received != len
        {
            return Err(failure(
                format!("truncated transfer: received {received} of {len} bytes"),
                true,
            ));
        }
        let got = hex(&hasher.finalize());
        if got != file.sha256 {
            // Dropping `tmp` deletes it: nothing of the bad download is kept.
            let checksum = Error::Checksum {
                file: file.name.to_owned(),
                url: url.to_owned(),
                expected: file.sha256.to_owned(),
                got,
                action: "the download was deleted",
            };
            return Err(failure(checksum.to_string(), false));
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| failure(format!("cannot sync {}: {e}", dest.display()), false))?;
        tmp.persist(dest)
            .map_err(|e| failure(format!("cannot move into {}: {e}", dest.display()), false))?;
        tracing::info!(file = %dest.display(), bytes = received, %url, "downloaded and verified");
        Ok(())
    }
}

fn of(expected: Option<u64>) -> String {
    expected.map(|l| format!(" of {l}")).unwrap_or_default()
}
