//! The OpenAPI document in Cog's layout, generated from a predictor's `Input` and `Output` types.
//!
//! schemars describes the Rust types; this module rewrites that description the way Cog's own
//! generator writes it (titles, `x-order`, enum components named after the field, `nullable`,
//! `format: uri` files, secrets), so Replicate and `cog predict` read our document as theirs.

use schemars::{generate::SchemaSettings, JsonSchema};
use serde_json::{json, Map, Value};

/// The two component schemas the rest of the runtime works from, plus the whole document.
#[derive(Debug, Clone)]
pub struct PredictorSchema {
    /// The full OpenAPI 3.0.2 document served at `/openapi.json`.
    pub document: Value,
    /// `components.schemas.Input`, with `$ref`s inlined (what validation runs against).
    pub input: Value,
    /// `components.schemas.Output`, with `$ref`s inlined (what output encoding walks).
    pub output: Value,
}

impl PredictorSchema {
    pub fn generate<I: JsonSchema, O: JsonSchema>(streaming: bool) -> Self {
        let input_root = root_schema::<I>();
        let output_root = root_schema::<O>();
        let (input, enums) = input_component(&input_root);
        let output = output_component(&output_root);
        let document = document(&input, &output, enums, streaming);
        let components = document["components"]["schemas"].clone();
        Self {
            input: inline_refs(input, &components),
            output: inline_refs(output, &components),
            document,
        }
    }
}

fn root_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3().into_generator();
    let schema = generator.into_root_schema_for::<T>();
    schema.to_value()
}

/// `write_file` → `Write File`, as Cog titles parameters.
pub fn title_case(name: &str) -> String {
    name.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f
                    .to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// Follows a `$ref` (directly, or as the single non-null member of `allOf`/`anyOf`/`oneOf`).
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        for defs in ["components", "definitions", "$defs"] {
            let found = match defs {
                "components" => root.pointer(&format!("/components/schemas/{name}")),
                other => root.get(other).and_then(|d| d.get(name)),
            };
            if let Some(found) = found {
                return resolve(found, root);
            }
        }
        return schema;
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = list
                .iter()
                .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if non_null.len() == 1 {
                return resolve(non_null[0], root);
            }
        }
    }
    schema
}

/// The keywords Cog's documents carry for a plain (non-choice) value, with schemars' numeric
/// `format`s (int64, double...) dropped: Cog has only `uri` and `password`.
fn plain_type(schema: &Value, root: &Value) -> Map<String, Value> {
    let schema = resolve(schema, root);
    let mut out = Map::new();
    let Some(obj) = schema.as_object() else {
        return out;
    };
    for (k, v) in obj {
        match k.as_str() {
            "type" => {
                // schemars writes Option<T> as `"type": ["T", "null"]` in some settings.
                let t = match v {
                    Value::Array(types) => types
                        .iter()
                        .find(|t| t.as_str() != Some("null"))
                        .cloned()
                        .unwrap_or(Value::Null),
                    other => other.clone(),
                };
                out.insert("type".into(), t);
            }
            "format" if matches!(v.as_str(), Some("uri" | "password")) => {
                out.insert(k.clone(), v.clone());
            }
            "writeOnly" | "x-cog-secret" | "x-cog-array-type" | "x-cog-array-display" => {
                out.insert(k.clone(), v.clone());
            }
            "items" => {
                out.insert(k.clone(), Value::Object(plain_type(v, root)));
            }
            _ => {}
        }
    }
    out
}

/// Builds `components.schemas.Input` and the enum components for choice inputs.
fn input_component(root: &Value) -> (Value, Vec<(String, Value)>) {
    let mut properties = Map::new();
    let mut enums = Vec::new();
    let empty = Map::new();
    let props = root
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required: Vec<Value> = root
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (order, (name, prop)) in props.iter().enumerate() {
        let target = resolve(prop, root);
        // Keys are inserted in sorted order to match the bytes Cog's generator writes.
        let mut p = std::collections::BTreeMap::<String, Value>::new();
        if let Some(choices) = target.get("enum") {
            let ty = target.get("type").cloned().unwrap_or(json!("string"));
            enums.push((
                name.clone(),
                json!({"title": name, "description": "An enumeration.", "enum": choices, "type": ty}),
            ));
            p.insert(
                "allOf".into(),
                json!([{ "$ref": format!("#/components/schemas/{name}") }]),
            );
        } else {
            p.insert("title".into(), json!(title_case(name)));
            p.extend(plain_type(prop, root));
        }
        p.insert("x-order".into(), json!(order));
        for key in [
            "default",
            "description",
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "pattern",
            "deprecated",
        ] {
            if let Some(v) = prop.get(key).or_else(|| target.get(key)) {
                if key == "description" && target.get("enum").is_some() && prop.get(key).is_none() {
                    continue; // an enum type's own doc is not the field's description
                }
                p.insert(key.into(), v.clone());
            }
        }
        if is_nullable(prop) {
            p.insert("nullable".into(), json!(true));
        }
        properties.insert(name.clone(), Value::Object(p.into_iter().collect()));
    }
    let mut input = json!({"title": "Input", "type": "object", "properties": properties});
    if !required.is_empty() {
        input["required"] = Value::Array(required);
    }
    (input, enums)
}

