"""Fault injection against real ``vigil`` processes: tampered packages, leaked secrets, ops auth.

As a hospital IT reviewer would: every case runs the installed ``vigil`` command
and looks only at what an operator sees (exit code, stderr, stdout, files).
Refusals are one line on stderr with exit code 2, never a traceback.
"""

import json
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rt_support
from rt_support import (  # noqa: E402
    TEST_PRIVATE_KEY,
    UNSIGNED,
    free_port,
    http_get,
    make_package,
    make_record,
    move_to_now,
    ndjson_site_toml,
    wait_ready,
    write_trusted_key,
)

from vigil.core.package import MANIFEST, SIGNATURE, file_sha256  # noqa: E402
from vigil.core.signing import generate_keypair, sign  # noqa: E402
from vigil.data import patient_split  # noqa: E402
from vigil.fhir_adapter.synth import write_synth  # noqa: E402
from vigil.runtime.models import install_model  # noqa: E402
from vigil.runtime.store import StateStore  # noqa: E402

pytestmark = pytest.mark.slow  # real processes: several seconds each to start
VIGIL = Path(sys.executable).with_name("vigil")
OTHER_PRIVATE, OTHER_PUBLIC = generate_keypair()


def _env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}


def _run_all(commands, *, envs=None, timeout=300):
    """Run commands concurrently (each with its extra environment); return them in order."""
    envs = envs or [{}] * len(commands)
    procs = [subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**_env(), **env})
             for cmd, env in zip(commands, envs, strict=True)]
    out = []
    for cmd, proc in zip(commands, procs, strict=True):
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        out.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return out


def _refused(done, fragment):
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2, (done.args, done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr[-2000:]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


# -- tampered packages -------------------------------------------------------------------------


def _relist(pkg: Path, extra: dict[str, str], *, key: bytes = TEST_PRIVATE_KEY) -> None:
    """Add names to the manifest's file list and re-sign it (so only the names are wrong)."""
    body = json.loads((pkg / MANIFEST).read_text())
    body["files"] = {**body["files"], **extra}
    raw = json.dumps(body, indent=2, sort_keys=True).encode()
    (pkg / MANIFEST).write_bytes(raw)
    (pkg / SIGNATURE).write_bytes(sign(raw, key))


def _changed(pkg: Path, outside: Path) -> None:
    data = bytearray((pkg / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (pkg / "model.onnx").write_bytes(bytes(data))


def _dotdot(pkg: Path, outside: Path) -> None:
    _relist(pkg, {"../outside.bin": file_sha256(outside)})


def _absolute(pkg: Path, outside: Path) -> None:
    _relist(pkg, {str(outside): file_sha256(outside)})


def _symlink(pkg: Path, outside: Path) -> None:
    (pkg / "extra.bin").symlink_to(outside)
    _relist(pkg, {"extra.bin": file_sha256(outside)})


def _unsigned(pkg: Path, outside: Path) -> None:
    (pkg / SIGNATURE).unlink()


def _wrong_key(pkg: Path, outside: Path) -> None:
    (pkg / SIGNATURE).write_bytes(sign((pkg / MANIFEST).read_bytes(), OTHER_PRIVATE))


TAMPERS = {
    "a file changed": (_changed, "model.onnx has changed"),
    "a manifest with ../x": (_dotdot, "expected a plain file name"),
    "an absolute path": (_absolute, "expected a plain file name"),
    "a symlink out": (_symlink, "extra.bin is a symbolic link"),
    "unsigned": (_unsigned, "has no manifest.sig"),
    "signed with another key": (_wrong_key, "signature does not match"),
}


def _site(root: Path) -> Path:
    (root / "export").mkdir(parents=True, exist_ok=True)
    config = root / "site.toml"
    config.write_text(ndjson_site_toml(root, site_id="fault-site", port=None)
                      + f'public_key = "{write_trusted_key(root)}"\n')
    return config


@pytest.fixture(scope="module")
def good_package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("good") / "pkg").path


def test_model_install_refuses_every_tampered_package(tmp_path, good_package):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"a file outside the package")
    cases = []
    for i, (tamper, fragment) in enumerate(TAMPERS.values()):
        root = tmp_path / f"case{i}"
        shutil.copytree(good_package, root / "pkg")
        tamper(root / "pkg", outside)
        cases.append((root, fragment))
    done = _run_all([[VIGIL, "model", "install", root / "pkg", "--config", _site(root)]
                     for root, _ in cases])
    for (root, fragment), result in zip(cases, done, strict=True):
        _refused(result, fragment)
        with StateStore.open(f"sqlite:///{root / 'state.db'}") as store:
            assert store.models() == []
        assert not (root / "models").exists() or not any((root / "models").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["outside.bin", *(f"case{i}" for i in range(len(TAMPERS)))])  # nothing written outside


def test_serve_refuses_a_package_tampered_after_install(tmp_path, good_package):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"a file outside the package")
    cases = []
    for i, (name, (tamper, fragment)) in enumerate(TAMPERS.items()):
        root = tmp_path / f"case{i}"
        config = _site(root)
        with StateStore.open(f"sqlite:///{root / 'state.db'}") as store:
            row = install_model(store, good_package, models_dir=root / "models",
                                public_key=write_trusted_key(root))
        tamper(Path(row.path), outside)
        cases.append((config, fragment, name))
    done = _run_all([[VIGIL, "serve", "--config", config, "--once"] for config, _, _ in cases])
    for (_, fragment, _), result in zip(cases, done, strict=True):
        _refused(result, fragment)


