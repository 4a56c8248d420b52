//! Gemma 3's multimodal prompt: the model's own chat template rendered with one `<start_of_image>`
//! per image, each expanded as Gemma3Processor does (to `\n\n<start_of_image>`, 256 ×
//! `<image_soft_token>`, `<end_of_image>\n\n`), encoded with the model's tokenizer. The positions of
//! the soft tokens are where the projected image features replace the token embeddings.

use crate::engine::llm::template::{ChatMessage, ChatTemplate, TemplateError, TemplateOptions};
use std::path::Path;
use tokenizers::Tokenizer;

/// Soft tokens per image: Gemma 3's `mm_tokens_per_image` (4096 SigLIP patches pooled 4×4).
pub const TOKENS_PER_IMAGE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    /// Image tokens typed by the user would need image features nobody supplies.
    #[error("the {field} contains the reserved image token {token:?}")]
    ReservedToken { field: &'static str, token: String },
}

/// A prompt ready for the decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalPrompt {
    /// The rendered and expanded text.
    pub text: String,
    pub ids: Vec<u32>,
    /// Indices into `ids` of the image soft tokens, ascending: `TOKENS_PER_IMAGE` per image, image
    /// after image; feature row j goes to `ids[image_positions[j]]`.
    pub image_positions: Vec<usize>,
    /// Soft tokens per image (the vision graph's `mm_tokens_per_image`).
    pub tokens_per_image: usize,
}

impl MultimodalPrompt {
    /// Gemma3Processor's `token_type_ids`: 1 at image soft tokens, 0 elsewhere. Gemma 3 lets the
    /// tokens of one image attend to each other both ways during prefill; this marks them.
    pub fn token_type_ids(&self) -> Vec<u32> {
        let mut t = vec![0; self.ids.len()];
        self.image_positions.iter().for_each(|&p| t[p] = 1);
        t
    }

    /// Each image's run of soft tokens, in order.
    pub fn image_spans(&self) -> Vec<std::ops::Range<usize>> {
        self.image_positions
            .chunks(self.tokens_per_image.max(1))
            .map(|run| run[0]..run[run.len() - 1] + 1)
            .collect()
    }
}

/// Puts image features where the soft tokens are, as transformers' `masked_scatter` does: row j of
/// `features` (`[positions.len(), hidden]`) replaces the embedding of token `positions[j]` in
/// `embeds` (`[tokens, hidden]`).
pub fn merge_image_features<T: Copy>(
    embeds: &mut [T],
    hidden: usize,
    positions: &[usize],
    features: &[T],
) -> Result<(), String> {
    if hidden == 0 || !embeds.chunks_exact(hidden).remainder().is_empty() {
        return Err(format!(
            "embeddings of {} values are not rows of {hidden}",
            embeds.len()
        ));
    }
    if features.len() != positions.len() * hidden {
        return Err(format!(
            "{} feature values for {} image tokens of width {hidden}",
            features.len(),
            positions.len()
        ));
    }
    let tokens = embeds.len() / hidden;
    if let Some(&bad) = positions.iter().find(|&&p| p >= tokens) {
        return Err(format!("image token position {bad} beyond {tokens} tokens"));
    }
    for (row, &p) in features.chunks_exact(hidden).zip(positions) {
        embeds[p * hidden..(p + 1) * hidden].copy_from_slice(row);
    }
    Ok(())
}

pub struct Gemma3Prompter {
    template: ChatTemplate,
    tokenizer: Tokenizer,
    boi: String,
    eoi: String,
    image_token: String,
    image_token_id: u32,
    tokens_per_image: usize,
}

impl Gemma3Prompter {
    /// A model folder with `tokenizer.json` and `tokenizer_config.json` (template, `boi_token`,
    /// `eoi_token`, `image_token`).
    pub fn from_dir(dir: &Path) -> Result<Gemma3Prompter, PromptError> {
        let template = ChatTemplate::from_dir(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| PromptError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config_err = |message: String| PromptError::Config {
            path: cfg_path.display().to_string(),
            message,
        };
        let cfg: serde_json::Value = std::fs::read_to_string(&cfg_path)
            .map_err(|e| config_err(e.to_string()))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| config_err(e.to_string())))?;
        let token = |key: &str| {
            cfg.get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| config_err(format!("no `{key}` (not a Gemma 3 tokenizer?)")))
        };
        let (boi, eoi, image_token) = (
            token("boi_token")?,
            token("eoi_token")?,
            token("image_token")?,
        );
        let image_token_id = tokenizer
            .token_to_id(&image_token)
            .ok_or_else(|| config_err(format!("{image_token:?} is not in tokenizer.json")))?;
        Ok(Gemma3Prompter {
            template,
            tokenizer,
            boi,
            eoi,
            image_token,
            image_token_id,
            tokens_per_image: TOKENS_PER_IMAGE,
        })
    }

    /// Soft tokens each image expands to (default [`TOKENS_PER_IMAGE`], the real model's): what
    /// the compiled vision graph outputs per image.
    pub fn with_tokens_per_image(mut self, n: usize) -> Self {
        self.tokens_per_image = n;
        self
    }

    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// One user turn: `images` images, then the prompt; an optional system message, which the
    /// template folds into the user turn.
    pub fn build(
        &self,
        system: Option<&str>,
        prompt: &str,
        images: usize,
    ) -> Result<MultimodalPrompt, PromptError> {
        for (field, text) in [("prompt", Some(prompt)), ("system prompt", system)] {
            let text = text.unwrap_or_default();
            for t in [&self.boi, &self.eoi, &self.image_token] {
                if text.contains(t.as_str()) {
                    return Err(PromptError::ReservedToken {
                        field,
                        token: t.clone(),
                    });
                }
            }
        }
        // `ChatMessage` content is a string: images first, then the text, trimmed as the template
        // trims a text part; this renders as transformers' [{type: image}…, {type: text}] content does.
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new(
            "user",
            self.boi.repeat(images) + prompt.trim(),
        ));
        let rendered = self
            .template
            .render(&messages, &TemplateOptions::default())?;
        let full = format!(
            "\n\n{}{}{}\n\n",
            self.boi,
            self.image_token.repeat(self.tokens_per_image),
            self.eoi
        );
        let text = rendered.replace(&self.boi, &full);
        // The template writes `<bos>` itself.
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| PromptError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        let image_positions: Vec<usize> = (0..ids.len())
            .filter(|&i| ids[i] == self.image_token_id)
            .collect();
        if image_positions.len() != images * self.tokens_per_image {
            return Err(PromptError::Tokenizer(format!(
                "{} image tokens after encoding, expected {}",
                image_positions.len(),
                images * self.tokens_per_image
            )));
        }
        Ok(MultimodalPrompt {
            text,
            ids,
            image_positions,
            tokens_per_image: self.tokens_per_image,
        })
    }
}
