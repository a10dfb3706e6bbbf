"""ACN session files: what is read, what is skipped and counted, what is an error (file:line)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from forecaster.kernels.sessions import asap_power
from forecaster.sessions import SessionFileError, read_sessions, reconstruct_power
from tests.support import forecaster_reference as ref

HEADER = (
    "arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,"
    "session_id,estimated_departure,claimed\n"
)
GOOD = (
    "2019-05-01 08:00:00-07:00,2019-05-01 17:00:00-07:00,20.0,10.0,CA-1,s1,"
    "2019-05-01 15:00:00-07:00,True\n"
)
DATA = Path(__file__).resolve().parents[2] / "data" / "acn-caltech"


def write(tmp_path: Path, body: str, name: str = "s.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + body, encoding="utf-8")
    return path


def test_reads_plain_and_gzip_files(tmp_path: Path) -> None:
    plain = write(tmp_path, GOOD)
    packed = tmp_path / "s.csv.gz"
    packed.write_bytes(gzip.compress((HEADER + GOOD).encode()))
    records, skipped = read_sessions([plain, packed])
    assert records.count == 2
    assert skipped.total == 0
    assert records.delivered_wh.tolist() == [10_000.0, 10_000.0]
    assert records.departure[0] - records.arrival[0] == 9 * 3600


def test_unclaimed_sessions_have_no_driver_input(tmp_path: Path) -> None:
    row = GOOD.replace(",True", ",False")
    records, _ = read_sessions([write(tmp_path, row)])
    assert np.isnan(records.requested_wh[0])
    assert np.isnan(records.stated_departure[0])


def test_the_rows_the_protocol_drops_are_counted_with_their_lines(tmp_path: Path) -> None:
    backwards = GOOD.replace("2019-05-01 17:00:00", "2019-05-01 07:00:00")
    empty = GOOD.replace(",10.0,", ",0,")
    path = write(tmp_path, GOOD + backwards + empty + backwards)
    records, skipped = read_sessions([path])
    assert records.count == 1
    assert skipped.counts == {"departure_not_after_arrival": 2, "no_energy_delivered": 1}
    assert skipped.examples["departure_not_after_arrival"] == [f"{path}:3", f"{path}:5"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (GOOD.replace("2019-05-01 08:00:00-07:00", "yesterday"), r":3: arrival 'yesterday'"),
        (GOOD.replace("08:00:00-07:00", "08:00:00"), "has no UTC offset"),
        (GOOD.replace(",10.0,", ",-3,"), r":3: delivered_energy \(kWh\) '-3' must be"),
        (GOOD.replace(",10.0,", ",5000,"), "'5000' kWh is absurd"),
        (GOOD.replace(",10.0,", ",ten,"), "'ten' is not a number"),
        (GOOD.replace(",True", ",True,extra"), "wrong number of fields"),
    ],
)
def test_bad_rows_name_file_line_and_value(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path, GOOD + row)
    with pytest.raises(SessionFileError, match=message) as info:
        read_sessions([path])
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:")


def test_missing_columns_and_empty_files(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, header="arrival,departure,kwh\n")
    with pytest.raises(SessionFileError, match=r":1: missing column\(s\) delivered_energy"):
        read_sessions([path])
    with pytest.raises(SessionFileError, match="no usable sessions"):
        read_sessions([write(tmp_path, "", name="empty.csv")])
    with pytest.raises(SessionFileError, match="cannot read"):
        read_sessions([tmp_path / "absent.csv"])


def test_asap_reconstruction_splits_exactly_into_isps() -> None:
    # 6.6 kW from 08:05 for 1.65 kWh = 15 min: 10 min in ISP 32, 5 min in ISP 33.
    t = 8 * 3600 + 300
    out = asap_power(
        np.array([t]), np.array([t + 7200]), np.array([1650.0]), np.array([6600.0]), 0, 900, 96
    )
    assert out[32] == pytest.approx(6600.0 * 600 / 900)
    assert out[33] == pytest.approx(6600.0 * 300 / 900)
    assert out.sum() * 0.25 == pytest.approx(1650.0)
    # More energy than fits at 6.6 kW: the mean power over the stay.
    capped = asap_power(
        np.array([0]), np.array([1800]), np.array([5000.0]), np.array([6600.0]), 0, 900, 4
    )
    np.testing.assert_allclose(capped, [10_000.0, 10_000.0, 0.0, 0.0])


def test_reconstruction_of_the_caltech_files_matches_reference_and_energy() -> None:
    records, skipped = read_sessions(sorted(DATA.glob("*.csv.gz")))
    assert records.count == 6704
    assert skipped.total == 0
    start = int(records.arrival.min()) // 900 * 900
    length = (int(records.departure.max()) - start) // 900 + 2
    got = reconstruct_power(records, start, 900, length)
    head = (
        records.arrival[:500],
        records.departure[:500],
        records.delivered_wh[:500],
        np.full(500, 6600.0),
        start,
        900,
        3000,
    )
    np.testing.assert_allclose(asap_power(*head), ref.asap_power(*head), atol=1e-6)
    assert got.sum() * 0.25 == pytest.approx(records.delivered_wh.sum(), rel=1e-9)