def test_the_unsigned_opt_out_is_explicit_and_loud(tmp_path):
    make_package(tmp_path / "pkg", private_key=UNSIGNED)
    trusted = _site(tmp_path / "trusted")
    opted_out = tmp_path / "opt-out"
    opted_out.mkdir()
    (opted_out / "site.toml").write_text(trusted.read_text().replace(
        f'public_key = "{write_trusted_key(tmp_path / "trusted")}"', "allow_unsigned = true"
    ).replace(str(tmp_path / "trusted"), str(opted_out)))
    refused, accepted = _run_all([
        [VIGIL, "model", "install", tmp_path / "pkg", "--config", trusted],
        [VIGIL, "model", "install", tmp_path / "pkg", "--config", opted_out / "site.toml",
         "--json"],
    ])
    _refused(refused, "has no manifest.sig")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["role"] == "active"
    assert "WARNING" in accepted.stderr and "signature verification is OFF" in accepted.stderr


def test_serve_refuses_a_calibration_record_changed_after_install(tmp_path, good_package):
    from vigil.core.package import read_package

    config = _site(tmp_path)
    record = make_record(read_package(good_package), tmp_path / "calibration.json")
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        row = install_model(store, good_package, models_dir=tmp_path / "models",
                            public_key=write_trusted_key(tmp_path), calibration=record)
    installed = Path(row.calibration)
    installed.write_text(installed.read_text().replace('"threshold": 0.2', '"threshold": 0.9'))
    (done,) = _run_all([[VIGIL, "serve", "--config", config, "--once"]])
    _refused(done, "has changed since it was installed")


# -- secrets -----------------------------------------------------------------------------------

MARK = "SeCrEtMaRk"


