"""Sweep specs: a base run config plus axes, expanded into every run config.

The language is declarative YAML, read with ``yaml.safe_load`` semantics and
never evaluated: axes produce assignments of values to names (``product``,
``zip``, ``pairs``), ``derive`` computes names from names with a fixed set of
operators, ``where`` filters, ``include``/``exclude`` add or drop assignments,
``seeds`` repeats every config, and ``set`` writes names into config fields
through ``{name}`` templates. ``$name`` refers to a name's value.
Expansion is deterministic and order-stable.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zoo._typed import build, check, check_key, check_name
from zoo._yaml import load_yaml
from zoo.config import Resolver, RunConfig, apply_overrides, resolve, set_path
from zoo.errors import ConfigError, did_you_mean
from zoo.sweep._rehearsal import SUFFIX, toy_document

__all__ = [
    "Assignment",
    "SweepSpec",
    "expand",
    "load_spec",
    "with_execution",
]

Assignment = dict[str, Any]
_TEMPLATE = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}
_ARITHMETIC = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b,
}


@dataclass(frozen=True)
class SweepSpec:
    name: str  # sweep name; also its MLflow experiment
    base: dict[str, Any]  # a run config (see the README), without `experiment`
    axes: tuple[dict[str, Any], ...] = ()  # product | zip | pairs generators, combined as a product
    derive: dict[str, Any] = field(default_factory=dict)  # name -> {operator: operands}
    where: tuple[dict[str, Any], ...] = ()  # conditions every assignment must meet
    set: dict[str, Any] = field(default_factory=dict)  # config field -> value with {name} templates
    seeds: tuple[int, ...] = (0,)  # every config runs once per seed
    include: tuple[dict[str, Any], ...] = ()  # extra assignments, appended after filtering
    exclude: tuple[dict[str, Any], ...] = ()  # assignments matching all these values are dropped
    share_stages: bool = True  # train identical stages once and reuse their checkpoints
    description: str = ""  # shown on the MLflow experiment
    max_candidates: int = 5_000_000  # refuse specs whose axes' product × seeds is larger
    search: dict[str, Any] | None = None  # an Optuna search instead of a grid: zoo.sweep._search
    run_name: str = ""  # pattern with {name:format} fields; "" = from the axes (zoo.naming)
    rehearse: bool = False  # every run at toy size (zoo.sweep._rehearsal; --rehearse sets it)
    # what its runs are resolved against (project root, store): not part of the spec
    resolver: Resolver | None = field(
        default=None, compare=False, repr=False, metadata={"internal": True}
    )

    def validate(self, where: str) -> None:
        check(
            "experiment" not in self.base,
            f"{where}.base.experiment",
            self.base.get("experiment"),
            "no experiment key: the sweep name is the experiment",
        )
        check(len(self.seeds) >= 1, f"{where}.seeds", [], "at least one seed")
        for i, seed in enumerate(self.seeds):
            check(0 <= seed < 2**32, f"{where}.seeds.{i}", seed, "an integer 0 <= seed < 2**32")
        check(
            not self.rehearse or self.name.endswith(SUFFIX),
            f"{where}.rehearse",
            self.rehearse,
            f"false (a rehearsal is made with --rehearse, named <name>{SUFFIX})",
        )
        check(self.max_candidates >= 1, f"{where}.max_candidates", self.max_candidates, ">= 1")
        check_name(self.name, f"{where}.name")


def load_spec(
    path: str | Path, overrides: list[str] = (), resolver: Resolver | None = None
) -> SweepSpec:
    """The strictly validated spec in ``path`` (names checked; runs not yet expanded),
    with ``KEY=VALUE`` ``overrides`` applied to its base (see _with_overrides); its runs
    are resolved against ``resolver`` (None: Resolver.here(), without a store)."""
    spec = replace(build(SweepSpec, load_yaml(path), "spec"), resolver=resolver)
    _check_size(spec)
    _check_names(spec)
    return _with_overrides(spec, list(overrides))


def with_execution(
    spec: SweepSpec, devices: int | None = None, power_cap_w: float | None = None
) -> SweepSpec:
    """``spec`` with the submit-time options that change what its runs compute written
    into its base config (``devices`` when > 1, ``power_cap_w`` when given), so the plan's
    identities include them: every command given the same options computes the same keys."""
    base = dict(spec.base)
    if (devices or 1) > 1:
        base["devices"] = devices
    if power_cap_w is not None:
        base["power_cap_w"] = float(power_cap_w)
    return spec if base == spec.base else replace(spec, base=base)


def _with_overrides(spec: SweepSpec, overrides: list[str]) -> SweepSpec:
    """``spec`` with ``KEY=VALUE`` overrides applied to its base as ``zoo train`` applies
    them to a config (zoo.config.apply_overrides). A key no run config has, one the
    sweep sets itself (``experiment``, ``seed``) or one the spec's ``set:`` writes (it
    would replace the override in every run) is a ConfigError naming the key."""
    if not overrides:
        return spec
    base = apply_overrides(spec.base, overrides)
    for item in overrides:
        key = item.partition("=")[0]
        check_key(RunConfig, key, f"override {key}")
        parts = key.split(".")
        if parts[0] in ("experiment", "seed"):
            raise ConfigError(
                f"override {key}: set by the sweep (its name, its seeds:); expected a key of "
                "spec.base"
            )
        for written in spec.set:
            theirs = written.split(".")
            # a part filled in per run ({name}, $name) may be any key
            if all(a == b or "{" in b or b[:1] == "$" for a, b in zip(parts, theirs, strict=False)):
                raise ConfigError(
                    f"override {key}: spec.set writes {written} in every run; expected a key "
                    "that spec.set leaves alone"
                )
    return replace(spec, base=base)


def _axis_size(entry: Any) -> int:
    """Assignments an axis entry yields, counted without making them (0 when malformed:
    _axis then names the problem)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return 0
    ((kind, body),) = entry.items()
    if not isinstance(body, dict):
        return 0
    lengths = [len(v) if isinstance(v, list) else 0 for v in body.values()]
    if kind == "product":
        return math.prod(lengths)
    if kind == "zip":
        return max(lengths, default=0)
    values = body.get("values")
    if kind == "pairs" and isinstance(values, list):
        n = len(values)
        ordered, repeats = body.get("ordered", True), body.get("repeats", False)
        return n * n if ordered and repeats else n * (n - 1) if ordered else n * (n + 1) // 2
    return 0


