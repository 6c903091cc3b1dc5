"""Outcomes for `vigil serve`: onsets -> PhysioNet hourly labels, the file drop, the settings,
and the service feeding them to the monitor's performance checks."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from mon_support import DAY0, site_week
from rt_support import make_package, write_trusted_key

from vigil.core.errors import ConfigError, DataError, FHIRTransportError
from vigil.data import patient_split
from vigil.fhir_adapter.synth import write_synth
from vigil.runtime.models import install_model
from vigil.runtime.monitoring.alarms import load_stats
from vigil.runtime.monitoring.outcomes import (
    NO_SEPSIS,
    FHIRConditionOutcomes,
    OutcomeFeed,
    hourly_labels,
    read_onsets,
)
from vigil.runtime.service import Service
from vigil.runtime.settings import check_serving, load_settings

H = 3600.0


def test_hourly_labels_follow_the_physionet_six_hour_rule():
    # admitted at 0; onset at 10 h: hours ending at or after 4 h are positive
    onset = np.array([10 * H] * 4 + [NO_SEPSIS, np.nan, 10 * H])
    admission = np.array([0.0] * 6 + [np.nan])
    iculos = np.array([3, 4, 5, 30, 5, 5, 5])
    out = hourly_labels(onset, admission, iculos)
    np.testing.assert_array_equal(out[:5], [0, 1, 1, 1, 0])
    assert np.isnan(out[5:]).all()  # outcome or admission unknown
    np.testing.assert_array_equal(hourly_labels(onset[:2], admission[:2], iculos[:2],
                                                lead_hours=0.0), [0, 0])


def physionet_onsets(frame: pd.DataFrame, admission: float) -> pd.DataFrame:
    """An outcome file from PhysioNet labels: onset = first positive hour + 6 h, else empty."""
    first = frame[frame["SepsisLabel"] == 1].groupby("patient_id")["ICULOS"].min()
    ids = frame["patient_id"].unique()
    onset = [(pd.Timestamp(admission, unit="s", tz="UTC")
              + pd.Timedelta(hours=int(first[p]) + 6)).isoformat() if p in first.index else ""
             for p in ids]
    return pd.DataFrame({"patient_id": ids, "onset": onset})


def test_onsets_from_a_csv_give_back_the_physionet_labels_of_every_sample_hour(sample, tmp_path):
    frame = sample.frame.loc[:, ["patient_id", "ICULOS", "SepsisLabel"]]
    admission = DAY0.timestamp()
    path = tmp_path / "outcomes.csv"
    physionet_onsets(frame, admission).to_csv(path, index=False)
    onsets = read_onsets(path)
    assert len(onsets) == frame["patient_id"].nunique()
    feed = OutcomeFeed(lambda: onsets,
                       lambda k: (np.full(k.size, admission), np.zeros(k.size, bool)),
                       delay_hours=24)
    got = feed.labels(frame["patient_id"].to_numpy(object), frame["ICULOS"].to_numpy())
    np.testing.assert_array_equal(got, frame["SepsisLabel"].to_numpy(np.float64))


def test_the_file_drop_keeps_the_earliest_onset_and_refuses_zone_less_times(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text("patient_id,onset\na,2024-03-01T10:00:00Z\na,2024-03-01T08:00:00+01:00\nb,\n")
    onsets = read_onsets(path)
    assert onsets == {"a": pd.Timestamp("2024-03-01T07:00:00Z").timestamp(), "b": NO_SEPSIS}
    path.write_text("patient_id,onset\na,2024-03-01T10:00:00\n")
    with pytest.raises(DataError, match="with a zone.*'2024-03-01T10:00:00' in 1 row"):
        read_onsets(path)
    path.write_text("patient,onset\na,\n")
    with pytest.raises(DataError, match=r"columns patient_id, onset; missing \['patient_id'\]"):
        read_onsets(path)


@pytest.mark.parametrize(("values", "key"), [
    ({"outcomes": {"source": "file"}}, "outcomes.path"),
    ({"outcomes": {"source": "file", "path": "/nonexistent-dir/o.csv"}}, "outcomes.path"),
    ({"outcomes": {"source": "file", "path": "o.xlsx"}}, "outcomes.path"),
    ({"outcomes": {"source": "fhir"}}, "fhir.base_url"),
    ({"outcomes": {"source": "file", "path": "o.csv", "delay_hours": 200}},
     "outcomes.delay_hours"),
])
def test_outcome_settings_are_checked_at_start_naming_the_key(values, key):
    settings = load_settings(None, environ=False, data={"source": "ndjson", "ndjson_dir": ".",
                                                        "writeback": "none"}, **values)
    with pytest.raises(ConfigError) as info:
        check_serving(settings)
    assert info.value.key == key


def test_an_invalid_outcome_source_is_refused_with_its_key():
    with pytest.raises(ConfigError, match="invalid setting 'outcomes.source'") as info:
        load_settings(None, environ=False, outcomes={"source": "email"})
    assert info.value.key == "outcomes.source"


class FakeConditionServer:
    """``FHIRHttp.search`` over a list of Conditions, honouring ``_lastUpdated=ge``."""

    def __init__(self, conditions):
        self.conditions = conditions
        self.queries = []
        self.down = False

    def search(self, path, params):
        self.queries.append((path, list(params)))
        if self.down:
            raise FHIRTransportError("server down", url="http://ehr/fhir/Condition", status=503)
        since = dict(params).get("_lastUpdated", "ge")[2:]
        yield {"resourceType": "Bundle", "entry": [
            {"resource": c} for c in self.conditions if c["meta"]["lastUpdated"] >= since]}


def condition(cid, patient, onset, *, updated="2024-03-02T00:00:00Z", status="confirmed"):
    return {"resourceType": "Condition", "id": cid, "meta": {"lastUpdated": updated},
            "verificationStatus": {"coding": [{"code": status}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008"}]},
            "subject": {"reference": f"Patient/{patient}"}, "onsetDateTime": onset}


def test_fhir_sepsis_conditions_give_onsets_and_discharged_patients_without_one_are_negative():
    server = FakeConditionServer([
        condition("c1", "a", "2024-03-01T10:00:00Z"),
        condition("c2", "b", "2024-03-01T05:00:00Z", status="refuted"),
    ])
    onsets = FHIRConditionOutcomes(server)
    t10 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    assert onsets() == {"a": t10}
    assert server.queries[0] == ("Condition", [("code", "http://snomed.info/sct|91302008")])
    server.conditions.append(condition("c3", "a", "2024-03-01T08:00:00Z",
                                       updated="2024-03-03T00:00:00Z"))
    assert onsets() == {"a": t10 - 2 * H}  # incremental, earliest onset kept
    assert ("_lastUpdated", "ge2024-03-02T00:00:00Z") in server.queries[1][1]
    server.down = True  # an outage keeps what is known and reads from the same point later
    assert onsets() == {"a": t10 - 2 * H}
    server.down = False
    onsets()
    assert ("_lastUpdated", "ge2024-03-03T00:00:00Z") in server.queries[3][1]
    admitted = t10 - 20 * H
    feed = OutcomeFeed(onsets, lambda k: (np.full(k.size, admitted),
                                          np.array([False, True, False])),
                       delay_hours=24, negatives_on_discharge=True)
    # a: septic; b: left the ICU, refuted only -> negative; c: still in the ICU -> unknown
    got = feed.labels(np.array(["a", "b", "c"], dtype=object), np.array([13, 13, 13]))
    np.testing.assert_array_equal(got[:2], [1.0, 0.0])
    assert np.isnan(got[2])



def test_a_later_version_of_a_sepsis_condition_replaces_the_earlier_one():
    server = FakeConditionServer([condition("c1", "a", "2024-03-01T10:00:00Z"),
                                  condition("c2", "b", "2024-03-01T04:00:00Z")])
    onsets = FHIRConditionOutcomes(server)
    t10 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    assert onsets() == {"a": t10, "b": t10 - 6 * H}
    server.conditions = [  # review: a's diagnosis refuted, b's onset corrected to later
        condition("c1", "a", "2024-03-01T10:00:00Z", updated="2024-03-04T00:30:00+01:00",
                  status="refuted"),
        condition("c2", "b", "2024-03-01T07:00:00Z", updated="2024-03-04T00:00:00Z"),
    ]
    assert onsets() == {"b": t10 - 3 * H}
    onsets()
    # the newest stamp is the latest time (00:00Z), not the largest text (00:30+01:00 = 23:30Z)
    assert ("_lastUpdated", "ge2024-03-04T00:00:00Z") in server.queries[-1][1]

def test_serve_feeds_the_file_drop_outcomes_to_the_performance_checks(sample, tmp_path):
    """A real Service (NDJSON source, installed model) with ``[outcomes] source = "file"``."""
    test = np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))
    frame = sample.select(test).frame
    sizes = frame.groupby("patient_id").size()
    septic = frame.groupby("patient_id")["SepsisLabel"].max()
    first = frame[frame["SepsisLabel"] == 1].groupby("patient_id")["ICULOS"].min()
    early = first[first <= 14].index[:3]
    quiet = septic[(septic == 0) & (sizes >= 20)].index[:5]
    chosen = frame[frame["patient_id"].isin(early.union(quiet))]
    write_synth(chosen, tmp_path / "synth")
    site_week(tmp_path / "synth", tmp_path / "site", days=1)
    make_package(tmp_path / "pkg")

    import orjson

    admissions = {}
    for line in (tmp_path / "site" / "Encounter.ndjson").read_bytes().splitlines():
        e = orjson.loads(line)
        admissions[e["subject"]["reference"].split("/")[1]] = pd.Timestamp(
            e["location"][0]["period"]["start"]).timestamp()
    rows = []
    for pid in chosen["patient_id"].unique():
        onset = ""
        if pid in first.index:
            onset = (pd.Timestamp(admissions[pid], unit="s", tz="UTC")
                     + pd.Timedelta(hours=int(first[pid]) + 6)).isoformat()
        rows.append((pid, onset))
    pd.DataFrame(rows, columns=["patient_id", "onset"]).to_parquet(tmp_path / "outcomes.parquet")

    settings = load_settings(
        None, environ=False,
        data={"source": "ndjson", "ndjson_dir": str(tmp_path / "site"), "writeback": "none"},
        store={"url": f"sqlite:///{tmp_path / 'state.db'}"},
        models={"dir": str(tmp_path / "models"), "public_key": str(write_trusted_key(tmp_path))},
        ops={"enabled": False},
        scheduler={"backfill_ticks": 0},  # one cycle an hour, the quarters between not scored
        outcomes={"source": "file", "path": str(tmp_path / "outcomes.parquet"),
                  "delay_hours": 2},
    )
    check_serving(settings)
    from vigil.runtime.sources import open_source

    service = Service(settings, source=open_source(settings), sink=None)
    try:
        install_model(service.store, tmp_path / "pkg", models_dir=tmp_path / "models",
                      public_key=settings.models.trusted_key())
        for hour in range(1, 31):  # one cycle an hour: the monitor judges labels hourly
            assert service.run_cycle(DAY0 + timedelta(hours=hour, minutes=1)).ok
        stats = pd.DataFrame(load_stats(service.store.conn),
                             columns=["tick", "kind", "variable", "statistic", "value"])
        labelled = stats[stats["statistic"] == "labelled_hours"]["value"]
        metrics = service.monitor.performance.metrics()
        # the hours the monitor labelled carry the PhysioNet labels of the same hours
        scores = service.store.scores_frame(role="active")
    finally:
        service.close()
    # the monitor labelled every hour first scored at least delay + 1 h before the last cycle
    last = (DAY0 + timedelta(hours=30)).timestamp()
    first_score = scores.groupby(["patient_key", "iculos"], as_index=False)["tick"].min()
    due = first_score[first_score["tick"] <= last - 3 * H]
    feed = OutcomeFeed(lambda: read_onsets(tmp_path / "outcomes.parquet"),
                       lambda k: (np.array([admissions[x] for x in k]), np.zeros(k.size, bool)),
                       delay_hours=2)
    y = feed.labels(due["patient_key"].to_numpy(object), due["iculos"].to_numpy())
    assert (metrics.n, metrics.events) == (len(due), int(y.sum()))
    assert labelled.max() == metrics.n > 50 and metrics.events > 0
    # ... with the PhysioNet labels of the same hours (where the data has the hour)
    truth = frame.set_index(["patient_id", "ICULOS"])["SepsisLabel"]
    expected = truth.reindex(pd.MultiIndex.from_arrays(
        [due["patient_key"], due["iculos"]])).to_numpy()
    known = ~np.isnan(expected)
    assert known.sum() > 50
    np.testing.assert_array_equal(y[known], expected[known])
