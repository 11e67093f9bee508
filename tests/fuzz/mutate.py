"""Mutation strategies and checks shared by the fuzz tests.

Every strategy here is static data (op tuples, YAML trees with placeholders): the test body
applies the ops to inputs built by fixtures, so hypothesis prints a readable failing example
and the example does not depend on a temporary path.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,  # nothing written into the repo (.hypothesis/)
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
}
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
#: the default suite: few examples, the same ones on every run (CI is reproducible); no
#: shrinking (a failing example is printed as found and reproduces as is) and no "explain"
#: phase: on a slow failing example both rerun it for minutes
FAST = settings(max_examples=30, derandomize=True, phases=_PHASES, **_COMMON)
#: the slow suite (@pytest.mark.slow): ten times as many, new ones on every run, shrunk
SLOW = settings(max_examples=300, derandomize=False, phases=[*_PHASES, Phase.shrink], **_COMMON)


def note(what: str) -> None:
    """hypothesis.event (shown by --hypothesis-show-statistics); a no-op outside @given."""
    if currently_in_test_context():
        event(what)


# -- byte-level mutations ----------------------------------------------------------------------

_POS = st.integers(0, 1 << 20)
BYTE_OP = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("set"), _POS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _POS),
    st.tuples(st.just("insert"), _POS, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _POS, st.integers(1, 64)),
    st.tuples(st.just("duplicate"), _POS, st.integers(1, 256)),
    st.tuples(st.just("zero"), _POS, st.integers(1, 256)),
)
BYTE_OPS = st.lists(BYTE_OP, min_size=1, max_size=4)


def apply_byte_op(data: bytes, op: tuple[Any, ...]) -> bytes:
    """One byte-level mutation; positions wrap around the data's length."""
    buf = bytearray(data)
    n = max(len(buf), 1)
    kind, pos = op[0], op[1] % n
    if kind == "flip" and buf:
        buf[pos] ^= 1 << op[2]
    elif kind == "set" and buf:
        buf[pos] = op[2]
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "insert":
        buf[pos:pos] = op[2]
    elif kind == "delete":
        del buf[pos : pos + op[2]]
    elif kind == "duplicate":
        buf[pos:pos] = buf[pos : pos + op[2]]
    elif kind == "zero":
        end = min(len(buf), pos + op[2])
        buf[pos:end] = bytes(end - pos)
    return bytes(buf)


def apply_byte_ops(data: bytes, ops: list[tuple[Any, ...]]) -> bytes:
    for op in ops:
        data = apply_byte_op(data, op)
    return data


# -- tree-level mutations (recipes, checkpoint dicts) ------------------------------------------

PATH_LIKE = ["..", ".", "/", "../x", "a/b", "", " ", "~", "-", "--help", "exported", "__SENTINEL__"]
WEIRD_SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 2, 2**31, 2**63, -(2**63), 10**30, 1e308, -0.0, 0.5,
    math.nan, math.inf, -math.inf, "", "null", "yes", "1e9", "\x00", "é☃𝄞", "a" * 5000,
    [], {}, [[[[]]]], {"a": {"b": {"c": None}}},
]  # fmt: skip
WEIRD = st.one_of(
    st.sampled_from(WEIRD_SCALARS + PATH_LIKE),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.integers(-3, 300), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
KEY = st.one_of(st.sampled_from(["", "steps", "name", "N", "M", "__class__"]), st.text(max_size=8))
#: (op, which path (index into the tree's paths, wrapped), argument)
TREE_OP = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 999), st.none()),
    st.tuples(st.just("replace"), st.integers(0, 999), WEIRD),
    st.tuples(st.just("rename"), st.integers(0, 999), KEY),
    st.tuples(st.just("add"), st.integers(0, 999), st.tuples(KEY, WEIRD)),
    st.tuples(st.just("duplicate"), st.integers(0, 999), st.none()),
    st.tuples(st.just("wrap"), st.integers(0, 999), st.sampled_from(["list", "dict", "deep"])),
)
TREE_OPS = st.lists(TREE_OP, min_size=1, max_size=3)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of nested dicts/lists, the root () first."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += paths(v, (*prefix, i))
    return out


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        tree = tree[part]
    return tree


def apply_tree_op(
    tree: Any, op: tuple[Any, Any, Any], weird: Callable[[Any], Any] = copy.deepcopy
) -> Any:
    """One structural mutation of a copy of `tree` (dicts/lists of plain values or tensors)."""
    tree = copy.copy(tree) if not isinstance(tree, dict | list) else _copy(tree)
    kind, which, arg = op
    all_paths = paths(tree)
    path = all_paths[which % len(all_paths)]
    if not path:  # the root: only a wrap or a replace makes sense
        if kind == "replace":
            return weird(arg)
        return _wrap(tree, arg) if kind == "wrap" else tree
    parent, last = _parent(tree, path), path[-1]
    if kind == "delete":
        del parent[last]
    elif kind == "replace":
        parent[last] = weird(arg)
    elif kind == "wrap":
        parent[last] = _wrap(parent[last], arg)
    elif kind == "duplicate":
        if isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
        else:
            parent[f"{last}_copy" if isinstance(last, str) else "copy"] = parent[last]
    elif kind == "rename" and isinstance(parent, dict):
        parent[arg] = parent.pop(last)
    elif kind == "add":
        key, value = arg
        target = parent[last]
        if isinstance(target, dict):
            target[key] = weird(value)
        elif isinstance(target, list):
            target.append(weird(value))
    return tree


def _copy(tree: Any) -> Any:
    """A copy of the containers; leaves (tensors too) shared, so mutations never leak back."""
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy(v) for v in tree]
    return tree


def _wrap(value: Any, how: str) -> Any:
    if how == "list":
        return [value]
    if how == "dict":
        return {"value": value}
    for _ in range(60):  # nesting deep enough to hit recursion-sensitive code paths
        value = [value]
    return value


# -- file-system checks ------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under the roots, by absolute path."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = None
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[p] = Path(p).read_bytes() if not os.path.islink(p) else b"<link>"
    return out


def changes(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> list[str]:
    """What differs between two snapshots, each line naming the path and how."""
    out = [f"removed {p}" for p in before if p not in after]
    out += [f"changed {p}" for p in before if p in after and before[p] != after[p]]
    out += [f"added {p}" for p in after if p not in before]
    return sorted(out)


def stray_temporaries(root: Path) -> list[str]:
    """Atomic-write leftovers: '.X.partial' step folders, '.X.staging-' runs, '.X.tmp' files."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            hidden = name.startswith(".")
            if hidden and (name.endswith((".partial", ".tmp")) or ".staging-" in name):
                bad.append(os.path.join(dirpath, name))
            if hidden and ".old-" in name:
                bad.append(os.path.join(dirpath, name))
    return bad


def one_error_line(stderr: str) -> bool:
    """The CLI's contract for a refused input: exactly one line, 'error: ...'."""
    lines = stderr.strip("\n").splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ")
