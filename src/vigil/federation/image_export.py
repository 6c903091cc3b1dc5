"""Export of the imaging CNN: ONNX written node by node, parity against torch, a signed package.

The graph is written with ``onnx.helper`` (as :mod:`vigil.federation.export` writes the
sepsis network), not ``torch.onnx``: every BatchNorm stays a named
``BatchNormalization`` node with its own initializers (``bn1.weight``,
``bn1.running_mean``, ...) instead of being folded into the convolutions, so the
shared tensors of two FedBN site packages can be compared byte for byte
(``architecture.shared_sha256`` in the manifest) and only the BatchNorm entries differ.

The GroupNorm CNN of DP-SGD (``CNNSpec(norm="group")``) writes each GroupNorm as
opset-17 operators (:func:`_group_norm_nodes`) with its affine tensors ``gn1.weight``, ...

Graph: ``image`` (N, 1, size, size), the pixel chain's model input
(:func:`vigil.imaging.to_model_input`) → ``probability`` (N, 1) (sigmoid) for the
binary model; for a multi-class colour model ``image`` (N, 3, size, size)
(:func:`vigil.imaging.stored_colour_input`) → ``probabilities`` (N, classes) (softmax).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ModelArtifactError
from vigil.federation.export import OPSET, PARITY_TOLERANCE
from vigil.federation.image_task import CNNSpec

__all__ = [
    "IMAGE_INPUT",
    "IMAGE_OUTPUT",
    "IMAGE_OUTPUT_CLASSES",
    "PARITY_IMAGES",
    "cnn_to_onnx",
    "image_parity",
    "input_schema",
    "onnx_probabilities",
    "shared_sha256",
]

IMAGE_INPUT = "image"
"""Name of the ONNX input: model inputs (N, 1, size, size)."""
IMAGE_OUTPUT = "probability"
"""Name of the ONNX output: probability of class 1, (N, 1)."""
IMAGE_OUTPUT_CLASSES = "probabilities"
"""Name of the multi-class ONNX output: softmax probabilities, (N, classes)."""
PARITY_IMAGES = 1000
"""Images the parity check scores (issue 15: 1,000)."""
BN_EPS = 1e-5
"""``torch.nn.BatchNorm2d``'s and ``torch.nn.GroupNorm``'s default epsilon."""


def input_schema(spec: CNNSpec) -> dict[str, Any]:
    """Describe the model input the runtime must build (the manifest's ``feature_schema``)."""
    body: dict[str, Any] = {
        "kind": "image", "chain": "vigil.imaging.to_model_input", "size": spec.size,
        "channels": 1, "normalization": "(x - 0.5) / 0.5 of the [0, 1] display value",
        "input_name": IMAGE_INPUT}
    if spec.channels != 1:
        body |= {"chain": "vigil.imaging.stored_colour_input", "channels": spec.channels,
                 "normalization": "(x - 0.5) / 0.5 per channel of the [0, 1] RGB value"}
    if spec.multiclass:
        body |= {"classes": spec.classes, "output_name": IMAGE_OUTPUT_CLASSES}
    digest = hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest()
    return {**body, "version": 1, "sha256": digest}


def shared_sha256(weights: Mapping[str, NDArray[np.floating]], bn: set[str] | frozenset[str]
                  ) -> str:
    """SHA-256 of the non-BatchNorm tensors (names and float32 bytes, sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(k for k in weights if k not in bn):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def cnn_to_onnx(weights: Mapping[str, NDArray[np.floating]], spec: CNNSpec) -> bytes:
    """Write a :class:`~vigil.federation.cnn.SmallCNN` with complete weights as ONNX.

    Parameters
    ----------
    weights : mapping of str to ndarray
        Every entry of the network (:func:`~vigil.federation.model.get_weights`), a
        site's BatchNorm included.
    spec : CNNSpec

    Returns
    -------
    bytes
        A checked ONNX model, ``image`` (N, 1, size, size) → ``probability`` (N, 1); for
        a multi-class spec ``image`` (N, channels, size, size) → ``probabilities`` (N, classes).

    Raises
    ------
    ModelArtifactError
        If an entry is missing.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    group = spec.norm == "group"
    norm_tensors = ("weight", "bias") if group else ("weight", "bias", "running_mean",
                                                     "running_var")
    needed = [f"{layer}{i}.{t}" for i in (1, 2, 3) for layer, ts in
              (("conv", ("weight", "bias")), ("gn" if group else "bn", norm_tensors)) for t in ts]
    needed += ["fc.weight", "fc.bias"]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ModelArtifactError(f"expected complete CNN weights; missing {missing}")
    inits = [numpy_helper.from_array(
        np.asarray(weights[k], dtype=np.float32).reshape(-1, 1, 1) if k.startswith("gn")
        else np.asarray(weights[k], dtype=np.float32), k) for k in needed]
    if group:
        inits += _group_norm_constants()
    nodes = []
    h = IMAGE_INPUT
    for i in (1, 2, 3):
        nodes.append(helper.make_node("Conv", [h, f"conv{i}.weight", f"conv{i}.bias"],
                                      [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes += _group_norm_nodes(f"c{i}", f"gn{i}", f"n{i}") if group else [helper.make_node(
            "BatchNormalization", [f"c{i}", f"bn{i}.weight", f"bn{i}.bias",
                                   f"bn{i}.running_mean", f"bn{i}.running_var"],
            [f"n{i}"], epsilon=BN_EPS)]
        nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"]))
        h = f"r{i}"
        if i < 3:
            nodes.append(helper.make_node("MaxPool", [h], [f"p{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            h = f"p{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [h], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logit"], transB=1),
        helper.make_node("Softmax", ["logit"], [IMAGE_OUTPUT_CLASSES], axis=1)
        if spec.multiclass else helper.make_node("Sigmoid", ["logit"], [IMAGE_OUTPUT]),
    ]
    output = (helper.make_tensor_value_info(IMAGE_OUTPUT_CLASSES, TensorProto.FLOAT,
                                            ["N", spec.classes]) if spec.multiclass else
              helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(
        nodes, "imaging_cnn",
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT,
                                       ["N", spec.channels, spec.size, spec.size])],
        [output],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="vigil")
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def onnx_probabilities(onnx_bytes: bytes, inputs: NDArray[np.float32],
                       spec: CNNSpec | None = None) -> NDArray[np.float64]:
    """Probabilities of :func:`cnn_to_onnx`'s model, onnxruntime on one thread, batches of 512.

    Parameters
    ----------
    onnx_bytes : bytes
    inputs : ndarray of float32, shape (n, size, size) or (n, channels, size, size)
        Model inputs; flat rows (n, channels*size*size) also for a colour ``spec``.
    spec : CNNSpec, optional
        The architecture (default: the binary grayscale model).

    Returns
    -------
    ndarray of float64
        Shape (n,) (probability of class 1) for a binary model, (n, classes) (softmax) for
        a multi-class one.
    """
    import onnxruntime as ort

    spec = spec or CNNSpec()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(inputs, dtype=np.float32).reshape(
        len(inputs), spec.channels, spec.size, spec.size)
    if not len(x):
        return np.zeros((0, spec.classes) if spec.multiclass else 0)
    name = IMAGE_OUTPUT_CLASSES if spec.multiclass else IMAGE_OUTPUT
    out = np.concatenate([session.run([name], {IMAGE_INPUT: x[lo:lo + 512]})[0]
                          for lo in range(0, len(x), 512)]).astype(np.float64)
    return out if spec.multiclass else out[:, 0]


def _group_norm_constants() -> list[Any]:
    from onnx import numpy_helper

    from vigil.federation.image_spec import GROUP_NORM_GROUPS

    return [numpy_helper.from_array(np.array([0, GROUP_NORM_GROUPS, -1], np.int64), "gn.groups"),
            numpy_helper.from_array(np.ones(GROUP_NORM_GROUPS, np.float32), "gn.one"),
            numpy_helper.from_array(np.zeros(GROUP_NORM_GROUPS, np.float32), "gn.zero")]


def _group_norm_nodes(x: str, layer: str, out: str) -> list[Any]:
    """GroupNorm in opset-17 operators (GroupNormalization is opset 18, redefined in 21).

    ``(N, C, H, W)`` → ``(N, G, C/G·H·W)``, InstanceNormalization over the last axis
    (mean and biased variance of each image's group, ε = 1e-5 as ``torch.nn.GroupNorm``;
    Wu & He, ECCV 2018, eq. 1), back to ``(N, C, H, W)``, then ``γ_c · x + β_c``.
    """
    from onnx import helper

    return [
        helper.make_node("Shape", [x], [f"{out}.shape"]),
        helper.make_node("Reshape", [x, "gn.groups"], [f"{out}.grouped"]),
        helper.make_node("InstanceNormalization", [f"{out}.grouped", "gn.one", "gn.zero"],
                         [f"{out}.normed"], epsilon=BN_EPS),
        helper.make_node("Reshape", [f"{out}.normed", f"{out}.shape"], [f"{out}.back"]),
        helper.make_node("Mul", [f"{out}.back", f"{layer}.weight"], [f"{out}.scaled"]),
        helper.make_node("Add", [f"{out}.scaled", f"{layer}.bias"], [out]),
    ]


def image_parity(
    weights: Mapping[str, NDArray[np.floating]], onnx_bytes: bytes, inputs: NDArray[np.float32],
    spec: CNNSpec, *, tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Max |onnxruntime - torch| probability over model inputs; raise if above ``tolerance``.

    Parameters
    ----------
    weights : mapping of str to ndarray
        Complete CNN weights.
    onnx_bytes : bytes
        :func:`cnn_to_onnx` of them.
    inputs : ndarray of float32, shape (n, size, size) or (n, channels, size, size)
    spec : CNNSpec
    tolerance : float, optional

    Returns
    -------
    float
        The maximum absolute difference over every output (every class probability).

    Raises
    ------
    ModelArtifactError
        If it exceeds ``tolerance``.
    """
    from vigil.federation.cnn import SmallCNN
    from vigil.federation.image_task import predict_images
    from vigil.federation.model import set_weights

    net = SmallCNN(spec)
    set_weights(net, weights, strict=False)
    expected = predict_images(net, inputs)
    got = onnx_probabilities(onnx_bytes, inputs, spec).reshape(expected.shape)
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if not diff <= tolerance:
        raise ModelArtifactError(
            f"ONNX parity failed: max |onnxruntime - torch| = {diff:.3g} on {len(got)} images, "
            f"expected <= {tolerance:g}; the package was not written"
        )
    return diff