fn is_nullable(prop: &Value) -> bool {
    if prop.get("nullable").and_then(Value::as_bool) == Some(true) {
        return true;
    }
    if let Some(Value::Array(types)) = prop.get("type") {
        return types.iter().any(|t| t.as_str() == Some("null"));
    }
    ["anyOf", "oneOf"].iter().any(|k| {
        prop.get(*k).and_then(Value::as_array).is_some_and(|l| {
            l.iter()
                .any(|s| s.get("type").and_then(Value::as_str) == Some("null"))
        })
    })
}

/// Builds `components.schemas.Output` in Cog's form: objects inline their fields with titles.
fn output_component(root: &Value) -> Value {
    let target = resolve(root, root);
    let mut out = Map::new();
    out.insert("title".into(), json!("Output"));
    if let Some(props) = target.get("properties").and_then(Value::as_object) {
        let mut properties = Map::new();
        for (name, prop) in props {
            let mut p = plain_type(prop, root);
            if is_nullable(prop) {
                p.insert("nullable".into(), json!(true));
            }
            p.insert("title".into(), json!(title_case(name)));
            properties.insert(name.clone(), Value::Object(p));
        }
        out.insert("type".into(), json!("object"));
        out.insert("properties".into(), Value::Object(properties));
        if let Some(req) = target.get("required") {
            out.insert("required".into(), req.clone());
        }
    } else {
        out.extend(plain_type(target, root));
    }
    Value::Object(out)
}

/// Replaces `$ref`s into `components.schemas` with the referenced schema.
fn inline_refs(mut value: Value, components: &Value) -> Value {
    fn walk(v: &mut Value, components: &Value, depth: usize) {
        if depth > 32 {
            return;
        }
        match v {
            Value::Object(obj) => {
                if let Some(name) = obj
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                {
                    if let Some(found) = components.get(name) {
                        *v = found.clone();
                        walk(v, components, depth + 1);
                        return;
                    }
                }
                for child in obj.values_mut() {
                    walk(child, components, depth + 1);
                }
            }
            Value::Array(items) => items
                .iter_mut()
                .for_each(|c| walk(c, components, depth + 1)),
            _ => {}
        }
    }
    walk(&mut value, components, 0);
    value
}

fn ok_response(schema: Value) -> Value {
    json!({"description": "Successful Response", "content": {"application/json": {"schema": schema}}})
}

