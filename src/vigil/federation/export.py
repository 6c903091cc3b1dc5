"""ONNX export of a :class:`~vigil.federation.model.SepsisNet`, parity check, model package.

The ONNX graph is built from the weights with ``onnx.helper`` (no tracing, no
``onnxscript``): ``Sub(mean) -> Div(std) -> Asinh -> [Gemm -> Relu]* -> Gemm -> Sigmoid``;
with trees, the sigmoid takes the fused score of :mod:`vigil.federation.hybrid`.
Dropout is the identity at inference and is left out.

API (stable; federation builds on it)
-------------------------------------
``to_onnx(model) -> bytes``
    Input ``features`` float32 (N, n_features), output ``probability`` float32
    (N, 1) (sigmoid included), dynamic batch dimension ``N``, opset :data:`OPSET`.
``trees_to_onnx(base, trees, n_features) -> bytes``
    Boosted trees (:mod:`vigil.federation.boosting`) as one ``ai.onnx.ml``
    ``TreeEnsembleRegressor``: ``features`` -> ``raw_score`` (N, 1), the raw
    score before any sigmoid.
``hybrid_to_onnx(model, part) -> bytes``
    The network and the trees of :class:`~vigil.federation.hybrid.HybridTrees`
    in one graph, fused as :mod:`vigil.federation.hybrid` says: ``features`` ->
    ``probability`` (N, 1), like :func:`to_onnx`.
``parity(model, onnx_bytes, X, part=None) -> float``
    Max absolute difference between onnxruntime's and torch's probabilities on
    ``X`` (with ``part``, torch's logit fused with the numpy trees).
``export_package(model, out_dir, *, name, version, threshold, training, validation,
reference_profile=None, private_key_pem=None, extra_files=None, model_card_extra="",
check_rows=None, tolerance=PARITY_TOLERANCE, trees=None) -> ModelPackage``
    Exports, checks parity on ``check_rows`` (default: 1,000 rows drawn from the
    model's own standardization statistics) and refuses (``ModelArtifactError``)
    if it exceeds ``tolerance``; then writes the package with
    :func:`vigil.core.package.write_package`, the feature schema of
    :data:`vigil.features.FEATURE_SCHEMA`, the architecture and the parity in
    the manifest, and a model card (:func:`model_card`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import nn

from vigil.core.errors import ModelArtifactError
from vigil.core.package import ModelPackage, write_package
from vigil.features import FEATURE_SCHEMA
from vigil.federation.boosting import Tree
from vigil.federation.hybrid import HybridTrees, hybrid_proba
from vigil.federation.model import SepsisNet, predict_proba, unwrap

__all__ = [
    "INPUT_NAME",
    "ML_OPSET",
    "OPSET",
    "OUTPUT_NAME",
    "PARITY_ROWS",
    "PARITY_TOLERANCE",
    "TREES_OUTPUT_NAME",
    "export_package",
    "hybrid_to_onnx",
    "model_card",
    "parity",
    "to_onnx",
    "trees_to_onnx",
]

INPUT_NAME = "features"
OUTPUT_NAME = "probability"
OPSET = 17
ML_OPSET = 3
"""Opset of the ``ai.onnx.ml`` domain (tree ensembles)."""
TREES_OUTPUT_NAME = "raw_score"
PARITY_TOLERANCE = 1e-5
"""Largest accepted max-abs difference between onnxruntime and torch probabilities."""
PARITY_ROWS = 1000


def _net(model: nn.Module) -> SepsisNet:
    net = unwrap(model)
    if not isinstance(net, SepsisNet):
        raise ModelArtifactError(f"expected a SepsisNet to export, got {type(net).__name__}")
    return net


def _network_nodes(net: SepsisNet) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers from ``features`` to the network's ``logit`` (N, 1)."""
    from onnx import helper, numpy_helper

    inits = [
        numpy_helper.from_array(net.norm.mean.detach().numpy().astype(np.float32), "norm_mean"),
        numpy_helper.from_array(net.norm.std.detach().numpy().astype(np.float32), "norm_std"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "norm_mean"], ["centered"]),
        helper.make_node("Div", ["centered", "norm_std"], ["standardized"]),
        helper.make_node("Asinh", ["standardized"], ["h0"]),
    ]
    linears = [m for m in net.mlp if isinstance(m, nn.Linear)]
    current = "h0"
    for i, lin in enumerate(linears):
        w, b = f"fc{i}_weight", f"fc{i}_bias"
        inits += [
            numpy_helper.from_array(lin.weight.detach().numpy().astype(np.float32), w),
            numpy_helper.from_array(lin.bias.detach().numpy().astype(np.float32), b),
        ]
        out = f"z{i}" if i < len(linears) - 1 else "logit"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out], transB=1))
        if i < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
            current = f"h{i + 1}"
    return nodes, inits