def _secret_configs(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """Broken configs with secrets in the file and in the environment."""
    base = _site(root).read_text()
    fhir = (f'[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\nauth = "bearer"\n'
            f'bearer_token = "{MARK}-file-token"\n')
    broken = {
        "bad port": (fhir, {"VIGIL_OPS__PORT": f"{MARK}-port"}),
        "smart without a section": (fhir.replace('"bearer"', '"smart"'),
                                    {"VIGIL_FHIR__BEARER_TOKEN": f"{MARK}-env-token"}),
        "misspelt token key": (fhir + f'bearer = "{MARK}-misspelt"\n',
                               {"VIGIL_OPS__TOKEN": f"{MARK}-ops-token-0123456789abcdef"}),
        "section as a string": ("", {"VIGIL_FHIR": f'{{"bearer_token": "{MARK}-json"'}),
        "short ops token": (fhir, {"VIGIL_OPS__TOKEN": f"{MARK}-short"}),
        "token in a url field": (fhir.replace("http://127.0.0.1:9/fhir", f"{MARK}-url"), {}),
        "smart key inline": (fhir.replace('"bearer"', '"smart"') + (
            f'[fhir.smart]\nclient_id = "c"\nkey_id = "k"\nprivate_key_pem = "{MARK}-pem"\n'
            f'private_key_path = "/nope.pem"\n'), {}),
    }
    out = []
    for i, (text, env) in enumerate(broken.values()):
        path = root / f"broken{i}.toml"
        path.write_text(base.replace("[ops]\nenabled = false\n", "") + text)
        out.append((path, env))
    return out


def test_no_secret_is_printed_for_a_broken_config(tmp_path):
    configs = _secret_configs(tmp_path)
    commands, envs = [], []
    for path, env in configs:
        for cmd in (["serve", "--config", path, "--once"],
                    ["model", "install", tmp_path / "nope", "--config", path, "--json"],
                    ["model", "list", "--config", path, "--json"]):
            commands.append([VIGIL, *cmd])
            envs.append(env)
    results = []
    for i in range(0, len(commands), 7):
        results += _run_all(commands[i:i + 7], envs=envs[i:i + 7])
    for done in results:
        assert done.returncode == 2, (done.args, done.stderr[-1000:])
        assert MARK not in done.stdout and MARK not in done.stderr, (done.args, done.stderr)
        assert "Traceback" not in done.stderr
        assert len([x for x in done.stderr.splitlines() if x.strip()]) == 1, done.stderr


# -- the ops endpoint --------------------------------------------------------------------------


def test_ops_endpoint_needs_the_token_and_no_secret_reaches_a_log(tmp_path, sample):
    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:3])
    ids = [str(p) for p in table.grid.patient_ids]
    port = free_port()
    token = f"{MARK}-ops-0123456789abcdef0123"
    config = _site(tmp_path).read_text().replace("[ops]\nenabled = false\n",
                                                 f"[ops]\nport = {port}\n")
    config += (f'[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\nauth = "bearer"\n'
               f'bearer_token = "{MARK}-fhir-token"\n')
    (tmp_path / "site.toml").write_text(config)
    write_synth(table.frame, tmp_path / "export")
    move_to_now(tmp_path / "export", datetime.now(UTC))  # 2020 values: degraded, never ready
    make_package(tmp_path / "pkg")
    (install,) = _run_all([[VIGIL, "model", "install", tmp_path / "pkg", "--config",
                            tmp_path / "site.toml", "--json"]])
    assert install.returncode == 0 and MARK not in install.stdout + install.stderr
    env = {**_env(), "VIGIL_OPS__TOKEN": token}  # one secret in the environment
    proc = subprocess.Popen([str(VIGIL), "serve", "--config", str(tmp_path / "site.toml"), "-v"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_ready(base, proc, timeout=120)
        assert ready is not None and ready[0] == 200, ready
        scored = [i for i in ids if http_get(f"{base}/patients/{i}/scores", token)[0] == 200]
        assert scored, "no patient has scores with the right token"
        for who in (None, "wrong", token[:-1], token + "0"):
            status, body = http_get(f"{base}/patients/{scored[0]}/scores", who)
            assert status == 401 and "probability" not in body
        for path in ("/healthz", "/readyz", "/metrics"):
            status, body = http_get(base + path)
            assert status == 200 and not any(i in body for i in ids), path
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert MARK not in out and MARK not in err
    for path in tmp_path.rglob("*"):  # the store, the write-back, the installed model
        if path.is_file() and path.name != "site.toml":
            assert MARK.encode() not in path.read_bytes(), path
