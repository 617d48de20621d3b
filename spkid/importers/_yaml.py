"""The YAML configuration files that published models come with, read as plain data (no code is ever run).

WeSpeaker's and 3D-Speaker's `config.yaml` are plain YAML. SpeechBrain's `hyperparams.yaml` is HyperPyYAML: tags
such as `!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`, `!name:...`, `!ref <n_mels>`, `!apply:...` and
`!PLACEHOLDER`, which HyperPyYAML would turn into objects by importing and calling the named code. Here a tagged
node is only recorded: a mapping becomes `Tagged(tag, value)` with its keys, a scalar or sequence `Tagged(tag,
value)` with the plain value, and `!ref <name>` is resolved to the value of the top-level key `name` (a reference
inside a string, e.g. `!ref <output_folder>/save`, is substituted as text). Nothing is imported or called.

    >>> cfg = read_yaml("hyperparams.yaml")
    >>> cfg["embedding_model"].tag      # '!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN'
    >>> cfg["embedding_model"].value    # {'input_size': 80, 'channels': [1024, ...], ...}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spkid.errors import SpkidError

MAX_BYTES = 1 << 20  # a configuration file is a few KB; refuse to parse anything huge
_REF = re.compile(r"<([^<>]+)>")


@dataclass
class Tagged:
    """A tagged YAML node: `tag` (e.g. "!new:pkg.Class") and its plain `value` (dict, list or scalar)."""

    tag: str
    value: Any

    @property
    def target(self) -> str:
        """What the tag names after its kind: "pkg.Class" for "!new:pkg.Class"."""
        return self.tag.split(":", 1)[1] if ":" in self.tag else ""


class _Ref:
    def __init__(self, text: str) -> None:
        self.text = text


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A model's YAML configuration as plain data (module docstring); one-line SpkidError when it is not one."""
    import yaml

    p = Path(path)
    try:
        if p.stat().st_size > MAX_BYTES:
            raise SpkidError(f"{p}: {p.stat().st_size} bytes is too large for a model configuration")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpkidError(f"{p}: cannot read ({e})") from None

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        tag = node.tag
        if tag == "!ref":
            return _Ref(loader.construct_scalar(node))
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return Tagged(tag, value)

    Loader.add_multi_constructor("!", tagged)
    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass: only plain data and Tagged records
    except yaml.YAMLError as e:
        raise SpkidError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SpkidError(f"{p}: expected a YAML mapping at the top, got {type(data).__name__}")
    return _resolve(data, data, 0)


def _resolve(node: Any, top: dict[str, Any], depth: int) -> Any:
    if depth > 50:
        raise SpkidError("model configuration: references nest too deeply (a cycle?)")
    if isinstance(node, _Ref):
        whole = _REF.fullmatch(node.text.strip())
        if whole:
            return _resolve(_lookup(whole.group(1), top), top, depth + 1)
        return _REF.sub(lambda m: str(_resolve(_lookup(m.group(1), top), top, depth + 1)), node.text)
    if isinstance(node, Tagged):
        return Tagged(node.tag, _resolve(node.value, top, depth + 1))
    if isinstance(node, dict):
        return {k: _resolve(v, top, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, top, depth + 1) for v in node]
    return node


def _lookup(name: str, top: dict[str, Any]) -> Any:
    node: Any = top
    for part in name.split("."):
        if isinstance(node, Tagged):
            node = node.value
        if not isinstance(node, dict) or part not in node:
            return f"<{name}>"  # unresolvable (e.g. a placeholder filled at run time): kept as text
        node = node[part]
    return node
