//! File inputs (downloaded from `http(s)://` and `data:` URLs into the prediction's temp dir) and
//! file outputs (returned as `data:` URIs, or uploaded with `PUT` when `--upload-url` is set).

use base64::Engine;
use futures::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use crate::validate::FileShape;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{field}: {msg}")]
    Input { field: String, msg: String },
    #[error("failed to upload output file {name}: {msg}")]
    Upload { name: String, msg: String },
    #[error("failed to read output file {path}: {msg}")]
    Output { path: String, msg: String },
}

/// Limits on fetched inputs, so a slow or huge URL cannot hold a slot or fill the disk.
#[derive(Debug, Clone)]
pub struct FileLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl FileLimits {
    /// `COG_INPUT_MAX_BYTES` (default 1 GiB) and `COG_INPUT_TIMEOUT` seconds (default 300).
    pub fn from_env() -> Self {
        let max_bytes = std::env::var("COG_INPUT_MAX_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 30);
        let timeout = std::env::var("COG_INPUT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(300));
        Self { max_bytes, timeout }
    }
}

/// The usual extension for a MIME type (mime_guess's first choice is sometimes an odd one).
pub fn ext_for_mime(mime: &str) -> Option<&'static str> {
    Some(match mime {
        "text/plain" => "txt",
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "application/json" => "json",
        "application/octet-stream" => return None,
        other => {
            return mime_guess::get_mime_extensions_str(other).and_then(|e| e.first().copied())
        }
    })
}

/// The schemes a file input may use; anything else is a 422 before a slot is taken.
pub fn check_input_url(url: &str) -> Result<(), String> {
    if url.starts_with("data:") {
        return parse_data_url(url).map(|_| ());
    }
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "unsupported URL scheme {:?}: file inputs must be http://, https:// or data: URLs",
            u.scheme()
        )),
        Err(e) => Err(format!("{url:?} is not a valid URL: {e}")),
    }
}

struct DataUrl {
    mime: String,
    bytes: Vec<u8>,
}

fn parse_data_url(url: &str) -> Result<DataUrl, String> {
    let rest = url.strip_prefix("data:").ok_or("not a data URL")?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or("malformed data URL: no ',' before the data")?;
    let (mime, base64) = match meta.strip_suffix(";base64") {
        Some(m) => (m, true),
        None => (meta, false),
    };
    let mime = mime.split(';').next().unwrap_or_default();
    let mime = if mime.is_empty() {
        "text/plain".to_string()
    } else {
        mime.to_string()
    };
    let bytes = if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("malformed data URL: invalid base64 ({e})"))?
    } else {
        percent_decode(data)
    };
    Ok(DataUrl { mime, bytes })
}

/// RFC 3986 percent-decoding: `%XX` becomes that byte, everything else (including `+`, `&` and
/// `=`, which a data URL or a path may carry literally) stays as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Longest file name written for a URL input, in bytes (file systems allow 255).
const MAX_NAME_BYTES: usize = 200;

/// A file name from a URL that cannot leave the directory it is written to: percent-decoded,
/// separators, NUL and control characters replaced, never `.` or `..`, and at most
/// [`MAX_NAME_BYTES`] bytes (cut at a character boundary, keeping a short extension).
pub fn safe_file_name(raw: &str) -> String {
    let decoded = String::from_utf8_lossy(&percent_decode(raw)).into_owned();
    let cleaned: String = decoded
        .chars()
        .map(|c| match c {
            '/' | '\\' | '\0' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    let cleaned = if cleaned.len() > MAX_NAME_BYTES {
        let ext = cleaned
            .rfind('.')
            .map(|i| &cleaned[i..])
            .filter(|e| e.len() <= 16)
            .unwrap_or("");
        let mut stem_end = MAX_NAME_BYTES - ext.len();
        while !cleaned.is_char_boundary(stem_end) {
            stem_end -= 1;
        }
        format!("{}{ext}", &cleaned[..stem_end])
    } else {
        cleaned
    };
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "file".into()
    } else {
        cleaned
    }
}

/// Downloads every file input into `dir` and rewrites the input to the local paths.
pub async fn fetch_inputs(
    client: &reqwest::Client,
    input: &mut Value,
    fields: &[(String, FileShape)],
    dir: &Path,
    limits: &FileLimits,
) -> Result<(), FileError> {
    let Some(obj) = input.as_object_mut() else {
        return Ok(());
    };
    let mut n = 0usize;
    for (field, _) in fields {
        let Some(value) = obj.get_mut(field) else {
            continue;
        };
        let slots: Vec<&mut Value> = match value {
            Value::Array(items) => items.iter_mut().collect(),
            Value::Null => vec![],
            v => vec![v],
        };
        for slot in slots {
            let Some(url) = slot.as_str().map(str::to_owned) else {
                continue;
            };
            // Each file gets its own folder so two inputs named alike cannot collide.
            let sub = dir.join(format!("input-{n}"));
            n += 1;
            let path =
                fetch_one(client, &url, &sub, limits)
                    .await
                    .map_err(|msg| FileError::Input {
                        field: field.clone(),
                        msg,
                    })?;
            *slot = Value::String(path.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

async fn fetch_one(
    client: &reqwest::Client,
    url: &str,
    dir: &Path,
    limits: &FileLimits,
) -> Result<PathBuf, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create input dir: {e}"))?;
    if url.starts_with("data:") {
        let data = parse_data_url(url)?;
        if data.bytes.len() as u64 > limits.max_bytes {
            return Err(format!("file is larger than {} bytes", limits.max_bytes));
        }
        let ext = ext_for_mime(&data.mime)
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let path = dir.join(format!("file{ext}"));
        tokio::fs::write(&path, &data.bytes)
            .await
            .map_err(|e| format!("cannot write input file: {e}"))?;
        return Ok(path);
    }
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .unwrap_or_default();
    let path = dir.join(safe_file_name(&name));
    let download = async {
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("download failed: HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
            return Err(format!("file is larger than {} bytes", limits.max_bytes));
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("cannot write input file: {e}"))?;
        let mut stream = resp.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("download failed: {e}"))?;
            total += chunk.len() as u64;
            if total > limits.max_bytes {
                return Err(format!("file is larger than {} bytes", limits.max_bytes));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write input file: {e}"))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write input file: {e}"))?;
        Ok(())
    };
    match tokio::time::timeout(limits.timeout, download).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(format!(
                "download took longer than {:.0} s",
                limits.timeout.as_secs_f64()
            ))
        }
    }
    Ok(path)
}

