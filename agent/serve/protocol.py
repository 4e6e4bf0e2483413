"""OpenAI's video API as this server speaks it: the create request (form or JSON fields) checked against what the
served configuration can make, the video object, and errors in OpenAI's shape.

A request names a clip in OpenAI's terms (``size`` "WxH", ``seconds``) or in the open-model servers' extra fields
(``num_frames``, ``fps``, ``num_inference_steps``, ...). What is left out comes from the converged run. Nothing is
silently corrected: a size or frame count the model cannot make is refused, and the message says what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_SEED = 2**32 - 1  # numpy's and most pipelines' seed range
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# OpenAI's error types; the SDK picks its exception class by the HTTP status alone.
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


class ApiError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


class VideoCreate(BaseModel):
    """The fields of ``POST /v1/videos``. Form values arrive as text; pydantic reads numbers out of them."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    size: str | None = None
    negative_prompt: str | None = None  # None: the converged run's; "" asks for none
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(default=None, ge=1, le=1000)
    guidance_scale: float | None = Field(default=None, ge=0, le=50, allow_inf_nan=False)
    guidance_scale_2: float | None = Field(default=None, ge=0, le=50, allow_inf_nan=False)
    flow_shift: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    num_frames: int | None = Field(default=None, ge=1)
    fps: int | None = Field(default=None, ge=1, le=120)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):  # JSON's true would read as 1
            raise ValueError("a boolean is not allowed here")
        return value


@dataclass(frozen=True)
class Clip:
    """What one job generates, every field resolved (None only where the converged configuration decides)."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    frames: int
    fps: int
    seed: int
    steps: int | None
    guidance_scale: float | None
    guidance_scale_2: float | None
    flow_shift: float | None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def seconds(self) -> str:
        return format_seconds(self.frames, self.fps)


def format_seconds(frames: int, fps: int) -> str:
    """The clip's duration as OpenAI writes ``seconds``: "4", "0.5", "3.33"."""
    return f"{(frames - 1) / fps:.2f}".rstrip("0").rstrip(".")


def _described(err: ValidationError) -> str:
    said = []
    for e in err.errors():
        field = ".".join(str(part) for part in e["loc"]) or "body"
        if e["type"] == "extra_forbidden":
            said.append(f"unknown parameter {field!r} (this server takes: {', '.join(VideoCreate.model_fields)})")
        elif e["type"] == "missing":
            said.append(f"{field} is required")
        else:
            said.append(f"{field}: {e['msg']} (got {e.get('input')!r:.80})")
    return "; ".join(said)


def parse_create(fields: dict[str, Any], defaults: dict) -> Clip:
    """The clip a create request asks for, or ApiError(400) saying what is wrong and what is allowed.
    ``defaults`` is the engine's: the converged run's workload and knobs, and the largest clip it makes."""
    if any(key == "input_reference" or key.startswith("input_reference[") for key in fields):
        raise bad_request(f"input_reference: {defaults['model']} is a text-to-video model; it takes no image or video "
                          "(send the prompt alone)", "input_reference", "unsupported_parameter")  # fmt: skip
    try:
        req = VideoCreate.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]["loc"]
        raise bad_request(_described(err), str(first[0]) if first else None) from None
    if req.model is not None and req.model != defaults["model"]:
        raise bad_request(f"model {req.model!r} is not served here; this server serves {defaults['model']!r} "
                          "(or leave model out)", "model", "model_not_found")  # fmt: skip
    limit = defaults["max_prompt_chars"]
    if not req.prompt.strip():
        raise bad_request("prompt is empty: describe the video to generate", "prompt")
    for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt or "")):
        if len(text) > limit:
            raise bad_request(f"{name} is {len(text)} characters; at most {limit} are allowed", name, "string_above_max_length")
    width, height = _size(req.size, defaults)
    fps = req.fps if req.fps is not None else int(defaults["fps"])
    return Clip(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        width=width,
        height=height,
        frames=_frames(req, fps, defaults),
        fps=fps,
        seed=req.seed if req.seed is not None else int(defaults["seed"]),
        steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        guidance_scale_2=req.guidance_scale_2,
        flow_shift=req.flow_shift,
    )


def _multiple_of(value: int, step: int) -> str | None:
    if value % step == 0:
        return None
    lower = value - value % step
    return f"a multiple of {step} (got {value}; try {lower or step} or {lower + step})"


def _size(size: str | None, defaults: dict) -> tuple[int, int]:
    if size is None:
        return int(defaults["width"]), int(defaults["height"])
    step, pixels = int(defaults.get("multiple", 16)), int(defaults["max_pixels"])
    allowed = (f"sizes up to {defaults['max_width']}x{defaults['max_height']} and {pixels} pixels (720p), each side a "
               f"multiple of {step}")  # fmt: skip
    found = SIZE.match(size)
    if not found:
        raise bad_request(f"size {size!r} is not WIDTHxHEIGHT (e.g. {defaults['width']}x{defaults['height']}); {allowed}",
                          "size")  # fmt: skip
    width, height = int(found[1]), int(found[2])
    for side, value, most in (("width", width, defaults["max_width"]), ("height", height, defaults["max_height"])):
        if problem := _multiple_of(value, step):
            raise bad_request(f"size {size}: {side} must be {problem}; {allowed}", "size")
        if not step <= value <= most:
            raise bad_request(f"size {size}: {side} {value} is out of range; {allowed}", "size")
    if width * height > pixels:
        raise bad_request(f"size {size}: {width * height} pixels; {allowed}", "size")
    return width, height


def _frames(req: VideoCreate, fps: int, defaults: dict) -> int:
    most = int(defaults["max_frames"])
    if req.num_frames is not None:
        frames, param, asked = req.num_frames, "num_frames", f"num_frames {req.num_frames}"
        if frames % 4 != 1:
            lower = frames - (frames - 1) % 4
            raise bad_request(f"{asked} is not 4n+1 (try {max(lower, 1)} or {lower + 4}); at most {most}", param)
    elif req.seconds is not None:
        # The nearest 4n+1 frames to the duration asked; the response's ``seconds`` says what is made.
        frames, param = 4 * round(min(req.seconds * fps, 4.0 * most) / 4) + 1, "seconds"  # bounded: no overflow
        asked = f"seconds {req.seconds:g} at {fps} fps ({frames} frames)"
    else:
        return int(defaults["frames"])
    if frames > most:
        raise bad_request(f"{asked} is longer than the {most} frames allowed (at {fps} fps: at most "
                          f"{format_seconds(most, fps)} seconds)", param)  # fmt: skip
    return frames


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """OpenAI's video object (openai.types.Video)."""

    id: str
    object: str = "video"
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    status: str  # queued | in_progress | completed | failed
    progress: int
    model: str
    prompt: str
    seconds: str
    size: str
    error: VideoError | None = None


def video_object(job: dict) -> dict:
    """The video object of a stored job (agent/serve/jobs.py)."""
    return Video.model_validate({k: job.get(k) for k in Video.model_fields if k != "object"}).model_dump()


def video_list(jobs: list[dict], has_more: bool) -> dict:
    data = [video_object(job) for job in jobs]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "has_more": has_more, "first_id": first, "last_id": last}


def video_deleted(job_id: str) -> dict:
    return {"id": job_id, "object": "video.deleted", "deleted": True}
