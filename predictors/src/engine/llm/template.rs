//! Chat templates: the model's own Jinja template (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`) rendered with minijinja configured like transformers' `apply_chat_template`:
//! `trim_blocks` + `lstrip_blocks`, loop controls, Python string methods, `raise_exception`, `strftime_now`,
//! a Python-compatible `tojson`, and transformers' `{% generation %}` blocks (which only mark assistant text
//! for training masks, so they render their body unchanged).

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no chat template in {0} (neither chat_template.jinja nor `chat_template` in tokenizer_config.json)")]
    Missing(String),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("chat template: {0}")]
    Render(String),
}

/// One turn of the conversation, as transformers passes it to the template.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// The variables transformers passes besides `messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateOptions {
    pub add_generation_prompt: bool,
    /// Passed only when set: templates test `enable_thinking is defined`.
    pub enable_thinking: Option<bool>,
    /// Any further template variables (`tools`, `xml_tools`, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        TemplateOptions {
            add_generation_prompt: true,
            enable_thinking: None,
            extra: Default::default(),
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Loads the template of a model folder: `chat_template.jinja` wins over `tokenizer_config.json`, as in
    /// transformers. Special token strings come from `tokenizer_config.json` when it exists.
    pub fn from_dir(dir: &Path) -> Result<ChatTemplate, TemplateError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Option<serde_json::Value> = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => Some(serde_json::from_str(&s).map_err(|e| read_err(&cfg_path, e))?),
            Err(_) => None,
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            std::fs::read_to_string(&jinja).map_err(|e| read_err(&jinja, e))?
        } else {
            cfg.as_ref()
                .and_then(|c| template_from_config(c.get("chat_template")?))
                .ok_or_else(|| TemplateError::Missing(dir.display().to_string()))?
        };
        let token = |k: &str| cfg.as_ref().and_then(|c| token_string(c.get(k)?));
        ChatTemplate::new(&source, token("bos_token"), token("eos_token"))
    }

    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, rewrite_generation_blocks(source))
            .map_err(|e| TemplateError::Render(format!("{e:#}")))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        opts: &TemplateOptions,
    ) -> Result<String, TemplateError> {
        let mut ctx = opts.extra.clone();
        ctx.insert(
            "messages".into(),
            serde_json::to_value(messages).expect("messages serialise"),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            opts.add_generation_prompt.into(),
        );
        if let Some(t) = opts.enable_thinking {
            ctx.insert("enable_thinking".into(), t.into());
        }
        for (k, v) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            ctx.entry(k)
                .or_insert_with(|| v.clone().unwrap_or_default().into());
        }
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        tmpl.render(Value::from_serialize(&ctx))
            .map_err(|e| TemplateError::Render(format!("{e:#}")))
    }
}

fn read_err(p: &Path, e: impl std::fmt::Display) -> TemplateError {
    TemplateError::Read {
        path: p.display().to_string(),
        message: e.to_string(),
    }
}

/// `chat_template` is a string, or a list of named templates of which `default` is the chat one.
fn template_from_config(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// Special tokens in tokenizer_config.json are a string or an AddedToken object with `content`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.get("content")?.as_str().map(str::to_string))
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker extension) become
/// `{% if true %}` / `{% endif %}`, keeping their whitespace-control dashes so the output is unchanged.
fn rewrite_generation_blocks(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner = tag[2..tag.len() - 2]
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        out.push_str(&rest[..start]);
        let (l, r) = (
            if tag.starts_with("{%-") { "{%-" } else { "{%" },
            if tag.ends_with("-%}") { "-%}" } else { "%}" },
        );
        match inner {
            "generation" => out.push_str(&format!("{l} if true {r}")),
            "endgeneration" => out.push_str(&format!("{l} endif {r}")),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, which is what
/// transformers' `tojson` does: `", "` and `": "` separators, non-ASCII kept, no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_dumps(&v, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn py_dumps(
    v: &serde_json::Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let (open_sep, item_sep, close_sep) = match indent {
        Some(n) => (
            format!("\n{}", " ".repeat(n * (depth + 1))),
            format!(",\n{}", " ".repeat(n * (depth + 1))),
            format!("\n{}", " ".repeat(n * depth)),
        ),
        None => (String::new(), ", ".to_string(), String::new()),
    };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            out.push_str(&open_sep);
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(&item_sep);
                }
                py_dumps(x, indent, sort, depth + 1, out);
            }
            out.push_str(&close_sep);
            out.push(']');
        }
        J::Object(m) if !m.is_empty() => {
            let mut entries: Vec<_> = m.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            out.push_str(&open_sep);
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&item_sep);
                }
                out.push_str(&serde_json::to_string(k).expect("string serialises"));
                out.push_str(": ");
                py_dumps(x, indent, sort, depth + 1, out);
            }
            out.push_str(&close_sep);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).expect("json serialises")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(
        src: &str,
        msgs: &[ChatMessage],
        opts: &TemplateOptions,
    ) -> Result<String, TemplateError> {
        ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into()))?.render(msgs, opts)
    }

    #[test]
    fn hf_features_render() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}\
                   {% set ns.n = ns.n + 1 %}{{ m.role | upper }}:{{ m.content.strip() }}|{% if loop.index > 5 %}{% break %}{% endif %}{% endfor %}\
                   {{ ns.n }}{{ bos_token }}{% if enable_thinking is defined %}T{{ enable_thinking }}{% endif %}";
        let msgs = [
            ChatMessage::new("user", "  hi "),
            ChatMessage::new("skip", "x"),
            ChatMessage::new("assistant", "yo"),
        ];
        let opts = TemplateOptions {
            enable_thinking: Some(false),
            ..Default::default()
        };
        assert_eq!(
            render(src, &msgs, &opts).unwrap(),
            "USER:hi|ASSISTANT:yo|2<s>TFalse",
            "booleans print like Python's"
        );
        assert_eq!(
            render(src, &msgs, &TemplateOptions::default()).unwrap(),
            "USER:hi|ASSISTANT:yo|2<s>"
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let err = render(
            "{{ raise_exception('roles must alternate') }}",
            &[],
            &Default::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let mut extra = serde_json::Map::new();
        extra.insert(
            "tools".into(),
            serde_json::json!([{"name": "f", "b": [1, 2.5, "é<>"], "a": null}]),
        );
        let opts = TemplateOptions {
            extra,
            ..Default::default()
        };
        let out = render(
            "{{ tools[0] | tojson }}#{{ tools[0] | tojson(sort_keys=true) }}",
            &[],
            &opts,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"name": "f", "b": [1, 2.5, "é<>"], "a": null}#{"a": null, "b": [1, 2.5, "é<>"], "name": "f"}"#
        );
        let out = render("{{ tools[0].b | tojson(indent=2) }}", &[], &opts).unwrap();
        assert_eq!(out, "[\n  1,\n  2.5,\n  \"é<>\"\n]");
    }

    #[test]
    fn generation_blocks_and_block_trimming_like_transformers() {
        let src = "{% for m in messages %}\n  {%- if m.role == 'assistant' %}\n{% generation %}{{ m.content }}{% endgeneration %}\n  {%- endif %}\n{% endfor %}";
        let out = render(
            src,
            &[
                ChatMessage::new("assistant", "A"),
                ChatMessage::new("user", "U"),
            ],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(out, "A");
    }

    #[test]
    fn strftime_now_formats_today() {
        let out = render("{{ strftime_now('%Y-%m-%d') }}", &[], &Default::default()).unwrap();
        assert_eq!(out, chrono::Local::now().format("%Y-%m-%d").to_string());
    }
}