def _check_size(spec: SweepSpec) -> None:
    """Refuse a spec whose candidate runs (axes' product × seeds, before ``where``) pass
    ``max_candidates``, before any of them is made."""
    count = math.prod(_axis_size(entry) for entry in spec.axes) * len(spec.seeds)
    if count > spec.max_candidates:
        raise ConfigError(
            f"spec.axes: {count:,} candidate runs (axes' product × seeds, before where) "
            f"is more than max_candidates ({spec.max_candidates:,}); "
            "narrow the axes or raise max_candidates"
        )


def _axis(entry: Any, where: str) -> list[Assignment]:
    check(
        isinstance(entry, dict) and len(entry) == 1,
        where,
        entry,
        "one of {product: ...}, {zip: ...}, {pairs: ...}",
    )
    ((kind, body),) = entry.items()
    at = f"{where}.{kind}"
    if kind in ("product", "zip"):
        check(isinstance(body, dict) and body, at, body, "a mapping of name -> list of values")
        for name, values in body.items():
            check(
                isinstance(values, list) and values,
                f"{at}.{name}",
                values,
                "a non-empty list of values",
            )
        if kind == "zip":
            lengths = {len(v) for v in body.values()}
            check(len(lengths) == 1, at, sorted(lengths), "lists of equal length")
            return [dict(zip(body, row, strict=True)) for row in zip(*body.values(), strict=True)]
        return [dict(zip(body, row, strict=True)) for row in itertools.product(*body.values())]
    if kind == "pairs":
        allowed = {"of", "values", "ordered", "repeats"}
        check(
            isinstance(body, dict) and set(body) <= allowed and {"of", "values"} <= set(body),
            at,
            body,
            "{of: [name, name], values: [...], ordered: bool, repeats: bool}",
        )
        names, values = body["of"], body["values"]
        check(isinstance(names, list) and len(names) == 2, f"{at}.of", names, "two names")
        check(isinstance(values, list) and values, f"{at}.values", values, "a non-empty list")
        ordered, repeats = body.get("ordered", True), body.get("repeats", False)
        if ordered:
            pairs = itertools.product(values, repeat=2)
        elif repeats:
            pairs = itertools.combinations_with_replacement(values, 2)
        else:
            pairs = itertools.combinations(values, 2)
        return [dict(zip(names, p, strict=True)) for p in pairs if repeats or p[0] != p[1]]
    raise ConfigError(
        f"{at}: unknown axis kind; allowed: product, zip, pairs"
        + did_you_mean(kind, ("product", "zip", "pairs"))
    )


