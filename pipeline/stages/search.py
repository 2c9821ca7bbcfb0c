"""Stage `search@<dataset>`: search the space of student designs (params `search:`) for the Pareto front of
validation accuracy against cost, and write its finalists for the pipeline to train and test.

Outputs: search/<dataset>/report.md and report.json (every trial, the front, the constraints, the budget spent,
the sampler's settings), plots/search/<dataset>/ (pareto_<cost>.png per cost, progress.png) and
search/<dataset>/finalists.yaml (designs of the front, for `python -m pipeline adopt <dataset>`). The study itself
lives in its storage (pipeline/search/study.py), so a run again continues it, and other workers join it by
running this command against the same storage. Reads the training and validation splits only: the test
split is closed to this process. With `experiments.search: false` it writes only a note that it was skipped.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from typing import Any

import yaml

from pipeline import tracking
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.training import compute

ARGUMENTS = ("dataset",)
log = logging.getLogger(__name__)


def main(args: argparse.Namespace, params: Params) -> None:
    out = paths.SearchPaths(args.dataset)
    if not params.experiment_search:
        _write_skipped(out)
        log.info("search %s: skipped (experiments.search is false)", args.dataset)
        return
    from pipeline.search import study as studies

    studies.close_test_split(args.dataset)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped job ends its trial as Ctrl-C does
    settings = params.search_settings(args.dataset)
    search = studies.Search(params, settings, studies.storage_url(args.dataset))
    started = time.perf_counter()
    parent = search.study.user_attrs.get(studies.PARENT_RUN)
    with tracking.stage_run(params, args.dataset, "search", run_id=parent, run_name=f"search {search.name}") as run:
        # what makes the study, as params (the same for every run and worker of it); the budget, which a run
        # again may raise, and the storage, which differs from machine to machine, as tags
        tracking.log_params({"study": search.name, "search": settings.study_values()})
        tracking.log_tags(
            {
                "storage": studies.shown_storage(search.url),
                "budget_trials": settings.trials,
                "budget_minutes": settings.minutes,
            }
        )
        parent = run.id
    search.run(parent)

    rows = studies.trial_rows(search.study)
    front = studies.pareto_front(search.study)
    finalists = studies.pick_finalists(rows, front, settings.finalists, settings.costs[0])
    report = {
        "dataset": args.dataset,
        "study": search.name,
        "storage": studies.shown_storage(search.url),
        "machine": compute.cpu_model(),
        "objectives": list(settings.objectives),
        "constraints": settings.constraints,
        "budget": {"trials": settings.trials, "minutes": settings.minutes},
        "spent": {
            "trials": len(rows),
            "epochs": sum(row["epochs"] for row in rows),
            "cpu_seconds": sum(row["cpu_seconds"] or 0.0 for row in rows),
            "trial_seconds": sum(row["seconds"] or 0.0 for row in rows),
            "this_run_seconds": time.perf_counter() - started,
        },
        "ended": {ended: sum(row["ended"] == ended for row in rows) for ended in (*studies.ENDED, "running", "queued")},
        "sampler": _sampler_settings(settings),
        "front": front,
        "finalists": {finalist_name(args.dataset, number): number for number in finalists},
        "trials": rows,
    }
    _write_outputs(out, report, settings)
    parent = search.study.user_attrs.get(studies.PARENT_RUN, parent)  # the study's search run, whoever made it
    with tracking.stage_run(params, args.dataset, "search", run_id=parent):
        tracking.log_metrics(
            {
                "trials": len(rows),
                "front_size": len(front),
                "epochs_spent": report["spent"]["epochs"],
                "cpu_seconds_spent": report["spent"]["cpu_seconds"],
                **{f"trials_{ended}": count for ended, count in report["ended"].items()},
                "best_val_accuracy": max((rows[n]["val_accuracy"] for n in front), default=0.0),
            }
        )
        for path in (out.report, out.json, out.finalists, *sorted(out.plots.glob("*.png"))):
            tracking.log_artifact(path, "search")
    log.info(
        "search %s: %d trials (%s), %d epochs; front of %d, finalists %s -> %s",
        search.name,
        len(rows),
        ", ".join(f"{count} {ended}" for ended, count in report["ended"].items() if count),
        report["spent"]["epochs"],
        len(front),
        ", ".join(f"#{n}" for n in finalists) or "none",
        out.finalists,
    )


def finalist_name(dataset: str, number: int) -> str:
    return f"search_{dataset}_t{number}"


def _sampler_settings(settings: Any) -> dict[str, Any]:
    values = {key: settings.raw[key] for key in ("sampler", "seed", "pruner", "min_epochs", "heartbeat_seconds")}
    if settings.sampler == "nsga2":
        values["population"] = settings.population
    else:
        values.update(multivariate=True, constant_liar=True)
    return values


def _write_outputs(out: paths.SearchPaths, report: dict[str, Any], settings: Any) -> None:
    from pipeline.analysis import figures
    from pipeline.search import study as studies

    by_number = {row["number"]: row for row in report["trials"]}
    finalists = report["finalists"]
    files.write_json(out.json, report)
    with files.atomic_directory(out.plots) as tmp:
        for cost in settings.costs:
            figures.save(
                figures.pareto_plot(
                    report["trials"],
                    report["front"],
                    list(finalists.values()),
                    cost,
                    f"{report['dataset']}: validation accuracy against {cost} ({len(report['trials'])} trials)",
                ),
                tmp / f"pareto_{cost}.png",
            )
        figures.save(
            figures.search_progress(studies.best_so_far(report["trials"]), f"{report['dataset']}: search progress"),
            tmp / "progress.png",
        )
    designs = {
        name: {"train": by_number[number]["recipe"], "layers": by_number[number]["layers"]}
        for name, number in finalists.items()
    }
    found = {
        name: {
            "trial": number,
            "val_accuracy": by_number[number]["val_accuracy"],
            **{cost: _whole(by_number[number]["costs"].get(cost)) for cost in settings.measured_costs()},
        }
        for name, number in finalists.items()
    }
    header = (
        f"# The finalists of the search study {report['study']} (python -m pipeline search {report['dataset']}):\n"
        f"# {len(finalists)} designs of its Pareto front of {len(report['front'])}, from {len(report['trials'])} "
        f"trials, chosen on the validation split only.\n"
        f"# `python -m pipeline adopt {report['dataset']}` adds them to params.yaml (models and "
        f"experiments.models);\n# `dvc repro` then trains them with experiments.seeds and compare tests them.\n"
    )
    with files.atomic_file(out.finalists, "w") as handle:
        handle.write(header + finalists_yaml(report["study"], found, designs))
    with files.atomic_file(out.report, "w") as handle:
        handle.write(_markdown(report, settings))


def finalists_yaml(study: str, found: dict[str, Any], designs: dict[str, Any]) -> str:
    """The finalists file: params.yaml's `models:` form, a layer per line as params.yaml writes them."""

    def flow(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()

    lines = [f"study: {study}", "found:  # each finalist's trial and what the search measured"]
    lines += [f"  {name}: {flow(values)}" for name, values in found.items()] or ["  {}"]
    lines.append("models:" if designs else "models: {}")
    for name, design in designs.items():
        lines += [f"  {name}:", f"    train: {flow(design['train'])}", "    layers:"]
        lines += [f"      - {flow(layer)}" for layer in design["layers"]]
    return "\n".join(lines) + "\n"


def _markdown(report: dict[str, Any], settings: Any) -> str:
    costs = list(settings.measured_costs())
    spent = report["spent"]
    names = {number: name for name, number in report["finalists"].items()}
    maxima = ", ".join(
        f"{cost} <= {maximum:g}" for cost, maximum in report["constraints"].items() if maximum is not None
    )
    lines = [
        f"# Design search on {report['dataset']}",
        "",
        f"Study `{report['study']}` in `{report['storage']}`, on {report['machine']}.",
        f"Objectives: {', '.join(report['objectives'])} (accuracy on the validation split, best epoch; "
        "costs per image at batch 1). The test split was closed to the search: test accuracy is measured for the "
        "finalists only, by the pipeline (`python -m pipeline adopt`, then `dvc repro`).",
        "",
        f"- **Constraints:** the course rule (fewer than 15 layers, at least one convolution, one pooling and one "
        f"dense layer); {maxima or 'no cost maximum'}.",
        f"- **Budget:** {report['budget']['trials']} trials"
        + (f", {report['budget']['minutes']:g} minutes per run" if report["budget"]["minutes"] else "")
        + f". **Spent:** {spent['trials']} trials, {spent['epochs']} training epochs, "
        f"{spent['cpu_seconds']:.0f} CPU-seconds ({spent['trial_seconds']:.0f} s in trials).",
        f"- **Ended:** {', '.join(f'{count} {ended}' for ended, count in report['ended'].items() if count)}.",
        f"- **Sampler:** {', '.join(f'{k} {v}' for k, v in report['sampler'].items())}.",
        f"- **Pareto front:** {len(report['front'])} designs; finalists "
        f"{', '.join(f'`{name}` (#{number})' for name, number in report['finalists'].items()) or 'none'}.",
        "",
        "## Trials",
        "",
        "| # | ended | val accuracy | " + " | ".join(costs) + " | epochs | seconds | layers | front |",
        "|---:|---|---:|" + "---:|" * len(costs) + "---:|---:|---:|---|",
    ]
    for row in report["trials"]:
        accuracy = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else ""
        cells = [_cost_cell(cost, row["costs"].get(cost)) for cost in costs]
        repeat = f" (as #{row['duplicate_of']})" if row["duplicate_of"] is not None else ""
        front = (
            "finalist " + names[row["number"]]
            if row["number"] in names
            else ("front" if row["number"] in report["front"] else "")
        )
        lines.append(
            f"| {row['number']} | {row['ended']}{repeat} | {accuracy} | {' | '.join(cells)} | {row['epochs']} | "
            f"{(row['seconds'] or 0):.0f} | {len(row['layers'] or [])} | {front} |"
        )
    reasons = [row for row in report["trials"] if row["reason"]]
    if reasons:
        lines += ["", "## Why designs were infeasible", ""]
        lines += [f"- #{row['number']}: {row['reason']}" for row in reasons]
    return "\n".join(lines) + "\n"


def _whole(value: float | None) -> float | int | None:
    """Counts (parameters, MACs) as ints; a latency as it is."""
    return int(value) if value is not None and float(value).is_integer() else value


def _cost_cell(cost: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if cost == "latency_ms" else f"{value:,.0f}"


def _write_skipped(out: paths.SearchPaths) -> None:
    note = {"dataset": out.dataset, "skipped": True}
    files.write_json(out.json, note)
    with files.atomic_file(out.report, "w") as handle:
        handle.write(f"# Design search on {out.dataset}\n\nSkipped: experiments.search is false in params.yaml.\n")
    with files.atomic_file(out.finalists, "w") as handle:
        handle.write("# No search ran (experiments.search is false).\n" + yaml.safe_dump({"found": {}, "models": {}}))
    with files.atomic_directory(out.plots):
        pass