def _trees_node(base: float, trees: Sequence[Tree], output: str) -> Any:
    """One ``TreeEnsembleRegressor`` node from ``features`` to ``output`` (N, 1)."""
    from onnx import helper

    attrs: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
        "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
        "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for t, tree in enumerate(trees):
        for n in range(tree.feature.size):
            leaf = tree.feature[n] < 0
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(n)
            attrs["nodes_featureids"].append(0 if leaf else int(tree.feature[n]))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_values"].append(0.0 if leaf else float(tree.threshold[n]))
            attrs["nodes_truenodeids"].append(0 if leaf else int(tree.left[n]))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(tree.right[n]))
            attrs["nodes_missing_value_tracks_true"].append(0)
            if leaf:
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(n)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(tree.value[n]))
    return helper.make_node("TreeEnsembleRegressor", [INPUT_NAME], [output],
                            domain="ai.onnx.ml", n_targets=1, aggregate_function="SUM",
                            post_transform="NONE", base_values=[float(base)], **attrs)


def _serialize(nodes: list[Any], inits: list[Any], name: str, n_features: int, output: str,
               *, ml: bool) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="vigil")
    proto.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def to_onnx(model: nn.Module) -> bytes:
    """Serialize the model (with its standardization and sigmoid) to ONNX.

    Parameters
    ----------
    model : nn.Module
        A :class:`SepsisNet`, possibly inside an Opacus wrapper.

    Returns
    -------
    bytes
        A checked ONNX model: ``features`` (N, n_features) -> ``probability`` (N, 1).
    """
    from onnx import helper

    net = _net(model)
    nodes, inits = _network_nodes(net)
    nodes.append(helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]))
    return _serialize(nodes, inits, "sepsis_net", net.n_features, OUTPUT_NAME, ml=False)


def trees_to_onnx(base: float, trees: Sequence[Tree], n_features: int) -> bytes:
    """Serialize boosted trees (:mod:`vigil.federation.boosting`) to ONNX.

    One ``ai.onnx.ml`` ``TreeEnsembleRegressor`` (opset :data:`ML_OPSET`), its
    ``BRANCH_LEQ`` nodes sending ``x <= threshold`` to the left child, as the
    trees were grown; leaf values are stored as float32.

    Parameters
    ----------
    base : float
        Initial raw score.
    trees : sequence of Tree
    n_features : int

    Returns
    -------
    bytes
        A checked ONNX model: ``features`` (N, n_features) -> ``raw_score`` (N, 1).
    """
    return _serialize([_trees_node(base, trees, TREES_OUTPUT_NAME)], [], "sepsis_trees",
                      n_features, TREES_OUTPUT_NAME, ml=True)


def hybrid_to_onnx(model: nn.Module, part: HybridTrees) -> bytes:
    """Serialize the network and trees with their fusion (:mod:`vigil.federation.hybrid`).

    The graph computes the network's ``logit`` and the trees' ``raw_score``
    side by side from ``features``, standardizes each, adds them, applies the
    Platt scaling and the sigmoid.

    Parameters
    ----------
    model : nn.Module
        A :class:`SepsisNet`.
    part : HybridTrees

    Returns
    -------
    bytes
        A checked ONNX model: ``features`` (N, n_features) -> ``probability`` (N, 1).
    """
    from onnx import helper, numpy_helper

    net = _net(model)
    nodes, inits = _network_nodes(net)
    nodes.append(_trees_node(part.base, part.trees, TREES_OUTPUT_NAME))
    st = part.standardization
    for name, value in (("net_mean", st.net_mean), ("net_std", st.net_std),
                        ("tree_mean", st.tree_mean), ("tree_std", st.tree_std),
                        ("platt_a", part.intercept), ("platt_b", part.slope)):
        inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    nodes += [
        helper.make_node("Sub", ["logit", "net_mean"], ["net_centered"]),
        helper.make_node("Div", ["net_centered", "net_std"], ["net_z"]),
        helper.make_node("Sub", [TREES_OUTPUT_NAME, "tree_mean"], ["tree_centered"]),
        helper.make_node("Div", ["tree_centered", "tree_std"], ["tree_z"]),
        helper.make_node("Add", ["net_z", "tree_z"], ["fused"]),
        helper.make_node("Mul", ["fused", "platt_b"], ["scaled"]),
        helper.make_node("Add", ["scaled", "platt_a"], ["calibrated"]),
        helper.make_node("Sigmoid", ["calibrated"], [OUTPUT_NAME]),
    ]
    return _serialize(nodes, inits, "sepsis_net_and_trees", net.n_features, OUTPUT_NAME, ml=True)


