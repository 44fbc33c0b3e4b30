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