def _axis_names(spec: SweepSpec) -> list[str]:
    names: list[str] = []
    for i, entry in enumerate(spec.axes):
        assignments = _axis(entry, f"spec.axes.{i}")
        names += [n for n in assignments[0] if n not in names]
    return names


def references(node: Any) -> set[str]:
    """Names referenced as ``$name`` or in ``{name}`` templates anywhere in ``node``."""
    if isinstance(node, dict):
        return set().union(*(references(k) | references(v) for k, v in node.items()))
    if isinstance(node, list | tuple):
        return set().union(set(), *(references(v) for v in node))
    if isinstance(node, str):
        if node.startswith("$"):
            return {node[1:]}
        return {m.group(1) for m in _TEMPLATE.finditer(node)}
    return set()


def _check_names(spec: SweepSpec) -> None:
    defined = ["seed", *_axis_names(spec), *(spec.search or {}).get("parameters", {})]
    for name, expression in spec.derive.items():
        _check_defined(references(expression), defined, f"spec.derive.{name}")
        defined.append(name)
    for i, condition in enumerate(spec.where):
        _check_defined(references(condition), defined, f"spec.where.{i}")
    for key, value in spec.set.items():
        _check_defined(references(value) | references(key), defined, f"spec.set.{key}")
    for kind in ("include", "exclude"):
        for i, entry in enumerate(getattr(spec, kind)):
            _check_defined(set(entry), defined, f"spec.{kind}.{i}")


def _check_defined(used: set[str], defined: list[str], where: str) -> None:
    unknown = sorted(used - set(defined))
    if unknown:
        raise ConfigError(
            f"{where}: unknown name {unknown[0]!r}; defined names: "
            + ", ".join(defined)
            + did_you_mean(unknown[0], defined)
        )


def _value(operand: Any, names: Assignment) -> Any:
    if isinstance(operand, str) and operand.startswith("$"):
        return names[operand[1:]]
    if isinstance(operand, list):
        return [_value(v, names) for v in operand]
    return operand


def _operator(expression: Any, where: str, allowed: list[str]) -> tuple[str, Any]:
    """The (operator, operands) of a one-key mapping such as ``{ne: [$a, $b]}``."""
    check(
        isinstance(expression, dict) and len(expression) == 1,
        where,
        expression,
        "{operator: operands} with operator one of " + ", ".join(allowed),
    )
    ((op, operands),) = expression.items()
    if op not in allowed:
        raise ConfigError(
            f"{where}: unknown operator {op!r}; allowed: "
            + ", ".join(allowed)
            + did_you_mean(op, allowed)
        )
    return op, operands


def _binary(table: dict[str, Any], op: str, operands: Any, names: Assignment, where: str) -> Any:
    check(
        isinstance(operands, list) and len(operands) == 2, f"{where}.{op}", operands, "two operands"
    )
    return table[op](*(_value(o, names) for o in operands))


def _derive(expression: Any, names: Assignment, where: str) -> Any:
    op, operands = _operator(expression, where, [*_ARITHMETIC, "format", "lookup", "value"])
    if op in _ARITHMETIC:
        return _binary(_ARITHMETIC, op, operands, names, where)
    if op == "format":
        return render(operands, names)
    if op == "value":
        return _value(operands, names)
    check(
        isinstance(operands, list) and len(operands) == 2 and isinstance(operands[1], dict),
        f"{where}.lookup",
        operands,
        "[key, {key: value, ...}]",
    )
    key = _value(operands[0], names)
    check(key in operands[1], f"{where}.lookup", key, "a key of the lookup table")
    return operands[1][key]


