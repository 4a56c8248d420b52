"""The `hello` predictor of runtime/examples/hello.rs, in Python, for coglet 0.23.1.

The differential test serves this under coglet and the Rust `hello` under cogrs, with the same
OpenAPI document (written by `hello schema` to .cog/openapi_schema.json), and compares answers.
"""
import os
import time
from typing import Optional

from cog import BaseModel, BasePredictor, Input, Path, Secret, current_scope, streaming


class Output(BaseModel):
    text: str
    file: Optional[Path] = None


class Predictor(BasePredictor):
    def setup(self) -> None:
        delay = os.environ.get("HELLO_SETUP_DELAY")
        if delay:
            print(f"hello: waiting {delay} s in setup")
            time.sleep(float(delay))
        print("hello: nothing to load")

    @streaming
    def predict(
        self,
        text: str = Input(description="Text to transform"),
        repeat: int = Input(description="How many times to repeat the text", default=1, ge=1, le=10),
        delay: float = Input(description="Seconds to sleep before answering (honours cancellation)", default=0.0, ge=0, le=60),
        mode: str = Input(description="Upper- or lower-case the text", default="upper", choices=["upper", "lower"]),
        fail: bool = Input(description="Fail with an error instead of answering", default=False),
        image: Optional[Path] = Input(description="An optional image; its size in bytes is logged", default=None),
        token: Optional[Secret] = Input(description="An optional secret; only its length is logged", default=None),
        write_file: bool = Input(description="Also return the text as a .txt file", default=False),
    ) -> Output:
        print(f"transforming {len(text)} characters")
        if image is not None:
            print(f"image of {os.path.getsize(image)} bytes")
        if token is not None:
            print(f"token of {len(token.get_secret_value())} characters")
        end = time.time() + delay
        while time.time() < end:
            time.sleep(0.005)
        if fail:
            raise ValueError("asked to fail")
        one = text.upper() if mode == "upper" else text.lower()
        out = " ".join([one] * repeat)
        current_scope().record_metric("characters", len(out))
        f = None
        if write_file:
            f = Path("/tmp") / f"hello-{os.getpid()}-{time.time_ns()}" / "output.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(out)
        print("done")
        return Output(text=out, file=f)
