"""YAML that says what it cannot hold: PyYAML's safe loader keeps the last value of a key given
twice in one mapping without a word (``batch_size`` twice under ``dataset:`` trains with the
second); :class:`UniqueKeyLoader` refuses it with the key and both lines. fastbci reads every
YAML file a user gives it (configurations, decoder parameter files) and every ``key=value``
override with it (:func:`fastbci.config.read_yaml`).
"""
from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "UniqueKeyLoader", "load"]


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping: ``key`` (dotted from the top) and both ``lines``."""

    def __init__(self, key: str, lines: tuple[int, int]):
        super().__init__(f"the key '{key}' is given twice, on lines {lines[0]} and {lines[1]}")
        self.key, self.lines = key, lines


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, which PyYAML accepts
    (the last value wins, without a word): :class:`DuplicateKeyError` names the key and its
    lines. Merge keys (``<<: *base``) may still be overridden by the mapping's own keys."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _unique_keys(node, "", set())
        return self.construct_document(node)


def _unique_keys(node: yaml.Node, prefix: str, seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias of a node checked already
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                _unique_keys(value_node, prefix, seen_nodes)
                continue
            line = key_node.start_mark.line + 1
            ident = (key_node.tag, key_node.value)
            if ident in lines:
                raise DuplicateKeyError(prefix + key_node.value, (lines[ident], line))
            lines[ident] = line
            _unique_keys(value_node, f"{prefix}{key_node.value}.", seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _unique_keys(item, f"{prefix.rstrip('.')}[{i}].", seen_nodes)


def load(text: str) -> Any:
    """The data of a YAML document, read with :class:`UniqueKeyLoader`."""
    return yaml.load(text, Loader=UniqueKeyLoader)
