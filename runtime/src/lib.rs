//! The Cog HTTP predictor protocol (being written).
