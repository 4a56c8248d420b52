//! Property tests (proptest) of file inputs: `data:` URL decoding (arbitrary strings after
//! `data:`, and round trips of arbitrary bytes through base64 and percent-encoding), file names
//! taken from URLs (they never leave the prediction's folder, whatever the URL's path says), and
//! real downloads from a real HTTP server on 127.0.0.1 with hostile paths.
//! `FUZZ_CASES=N` runs N cases per property.

use base64::Engine;
use cog_runtime::files::{check_input_url, fetch_inputs, safe_file_name, FileLimits};
use cog_runtime::validate::FileShape;
use proptest::prelude::*;
use serde_json::json;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn limits() -> FileLimits {
    FileLimits {
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(10),
    }
}

/// Fetches one file input `url` into a fresh folder inside a sandbox; returns the sandbox, the
/// folder and the result (the local path, or the error).
fn fetch(
    url: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Result<String, String>,
) {
    let sandbox = tempfile::tempdir().unwrap();
    let dir = sandbox.path().join("pred/inputs");
    let mut input = json!({ "f": url });
    let fields = vec![("f".to_string(), FileShape::One)];
    let client = reqwest::Client::new();
    let r = rt().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            fetch_inputs(&client, &mut input, &fields, &dir, &limits()),
        )
        .await
        .expect("fetch hung for 30 s")
    });
    let r = r
        .map(|()| input["f"].as_str().unwrap().to_string())
        .map_err(|e| e.to_string());
    (sandbox, dir, r)
}

/// Everything under `root`, recursively.
fn tree(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

/// The file landed directly in `dir/input-0/`, nothing else was written in the sandbox, and it
/// holds `want`.
fn assert_contained(
    sandbox: &Path,
    dir: &Path,
    local: &str,
    want: &[u8],
) -> Result<(), TestCaseError> {
    let p = Path::new(local);
    let folder = dir.join("input-0");
    prop_assert_eq!(p.parent(), Some(folder.as_path()), "{}", local);
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    prop_assert!(name != "." && name != ".." && !name.is_empty());
    prop_assert!(name.len() <= 255, "{} bytes", name.len());
    prop_assert_eq!(std::fs::read(p).unwrap(), want);
    let files: Vec<_> = tree(sandbox).into_iter().filter(|p| p.is_file()).collect();
    prop_assert_eq!(files.len(), 1, "{:?}", files);
    Ok(())
}

/// Percent-encodes every byte that is not unreserved (RFC 3986).
fn pct(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A real file server on 127.0.0.1 answering every path with the same bytes.
fn file_server() -> &'static (String, Vec<u8>) {
    static S: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    S.get_or_init(|| {
        let bytes = b"served bytes".to_vec();
        let body = bytes.clone();
        let base = rt().block_on(async move {
            let app = axum::Router::new().fallback(axum::routing::any(move || {
                let b = body.clone();
                async move { b }
            }));
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            });
            base
        });
        (base, bytes)
    })
}

/// Path segments an attacker would try, mixed with arbitrary text.
fn hostile_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..%2F..%2F..%2Fescape".to_string()),
        Just("%2E%2E%2F%2E%2E%2Fescape".to_string()),
        Just("%2e%2e".to_string()),
        Just("..%5C..%5Cescape".to_string()),
        Just("a%00b.png".to_string()),
        Just("%00".to_string()),
        Just("%2F".to_string()),
        Just("a&b=c+d.png".to_string()),
        Just("%FF%FE%FD.bin".to_string()),
        Just(format!("{}.png", "%E2%82%AC".repeat(300))),
        Just("x".repeat(1000)),
        "[a-zA-Z0-9%./\\\\&=+;:@!$'()*,-]{0,300}",
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| pct(&b)),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Anything after `data:`: validation and decoding never panic, and what decodes is no
    /// bigger than what was sent.
    #[test]
    fn data_urls_never_panic(rest in ".{0,400}") {
        let url = format!("data:{rest}");
        let checked = check_input_url(&url);
        let (sandbox, dir, r) = fetch(&url);
        prop_assert_eq!(checked.is_ok(), r.is_ok(), "{:?} vs {:?}", checked, r);
        if let Ok(local) = r {
            let got = std::fs::read(&local).unwrap();
            prop_assert!(got.len() <= rest.len());
            prop_assert!(Path::new(&local).starts_with(&dir));
            prop_assert_eq!(tree(sandbox.path()).iter().filter(|p| p.is_file()).count(), 1);
        }
    }

    /// Arbitrary bytes survive base64 and percent-encoded data URLs exactly.
    #[test]
    fn data_url_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..2048),
                            mime in prop_oneof![Just(""), Just("application/octet-stream"), Just("image/png"), Just("text/plain;charset=utf-8")]) {
        let b64 = format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes));
        let (_s, _d, r) = fetch(&b64);
        prop_assert_eq!(std::fs::read(r.unwrap()).unwrap(), bytes.clone());
        let enc = format!("data:{mime},{}", pct(&bytes));
        let (_s, _d, r) = fetch(&enc);
        prop_assert_eq!(std::fs::read(r.unwrap()).unwrap(), bytes);
    }

    /// Characters a data URL may carry unencoded (RFC 2397 / 3986 reserved and unreserved) are
    /// kept as they are: `&`, `=`, `+`, `;` and `,` included.
    #[test]
    fn data_url_literal_characters(text in "[a-zA-Z0-9&=+;,._~!$'()*:@/?-]{0,200}") {
        let (_s, _d, r) = fetch(&format!("data:text/plain,{text}"));
        prop_assert_eq!(String::from_utf8(std::fs::read(r.unwrap()).unwrap()).unwrap(), text);
    }

    /// Whatever the URL's last path segment says, the name is one plain file name.
    #[test]
    fn safe_file_names(raw in prop_oneof![".{0,600}", hostile_segment()]) {
        let name = safe_file_name(&raw);
        prop_assert!(!name.is_empty() && name != "." && name != "..");
        prop_assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'), "{:?}", name);
        prop_assert!(name.len() <= 255, "{} bytes", name.len());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(&name);
        prop_assert_eq!(p.parent(), Some(dir.path()));
        std::fs::write(&p, b"x").map_err(|e| TestCaseError::fail(format!("{name:?}: {e}")))?;
    }

    /// Real downloads from 127.0.0.1 with hostile paths stay in the prediction's folder.
    #[test]
    fn downloads_stay_in_their_folder(segs in prop::collection::vec(hostile_segment(), 1..4)) {
        let (base, bytes) = file_server();
        let url = format!("{base}/{}", segs.join("/"));
        let (sandbox, dir, r) = fetch(&url);
        match r {
            Ok(local) => assert_contained(sandbox.path(), &dir, &local, bytes)?,
            // Only a URL the parser refuses may fail; never a file-system error.
            Err(e) => prop_assert!(!e.contains("cannot write"), "{url}: {e}"),
        }
    }
}
