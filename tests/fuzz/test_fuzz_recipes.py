"""Fuzzing recipes through `cli.py run`: exit 0, 1 or 2, never a traceback, nothing
half-written, nothing outside the run folder touched.

Bases: two tiny runnable recipes (evaluate / export of a tiny checkpoint on one small image)
and every recipe in recipes/ with its data folders swapped for tiny ones. The real recipes
would train for minutes if a mutation left them valid, so they always run with --output at
a folder of user files: plan() checks everything else first, then refuses that folder, so
they exercise every plan-time check and never start a step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from compressor.cli import main
from compressor.recipe import read_recipe_file
from tests.conftest import REPO, write_images
from tests.fuzz import mutate as mu

REAL = sorted((REPO / "recipes").glob("*.yaml"))
TINY: dict[str, dict[str, Any]] = {
    step: {
        "name": "fz",
        "model": "__CKPT__",
        "data": {"eval": "__IMGS__"},
        "threads": 1,
        "steps": [{step: {}}],
    }
    for step in ("evaluate", "export")
}
#: outputs that hold files no run made: every run there must be refused at plan time
FOREIGN = ["__SENTINEL__", ".", "..", "__IMGS__", "__CKPT__"]
OUTPUTS = [*FOREIGN, "fresh", "out", "new/deeper/out", None]


def _real_text(path: Path) -> str:
    text = path.read_text()
    text = text.replace("../shared/data/kodak", "__IMGS__")
    return text.replace("../shared/data/wikipedia-photos", "__CAL__")


REAL_TEXT = {p.stem: _real_text(p) for p in REAL}
REAL_TREE = {name: yaml.safe_load(text) for name, text in REAL_TEXT.items()}
BASES = sorted(TINY) + sorted(REAL_TEXT)

BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
#: whole documents that are no recipe, or hostile YAML
TEXTS = [
    b"",
    b"---",
    b"null",
    b"[]",
    b"- a\n- b",
    b"a: 1\n---\nb: 2\n",
    b"name: fz\nsteps: &s [*s]\n",
    BILLION_LAUGHS.encode(),
    b"steps: " + b"[" * 5000 + b"]" * 5000,
    b"name: " + b"{a: " * 3000 + b"1" + b"}" * 3000,
    b"name: " + b"a" * ((1 << 20) + 16),
    b"\xef\xbb\xbfname: fz\nmodel: __CKPT__\ndata: {eval: __IMGS__}\nsteps: [{evaluate: {}}]\n",
    b"name: f\xe9\nmodel: __CKPT__\ndata: {eval: __IMGS__}\nsteps: [{evaluate: {}}]\n",
    "name: fz\nmodel: __CKPT__\ndata: {eval: __IMGS__}\nsteps: [{evaluate: {}}]\n".encode("utf-16"),
    b"!!python/object/apply:os.system ['touch pwned']",
    b"name: fz\nmodel: __CKPT__\ndata: {eval: __IMGS__}\ng: &g {evaluate: {}}\nsteps: [*g, *g]\n",
    b"<<: {name: fz, model: '__CKPT__', data: {eval: '__IMGS__'}}\nsteps: [{evaluate: {}}]\n",
]


@dataclass(frozen=True)
class Case:
    base: str
    ops: tuple[Any, ...] = ()  # tree ops, then byte ops
    byte_ops: tuple[Any, ...] = ()
    text: bytes | None = None  # a whole document instead of a base
    output: str | None = "fresh"
    flags: tuple[str, ...] = ()


@st.composite
def recipe_cases(draw: st.DrawFn) -> Case:
    # half the examples on the tiny runnable bases: those reach the run itself
    base = draw(st.one_of(st.sampled_from(sorted(TINY)), st.sampled_from(sorted(REAL_TEXT))))
    kind = draw(st.sampled_from(["tree", "tree", "tree", "bytes", "text"]))
    ops = tuple(draw(mu.TREE_OPS)) if kind == "tree" else ()
    byte_ops = tuple(draw(mu.BYTE_OPS)) if kind == "bytes" else ()
    text = draw(st.sampled_from(TEXTS)) if kind == "text" else None
    outputs = FOREIGN if base in REAL_TEXT else OUTPUTS
    output = draw(st.sampled_from(outputs))
    flags = tuple(draw(st.lists(st.sampled_from(["--resume", "--overwrite"]), max_size=2)))
    return Case(base, ops, byte_ops, text, output, flags)


def render(case: Case) -> bytes:
    """The recipe file's bytes, placeholders still in."""
    if case.text is not None:
        return case.text
    if not case.ops and case.base in REAL_TEXT:
        text = REAL_TEXT[case.base].encode()  # comments and flow style as a user wrote them
    else:
        tree: Any = TINY.get(case.base) or REAL_TREE[case.base]
        for op in case.ops:
            tree = mu.apply_tree_op(tree, op)
        text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode()
    return mu.apply_byte_ops(text, list(case.byte_ops))