def parity(
    model: nn.Module, onnx_bytes: bytes, X: NDArray[np.floating], part: HybridTrees | None = None
) -> float:
    """Max absolute difference of probabilities, onnxruntime vs torch (and numpy trees).

    Parameters
    ----------
    model : nn.Module
    onnx_bytes : bytes
        From :func:`to_onnx`, or :func:`hybrid_to_onnx` with ``part``.
    X : ndarray of shape (n, n_features)
    part : HybridTrees or None, optional
        The trees fused with the network, if any.

    Returns
    -------
    float
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
    )
    x = np.ascontiguousarray(X, dtype=np.float32)
    (onnx_p,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    reference = predict_proba(model, x) if part is None else hybrid_proba(model, part, x)
    return float(np.max(np.abs(np.asarray(onnx_p, dtype=np.float64).reshape(-1) - reference)))


def _synthetic_rows(net: SepsisNet, n: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(0)
    mean = net.norm.mean.numpy().astype(np.float64)
    std = net.norm.std.numpy().astype(np.float64)
    return (mean + std * rng.standard_normal((n, net.n_features))).astype(np.float32)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) and np.isfinite(v) else "—"


def _metrics_section(validation: dict[str, Any]) -> str:
    """Markdown table of overall and per-hospital metrics, if ``validation`` has them."""
    if "auroc" not in validation:
        return "```json\n" + json.dumps(validation, indent=2, default=str) + "\n```\n"
    cols = ("n_patients", "auroc", "auprc", "utility", "sensitivity", "ppv")
    lines = ["| hospital | patients | AUROC | AUPRC | utility | sensitivity | PPV |",
             "|---|---|---|---|---|---|---|"]
    rows = [*sorted(validation.get("by_hospital", {}).items()), ("all", validation)]
    for h, m in rows:
        cells = [f"{m.get('n_patients', 0):,}", *(_fmt(m.get(c)) for c in cols[1:])]
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    where = validation.get("split", "held-out patients")
    return f"Measured on {where} at threshold {_fmt(validation.get('threshold'))}:\n\n" + \
        "\n".join(lines) + "\n"


def _trees_paragraph(trees: dict[str, Any] | None) -> str:
    if trees is None:
        return ""
    plan = trees["plan"]
    return f"""
Next to the network, {trees["n_trees"]} gradient-boosted trees (depth at most
{plan["max_depth"]}, learning rate {plan["learning_rate"]}, {trees["n_leaves"]} leaves in all)
were grown across the sites from summed gradient histograms, fitted to
`SepsisLabel`. The network's logit and the trees' raw score are each
standardized over the sites' validation rows and added; Platt scaling of that
sum, fitted on the same rows (a = {trees["platt"]["a"]:.3f}, b = {trees["platt"]["b"]:.3f}),
gives the output probability. The trees are one `ai.onnx.ml`
`TreeEnsembleRegressor` (opset {ML_OPSET}) in the same graph.
"""


def model_card(
    *, name: str, version: str, threshold: float, architecture: dict[str, Any],
    training: dict[str, Any], validation: dict[str, Any], extra: str = "",
) -> str:
    """Write the model card (Mitchell et al., FAT* 2019) of a sepsis package, as Markdown."""
    return f"""# {name} {version}

## Intended use

Hourly risk that an adult ICU patient meets the Sepsis-3 criteria within the
next 6 hours (PhysioNet/CinC 2019 task), as a decision *support* signal next to
the EHR: it ranks patients for review; it does not diagnose and must not gate
treatment. Each site should recalibrate it and pick its own alert threshold
(`vigil calibrate`) before clinical use.

## Model

A multilayer perceptron (hidden layers {architecture.get("hidden")}, ReLU,
dropout {architecture.get("dropout")} in training) on the {len(FEATURE_SCHEMA)} features
of feature schema v{FEATURE_SCHEMA.version} (sha256 `{FEATURE_SCHEMA.sha256[:16]}`):
last values carried forward, missingness indicators, hours since measurement,
6 h trends, derived ratios, SOFA-like components, rule scores, demographics and
ICU hour. Features are standardized inside the model and squashed with
`asinh` (linear near the mean, logarithmic in the tails); the output is a
probability, exported to ONNX (opset {OPSET}).
{_trees_paragraph(architecture.get("trees"))}
## Training data

