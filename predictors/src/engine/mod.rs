//! The engine shared by the predictors: ONNX Runtime sessions, text generation, vision, diffusion.
