"""Probe and dissection passes across processes: two real gloo ranks (forked here, so no start-up cost)
against one process, shards and their merge, a rank failing mid-pass, resumption per rank."""

import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist

from inspectnet import InspectnetError, ProbeRecord, load_concepts, load_data, load_model, run_probe
from inspectnet.analysis.dissect.dissection import dissect
from inspectnet.analysis.dissect.sketch import UnitQuantiles
from inspectnet.core.distributed import RankFailed, shard_batches
from inspectnet.data import ArrayDataset
from inspectnet.probe.recorder import merge_shards

LAYERS = "layer3,layer4"


def run_ranks(tmp_path, fn, world=2, timeout=240):
    """Run ``fn(rank)`` in ``world`` forked processes joined in one gloo group; their results in rank order.

    A rank's exception comes back as ``("error", type name, message)``. One torch thread per process:
    a forked child must not reuse the parent's thread pool, and the reference runs the same way.
    """
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    store = tmp_path / f"store-{id(fn)}"

    def child(rank):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        try:
            result = ("ok", fn(rank))
        except BaseException as exc:  # noqa: BLE001 - sent back to the test
            result = ("error", type(exc).__name__, str(exc), traceback.format_exc())
        queue.put((rank, pickle.dumps(result)))  # plain pickle: tensors travel by value, not shared memory

    procs = [ctx.Process(target=child, args=(r,)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout)
    return [pickle.loads(results[r]) for r in range(world)]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def digits_setup(tiny_digits_model):
    zm = tiny_digits_model
    return zm, load_data("digits", zm.transform())


def _same_record(a, b):
    for name in ("features", "logits", "labels"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for layer in a.layers:
        assert np.array_equal(a.activations(layer), b.activations(layer)), layer
    assert a.manifest["identity"] == b.manifest["identity"]


def test_shares_are_whole_batches_without_duplicates():
    for order in ("contiguous", "strided"):
        for world in (1, 2, 3, 7):
            shares = [shard_batches(70, 8, world, r, order) for r in range(world)]
            samples = sorted(i for share in shares for b in share for i in b)
            assert samples == list(range(70))                        # every sample once, none padded
            assert {b.start % 8 for share in shares for b in share} == {0}  # the one-process batches
    assert shard_batches(70, 8, 2, 0) == [range(s, s + 8) for s in range(0, 40, 8)]
    assert [b.start for b in shard_batches(70, 8, 2, 1, "strided")] == [8, 24, 40, 56]
    assert shard_batches(3, 8, 2, 1) == []                            # more ranks than batches: idle, not padded
    with pytest.raises(InspectnetError, match="--shard-order 'random'"):
        shard_batches(3, 8, 2, 1, "random")


@pytest.mark.parametrize("order", ["contiguous", "strided"])
def test_two_ranks_write_the_one_process_record_bit_for_bit(tmp_path, digits_setup, one_thread, order):
    zm, ds = digits_setup
    one = run_probe(zm, ds, LAYERS, tmp_path / "one", batch_size=8, limit=70)
    out = tmp_path / "two"
    results = run_ranks(tmp_path, lambda r: len(run_probe(zm, ds, LAYERS, out, batch_size=8, limit=70,
                                                           shard_order=order)))
    assert results == [("ok", 70), ("ok", 70)]
    _same_record(one, ProbeRecord.load(out))
    assert sorted(p.name for p in out.glob("progress*")) == ["progress-rank-0-of-2.json", "progress-rank-1-of-2.json"]
    # the finished record is reused, also by one process
    assert len(run_probe(zm, ds, LAYERS, out, batch_size=8, limit=70)) == 70


def test_per_rank_shards_are_joined_by_the_loader_and_by_merge(tmp_path, digits_setup, one_thread):
    zm, ds = digits_setup
    one = run_probe(zm, ds, LAYERS, tmp_path / "one", batch_size=8, limit=70)
    out = tmp_path / "sharded"
    results = run_ranks(tmp_path, lambda r: len(run_probe(zm, ds, LAYERS, out, batch_size=8, limit=70, shards=True,
                                                           shard_order="strided")))
    assert results == [("ok", 70), ("ok", 70)]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    assert np.load(out / "shards" / "rank-1-of-2" / "features.npy").shape[0] == 32   # 4 strided batches of 8
    joined = ProbeRecord.load(out)
    _same_record(one, joined)
    merged = merge_shards(out)
    _same_record(one, merged)
    assert isinstance(merged.features, np.memmap) and not (out / "shards").exists()
    with pytest.raises(InspectnetError, match="no per-rank shards to merge"):
        merge_shards(out)


def test_missing_shard_is_named(tmp_path, digits_setup, one_thread):
    zm, ds = digits_setup
    out = tmp_path / "sharded"
    run_ranks(tmp_path, lambda r: len(run_probe(zm, ds, LAYERS, out, batch_size=8, limit=30, shards=True)))
    (out / "shards" / "rank-1-of-2" / "logits.npy").unlink()   # e.g. a machine's shard not copied over
    with pytest.raises(InspectnetError, match="shard rank-1-of-2 has no logits.npy"):
        ProbeRecord.load(out).accuracy()


class _FailsAt(ArrayDataset):
    """Digits whose sample ``bad`` cannot be read (a file that went missing mid-pass)."""

    bad = -1

    def __getitem__(self, i):
        if i == self.bad:
            raise InspectnetError(f"image digits#{i} cannot be decoded")
        return super().__getitem__(i)


def test_rank_failing_mid_pass_stops_the_other_naming_it_and_a_rerun_resumes(tmp_path, digits_setup, one_thread):
    zm, ds = digits_setup
    one = run_probe(zm, ds, LAYERS, tmp_path / "one", batch_size=8, limit=70)
    broken = ds.with_transform(ds.transform)
    broken.__class__ = _FailsAt
    broken.bad = 60  # in rank 1's share (batches 40..69), after it wrote two batches
    out = tmp_path / "two"
    results = run_ranks(tmp_path, lambda r: len(run_probe(zm, broken, LAYERS, out, batch_size=8, limit=70)))
    assert results[1][:3] == ("error", "InspectnetError", "image digits#60 cannot be decoded")
    kind, name, message = results[0][:3]
    assert (kind, name) == ("error", "RankFailed"), results[0]
    assert message.startswith("rank 1 of 2 failed during the probe pass (InspectnetError: image digits#60"), message
    assert "re-run the same command to resume" in message
    with pytest.raises(InspectnetError, match="incomplete"):
        ProbeRecord.load(out)
    done = [json.loads((out / f"progress-rank-{r}-of-2.json").read_text())["done"] for r in (0, 1)]
    assert done[1] == 16 and done[0] % 8 == 0 and done[0] <= 40   # each rank's rows are kept (rank 0 may stop early)
    # one process cannot take over a record two are writing (the shares would not match)
    with pytest.raises(InspectnetError, match="being written by 2 processes"):
        run_probe(zm, ds, LAYERS, out, batch_size=8, limit=70)
    seen = []

    class Counting(type(ds)):
        def __getitem__(self, i):
            seen.append(i)
            return super().__getitem__(i)

    counting = ds.with_transform(ds.transform)
    counting.__class__ = Counting
    results = run_ranks(tmp_path, lambda r: (len(run_probe(zm, counting, LAYERS, out, batch_size=8, limit=70)),
                                            sorted(seen)))
    assert results[0] == ("ok", (70, list(range(done[0], 40))))   # each rank resumes its own share
    assert results[1] == ("ok", (70, list(range(56, 70))))        # rank 1 after its two batches
    _same_record(one, ProbeRecord.load(out))


def test_sketch_is_independent_of_order_and_merges_across_ranks(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(np.stack([rng.standard_normal(500) * (i + 1) - i, np.full(500, 2.5),
                                          np.maximum(rng.standard_cauchy(500), 0)])) for i in range(10)]
    whole = UnitQuantiles(3, bins=256)
    for b in batches:
        whole.update(b)
    backwards = UnitQuantiles(3, bins=256)
    for b in reversed(batches):
        backwards.update(b)
    for name in ("counts", "bmin", "bmax", "exp", "start", "min", "max"):
        assert torch.equal(getattr(whole, name), getattr(backwards, name)), name

    def merged(rank):
        part = UnitQuantiles(3, bins=256)
        for b in batches[rank::2] if rank == 0 else batches[9::-2]:  # different shares, different orders
            part.update(b)
        part.all_reduce()
        return {name: getattr(part, name) for name in ("counts", "bmin", "bmax", "exp", "start", "total")}

    for kind, got in run_ranks(tmp_path, merged):
        assert kind == "ok"
        for name, value in got.items():
            expected = getattr(whole, name)
            assert (torch.equal(value, expected) if isinstance(value, torch.Tensor) else value == expected), name


def test_two_rank_dissection_equals_one_process(tmp_path, one_thread):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=2, input_size=32)
    data = load_concepts("shapes?n=40&seed=2")
    one, one_pass = (dissect(zm, data, "layer1,layer2", batch_size=8, device="cpu", passes=p) for p in (2, 1))

    def two(rank):
        return [(res.to_dict(), res.iou) for res in (
            dissect(zm, data, "layer1,layer2", batch_size=8, device="cpu", shard_order="strided", passes=p)
            for p in (2, 1))]

    results = run_ranks(tmp_path, two)
    assert results[0][1][1][0] == results[1][1][1][0]   # one pass: every rank holds the same result
    for kind, ((doc, iou), (doc1, iou1)) in results:
        assert kind == "ok"
        assert doc == one.to_dict()                 # two passes: thresholds, top images, IoU, detectors all equal
        for layer, matrix in one.iou.items():
            assert np.array_equal(iou[layer], matrix)
        for layer, info in one_pass.layers.items():  # one pass: the same top images, IoU within a bin's error
            assert [u["top_images"] for u in doc1["layers"][layer]["units"]] == [u["top_images"] for u in info["units"]]
            assert np.abs(iou1[layer] - one_pass.iou[layer]).max() < 0.02
    assert any(u["iou"] > 0 for u in one.layers["layer2"]["units"])   # a non-trivial result was compared


def test_rank_failure_is_not_a_hang_in_dissection(tmp_path, one_thread):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=2, input_size=32)
    data = load_concepts("shapes?n=40&seed=2")

    class Broken(type(data)):
        def image(self, i):
            if i == 30:
                raise InspectnetError("concept image 30 cannot be decoded")
            return super().image(i)

    data.__class__ = Broken
    results = run_ranks(tmp_path, lambda r: dissect(zm, data, "layer1", batch_size=8, device="cpu").num_images)
    assert results[1][1:3] == ("InspectnetError", "concept image 30 cannot be decoded")
    assert results[0][1] == RankFailed.__name__
    assert results[0][2].startswith("rank 1 of 2 failed during the dissection pass"), results[0][2]


