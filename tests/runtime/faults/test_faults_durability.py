"""Fault injection against real processes: durability of write-back and of the state store.

What a hospital IT reviewer does to ``vigil serve`` and ``vigil replay``: kill -9 in the
middle of an append to the write-back file, fill the disk under it (a small tmpfs),
start a second instance on the same store, damage or write-protect the store, and
hand it broken settings. Each scenario runs the real entry points in subprocesses and
compares what is on disk with an uninterrupted reference run: nothing lost, nothing
duplicated, and every operator mistake is one line on stderr with exit code 2.
"""

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rt_support, beside test_rt_*
from rt_support import make_package, move_to_now, write_trusted_key  # noqa: E402

from vigil.data import patient_split  # noqa: E402
from vigil.fhir_adapter.synth import write_synth  # noqa: E402
from vigil.runtime.store import StateStore  # noqa: E402

pytestmark = pytest.mark.slow  # each case runs vigil in subprocesses (seconds apiece)

VIGIL = Path(sys.executable).with_name("vigil")

# Replays two hours of ticks with NDJSON write-back, two RiskAssessments per append. With
# KILL_AT >= 0 the process writes all but 5 bytes of its KILL_AT-th append to RiskAssessment.ndjson
# and SIGKILLs itself: a torn last line, as a power cut leaves it.
DRIVER = textwrap.dedent('''
    import json, os, signal, sys
    from datetime import timedelta
    from pathlib import Path
    from vigil.fhir_adapter.writers import NDJSONWriter
    from vigil.runtime.cycle import CycleRunner
    from vigil.runtime.models import LiveModels, live_model
    from vigil.runtime.recorded import load_ndjson
    from vigil.runtime.replay import replay, replay_ticks
    from vigil.runtime.settings import AlertSettings, ScoringSettings
    from vigil.runtime.sources import FHIRSink
    from vigil.runtime.store import StateStore

    ndjson, db, pkg, out, kill_at = sys.argv[1:6]
    real_write, appends = os.write, [0]

    def torn_write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("RiskAssessment.ndjson"):
            if appends[0] == int(kill_at):
                real_write(fd, bytes(data[: len(data) - 5]))  # all but the end
                os.kill(os.getpid(), signal.SIGKILL)
            appends[0] += 1
        return real_write(fd, data)

    os.write = torn_write
    source, _ = load_ndjson(ndjson, stack_admissions=True)
    last = max(stay.icu_admission for stay, _ in source.stays)
    ticks = replay_ticks(last + timedelta(hours=1), last + timedelta(hours=3))
    live = LiveModels(live_model(pkg), None)
    Path(out).mkdir(parents=True, exist_ok=True)
    runner = CycleRunner(
        store=StateStore.open(f"sqlite:///{db}", lock="cycles"), source=source,
        sink=FHIRSink(NDJSONWriter(Path(out)), site="faults", deployment="test"),
        models=lambda: live, scoring=ScoringSettings(), alerts=AlertSettings(suppression_hours=1.0),
        writeback_batch=2,
    )
    result = replay(runner, ticks)
    print(json.dumps({"statuses": [r.status for r in result.results], "skipped": result.skipped}))
''')


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample):
    root = tmp_path_factory.mktemp("faults")
    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:6])
    write_synth(table.frame, root / "ndjson")
    # `serve` reads a current copy: on the synthetic 2020 values its cycles would be degraded
    # (empty inputs); the driver's replays run on the data's own clock
    shutil.copytree(root / "ndjson", root / "ndjson-now")
    move_to_now(root / "ndjson-now", datetime.now(UTC))
    (root / "driver.py").write_text(DRIVER)
    make_package(root / "pkg")
    return root


def drive(root, name, out, *, kill_at=-1):
    return subprocess.run(
        [sys.executable, root / "driver.py", root / "ndjson", root / f"{name}.db", root / "pkg",
         out, str(kill_at)], capture_output=True, text=True, timeout=300,
    )


def written(out):
    """Every line of the write-back file, parsed (fails on a torn or malformed line)."""
    return [json.loads(line) for line in (Path(out) / "RiskAssessment.ndjson").read_text()
            .splitlines()]


def pending(root, name):
    with StateStore.open(f"sqlite:///{root / f'{name}.db'}", read_only=True) as store:
        return store.pending(), [c.status for c in store.cycles()]


