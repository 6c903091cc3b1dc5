"""`read_table`: the one reader of tables named on the command line."""

import pandas as pd
import pytest

from vigil.cli._common import read_table
from vigil.core.errors import DataError


def test_reads_parquet_and_csv_with_alternative_columns(tmp_path):
    frame = pd.DataFrame({"patient_id": ["p1", "p2"], "iculos": [3, 4], "probability": [0.1, 0.9]})
    frame.to_parquet(tmp_path / "s.parquet")
    frame.to_csv(tmp_path / "s.txt", index=False)
    columns = ("patient_id", ("ICULOS", "iculos"), "probability")
    got = read_table(tmp_path / "s.parquet", "--scores", what="scores", columns=columns)
    pd.testing.assert_frame_equal(got, frame)
    # with csv, any suffix but .parquet is CSV
    again = read_table(tmp_path / "s.txt", "--scores", what="scores", columns=columns, csv=True)
    pd.testing.assert_frame_equal(again, frame)
    with pytest.raises(DataError, match=r"^expected --scores to be scores with columns "
                                        r"patient_id, ICULOS or iculos, probability, got "
                                        r"s.txt: ArrowInvalid$"):
        read_table(tmp_path / "s.txt", "--scores", what="scores", columns=columns)
    with pytest.raises(DataError, match=r"got s.parquet without label, known_at$"):
        read_table(tmp_path / "s.parquet", "--labels", what="labels",
                   columns=("patient_id", "label", "known_at"))


def test_an_empty_or_undecodable_csv_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin.csv").write_bytes(b"study_key\n\xff\xfe\x00\x81")
    for name in ("empty.csv", "latin.csv"):
        with pytest.raises(DataError, match=f"expected --labels to be labels, got {name}: "):
            read_table(tmp_path / name, "--labels", what="labels", csv=True)
