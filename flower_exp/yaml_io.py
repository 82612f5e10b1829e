"""The one YAML reader for every file a user hands flower-exp (``experiments.yaml``, sweep
files, ``--set`` values, a run's ``config.yaml``).

It is ``yaml.safe_load`` (no Python objects) plus three guards plain PyYAML lacks:

- a key written twice in one mapping is an error naming both lines (PyYAML keeps the later
  one silently, so a whole ``params:`` block can vanish);
- aliases may expand to at most :data:`MAX_ALIAS_NODES` nodes in all: PyYAML shares aliased
  objects, so a 500-byte "billion laughs" file loads instantly and only explodes later, when
  validation copies it (past 3 GB);
- ``1e-3`` is a float, as in YAML 1.2 and JSON (YAML 1.1 makes it the string ``"1e-3"``, which
  strict type checks of sweep values would then refuse).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import ConfigError

# Nodes that aliases may add to a document. Real configs use a handful of aliases at most;
# a billion-laughs bomb needs millions.
MAX_ALIAS_NODES = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A guard tripped; carries the one-line reason and the line it points at."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and alias expansion beyond the budget."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self._charge_alias(event)
            return super().compose_node(parent, index)
        # An alias to a collection still being composed would make a cyclic object.
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(anchor)

    def _charge_alias(self, event: AliasEvent) -> None:
        line = event.start_mark.line + 1
        if event.anchor in self._open_anchors:
            raise _Refused(line, f"alias *{event.anchor} refers to a collection that contains it (a cycle)")
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML reports the undefined alias itself
        self._alias_nodes += self._size(target)
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _Refused(
                line, f"aliases expand to more than {MAX_ALIAS_NODES} values (an alias bomb?); write the values out instead"
            )

    def _size(self, node: Node) -> int:
        """Nodes in ``node`` with every alias expanded (memoised: aliased nodes are shared)."""
        key = id(node)
        if key not in self._sizes:
            if isinstance(node, SequenceNode):
                size = 1 + sum(self._size(child) for child in node.value)
            elif isinstance(node, MappingNode):
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                size = 1
            self._sizes[key] = size
        return self._sizes[key]

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        # Keys merged in with "<<" may be overridden on purpose; only written keys count.
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:  # unhashable: PyYAML refuses it with its own message
                continue
            line = key_node.start_mark.line + 1
            if seen is not None:
                raise _Refused(line, f"duplicate key {key!r} (first on line {seen}); a key may appear once per mapping")
            first_line[key] = line


# YAML 1.2 / JSON floats without a dot (1e-3, -2E+5), which YAML 1.1 leaves as strings.
_GuardedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (from ``source``, named in errors) or raise a one-line :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=_GuardedLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"{source}: line {exc.line}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}:{line} malformed YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML (nested too deeply)") from None
