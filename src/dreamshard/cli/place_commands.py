"""Commands that place and compare: ``place``, ``evaluate``, ``export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dreamshard.cli.options import (
    BackendChoice,
    ConstraintsOpt,
    DevicesPerHostOpt,
    ModelOpt,
    OutOpt,
    RefineOpt,
    SamplesOpt,
    SearchOpt,
    ShardingOpt,
    TimeBudgetOpt,
    TopologyOpt,
    backend_options,
    check_devices_per_host,
    check_out,
    placer_options,
    task_devices,
)
from dreamshard.cli.output import (
    out_console,
    print_comparison,
    print_conditions,
    print_line,
    print_placement,
    progress,
)
from dreamshard.data.constraints import read_constraints
from dreamshard.data.tables import load_tables
from dreamshard.data.tasks import load_suite, make_task
from dreamshard.data.topology import load_topology
from dreamshard.errors import InputError
from dreamshard.fileio import write_json
from dreamshard.placers.registry import COMPARISON_PLACERS, LEARNED_PLACER, SPLITTING_PLACERS


@backend_options(windows=8, calls=8)
def place(
    *,
    tables: Annotated[Path, typer.Option("--tables", help="Table file (.json or .csv).")],
    devices: Annotated[int | None, typer.Option("--devices", help="Number of devices.")] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory per device, e.g. 5GB.")
    ] = None,
    topology: TopologyOpt = None,
    devices_per_host: DevicesPerHostOpt = None,
    constraints: ConstraintsOpt = None,
    placer: Annotated[str, typer.Option("--placer", help="Placer name.")] = "size-lookup",
    backend: BackendChoice,
    out: OutOpt = None,
    model: ModelOpt = None,
    samples: SamplesOpt = 0,
    search: SearchOpt = "local",
    time_budget_ms: TimeBudgetOpt = None,
    refine: RefineOpt = 0,
    sharding: ShardingOpt = "auto",
    show_all: Annotated[
        bool,
        typer.Option(
            "--all", help="List every device and every table (default: a summary on many)."
        ),
    ] = False,
) -> None:
    """Place one task and print the placement with its per-device stage costs."""
    from dreamshard.evaluation.placement_file import PlacementFile, write_placement_file
    from dreamshard.workflows.experiment import place_and_measure

    check_out(out, tables, topology, constraints)
    if sharding in ("column", "row") and placer not in SPLITTING_PLACERS:
        raise InputError(
            f"--sharding {sharding}: placer {placer!r} places whole tables (splits: "
            f"{', '.join(SPLITTING_PLACERS)}; TorchRec's planner with every sharding type: "
            "torchrec-all)"
        )
    task_devs = task_devices(devices, memory, topology)
    check_devices_per_host(devices_per_host, len(task_devs))
    task = make_task(tables.stem, load_tables(tables), task_devs, devices_per_host=devices_per_host)
    spec = read_constraints(constraints) if constraints is not None else None
    if spec is not None:
        spec.resolve(task)  # bad or contradictory constraints fail before placing
    placed = place_and_measure(
        task,
        placer,
        placer_options(
            backend.seed,
            model,
            samples,
            backend,
            spec,
            search,
            time_budget_ms,
            refine,
            sharding,
        ),
        backend.name,
        backend.options,
        progress,
    )
    print_placement(
        task,
        placed.placement,
        placed.cost,
        placed.placer,
        placed.place_time_ms,
        show_all=show_all,
    )
    print_conditions(placed.conditions)
    if placed.how is not None:
        print_line(placed.how)
    if out is not None:
        record = PlacementFile.of(
            task,
            placed.placement,
            placed.cost,
            placer=placed.placer,
            backend=placed.backend,
            tables_file=tables,
            place_time_ms=placed.place_time_ms,
        )
        write_placement_file(out, record)
        out_console.print(f"wrote {escape(str(out))}")


@backend_options(windows=8, calls=8)
def evaluate(
    *,
    tasks: Annotated[Path, typer.Option("--tasks", help="Suite file from gen-tasks.")],
    split: Annotated[str, typer.Option("--split", help="Which split: test or train.")] = "test",
    placers: Annotated[
        str, typer.Option("--placers", help="Comma-separated placer names.")
    ] = ",".join((*COMPARISON_PLACERS, LEARNED_PLACER)),
    backend: BackendChoice,
    out: OutOpt = None,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", help="Evaluate only the first N tasks.")
    ] = None,
    model: ModelOpt = None,
    samples: SamplesOpt = 0,
    search: SearchOpt = "local",
    time_budget_ms: TimeBudgetOpt = None,
    refine: RefineOpt = 0,
    sharding: ShardingOpt = "auto",
    topology: Annotated[
        Path | None,
        typer.Option(
            "--topology",
            help="Topology file (.csv or .json): run every task on these devices instead "
            "of the suite's.",
        ),
    ] = None,
    devices_per_host: DevicesPerHostOpt = None,
    constraints: ConstraintsOpt = None,
) -> None:
    """Compare placers on a suite's tasks, measured on one backend."""
    from dreamshard.workflows.experiment import compare_placers

    check_out(out, tasks, topology, constraints)
    if max_tasks is not None and max_tasks < 1:
        raise InputError(f"--max-tasks must be at least 1, got {max_tasks}")
    names = [n.strip() for n in placers.split(",") if n.strip()]
    if not names:
        raise InputError(f"--placers: no placer named in {placers!r}")
    if len(set(names)) != len(names):
        raise InputError(f"--placers: a placer is named twice in {placers!r}")
    suite = load_suite(tasks)
    chosen_tasks = list(suite.split(split))[:max_tasks]
    if not chosen_tasks:
        raise InputError(f"{tasks}: split {split!r} has no tasks")
    if topology is not None or devices_per_host is not None:
        devices = load_topology(topology) if topology is not None else None
        for t in chosen_tasks:
            check_devices_per_host(devices_per_host, len(devices or t.devices))
        chosen_tasks = [
            make_task(t.name, t.tables, devices or t.devices, t.optimizer, devices_per_host)
            for t in chosen_tasks
        ]
    spec = None
    if constraints is not None:
        # Named tables must be in the suite; each task takes the constraints on its own.
        names_in_suite = {x.name for task in (*suite.train, *suite.test) for x in task.tables}
        spec = read_constraints(constraints).within(names_in_suite)
        for t in chosen_tasks:
            spec.resolve(t)  # bad or contradictory constraints fail before placing
    comparison = compare_placers(
        chosen_tasks,
        names,
        placer_options(
            backend.seed,
            model,
            samples,
            backend,
            spec,
            search,
            time_budget_ms,
            refine,
            sharding,
        ),
        backend.name,
        backend.options,
        progress,
    )
    print_comparison(comparison.evaluation, comparison.torchrec_estimates)
    if out is not None:
        config = {"tasks_file": str(tasks), "split": split, **vars(backend.options)}
        write_json(out, comparison.to_json(config))
        out_console.print(f"wrote {escape(str(out))}")