def _holds(condition: Any, names: Assignment, where: str) -> bool:
    op, operands = _operator(condition, where, [*_COMPARE, "all", "any", "not"])
    if op in ("all", "any"):
        results = (_holds(c, names, f"{where}.{op}.{i}") for i, c in enumerate(operands))
        return all(results) if op == "all" else any(results)
    if op == "not":
        return not _holds(operands, names, f"{where}.not")
    return _binary(_COMPARE, op, operands, names, where)


def render(template: Any, names: Assignment) -> Any:
    """``template`` with names filled in: "$x" gives x's value itself; "{x:+d}" formats."""
    if isinstance(template, dict):
        return {render(k, names): render(v, names) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, names) for v in template]
    if not isinstance(template, str):
        return template
    if template.startswith("$"):
        return names[template[1:]]
    return _TEMPLATE.sub(lambda m: format(names[m.group(1)], m.group(2) or ""), template)


def assignments(spec: SweepSpec) -> list[Assignment]:
    """Every config's names (without the seed), in expansion order."""
    _check_size(spec)
    axes = [_axis(entry, f"spec.axes.{i}") for i, entry in enumerate(spec.axes)]
    result = []
    for combination in itertools.product(*axes):
        names: Assignment = {}
        for part in combination:
            names.update(part)
        for name, expression in spec.derive.items():
            where = f"spec.derive.{name}"
            names[name] = _evaluate(_derive, expression, names, where)
        if all(
            _evaluate(_holds, c, names, f"spec.where.{i}") for i, c in enumerate(spec.where)
        ) and not any(all(names.get(k) == v for k, v in e.items()) for e in spec.exclude):
            result.append(names)
    return result + [dict(e) for e in spec.include]


_EXPRESSION_ERRORS = (ArithmeticError, TypeError, ValueError, KeyError, IndexError)


def _evaluate(function: Any, expression: Any, names: Assignment, where: str) -> Any:
    """``function(expression, names, where)``; a failing operation is a ConfigError naming
    the place and the names it failed for."""
    try:
        return function(expression, names, where)
    except ConfigError:
        raise
    except _EXPRESSION_ERRORS as error:
        raise ConfigError(
            f"{where}: {type(error).__name__}: {error} (for {json.dumps(names, default=str)})"
        ) from None


@dataclass(frozen=True)
class Expanded:
    """One run of a sweep: its names (seed included) and resolved config."""

    names: Assignment
    config: RunConfig


def expand(spec: SweepSpec) -> list[Expanded]:
    """Every run: configs in expansion order, each repeated once per seed. A config is
    resolved once when the seed is all its seeds change (_seed_only); the others copy it."""
    runs, resolver, copies = [], spec.resolver or Resolver.here(), _seed_only(spec)
    for names in assignments(spec):
        first: RunConfig | None = None
        for seed in spec.seeds:
            full = {**names, "seed": seed}
            try:
                if first is not None and copies:
                    config = first.reseeded(seed)
                else:
                    config = resolve(_run_document(spec, full), resolver=resolver)
                    first = first or config
            except ConfigError as error:
                raise ConfigError(f"spec run {json.dumps(full)}: {error}") from None
            runs.append(Expanded(full, config))
    return runs


def _seed_only(spec: SweepSpec) -> bool:
    """Whether a run's config differs from its other seeds' in ``seed`` alone: ``set:``
    neither writes the seed nor uses it, and no rehearsal reshapes the document."""
    fixed_keys = not any(references(key) for key in spec.set) and "seed" not in spec.set
    return fixed_keys and "seed" not in references(spec.set) and not spec.rehearse


def _run_document(spec: SweepSpec, full: Assignment) -> dict[str, Any]:
    """The config document of the run named ``full`` (its axis values and seed)."""
    document = {**spec.base, "experiment": spec.name, "seed": full["seed"]}
    for key, value in spec.set.items():
        set_path(
            document,
            str(_evaluate(lambda k, n, _: render(k, n), key, full, f"spec.set.{key}")),
            _evaluate(lambda v, n, _: render(v, n), value, full, f"spec.set.{key}"),
        )
    return toy_document(document) if spec.rehearse else document
