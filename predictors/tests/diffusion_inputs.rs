//! flux-txt2img / flux-img2img inputs: defaults, sizes, bounds, the img2img image and strength,
//! and the schema the runtime serves for them.

use cog_predictors::engine::diffusion::inputs::{Img2ImgInput, OutputFormat, Txt2ImgInput};
use cog_predictors::engine::diffusion::triggers::Style;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    format!("{}/fixtures/diffusion/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn txt(
    v: Value,
) -> Result<cog_predictors::engine::diffusion::inputs::Generation, (String, String)> {
    let input: Txt2ImgInput = serde_json::from_value(v).expect("deserialises");
    input.validate().map_err(|e| (e.field, e.msg))
}

fn img(v: Value) -> Result<cog_predictors::engine::diffusion::inputs::Img2Img, (String, String)> {
    let input: Img2ImgInput = serde_json::from_value(v).expect("deserialises");
    input.validate().map_err(|e| (e.field, e.msg))
}

fn field_of<T: std::fmt::Debug>(r: Result<T, (String, String)>) -> String {
    r.expect_err("should be refused").0
}

#[test]
fn txt2img_defaults() {
    let g = txt(json!({"prompt": "a fox"})).unwrap();
    assert_eq!((g.width, g.height, g.num_outputs), (1024, 1024, 1));
    assert_eq!((g.schedule.active_steps(), g.schedule.begin), (28, 0));
    assert_eq!((g.guidance, g.lora_scale, g.seed), (3.5, 1.0, None));
    assert_eq!(
        (g.output_format, g.output_quality),
        (OutputFormat::Webp, 80)
    );
    assert!(g.styles.is_empty(), "no trigger word: the base model");
    // μ from 64 × 64 packed tokens
    assert_eq!(g.schedule.mu, 1.15);
}

#[test]
fn txt2img_sizes() {
    let g = txt(json!({"prompt": "x", "aspect_ratio": "16:9"})).unwrap();
    assert_eq!((g.width, g.height), (1360, 768));
    let g = txt(json!({"prompt": "x", "aspect_ratio": "custom", "width": 512, "height": 2048}))
        .unwrap();
    assert_eq!((g.width, g.height), (512, 2048));
    assert_eq!(
        field_of(txt(
            json!({"prompt": "x", "aspect_ratio": "custom", "height": 512})
        )),
        "width"
    );
    assert_eq!(
        field_of(txt(
            json!({"prompt": "x", "aspect_ratio": "custom", "width": 512, "height": 500})
        )),
        "height"
    );
    assert_eq!(
        field_of(txt(
            json!({"prompt": "x", "aspect_ratio": "custom", "width": 4096, "height": 512})
        )),
        "width"
    );
    assert_eq!(
        field_of(txt(
            json!({"prompt": "x", "aspect_ratio": "custom", "width": 240, "height": 512})
        )),
        "width"
    );
    assert_eq!(field_of(txt(json!({"prompt": "x", "width": 512}))), "width");
    assert!(
        serde_json::from_value::<Txt2ImgInput>(json!({"prompt": "x", "aspect_ratio": "5:4"}))
            .is_err()
    );
}

#[test]
fn txt2img_bounds() {
    for (field, bad) in [
        ("num_outputs", json!(0)),
        ("num_outputs", json!(5)),
        ("num_inference_steps", json!(0)),
        ("num_inference_steps", json!(51)),
        ("guidance", json!(10.5)),
        ("guidance", json!(-0.1)),
        ("output_quality", json!(101)),
        ("lora_scale", json!(2.01)),
        ("seed", json!(-1)),
    ] {
        let mut v = json!({"prompt": "x"});
        v[field] = bad.clone();
        assert_eq!(field_of(txt(v)), field, "{field} = {bad}");
    }
    assert_eq!(field_of(txt(json!({"prompt": "  "}))), "prompt");
    let g = txt(json!({"prompt": "Anime GHIBSKY style", "num_outputs": 4, "num_inference_steps": 50,
                       "guidance": 0, "seed": 7, "output_format": "jpg", "output_quality": 0, "lora_scale": 2}))
    .unwrap();
    assert_eq!(g.styles, vec![Style::OpenImagePreferences, Style::Ghibsky]);
    assert_eq!(
        (g.num_outputs, g.schedule.active_steps(), g.seed),
        (4, 50, Some(7))
    );
    assert_eq!(
        (g.output_format, g.output_quality, g.lora_scale),
        (OutputFormat::Jpg, 0, 2.0)
    );
}

#[test]
fn img2img_size_strength_and_image() {
    let png = fixture("img2img_input.png"); // 40 × 30
    let v = img(json!({"prompt": "GHIBSKY style", "image": png})).unwrap();
    let g = &v.generation;
    assert_eq!(
        (g.width, g.height),
        (336, 256),
        "40×30 keeps 4:3, scaled up to the 256 minimum side"
    );
    assert_eq!(
        (g.schedule.begin, g.schedule.active_steps()),
        (11, 17),
        "strength 0.6 of 28 steps"
    );
    assert_eq!(g.guidance, 3.5);
    assert_eq!(g.styles, vec![Style::Ghibsky]);
    let v =
        img(json!({"prompt": "x", "image": png, "aspect_ratio": "1:1", "strength": 1.0})).unwrap();
    assert_eq!(
        (
            v.generation.width,
            v.generation.height,
            v.generation.schedule.begin
        ),
        (1024, 1024, 0)
    );
    assert_eq!(
        field_of(img(json!({"prompt": "x", "image": png, "strength": 0.0}))),
        "strength"
    );
    assert_eq!(
        field_of(img(json!({"prompt": "x", "image": png, "strength": 1.5}))),
        "strength"
    );
    assert_eq!(
        field_of(img(
            json!({"prompt": "x", "image": fixture("schedule.json")})
        )),
        "image"
    );
    assert_eq!(
        field_of(img(json!({"prompt": "x", "image": png, "height": 512}))),
        "height"
    );
    assert!(
        serde_json::from_value::<Img2ImgInput>(json!({"prompt": "x"})).is_err(),
        "image is required"
    );
}

#[test]
fn schemas_carry_defaults_bounds_and_choices() {
    let s = serde_json::to_value(schemars::schema_for!(Txt2ImgInput)).unwrap();
    let text = s.to_string();
    for needle in ["\"1:1\"", "\"16:9\"", "\"custom\"", "\"webp\"", "\"jpg\""] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let p = &s["properties"];
    assert_eq!(p["num_inference_steps"]["default"], 28);
    assert_eq!(
        (
            p["num_outputs"]["minimum"].as_f64(),
            p["num_outputs"]["maximum"].as_f64()
        ),
        (Some(1.0), Some(4.0))
    );
    assert_eq!(p["guidance"]["default"], 3.5);
    assert_eq!(p["lora_scale"]["maximum"].as_f64(), Some(2.0));
    assert_eq!(s["required"], json!(["prompt"]));
    let s = serde_json::to_value(schemars::schema_for!(Img2ImgInput)).unwrap();
    assert_eq!(s["properties"]["strength"]["default"], 0.6);
    assert_eq!(s["required"], json!(["prompt", "image"]));
}