def export(
    placement: Annotated[
        Path, typer.Option("--placement", help="Placement file written by `place --out`.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Plan file to write (.json).")],
    tables: Annotated[
        Path | None,
        typer.Option(
            "--tables",
            help="Table file the placement was made for (default: the placement's "
            "'tables_file'). Its rows and dims go into the plan, so loading it for another "
            "model fails.",
        ),
    ] = None,
    module_path: Annotated[
        str,
        typer.Option(
            "--module-path",
            help="Path of the EmbeddingBagCollection in the model given to "
            "DistributedModelParallel, e.g. sparse.ebc (default: the model is the collection).",
        ),
    ] = "",
) -> None:
    """Export a placement as a TorchRec plan file (fused kernel; table-, column- or row-wise
    per table as the placement splits it).

    Device k of the placement becomes rank k. Load the plan in the training job with
    dreamshard.torchrec.plan.load_sharding_plan(FILE, model, world_size) and pass it to
    DistributedModelParallel(model, plan=...).
    """
    from dreamshard.torchrec.plan import plan_from_placement_file, save_plan

    check_out(out, placement, tables)
    spec = plan_from_placement_file(placement, tables, module_path)
    # The table file the placement named is an input too.
    check_out(out, Path(spec.source["tables_file"]))
    save_plan(out, spec)
    (tables_planned,) = spec.modules.values()
    out_console.print(
        f"wrote {escape(str(out))}: {len(tables_planned)} tables on {spec.world_size} ranks "
        f"(module {escape(module_path) or '<root>'})"
    )
