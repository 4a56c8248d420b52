//! The real SmolLM3 and Phi-4-reasoning-plus chat templates (`fixtures/templates/`, see its README) rendered
//! by the engine: think / no_think and the reasoning system prompt as the model cards describe.

use cog_predictors::engine::llm::template::{ChatMessage, ChatTemplate, TemplateOptions};
use std::path::Path;

fn template(name: &str) -> ChatTemplate {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/templates")
        .join(name);
    ChatTemplate::new(&std::fs::read_to_string(p).unwrap(), None, None).unwrap()
}

fn thinking(t: Option<bool>) -> TemplateOptions {
    TemplateOptions {
        enable_thinking: t,
        ..Default::default()
    }
}

const SMOL_THINK_PROMPT: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves thoroughly exploring questions";

#[test]
fn smollm3_thinks_by_default() {
    let t = template("smollm3.jinja");
    let out = t
        .render(&[ChatMessage::new("user", "What is 2+2?")], &thinking(None))
        .unwrap();
    let today = chrono::Local::now().format("%d %B %Y");
    let head = format!("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: {today}\nReasoning Mode: /think\n\n## Custom Instructions\n\n{SMOL_THINK_PROMPT}");
    assert!(out.starts_with(&head), "{out}");
    let tail = "## Tools\n\n### XML Tools\n\nNone\n\n### Python Tools\n\nNone\n\n<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    assert!(out.ends_with(tail), "{out}");
    assert_eq!(
        out,
        t.render(
            &[ChatMessage::new("user", "What is 2+2?")],
            &thinking(Some(true))
        )
        .unwrap()
    );
}

#[test]
fn smollm3_no_think_opens_an_empty_think_block() {
    let t = template("smollm3.jinja");
    let out = t
        .render(&[ChatMessage::new("user", "Hi")], &thinking(Some(false)))
        .unwrap();
    assert!(out.contains("Reasoning Mode: /no_think\n\n## Custom Instructions\n\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n## Tools"), "{out}");
    assert!(
        out.ends_with(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"
        ),
        "{out}"
    );
}

#[test]
fn smollm3_system_prompt_flags_pick_the_mode_and_are_removed() {
    let t = template("smollm3.jinja");
    let msgs = [
        ChatMessage::new("system", "Answer in French. /no_think"),
        ChatMessage::new("user", "Hi"),
    ];
    let out = t.render(&msgs, &thinking(None)).unwrap();
    assert!(
        out.contains(
            "Reasoning Mode: /no_think\n\n## Custom Instructions\n\nAnswer in French.\n\n## Tools"
        ),
        "{out}"
    );
    assert!(!out.contains("/no_think\n\n## Tools") && out.ends_with("<think>\n\n</think>\n"));
    // The system turn itself is not repeated as a message; history keeps the mode's think block.
    assert_eq!(out.matches("<|im_start|>system").count(), 1);
    let msgs = [
        ChatMessage::new("system", "Be brief. /think"),
        ChatMessage::new("user", "Q"),
        ChatMessage::new("assistant", "A"),
        ChatMessage::new("user", "Q2"),
    ];
    let out = t.render(&msgs, &thinking(Some(false))).unwrap();
    assert!(
        out.contains("Reasoning Mode: /think\n\n## Custom Instructions\n\nBe brief.\n\n"),
        "the system flag wins over enable_thinking: {out}"
    );
    assert!(out.ends_with("<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"), "{out}");
}

const PHI_SYSTEM: &str = "<|im_start|>system<|im_sep|>You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves thoroughly exploring questions through a systematic thinking process before providing the final precise and accurate solutions.";

#[test]
fn phi4_reasoning_adds_its_reasoning_system_prompt() {
    let t = template("phi4-reasoning-plus.jinja");
    let out = t
        .render(
            &[ChatMessage::new("user", "What is 2+2?")],
            &TemplateOptions::default(),
        )
        .unwrap();
    assert!(out.starts_with(PHI_SYSTEM), "{out}");
    assert!(
        out.contains(
            "using the specified format: <think> {Thought section} </think> {Solution section}."
        ),
        "{out}"
    );
    assert!(out.ends_with("Now, try to solve the following question through the above guidelines:<|im_end|><|im_start|>user<|im_sep|>What is 2+2?<|im_end|><|im_start|>assistant<|im_sep|>"), "{out}");
}

#[test]
fn phi4_reasoning_custom_system_prompt_replaces_it() {
    let t = template("phi4-reasoning-plus.jinja");
    let msgs = [
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "<think>x</think>Hello"),
        ChatMessage::new("user", "Bye"),
    ];
    let out = t.render(&msgs, &TemplateOptions::default()).unwrap();
    assert_eq!(out, "<|im_start|>system<|im_sep|>Be terse.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|><think>x</think>Hello<|im_end|><|im_start|>user<|im_sep|>Bye<|im_end|><|im_start|>assistant<|im_sep|>");
    let no_prompt = t
        .render(
            &msgs[1..2],
            &TemplateOptions {
                add_generation_prompt: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(no_prompt.ends_with("<|im_start|>user<|im_sep|>Hi<|im_end|>"));
}
