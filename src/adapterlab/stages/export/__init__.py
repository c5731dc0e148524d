"""``adapterlab export RUN --format merged|gguf|onnx``: ship an adapter, proven equal to it by the target runtime.

Reads top to bottom: the run's adapter (AdapterInfo) -> its task, which says which formats apply (a chat adapter
exports merged weights and GGUF, a classifier merged weights and ONNX) -> the base it was trained on, checked
against the recorded weights fingerprint -> the exporter writes its files into a staging folder -> the exporter's
parity check by the runtime that will run the export -> ``parity.json`` and a README of how to run it ->
``export/<format>/`` swapped in whole. A failed parity check is a non-zero exit with the figures (the files stay,
marked failed in parity.json, for inspection); it is never a silent success.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from adapterlab.console import console
from adapterlab.errors import AdapterlabError, ModelError
from adapterlab.registry import get_task
from adapterlab.runs import AdapterInfo, RunDir, write_json, write_text
from adapterlab.task import Task

FORMATS = ("merged", "gguf", "onnx")


class ExportError(AdapterlabError):
    """An export that was written but did not pass its parity check (or could not be written)."""

    exit_code = 4


@dataclass
class ExportJob:
    run: RunDir
    info: AdapterInfo
    task: Task
    folder: Path  # the staging folder the exporter writes into
    options: dict[str, Any] = field(default_factory=dict)  # dtype, quant, cases ...


@dataclass
class ExportResult:
    folder: Path
    files: list[Path]
    parity: dict[str, Any]


class Exporter(Protocol):
    name: str

    def write(self, job: ExportJob) -> list[Path]: ...

    def check(self, job: ExportJob) -> dict[str, Any]:
        """``{"passed": bool, "summary": one line, ...figures}``, measured by the export's own runtime."""
        ...

    def readme(self, job: ExportJob) -> str: ...


def exporter_for(fmt: str) -> Exporter:
    if fmt == "merged":
        from adapterlab.stages.export.merged import MergedExporter

        return MergedExporter()
    if fmt == "gguf":
        from adapterlab.stages.export.gguf import GGUFExporter

        return GGUFExporter()
    if fmt == "onnx":
        from adapterlab.stages.export.onnx import ONNXExporter

        return ONNXExporter()
    raise ExportError(f"--format: unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")


def export(run_dir: str | Path, fmt: str, **options: Any) -> ExportResult:
    """Write ``RUN/export/<fmt>/`` (the artefact, parity.json, README.md); raise ExportError if parity fails."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    run = RunDir(Path(run_dir))
    info = AdapterInfo.read(run.root)
    task = get_task(info.task)
    if fmt not in task.export_formats:
        formats = ", ".join(task.export_formats) or "none"
        raise ExportError(f"--format {fmt}: a '{info.task}' adapter exports to {formats}")
    exporter = exporter_for(fmt)
    check_base(info)
    final = run.export_dir(fmt)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{fmt}-staging-", dir=final.parent))
    try:
        job = ExportJob(run, info, task, staging, options)
        console.print(f"[bold]Exporting[/bold] {info.path} as {fmt} ...")
        files = exporter.write(job)
        parity = exporter.check(job)
        write_json(staging / "parity.json", parity)
        write_text(staging / "README.md", exporter.readme(job))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    files = [final / f.relative_to(staging) for f in files]
    if not parity["passed"]:
        raise ExportError(f"{fmt} export failed its parity check: {parity['summary']} (see {final / 'parity.json'})")
    console.print(f"[bold green]Exported[/bold green] to {final}; parity: {parity['summary']}", soft_wrap=True)
    return ExportResult(final, files, parity)


def check_base(info: AdapterInfo) -> None:
    """The base the export will be built from must be the one the adapter was trained on (same weights)."""
    from adapterlab.models import adapter_base, weights_fingerprint

    recorded = info.base_model.weights
    if recorded is None:  # adapters trained before the fingerprint existed
        console.print("[yellow]warning:[/yellow] this adapter records no base weights fingerprint; not checked")
        return
    base = adapter_base(info)
    found = weights_fingerprint(base)
    if found is not None and found != recorded:
        raise ModelError(
            f"{info.path}: the base model at {base} is not the one this adapter was trained on (weights "
            f"fingerprint {found[:12]} != {recorded[:12]}); point model.base at the original weights"
        )