/// JSON pointers of the values the output schema marks as files.
fn file_pointers(value: &Value, schema: &Value, at: String, out: &mut Vec<String>) {
    if schema.get("format").and_then(Value::as_str) == Some("uri") {
        if value.is_string() {
            out.push(at);
        }
        return;
    }
    match value {
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    file_pointers(item, item_schema, format!("{at}/{i}"), out);
                }
            }
        }
        Value::Object(obj) => {
            if let Some(props) = schema.get("properties") {
                for (k, v) in obj {
                    if let Some(s) = props.get(k) {
                        let key = k.replace('~', "~0").replace('/', "~1");
                        file_pointers(v, s, format!("{at}/{key}"), out);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Where output files go.
#[derive(Debug, Clone)]
pub enum OutputFiles {
    DataUri,
    Upload { base: String },
}

/// Replaces every output file path with a `data:` URI or the URL it was uploaded to.
pub async fn encode_outputs(
    client: &reqwest::Client,
    output: &mut Value,
    schema: &Value,
    mode: &OutputFiles,
    prediction_id: &str,
) -> Result<(), FileError> {
    let mut pointers = Vec::new();
    file_pointers(output, schema, String::new(), &mut pointers);
    for ptr in pointers {
        let Some(slot) = output.pointer_mut(&ptr) else {
            continue;
        };
        let Some(path) = slot.as_str().map(PathBuf::from) else {
            continue;
        };
        // A value that is already a URL (a predictor may return one) is passed through.
        if path.to_string_lossy().contains("://") || path.to_string_lossy().starts_with("data:") {
            continue;
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| FileError::Output {
                path: path.display().to_string(),
                msg: e.to_string(),
            })?;
        let mime = mime_guess::from_path(&path)
            .first_or_octet_stream()
            .essence_str()
            .to_string();
        *slot = Value::String(match mode {
            OutputFiles::DataUri => format!(
                "data:{mime};base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            ),
            OutputFiles::Upload { base } => {
                upload(client, base, &path, &mime, bytes, prediction_id).await?
            }
        });
    }
    Ok(())
}

/// `COG_UPLOAD_TIMEOUT` seconds (default 300): an upload target that accepts the connection and
/// never answers must not hold the prediction (and its slot) forever.
fn upload_timeout() -> Duration {
    std::env::var("COG_UPLOAD_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(300))
}

async fn upload(
    client: &reqwest::Client,
    base: &str,
    path: &Path,
    mime: &str,
    bytes: Vec<u8>,
    prediction_id: &str,
) -> Result<String, FileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let url = format!("{}/{}", base.trim_end_matches('/'), name);
    let err = |msg: String| FileError::Upload {
        name: name.clone(),
        msg,
    };
    let timeout = upload_timeout();
    let resp = client
        .put(&url)
        .timeout(timeout)
        .header("content-type", mime)
        .header("x-prediction-id", prediction_id)
        .body(bytes)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                err(format!(
                    "{url} did not answer within {:.0} s",
                    timeout.as_secs_f64()
                ))
            } else {
                err(e.to_string())
            }
        })?;
    if !resp.status().is_success() {
        return Err(err(format!("{url} answered HTTP {}", resp.status())));
    }
    if let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok()) {
        return Ok(loc.to_string());
    }
    let mut final_url = resp.url().clone();
    final_url.set_query(None);
    Ok(final_url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape() {
        assert_eq!(safe_file_name("..%2F..%2Fetc%2Fpasswd"), ".._.._etc_passwd");
        assert_eq!(safe_file_name(".."), "file");
        assert_eq!(safe_file_name(""), "file");
        assert_eq!(safe_file_name("a%00b.png"), "a_b.png");
        assert_eq!(safe_file_name("cat.png"), "cat.png");
    }

    #[test]
    fn data_urls() {
        let d = parse_data_url("data:text/plain;base64,aGk=").unwrap();
        assert_eq!(
            (d.mime.as_str(), d.bytes.as_slice()),
            ("text/plain", &b"hi"[..])
        );
        let d = parse_data_url("data:,a%20b").unwrap();
        assert_eq!(d.bytes, b"a b");
        assert!(parse_data_url("data:image/png;base64,@@@").is_err());
        assert!(check_input_url("ftp://x/y").is_err());
        assert!(check_input_url("/etc/passwd").is_err());
        assert!(check_input_url("https://example.com/a.png").is_ok());
    }
}
