"""Where weights come from. A source spec is ``scheme:rest`` or a variant name; ``resolve`` turns it into files.

- ``synthetic:NAME``: random weights, real architecture (``synthetic.py``); videos are noise by design.
- ``local:PATH``: a diffusers-layout folder, with an optional ``lightning/`` LoRA pair beside it.
- ``hf:REPO[@REVISION]`` / ``modelscope:REPO[@REVISION]``: that hub only, through its own client.
- a variant name from ``playbooks/variants.yaml`` (``t2v-a14b``): its pinned revision from the Hugging Face Hub
  (or ``HF_ENDPOINT``), else ModelScope, with the Lightning LoRA pair that goes with it.
A repo the registry knows brings its allow patterns and its Lightning pair under ``hf:``/``modelscope:`` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agent import variants
from agent.sources import download, hub, modelscope

SCHEMES = ("synthetic", "local", "hf", "modelscope")
LORA_FILES = {"high_noise": "high_noise_model.safetensors", "low_noise": "low_noise_model.safetensors"}
DEFAULT_REVISION = {hub.NAME: "main", modelscope.NAME: "master"}


class SourceError(ValueError):
    """A source spec that cannot be resolved; the message says what to do."""


class DownloadFailed(SourceError):
    """A download that could not be done (no hub reachable, a corrupted file, no room on disk): not bad input."""


@dataclass(frozen=True)
class ModelFiles:
    spec: str
    path: str  # a diffusers-layout folder, or the spec itself for a model built directly on the device
    lora: dict[str, str] | None  # {"high_noise": path, "low_noise": path}, when the source has files
    lightning: bool  # whether a Lightning LoRA exists (as files, or made in memory with the model)
    weights: str = "real"  # "synthetic": random weights, the videos are noise by design
    downloads: list[dict] = field(default_factory=list)  # what was fetched, from where, how fast (the journal's)


def _lora_beside(path: Path) -> dict[str, str] | None:
    files = {role: path / "lightning" / name for role, name in LORA_FILES.items()}
    if all(f.is_file() for f in files.values()):
        return {role: str(f) for role, f in files.items()}
    return None


def weights_of(spec: str) -> str:
    """ "synthetic" (random weights: videos are noise by design) or "real", from the spec alone."""
    scheme, colon, rest = spec.partition(":")
    if colon and scheme == "synthetic":
        return "synthetic"
    if colon and scheme == "local" and (Path(rest).expanduser() / "synthetic.json").is_file():
        return "synthetic"
    return "real"


def synthetic_twin(spec: str) -> str:
    """The synthetic source with the architecture of ``spec`` (benchmark without downloading)."""
    scheme, colon, rest = spec.partition(":")
    if colon and scheme == "synthetic":
        return spec
    variant = variants.of_repo(rest.partition("@")[0]) if colon else variants.get(spec)
    if variant is None or variant.synthetic is None:
        known = ", ".join(f"synthetic:{name}" for name in synthetic_names())
        raise SourceError(f"model source {spec!r} has no synthetic twin; known: {known}")
    return f"synthetic:{variant.synthetic}"


def synthetic_names() -> list[str]:
    from agent.sources import synthetic

    return sorted(synthetic.PRESETS)


def is_known(spec: str) -> bool:
    scheme, colon, rest = spec.partition(":")
    if colon and scheme in ("hf", "modelscope"):
        return bool(re.fullmatch(variants.REPO_ID, rest.partition("@")[0]))
    return bool(rest) and scheme in SCHEMES if colon else spec in variants.load()


def resolve(spec: str, cache_dir: Path, seed: int = 0) -> ModelFiles:
    """Return local files for ``spec``, building or fetching them into ``cache_dir`` when needed."""
    scheme, colon, rest = spec.partition(":")
    try:
        if not colon:
            return _remote(spec, variants.get(spec), (hub.NAME, modelscope.NAME), None, cache_dir)
        if scheme in ("hf", "modelscope"):
            name = hub.NAME if scheme == "hf" else modelscope.NAME
            repo, _, revision = rest.partition("@")
            if not re.fullmatch(variants.REPO_ID, repo):
                raise SourceError(f"model source {spec!r}: {repo!r} is not a repo id; write ORG/NAME, e.g. hf:Wan-AI/...")
            return _remote(spec, variants.of_repo(repo), (name,), (repo, revision or None), cache_dir)
    except variants.VariantError as err:
        raise SourceError(f"model source {spec!r}: {err}") from None
    except download.FetchError as err:
        raise DownloadFailed(f"model source {spec!r}: {err}") from None
    if scheme == "synthetic":
        from agent.sources import synthetic

        try:
            preset = synthetic.preset(rest)
        except ValueError as err:
            raise SourceError(f"model source {spec!r}: {err}") from None
        if not preset.on_disk:  # built on the device by the worker itself
            return ModelFiles(spec=spec, path=spec, lora=None, lightning=preset.lightning, weights="synthetic")
        path = synthetic.materialize(rest, seed, cache_dir)
    elif scheme == "local":
        path = Path(rest).expanduser()
        if not (path / "model_index.json").is_file():
            raise SourceError(f"model source {spec!r}: no model_index.json in {path}; point it at a diffusers-layout folder")
    else:
        raise SourceError(
            f"model source {spec!r}: unknown scheme {scheme!r}; use one of {', '.join(s + ':' for s in SCHEMES)} or a variant "
            f"({', '.join(variants.load())})"
        )
    lora = _lora_beside(path)
    weights = "synthetic" if (path / "synthetic.json").is_file() else "real"
    return ModelFiles(spec=spec, path=str(path), lora=lora, lightning=lora is not None, weights=weights)


def _published(source: variants.Variant | variants.Lightning | None, name: str) -> variants.Repo | None:
    if source is None:
        return None
    return source.hub if name == hub.NAME else source.modelscope


def _model_places(variant: variants.Variant | None, names: tuple[str, ...], asked: tuple[str, str | None] | None) -> tuple:
    """(hub, repo, revision) to try, in order: the variant's pinned places, or the repo asked for (at the revision
    asked, else the registry's pin when it knows the repo, else the hub's default branch)."""
    places = []
    for name in names:
        published = _published(variant, name)
        if asked:
            repo, revision = asked
            pinned = published.revision if published and published.repo == repo else DEFAULT_REVISION[name]
            places.append((name, repo, revision or pinned))
        elif published:
            places.append((name, published.repo, published.revision))
    return tuple(places)


def _remote(spec: str, variant: variants.Variant | None, names: tuple[str, ...], asked, cache_dir: Path) -> ModelFiles:
    smaller = [v for v in variants.load().values() if v.size_GB < (variant.size_GB if variant else 0) and not v.unsupported]
    ways_on = f", or a smaller variant ({', '.join(f'{v.name}: {v.size_GB:.0f} GB' for v in smaller)})" if smaller else ""
    allow = tuple(variant.files) if variant else ("*",)
    model = download.fetch(
        download.Wanted(spec, spec, _model_places(variant, names, asked), allow, ("model_index.json",)), cache_dir, ways_on
    )
    fetched = [model]
    lora: dict[str, str] | None = None
    if variant and variant.lightning:
        places = tuple(
            (name, repo.repo, repo.revision) for name in names if (repo := _published(variant.lightning, name)) is not None
        )
        if places:
            wanted = download.Wanted(f"{spec} Lightning LoRA", spec, places, tuple(variant.lightning.allow))
            pair = download.fetch(wanted, cache_dir, "")
            fetched.append(pair)
            sub = pair.root / variant.lightning.subfolder
            lora = {role: str(sub / name) for role, name in variant.lightning.files.items()}
    if lora is None:
        lora = _lora_beside(model.root)
    return ModelFiles(
        spec=spec, path=str(model.root), lora=lora, lightning=lora is not None, downloads=[f.record() for f in fetched]
    )