@pytest.fixture(scope="module")
def reference(world):
    done = drive(world, "ref", world / "ref-out")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["statuses"]) == {"ok"}
    resources = {r["id"]: r for r in written(world / "ref-out")}
    assert len(resources) > 40
    return resources


def assert_same_as_reference(resources, reference):
    ids = [r["id"] for r in resources]
    assert len(ids) == len(set(ids))  # nothing duplicated
    assert set(ids) == set(reference)  # nothing lost
    assert all(r == reference[r["id"]] for r in resources)


@contextmanager
def small_tmpfs(path, size):
    """A tmpfs of ``size`` at ``path`` (root only), unmounted on exit; skips if not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the full-disk case is covered by the ENOSPC unit test of NDJSONWriter")
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


@pytest.mark.parametrize("kill_at", [0, 7])
def test_kill_9_inside_an_append_loses_and_duplicates_nothing(world, reference, kill_at):
    out = world / f"torn-{kill_at}"
    killed = drive(world, f"torn-{kill_at}", out, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tail = (out / "RiskAssessment.ndjson").read_bytes()
    assert tail and not tail.endswith(b"\n")  # the kill left a torn last line
    again = drive(world, f"torn-{kill_at}", out)
    assert again.returncode == 0, again.stderr
    assert_same_as_reference(written(out), reference)
    queued, statuses = pending(world, f"torn-{kill_at}")
    assert queued == [] and "writeback_interrupted" in statuses
    quarantined = (out / "RiskAssessment.ndjson.quarantine").read_bytes().splitlines()
    assert len(quarantined) == 1 and quarantined[0] in tail  # the torn fragment, kept aside


def test_a_full_disk_queues_write_back_and_the_next_run_catches_up(world, reference, tmp_path):
    with small_tmpfs(tmp_path / "disk", "16k") as disk:
        out = disk / "ra"
        full = drive(world, "full", out)
        assert full.returncode == 0, full.stderr
        statuses = json.loads(full.stdout)["statuses"]
        assert "writeback_failed" in statuses  # the disk filled during the replay
        queued, _ = pending(world, "full")
        on_disk = written(out)  # only complete lines: failed appends were cut back
        assert queued and len(on_disk) + len(queued) >= len(reference)
        assert {r["id"] for r in on_disk}.isdisjoint(rid for rid, _ in queued)
        subprocess.run(["mount", "-o", "remount,size=4m", disk], check=True)
        again = drive(world, "full", out)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["skipped"] == len(statuses)  # nothing scored twice
        assert_same_as_reference(written(out), reference)
        assert pending(world, "full")[0] == []
        assert not (out / "RiskAssessment.ndjson.quarantine").exists()


def test_a_full_disk_under_the_store_fails_the_cycle_cleanly_and_the_next_catches_up(
        world, tmp_path):
    # room for the store as installed (about 160 kB with the imaging tables, and its
    # rollback journal), not for a cycle's observations
    with small_tmpfs(tmp_path / "disk", "260k") as disk:
        config = site_toml(world, tmp_path / "site.toml", store=disk / "state.db")
        assert vigil("model", "install", world / "pkg", "--config", config).returncode == 0
        full = vigil("serve", "--config", config, "--once")
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
        record = json.loads(full.stdout)
        assert record["status"] == "failed" and "disk is full" in record["reason"]
        subprocess.run(["mount", "-o", "remount,size=8m", disk], check=True)
        again = vigil("serve", "--config", config, "--once")
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads(again.stdout)["status"] == "ok"
        with StateStore.open(f"sqlite:///{disk / 'state.db'}", read_only=True) as store:
            assert store.cycles()[-1].status == "ok" and store.pending() == []
            scored = store.cycles()[-1].counts["scored"]
        ids = [r["id"] for r in written(tmp_path / "writeback")]
        assert len(ids) == len(set(ids)) == scored == 6


# -- vigil serve and the other commands, as an operator runs them -------------------------------


def site_toml(world, path, *, store=None, store_url=None, extra=""):
    path.write_text(textwrap.dedent(f"""
        {extra}
        [data]
        source = "ndjson"
        ndjson_dir = "{world / 'ndjson-now'}"
        writeback = "ndjson"
        writeback_dir = "{path.parent / 'writeback'}"
        [store]
        url = "{store_url or f"sqlite:///{store or path.parent / 'state.db'}"}"
        [models]
        dir = "{path.parent / 'models'}"
        public_key = "{write_trusted_key(path.parent)}"
        [ops]
        enabled = false
    """))
    return path


def vigil(*args, timeout=120):
    return subprocess.run([VIGIL, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_exit_2(done, match):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and match in lines[0], lines[0]


@pytest.fixture()
def site(world, tmp_path):
    config = site_toml(world, tmp_path / "site.toml")
    done = vigil("model", "install", world / "pkg", "--config", config)
    assert done.returncode == 0, done.stderr
    return config


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_second_instance_on_the_same_store_refuses_to_start(world, site, stop):
    first = subprocess.Popen([VIGIL, "serve", "--config", site], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # serving once its lock is held and its first cycle is due
            if "serving:" in line:
                break
        else:
            pytest.fail(f"vigil serve exited with {first.wait()}")
        second = vigil("serve", "--config", site, "--once")
        assert_one_line_exit_2(second, "is in use by another vigil process")
        replay = vigil("replay", "--model", world / "pkg", "--ndjson", world / "ndjson",
                       "--out", site.parent / "r.parquet", "--db", site.parent / "state.db")
        assert_one_line_exit_2(replay, "is in use by another vigil process")
        # a promotion is not a second runner: it goes through while the service runs
        promoted = vigil("model", "promote", "1.0.0", "--config", site)
        assert promoted.returncode == 0, promoted.stderr
    finally:
        first.send_signal(stop)
        first.wait(timeout=60)
        first.stderr.close()
    # the lock went with the process, however it ended: no stale lock to clean up
    again = vigil("serve", "--config", site, "--once")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] in ("ok", "skipped")


def test_a_damaged_store_is_one_line_and_exit_2(world, site):
    db = site.parent / "state.db"
    assert vigil("serve", "--config", site, "--once").returncode == 0
    data = bytearray(db.read_bytes())
    data[0:16] = b"garbage garbage!"  # the header of the database file
    db.write_bytes(bytes(data))
    for args in (("serve", "--config", site, "--once"), ("model", "promote", "1.0.0",
                                                          "--config", site),
                 ("model", "install", world / "pkg", "--config", site)):
        assert_one_line_exit_2(vigil(*args), f"state store {db}")
    assert_one_line_exit_2(vigil("monitor", "report", "--db", db, "--out", site.parent / "rep"),
                           "no readable monitoring tables")
    assert_one_line_exit_2(
        vigil("replay", "--model", world / "pkg", "--ndjson", world / "ndjson", "--out",
              site.parent / "r.parquet", "--db", db), f"state store {db}")


def test_a_read_only_store_is_one_line_and_exit_2(world, site, tmp_path):
    assert vigil("serve", "--config", site, "--once").returncode == 0
    with small_tmpfs(tmp_path / "ro", "1m") as ro:
        (ro / "state.db").write_bytes((site.parent / "state.db").read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
        config = site_toml(world, site.parent / "ro.toml", store=ro / "state.db")
        assert_one_line_exit_2(vigil("serve", "--config", config, "--once"), "Read-only")
        assert_one_line_exit_2(vigil("model", "promote", "1.0.0", "--config", config),
                               "cannot use the state store")


BAD = {
    "missing file": (None, "expected a settings file"),
    "not TOML": ("x = [", "is not valid TOML"),
    "unknown key": ('colour = "red"', "invalid setting 'colour'"),
    "URL without a host": ('[fhir]\nbase_url = "https:///fhir"', "URL with a host"),
    "URL without a scheme": ('[fhir]\nbase_url = "ehr.example.org/fhir"', "URL with a host"),
    "missing public key": ('[models]\npublic_key = "/nonexistent/site.pem"',
                           "models.public_key: expected the Ed25519 public key"),
}
BAD_STORES = {
    "not a sqlite URL": ("postgresql://db/vigil", "sqlite:///PATH"),
    "store path below a file": ("sqlite:////etc/hostname/state.db", "cannot use the state store"),
}


@pytest.mark.parametrize("case", sorted(BAD) + sorted(BAD_STORES))
def test_bad_settings_are_one_line_and_exit_2(world, tmp_path, case):
    text, match = BAD.get(case, (None, None))
    config = tmp_path / "site.toml"
    if case in BAD_STORES:
        store_url, match = BAD_STORES[case]
        site_toml(world, config, store_url=store_url)
    elif text is not None:
        base = site_toml(world, tmp_path / "base.toml").read_text()
        # a section given twice is invalid TOML: override by putting the case's keys first
        section = text.split("\n", 1)[0] if text.startswith("[") else None
        if section is not None and section in base:
            keys = [line.split("=")[0].strip() for line in text.splitlines()[1:]]
            base = "\n".join(line for line in base.splitlines()
                             if line.split("=")[0].strip() not in keys)
            base = base.replace(section, text, 1)
        else:
            base = text + "\n" + base
        config.write_text(base)
    for command in (("serve", "--config", config, "--once"),
                    ("model", "install", world / "pkg", "--config", config)):
        assert_one_line_exit_2(vigil(*command), match)


def test_bad_replay_inputs_are_one_line_and_a_bad_census_line_is_quarantined(world, tmp_path):
    broken = tmp_path / "ndjson"
    broken.mkdir()
    for f in (world / "ndjson").iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    lines = (broken / "Encounter.ndjson").read_bytes().splitlines(keepends=True)
    (broken / "Encounter.ndjson").write_bytes(b"".join(lines[:2]) + b'{"resourceType": "Enc\n'
                                              + b"".join(lines[2:]))
    base = ("replay", "--model", world / "pkg", "--out", tmp_path / "r.parquet")
    # a malformed census line is quarantined with its file and line, like a malformed
    # Observation (issue 18.7), and the replay goes on with the other stays
    torn = vigil(*base, "--ndjson", broken)
    assert torn.returncode == 0 and "Traceback" not in torn.stderr, torn.stderr[-2000:]
    assert "1 quarantined" in torn.stderr
    assert_one_line_exit_2(vigil(*base, "--fhir-url", "http://:8080/fhir"), "URL with a host")
    assert_one_line_exit_2(vigil(*base, "--ndjson", world / "ndjson", "--public-key",
                                 tmp_path / "none.pem"), "--public-key: expected the Ed25519")
    assert_one_line_exit_2(vigil(*base, "--ndjson", world / "ndjson", "--calibration",
                                 tmp_path / "none.json"), "calibration record")
    assert_one_line_exit_2(vigil(*base, "--ndjson", world / "ndjson", "--go-live-days", "2",
                                 "--no-stack-admissions"), "--go-live-days")
    assert_one_line_exit_2(vigil("model", "promote", "9.9.9", "--config",
                                 site_toml(world, tmp_path / "site.toml")), "9.9.9")



def test_unusable_paths_and_ports_are_one_line_and_exit_2(world, site, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    text = site.read_text()
    below_file = {
        "writeback": site.with_name("wb.toml"),
        "models": site.with_name("models.toml"),
    }
    below_file["writeback"].write_text(text.replace(str(site.parent / "writeback"),
                                                    str(a_file / "writeback")))
    below_file["models"].write_text(text.replace(str(site.parent / "models"),
                                                 str(a_file / "models")))
    assert_one_line_exit_2(vigil("serve", "--config", tmp_path, "--once"),
                           f"Is a directory: {tmp_path}")
    assert_one_line_exit_2(vigil("serve", "--config", below_file["writeback"], "--once"),
                           f"Not a directory: {a_file / 'writeback'}")
    assert_one_line_exit_2(vigil("model", "install", world / "pkg", "--config",
                                 below_file["models"]), "Not a directory")
    assert_one_line_exit_2(vigil("monitor", "report", "--db", site.parent / "state.db", "--out",
                                 a_file / "report"), "Not a directory")
    assert_one_line_exit_2(vigil("replay", "--model", world / "pkg", "--ndjson", world / "ndjson",
                                 "--out", a_file / "scores.parquet"), str(a_file))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ops = site.with_name("ops.toml")
        ops.write_text(text.replace("enabled = false", f"enabled = true\nport = {port}"))
        done = vigil("serve", "--config", ops)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the ops endpoint cannot listen on") and str(port) in last
    # the failed start released the store: the next start runs
    assert vigil("serve", "--config", site, "--once").returncode == 0
