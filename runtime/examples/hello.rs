//! `hello`: a small predictor served by the runtime, for the docs and the black-box tests.
//!
//! `cargo run --release -p cog-runtime --example hello -- serve --port 5000`

use cog_runtime::cli::{init_logging, run, RuntimeCommand};
use cog_runtime::schemars::JsonSchema;
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, Predictor, PredictorDef, Registry, Secret,
    SetupContext, SetupError,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Upper,
    Lower,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Input {
    /// Text to transform
    text: String,
    /// How many times to repeat the text
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    repeat: i64,
    /// Seconds to sleep before answering (honours cancellation)
    #[serde(default)]
    #[schemars(range(min = 0, max = 60))]
    delay: f64,
    /// Upper- or lower-case the text
    #[serde(default = "upper")]
    mode: Mode,
    /// Fail with an error instead of answering
    #[serde(default)]
    fail: bool,
    /// An optional image; its size in bytes is logged
    image: Option<Path>,
    /// An optional secret; only its length is logged
    token: Option<Secret>,
    /// Also return the text as a .txt file
    #[serde(default)]
    write_file: bool,
}

fn one() -> i64 {
    1
}

fn upper() -> Mode {
    Mode::Upper
}

#[derive(Debug, Serialize, JsonSchema)]
struct Output {
    text: String,
    file: Option<Path>,
}

struct Hello;

impl Predictor for Hello {
    type Input = Input;
    type Valid = Input;
    type Output = Output;
    const STREAMING: bool = true;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        // Tests that watch the STARTING state ask for a slow setup.
        if let Some(secs) = std::env::var("HELLO_SETUP_DELAY")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            ctx.log(format!("hello: waiting {secs} s in setup"));
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
        ctx.log("hello: nothing to load");
        Ok(Hello)
    }

    fn validate(&self, input: Input) -> Result<Input, InputError> {
        if input.text.contains('\0') {
            return Err(InputError::new("text", "must not contain NUL characters"));
        }
        Ok(input)
    }

    fn predict(&self, input: Input, ctx: &PredictContext) -> Result<Output, PredictError> {
        ctx.log(format!(
            "transforming {} characters",
            input.text.chars().count()
        ));
        if let Some(image) = &input.image {
            let size = std::fs::metadata(image.as_path())
                .map(|m| m.len())
                .unwrap_or(0);
            ctx.log(format!("image of {size} bytes"));
        }
        if let Some(token) = &input.token {
            ctx.log(format!("token of {} characters", token.expose().len()));
        }
        let end = Instant::now() + Duration::from_secs_f64(input.delay);
        while Instant::now() < end {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(5).min(end - Instant::now()));
        }
        if input.fail {
            return Err(PredictError::failed("asked to fail"));
        }
        let one = match input.mode {
            Mode::Upper => input.text.to_uppercase(),
            Mode::Lower => input.text.to_lowercase(),
        };
        let parts: Vec<&str> = (0..input.repeat).map(|_| one.as_str()).collect();
        for (i, part) in parts.iter().enumerate() {
            ctx.emit(if i == 0 {
                part.to_string()
            } else {
                format!(" {part}")
            });
        }
        let text = parts.join(" ");
        ctx.metric("characters", text.chars().count());
        let file = if input.write_file {
            let path = ctx.scratch_dir().join("output.txt");
            std::fs::write(&path, &text).map_err(PredictError::failed)?;
            Some(Path::new(path))
        } else {
            None
        };
        ctx.log("done");
        Ok(Output { text, file })
    }
}

#[derive(clap::Parser)]
#[command(
    name = "hello",
    about = "A small predictor served by the cogrs runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: RuntimeCommand,
}

fn main() -> std::process::ExitCode {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    run(
        cli.command,
        &Registry::new(vec![PredictorDef::of::<Hello>("hello")]),
    )
}