fn validation_error_response() -> Value {
    json!({"description": "Validation Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}})
}

fn document(input: &Value, output: &Value, enums: Vec<(String, Value)>, streaming: bool) -> Value {
    let mut schemas = Map::new();
    schemas.insert("Input".into(), input.clone());
    schemas.insert("Output".into(), output.clone());
    for (name, schema) in enums {
        schemas.insert(name, schema);
    }
    schemas.insert(
        "PredictionRequest".into(),
        json!({"title": "PredictionRequest", "type": "object", "properties": {
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": "#/components/schemas/Input"}
        }}),
    );
    schemas.insert(
        "PredictionResponse".into(),
        json!({"title": "PredictionResponse", "type": "object", "properties": {
            "input": {"$ref": "#/components/schemas/Input"},
            "output": {"$ref": "#/components/schemas/Output"},
            "id": {"title": "Id", "type": "string"},
            "version": {"title": "Version", "type": "string"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "started_at": {"title": "Started At", "type": "string", "format": "date-time"},
            "completed_at": {"title": "Completed At", "type": "string", "format": "date-time"},
            "status": {"title": "Status", "type": "string"},
            "error": {"title": "Error", "type": "string"},
            "logs": {"title": "Logs", "type": "string"},
            "metrics": {"title": "Metrics", "type": "object"}
        }}),
    );
    schemas.insert(
        "Status".into(),
        json!({"title": "Status", "description": "An enumeration.",
               "enum": ["starting", "processing", "succeeded", "canceled", "failed"], "type": "string"}),
    );
    schemas.insert(
        "WebhookEvent".into(),
        json!({"title": "WebhookEvent", "description": "An enumeration.",
               "enum": ["start", "output", "logs", "completed"], "type": "string"}),
    );
    schemas.insert(
        "HTTPValidationError".into(),
        json!({"title": "HTTPValidationError", "type": "object", "properties": {
            "detail": {"title": "Detail", "type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}
        }}),
    );
    schemas.insert(
        "ValidationError".into(),
        json!({"title": "ValidationError", "required": ["loc", "msg", "type"], "type": "object", "properties": {
            "loc": {"title": "Location", "type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"}
        }}),
    );
    let mut predict = json!({
        "summary": "Predict",
        "description": "Run a single prediction on the model",
        "operationId": "predict_predictions_post",
        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}},
        "responses": {
            "200": ok_response(json!({"$ref": "#/components/schemas/PredictionResponse"})),
            "422": validation_error_response()
        }
    });
    if streaming {
        predict["x-cog-streaming"] = json!(true);
    }
    json!({
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": ok_response(json!({}))}}},
            "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get",
                                      "responses": {"200": ok_response(json!({}))}}},
            "/predictions": {"post": predict},
            "/predictions/{prediction_id}/cancel": {"post": {
                "summary": "Cancel",
                "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [{"required": true, "schema": {"title": "Prediction Id", "type": "string"},
                                "name": "prediction_id", "in": "path"}],
                "responses": {"200": ok_response(json!({})), "422": validation_error_response()}
            }},
            "/shutdown": {"post": {"summary": "Shutdown", "operationId": "shutdown_shutdown_post",
                                   "responses": {"200": ok_response(json!({}))}}}
        },
        "components": {"schemas": schemas}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ConcatenateIterator, Path};
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct In {
        /// Size in pixels
        #[schemars(range(min = 256, max = 2048))]
        width: Option<i64>,
        #[serde(default = "five")]
        steps: i64,
        images: Vec<Path>,
        #[schemars(regex(pattern = "^[a-z]+$"), length(max = 8))]
        tag: String,
    }

    fn five() -> i64 {
        5
    }

    fn output_of<O: JsonSchema>() -> Value {
        PredictorSchema::generate::<In, O>(false).document["components"]["schemas"]["Output"]
            .clone()
    }

    #[test]
    fn outputs_take_cogs_forms() {
        assert_eq!(
            output_of::<String>(),
            json!({"title": "Output", "type": "string"})
        );
        assert_eq!(
            output_of::<Vec<Path>>(),
            json!({"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}})
        );
        assert_eq!(
            output_of::<ConcatenateIterator<String>>(),
            json!({"title": "Output", "type": "array", "items": {"type": "string"},
                   "x-cog-array-type": "iterator", "x-cog-array-display": "concatenate"})
        );
    }

    #[test]
    fn inputs_carry_constraints_defaults_order_and_nullability() {
        let s = PredictorSchema::generate::<In, String>(false);
        let p = &s.document["components"]["schemas"]["Input"]["properties"];
        assert_eq!(
            p["width"],
            json!({"description": "Size in pixels", "maximum": 2048, "minimum": 256, "nullable": true,
                   "title": "Width", "type": "integer", "x-order": 0})
        );
        assert_eq!(p["steps"]["default"], 5);
        assert_eq!(
            p["images"],
            json!({"items": {"format": "uri", "type": "string"}, "title": "Images",
                                        "type": "array", "x-order": 2})
        );
        assert_eq!(p["tag"]["pattern"], "^[a-z]+$");
        assert_eq!(p["tag"]["maxLength"], 8);
        assert_eq!(
            s.document["components"]["schemas"]["Input"]["required"],
            json!(["images", "tag"])
        );
        assert!(s.document["paths"]["/predictions"]["post"]
            .get("x-cog-streaming")
            .is_none());
    }

    #[test]
    fn title_case_matches_cog() {
        assert_eq!(title_case("write_file"), "Write File");
        assert_eq!(title_case("max_new_tokens"), "Max New Tokens");
        assert_eq!(title_case("prompt"), "Prompt");
    }
}
