"""Linear probes: how much class information each probed layer holds (Alain & Bengio, 2016).

Per layer, a multinomial logistic regression (scikit-learn, L-BFGS, standardised inputs) is fit on
the train record's reduced activations against the *labels* and scored on the eval record. The
penultimate features (``pre_logits``) are probed too, so the last row shows how close a linear
read-out of the layers gets to the model's own head.

>>> from inspectnet.probe.record import ProbeRecord
>>> res = linear_probes(ProbeRecord.load("rec_train"), ProbeRecord.load("rec_test"))   # doctest: +SKIP
>>> [(r["layer"], r["test_accuracy"]) for r in res.rows]                                # doctest: +SKIP
[('layer1', 0.71), ('layer2', 0.86), ('layer3', 0.95), ('layer4', 0.97), ('pre_logits', 0.97)]
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.core.streaming import row_blocks
from inspectnet.core.tables import markdown_table
from inspectnet.data.subsets import spread_indices
from inspectnet.models.layers import PRE_LOGITS
from inspectnet.probe.record import ProbeRecord


@dataclasses.dataclass(frozen=True)
class LinearProbeResult(Result):
    """One row per layer, in depth order: dim, train and test accuracy of the linear probe."""

    rows: list[dict[str, Any]]
    model_accuracy: float | None
    n_train: int
    n_eval: int
    C: float
    identity: dict[str, Any]


FIT_SAMPLES = 10_000


def probe_layer(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, *,
                C: float = 1.0, max_iter: int = 500, seed: int = 0) -> dict[str, float]:
    """Fit one standardised logistic-regression probe and score it.

    ``x_eval`` may be a record's memmap (rows with label -1 are skipped): it is scored block by block.

    Args:
        x_train: (n, d) fitting rows.
        y_train: their labels.
        x_eval: (m, d) scoring rows.
        y_eval: their labels (-1 = skipped).
        C: the inverse L2 regularisation strength.
        max_iter: the solver's iterations.
        seed: the solver's random seed.

    Returns:
        ``{"train_accuracy", "test_accuracy"}``.

    Examples:
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
        >>> probe_layer(x, y, x, y)
        {'train_accuracy': 1.0, 'test_accuracy': 1.0}
    """
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(np.asarray(x_train, dtype=np.float64), y_train)
    y_eval = np.asarray(y_eval)
    hits = 0
    for rows in row_blocks(len(y_eval)):
        keep = y_eval[rows] >= 0
        if keep.any():
            pred = clf.predict(np.asarray(x_eval[rows], dtype=np.float64)[keep])
            hits += int((pred == y_eval[rows][keep]).sum())
    return {"train_accuracy": float(clf.score(np.asarray(x_train, dtype=np.float64), y_train)),
            "test_accuracy": hits / int((y_eval >= 0).sum())}


def linear_probes(train: ProbeRecord, eval_record: ProbeRecord, layers: list[str] | None = None, *,
                  C: float = 1.0, max_iter: int = 500, include_features: bool = True,
                  fit_samples: int = FIT_SAMPLES) -> LinearProbeResult:
    """Probe every layer of ``train`` (plus the penultimate features) and score on ``eval_record``.

    Each probe is fitted on at most ``fit_samples`` evenly spread labelled rows of ``train``
    (``n_train`` says how many) and scored on every labelled row of ``eval_record``, block by block.

    Args:
        train: the fitting record.
        eval_record: the scoring record (same model and layers).
        layers: the layers to probe (default: every recorded layer).
        C: the inverse L2 regularisation strength.
        max_iter: the solver's iterations.
        include_features: probe the penultimate features too.
        fit_samples: the most fitting rows.

    Returns:
        One row per layer, in depth order, with the model's own accuracy.

    Raises:
        InspectnetError: ``C`` is not a finite positive number, the train record has fewer than two
            labelled classes, the eval record has no labels, or a layer's width differs between the records.
    """
    if not C > 0 or not np.isfinite(C):  # nan passes a plain C <= 0 test
        raise InspectnetError(f"--C must be a finite positive number, got {C}")
    names = list(layers or train.layers)
    if include_features and PRE_LOGITS not in names:
        names.append(PRE_LOGITS)
    y_tr, y_ev = np.asarray(train.labels), np.asarray(eval_record.labels)
    labelled = np.flatnonzero(y_tr >= 0)
    if len(np.unique(y_tr[labelled])) < 2:
        raise InspectnetError(f"train record {train.root} needs labels of at least two classes for a linear probe")
    if not (y_ev >= 0).any():
        raise InspectnetError(f"eval record {eval_record.root} has no labels to score the probes on")
    fit_rows = labelled[spread_indices(len(labelled), fit_samples)]
    rows = []
    for name in names:
        x_tr, x_ev = train.activations(name), eval_record.activations(name)
        if x_tr.shape[1] != x_ev.shape[1]:
            raise InspectnetError(f"layer {name!r} has {x_tr.shape[1]} dims in the train record but "
                                  f"{x_ev.shape[1]} in the eval record")
        scores = probe_layer(x_tr[fit_rows], y_tr[fit_rows], x_ev, y_ev, C=C, max_iter=max_iter)
        rows.append({"layer": name, "dim": int(x_tr.shape[1]), **scores})
    m_ev = y_ev >= 0
    model_acc = float((eval_record.predictions[m_ev] == y_ev[m_ev]).mean())
    return LinearProbeResult(rows=rows, model_accuracy=model_acc, n_train=len(fit_rows), n_eval=int(m_ev.sum()),
                             C=C, identity={"train": train.fingerprint, "eval": eval_record.fingerprint})


def format_table(res: LinearProbeResult) -> str:
    """Markdown table of the probes, with the model's own accuracy as the reference line.

    Args:
        res: the probes.

    Returns:
        The table.
    """
    rows = [[r["layer"], r["dim"], r["train_accuracy"], r["test_accuracy"]] for r in res.rows]
    if res.model_accuracy is not None:
        rows.append(["model (head)", "", "", res.model_accuracy])
    return markdown_table(["layer", "dim", "train acc.", "test acc."], rows)


def plot(res: LinearProbeResult, path: str | Path) -> Path:
    """Test accuracy of the probe across depth, with the model's accuracy as a dashed line.

    Args:
        res: the probes.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.
    """
    from inspectnet.core.figures import new_figure, save_figure

    fig = new_figure(figsize=(max(4.0, 0.9 * len(res.rows) + 2), 3.2))
    ax = fig.subplots()
    xs = range(len(res.rows))
    ax.plot(xs, [r["test_accuracy"] for r in res.rows], "o-", label="linear probe (test)")
    ax.plot(xs, [r["train_accuracy"] for r in res.rows], "s:", alpha=0.6, label="linear probe (train)")
    if res.model_accuracy is not None:
        ax.axhline(res.model_accuracy, color="k", ls="--", lw=1, label="model")
    ax.set_xticks(list(xs), [r["layer"] for r in res.rows], rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100, bbox_inches="tight")
