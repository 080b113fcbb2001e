"""The commands' configs: `command`, the `hydra.main` of every `python -m simmim_swinv2.<command>`,
and `compose_job`, the same config composed in Python, for scripts that run several jobs in one
process (scripts/knn_curve.py, scripts/pretraining_gain.py) and the tests."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from .. import CONFIG_DIR, ConfigError


def command(config_name: str) -> Callable:
    """`hydra.main` with `conf/<config_name>.yaml`. What the user can fix ends the command with its
    message alone (on stderr and in the run's log) and exit status 2 (a traceback would only hide
    it): a required key not given (named, with the command's usage line from its module
    docstring), a `ConfigError` (a configuration that cannot work, found before any work; its
    message names the fix), a file or folder that is not there (`HYDRA_FULL_ERROR=1` shows its
    traceback)."""

    def decorate(job: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(job)
        def run(cfg: DictConfig) -> None:
            _lightning_logs_through_hydra()
            logging.captureWarnings(True)  # warnings in the run's log file too
            try:
                if missing := [k for k in cfg if OmegaConf.is_missing(cfg, k)]:
                    raise ConfigError(f"{', '.join(missing)} not given: {_usage(job)}")
                job(cfg)
            except ConfigError as err:
                _stop(err)
            except (FileNotFoundError, InstantiationException) as err:
                absent = err if isinstance(err, FileNotFoundError) else err.__cause__
                if not isinstance(absent, FileNotFoundError) or os.environ.get("HYDRA_FULL_ERROR"):
                    raise
                _stop(absent)
            finally:
                logging.captureWarnings(False)

        return hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(run)

    return decorate


@contextmanager
def stops_cleanly(prog: str) -> Iterator[None]:
    """For the argparse commands (convert, consolidate, reshard) what `command` does for the Hydra
    ones: a path that is not there or a `ConfigError` ends the command `prog` with argparse's
    one-line `error:` and exit status 2 (`HYDRA_FULL_ERROR=1` keeps the traceback, as there)."""
    try:
        yield
    except (FileNotFoundError, ConfigError) as err:
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _lightning_logs_through_hydra() -> None:
    """Lightning gives its loggers their own stderr handler when it is imported before logging is
    set up (as here, before Hydra's): they then bypass Hydra's, and the run directory's log file
    stays empty. Hand their records to the root logger instead (conf/hydra/job_logging)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def _stop(err: Exception) -> None:
    """The error on stderr and in the run's log file (Hydra's handlers), then exit status 2."""
    logging.getLogger("simmim_swinv2").error(f"error: {err}")
    raise SystemExit(2) from None


def _usage(job: Callable) -> str:
    """The `python -m …` line of the command's module docstring."""
    return usage_in(sys.modules[job.__module__].__doc__, f"python -m {job.__module__} --help")


def usage_in(doc: str | None, default: str) -> str:
    """The first `` `python -m …` `` span of a docstring, on one line; `default` without one."""
    found = re.search(r"`(python -m [^`]+)`", " ".join((doc or "").split()))
    return found[1] if found else default


def usage(command: str) -> str:
    """`${usage:evaluate}`: the usage line of `simmim_swinv2.<command>` (its `--help`)."""
    module = importlib.import_module(f"simmim_swinv2.{command}")
    return usage_in(module.__doc__, f"python -m simmim_swinv2.{command} [key=value ...]")


def compose_job(command: str, run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """`conf/<command>.yaml` with `overrides` and `hydra.run.dir=run_dir`, as `hydra.main` hands it
    to the job: the `hydra` node set as the current HydraConfig (interpolations such as
    `${hydra:runtime.choices.model}` resolve) and removed from the job's config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            command, overrides=[f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
