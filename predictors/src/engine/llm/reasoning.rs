//! Separating a reasoning model's thinking from its answer. SmolLM3 (think mode) and Phi-4-reasoning write
//! `<think> ... </think>` and then the answer; in SmolLM3's no_think mode the template already closed an
//! empty think block, so the output is all answer. A generation cut off inside the block (max_new_tokens)
//! has reasoning and no answer.

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasoningSplit {
    pub reasoning: String,
    pub answer: String,
}

pub fn split_reasoning(text: &str) -> ReasoningSplit {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    let trimmed = text.trim_start();
    match (trimmed.strip_prefix(OPEN), text.find(CLOSE)) {
        (_, Some(end)) => {
            let before = &text[..end];
            let reasoning = before.trim_start().strip_prefix(OPEN).unwrap_or(before);
            ReasoningSplit {
                reasoning: reasoning.trim().to_string(),
                answer: text[end + CLOSE.len()..].trim_start().to_string(),
            }
        }
        (Some(rest), None) => ReasoningSplit {
            reasoning: rest.trim().to_string(),
            answer: String::new(),
        },
        (None, None) => ReasoningSplit {
            reasoning: String::new(),
            answer: text.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str) -> (String, String) {
        let s = split_reasoning(t);
        (s.reasoning, s.answer)
    }

    #[test]
    fn think_block_then_answer() {
        assert_eq!(
            split("<think>\n2+2 is 4.\n</think>\nThe answer is 4."),
            ("2+2 is 4.".into(), "The answer is 4.".into())
        );
        // Phi-4-reasoning starts its output with the tag directly after <|im_sep|>.
        assert_eq!(split("<think>x</think>y"), ("x".into(), "y".into()));
        // The opening tag may have been in the prompt (only the closing one is generated).
        assert_eq!(
            split("thinking...</think>\n\nDone"),
            ("thinking...".into(), "Done".into())
        );
    }

    #[test]
    fn no_think_and_truncated() {
        assert_eq!(
            split("Just the answer."),
            (String::new(), "Just the answer.".into())
        );
        assert_eq!(
            split("<think>\nstill going"),
            ("still going".into(), String::new())
        );
    }
}
