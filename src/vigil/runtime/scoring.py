"""Inference with onnxruntime on a verified model package (no torch)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ModelArtifactError, ScoringError
from vigil.core.package import ModelPackage

__all__ = ["InferenceSession", "Scorer"]


class InferenceSession(Protocol):
    """The part of ``onnxruntime.InferenceSession`` the scorer uses."""

    def run(
        self, output_names: list[str] | None, input_feed: dict[str, NDArray[np.float32]]
    ) -> list[NDArray[np.float32]]:
        """Run the model."""
        ...


class Scorer:
    """Scores feature rows with the model of a package.

    Parameters
    ----------
    package : ModelPackage
        A verified package.
    threads : int, optional
        onnxruntime intra-op threads.
    session : InferenceSession or None, optional
        Injected session (tests); by default an onnxruntime CPU session.
    """

    def __init__(
        self, package: ModelPackage, *, threads: int = 1, session: InferenceSession | None = None
    ) -> None:
        self.package = package
        self.n_features = len(package.manifest.feature_schema.get("names", []))
        if session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(
                    str(package.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise ModelArtifactError(
                    f"onnxruntime could not load the model: {exc}", path=str(package.model_path)
                ) from exc
        self._session = session

    def predict_proba(
        self, features: NDArray[np.float32], *, batch_size: int = 65536
    ) -> NDArray[np.float64]:
        """Probability of the outcome for each row.

        Parameters
        ----------
        features : ndarray of shape (n, n_features)
        batch_size : int, optional
            Rows per onnxruntime call.

        Returns
        -------
        ndarray of shape (n,)
            Probabilities in [0, 1].

        Raises
        ------
        ScoringError
            If the feature width is wrong or the model returns non-probabilities.
        """
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ScoringError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        m = self.package.manifest
        out = np.empty(x.shape[0], dtype=np.float64)
        for lo in range(0, x.shape[0], batch_size):
            (res,) = self._session.run([m.output_name], {m.input_name: x[lo : lo + batch_size]})
            out[lo : lo + batch_size] = np.asarray(res, dtype=np.float64).reshape(-1)
        if x.shape[0] and not (np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1):
            raise ScoringError("the model returned values outside [0, 1] or not finite")
        return out
