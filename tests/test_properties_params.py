"""Property tests of the params validator (`load_params`): whatever params.yaml holds, the answer is
validated params or one `error:` line (a ConfigError), never a crash or a hang.

Inputs: random YAML documents and text (nested mappings, lists and scalars of every type, YAML's own
constructs: anchors, aliases, tags, merge keys, deep nesting), bytes that are not text, and the shipped
params.yaml damaged: keys deleted, renamed or added, values replaced by others of any type, list entries
repeated, lines cut, doubled or inserted, at every depth. Profiles: tests/conftest.py.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st

from pipeline.config import Params, load_params
from tests.conftest import REPO
from tests.fuzzing import outcome

SHIPPED_TEXT = (REPO / "params.yaml").read_text(encoding="utf-8")
SHIPPED = yaml.safe_load(SHIPPED_TEXT)
TOP_KEYS = tuple(SHIPPED)
# What a name of a design or dataset becomes: a folder (models/<dataset>/<design>/), a DVC params key
# (models.<design>) and a word of a stage's command line, so nothing but these characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")

# Text of any character but lone surrogates (which no YAML file can hold).
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-3, 300),
    st.floats(),  # nan and infinities included
    texts,
    st.sampled_from(["", " ", "classes", "auto", "none", "relu", "conv", "mnist", "lenet5_modern", "../x", "a.b"]),
)
keys = st.one_of(
    texts,
    st.integers(-2, 20),
    st.booleans(),
    st.none(),
    st.sampled_from(["type", "per_dataset", "train", "mnist", "student_a", "../x", "a b", "a.b", "-x", "a\nb"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def check_load(folder: Path, text: str | bytes) -> Params | None:
    """Write `text` as a params file and load it: validated params (checked sane), or None after a ConfigError."""
    path = folder / "params.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    params = outcome(lambda: load_params(path), where=path)
    if currently_in_test_context():  # how often each answer came, in the statistics (bench/bench_fuzz.py)
        event("validated" if params is not None else "ConfigError")
    if params is not None:
        check_sane(params)
    return params


def check_sane(params: Params) -> None:
    """What validated params promise the stages: finite numbers, names that are safe folder and command words."""
    for name in list(params.models) + list(params.datasets):
        assert isinstance(name, str) and SAFE_NAME.fullmatch(name), f"validated a name the stages cannot use: {name!r}"
    for value in _leaves(params):
        if isinstance(value, float):
            assert math.isfinite(value), f"validated a number that is not finite: {value!r}"


def _leaves(value: Any) -> Iterator[Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            if field.name != "raw":  # the file as parsed, logged as it is
                yield from _leaves(getattr(value, field.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("params")


def test_the_shipped_params_validate(folder: Path) -> None:
    assert check_load(folder, SHIPPED_TEXT) is not None


# --- Random documents.


@given(document=st.one_of(values, st.fixed_dictionaries(dict.fromkeys(TOP_KEYS, values))))
def test_any_yaml_document_validates_or_is_one_error_line(folder: Path, document: Any) -> None:
    check_load(folder, yaml.safe_dump(document, allow_unicode=True))


# YAML's own syntax, so that random text is often YAML and reaches the validator.
YAML_PIECES = st.sampled_from(
    [
        "seed: ", "download:", "models:", "  ", "\n", "- ", ": ", "[", "]", "{", "}", ",", "&a ", "*a", "&b [*a, *a]",
        "<<: *a", "!!str ", "!!int ", "!!binary ", "!!set ", "!!python/object:os.system ", "? ", "|\n", ">\n", "#",
        "'", '"', "---\n", "...\n", "%YAML 1.1\n", "\t", "0x1F", "1e400", ".nan", ".inf", "2001-12-14", "~", "null",
        "yes", "\\x00", "\u2028", "\x85", "\ufeff", "é",
    ]
)  # fmt: skip
yaml_texts = st.one_of(
    st.lists(st.one_of(YAML_PIECES, texts), max_size=30).map("".join),
    st.text(max_size=200),
)


@given(text=yaml_texts)
@example(text="[" * 5000 + "]" * 5000)  # nesting deeper than Python's recursion limit
@example(text="a: " + "{b: " * 3000 + "1" + "}" * 3000)
@example(text="seed: 1\n\tdownload: 2\n")
@example(text='"se\\ned": 42\n')  # a key holding a line break
@example(text="seed: \x00\n")  # a character YAML does not allow
@example(text="seed: 2024-13-45\n")  # a date PyYAML's constructor refuses with a ValueError
@example(text="seed: " + "9" * 5000 + "\n")  # more digits than Python's int() takes
@example(text="seed: !!int ''\n")
def test_any_text_validates_or_is_one_error_line(folder: Path, text: str) -> None:
    check_load(folder, text)


@given(data=st.binary(max_size=200))
@example(data=b"\xff\xfe\x00garbage")  # not UTF-8
@example(data="seed: 42".encode("utf-16"))
def test_any_bytes_validate_or_are_one_error_line(folder: Path, data: bytes) -> None:
    check_load(folder, data)


def billion_laughs(levels: int, fanout: int = 10) -> str:
    """A YAML value of a few hundred bytes whose aliases expand it to fanout**levels strings."""
    value = f"&l0 [{', '.join(['lol'] * fanout)}]"
    for n in range(1, levels):
        value = f"&l{n} [{value}, {', '.join([f'*l{n - 1}'] * (fanout - 1))}]"
    return value


@pytest.mark.parametrize(
    "line", ["seed: 42", "  seeds: [42]", "  mode: unit", "  lenet5_classic: {builtin: lenet5_classic, output: rbf}"]
)
def test_aliases_that_expand_exponentially_are_one_error_line(folder: Path, line: str) -> None:
    key = line.split(":")[0]
    text = SHIPPED_TEXT.replace(f"\n{line}", f"\n{key}: {billion_laughs(7)}", 1)
    assert text != SHIPPED_TEXT
    assert check_load(folder, text) is None


# --- The shipped params.yaml, damaged.


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path (keys and indices from the top) of every node of a parsed document, the top included."""
    yield prefix
    if isinstance(node, dict):
        for key, item in node.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _paths(item, (*prefix, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


@st.composite
def damaged_params(draw: st.DrawFn) -> dict[str, Any]:
    """The shipped params with one to three damages, each at a node drawn from the whole tree."""
    document = copy.deepcopy(SHIPPED)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(document))[1:]))
        parent, last = _at(document, path[:-1]), path[-1]
        damage = draw(st.sampled_from(["delete", "replace", "replace", "insert", "rename", "repeat"]))
        if damage == "delete":
            del parent[last]
        elif damage == "replace":
            parent[last] = draw(values)
        elif damage == "insert" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif damage == "insert":
            parent.insert(draw(st.integers(0, len(parent))), draw(values))
        elif damage == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif damage == "repeat" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(parent[last]))
    return document


@given(document=damaged_params())
def test_damaged_params_validate_or_are_one_error_line(folder: Path, document: dict[str, Any]) -> None:
    check_load(folder, yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


@st.composite
def damaged_text(draw: st.DrawFn) -> str:
    """The shipped params.yaml's text with lines cut, doubled, re-indented or inserted, or characters changed."""
    lines = SHIPPED_TEXT.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        damage = draw(st.sampled_from(["cut", "double", "indent", "insert", "characters"]))
        if damage == "cut":
            del lines[at]
        elif damage == "double":
            lines.insert(at, lines[at])
        elif damage == "indent":
            lines[at] = draw(st.sampled_from(["", " ", "  ", "\t", "      "])) + lines[at].lstrip(" ")
        elif damage == "insert":
            lines.insert(at, draw(yaml_texts) + "\n")
        else:
            line = lines[at]
            start = draw(st.integers(0, len(line)))
            lines[at] = line[:start] + draw(st.one_of(YAML_PIECES, texts)) + line[start + draw(st.integers(0, 3)) :]
    return "".join(lines)


@given(text=damaged_text())
def test_damaged_params_text_validates_or_is_one_error_line(folder: Path, text: str) -> None:
    check_load(folder, text)