AUDIT = dict(data="digits:train", eval_data="digits:test", limit=120, eval_limit=40, layers=["layer3", "layer4"],
             concepts="shapes?n=24", concept_limit=24, attribution_images=1, ig_steps=4, top_units=2, batch_size=16)


def _sections(doc, folder):
    """The card's sections without timings, the audit folder's path written as DIR."""
    text = json.dumps({name: {k: v for k, v in sec.items() if k != "seconds"} for name, sec in doc["sections"].items()})
    return json.loads(text.replace(str(folder), "DIR"))


FRESH = "INSPECTNET_FRESH_PROCESS"


@pytest.mark.skipif(os.environ.get(FRESH) != "1", reason="run by test_two_rank_audit_in_a_fresh_process")
def test_two_rank_audit_equals_the_one_process_audit(tmp_path, digits_setup, one_thread):
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    zm, _ = digits_setup
    config = AuditConfig(**AUDIT)
    # the ranks fork first: an audit gives a placeholder-named model the data's class names, and both
    # runs must start from the same model
    results = run_ranks(tmp_path, lambda r: (lambda d: d and _sections(d, tmp_path / "two"))(
        run_audit(zm, config, tmp_path / "two", log=None, shard_order="strided")))
    one = run_audit(zm, config, tmp_path / "one", log=None)
    assert results[1] == ("ok", None)                  # rank 1 leaves after the shared passes
    kind, sections = results[0]
    # compared as JSON text: a map that cannot be ranked has a NaN curve on both sides, and NaN != NaN
    assert kind == "ok" and json.dumps(sections, sort_keys=True) == json.dumps(_sections(one, tmp_path / "one"),
                                                                           sort_keys=True)
    assert {s["status"] for s in sections.values()} == {"ok"} and "dissection" in sections
    for part in ("train", "eval"):
        _same_record(ProbeRecord.load(tmp_path / "one" / "probe" / part),
                     ProbeRecord.load(tmp_path / "two" / "probe" / part))
    assert (tmp_path / "two" / "card.html").is_file()


def test_two_rank_audit_in_a_fresh_process():
    """torch refuses backward in a forked child once its parent has run one (the audit's attributions
    do), so the two-rank audit comparison runs in a fresh interpreter, whatever ran before it here."""
    if os.environ.get(FRESH) == "1":
        pytest.skip("this is the fresh process")
    test = f"{__file__}::test_two_rank_audit_equals_the_one_process_audit"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                         env={**os.environ, FRESH: "1"}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-4000:]
