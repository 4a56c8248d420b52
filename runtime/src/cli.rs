//! The command-line front: `serve`, `predict` (behaving like `cog predict`) and `schema`.

use crate::config::CogYaml;
use crate::registry::{PredictorDef, Registry};
use crate::server::{serve, ServeOptions};
use crate::service::{PredictionRequest, PredictionService, ServiceConfig, SubmitError};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Serve the Cog HTTP predictor API.
    Serve(ServeArgs),
    /// Run one prediction and write its output, like `cog predict`.
    Predict(PredictArgs),
    /// Print the predictor's OpenAPI document.
    Schema(SchemaArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Predictor to serve (else $COG_PREDICTOR, else `predict` in cog.yaml).
    pub predictor: Option<String>,
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Upload output files with `PUT {URL}/{name}` instead of returning data URIs.
    #[arg(long)]
    pub upload_url: Option<String>,
    /// Ignore SIGTERM; only `POST /shutdown` (or SIGINT) stops the server.
    #[arg(long, default_value = "false", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub await_explicit_shutdown: bool,
    /// Weights folder or URL handed to setup (else $COG_WEIGHTS).
    #[arg(long)]
    pub weights: Option<String>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Predictor to run (else $COG_PREDICTOR, else `predict` in cog.yaml).
    pub predictor: Option<String>,
    /// An input, `name=value`; `name=@path` sends a file; repeat a name to build a list.
    #[arg(short = 'i', long = "input")]
    pub inputs: Vec<String>,
    /// All inputs as JSON: inline, `@file`, or `@-` for standard input.
    #[arg(long)]
    pub json: Option<String>,
    /// Where to write a file output (default `output.<ext>`).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Weights folder or URL handed to setup (else $COG_WEIGHTS).
    #[arg(long)]
    pub weights: Option<String>,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    pub predictor: Option<String>,
}

/// Logs to stderr; `COG_LOG_LEVEL` (or `RUST_LOG`) sets the filter, `COG_LOG_FORMAT=json` the form.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("COG_LOG_LEVEL")
        .ok()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("COG_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The predictor named by the argument, else `COG_PREDICTOR`, else the binary's only predictor,
/// else `predict` in `./cog.yaml`.
fn choose<'a>(registry: &'a Registry, arg: Option<&str>) -> Result<&'a PredictorDef, String> {
    let from_env = std::env::var("COG_PREDICTOR")
        .ok()
        .filter(|s| !s.is_empty());
    let name = match arg.map(str::to_owned).or(from_env) {
        Some(n) => Some(n),
        None if registry.single().is_some() => None,
        None => CogYaml::load(Path::new("."))?.predict,
    };
    match name {
        Some(n) => registry.get(&n).ok_or_else(|| {
            format!(
                "unknown predictor {n:?}; available: {}",
                registry.names().join(", ")
            )
        }),
        None => registry.single().ok_or_else(|| {
            format!(
                "name a predictor (argument, COG_PREDICTOR or `predict` in cog.yaml); available: {}",
                registry.names().join(", ")
            )
        }),
    }
}

