//! Incremental detokenisation for streaming. Decoding one token at a time breaks text: a UTF-8 character
//! may span several byte-level tokens, and SentencePiece-style decoders change a token's text depending on
//! what precedes it. So (as TGI and candle do) we decode a short window twice — up to the last emitted
//! token, and up to the newest — and emit the difference, holding it back while it ends in an incomplete
//! character (U+FFFD). `finish` flushes whatever is held, so no tail is lost.

use tokenizers::Tokenizer;

pub struct IncrementalDecoder<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the decoding window (context for the decoder, already emitted).
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl<'t> IncrementalDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        IncrementalDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> tokenizers::Result<Option<String>> {
        self.ids.push(id);
        let before = self.decode(self.prefix, self.read)?;
        let now = self.decode(self.prefix, self.ids.len())?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let chunk = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(chunk))
        } else {
            Ok(None)
        }
    }

    /// Text held back so far (an unfinished character at the end of generation), decoded lossily.
    pub fn finish(&mut self) -> tokenizers::Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = self.decode(self.prefix, self.read)?;
        let now = self.decode(self.prefix, self.ids.len())?;
        self.prefix = self.read;
        self.read = self.ids.len();
        // When the window's start shifted the text (rare), fall back to emitting all of the unread tokens.
        let chunk = match now.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            None => now,
        };
        Ok((!chunk.is_empty()).then_some(chunk))
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self, from: usize, to: usize) -> tokenizers::Result<String> {
        if from >= to {
            return Ok(String::new());
        }
        self.tokenizer
            .decode(&self.ids[from..to], self.skip_special_tokens)
    }
}
