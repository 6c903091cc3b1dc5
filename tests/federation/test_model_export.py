import json

import numpy as np
import onnx
import pytest
import torch

from vigil.core.errors import ModelArtifactError
from vigil.core.package import MODEL_CARD, read_package
from vigil.core.signing import generate_keypair
from vigil.features import FEATURE_SCHEMA, build_features
from vigil.federation.export import OPSET, export_package, parity, to_onnx
from vigil.federation.model import SepsisNet, fit_norm, predict_proba
from vigil.federation.training import train_local
from vigil.runtime.scoring import Scorer

torch.set_num_threads(1)

VALIDATION = {"auroc": 0.8, "auprc": 0.1, "utility": 0.3, "threshold": 0.4, "sensitivity": 0.5,
              "ppv": 0.05, "n_patients": 10, "split": "test patients",
              "by_hospital": {"A": {"auroc": 0.79, "auprc": 0.1, "utility": 0.31, "n_patients": 6},
                              "B": {"auroc": 0.81, "auprc": 0.1, "utility": 0.29, "n_patients": 4}}}


@pytest.fixture(scope="module")
def rows(sample):
    return build_features(sample.grid), sample.labels


@pytest.fixture(scope="module")
def trained(rows):
    x, y = rows
    torch.manual_seed(0)
    net = SepsisNet(x.shape[1], hidden=(32, 16), dropout=0.2)
    fit_norm(net, x)
    train_local(net, x[:20000], y[:20000], epochs=1, batch_size=512, lr=1e-3, seed=0)
    return net


def test_onnx_graph_contract(trained):
    model = onnx.load_from_string(to_onnx(trained))
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["probability"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == len(FEATURE_SCHEMA)
    assert model.opset_import[0].version == OPSET >= 17
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Sub", "Div", "Asinh", "Gemm", "Relu", "Gemm", "Relu", "Gemm", "Sigmoid"]


def test_parity_on_1000_real_rows(trained, rows):
    x, _ = rows
    picked = x[np.random.default_rng(0).choice(x.shape[0], 1000, replace=False)]
    assert parity(trained, to_onnx(trained), picked) <= 1e-5


def test_package_reads_back_and_scores_like_torch(trained, rows, tmp_path):
    x, _ = rows
    pkg = export_package(trained, tmp_path / "pkg", name="sepsis-test", version="1.2.3",
                         threshold=0.4, training={"strategy": "centralized",
                                                  "threshold_rule": "the best utility on valid"},
                         validation=VALIDATION, check_rows=x[:1000])
    again = read_package(tmp_path / "pkg", expected_schema_sha256=FEATURE_SCHEMA.sha256)
    m = again.manifest
    assert (m.name, m.version, m.threshold, pkg.signed) == ("sepsis-test", "1.2.3", 0.4, False)
    assert m.feature_schema == json.loads(json.dumps(FEATURE_SCHEMA.to_dict()))
    assert m.model_extra["architecture"] == {"type": "SepsisNet", "n_features": len(FEATURE_SCHEMA),
                                             "hidden": [32, 16], "dropout": 0.2}
    assert m.model_extra["export"]["parity_max_abs_diff"] <= 1e-5
    scored = Scorer(again).predict_proba(x[:5000])
    np.testing.assert_allclose(scored, predict_proba(trained, x[:5000]), atol=1e-5)
    card = (tmp_path / "pkg" / MODEL_CARD).read_text()
    for needle in ("## Intended use", "## Limitations", "Glasgow Coma Scale",
                   "| A | 6 | 0.790 |", "the best utility on valid", "**0.4000**"):
        assert needle in card


def test_signed_package_verifies_with_the_public_key(trained, tmp_path):
    private, public = generate_keypair()
    pkg = export_package(trained, tmp_path / "s", name="n", version="1", threshold=0.5,
                         training={}, validation={}, private_key_pem=private)
    assert pkg.signed
    assert read_package(tmp_path / "s", public_key=public).signed


def test_parity_failure_writes_nothing(trained, tmp_path):
    with pytest.raises(ModelArtifactError, match="ONNX parity failed.*not written"):
        export_package(trained, tmp_path / "bad", name="n", version="1", threshold=0.5,
                       training={}, validation={}, tolerance=-1.0)
    assert not (tmp_path / "bad").exists()


def test_model_of_another_width_is_refused(tmp_path):
    expected = f"expected a model on the {len(FEATURE_SCHEMA)} features.*got 7"
    with pytest.raises(ModelArtifactError, match=expected):
        export_package(SepsisNet(7), tmp_path / "w", name="n", version="1", threshold=0.5,
                       training={}, validation={})