/// Runs a runtime command; the binary's `main` calls this.
pub fn run(cmd: RuntimeCommand, registry: &Registry) -> ExitCode {
    let result = match cmd {
        RuntimeCommand::Schema(args) => choose(registry, args.predictor.as_deref()).map(|def| {
            println!(
                "{}",
                serde_json::to_string_pretty(&def.schema.document).unwrap_or_default()
            );
        }),
        RuntimeCommand::Serve(args) => choose(registry, args.predictor.as_deref())
            .and_then(|def| block_on(serve_command(def.clone(), args))),
        RuntimeCommand::Predict(args) => choose(registry, args.predictor.as_deref())
            .and_then(|def| block_on(predict_command(def.clone(), args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<F: std::future::Future<Output = Result<(), String>>>(f: F) -> Result<(), String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // `COG_WORKER_THREADS`: HTTP worker threads (default: one per core). Predictions run on
    // their own blocking threads, so the workers only parse, route and answer.
    if let Some(n) = std::env::var("COG_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f)
}

async fn serve_command(def: PredictorDef, args: ServeArgs) -> Result<(), String> {
    let yaml = CogYaml::load(Path::new("."))?;
    let mut config = ServiceConfig::from_env(yaml.concurrency.max);
    config.upload_url = args.upload_url;
    if args.weights.is_some() {
        config.weights = args.weights;
    }
    let service = PredictionService::new(def, config)?;
    let opts = ServeOptions {
        host: args.host,
        port: args.port,
        await_explicit_shutdown: args.await_explicit_shutdown,
        drain_timeout: ServeOptions::drain_timeout_from_env(),
    };
    serve(service, opts).await.map_err(|e| e.to_string())
}

/// Builds the input object from `--json` and `-i` pairs, converting values by the schema's types.
pub fn build_input(
    def: &PredictorDef,
    json_arg: Option<&str>,
    pairs: &[String],
) -> Result<Value, String> {
    let mut input = match json_arg {
        None => Map::new(),
        Some(arg) => {
            let text = match arg.strip_prefix('@') {
                Some("-") => {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?
                }
                Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
                None => arg.to_string(),
            };
            match serde_json::from_str(&text).map_err(|e| format!("--json: {e}"))? {
                Value::Object(m) => m,
                _ => return Err("--json must be a JSON object".into()),
            }
        }
    };
    let props = &def.schema.input["properties"];
    for pair in pairs {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| format!("-i {pair:?}: expected name=value"))?;
        let prop = props.get(name).cloned().unwrap_or(Value::Null);
        let is_list = prop.get("type").and_then(Value::as_str) == Some("array");
        let item_schema = if is_list {
            prop.get("items").cloned().unwrap_or(Value::Null)
        } else {
            prop
        };
        let value = convert(name, raw, &item_schema)?;
        if is_list {
            let entry = input.entry(name.to_string()).or_insert_with(|| json!([]));
            if let Value::Array(items) = entry {
                items.push(value);
            }
        } else {
            input.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(input))
}

fn convert(name: &str, raw: &str, schema: &Value) -> Result<Value, String> {
    if let Some(path) = raw.strip_prefix('@') {
        let bytes = std::fs::read(path).map_err(|e| format!("-i {name}: {path}: {e}"))?;
        let mime = mime_guess::from_path(path).first_or_octet_stream();
        return Ok(json!(format!(
            "data:{};base64,{}",
            mime.essence_str(),
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )));
    }
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("string");
    let bad = |what: &str| format!("-i {name}={raw}: not {what}");
    Ok(match ty {
        "integer" => json!(raw.parse::<i64>().map_err(|_| bad("an integer"))?),
        "number" => json!(raw.parse::<f64>().map_err(|_| bad("a number"))?),
        "boolean" => json!(raw.parse::<bool>().map_err(|_| bad("true or false"))?),
        _ => json!(raw),
    })
}

async fn predict_command(def: PredictorDef, args: PredictArgs) -> Result<(), String> {
    let input = build_input(&def, args.json.as_deref(), &args.inputs)?;
    let mut config = ServiceConfig::from_env(1);
    if args.weights.is_some() {
        config.weights = args.weights;
    }
    let service = PredictionService::new(def.clone(), config)?;
    service.run_setup().await;
    if !service.is_ready() {
        let health = service.health();
        return Err(format!(
            "setup failed:\n{}",
            health["setup"]["logs"].as_str().unwrap_or_default()
        ));
    }
    let request = PredictionRequest {
        id: "cli".into(),
        input,
        ..Default::default()
    };
    let prediction = match service.submit(request) {
        Ok(p) => p,
        Err(SubmitError::Invalid(errors)) => {
            let mut msg = String::from("The inputs you passed could not be validated:");
            for e in errors {
                msg.push_str(&format!("\n{}: {}", e.field, e.msg));
            }
            return Err(msg);
        }
        Err(e) => return Err(format!("prediction was not accepted: {e:?}")),
    };
    prediction.wait().await;
    if let Some(Value::Array(detail)) = prediction.invalid_detail() {
        let mut msg = String::from("The inputs you passed could not be validated:");
        for d in detail {
            msg.push_str(&format!(
                "\n{}: {}",
                d["loc"][2].as_str().unwrap_or(""),
                d["msg"].as_str().unwrap_or("")
            ));
        }
        return Err(msg);
    }
    let response = prediction.snapshot();
    let status = response["status"].as_str().unwrap_or_default();
    if status != "succeeded" {
        return Err(format!(
            "Prediction failed with status {status:?}: {}",
            response["error"].as_str().unwrap_or_default()
        ));
    }
    write_output(
        &response["output"],
        &def.schema.output,
        args.output.as_deref(),
    )
}

/// Writes files the way `cog predict` does and prints everything else.
fn write_output(output: &Value, schema: &Value, out: Option<&Path>) -> Result<(), String> {
    let is_file = |s: &Value| s.get("format").and_then(Value::as_str) == Some("uri");
    if is_file(schema) {
        let path = save_data_uri(output, out, None)?;
        eprintln!("Written output to: {}", path.display());
        return Ok(());
    }
    if schema.get("items").is_some_and(is_file) {
        for (i, item) in output.as_array().into_iter().flatten().enumerate() {
            let path = save_data_uri(item, out, Some(i.to_string()))?;
            eprintln!("Written output to: {}", path.display());
        }
        return Ok(());
    }
    match output {
        Value::String(s) => println!("{s}"),
        Value::Object(obj) => {
            // File fields of an object are written beside it, named after the field.
            let mut shown = obj.clone();
            for (k, v) in obj {
                if schema["properties"].get(k).is_some_and(is_file) && v.is_string() {
                    let path = save_data_uri(v, out, Some(k.clone()))?;
                    eprintln!("Written output to: {}", path.display());
                    shown.insert(k.clone(), json!(path.display().to_string()));
                }
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
        }
        other => println!(
            "{}",
            serde_json::to_string_pretty(other).unwrap_or_default()
        ),
    }
    Ok(())
}

fn save_data_uri(
    value: &Value,
    out: Option<&Path>,
    part: Option<String>,
) -> Result<PathBuf, String> {
    let uri = value.as_str().ok_or("file output is not a string")?;
    let (meta, data) = uri
        .strip_prefix("data:")
        .and_then(|r| r.split_once(','))
        .ok_or("file output is not a data URI")?;
    let mime = meta.trim_end_matches(";base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())?;
    let ext = crate::files::ext_for_mime(mime).unwrap_or("bin");
    let path = match (out, part) {
        (Some(p), None) => p.to_path_buf(),
        (Some(p), Some(part)) => {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or(ext.into());
            p.with_file_name(format!("{stem}.{part}.{ext}"))
        }
        (None, None) => PathBuf::from(format!("output.{ext}")),
        (None, Some(part)) => PathBuf::from(format!("output.{part}.{ext}")),
    };
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
