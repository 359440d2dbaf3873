"""A config file's mapping of keys, read with PyYAML's safe loader and bounded: at most MAX_CONFIG_BYTES, nested at
most MAX_NESTING deep, each key once, no anchors or aliases."""
from pathlib import Path
from typing import Any, Dict, Union

import yaml

from kale_fast._io import read_utf8

MAX_CONFIG_BYTES, MAX_NESTING = 1 << 20, 20


def read_config_file(path: Union[str, Path]) -> Dict[Any, Any]:
    """The mapping a YAML config file holds (its keys not yet checked); every problem a one-line error naming
    the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a folder; expected a YAML file of config keys")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path} has {path.stat().st_size} bytes; a config is a list of keys, "
                         f"at most {MAX_CONFIG_BYTES} bytes")
    try:
        values = yaml.load(read_utf8(path, "config file"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently), and
    anchors and aliases: nested aliases expand exponentially (a "billion laughs" file of a few lines stalls the
    loader), and a config has no use for them. With neither, what is loaded is as large as the file."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ValueError(f"YAML anchors and aliases (&name, *name) are not allowed in a config (line "
                             f"{event.start_mark.line + 1}): write each value out")
        self._depth = getattr(self, "_depth", 0) + 1  # the composer recurses: refuse before Python's stack ends
        try:
            if self._depth > MAX_NESTING:
                raise ValueError(f"a config nests lists or mappings at most {MAX_NESTING} deep; this one goes "
                                 f"deeper at line {event.start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the SafeLoader's own error names it
            if key in seen:
                raise ValueError(f"config key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)
