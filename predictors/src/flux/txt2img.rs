//! `flux-txt2img`.

use crate::engine::diffusion::inputs::{Generation, Txt2ImgInput};
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};

pub struct FluxTxt2Img(super::Loaded);

impl Predictor for FluxTxt2Img {
    type Input = Txt2ImgInput;
    type Valid = Generation;
    type Output = Vec<Path>;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        super::setup(ctx, "flux-txt2img").map(FluxTxt2Img)
    }

    fn validate(&self, input: Txt2ImgInput) -> Result<Generation, InputError> {
        input.validate()
    }

    fn predict(&self, gen: Generation, ctx: &PredictContext) -> Result<Vec<Path>, PredictError> {
        super::run(&self.0, &gen, None, ctx)
    }
}
