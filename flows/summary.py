"""The readable end-of-run summary: segments, sizes, the chosen k and why, where to look."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from flows.training import TrainingOutcome


def print_summary(outcome: TrainingOutcome, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    m = outcome.metrics
    console.print(
        f"[bold]popseg[/bold]: {outcome.n_rows} rows x {len(outcome.features)} features "
        f"from {outcome.data_source} (md5 {outcome.data_md5[:12]})"
    )
    console.print(
        f"k = [bold]{outcome.k}[/bold] by {outcome.criterion}: {outcome.selection_reason}"
    )
    console.print(
        f"silhouette {m['silhouette']:.3f} | inertia {m['inertia']:.4g} | "
        f"Calinski-Harabasz {m['calinski_harabasz']:.4g} | Davies-Bouldin "
        f"{m['davies_bouldin']:.3f} | Dunn {m['dunn']:.3f} | stability (bootstrap ARI) "
        f"{m['stability']:.3f}"
    )
    table = Table(title="Segments", show_lines=False)
    table.add_column("segment", justify="right")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    table.add_column("what sets it apart (segment mean vs population mean)")
    table.add_column("closest members")
    total = sum(outcome.sizes.values())
    for segment, size in sorted(outcome.sizes.items()):
        traits = ", ".join(
            f"{item['feature']} {item['direction']} ({item['segment_mean']:.3g} vs "
            f"{item['population_mean']:.3g})"
            for item in outcome.distinguishing.get(segment, [])
        )
        table.add_row(
            str(segment),
            str(size),
            f"{size / total:.0%}",
            traits,
            ", ".join(outcome.examples.get(segment, [])[:3]),
        )
    console.print(table)
    status = (
        "[green]promoted to champion[/green]"
        if outcome.promoted
        else "[cyan]candidate, awaiting approval[/cyan]"
        if outcome.approval == "pending"
        else "[yellow]not promoted[/yellow]"
    )
    console.print(f"model {outcome.model_name} version {outcome.model_version}: {status}")
    for reason in outcome.gate_reasons:
        console.print(f"  - {reason}")
    for note in outcome.notes:
        console.print(f"[dim]note: {note}[/dim]")
    console.print(
        f"MLflow run {outcome.run_id} in {outcome.tracking_uri} (experiment "
        f"{outcome.experiment_id}); see it with `uv run popseg ui` -> http://127.0.0.1:5000/#/"
        f"experiments/{outcome.experiment_id}/runs/{outcome.run_id}"
    )
    console.print(f"[dim]done in {outcome.seconds:.1f} s[/dim]")


def print_monitor_summary(outcome, console: Console | None = None) -> None:
    """`popseg monitor` without --json: the verdict, each check, the reasons, the MLflow run."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    report = outcome.report
    verdict = "[bold red]DRIFT[/bold red]" if outcome.drift else "[green]no drift[/green]"
    console.print(
        f"[bold]popseg monitor[/bold]: {outcome.data_source} ({outcome.data_kind}, "
        f"{report.n_rows} rows) vs the training data of {outcome.model_name} version "
        f"{outcome.model_version} ({report.n_reference} rows): {verdict}"
    )
    table = Table(title="Features")
    for column in ("feature", "PSI", "threshold", "missing (train -> new)", "drift"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for feature in report.features:
        table.add_row(
            feature.name + (" (levels)" if feature.levels is not None else ""),
            "n/a" if feature.psi is None else f"{feature.psi:.3f}",
            "" if feature.psi_threshold is None else f"{feature.psi_threshold:.3f}",
            f"{feature.missing_rate_ref:.1%} -> {feature.missing_rate_new:.1%}",
            "[red]yes[/red]" if feature.drifted else "",
        )
    console.print(table)
    table = Table(title=f"Segments (share PSI {report.segment_psi:.3f})")
    for column in ("segment", "train share", "new share", "shift", "drift"):
        table.add_column(column, justify="right")
    for segment in report.segments:
        table.add_row(
            str(segment.segment),
            f"{segment.ref_share:.1%}",
            f"{segment.new_share:.1%}",
            f"{segment.shift:+.1%}",
            "[red]yes[/red]" if segment.drifted else "",
        )
    console.print(table)
    distance = report.distance

    def ratio(value) -> str:
        return "n/a" if value is None else f"x{value:.2f}"

    console.print(
        f"distance to assigned centroid: median {distance['ref_median']:.3f} -> "
        f"{distance['new_median']:.3f} ({ratio(distance['median_ratio'])}), p90 "
        f"{distance['ref_p90']:.3f} -> {distance['new_p90']:.3f} "
        f"({ratio(distance['p90_ratio'])}), PSI {distance['psi']:.3f}"
    )
    for reason in report.reasons:
        console.print(f"  - {reason}")
    if outcome.retrain is not None:
        retrain = outcome.retrain
        if "error" in retrain:
            console.print(f"retraining [red]failed[/red]: {retrain['error']}")
        elif retrain["triggered"]:
            promoted = (
                "promoted to champion"
                if retrain["promoted"]
                else "candidate, awaiting approval"
                if retrain.get("approval") == "pending"
                else "not promoted"
            )
            console.print(f"retrained: version {retrain['model_version']} ({promoted})")
            for reason in retrain.get("gate_reasons", []):
                console.print(f"  - {reason}")
        else:
            console.print(f"retrain: {retrain['reason']}")
    for note in outcome.notes:
        console.print(f"[dim]note: {note}[/dim]")
    from tasks.register import tracking_uri

    console.print(
        f"monitoring run {outcome.monitor_run_id} (experiment {outcome.experiment_id}) in "
        f"{tracking_uri()}"
    )
