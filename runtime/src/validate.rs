//! Input validation: the one place a request's `input` is checked, against the same `Input` schema
//! the OpenAPI document publishes. Messages come from the `jsonschema` crate, as coglet's do, so
//! clients see the same `detail` entries from us as from Replicate's server.

use serde_json::{Map, Value};
use std::collections::HashSet;

/// One bad field, as it appears in a 422's `detail` list.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub msg: String,
    pub kind: &'static str,
}

impl FieldError {
    pub fn value(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            msg: msg.into(),
            kind: "value_error",
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({"loc": ["body", "input", self.field], "msg": self.msg, "type": self.kind})
    }
}

/// How a file input is shaped: one URL or a list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileShape {
    One,
    List,
}

pub struct InputValidator {
    validator: jsonschema::Validator,
    properties: HashSet<String>,
    required: Vec<String>,
    /// Optional inputs without a default: omitted means `null`, as Cog passes `None`.
    inject_null: Vec<String>,
    files: Vec<(String, FileShape)>,
    secrets: Vec<String>,
}

fn is_uri(schema: &Value) -> bool {
    schema.get("format").and_then(Value::as_str) == Some("uri")
}

impl InputValidator {
    /// Compiles the validator for an inlined `Input` component.
    pub fn new(input: &Value) -> Result<Self, String> {
        let empty = Map::new();
        let props = input
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let required: Vec<String> = input
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut inject_null = Vec::new();
        let mut files = Vec::new();
        let mut secrets = Vec::new();
        for (name, prop) in props {
            let nullable = prop.get("nullable").and_then(Value::as_bool) == Some(true);
            if nullable && prop.get("default").is_none() && !required.contains(name) {
                inject_null.push(name.clone());
            }
            if is_uri(prop) {
                files.push((name.clone(), FileShape::One));
            } else if prop.get("items").is_some_and(is_uri) {
                files.push((name.clone(), FileShape::List));
            }
            if prop.get("x-cog-secret").and_then(Value::as_bool) == Some(true) {
                secrets.push(name.clone());
            }
        }
        let validator = jsonschema::validator_for(input).map_err(|e| e.to_string())?;
        Ok(Self {
            validator,
            properties: props.keys().cloned().collect(),
            required,
            inject_null,
            files,
            secrets,
        })
    }

    /// Removes fields the schema does not know, returning their names (they are logged, not
    /// rejected, as Replicate's API has always done).
    pub fn strip_unknown(&self, input: &mut Value) -> Vec<String> {
        let Some(obj) = input.as_object_mut() else {
            return Vec::new();
        };
        let unknown: Vec<String> = obj
            .keys()
            .filter(|k| !self.properties.contains(*k))
            .cloned()
            .collect();
        for k in &unknown {
            obj.remove(k);
        }
        unknown
    }

    /// Checks `input` (after [`Self::strip_unknown`]); on success fills omitted optionals with null.
    pub fn validate(&self, input: &mut Value) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !self.validator.is_valid(input) {
            let mut seen_required = false;
            for error in self.validator.iter_errors(input) {
                let msg = error.to_string();
                if msg.contains("is a required property") {
                    if !seen_required {
                        seen_required = true;
                        let obj = input.as_object();
                        for field in &self.required {
                            if !obj.is_some_and(|o| o.contains_key(field)) {
                                errors.push(FieldError {
                                    field: field.clone(),
                                    msg: "Field required".into(),
                                    kind: "value_error.missing",
                                });
                            }
                        }
                    }
                    continue;
                }
                let path = error.instance_path.to_string();
                let field = path.trim_start_matches('/');
                let field = match field.split('/').next() {
                    Some(f) if !f.is_empty() => f.to_string(),
                    _ => "__root__".to_string(),
                };
                errors.push(FieldError::value(field, msg));
            }
        }
        // Stricter than coglet (which passes any string on): a file must be a URL we can fetch.
        if let Some(obj) = input.as_object() {
            for (name, shape) in &self.files {
                let urls: Vec<&Value> = match (shape, obj.get(name)) {
                    (FileShape::One, Some(v)) => vec![v],
                    (FileShape::List, Some(Value::Array(items))) => items.iter().collect(),
                    _ => vec![],
                };
                for url in urls.into_iter().filter_map(Value::as_str) {
                    if let Err(msg) = crate::files::check_input_url(url) {
                        errors.push(FieldError::value(name.clone(), msg));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some(obj) = input.as_object_mut() {
            for name in &self.inject_null {
                obj.entry(name.clone()).or_insert(Value::Null);
            }
        }
        Ok(())
    }

    pub fn file_fields(&self) -> &[(String, FileShape)] {
        &self.files
    }

    /// The input as it may be echoed back: secrets replaced by the mask.
    pub fn masked(&self, input: &Value) -> Value {
        let mut out = input.clone();
        if let Some(obj) = out.as_object_mut() {
            for name in &self.secrets {
                if let Some(v) = obj.get_mut(name) {
                    if !v.is_null() {
                        *v = Value::String(crate::types::SECRET_MASK.into());
                    }
                }
            }
        }
        out
    }
}
