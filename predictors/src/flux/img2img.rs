//! `flux-img2img`.

use crate::engine::diffusion::inputs::{Img2Img, Img2ImgInput};
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};

pub struct FluxImg2Img(super::Loaded);

impl Predictor for FluxImg2Img {
    type Input = Img2ImgInput;
    type Valid = Img2Img;
    type Output = Vec<Path>;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        super::setup(ctx, "flux-img2img").map(FluxImg2Img)
    }

    fn validate(&self, input: Img2ImgInput) -> Result<Img2Img, InputError> {
        input.validate()
    }

    fn predict(&self, req: Img2Img, ctx: &PredictContext) -> Result<Vec<Path>, PredictError> {
        super::run(&self.0, &req.generation, Some(&req.image), ctx)
    }
}