PhysioNet/CinC Challenge 2019 data (Reyna et al., Crit Care Med 48(2):210-217,
2020; CC BY 4.0), two hospital systems (A, B). Details:

```json
{json.dumps(training, indent=2, default=str)}
```

## Metrics

Hourly AUROC and AUPRC against `SepsisLabel`; normalized utility is the
Challenge's score of the binary alerts.

{_metrics_section(validation)}
## Threshold

An hour is flagged when the probability is at least **{threshold:.4f}**:
{training.get("threshold_rule", "the threshold chosen at training time")}.
It is tuned to the Challenge's utility, not to any site's alert budget.

## Limitations

- Only the 40 PhysioNet variables: no Glasgow Coma Scale, urine output,
  vasopressors, cultures or antibiotics, which Sepsis-3 itself uses.
- Two US hospital systems from the 2010s; the Challenge showed models trained
  on them failed on a third system (utility below 0 on test set C). Expect the
  same at a new site until it is validated and recalibrated locally.
- Labels are algorithmic (Sepsis-3 from charted data, shifted 6 h early), not
  clinician-adjudicated.
- Hourly rows of one patient are correlated; metrics are per hour, so they
  weigh long stays more.
{extra}"""


def export_package(
    model: nn.Module,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    threshold: float,
    training: dict[str, Any],
    validation: dict[str, Any],
    reference_profile: dict[str, Any] | None = None,
    private_key_pem: bytes | None = None,
    extra_files: dict[str, bytes] | None = None,
    model_card_extra: str = "",
    check_rows: NDArray[np.floating] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    trees: HybridTrees | None = None,
) -> ModelPackage:
    """Export the model to ONNX, check parity, and write a model package.

    Parameters
    ----------
    model : nn.Module
        A trained :class:`SepsisNet`.
    out_dir : str or Path
        Package directory.
    name, version : str
    threshold : float
        Decision threshold on the probability.
    training, validation : dict
        Manifest sections (JSON-serializable).
    reference_profile : dict or None, optional
        Aggregate histograms for drift monitoring.
    private_key_pem : bytes or None, optional
        Ed25519 key to sign the manifest with.
    extra_files : dict of str to bytes, optional
    model_card_extra : str, optional
        Markdown appended to the model card.
    check_rows : ndarray of shape (n, n_features), optional
        Rows for the parity check; by default :data:`PARITY_ROWS` rows drawn
        from the model's standardization statistics.
    tolerance : float, optional
    trees : HybridTrees or None, optional
        Trees to fuse with the network (:func:`hybrid_to_onnx`); parity is then
        checked against the fused score.

    Returns
    -------
    ModelPackage
        The written package, read back and verified.

    Raises
    ------
    ModelArtifactError
        If the model's width is not the feature schema's or parity fails.
    """
    net = _net(model)
    if net.n_features != len(FEATURE_SCHEMA):
        raise ModelArtifactError(
            f"expected a model on the {len(FEATURE_SCHEMA)} features of the schema, got "
            f"{net.n_features}; train it on vigil.features.build_features output"
        )
    onnx_bytes = to_onnx(net) if trees is None else hybrid_to_onnx(net, trees)
    rows = _synthetic_rows(net, PARITY_ROWS) if check_rows is None else check_rows
    diff = parity(net, onnx_bytes, rows, trees)
    if not diff <= tolerance:
        raise ModelArtifactError(
            f"ONNX parity failed: max |onnxruntime - torch| = {diff:.3g} on {len(rows)} rows, "
            f"expected <= {tolerance:g}; the package was not written",
            path=str(out_dir),
        )
    architecture: dict[str, Any] = {"type": "SepsisNet", **net.config()}
    if trees is not None:
        architecture = {**architecture, "type": "SepsisNet+trees", "trees": trees.describe()}
    manifest = {
        "name": name,
        "version": version,
        "task": "sepsis-6h",
        "feature_schema": FEATURE_SCHEMA.to_dict(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "threshold": float(threshold),
        "training": training,
        "validation": validation,
        "reference_profile": reference_profile or {},
        "architecture": architecture,
        "export": {"opset": OPSET, **({} if trees is None else {"ml_opset": ML_OPSET}),
                   "parity_max_abs_diff": diff, "parity_rows": int(len(rows))},
    }
    card = model_card(
        name=name, version=version, threshold=float(threshold), architecture=architecture,
        training=training, validation=validation, extra=model_card_extra,
    )
    return write_package(
        out_dir, onnx_model=onnx_bytes, manifest=manifest, model_card=card,
        private_key_pem=private_key_pem, extra_files=extra_files,
    )
