//! Which LoRAs a prompt switches on. The deployment this replaces activated the
//! open-image-preferences LoRA with any of twelve style words and the Ghibsky LoRA with its own
//! trigger, `GHIBSKY`; both may be active at once, neither means the base model.

use regex::Regex;
use std::sync::OnceLock;

/// The style words that activate the open-image-preferences LoRA (it has no trigger of its own).
pub const PREFERENCE_TRIGGERS: [&str; 12] = [
    "Cinematic",
    "Photographic",
    "Anime",
    "Manga",
    "Digital art",
    "Pixel art",
    "Fantasy art",
    "Neonpunk",
    "3D Model",
    "Painting",
    "Animation",
    "Illustration",
];

/// The Ghibsky LoRA's trigger (its card: start the prompt with "GHIBSKY style").
pub const GHIBSKY_TRIGGER: &str = "GHIBSKY";

/// The two LoRAs the FLUX predictors carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Style {
    /// data-is-better-together/open-image-preferences-v1-flux-dev-lora
    OpenImagePreferences,
    /// aleksa-codes/flux-ghibsky-illustration
    Ghibsky,
}

impl Style {
    pub fn name(self) -> &'static str {
        match self {
            Style::OpenImagePreferences => "open-image-preferences",
            Style::Ghibsky => "ghibsky",
        }
    }
}

/// `\b(word)\b`, case-insensitive, a multi-word trigger matching any run of whitespace between
/// its words (so "digital  art" and "Digital\nArt" count, "digital-art" and "digitalart" do not).
fn pattern(words: &[&str]) -> Regex {
    let alts: Vec<String> = words
        .iter()
        .map(|w| {
            w.split_whitespace()
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join(r"\s+")
        })
        .collect();
    Regex::new(&format!(r"(?i)\b(?:{})\b", alts.join("|"))).expect("trigger pattern")
}

fn preference_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| pattern(&PREFERENCE_TRIGGERS))
}

fn ghibsky_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| pattern(&[GHIBSKY_TRIGGER]))
}

/// The LoRAs `prompt` activates, in a fixed order (preferences first), each at most once.
pub fn active_styles(prompt: &str) -> Vec<Style> {
    let mut styles = Vec::new();
    if preference_pattern().is_match(prompt) {
        styles.push(Style::OpenImagePreferences);
    }
    if ghibsky_pattern().is_match(prompt) {
        styles.push(Style::Ghibsky);
    }
    styles
}

/// What the logs and the output say about the LoRAs a prediction ran with.
pub fn describe(styles: &[Style], lora_scale: f32) -> String {
    if styles.is_empty() {
        return "LoRA: none (base model)".into();
    }
    let names: Vec<&str> = styles.iter().map(|s| s.name()).collect();
    format!("LoRA: {} at scale {lora_scale}", names.join(" + "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Style::*;

    #[test]
    fn each_style_word_activates_preferences_in_any_case() {
        for w in PREFERENCE_TRIGGERS {
            for p in [
                format!("a {w} shot of a fox"),
                w.to_uppercase(),
                format!("{}, at dusk", w.to_lowercase()),
            ] {
                assert_eq!(active_styles(&p), vec![OpenImagePreferences], "{p:?}");
            }
        }
    }

    #[test]
    fn only_whole_words_count() {
        for p in [
            "animated fox",        // not "Animation"/"Anime"
            "animes",              // a longer word
            "paintings on a wall", // plural is another word
            "a manga_style cat",   // '_' is a word character
            "digitalart",
            "digital-art poster", // words joined by '-' are not the phrase
            "3DModel",
            "ghibskyish",
            "",
        ] {
            assert_eq!(active_styles(p), vec![], "{p:?}");
        }
        assert_eq!(active_styles("anime-style fox"), vec![OpenImagePreferences]);
        assert_eq!(
            active_styles("Digital \t Art of a cat"),
            vec![OpenImagePreferences]
        );
        assert_eq!(
            active_styles("a 3d model of a car"),
            vec![OpenImagePreferences]
        );
    }

    #[test]
    fn description_names_the_active_loras() {
        assert_eq!(describe(&[], 1.0), "LoRA: none (base model)");
        assert_eq!(
            describe(&active_styles("GHIBSKY anime"), 0.8),
            "LoRA: open-image-preferences + ghibsky at scale 0.8"
        );
    }

    #[test]
    fn ghibsky_alone_and_together() {
        assert_eq!(active_styles("GHIBSKY style, a valley"), vec![Ghibsky]);
        assert_eq!(
            active_styles("ghibsky style painting"),
            vec![OpenImagePreferences, Ghibsky]
        );
        assert_eq!(
            active_styles("Cinematic GHIBSKY anime"),
            vec![OpenImagePreferences, Ghibsky]
        );
    }
}
