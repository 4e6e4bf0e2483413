"""Where weights come from. A source spec is ``scheme:rest``; ``resolve`` turns it into files on disk.

Schemes: ``synthetic:NAME`` (random weights, real architecture; see ``synthetic.py``) and
``local:PATH`` (a diffusers-layout folder, with an optional ``lightning/`` LoRA pair beside it).
Hub and ModelScope downloads plug in here as further schemes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("synthetic", "local")
LORA_FILES = {"high_noise": "high_noise_model.safetensors", "low_noise": "low_noise_model.safetensors"}


class SourceError(ValueError):
    """A source spec that cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class ModelFiles:
    spec: str
    path: str  # a diffusers-layout folder, or the spec itself for a model built directly on the device
    lora: dict[str, str] | None  # {"high_noise": path, "low_noise": path}, when the source has files
    lightning: bool  # whether a Lightning LoRA exists (as files, or made in memory with the model)


def _lora_beside(path: Path) -> dict[str, str] | None:
    files = {role: path / "lightning" / name for role, name in LORA_FILES.items()}
    if all(f.is_file() for f in files.values()):
        return {role: str(f) for role, f in files.items()}
    return None


def resolve(spec: str, cache_dir: Path, seed: int = 0) -> ModelFiles:
    """Return local files for ``spec``, building or fetching them into ``cache_dir`` when needed."""
    scheme, _, rest = spec.partition(":")
    if scheme == "synthetic":
        from agent.sources import synthetic

        try:
            on_disk = synthetic.preset(rest).on_disk
        except ValueError as err:
            raise SourceError(f"model source {spec!r}: {err}") from None
        if not on_disk:  # built on the device by the worker itself
            return ModelFiles(spec=spec, path=spec, lora=None, lightning=True)
        path = synthetic.materialize(rest, seed, cache_dir)
    elif scheme == "local":
        path = Path(rest).expanduser()
        if not (path / "model_index.json").is_file():
            raise SourceError(f"model source {spec!r}: no model_index.json in {path}; point it at a diffusers-layout folder")
    else:
        raise SourceError(f"model source {spec!r}: unknown scheme {scheme!r}; use one of {', '.join(s + ':' for s in SCHEMES)}")
    lora = _lora_beside(path)
    return ModelFiles(spec=spec, path=str(path), lora=lora, lightning=lora is not None)
