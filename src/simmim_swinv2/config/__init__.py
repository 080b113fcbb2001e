"""The configuration: where the Hydra configs are (`CONFIG_DIR`), and the error every check before work raises.

`conf/` stays at the repository's top level; the build maps it into the package (pyproject.toml), so a wheel or a
non-editable `pip install .` carries it as `simmim_swinv2/conf`, while a source checkout (an editable install, or
`PYTHONPATH=src`) has no such folder and reads `<repo>/conf` itself: edits there take effect without reinstalling.
`CONFIG_DIR` is absolute, so `hydra.main(config_path=CONFIG_DIR)` works from any working directory.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def _config_dir() -> str:
    bundled = _PACKAGE / "conf"  # a wheel / non-editable install
    if (bundled / "pretrain.yaml").is_file():
        return str(bundled)
    return str(_PACKAGE.parents[1] / "conf")  # a source checkout (editable install): <repo>/conf


CONFIG_DIR = _config_dir()


class ConfigError(ValueError):
    """A configuration that cannot work, found before any work starts."""


__all__ = ["CONFIG_DIR", "ConfigError"]

from . import schema  # noqa: E402,F401 - registers the structured configs with Hydra (after ConfigError: see schema)
