"""SimMIM pretraining and fine-tuning of Swin Transformer V2.

Two names every package needs live here, at the root, so that no package imports another for them:
- `CONFIG_DIR`: where the Hydra configs are. `conf/` stays at the repository's top level; the build
  maps it into the package (pyproject.toml), so a wheel or a non-editable `pip install .` carries it
  as `simmim_swinv2/conf`, while a source checkout (an editable install, or `PYTHONPATH=src`) has no
  such folder and reads `<repo>/conf` itself: edits there take effect without reinstalling. It is
  absolute, so `hydra.main(config_path=CONFIG_DIR)` works from any working directory.
- `ConfigError`: a configuration that cannot work, found before any work starts.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _config_dir() -> str:
    bundled = _PACKAGE / "conf"  # a wheel / non-editable install
    if (bundled / "pretrain.yaml").is_file():
        return str(bundled)
    return str(_PACKAGE.parents[1] / "conf")  # a source checkout (editable install): <repo>/conf


CONFIG_DIR = _config_dir()


class ConfigError(ValueError):
    """A configuration that cannot work, found before any work starts."""


__all__ = ["CONFIG_DIR", "ConfigError"]
