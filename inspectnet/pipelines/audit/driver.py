"""The audit driver: runs (or reuses) every stage in order and writes the card."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspectnet.core.distributed import share_from_main, world
from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json
from inspectnet.data.labels import align_classes
from inspectnet.models.zoo import ModelRef, ZooModel
from inspectnet.pipelines.audit.config import AuditConfig, check_config
from inspectnet.pipelines.audit.context import AuditContext, describe_error
from inspectnet.pipelines.audit.folder import AUDIT_FILE, files_under, index_data, open_folder, remove_stage_files
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.pipelines.audit.stages import STAGES


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _map_classes(ctx: AuditContext, state: dict[str, Any], log: Callable[[str], None]) -> tuple[list[str], bool]:
    """Map the data's and the eval data's classes onto the model's before any stage runs.

    What cannot be mapped is refused. Returns the model's class names for this audit and whether the
    data map in index order: a model with placeholder class names takes the data's names then (the card
    says so).

    The data's class names are remembered in the audit state, so a fully cached audit never loads
    the data.
    """
    cfg = ctx.config
    known = state.setdefault("data_class_names", {})
    names, index_order = list(ctx.about.class_names), False
    for spec in dict.fromkeys([cfg.data, cfg.eval_data or cfg.data]):
        if spec not in known:
            try:
                known[spec] = list(ctx.raw_dataset(spec).class_names)
            except Exception as exc:  # noqa: BLE001 - the probe stage reports a bad data spec properly
                log(f"note: could not read class names from {spec}: {describe_error(exc)}")
                continue
        if not known[spec]:
            continue  # unlabelled data
        mapping = align_classes(known[spec], names, class_map=cfg.class_map, strict=spec == cfg.data,
                                what=f"data {spec!r}")
        if mapping.index_order:
            names, index_order = list(mapping.data_classes), True
    return names, index_order


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _from_main(fn: Callable[[], Any], *, share: bool = True) -> Any:
    """``fn()`` on rank 0 only (in one process: simply ``fn()``), its result (``share``) or error on every rank."""
    result, error = None, None
    if world()[1] == 0:
        try:
            result = fn()
        except InspectnetError as exc:
            error = str(exc)
    shared, error = share_from_main((result if share else None, error))
    result = shared if share else result
    if error is not None:
        raise InspectnetError(error)
    return result


def run_audit(model: ZooModel | ModelRef, config: AuditConfig, out: str | Path, *,
              log: Callable[[str], None] | None = _log, num_workers: int = 0,
              shard_order: str = "contiguous", made_by: list[str] | None = None) -> dict[str, Any] | None:
    """Run (or reuse) every stage, write ``card.json``, ``README.md`` and ``card.html``; return the card.

    ``model`` is a loaded model or a :class:`~inspectnet.models.zoo.ModelRef` (loaded only if a stage
    must run). Under ``torchrun`` ranks share the data passes out in ``shard_order`` and ranks other
    than 0 return None.

    Args:
        model: the model, or a reference to it.
        config: the audit's configuration.
        out: the audit folder.
        log: receives one line per stage (start, cached/ok/failed with seconds) and the summary.
        num_workers: data loader processes that decode images for the data passes.
        shard_order: how ranks share the batches under ``torchrun``.
        made_by: the commands that made the model (``inspectnet.models.provenance.made_by(folder)``),
            shown under "How to reproduce".

    Returns:
        The card document; None on ranks other than 0.
    """
    from inspectnet.pipelines.audit.card import write_card
    from inspectnet.reports.card import build_card

    main = world()[1] == 0
    log = log if (log and main) else (lambda _m: None)
    out = Path(out)
    ref = model if isinstance(model, ModelRef) else ModelRef.of(model)
    # the arguments that need the model are checked now unless the folder holds an audit already (a
    # fully cached audit never loads the model); the stages that use them check them as they run
    check_config(config, None if (out / AUDIT_FILE).is_file() else ref.load())
    about = ref.about()
    ctx = AuditContext(ref=ref, about=about, out=out, config=config, results={}, num_workers=num_workers,
                   shard_order=shard_order)
    t_all = time.perf_counter()
    state = _from_main(lambda: open_folder(out, about), share=False)  # the other ranks keep no state
    # a changed data folder changes every stage's key (the stages read it through the probe records)
    ctx.data_content, changed = _from_main(lambda: index_data(out, state, [config.data, config.eval_data,
                                                                           config.concepts]))
    if changed:
        log(f"recomputed: {changed}")
    # every rank probes with the class names rank 0 settled on (the label mapping is in the record's identity)
    about.class_names, ctx.index_order = _from_main(lambda: _map_classes(ctx, state, log))
    wanted = [s for s in STAGES if s.enabled(config)]
    if world()[0] > 1:  # the shared passes first: the other ranks are free once they are done
        wanted.sort(key=lambda s: not s.distributed)
    keys: dict[str, str] = {}
    for n, stage in enumerate(wanted, 1):
        if not (main or stage.distributed):
            continue
        prefix = f"[{n}/{len(wanted)}] {stage.name}"
        prepare = lambda: _prepare(stage, ctx, state, keys, log, prefix)  # noqa: B023, E731 - called at once
        if _from_main(prepare) if stage.distributed else prepare():  # rank 0 alone needs no collective
            entry = _run_stage(stage, ctx)
            if main:
                _record(stage, ctx, state, entry, keys, log, prefix)
        if stage.distributed and world()[0] > 1:  # later shared stages read it (e.g. the analysed layer)
            ctx.results[stage.name] = share_from_main(ctx.results.get(stage.name))
    if not main:
        return None
    atomic_write_json(out / AUDIT_FILE, state)
    results = {s.name: ctx.results[s.name] for s in STAGES if s.name in ctx.results}  # the card's order
    doc = build_card(about, config, results, fingerprint=about.fingerprint(),
                     total_seconds=time.perf_counter() - t_all, made_by=made_by or [])
    if changed:
        doc["data"]["recomputed"] = changed
    write_card(doc, out)
    doc["timing"]["total_seconds"] = round(time.perf_counter() - t_all, 3)
    write_card(doc, out)
    log(summary(doc))
    return doc


def _prepare(stage: Stage, ctx: AuditContext, state: dict[str, Any], keys: dict[str, str],
             log: Callable[[str], None], prefix: str) -> bool:
    """Rank 0: whether ``stage`` must run now; a cached or unrunnable stage gets its entry here.

    A stage about to run first loses the files of its previous run (an interrupted resumable stage
    with the same key keeps them, e.g. the probe pass) and is marked ``running`` under its key, with
    the files already in its folder, so that what it writes is known even if it is killed.
    """
    reads = (*stage.needs, *stage.uses)
    content = [ctx.data_content] if ctx.data_content else []  # built-in data: keys as before
    keys[stage.name] = _key([ctx.about.fingerprint(), ctx.about.class_names, *content, stage.name,
                             stage.params(ctx.config),
                             [keys.get(d) for d in reads],
                             [ctx.results.get(d, {}).get("status") for d in stage.uses]])
    prev = state["stages"].get(stage.name, {})
    files_there = not stage.writes_folder or ((ctx.out / stage.name).is_dir()
                                              and all((ctx.out / f).exists() for f in prev.get("files", [])))
    if prev.get("key") == keys[stage.name] and prev.get("status") == "ok" and files_there:
        ctx.results[stage.name] = {**prev, "title": stage.title, "cached": True}
        log(f"{prefix}: cached")
        return False
    failed = [d for d in stage.needs if d in keys and ctx.results[d]["status"] != "ok"]
    if failed:
        entry = {"status": "failed", "error": f"needs stage {', '.join(failed)}, which failed", "seconds": 0.0}
        if stage.writes_folder:  # the files of its previous run belong to other inputs
            remove_stage_files(ctx.out, stage, prev)
            entry["files"] = []
        _record(stage, ctx, state, entry, keys, log, prefix)
        return False
    foreign: list[str] = []
    if stage.writes_folder:
        if stage.resumable and prev.get("status") == "running" and prev.get("key") == keys[stage.name]:
            foreign = list(prev.get("foreign", []))
        else:
            remove_stage_files(ctx.out, stage, prev)
            foreign = files_under(ctx.out, stage.name)
    state["stages"][stage.name] = {"status": "running", "key": keys[stage.name], "foreign": foreign}
    atomic_write_json(ctx.out / AUDIT_FILE, state)
    log(f"{prefix}: running")
    return True


def _record(stage: Stage, ctx: AuditContext, state: dict[str, Any], entry: dict[str, Any], keys: dict[str, str],
            log: Callable[[str], None], prefix: str) -> None:
    """Rank 0: store a stage's entry (with the files it wrote) in the audit state and the card's results."""
    entry.update(key=keys[stage.name])
    if stage.writes_folder and "files" not in entry:
        foreign = set(state["stages"].get(stage.name, {}).get("foreign", []))
        entry["files"] = [f for f in files_under(ctx.out, stage.name) if f not in foreign]
    state["stages"][stage.name] = entry
    atomic_write_json(ctx.out / AUDIT_FILE, state)
    ctx.results[stage.name] = {**entry, "title": stage.title, "cached": False}
    log(f"{prefix}: {entry['status']} ({entry['seconds']:.1f} s)"
        + (f" — {entry['error']}" if entry["status"] == "failed" else ""))


def _run_stage(stage: Stage, ctx: AuditContext) -> dict[str, Any]:
    """Run one stage; any failure becomes the entry's error (the card still gets written).

    Under torchrun a failure of a stage every rank runs ends the audit instead: the ranks could no
    longer agree on what runs next.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        entry = {"status": "ok", "result": stage.run(ctx)}
    except Exception as exc:  # noqa: BLE001 - any failure becomes the section's reason
        if stage.distributed and world()[0] > 1:
            raise
        entry = {"status": "failed", "error": describe_error(exc), "traceback": traceback.format_exc(limit=4)}
    # CPU time beside wall time: on a shared machine the wall time of a stage says little of its cost
    entry["seconds"], entry["cpu_seconds"] = round(time.perf_counter() - t0, 3), round(time.process_time() - cpu0, 3)
    return entry


def summary(doc: dict[str, Any]) -> str:
    """One line per stage (status, cached, seconds) and the total.

    Args:
        doc: the card document.

    Returns:
        The lines, joined.
    """
    lines = ["stage            status   cached  seconds"]
    for name, sec in doc["sections"].items():
        lines.append(f"{name:<16} {sec['status']:<8} {'yes' if sec.get('cached') else 'no':<7} "
                     f"{sec.get('seconds', 0.0):7.2f}")
    t = doc["timing"]
    lines.append(f"total {t['total_seconds']:.2f} s (stages run now {t['stages_run_seconds']:.2f} s, "
                 f"cached stages originally {t['stages_cached_seconds']:.2f} s)")
    return "\n".join(lines)