@dataclass
class World:
    root: Path  # everything of one example: cwd, sentinel, recipe
    shared: Path  # the tiny checkpoint and images (shared by all examples)

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    def fill(self, data: bytes) -> bytes:
        for key, path in (
            ("CKPT", self.shared / "tiny.pt"),
            ("IMGS", self.shared / "imgs"),
            ("CAL", self.shared / "cal"),
            ("SENTINEL", self.root / "sentinel"),
        ):
            data = data.replace(f"__{key}__".encode(), str(path).encode())
        return data


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> Path:
    root = tmp_path_factory.mktemp("fuzz-recipes")
    shutil.copy(tiny_ckpt, root / "tiny.pt")
    write_images(root / "imgs", [(32, 48)], seed=5)
    write_images(root / "cal", [(32, 32)], seed=6)
    return root


def make_world(shared: Path) -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="fz-") as d:
        world = World(Path(d), shared)
        (world.cwd / "photos").mkdir(parents=True)
        (world.cwd / "thesis.tex").write_text("years of work")
        (world.cwd / "photos" / "a.jpg").write_bytes(b"\xff\xd8 jpeg")
        (world.root / "sentinel" / "sub").mkdir(parents=True)
        (world.root / "sentinel" / "keep.txt").write_text("keep")
        (world.root / "sentinel" / "sub" / "b.bin").write_bytes(bytes(range(256)))
        yield world


def parsed(recipe: Path) -> Any:
    """The recipe's YAML as the CLI reads it (bounded: no alias bombs), or None."""
    try:
        return read_recipe_file(recipe)
    except Exception:  # refused (or crashing: the run below reports that)
        return None


def cheap(data: Any, world: World) -> bool:
    """Whether a recipe that passed plan() would only evaluate/export the tiny model on the
    tiny images (a deleted data.eval means scikit-image's photos: a minute, not a second)."""
    try:
        steps = {name for step in data["steps"] for name in step}
        return data["data"]["eval"] == str(world.shared / "imgs") and steps <= set(TINY)
    except Exception:
        return False


def run_dir_of(world: World, output: str | None, data: Any) -> Path | None:
    """Where the run may write: --output, else the recipe's output or exported/<name>."""
    if output is None:
        try:
            output = data.get("output") or os.path.join("exported", data["name"])
        except Exception:  # a recipe the CLI refused: no run folder at all
            return None
    try:
        return Path(os.path.normpath(world.cwd / output))
    except Exception:
        return None


def allowed(change: str, run_dir: Path | None) -> bool:
    """A new path inside the run folder, or a new folder on the way to it."""
    kind, _, path = change.partition(" ")
    if kind != "added" or run_dir is None:
        return False
    p, r = os.path.normpath(path), str(run_dir)
    return p == r or p.startswith(r + os.sep) or r.startswith(p + os.sep)


