"""The members of a family, resolved and checked at plan time.

A recipe's `model:` names a family when it is a list, or a glob ('models/*.pt'). Every
member gets its own folder, exported/<run>/<member>/NN_<step>/, named after its file (its
stem, made a slug). Plan-time checks read only an export's manifest.json or a checkpoint's
`arch` field (torch.load with weights_only; no model is built): a family needs at least
MIN_POINTS members (a BD curve), and members of different archs are refused when the recipe
changes the models (a prune ratio, an export or a quantization made for one arch).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import CompressorError, RecipeError
from compressor.metrics.bdrate import MIN_POINTS

GLOB_CHARS = "*?["
#: the folder of the family comparison, beside the members' folders
FAMILY_DIR = "family"


@dataclass(frozen=True)
class Member:
    name: str
    path: Path
    #: as stored (a checkpoint's arch field, an export's manifest); None: not recorded
    arch: str | None


def is_family(spec: str | list[str]) -> bool:
    return isinstance(spec, list) or any(c in spec for c in GLOB_CHARS)


def expand(spec: str | list[str], bundled: tuple[str, Path]) -> list[Path]:
    """The members' paths, in the order given (a glob's matches sorted)."""
    paths: list[Path] = []
    for item in spec if isinstance(spec, list) else [spec]:
        if item == bundled[0]:
            paths.append(bundled[1])
        elif any(c in item for c in GLOB_CHARS):
            found = sorted(glob.glob(str(Path(item).expanduser())))
            if not found:
                raise RecipeError(f"model {item!r} matches no checkpoint or export folder")
            paths += [Path(f) for f in found]
        elif Path(item).expanduser().exists():
            paths.append(Path(item).expanduser())
        else:
            raise RecipeError(
                f"model {item} does not exist (a checkpoint, an export, or 'bundled')"
            )
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            raise RecipeError(
                f"model: {path} is listed twice in the family (as {seen[path.resolve()]})"
            )
        seen[path.resolve()] = path
    return paths


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")
    return slug or "member"


def member_names(paths: list[Path]) -> list[str]:
    """Folder names: the files' stems (an export folder's or step folder's own name), with
    the parent folder's name added where two stems are the same."""
    names = [_slug(p.stem) for p in paths]
    if len(set(names)) != len(names):
        names = [_slug(f"{p.parent.name}-{p.stem}") for p in paths]
    if len(set(names)) != len(names):
        names = [f"m{i}-{n}" for i, n in enumerate(names, start=1)]
    return [f"member-{n}" if n == FAMILY_DIR else n for n in names]


def stored_arch(path: Path) -> str | None:
    """The arch a checkpoint or an export records, without building a model."""
    if path.is_dir() and not (path / "model.pt").is_file():
        from compressor.runtime import manifest

        return manifest.read(manifest.locate(path)).arch
    from compressor.checkpoint import safe_load

    obj = safe_load(path / "model.pt" if path.is_dir() else path)
    arch = obj.get("arch") if isinstance(obj, dict) else None
    return arch if isinstance(arch, str) and arch else None


def resolve(
    spec: str | list[str], bundled: tuple[str, Path], arch: str | None, one_arch: bool
) -> list[Member]:
    """The family's members, checked: enough for a curve, one arch where `one_arch`."""
    paths = expand(spec, bundled)
    if len(paths) < MIN_POINTS:
        listed = ", ".join(str(p) for p in paths) or "none"
        raise RecipeError(
            f"model: a family needs at least {MIN_POINTS} members for its RD curve (BD-rate); "
            f"got {len(paths)} ({listed}); give a single model as a plain path instead"
        )
    members = []
    for name, path in zip(member_names(paths), paths, strict=True):
        try:
            members.append(Member(name, path, stored_arch(path) or arch))
        except CompressorError as e:
            raise RecipeError(f"model: family member {path}: {e}") from None
    archs = {m.arch for m in members if m.arch is not None}
    if one_arch and len(archs) > 1:
        listed = ", ".join(f"{m.path.name}: {m.arch}" for m in members)
        raise RecipeError(
            f"model: the family's members are of different archs ({listed}); the recipe's "
            "steps change the models, so every member must be of one arch"
        )
    return members
