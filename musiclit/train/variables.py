"""``${MUSICLIT_*}`` variables in configs: one config runs on a laptop and on a pod (``${MUSICLIT_DATA}``).

Light (no Lightning, no torch): ``fit`` expands the parsed config, ``estimate`` the YAML it reads.
"""

from __future__ import annotations

import os
import re
from typing import Any

from musiclit.errors import ConfigError

# Defaults of the path variables, so that a config written for a pod (${MUSICLIT_DATA}/mystyle) also runs on
# a laptop with nothing set: relative to the folder musiclit is started from, like the README's commands.
PATH_VARIABLE_DEFAULTS = {"MUSICLIT_DATA": "data", "MUSICLIT_RUNS": "runs"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(value: str, where: str, environ: dict[str, str] | None = None) -> str:
    """Expand ``${MUSICLIT_*}`` and ``${MUSICLIT_*:-default}`` in one config string.

    Only ``MUSICLIT_`` variables are expanded: the resolved config is saved into every run folder, and a
    secret from the environment (an API key) must never end up in it.

    Args:
        value: The string from the config or command line.
        where: The option's name, for the error message.
        environ: The environment (default: ``os.environ``).

    Raises:
        ConfigError: A variable outside ``MUSICLIT_*``, or one that is unset and has no default.
    """
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if not name.startswith("MUSICLIT_"):
            raise ConfigError(f"{where}: ${{{name}}}: only MUSICLIT_* variables are expanded in configs "
                              "(so that no secret from the environment is written into a saved config)")  # fmt: skip
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in PATH_VARIABLE_DEFAULTS:
            return PATH_VARIABLE_DEFAULTS[name]
        raise ConfigError(f"{where}: ${{{name}}} is not set (set it, or write ${{{name}:-default}})")

    return _VARIABLE.sub(substitute, value)


def expand_config(node: Any, where: str = "", environ: dict[str, str] | None = None) -> Any:
    """Expand :func:`expand_variables` in every string of a parsed config (namespaces, dicts, lists)."""
    if isinstance(node, str):
        return expand_variables(node, where or "config", environ) if "${" in node else node
    if isinstance(node, list):
        return [expand_config(item, f"{where}[{i}]", environ) for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {key: expand_config(item, f"{where}.{key}".strip("."), environ) for key, item in node.items()}
    if hasattr(node, "__dict__") and type(node).__name__ == "Namespace":
        for key, item in vars(node).items():
            setattr(node, key, expand_config(item, f"{where}.{key}".strip("."), environ))
    return node
