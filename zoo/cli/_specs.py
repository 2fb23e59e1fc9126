"""How a sweep command's spec options become the spec its runs are computed from."""

from __future__ import annotations

import argparse

from zoo.cli._errors import config_error

__all__ = ["executed_spec", "given_a_search", "rehearsed", "resolver"]


def given_a_search(
    args: argparse.Namespace,
    refused: tuple[str, ...] = ("gpu_power", "gpus_per_task", "rehearse", "profile", "show"),
) -> bool:
    """Whether ``args.spec`` is a search spec; one given any of the ``refused`` options
    is refused (``--gpu-power``, ``--gpus-per-task``: a search's runs take them from its
    base config; ``--rehearse``, ``--profile``, ``--show``: grid sweeps only)."""
    from zoo import sweep

    if not sweep.is_search(args.spec):
        return False
    expected = {
        "gpu_power": "power_cap_w in its base config",
        "gpus_per_task": "devices in its base config",
        "rehearse": "a grid sweep spec",
        "profile": "--images-per-s (a search is priced by its training image passes)",
        "show": "a grid sweep spec (a search's runs are sampled as it goes)",
    }
    for option in refused:
        value = getattr(args, option, None)
        if value is not None and value is not False:  # given (--show 0 is given)
            instead = expected[option]
            raise config_error(
                f"--{option.replace('_', '-')}: not allowed for a search spec; expected {instead}"
            )
    return True


def executed_spec(args: argparse.Namespace):
    """The spec of ``args`` with its ``KEY=VALUE`` overrides (its rehearsal with
    ``--rehearse``) and the options that change what its runs compute
    (``--gpus-per-task``, ``--gpu-power``: zoo.sweep.with_execution), so plan, run,
    submit and status given the same options compute the same keys."""
    from zoo import sweep

    spec = rehearsed(sweep.load_spec(args.spec, args.overrides, resolver(args)), args)
    return sweep.with_execution(spec, getattr(args, "gpus_per_task", None), args.gpu_power)


def rehearsed(spec, args: argparse.Namespace):
    """``spec``, or with ``--rehearse`` its rehearsal (zoo.sweep.rehearsal)."""
    from zoo import sweep

    return sweep.rehearsal(spec) if args.rehearse else spec


def store(args: argparse.Namespace, create: bool = True):
    """The store of ``--tracking-uri`` (else $MLFLOW_TRACKING_URI, else this project's
    mlflow.db), for this project ($ZOO_ROOT or the working directory): a zoo.store.Tracker,
    read-only unless ``create``."""
    from zoo.paths import ProjectPaths
    from zoo.store import Tracker

    return Tracker(getattr(args, "tracking_uri", None), ProjectPaths.default(), create=create)


def resolver(args: argparse.Namespace):
    """What a command's configs are resolved against (a zoo.config.Resolver): this project
    ($ZOO_ROOT or the working directory) and the store of ``--tracking-uri``, where
    ``init: run:`` and ``init: model:`` references are identified."""
    from zoo.modelzoo import store_resolver
    from zoo.paths import ProjectPaths

    return store_resolver(ProjectPaths.default(), getattr(args, "tracking_uri", None))