def check(case: Case, shared: Path) -> None:
    for world in make_world(shared):
        text = world.fill(render(case))
        recipe = world.root / "recipe.yaml"
        recipe.write_bytes(text)
        data = parsed(recipe)
        foreign = case.output in FOREIGN or not cheap(data, world)
        out = case.output if case.output in FOREIGN or not foreign else "__SENTINEL__"
        output = {"fresh": str(world.root / "out")}.get(out or "", out)
        output = world.fill(output.encode()).decode() if output is not None else None
        args = ["run", str(recipe), *(["--output", output] if output is not None else [])]
        before = mu.snapshot(world.root, shared)
        old = os.getcwd()
        os.chdir(world.cwd)
        try:
            result = CliRunner().invoke(main, [*args, *case.flags])
        finally:
            os.chdir(old)
        mu.note(f"exit {result.exit_code}{' (foreign output)' if foreign else ''}")
        assert_outcome(result, world, foreign, run_dir_of(world, output, data), before)


def assert_outcome(
    result: Any, world: World, foreign: bool, run_dir: Path | None, before: dict
) -> None:
    where = f"{result.output[-2000:]}\n(exception: {result.exception!r})"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # its own traceback: hypothesis tells distinct bugs apart by it
    assert "Traceback" not in result.output, where
    assert result.exit_code in (0, 1, 2), where
    if result.exit_code in (1, 2):
        assert mu.one_error_line(result.stderr), where
    if foreign:
        assert result.exit_code == 2, where
    after = mu.snapshot(world.root, world.shared)
    bad = [c for c in mu.changes(before, after) if not allowed(c, run_dir)]
    assert not bad, f"touched outside the run folder {run_dir}: {bad[:5]}\n{where}"
    assert not mu.stray_temporaries(world.root), where
    if run_dir is not None and run_dir.is_dir():
        steps = [p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit()]
        half = [p.name for p in steps if not (p / "manifest.json").is_file()]
        assert not half, f"step folders without manifest.json: {half}\n{where}"
    if result.exit_code == 0:
        assert run_dir is not None and (run_dir / "run.json").is_file(), where


@example(case=Case("evaluate", output="fresh"))
@example(case=Case("evaluate", ops=(("replace", 1, ".."),), output=None))  # name: '..'
@example(case=Case("default", output="__SENTINEL__"))
@mu.FAST
@given(case=recipe_cases())
def test_fuzz_recipes(case: Case, shared: Path) -> None:
    check(case, shared)


@pytest.mark.slow
@mu.SLOW
@given(case=recipe_cases())
def test_fuzz_recipes_slow(case: Case, shared: Path) -> None:
    check(case, shared)


#: examples the fuzzers found, each failing when it was added (see the commit message)
REGRESSIONS = {
    # a NUL byte (any character YAML does not allow): yaml.reader.ReaderError escapes
    # compressor.recipe.read_recipe_file, raised where the loader is built, outside its try
    "nul-byte": Case("evaluate", byte_ops=(("set", 0, 0),), output="__SENTINEL__"),
    # an unknown key holding a line break: compressor.recipe._where quotes keys of up to 40
    # characters verbatim, so the one-line error message becomes two lines
    # (path 8 is the evaluate step's params: `- evaluate: {"a\rb": 1}`)
    "key-with-cr": Case("evaluate", ops=(("add", 8, ("a\rb", 1)),), output="__SENTINEL__"),
    "key-with-newline": Case("evaluate", ops=(("add", 8, ("x\ny", 1)),), output="fresh"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_found_by_fuzzing(name: str, shared: Path) -> None:
    check(REGRESSIONS[name], shared)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_hostile_documents(text: bytes, shared: Path) -> None:
    """Every hostile document once (the fuzzers draw from them too): refused, one line."""
    check(Case("evaluate", text=text, output="fresh"), shared)
