"""The imaging task on Flower: vigil's ServerApp and ClientApp over real Flower messages.

The fake ``Grid`` of ``test_flower_transport`` hands each message to vigil's ClientApp with
the node's own context (as a SuperNode does); each node holds a scanner site prepared by
:func:`prepare_image_site` (the bundled sample, read through DICOM). The result must be
the in-process :func:`federate_images` run's, ``model.onnx`` byte for byte, and under
FedBN no BatchNorm tensor may appear in any message, either way.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from test_flower_transport import FakeGrid, _run_config, task  # noqa: F401

from vigil.core.errors import ConfigError
from vigil.federation.driver import Plan
from vigil.federation.flower import serverapp
from vigil.federation.flower.imagesite import (
    load_image_site,
    load_task_site,
    prepare_image_site,
    site_task,
)
from vigil.federation.flower.results import load_result
from vigil.federation.flower.runner import imaging_run
from vigil.federation.flower.settings import RunSettings
from vigil.federation.image_run import export_imaging_run, federate_images
from vigil.federation.image_task import CNNSpec, batchnorm_names
from vigil.federation.privacy import DPSettings
from vigil.federation.strategies import make_strategy

SPEC = CNNSpec(widths=(8, 16, 32))
GROUP = CNNSpec(widths=(8, 16, 32), norm="group")
SITES = ("site-a", "site-b")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-sites")
    for name in SITES:
        prepare_image_site(name, root / name, data="sample", seed=0, spec=SPEC)
    return {name: root / name for name in SITES}


def _settings(out: Path, strategy: str = "fedavg", *, spec: CNNSpec = SPEC,
              dp: DPSettings | None = None) -> RunSettings:
    return RunSettings(
        plan=Plan(rounds=2, local_epochs=1, batch_size=32, lr=1e-3, seed=5, time_budget=60.0,
                  weight_decay=1e-4),
        strategy=make_strategy(strategy), sites=len(SITES), task="imaging", image=spec, dp=dp,
        out_dir=str(out), wait=5.0,
    )


class _Run:
    run_id = 1


class RecordingGrid(FakeGrid):
    """Keeps every message in both directions (coordinator → site and site → coordinator)."""

    run = _Run()

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.answered: list[Message] = []

    def pull_messages(self, ids: list[str]) -> list[Message]:
        out = super().pull_messages(ids)
        self.answered += out
        return out


def _flower(image_dirs: dict[str, Path], settings: RunSettings) -> tuple[RecordingGrid, object]:
    grid = RecordingGrid(image_dirs, settings)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=_run_config(settings))
    serverapp.main(grid, context)  # type: ignore[arg-type]
    return grid, load_result(settings.out_dir)


def _in_process(image_dirs: dict[str, Path], settings: RunSettings):  # type: ignore[no-untyped-def]
    sites = [load_image_site(p) for p in image_dirs.values()]
    return federate_images([(s.name, s.train.x, s.train.y) for s in sites],
                           [(s.name, s.valid.x, s.valid.y) for s in sites],
                           strategy=settings.strategy, plan=settings.plan, spec=settings.image,
                           dp=settings.dp)


def _check_inputs(image_dirs: dict[str, Path]) -> np.ndarray:
    return np.concatenate([load_image_site(p).train.x for p in image_dirs.values()])


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "dp"), [(SPEC, None), (GROUP, DPSettings(8.0))],
                         ids=["fedavg", "fedavg-dp"])
def test_imaging_on_flower_writes_the_in_process_model_onnx_byte_for_byte(
    image_dirs, task, tmp_path, spec, dp  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path / "result", spec=spec, dp=dp)
    _, out = _flower(image_dirs, settings)
    flower = imaging_run(settings, out)  # type: ignore[arg-type]
    reference = _in_process(image_dirs, settings)

    assert flower.result.pooled.to_dict() == reference.result.pooled.to_dict()
    assert flower.result.best_round == reference.result.best_round
    check = _check_inputs(image_dirs)
    (a,) = export_imaging_run(flower, tmp_path / "flower", name="m", version="1",
                              check_inputs=check)
    (b,) = export_imaging_run(reference, tmp_path / "local", name="m", version="1",
                              check_inputs=check)
    assert (a.path / "model.onnx").read_bytes() == (b.path / "model.onnx").read_bytes()
    assert a.manifest.training["method"].startswith("federated (Flower")
    privacy = a.manifest.training["differential_privacy"]
    if dp is None:
        assert privacy is None and out.result.privacy == {}  # type: ignore[attr-defined]
    else:  # the accountant added up both rounds in each node's state, as in process
        assert privacy["unit"] == "one image of a site's training data"
        assert privacy["sites"] == b.manifest.training["differential_privacy"]["sites"]
        for site in SITES:
            spent = privacy["sites"][site]
            assert 0 < spent["epsilon"] <= 8.0 and spent["steps"] > 2


@pytest.mark.slow
def test_fedbn_batchnorm_never_crosses_the_wire_and_stays_in_each_nodes_state(
    image_dirs, task, tmp_path  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path / "result", "fedbn")
    grid, out = _flower(image_dirs, settings)
    bn = batchnorm_names(SPEC)
    assert len(bn) == 15  # 3 layers x (weight, bias, running_mean, running_var, num_batches)

    sent = [name for m in grid.pushed for rec in m.content.array_records.values() for name in rec]
    # an update's tensors travel as "weights/NAME" (wire._WEIGHTS); every name is checked
    received = [name.removeprefix("weights/") for m in grid.answered if m.has_content()
                for rec in m.content.array_records.values() for name in rec]
    assert all(m.has_content() for m in grid.answered)  # no site failed
    assert "conv1.weight" in sent and "conv1.weight" in received  # the shared tensors travel
    assert not bn & set(sent), "a BatchNorm tensor was sent to a site"
    assert not bn & set(received), "a BatchNorm tensor came back from a site"
    assert not bn & set(out.result.weights)  # type: ignore[attr-defined]

    # each node kept its own BatchNorm of each round; the two sites' differ
    kept = {}
    for context in grid.contexts.values():
        site = load_task_site(context.node_config["site-dir"], settings)
        site.resume_batchnorm(pickle.loads(  # type: ignore[attr-defined]  # noqa: S301
            context.state.config_records["vigil-site"]["batchnorm"]))
        kept[site.name] = site.kept_batchnorm()  # type: ignore[attr-defined]
    assert all(sorted(k) == [1, 2] for k in kept.values())
    a, b = (kept[s][2]["bn1.running_mean"] for s in SITES)
    assert not np.array_equal(a, b)

    # and the shared weights are the in-process FedBN run's, bit for bit
    reference = _in_process(image_dirs, settings)
    for name, value in reference.result.weights.items():
        np.testing.assert_array_equal(out.result.weights[name], value,  # type: ignore[attr-defined]
                                      err_msg=name)
    # a site prepared for imaging is refused by a sepsis run
    assert site_task(image_dirs["site-a"]) == "imaging"
    sepsis = RunSettings(plan=Plan(rounds=1, time_budget=5.0, min_sites=1),
                         strategy=make_strategy("fedavg"), sites=1)
    with pytest.raises(ConfigError, match="prepared for the sepsis task, got one prepared for "
                                          "imaging"):
        load_task_site(image_dirs["site-a"], sepsis)
    # the coordinator cannot write a FedBN package: the BatchNorm is at the sites
    with pytest.raises(ConfigError, match="stays at the site"):
        export_imaging_run(imaging_run(settings, out), tmp_path / "pkg", name="m",  # type: ignore[arg-type]
                           version="1", check_inputs=_check_inputs(image_dirs))


def test_image_site_preparation_contracts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="either --images DIR"):
        prepare_image_site("site-a", tmp_path / "x")
    with pytest.raises(ConfigError, match="scanner sites"):
        prepare_image_site("hospital-9", tmp_path / "x", data="sample")


def test_run_settings_for_imaging_survive_flowers_run_config_and_refuse_dp_with_fedbn() -> None:
    settings = _settings(Path("out"), spec=GROUP, dp=DPSettings(1.0))
    flat = _run_config(settings)
    assert flat["task"] == "imaging" and flat["image.norm"] == "group"
    assert RunSettings.from_run_config(flat) == settings
    with pytest.raises(ConfigError, match="fedavg or fedprox with --dp-epsilon"):
        _settings(Path("out"), "fedbn", spec=GROUP, dp=DPSettings(1.0))
    with pytest.raises(ConfigError, match="GroupNorm CNN with --dp-epsilon"):
        _settings(Path("out"), spec=SPEC, dp=DPSettings(1.0))
    with pytest.raises(ConfigError, match="expected task sepsis or imaging"):
        RunSettings(plan=Plan(rounds=1, time_budget=5.0, min_sites=1),
                    strategy=make_strategy("fedavg"),
                    sites=1, task="retina")


@pytest.mark.slow
def test_a_site_prepared_from_its_dicom_folder_holds_the_chains_inputs_and_counts_quarantine(
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.sites import site_inputs, write_sites

    sample = load_medmnist("sample", "train")
    parts = {"train": slice(0, 40), "val": slice(40, 60)}
    for split, rows in parts.items():
        write_sites(sample.images[rows], sample.labels[rows], tmp_path / "pacs", split=split)
    folder = tmp_path / "pacs" / "site-b"
    (folder / "train" / "broken.dcm").write_bytes(b"not a DICOM file")
    unlabelled = next((folder / "val").glob("*.dcm"))
    (folder / "val" / "copy.dcm").write_bytes(unlabelled.read_bytes().replace(
        unlabelled.stem.encode(), unlabelled.stem[:-1].encode() + b"9"))  # a UID not in labels

    prepare_image_site("site-b", tmp_path / "site", images=folder)
    site = load_image_site(tmp_path / "site")
    for part, split in (("train", "train"), ("valid", "val")):
        (expected,) = [s for s in site_inputs(sample.images[parts[split]],
                                               sample.labels[parts[split]], split=split, seed=0)
                       if s.site == "site-b"]
        got = getattr(site, part)
        # the same images through the same chain, bit for bit (file order is by UID)
        assert sorted(map(bytes, got.x)) == sorted(map(bytes, expected.inputs))
        assert sorted(got.y.tolist()) == sorted(expected.labels.tolist())
    info = json.loads((tmp_path / "site" / "site.json").read_text())
    assert info["task"] == "imaging" and info["train_images"] == site.train.n
    assert sum(info["quarantined"]["train"].values()) == 1  # the broken file, with its reason
    assert info["quarantined"]["valid"] == {"no label in labels.csv": 1}
    assert "broken" not in json.dumps(info)  # reasons, never a file name


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "imaging"], "expected either --images DIR (the site's DICOM train/ and val/) or "
                            "--data NPZ for an imaging site, got neither"),
    (["--task", "imaging", "--data", "sample", "--name", "site-z"],
     "expected --name one of the scanner sites"),
    (["--task", "retina", "--data", "sample"], "expected --task sepsis or imaging; got 'retina'"),
])
def test_federation_site_refuses_bad_imaging_options_in_one_line(tmp_path, args, message) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from vigil.cli.main import app

    name = [] if "--name" in args else ["--name", "site-a"]
    result = CliRunner(mix_stderr=False).invoke(
        app, ["federation", "site", *args, *name, "--work", str(tmp_path / "w"),
              "--prepare-only"])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0
